"""The UNet on tiny configs: any size, ControlNet residual wiring, layer order."""

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv_sd import config, dense_rows, routing, unet_blocks
from kcv_sd.precision import dtype_policy_scope
from kcv_sd.routing import side_at
from kcv_sd.unet import UNet, control_input_names, timestep_embedding


def unet_inputs(cfg, batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "latent": rng.standard_normal((batch, height, width, cfg.latent_channels)).astype("float32"),
        "timestep_embedding": np.asarray(timestep_embedding(np.linspace(1, 900, batch), cfg.timestep_dim)),
        "context": rng.standard_normal((batch, 77, cfg.context_dim)).astype("float32"),
    }


@pytest.fixture(scope="module")
def tiny_unet(tiny_components):
    return tiny_components.unet


@pytest.mark.parametrize("height,width", [(24, 40), (104, 56), (8, 8), (9, 13)])  # 9x13: odd at every level
def test_one_model_serves_every_latent_size(tiny_unet, height, width):
    inputs = unet_inputs(tiny_unet.config, 2, height, width)
    out = tiny_unet.model()(inputs)
    assert tuple(out.shape) == (2, height, width, 4)
    assert out.dtype == "float32"


def test_zero_residuals_give_the_plain_unet(tiny_unet):
    inputs = unet_inputs(tiny_unet.config, 1, 16, 24)
    plain = np.asarray(tiny_unet.model()(inputs))
    controlled_model = tiny_unet.model(with_control=True)
    shapes = controlled_shapes(tiny_unet, 16, 24)
    zeros = {name: np.zeros(shape, "float32") for name, shape in shapes.items()}
    controlled = np.asarray(controlled_model({**inputs, **zeros}))
    np.testing.assert_array_equal(controlled, plain)


def controlled_shapes(unet, height, width):
    """Residual shapes for a latent of (height, width), from the skip structure."""
    cfg = unet.config
    shapes, level = [(1, height, width, unet.skip_channels[0])], 0
    index = 1
    for level in range(len(cfg.block_channels)):
        for _ in range(cfg.layers_per_block):
            shapes.append((1, side_at(height, level), side_at(width, level), unet.skip_channels[index]))
            index += 1
        if level < len(cfg.block_channels) - 1:
            shapes.append((1, side_at(height, level + 1), side_at(width, level + 1), unet.skip_channels[index]))
            index += 1
    shapes.append((1, side_at(height, level), side_at(width, level), cfg.block_channels[-1]))
    return dict(zip(control_input_names(cfg), shapes))


@pytest.mark.parametrize("which", ["control_0", "control_4", f"control_{config.TINY.num_skip_connections - 1}",
                                   "control_mid"])
def test_each_residual_reaches_the_output(tiny_unet, which):
    inputs = unet_inputs(tiny_unet.config, 1, 16, 24)
    shapes = controlled_shapes(tiny_unet, 16, 24)
    residuals = {name: np.zeros(shape, "float32") for name, shape in shapes.items()}
    model = tiny_unet.model(with_control=True)
    base = np.asarray(model({**inputs, **residuals}))
    residuals[which] = np.ones(shapes[which], "float32")
    moved = np.asarray(model({**inputs, **residuals}))
    assert np.abs(moved - base).max() > 1e-4


def test_kerascv_order_lists_every_weighted_layer_once(tiny_unet):
    ordered = tiny_unet.kerascv_layer_order()
    assert len({id(layer) for layer in ordered}) == len(ordered)
    model_weights = {id(v) for v in tiny_unet.model().weights}
    ordered_weights = [id(v) for layer in ordered for v in layer.weights]
    assert len(ordered_weights) == len(model_weights)
    assert set(ordered_weights) == model_weights


def test_sd15_has_twelve_skips_and_kerascv_layer_count():
    assert config.SD15.num_skip_connections == 12
    assert len(control_input_names(config.SD15)) == 13


