"""Token merging for Stable Diffusion (ToMe SD, Bolya and Hoffman 2023), opt-in.

Before the self-attention of the transformer blocks at the latent's own
resolution, `ratio` of the tokens are merged into similar ones and the
attention runs on the rest; its output is copied back to every token it
stands for. As tomesd's defaults: one destination token per 2x2 block,
merging before self-attention only, at the first level only. Our
destination is each block's top-left token (tomesd's `use_rand=False`): the
same result for the same inputs, where tomesd's random choice differs from
run to run.

The ratio is read while a step is traced (`merging(ratio)`), like the
kernel routes, so it is part of a compiled step's spec.
"""

import contextlib
import threading

import tensorflow as tf

_traced = threading.local()


@contextlib.contextmanager
def merging(ratio):
    """Transformer blocks traced in this context merge `ratio` of their tokens."""
    previous = getattr(_traced, "ratio", 0.0)
    _traced.ratio = ratio
    try:
        yield
    finally:
        _traced.ratio = previous


def current_ratio():
    return getattr(_traced, "ratio", 0.0)


def _partition(height, width):
    """(src, dst) token indices of a height x width grid: dst is the top-left
    token of each whole 2x2 block, src every other token, both ascending."""
    rows, cols = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    is_dst = (rows % 2 == 0) & (cols % 2 == 0) & (rows < height // 2 * 2) & (cols < width // 2 * 2)
    flat = tf.reshape(is_dst, [-1])
    positions = tf.range(height * width)
    return tf.boolean_mask(positions, ~flat), tf.boolean_mask(positions, flat)


def bipartite_matching(metric, height, width, ratio):
    """(merge, unmerge) for tokens `metric` (B, N, C) on a height x width
    grid: each src token's most similar dst token (cosine), and the
    int(N * ratio) src tokens most similar to theirs merged into them."""
    src_idx, dst_idx = _partition(height, width)
    count = tf.shape(metric)[1]
    r = tf.minimum(tf.cast(tf.cast(count, tf.float32) * ratio, tf.int32), tf.shape(src_idx)[0])
    metric = tf.cast(metric, tf.float32)
    metric = metric / tf.norm(metric, axis=-1, keepdims=True)
    a, b = tf.gather(metric, src_idx, axis=1), tf.gather(metric, dst_idx, axis=1)
    scores = tf.matmul(a, b, transpose_b=True)
    node_max, node_idx = tf.reduce_max(scores, axis=-1), tf.argmax(scores, axis=-1, output_type=tf.int32)
    edges = tf.argsort(node_max, axis=-1, direction="DESCENDING", stable=True)
    unmerged, merged = edges[:, r:], edges[:, :r]
    merged_dst = tf.gather(node_idx, merged, batch_dims=1)  # (B, r): the dst each merged src joins
    num_dst = tf.shape(dst_idx)[0]

    def merge(x):
        """(B, N, C) -> (B, N - r, C): unmerged src tokens, then each dst
        token averaged with the src tokens merged into it."""
        src, dst = tf.gather(x, src_idx, axis=1), tf.gather(x, dst_idx, axis=1)
        kept, joining = tf.gather(src, unmerged, batch_dims=1), tf.gather(src, merged, batch_dims=1)
        batch = tf.shape(x)[0]
        segments = tf.reshape(merged_dst + tf.range(batch)[:, None] * num_dst, [-1])  # one dst per image
        sums = tf.math.unsorted_segment_sum(tf.reshape(joining, [-1, tf.shape(x)[2]]), segments, batch * num_dst)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(segments, x.dtype), segments, batch * num_dst)
        dst = (dst + tf.reshape(sums, tf.shape(dst))) / (1 + tf.reshape(counts, [batch, num_dst, 1]))
        return tf.concat([kept, dst], axis=1)

    def unmerge(y):
        """(B, N - r, C) -> (B, N, C): every token back in its place, merged
        src tokens taking their dst's value."""
        kept, dst = y[:, : tf.shape(unmerged)[1]], y[:, tf.shape(unmerged)[1]:]
        values = tf.concat([kept, tf.gather(dst, merged_dst, batch_dims=1), dst], axis=1)
        batch = tf.shape(y)[0]
        positions = tf.concat([tf.gather(src_idx, unmerged), tf.gather(src_idx, merged),
                               tf.tile(dst_idx[None], [batch, 1])], axis=1)
        return tf.gather(values, tf.argsort(positions, axis=1), batch_dims=1)

    return merge, unmerge
