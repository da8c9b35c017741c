"""The text encoder's, steps' and decoder's graphs kept on disk (`kcv_sd.graph_cache`): the same images, written once, read back, never stale."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from kcv_sd import graph_cache
from kcv_sd.components import load_components
from kcv_sd.graph_cache import CachedGraph, graph_key
from kcv_sd.pipeline import Pipeline
from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def _image(pipeline):
    return np.asarray(pipeline("a cat", width=64, height=64, num_inference_steps=2, seed=3))


def _cached(tiny_pipeline):
    return Pipeline(components=tiny_pipeline.components, static_routes=False, graph_cache=True)


def test_graphs_are_written_once_then_read_and_give_the_same_images(tiny_pipeline, keras_home):
    plain = _image(tiny_pipeline)
    first = _cached(tiny_pipeline)
    assert np.array_equal(_image(first), plain) and first.graph_sources() == ["traced"] * 3  # text encoder, step, decoder
    graphs = keras_home / "kcv_sd" / "graphs"
    written = sorted(p.name for p in graphs.iterdir())
    assert len(written) == 3 and all(p.endswith(".graph") for p in written)
    second = _cached(tiny_pipeline)
    assert np.array_equal(_image(second), plain) and second.graph_sources() == ["cache"] * 3
    assert sorted(p.name for p in graphs.iterdir()) == written


def test_a_mixed_bfloat16_pipeline_keeps_every_graph_and_its_images(keras_home):
    """Its step's optimised graph is one Python will not import (`_FusedConv2D` in bfloat16): written node by node."""
    components = load_components("tiny", "random", precision="mixed_bfloat16", seed=0)
    images = []
    for keep in (False, True, True):
        pipeline = Pipeline(components=components, graph_cache=keep)
        images.append(np.asarray(pipeline("a cat", width=64, height=64, num_inference_steps=1, seed=3)))
    assert pipeline.graph_sources() == ["cache"] * 3
    assert np.array_equal(images[1], images[0]) and np.array_equal(images[2], images[0])


def test_a_controlnet_step_read_back_gives_the_image_of_the_process_that_wrote_it(tiny_pipeline, shared_controlnet,
                                                                                  keras_home):
    """The saved graph, optimised offline, orders some of the ControlNet step's sums differently from the graph
    the runtime optimises for itself: a few pixels 1 of 255 apart. Every process that keeps graphs, the writing
    one included, runs the saved graph, so their images are bit-identical."""
    control = {"controlnet": shared_controlnet(3),
               "image": np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)}

    def image(**options):
        pipeline = Pipeline(components=tiny_pipeline.components, **options)
        return np.asarray(pipeline("a cat", width=64, height=64, num_inference_steps=2, seed=3, **control)), pipeline

    plain, _ = image()
    (written, writer), (read, reader) = image(graph_cache=True), image(graph_cache=True)
    # The text encoder, the decoder, the ControlNet's embedding of its image and the step.
    assert writer.graph_sources() == ["traced"] * 4 and reader.graph_sources() == ["cache"] * 4
    assert np.array_equal(read, written)
    difference = np.abs(written.astype(int) - plain)
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.01


def test_a_text_encoder_that_reads_added_token_rows_runs_traced(tiny_components, keras_home, tmp_path):
    """Textual inversion's rows are a variable outside the model's weights: once there are some, the text
    encoder runs traced, and encodes the new token as the layers do."""
    components = dataclasses.replace(tiny_components, text_encoder=build_text_encoder(TINY_TEXT))
    pipeline = Pipeline(components=components, graph_cache=True)
    pipeline.encode_prompts(["a cat"])
    assert pipeline._encode.source == "traced"
    save_file({"<dot>": np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)},
              tmp_path / "dot.safetensors")
    pipeline.load_textual_inversion(tmp_path / "dot.safetensors")
    tokens = tf.constant(pipeline.tokenizer.pad_batch(["a <dot> cat"]))
    encoded = pipeline._encode(tokens)
    assert not isinstance(pipeline._encode, CachedGraph)
    np.testing.assert_allclose(encoded, pipeline._encode_tokens(tokens), atol=1e-6, rtol=0)
    assert not np.allclose(encoded, pipeline._encode(tf.constant(pipeline.tokenizer.pad_batch(["a cat"]))))


def test_xla_and_other_devices_never_use_the_cache(tiny_components):
    assert not Pipeline(components=tiny_components, graph_cache=True, jit_compile=True).graph_cache
    assert not Pipeline(components=tiny_components, graph_cache=True, device="gpu").graph_cache
    assert not Pipeline(components=tiny_components).graph_cache  # KCV_SD_GRAPH_CACHE=off (tests/conftest.py)