def test_config_rejects_channels_that_do_not_divide():
    with pytest.raises(ValueError, match="divide"):
        dataclasses.replace(config.TINY, block_channels=(8, 16, 16, 18))


@pytest.mark.parametrize("precision,dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_computes_in_half_and_outputs_float32(precision, dtype):
    before = keras.config.dtype_policy().name
    with dtype_policy_scope(precision):
        unet = UNet(config.TINY)
        model = unet.model()
    assert keras.config.dtype_policy().name == before
    resblock = unet.down_levels[0][0][0][0]
    assert resblock.conv1.compute_dtype == dtype
    assert resblock.conv1.conv2d.kernel.dtype == dtype  # stored as computed (weights_policy)
    assert resblock.norm1.gamma.dtype == "float32"
    out = model(unet_inputs(config.TINY, 1, 8, 16))
    assert out.dtype == "float32"
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_weights_stored_in_compute_dtype_give_the_same_outputs(precision, monkeypatch):
    """Keras' own mixed policy (float32 weights cast at every call) and
    16-bit storage compute with the same values, so outputs are identical."""
    stored = _built(precision)
    monkeypatch.setattr(unet_blocks, "weights_policy", lambda policy: policy)
    cast_per_call = _built(precision)
    assert cast_per_call.down_levels[0][0][0][0].conv1.conv2d.kernel.dtype == "float32"
    for layer_a, layer_b in zip(stored.kerascv_layer_order(), cast_per_call.kerascv_layer_order()):
        for a, b in zip(layer_a.weights, layer_b.weights):
            b.assign(np.asarray(a.value, np.float32))
    inputs = unet_inputs(config.TINY, 1, 8, 16)
    np.testing.assert_array_equal(np.asarray(stored.model()(inputs)), np.asarray(cast_per_call.model()(inputs)))


def _built(precision):
    with dtype_policy_scope(precision):
        unet = UNet(config.TINY)
        unet.model()
    return unet


def test_exact_and_approximate_gelu_differ_only_slightly():
    approx = UNet(config.TINY)
    exact = UNet(dataclasses.replace(config.TINY, gelu_approximate=False))
    exact_model = exact.model()
    approx_model = approx.model()
    for src, dst in zip(approx_model.weights, exact_model.weights):
        dst.assign(src)
    inputs = unet_inputs(config.TINY, 1, 8, 8)
    a, b = np.asarray(approx_model(inputs)), np.asarray(exact_model(inputs))
    assert 0 < np.abs(a - b).max() < 1e-2


def _geglu(approximate, precision, input_width=24, output_dim=16):
    with dtype_policy_scope(precision):
        layer = unet_blocks.GEGLU(output_dim, approximate, "glorot_uniform")
        layer.build((2, 5, input_width))
    layer.dense.bias.assign(np.random.default_rng(2).standard_normal(2 * output_dim) * 0.5)
    return layer


@pytest.mark.parametrize("approximate", [True, False])
@pytest.mark.parametrize("precision,tolerance", [("float32", 2e-6), ("bfloat16", 0.04)])
def test_geglu_matches_float64(approximate, precision, tolerance):
    """The gate's GELU (fused into its matmul by Grappler when traced) is
    the tanh approximation or the exact erf GELU, eager and traced alike."""
    layer = _geglu(approximate, precision)
    x = np.random.default_rng(3).standard_normal((2, 5, 24)) * 2
    kernel = np.asarray(tf.cast(layer.dense.kernel, tf.float64))
    bias = np.asarray(tf.cast(layer.dense.bias, tf.float64))
    if precision == "bfloat16":  # the layer sees the inputs and weights rounded
        x, kernel, bias = (np.asarray(tf.cast(tf.cast(a, tf.bfloat16), tf.float64)) for a in (x, kernel, bias))
    value, gate = np.split(x @ kernel + bias, 2, axis=-1)
    if approximate:
        gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
    else:
        gelu = 0.5 * gate * (1 + np.vectorize(math.erf)(gate / np.sqrt(2)))
    expected = value * gelu
    for run in (layer, tf.function(layer)):
        out = run(tf.constant(x, layer.compute_dtype))
        assert out.shape == (2, 5, 16)
        np.testing.assert_allclose(np.asarray(tf.cast(out, tf.float64)), expected,
                                   atol=tolerance * np.abs(expected).max())


@pytest.mark.parametrize("approximate", [True, False])
def test_geglu_gate_runs_fused_into_its_matmul(approximate):
    """No separate GELU ops run: oneDNN applies it to the gate's matmul
    (docs/latency_levers.md, section 16)."""
    from tensorflow.python.util import _pywrap_util_port

    from bench.op_profile import profiled

    if not _pywrap_util_port.IsMklEnabled():
        pytest.skip("TensorFlow without oneDNN: no fused GELU")
    layer = _geglu(approximate, "float32")
    traced = tf.function(layer)
    x = tf.constant(np.random.default_rng(3).standard_normal((2, 5, 24)), tf.float32)
    traced(x)
    with profiled() as profile:
        traced(x).numpy()
    ran = set(profile["op_times"])
    assert "_MklNativeFusedMatMul" in ran
    assert not ran & {"Tanh", "Erf", "Erfc", "Pow", "Square"}, ran


@pytest.mark.parametrize("queries,keys,max_scores", [(37, 11, 100), (64, 64, 2 * 2 * 64 * 5), (5, 77, 1)])
def test_chunked_attention_equals_attention_at_once(queries, keys, max_scores):
    rng = np.random.default_rng(queries)
    q = rng.standard_normal((2, 2, queries, 8)).astype("float32")
    k, v = rng.standard_normal((2, 2, 2, keys, 8)).astype("float32")
    at_once = unet_blocks.attention(q, k, v, 0.3, max_scores=10**9)
    chunked = unet_blocks.attention(q, k, v, 0.3, max_scores=max_scores)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(at_once), rtol=1e-6, atol=1e-6)


