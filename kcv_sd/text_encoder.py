"""The CLIP text encoder, assembled from KerasCV's own blocks.

The SD1.5 configuration is layer-for-layer KerasCV's `TextEncoder`, so its
`kcv_encoder.h5` loads unchanged; the tiny configuration exists for tests.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.text_encoder import (
    CLIPEmbedding,
    CLIPEncoderLayer,
    quick_gelu,
)

from kcv_sd import dense_rows
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    embed_dim: int = 768
    num_heads: int = 12
    num_layers: int = 12
    vocab_size: int = 49408


class ShapedCLIPEncoderLayer(CLIPEncoderLayer):
    """KerasCV's `CLIPEncoderLayer`, built from shapes and stating its output
    shape: otherwise Keras traces `call` twice per layer in a scratch graph
    while wiring the model, most of the text encoder's build time.

    `call` is KerasCV's arithmetic in the same order, with its projections as
    `kcv_sd.dense_rows` products and the causal mask a constant: a third of
    the graph's ops, the same results."""

    def build(self, input_shape):
        attention = self.clip_attn
        for layer in (self.layer_norm1, attention.q_proj, attention.k_proj, attention.v_proj,
                      attention.out_proj, self.layer_norm2, self.fc1):
            layer.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.fc1.units,))

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        x = inputs + self._attend(self.layer_norm1(inputs))
        hidden = self.activation(dense_rows.dense_tokens(self.fc1, self.layer_norm2(x)))
        return dense_rows.dense_tokens(self.fc2, hidden) + x

    def _attend(self, x):
        attention = self.clip_attn
        length, heads, head_dim = x.shape[1], attention.num_heads, attention.head_dim

        def rows(dense, scale=None):  # (batch * heads, length, head_dim)
            y = dense_rows.dense_tokens(dense, x)
            y = y if scale is None else y * scale
            return tf.reshape(tf.transpose(tf.reshape(y, (-1, length, heads, head_dim)), (0, 2, 1, 3)),
                              (-1, length, head_dim))

        q, k, v = rows(attention.q_proj, attention.scale), rows(attention.k_proj), rows(attention.v_proj)
        causal = np.triu(np.full((length, length), -np.inf), 1)
        scores = tf.matmul(q, tf.transpose(k, (0, 2, 1))) + tf.constant(causal, q.dtype)
        attended = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
        merged = tf.reshape(tf.transpose(tf.reshape(attended, (-1, heads, length, head_dim)), (0, 2, 1, 3)),
                            (-1, length, heads * head_dim))
        return dense_rows.dense_tokens(attention.out_proj, merged)


class ExtensibleCLIPEmbedding(CLIPEmbedding):
    """KerasCV's `CLIPEmbedding`, plus token rows after the vocabulary
    (textual inversion, `kcv_sd.textual_inversion`). The rows are a
    `tf.Variable` of any row count, apart from the model's weights (weight
    files and converters see KerasCV's layer); None until the first
    embedding is added, and a trace made before then does not read them."""

    extra_rows = None

    def call(self, inputs):
        if self.extra_rows is None:
            return super().call(inputs)
        tokens, positions = inputs
        table = self.token_embedding.embeddings
        vocabulary = table.shape[0]
        known = keras.ops.take(table, keras.ops.minimum(tokens, vocabulary - 1), axis=0)
        added = keras.ops.take(self.extra_rows, keras.ops.maximum(tokens - vocabulary, 0), axis=0)
        embedded = keras.ops.where((tokens < vocabulary)[..., None], known, keras.ops.cast(added, known.dtype))
        return keras.ops.cast(embedded, self.token_embedding.compute_dtype) + self.position_embedding(positions)


SD15_TEXT = TextEncoderConfig()
TINY_TEXT = TextEncoderConfig(embed_dim=16, num_heads=2, num_layers=2)


def build_text_encoder(config=SD15_TEXT, name="text_encoder"):
    """Functional model: `tokens`, `positions` (B, 77) int32 -> (B, 77, embed_dim)."""
    tokens = keras.Input((MAX_PROMPT_LENGTH,), dtype="int32", name="tokens")
    positions = keras.Input((MAX_PROMPT_LENGTH,), dtype="int32", name="positions")
    x = ExtensibleCLIPEmbedding(config.vocab_size, config.embed_dim, MAX_PROMPT_LENGTH)([tokens, positions])
    for _ in range(config.num_layers):
        x = ShapedCLIPEncoderLayer(config.embed_dim, config.num_heads, activation=quick_gelu)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model({"tokens": tokens, "positions": positions}, x, name=name)