def test_the_default_keeps_graphs_on_a_cpu_unless_the_variable_says_off(keras_home, monkeypatch, tmp_path):
    monkeypatch.delenv(graph_cache.VARIABLE)
    assert graph_cache.chosen_folder("auto", "cpu", False) == keras_home / "kcv_sd" / "graphs"
    assert graph_cache.chosen_folder(tmp_path / "mine", "cpu", False) == tmp_path / "mine"
    assert graph_cache.chosen_folder("auto", "cpu", True) is None  # XLA
    assert graph_cache.chosen_folder("auto", "gpu", False) is None
    assert graph_cache.chosen_folder(False, "cpu", False) is None
    monkeypatch.setenv(graph_cache.VARIABLE, "OFF")
    assert graph_cache.chosen_folder("auto", "cpu", False) is None
    assert graph_cache.chosen_folder(True, "cpu", False) == keras_home / "kcv_sd" / "graphs"
    monkeypatch.setenv(graph_cache.VARIABLE, str(tmp_path / "theirs"))  # kcv-bench's workers share one
    assert graph_cache.chosen_folder("auto", "cpu", False) == tmp_path / "theirs"


def test_the_key_follows_what_shapes_the_graph_and_nothing_else(monkeypatch):
    small, large = tf.Variable(tf.zeros((2, 3))), tf.Variable(tf.ones((2, 4)))
    signature = [tf.TensorSpec((None, 3), tf.float32)]
    key = graph_key(["step", 1], [small], signature)
    assert graph_key(["step", 1], [tf.Variable(tf.ones((2, 3)))], signature) == key  # values do not count
    assert graph_key(["step", 2], [small], signature) != key
    assert graph_key(["step", 1], [large], signature) != key
    assert graph_key(["step", 1], [tf.Variable(tf.zeros((2, 3), tf.bfloat16))], signature) != key
    assert graph_key(["step", 1], [small], [tf.TensorSpec((None, 4), tf.float32)]) != key
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert graph_key(["step", 1], [small], signature) != key
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    monkeypatch.setattr(graph_cache, "code_digest", lambda: "changed sources")
    assert graph_key(["step", 1], [small], signature) != key


def test_a_function_reading_a_variable_it_was_not_given_runs_uncached(tmp_path):
    given, other = tf.Variable([1.0, 2.0]), tf.Variable([10.0, 20.0])
    signature = [tf.TensorSpec((2,), tf.float32)]
    reads_both = CachedGraph(lambda x: (x * given + other, x), signature, [given], "both", tmp_path)
    result, same = reads_both(tf.constant([1.0, 1.0]))
    assert reads_both.source == "uncached" and result.numpy().tolist() == [11.0, 22.0]
    assert list(tmp_path.iterdir()) == []
    reads_given = CachedGraph(lambda x: (x * given, (x, x + 1.0)), signature, [given], "given", tmp_path)
    result, (x, x1) = reads_given(tf.constant([3.0, 3.0]))
    assert reads_given.source == "traced" and result.numpy().tolist() == [3.0, 6.0] and x1.numpy()[0] == 4.0
    given.assign([5.0, 5.0])  # the graph reads the variable, not a copy of its value
    again = CachedGraph(lambda x: (x * given, (x, x + 1.0)), signature, [given], "given", tmp_path)
    result, _ = again(tf.constant([3.0, 3.0]))
    assert again.source == "cache" and result.numpy().tolist() == [15.0, 15.0]


def test_an_unreadable_graph_is_traced_and_written_again(tmp_path):
    weight = tf.Variable([2.0, 3.0])
    signature = [tf.TensorSpec((2,), tf.float32)]
    CachedGraph(lambda x: x * weight, signature, [weight], "scale", tmp_path)(tf.constant([1.0, 1.0]))
    graph, = tmp_path.glob("*.graph")
    whole = graph.read_bytes()
    graph.write_bytes(whole[: len(whole) // 2])  # a process killed while writing, or a damaged disk
    again = CachedGraph(lambda x: x * weight, signature, [weight], "scale", tmp_path)
    assert again(tf.constant([1.0, 1.0])).numpy().tolist() == [2.0, 3.0] and again.source == "traced"
    third = CachedGraph(lambda x: x * weight, signature, [weight], "scale", tmp_path)
    assert third(tf.constant([1.0, 1.0])).numpy().tolist() == [2.0, 3.0] and third.source == "cache"


def _bfloat16_convolution():
    kernel = tf.Variable(tf.random.stateless_normal((3, 3, 4, 8), (1, 2), dtype=tf.bfloat16))
    bias = tf.Variable(tf.random.stateless_normal((8,), (3, 4), dtype=tf.bfloat16))

    def convolve(x):
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), bias)

    return convolve, [kernel, bias], [tf.TensorSpec((None, None, None, 4), tf.bfloat16)]