SMALL_SCORE_BUDGET = routing.RoutePolicy(routing.CPU_ROUTES.matmul_rows_per_input_channel, max_scores_at_once=1000)


def test_unet_attends_in_chunks_above_the_score_budget(tiny_unet, monkeypatch):
    inputs = unet_inputs(tiny_unet.config, 1, 16, 24)
    expected = np.asarray(tiny_unet.model()(inputs))
    chunks = []
    original = unet_blocks._attend_in_chunks
    monkeypatch.setattr(unet_blocks, "_attend_in_chunks", lambda *args: chunks.append(1) or original(*args))
    with routing.device_routes(SMALL_SCORE_BUDGET):
        np.testing.assert_allclose(np.asarray(tiny_unet.model()(inputs)), expected, rtol=1e-5, atol=1e-5)
    assert chunks  # the budget really forced chunking


@pytest.mark.parametrize("kernel,strides,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (3, 2, 0)])
@pytest.mark.parametrize("rows_per_channel", [0, 10**6])
@pytest.mark.parametrize("spatial_shape_known", [True, False])
def test_padded_conv_as_matmul_equals_the_convolution(kernel, strides, padding, rows_per_channel,
                                                      spatial_shape_known, monkeypatch):
    """Both routes (0: convolution except 1x1; 10**6: matmul) give the
    convolution's result, also traced for any height and width."""
    layer = unet_blocks.RoutedConv2D(5, kernel, padding=padding, strides=strides)
    x = np.random.default_rng(kernel + strides).standard_normal((2, 7, 9, 6)).astype("float32")
    layer.build(x.shape)
    layer.conv2d.bias.assign(np.linspace(-1, 1, 5))
    expected = np.asarray(layer.conv2d(layer.padding2d(x)))
    call = layer if spatial_shape_known else tf.function(
        layer, input_signature=[tf.TensorSpec((None, None, None, 6), tf.float32)])
    with routing.device_routes(routing.RoutePolicy(rows_per_channel)):
        np.testing.assert_allclose(np.asarray(call(x)), expected, rtol=1e-5, atol=1e-5)


def _op_types(fn, *specs):
    return [op.type for op in tf.function(fn, autograph=False).get_concrete_function(*specs).graph.get_operations()]


@pytest.mark.parametrize("kernel,strides", [(3, 1), (3, 2)])
def test_patches_at_any_size_slice_each_tap_once_without_shape_arithmetic(kernel, strides):
    """Graph ops are what a first call traces and optimises: each tap is one slice with constant bounds, also
    where height and width are only known at run time."""
    layer = unet_blocks.RoutedConv2D(5, kernel, padding=1, strides=strides)
    layer.build((2, 7, 9, 6))
    types = _op_types(layer._patches, tf.TensorSpec((None, None, None, 6), tf.float32))
    assert types.count("StridedSlice") == kernel**2 and "Shape" not in types and "Pack" not in types


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_on_tokens_is_keras_dense_without_tensordot(use_bias):
    dense = keras.layers.Dense(6, use_bias=use_bias)
    dense.build((None, None, 4))
    if use_bias:
        dense.bias.assign(np.linspace(-1, 1, 6))
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype("float32")
    assert np.array_equal(np.asarray(dense_rows.dense_tokens(dense, tf.constant(x))), np.asarray(dense(x)))
    types = _op_types(lambda t: dense_rows.dense_tokens(dense, t), tf.TensorSpec((None, None, 4), tf.float32))
    assert types.count("MatMul") == 1 and not {"GatherV2", "Prod", "Transpose"} & set(types)


@pytest.mark.parametrize("height,width,route", [(2, 2, "matmul"), (4, 4, "convolution")])
def test_padded_conv_takes_the_matmul_for_few_rows_per_channel(height, width, route, monkeypatch):
    """8 channels: 1x2x2 = 4 input rows -> matmul; 1x4x4 = 16 rows -> convolution."""
    taken = []
    original = unet_blocks.RoutedConv2D._as_matmul
    monkeypatch.setattr(unet_blocks.RoutedConv2D, "_as_matmul",
                        lambda self, padded: taken.append("matmul") or original(self, padded))
    layer = unet_blocks.RoutedConv2D(8, 3, padding=1)
    layer(np.ones((1, height, width, 8), "float32"))
    assert (taken == ["matmul"]) == (route == "matmul")


def test_unet_with_every_convolution_as_a_matmul_matches(tiny_unet, monkeypatch):
    inputs = unet_inputs(tiny_unet.config, 2, 16, 24)
    with routing.device_routes(routing.ACCELERATOR_ROUTES):
        as_convolutions = np.asarray(tiny_unet.model()(inputs))
    with routing.device_routes(routing.RoutePolicy(10**6)):
        np.testing.assert_allclose(np.asarray(tiny_unet.model()(inputs)), as_convolutions, rtol=1e-5, atol=1e-5)


def test_static_routes_take_the_run_time_routes(tiny_unet, monkeypatch):
    """Under `static_routes` the layers choose in Python what they would
    choose at run time, with the same results. A small score budget makes the
    top level's attention chunk, so both routes of both layer kinds occur."""
    taken = []
    as_matmul, in_chunks = unet_blocks.RoutedConv2D._as_matmul, unet_blocks._attend_in_chunks
    monkeypatch.setattr(unet_blocks.RoutedConv2D, "_as_matmul",
                        lambda self, padded: taken.append("matmul") or as_matmul(self, padded))
    monkeypatch.setattr(unet_blocks, "_attend_in_chunks",
                        lambda *args: taken.append("chunked") or in_chunks(*args))
    model, inputs = tiny_unet.model(), unet_inputs(tiny_unet.config, 2, 8, 16)
    with routing.device_routes(SMALL_SCORE_BUDGET):
        assert {"matmul", "convolution", "chunked", "whole"} <= set(tiny_unet.routes(2, 8, 16, 77))
        at_run_time = np.asarray(model(inputs))
        run_time_routes, taken[:] = list(taken), []
        assert {"matmul", "chunked"} <= set(run_time_routes)
        with routing.static_routes(2, 8, 16, 77):
            static = np.asarray(model(inputs))
    assert taken == run_time_routes
    np.testing.assert_allclose(static, at_run_time, rtol=1e-6, atol=1e-6)


def test_accelerators_keep_their_convolutions(tiny_unet):
    """On a GPU or TPU only 1x1 convolutions are matmuls (the CPU's patch
    matmuls stay on CPUs); attention chunks by the same budget."""
    convolutions = [layer for top in tiny_unet.model().layers for layer in top._flatten_layers(include_self=True)
                    if isinstance(layer, unet_blocks.RoutedConv2D)]
    size = (1, 8, 8, 77)
    assert "matmul" in {conv.route(size) for conv in convolutions if conv.kernel_size == 3}  # on the CPU
    for device in ("gpu", "tpu"):
        with routing.device_routes(routing.ROUTES_BY_DEVICE[device]):
            assert [conv.route(size) for conv in convolutions] == [
                "matmul" if conv.kernel_size == 1 else "convolution" for conv in convolutions]


@pytest.mark.parametrize("traced", [False, True])
def test_bfloat16_softmax_is_the_float32_softmax_rounded(traced):
    """`unet_blocks._attend` gives bfloat16 scores to the softmax uncast,
    on the ground that TensorFlow computes it in float32 and rounds once."""
    softmax = tf.function(tf.nn.softmax) if traced else tf.nn.softmax
    rng = np.random.default_rng(0)
    for spread in (0.1, 3.0, 30.0):
        scores = tf.cast(rng.standard_normal((2, 8, 64, 77)) * spread, tf.bfloat16)
        rounded = tf.cast(softmax(tf.cast(scores, tf.float32)), tf.bfloat16)
        np.testing.assert_array_equal(np.asarray(softmax(scores), np.float32), np.asarray(rounded, np.float32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_attention_matches_float64(dtype):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, 48, 16)) for _ in range(3))
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) * 0.25
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    expected = np.einsum("bhqk,bhkd->bhqd", weights / weights.sum(-1, keepdims=True), v)
    attended = unet_blocks._attend(*(tf.constant(x, dtype) for x in (q, k, v)), 0.25)
    assert attended.dtype == dtype
    tolerance = {"float32": 2e-6, "bfloat16": 0.03, "float16": 0.003}[dtype]
    np.testing.assert_allclose(np.asarray(tf.cast(attended, tf.float32)), expected, atol=tolerance)


def test_deep_cache_shallow_step_on_fresh_features_is_the_full_step(tiny_unet):
    """DeepCache's shallow pass recomputes only the input convolution and the
    last up block: fed the features a full pass kept for the same inputs, it
    gives the full pass's noise."""
    inputs = unet_inputs(tiny_unet.config, 2, 8, 16)
    plain = np.asarray(tiny_unet.model()(inputs))
    noise, features = tiny_unet.model(deep_cache="full")(inputs)
    np.testing.assert_array_equal(np.asarray(noise), plain)
    assert features.shape[-1] == tiny_unet.feature_channels
    shallow = tiny_unet.model(deep_cache="shallow")({**inputs, "features": np.asarray(features)})
    np.testing.assert_allclose(np.asarray(shallow), plain, rtol=1e-5, atol=1e-5)
    stale = tiny_unet.model(deep_cache="shallow")({**inputs, "features": np.asarray(features) * 0.5})
    assert not np.allclose(np.asarray(stale), plain, atol=1e-3)  # the features do matter
