"""Prompt weighting and long prompts (`kcv_sd.prompts`, `kcv_sd.emphasis`).

References: the parser against AUTOMATIC1111's `parse_prompt_attention`
semantics, hand-computed (its docstring's examples among them); A1111's
"Original" emphasis rule against a numpy computation on the tiny text
encoder's unweighted encodings, and against a torch computation on a
transformers CLIPTextModel's encodings with compel's per-token weights;
chunking, the concatenation of chunks and the padding of the negative prompt
against compel's long-prompt mode (`truncate_long_prompts=False`, cut at 75
tokens: `SplitLongTextMode.BRUTAL`) on that model. compel's own weighting rule
(scaling the offset from the empty prompt) is not A1111's, so it is not a
reference here.
"""

import dataclasses
import gzip
import json

import numpy as np
import pytest
import tensorflow as tf

from kcv_sd.emphasis import emphasize
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.pipeline import Pipeline
from kcv_sd.prompts import BREAK, MAX_CHUNKS, chunk_batch, chunks, parse
from kcv_sd.tokenizer import PromptTooLongError, find_vocabulary_file, get_tokenizer

R, S = 1.1, 1 / 1.1
LONG = "a castle on a hill " * 20  # 100 tokens: two chunks
WEIGHTED = "a (red:1.3) scarf, ((knitted)), [blurry]"
PLAIN = "a red scarf, knitted, blurry"  # WEIGHTED's words


@pytest.mark.parametrize("prompt, pieces", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", R)]),
    ("[unbalanced", [("unbalanced", S)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("a \\\\ b \\x", [("a \\ b x", 1.0)]),  # \\ is a backslash, a lone \ is dropped
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * R * R), (" ", R), ("on", 1.0), (" a ", R), ("hill", 0.5 * R),
      (", sun, ", R), ("sky", R ** 4), (".", R)]),  # the first "(" is never closed
    ("((word))", [("word", R * R)]),
    ("[[word]]", [("word", S * S)]),
    ("(a:0.5)", [("a", 0.5)]),
    ("(a: 1.5 ) b", [("a", 1.5), (" b", 1.0)]),
    ("a:1.5) b) c]", [("a:1.5) b) c]", 1.0)]),  # closers without openers are text
    ("(a]", [("a]", R)]),  # brackets of the two kinds do not close each other
    ("([a:1.5)", [("a", 1.5 * S)]),
    ("time: 5 pm", [("time: 5 pm", 1.0)]),
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("BREAKFAST aBREAK break", [("BREAKFAST aBREAK break", 1.0)]),
    ("(a BREAK b)", [("a", R), BREAK, ("b", R)]),
    ("BREAK a", [("", 1.0), BREAK, ("a", 1.0)]),
])
def test_parse_follows_a1111(prompt, pieces):
    assert parse(prompt) == [(text, pytest.approx(weight)) for text, weight in pieces]


@pytest.mark.parametrize("prompt", ["(a:1.2.3)", "(a:.)"])
def test_a_weight_that_is_no_number_is_one_line(prompt):
    with pytest.raises(InvalidArgumentError, match=r"weight ':.*' is not a number") as error:
        parse(prompt)
    assert "\n" not in str(error.value)


def test_chunks_of_a_plain_prompt_are_keras_cvs_ids():
    tokenizer = get_tokenizer()
    for prompt in ("a photo of a cat", "", "cat " * 75):
        ids, weights = chunks(prompt, tokenizer)
        np.testing.assert_array_equal(ids, tokenizer.pad(prompt)[None])
        assert (weights == 1).all()


def test_weights_follow_their_tokens():
    tokenizer = get_tokenizer()
    ids, weights = chunks("a (red:1.3) scarf", tokenizer)
    np.testing.assert_array_equal(ids, tokenizer.pad("a red scarf")[None])
    np.testing.assert_allclose(weights[0, :5], [1, 1, 1.3, 1, 1])
    assert (weights[0, 5:] == 1).all()