def test_a_graph_python_will_not_import_is_written_node_by_node_and_read_back(tmp_path):
    """Grappler fuses a bfloat16 convolution and its bias into a `_FusedConv2D`, whose registered op takes no
    bfloat16 (the runtime rewrites it for oneDNN before it runs), so Python's import refuses the optimised graph:
    the function is written from the graph's nodes instead."""
    convolve, variables, signature = _bfloat16_convolution()
    x = tf.random.stateless_normal((2, 6, 5, 4), (5, 6), dtype=tf.bfloat16)
    expected = tf.function(convolve)(x).numpy()
    concrete = tf.function(convolve, input_signature=signature).get_concrete_function()
    optimised = graph_cache._optimized(concrete.graph.as_graph_def(), concrete.graph,
                                       [t.name for t in concrete.outputs])
    with pytest.raises(ValueError, match="_FusedConv2D"), tf.Graph().as_default():  # what the fallback is for
        tf.graph_util.import_graph_def(optimised, name="")
    for source in ("traced", "cache"):
        graph = CachedGraph(convolve, signature, variables, "bfloat16 convolution", tmp_path)
        assert np.array_equal(graph(x).numpy(), expected) and graph.source == source


def test_a_graph_it_cannot_write_runs_traced_and_is_marked(tmp_path, monkeypatch):
    def unplaceable(*args):
        raise KeyError("op NoSuchOp")

    monkeypatch.setattr(graph_cache, "_function_def", unplaceable)
    convolve, variables, signature = _bfloat16_convolution()
    x = tf.ones((1, 6, 6, 4), tf.bfloat16)
    for _ in range(2):
        graph = CachedGraph(convolve, signature, variables, "bfloat16 convolution", tmp_path)
        assert np.array_equal(graph(x).numpy(), tf.function(convolve)(x).numpy()) and graph.source == "uncached"
    marker, = tmp_path.glob("*.graph")
    assert graph_cache._parsed(marker.read_bytes())[1] == {"uncacheable": "KeyError: 'op NoSuchOp'"}


def test_the_cli_and_generate_pass_the_setting_to_their_pipeline(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kcv_sd import generation
    from kcv_sd.cli import main
    from kcv_sd.errors import InvalidArgumentError

    def stop(*configuration):
        raise InvalidArgumentError(f"pipeline {configuration}")

    monkeypatch.setattr(generation, "get_pipeline", stop)
    tiny = ["generate", "a cat", "--model", "tiny", "--precision", "float32", "--weights", "random",
            "-o", str(tmp_path / "cat.png")]
    assert CliRunner().invoke(main, [*tiny, "--graph-cache"]).output.endswith("None, True)\n")
    assert CliRunner().invoke(main, [*tiny, "--no-graph-cache"]).output.endswith("None, False)\n")
    assert CliRunner().invoke(main, tiny).output.endswith("None, 'auto')\n")
    monkeypatch.setattr(generation, "Pipeline", lambda **options: options)
    assert generation._cached_pipeline.__wrapped__("tiny", "random", "float32", False, False, True)["graph_cache"]


def test_generate_shares_one_pipeline_per_graph_folder(keras_home, monkeypatch):
    from kcv_sd import generation

    monkeypatch.setattr(generation, "_cached_pipeline", lambda *configuration: configuration)
    assert generation.get_pipeline("tiny", "random", "float32", False)[-1] is False  # KCV_SD_GRAPH_CACHE=off
    monkeypatch.delenv(graph_cache.VARIABLE)
    assert generation.get_pipeline("tiny", "random", "float32", False)[-1] == str(keras_home / "kcv_sd" / "graphs")
    assert generation.get_pipeline("tiny", "random", "float32", True)[-1] is False  # XLA keeps no graphs


def test_saved_functions_are_renamed_with_their_calls_so_they_never_meet_a_process_own():
    from tensorflow.core.framework import function_pb2

    library = function_pb2.FunctionDefLibrary()
    outer, inner = library.function.add(), library.function.add()
    outer.signature.name, inner.signature.name = "__inference_step_7", "__inference_body_3"
    calls = outer.node_def.add(name="call", op="StatefulPartitionedCall")
    calls.attr["f"].func.name = "__inference_body_3"
    direct = outer.node_def.add(name="direct", op="__inference_body_3")
    branches = outer.node_def.add(name="case", op="Case")
    branches.attr["branches"].list.func.add(name="__inference_body_3")
    branches.attr["branches"].list.func.add(name="elsewhere")
    graph_cache._renamed(library, "key")
    assert [f.signature.name for f in library.function] == ["__inference_step_7_key", "__inference_body_3_key"]
    assert calls.attr["f"].func.name == direct.op == "__inference_body_3_key"
    assert [f.name for f in branches.attr["branches"].list.func] == ["__inference_body_3_key", "elsewhere"]
