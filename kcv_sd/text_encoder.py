"""The CLIP text encoder, assembled from KerasCV's own blocks.

The SD1.5 configuration is layer-for-layer KerasCV's `TextEncoder`, so its
`kcv_encoder.h5` loads unchanged; the tiny configuration exists for tests.
"""

import dataclasses

import keras
from keras_cv.src.models.stable_diffusion.text_encoder import (
    CLIPEmbedding,
    CLIPEncoderLayer,
    quick_gelu,
)

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
    while wiring the model, most of the text encoder's build time."""

    def build(self, input_shape):
        attention = self.clip_attn
        for layer in (self.layer_norm1, attention.q_proj, attention.k_proj, attention.v_proj,
                      attention.out_proj, self.layer_norm2, self.fc1):
            layer.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.fc1.units,))

    def compute_output_shape(self, input_shape):
        return input_shape


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
