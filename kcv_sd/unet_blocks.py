"""Layers of the SD1.x UNet, shape-agnostic and precision-aware.

Each layer creates its sublayers in the order KerasCV's `DiffusionModel`
blocks do, so `layer.weights` lists variables in the order of KerasCV's
`.h5` files (see `kcv_sd.weights`). Unlike KerasCV, spatial sizes are read
at run time, so one model serves every latent size.

Every block builds its sublayers from shapes and states its output shape:
without that, Keras traces each block's `call` in a scratch graph while
wiring the functional model (seconds for the SD1.5 UNet). Which kernel a
layer runs at a size is `kcv_sd.routing`'s choice.
"""

import keras
import tensorflow as tf
from keras import ops

from kcv_sd import dense_rows, routing, token_merging
from kcv_sd.group_norm import GroupNorm
from kcv_sd.padded_conv import PaddedConv2D


def weights_policy(policy):
    """The dtype policy of a layer with large weights (convolutions, dense).

    Under a mixed policy Keras keeps float32 weights and casts every one to
    the compute dtype at every call: for inference that is a full read of
    the float32 weights and a write of the cast copy per UNet step, with the
    same values in the end. Stored in the compute dtype, the weights are used
    as they are; small layers (norms) keep the mixed policy.
    """
    policy = keras.dtype_policies.get(policy)
    if policy.compute_dtype != policy.variable_dtype:
        return keras.DTypePolicy(policy.compute_dtype)
    return policy