def test_long_prompts_are_cut_in_chunks_of_75():
    tokenizer = get_tokenizer()
    words = tokenizer.encode(LONG)[1:-1]
    ids, weights = chunks(LONG, tokenizer)
    assert ids.shape == weights.shape == (2, 77)
    assert ids[:, 0].tolist() == [tokenizer.start] * 2 and ids[0, -1] == tokenizer.end
    assert ids[0, 1:76].tolist() == words[:75] and ids[1, 1:26].tolist() == words[75:]
    assert (ids[1, 26:] == tokenizer.end).all()


def test_break_and_comma_backtrack():
    tokenizer = get_tokenizer()
    ids, _ = chunks("a cat BREAK a dog", tokenizer)
    np.testing.assert_array_equal(ids, np.stack([tokenizer.pad("a cat"), tokenizer.pad("a dog")]))
    assert len(chunks("BREAK", tokenizer)[0]) == 1 and len(chunks("BREAK a", tokenizer)[0]) == 2
    # 70 words, a comma, 10 words: the first chunk ends at the comma (within 20 tokens of its end).
    ids, _ = chunks("cat " * 70 + ", " + "dog " * 10, tokenizer)
    assert ids[0, 71] == tokenizer.comma and ids[0, 72] == tokenizer.end
    assert ids[1, 1:11].tolist() == tokenizer.encode("dog " * 10)[1:-1]
    # 50 words, a comma, 40 words: the comma is too far back; the cut is at 75 tokens.
    ids, _ = chunks("cat " * 50 + ", " + "dog " * 40, tokenizer)
    assert ids[0, 75] != tokenizer.end and ids[1, 1:16].tolist() == tokenizer.encode("dog " * 15)[1:-1]


def test_the_longest_prompt_and_one_token_more():
    tokenizer = get_tokenizer()
    assert len(chunks("cat " * (75 * MAX_CHUNKS), tokenizer)[0]) == MAX_CHUNKS
    with pytest.raises(PromptTooLongError, match="longer than 20 chunks of 75 tokens \\(1500 tokens"):
        chunks("cat " * (75 * MAX_CHUNKS + 1), tokenizer)
    with pytest.raises(PromptTooLongError):
        chunks("a BREAK " * MAX_CHUNKS + "a", tokenizer)


def test_chunk_batch_pads_with_empty_chunks():
    tokenizer = get_tokenizer()
    ids, weights = chunk_batch([LONG, "a (cat:2)"], tokenizer)
    assert ids.shape == weights.shape == (2, 2, 77)
    np.testing.assert_array_equal(ids[1], np.stack([tokenizer.pad("a cat"), tokenizer.pad("")]))
    assert weights[1, 0, 2] == 2 and (weights[1, 1] == 1).all()


def a1111_original(z, weights):
    """A1111's "Original" emphasis on one chunk, in numpy float64."""
    z = np.asarray(z, np.float64)
    weighted = z * weights[:, None]
    return weighted * (z.mean() / weighted.mean())


@pytest.fixture(scope="module")
def clip():
    """A transformers CLIPTextModel with every weight random (its final
    LayerNorm's bias too: the encodings' mean is not zero, as the tiny
    model's is) and its weights in our text encoder."""
    from references import transformers_clip

    from kcv_sd.convert import convert_clip_text_encoder
    from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder

    model = transformers_clip(TINY_TEXT, seed=3)
    text_encoder = build_text_encoder(TINY_TEXT)
    convert_clip_text_encoder({k: v.numpy() for k, v in model.state_dict().items()}, text_encoder)
    return model, text_encoder


@pytest.fixture(scope="module")
def clip_pipeline(clip, tiny_components):
    """The tiny pipeline with `clip`'s text encoder (used for its encodings only)."""
    return Pipeline(components=dataclasses.replace(tiny_components, text_encoder=clip[1]))


