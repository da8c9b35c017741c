"""The CLIP text encoder (OpenAI's ViT-L/14 text tower, as SD1.x uses it).

Its layers create their sublayers in the order KerasCV's `TextEncoder`
does, so `kcv_encoder.h5` loads unchanged (`kcv_sd.weights` assigns by
order), and compute what KerasCV's layers compute, op for op, with each
projection one matmul over the tokens (`tests/test_text_encoder.py`
compares them). The tiny configuration exists for tests.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from kcv_sd import dense_rows
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    embed_dim: int = 768
    num_heads: int = 12
    num_layers: int = 12
    vocab_size: int = 49408


def quick_gelu(x):
    """CLIP's GELU approximation, x * sigmoid(1.702 x)."""
    return x * keras.ops.sigmoid(x * 1.702)


def _token_rows(x, length, heads, head_dim):
    """(batch, length, heads * head_dim) -> (batch * heads, length, head_dim)."""
    return tf.reshape(tf.transpose(tf.reshape(x, (-1, length, heads, head_dim)), (0, 2, 1, 3)),
                      (-1, length, head_dim))


class CLIPAttention(keras.layers.Layer):
    """Causal multi-head self-attention: each token attends to itself and
    the tokens before it. The queries are scaled before the products."""

    def __init__(self, embed_dim, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = keras.layers.Dense(embed_dim)
        self.k_proj = keras.layers.Dense(embed_dim)
        self.v_proj = keras.layers.Dense(embed_dim)
        self.out_proj = keras.layers.Dense(embed_dim)

    def build(self, input_shape):
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            projection.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x):
        length, heads, head_dim = x.shape[1], self.num_heads, self.head_dim

        def rows(dense, scale=None):
            y = dense_rows.dense_tokens(dense, x)
            return _token_rows(y if scale is None else y * scale, length, heads, head_dim)

        q, k, v = rows(self.q_proj, self.scale), rows(self.k_proj), rows(self.v_proj)
        causal = np.triu(np.full((length, length), -np.inf), 1)
        scores = tf.matmul(q, tf.transpose(k, (0, 2, 1))) + tf.constant(causal, q.dtype)
        attended = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
        merged = tf.reshape(tf.transpose(tf.reshape(attended, (-1, heads, length, head_dim)), (0, 2, 1, 3)),
                            (-1, length, heads * head_dim))
        return dense_rows.dense_tokens(self.out_proj, merged)


class CLIPEncoderLayer(keras.layers.Layer):
    """Pre-norm transformer layer: x + attention(norm(x)), then
    x + fc2(activation(fc1(norm(x))))."""

    def __init__(self, embed_dim, num_heads, activation=quick_gelu, **kwargs):
        super().__init__(**kwargs)
        self.layer_norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.clip_attn = CLIPAttention(embed_dim, num_heads)
        self.layer_norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.fc1 = keras.layers.Dense(embed_dim * 4)
        self.fc2 = keras.layers.Dense(embed_dim)
        self.activation = activation

    def build(self, input_shape):
        for layer in (self.layer_norm1, self.clip_attn, self.layer_norm2, self.fc1):
            layer.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.fc1.units,))

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        x = inputs + self.clip_attn(self.layer_norm1(inputs))
        hidden = self.activation(dense_rows.dense_tokens(self.fc1, self.layer_norm2(x)))
        return dense_rows.dense_tokens(self.fc2, hidden) + x


class CLIPEmbedding(keras.layers.Layer):
    """Token embedding plus position embedding, and token rows after the
    vocabulary (textual inversion, `kcv_sd.textual_inversion`). The rows are
    a `tf.Variable` of any row count, apart from the model's weights (weight
    files and converters see the two embeddings only); None until the first
    embedding is added, and a trace made before then does not read them."""

    extra_rows = None

    def __init__(self, vocab_size, embed_dim, max_length, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = keras.layers.Embedding(vocab_size, embed_dim)
        self.position_embedding = keras.layers.Embedding(max_length, embed_dim)

    def build(self, input_shape):
        tokens_shape, positions_shape = input_shape
        self.token_embedding.build(tokens_shape)
        self.position_embedding.build(positions_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0]) + (self.token_embedding.output_dim,)

    def call(self, inputs):
        tokens, positions = inputs
        if self.extra_rows is None:
            return self.token_embedding(tokens) + self.position_embedding(positions)
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
    x = CLIPEmbedding(config.vocab_size, config.embed_dim, MAX_PROMPT_LENGTH)([tokens, positions])
    for _ in range(config.num_layers):
        x = CLIPEncoderLayer(config.embed_dim, config.num_heads)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model({"tokens": tokens, "positions": positions}, x, name=name)