class RoutedConv2D(PaddedConv2D):
    """A `PaddedConv2D` whose kernel `kcv_sd.routing` chooses: a matmul for
    1x1 kernels and, for larger kernels, a matmul over patches when the input
    has few rows per input channel, else the convolution. Its weights are
    stored in the compute dtype (`weights_policy`).
    """

    def __init__(self, filters, kernel_size, padding=0, strides=1,
                 kernel_initializer="glorot_uniform", level=0, **kwargs):
        super().__init__(filters, kernel_size, padding, strides, kernel_initializer, **kwargs)
        self.level = level  # halvings of the latent at this layer's input

    def conv_policy(self):
        return weights_policy(self.dtype_policy)

    def _patches(self, padded):
        """(batch, out_h, out_w, k*k*channels), taps in the kernel's (row,
        column, channel) order: one strided slice per tap, concatenated,
        faster on CPU than `tf.image.extract_patches` (docs/latency_levers.md,
        section 8). Tap (row, column) spans the input less the k - 1 - row
        rows (columns) after it: ends counted from the end are constants,
        so each slice is one op at any size (section 19)."""
        k, s = self.kernel_size, self.strides
        return tf.concat([padded[:, row:row + 1 - k or None:s, column:column + 1 - k or None:s]
                          for row in range(k) for column in range(k)], axis=-1)

    def _as_matmul(self, padded):
        if self.kernel_size > 1:
            padded = self._patches(padded)
        kernel = tf.reshape(tf.cast(self.conv2d.kernel, padded.dtype), (-1, self.conv2d.filters))
        rows = tf.matmul(tf.reshape(padded, (-1, kernel.shape[0])), kernel)
        rows = tf.nn.bias_add(rows, tf.cast(self.conv2d.bias, rows.dtype))
        return tf.reshape(rows, tf.concat([tf.shape(padded)[:3], [self.conv2d.filters]], 0))

    def _takes_matmul(self, rows):
        return routing.conv_takes_matmul(self.kernel_size, self.strides, self.conv2d.kernel.shape[-2], rows)

    def route(self, size):
        """"matmul" or "convolution" for a `kcv_sd.routing.static_routes` size."""
        rows = size[0] * routing.tokens_at(size, self.level)
        return "matmul" if self._takes_matmul(rows) else "convolution"

    def call(self, inputs):
        padded = self.padding2d(inputs)
        size = routing.traced_size()
        if size is not None:
            takes_matmul = self.route(size) == "matmul"
        else:
            takes_matmul = self._takes_matmul(tf.size(inputs, out_type=tf.int64) // inputs.shape[-1])
        if isinstance(takes_matmul, bool):
            return self._as_matmul(padded) if takes_matmul else self.conv2d(padded)
        return tf.cond(takes_matmul, lambda: self._as_matmul(padded), lambda: self.conv2d(padded))


def _dense(units, initializer, use_bias=True, dtype=None):
    return keras.layers.Dense(
        units, use_bias=use_bias, kernel_initializer=initializer,
        dtype=weights_policy(dtype if dtype is not None else keras.config.dtype_policy()),
    )


def _with_channels(shape, channels):
    return tuple(shape[:-1]) + (channels,)


def _group_norm(groups, epsilon, dtype=None):
    # Statistics in float32 even under a 16-bit policy.
    return GroupNorm(groups=groups, epsilon=epsilon, dtype=dtype)


class ResBlock(keras.layers.Layer):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added between."""

    def __init__(self, input_channels, output_channels, groups, epsilon,
                 initializer, level=0, **kwargs):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        self.norm1 = _group_norm(groups, epsilon, policy)
        self.conv1 = RoutedConv2D(output_channels, 3, padding=1,
                                  kernel_initializer=initializer, level=level, dtype=policy)
        self.embedding_projection = _dense(output_channels, initializer, dtype=policy)
        self.norm2 = _group_norm(groups, epsilon, policy)
        self.conv2 = RoutedConv2D(output_channels, 3, padding=1,
                                  kernel_initializer=initializer, level=level, dtype=policy)
        self.skip_projection = None
        if input_channels != output_channels:
            self.skip_projection = RoutedConv2D(
                output_channels, 1, kernel_initializer=initializer, dtype=policy
            )
        self.output_channels = output_channels

    def build(self, input_shape):
        x_shape, embedding_shape = input_shape
        h_shape = _with_channels(x_shape, self.output_channels)
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        self.embedding_projection.build(embedding_shape)
        self.norm2.build(h_shape)
        self.conv2.build(h_shape)
        if self.skip_projection is not None:
            self.skip_projection.build(x_shape)

    def compute_output_shape(self, input_shape):
        return _with_channels(input_shape[0], self.output_channels)

    def call(self, inputs):
        x, embedding = inputs
        h = self.conv1(ops.silu(self.norm1(x)))
        h = h + self.embedding_projection(ops.silu(embedding))[:, None, None]
        h = self.conv2(ops.silu(self.norm2(h)))
        skip = x if self.skip_projection is None else self.skip_projection(x)
        return h + skip


def _attend(q, k, v, scale):
    """softmax(q k^T * scale) v over (batch, heads, length, head_size).

    The scale multiplies the queries rather than the scores: keys/head_size
    times fewer products. The softmax is float32's: float16 scores are cast
    up and the weights back down; bfloat16 scores go in as they are, since
    TensorFlow's bfloat16 softmax computes in float32 and rounds once
    (bit-identical on CPU, `test_bfloat16_softmax_is_the_float32_softmax_rounded`)
    without the two casts (docs/latency_levers.md, section 8)."""
    scores = tf.matmul(q * scale, k, transpose_b=True)
    if scores.dtype != tf.bfloat16:
        scores = tf.cast(scores, tf.float32)
    return tf.matmul(tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype), v)


def _attend_in_chunks(q, k, v, scale, max_scores):
    """`_attend` one block of queries at a time, so at most about `max_scores`
    scores exist at once. Query rows are independent, so the result is the
    same; the queries are padded to whole chunks and the padding dropped."""
    shape = tf.shape(q)
    batch, heads, length, width = shape[0], shape[1], shape[2], shape[3]
    chunk = tf.maximum(1, max_scores // (batch * heads * tf.shape(k)[2]))
    count = (length + chunk - 1) // chunk
    padded = tf.pad(q, [[0, 0], [0, 0], [0, count * chunk - length], [0, 0]])
    chunks = tf.transpose(tf.reshape(padded, (batch, heads, count, chunk, width)), (2, 0, 1, 3, 4))
    attended = tf.map_fn(lambda block: _attend(block, k, v, scale), chunks, parallel_iterations=1)
    merged = tf.reshape(tf.transpose(attended, (1, 2, 0, 3, 4)), (batch, heads, count * chunk, -1))
    return merged[:, :, :length]


def attention(q, k, v, scale, max_scores=None):
    """Scaled dot-product attention, in query chunks when there would be
    more than `max_scores` (default: the device's `RoutePolicy`) scores at
    once (decided at run time)."""
    max_scores = routing.current_policy().max_scores_at_once if max_scores is None else max_scores
    q_shape, k_shape = tf.shape(q), tf.shape(k)
    # int64: 2 x 8 x 65536^2 overflows int32.
    scores = tf.reduce_prod(tf.cast(tf.concat([q_shape[:3], k_shape[2:3]], 0), tf.int64))
    return tf.cond(scores > max_scores, lambda: _attend_in_chunks(q, k, v, scale, max_scores),
                   lambda: _attend(q, k, v, scale))


class Attention(keras.layers.Layer):
    """Multi-head (cross-)attention; softmax always runs in float32, and
    large attention runs in query chunks to bound its memory."""

    def __init__(self, num_heads, head_size, initializer, level=0, **kwargs):
        super().__init__(**kwargs)
        self.level = level  # halvings of the latent at this layer's input
        self.cross = False  # attends to a context (set by build)
        policy = self.dtype_policy
        width = num_heads * head_size
        self.to_q = _dense(width, initializer, use_bias=False, dtype=policy)
        self.to_k = _dense(width, initializer, use_bias=False, dtype=policy)
        self.to_v = _dense(width, initializer, use_bias=False, dtype=policy)
        self.out_proj = _dense(width, initializer, dtype=policy)
        self.num_heads = num_heads
        self.head_size = head_size

    def build(self, inputs_shape, context_shape=None):
        self.cross = context_shape is not None
        context_shape = inputs_shape if context_shape is None else context_shape
        self.to_q.build(inputs_shape)
        self.to_k.build(context_shape)
        self.to_v.build(context_shape)
        self.out_proj.build(_with_channels(inputs_shape, self.num_heads * self.head_size))

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return _with_channels(inputs_shape, self.num_heads * self.head_size)

    def route(self, size):
        """"chunked" or "whole" for a `kcv_sd.routing.static_routes` size."""
        queries = routing.tokens_at(size, self.level)
        keys = size[3] if self.cross else queries
        return "chunked" if routing.attention_is_chunked(size[0], self.num_heads, queries, keys) else "whole"

    def call(self, inputs, context=None):
        context = inputs if context is None else context
        batch = tf.shape(inputs)[0]

        def heads(dense, x):  # (batch, heads, length, head_size)
            return tf.transpose(tf.reshape(dense_rows.product(dense, x), (batch, -1, self.num_heads, self.head_size)),
                                (0, 2, 1, 3))

        q, k, v = heads(self.to_q, inputs), heads(self.to_k, context), heads(self.to_v, context)
        scale = self.head_size**-0.5
        size = routing.traced_size()
        if size is None:
            attended = attention(q, k, v, scale)
        elif self.route(size) == "chunked":
            attended = _attend_in_chunks(q, k, v, scale, routing.current_policy().max_scores_at_once)
        else:
            attended = _attend(q, k, v, scale)
        merged = tf.reshape(tf.transpose(attended, (0, 2, 1, 3)), (batch, -1, self.num_heads * self.head_size))
        return dense_rows.dense_tokens(self.out_proj, merged)


class GEGLU(keras.layers.Layer):
    """Gated GELU feed-forward input; tanh-approximate (KerasCV) or exact
    (diffusers) gate.

    One projection (`dense`, as the checkpoints store it), multiplied as two
    halves: the gate's half as MatMul + BiasAdd + `tf.nn.gelu`, which
    Grappler's remapper fuses into one oneDNN matmul with a GELU post-op.
    The Snapshot keeps the arithmetic optimizer from merging the final
    product into GELU's own multiplications, which would break that fusion
    (docs/latency_levers.md, section 16)."""

    def __init__(self, output_dim, approximate, initializer, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.approximate = approximate
        self.dense = _dense(output_dim * 2, initializer, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def compute_output_shape(self, input_shape):
        return _with_channels(input_shape, self.output_dim)

    def call(self, inputs):
        kernel = ops.cast(self.dense.kernel, self.compute_dtype)
        bias = ops.cast(self.dense.bias, self.compute_dtype)
        rows = tf.reshape(inputs, (-1, inputs.shape[-1]))
        n = self.output_dim
        value = tf.nn.bias_add(tf.matmul(rows, kernel[:, :n]), bias[:n])
        gate = tf.nn.gelu(tf.nn.bias_add(tf.matmul(rows, kernel[:, n:]), bias[n:]), approximate=self.approximate)
        out = value * tf.raw_ops.Snapshot(input=gate)
        return tf.reshape(out, tf.concat([tf.shape(inputs)[:-1], [n]], 0))


class TransformerBlock(keras.layers.Layer):
    """Self-attention, cross-attention on the text, GEGLU feed-forward.

    At the first level, when traced under `kcv_sd.token_merging.merging`,
    the self-attention runs on merged tokens (ToMe SD); `grid` is then the
    feature map's shape (batch, height, width, channels)."""

    def __init__(self, num_heads, head_size, gelu_approximate, initializer, level=0, **kwargs):
        super().__init__(**kwargs)
        self.level = level
        policy = self.dtype_policy
        width = num_heads * head_size
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy)
        self.attn1 = Attention(num_heads, head_size, initializer, level=level, dtype=policy)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy)
        self.attn2 = Attention(num_heads, head_size, initializer, level=level, dtype=policy)
        self.norm3 = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy)
        self.geglu = GEGLU(width * 4, gelu_approximate, initializer, dtype=policy)
        self.dense = _dense(width, initializer, dtype=policy)

    def build(self, input_shape):
        x_shape, context_shape = input_shape
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.build(x_shape)
        self.attn1.build(x_shape)
        self.attn2.build(x_shape, context_shape)
        self.geglu.build(x_shape)
        self.dense.build(self.geglu.compute_output_shape(x_shape))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def call(self, inputs, grid=None):
        x, context = inputs
        ratio = token_merging.current_ratio()
        if ratio and self.level == 0 and grid is not None:  # tomesd's max_downsample=1
            merge, unmerge = token_merging.bipartite_matching(x, grid[1], grid[2], ratio)
            x = unmerge(self.attn1(merge(self.norm1(x)))) + x
        else:
            x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return dense_rows.dense_tokens(self.dense, self.geglu(self.norm3(x))) + x