def test_weighted_encoding_is_a1111_rule(clip_pipeline):
    tokenizer = get_tokenizer()
    ids, weights = chunks(WEIGHTED, tokenizer)
    np.testing.assert_array_equal(tokenizer.pad(PLAIN), ids[0])
    plain = clip_pipeline.encode_prompts([PLAIN]).numpy()
    assert abs(plain.mean()) > 1e-2 * np.abs(plain).mean()
    weighted = clip_pipeline.encode_prompts([WEIGHTED]).numpy()
    np.testing.assert_allclose(weighted[0], a1111_original(plain[0], weights[0]), rtol=1e-5, atol=1e-6)
    assert np.abs(weighted - plain).max() > 1e-2
    assert weighted.mean() == pytest.approx(float(plain.mean()), rel=1e-5)


def test_a_flat_encoding_is_weighted_without_the_rescale(tiny_pipeline):
    """The tiny model's encodings have a mean of about zero: A1111's ratio
    would be noise over noise; the weights apply alone ("No norm")."""
    _, weights = chunks(WEIGHTED, get_tokenizer())
    plain = tiny_pipeline.encode_prompts([PLAIN]).numpy()
    weighted = tiny_pipeline.encode_prompts([WEIGHTED]).numpy()
    np.testing.assert_allclose(weighted[0], plain[0] * weights[0, :, None], rtol=1e-6, atol=0)


def test_plain_chunks_are_left_bit_for_bit():
    z = tf.random.normal((3, 77, 16), seed=1) + 0.5
    weights = np.ones((3, 77), np.float32)
    weights[1, 4] = 1.2
    out = emphasize(z, weights).numpy()
    np.testing.assert_array_equal(out[[0, 2]], z.numpy()[[0, 2]])
    np.testing.assert_allclose(out[1], a1111_original(z[1], weights[1]), rtol=1e-5, atol=1e-6)


def test_long_prompt_is_its_chunks_encoded_apart_and_padding_is_the_empty_prompt(tiny_pipeline):
    ids, _ = chunks(LONG, get_tokenizer())
    context = tiny_pipeline.encode_prompts([LONG, "", "a (cat:1.2)"]).numpy()
    assert context.shape == (3, 154, 16)
    apart = np.concatenate([tiny_pipeline._encode(tf.constant(ids[i : i + 1]))[0] for i in range(2)])
    np.testing.assert_allclose(context[0], apart, rtol=0, atol=1e-5)
    empty = tiny_pipeline.encode_prompts([""]).numpy()[0]
    np.testing.assert_array_equal(context[1], np.concatenate([empty, empty]))
    np.testing.assert_array_equal(context[2, 77:], empty)


def test_a_plain_prompt_is_encoded_as_before(tiny_pipeline):
    """KerasCV's ids for the whole prompt, one batch through the encoder."""
    prompts = ["a photo of a cat", "a dog"]
    before = tiny_pipeline._encode(tf.constant(get_tokenizer().pad_batch(prompts)))
    np.testing.assert_array_equal(tiny_pipeline.encode_prompts(prompts), before)


@pytest.fixture(scope="module")
def compel_long_mode(clip, tmp_path_factory):
    """compel in long-prompt mode on `clip`, with our BPE vocabulary."""
    compel = pytest.importorskip("compel")
    import transformers

    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(get_tokenizer()._bpe.encoder))
    merges = gzip.open(find_vocabulary_file()).read().decode("utf-8").split("\n")[: 49152 - 256 - 1]
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                           model_max_length=77)
    return compel.Compel(tokenizer, clip[0], truncate_long_prompts=False,
                         split_long_text_mode=compel.SplitLongTextMode.BRUTAL)


def test_long_prompt_and_padding_as_compel(clip_pipeline, compel_long_mode):
    import torch

    with torch.no_grad():
        expected = compel_long_mode.pad_conditioning_tensors_to_same_length(
            [compel_long_mode(LONG), compel_long_mode("a cat")])
    ours = clip_pipeline.encode_prompts([LONG, "a cat"]).numpy()
    np.testing.assert_allclose(ours, torch.cat(expected).numpy(), rtol=0, atol=1e-4)


