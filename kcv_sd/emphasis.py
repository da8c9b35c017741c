"""How token weights act on the text encoding: AUTOMATIC1111's "Original" emphasis.

The text encoder runs on the plain token ids of a 77-token chunk (weights do
not enter it). Its output z (77, C) is multiplied token by token by the
weights w, then rescaled so its mean over all 77 x C values is the unweighted
z's:

    z' = z * w[:, None] * mean(z) / mean(z * w[:, None])

A chunk whose weights are all 1 is returned as it is (bit for bit). Where the
weighted mean is about zero (below `FLAT_MEAN` of the mean magnitude, as
the tiny random test model's final LayerNorm, without bias, gives) the ratio
would be rounding noise over rounding noise, and the chunk is weighted
without the rescale (A1111's "No norm"). A1111
(`sd_hijack_clip`, emphasis "Original") takes the mean over the batch of
prompts encoded together; here it is each prompt's own, so an image does not
depend on the prompts beside it (the same for one prompt). compel's default
rule differs: it scales each token's offset from the empty prompt's encoding,
z_empty + w (z - z_empty), and lowers weights below 1 by blending with the
prompt without those words.
"""

import tensorflow as tf

FLAT_MEAN = 1e-4


def emphasize(encodings, weights):
    """Weighted encodings float32 (..., 77, C) of `encodings` (..., 77, C) and
    token `weights` (..., 77), one chunk per leading index; eager or traced."""
    weights = tf.convert_to_tensor(weights, encodings.dtype)
    weighted = encodings * weights[..., None]
    axes = dict(axis=(-2, -1), keepdims=True)
    mean, new_mean = tf.reduce_mean(encodings, **axes), tf.reduce_mean(weighted, **axes)
    flat = tf.abs(new_mean) <= FLAT_MEAN * tf.reduce_mean(tf.abs(weighted), **axes)
    rescaled = tf.where(flat, weighted, weighted * (mean / tf.where(flat, 1.0, new_mean)))
    plain = tf.reduce_all(weights == 1, axis=-1)[..., None, None]
    return tf.where(plain, encodings, rescaled)