class SpatialTransformer(keras.layers.Layer):
    """Flattens the feature map to tokens, runs a transformer block, restores it."""

    def __init__(self, channels, num_heads, groups, epsilon, gelu_approximate,
                 initializer, level=0, **kwargs):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        self.norm = _group_norm(groups, epsilon, policy)
        self.proj_in = RoutedConv2D(channels, 1, kernel_initializer=initializer, dtype=policy)
        self.transformer_block = TransformerBlock(
            num_heads, channels // num_heads, gelu_approximate, initializer, level=level, dtype=policy
        )
        self.proj_out = RoutedConv2D(channels, 1, kernel_initializer=initializer, dtype=policy)

    def build(self, input_shape):
        x_shape, context_shape = input_shape
        self.norm.build(x_shape)
        self.proj_in.build(x_shape)
        self.transformer_block.build([(x_shape[0], None, x_shape[-1]), context_shape])
        self.proj_out.build(x_shape)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def call(self, inputs):
        x, context = inputs
        shape = tf.shape(x)
        h = self.proj_in(self.norm(x))
        h = tf.reshape(h, (shape[0], -1, x.shape[-1]))
        h = self.transformer_block([h, context], grid=shape)
        return self.proj_out(tf.reshape(h, shape)) + x


class Upsample(keras.layers.Layer):
    """Nearest-neighbour up to the size of the skip connection it meets, then
    a 3x3 convolution.

    Called on `[features, skip]`. Doubling lands on the skip's size unless
    that level's side is odd (a stride-2 convolution took n to ceil(n / 2));
    then the doubled map loses its last row or column, which is what
    nearest-neighbour resizing to the exact size gives (diffusers'
    `upsample_size`).
    """

    def __init__(self, channels, initializer, level=1, **kwargs):
        super().__init__(**kwargs)
        self.level = level  # the input's; the output is one level up
        self.ups = keras.layers.UpSampling2D(2, dtype=self.dtype_policy)
        self.conv = RoutedConv2D(channels, 3, padding=1, kernel_initializer=initializer,
                                 level=level - 1, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(self.ups.compute_output_shape(input_shape[0]))

    def compute_output_shape(self, input_shape):
        features, skip = input_shape
        return self.conv.compute_output_shape((features[0], skip[1], skip[2], features[3]))

    def route(self, size):
        """"doubled" or "cropped" for a `kcv_sd.routing.static_routes` size."""
        height, width = (routing.side_at(side, self.level - 1) for side in size[1:3])
        return "cropped" if height % 2 or width % 2 else "doubled"

    def call(self, inputs):
        features, skip = inputs
        upsampled = self.ups(features)
        size = routing.traced_size()
        if size is None or self.route(size) == "cropped":
            # At run time the crop is a no-op slice where the sizes agree.
            skip_shape = tf.shape(skip)
            upsampled = upsampled[:, :skip_shape[1], :skip_shape[2]]
        return self.conv(upsampled)