def test_weighted_prompt_as_a1111_rule_on_transformers(clip, clip_pipeline, compel_long_mode):
    """compel expands the pieces' weights to tokens; the rule runs in torch on the transformers encoding."""
    import torch

    pieces = parse(WEIGHTED)
    ids, weights, _ = compel_long_mode.conditioning_provider.get_token_ids_and_expand_weights(
        [text for text, _ in pieces], [weight for _, weight in pieces], device="cpu")
    with torch.no_grad():
        z = clip[0](ids[None]).last_hidden_state[0]
        weighted = z * weights[:, None]
        expected = weighted * (z.mean() / weighted.mean())
    ours = clip_pipeline.encode_prompts([WEIGHTED]).numpy()[0]
    np.testing.assert_allclose(ours, expected.numpy(), rtol=0, atol=1e-4)


def test_unet_and_controlnet_read_any_context_length(tiny_pipeline, shared_controlnet):
    """Attention to a context repeated twice is attention to the context: a
    154-token context of one 77-token encoding twice gives the same noise."""
    context = tiny_pipeline.encode_prompts(["a (red:1.2) scarf", ""])
    rng = np.random.default_rng(0)
    inputs = {"latent": tf.constant(rng.standard_normal((2, 8, 8, 4)), tf.float32),
              "timestep_embedding": tf.constant(rng.standard_normal((2, tiny_pipeline.config.timestep_dim)),
                                                tf.float32)}
    twice = tf.concat([context, context], axis=1)
    unet = tiny_pipeline.components.unet.model()
    np.testing.assert_allclose(unet({**inputs, "context": twice}), unet({**inputs, "context": context}),
                               rtol=0, atol=1e-4)
    controlnet = shared_controlnet(0).model()
    image = tf.constant(rng.random((2, 64, 64, 3)), tf.float32)
    for a, b in zip(controlnet({**inputs, "context": twice, "control_image": image}).values(),
                    controlnet({**inputs, "context": context, "control_image": image}).values()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_static_routes_see_the_context_length(tiny_components):
    """A context long enough to chunk the guided batch's cross-attention
    routes differently; lengths whose routes agree share the spec (and so
    the compiled step)."""
    [heads] = {layer.num_heads for layer in tiny_components.unet.model()._flatten_layers()
               if getattr(layer, "cross", False) and layer.level == 0}
    pipeline = Pipeline(components=tiny_components)

    def spec(length):
        return pipeline.step_spec("ddim", True, size=(1, 8, 8), context_length=length)

    # Attention chunked above 100 tokens of context.
    pipeline.route_policy = dataclasses.replace(pipeline.route_policy, max_scores_at_once=2 * heads * 8 * 8 * 100)
    assert spec(77) == spec(100) != spec(154)


def test_long_and_weighted_prompts_generate(tiny_pipeline):
    """Each chunk and each weight reaches the images; the compiled loop runs
    the same prompts in test_pipeline's test_compiled_loop_matches_step_by_step."""
    args = dict(negative_prompt="[blurry]", width=64, height=64, num_inference_steps=2, seed=3,
                output_type="latent")
    latents = {prompt: tiny_pipeline(prompt, **args) for prompt in (LONG + WEIGHTED, LONG, LONG + PLAIN)}
    assert all(np.isfinite(latent).all() for latent in latents.values())
    assert np.abs(latents[LONG + WEIGHTED] - latents[LONG]).max() > 1e-3  # the second chunk counts
    assert np.abs(latents[LONG + WEIGHTED] - latents[LONG + PLAIN]).max() > 1e-3  # and its weights


def test_prompt_errors_come_before_any_model():
    from kcv_sd.generation import check_generate

    with pytest.raises(PromptTooLongError):
        check_generate("word " * 1501, model="tiny")
    with pytest.raises(InvalidArgumentError, match="weight ':1..2\\)' is not a number"):
        check_generate("a cat", negative_prompt="(blurry:1..2)", model="tiny")
