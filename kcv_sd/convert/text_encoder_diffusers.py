"""transformers' `CLIPTextModel` (text_encoder/model.safetensors) -> `build_text_encoder`'s model.

SD1.x conditions on OpenAI's CLIP ViT-L/14 text tower: 12 layers, 768 wide,
quick_gelu, 196 weight tensors. Our model has the same layers
(`kcv_sd.text_encoder`), so each CLIP module maps to one of them. Files saved by transformers < 5 (the
Hub's SD1.5 ones) prefix every key with "text_model."; transformers 5 saves
them without it. Both are read.
"""

import keras

from kcv_sd.convert.checks import TEXT_WIDTH_FAMILIES, describe
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.porter import WeightPorter
from kcv_sd.convert.ports import port_dense, port_norm
from kcv_sd.text_encoder import CLIPEmbedding, CLIPEncoderLayer

PREFIXES = ("text_model.", "")
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"
# The arange(77) buffer older transformers saved; our model takes positions as an input.
POSITION_IDS = "embeddings.position_ids"


def port_embedding(porter, embedding, prefix):
    """`CLIPEmbedding` <- `CLIPTextEmbeddings`."""
    porter.port(embedding.token_embedding.embeddings, f"{prefix}.token_embedding.weight")
    porter.port(embedding.position_embedding.embeddings, f"{prefix}.position_embedding.weight")


def port_clip_layer(porter, layer, prefix):
    """`CLIPEncoderLayer` <- `CLIPEncoderLayer` (transformers)."""
    port_norm(porter, layer.layer_norm1, f"{prefix}.layer_norm1")
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        port_dense(porter, getattr(layer.clip_attn, name), f"{prefix}.self_attn.{name}")
    port_norm(porter, layer.layer_norm2, f"{prefix}.layer_norm2")
    port_dense(porter, layer.fc1, f"{prefix}.mlp.fc1")
    port_dense(porter, layer.fc2, f"{prefix}.mlp.fc2")


def layers_of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def port_text_encoder(porter, text_encoder, prefix):
    (embedding,) = layers_of(text_encoder, CLIPEmbedding)
    (final_norm,) = layers_of(text_encoder, keras.layers.LayerNormalization)
    port_embedding(porter, embedding, f"{prefix}embeddings")
    for index, layer in enumerate(layers_of(text_encoder, CLIPEncoderLayer)):
        port_clip_layer(porter, layer, f"{prefix}encoder.layers.{index}")
    port_norm(porter, final_norm, f"{prefix}final_layer_norm")


def clip_prefix(state_dict, source):
    """The prefix of a CLIPTextModel's keys: "text_model." or none."""
    for prefix in PREFIXES:
        if prefix + TOKEN_EMBEDDING in state_dict:
            return prefix
    raise CheckpointError(
        f"{source} is not a transformers CLIPTextModel (it has no "
        f"text_model.{TOKEN_EMBEDDING}); {describe(state_dict)}."
    )


def check_clip_width(state_dict, prefix, width, source):
    """Refuse another family's text encoder (SD2.x: OpenCLIP ViT-H, 1024 wide)."""
    found = state_dict[prefix + TOKEN_EMBEDDING].shape[1]
    if found != width:
        family = TEXT_WIDTH_FAMILIES.get(found, "an unknown model family")
        raise CheckpointError(
            f"{source} is a {found}-wide text encoder ({family}); the model is "
            f"{width} wide: not supported."
        )


def convert_clip_text_encoder(state_dict, text_encoder, source="the state dict", file_key=None):
    """Fill a `build_text_encoder` model with a transformers `CLIPTextModel` state dict.

    `file_key` names a key as the file does, for messages (`WeightPorter`).

    Raises:
        CheckpointError: not a CLIP text model, another width (SD2.x), or any
            key or shape that does not match the model.
    """
    prefix = clip_prefix(state_dict, source)
    check_clip_width(state_dict, prefix, text_encoder.output_shape[-1], source)
    state_dict = {k: v for k, v in state_dict.items() if k != prefix + POSITION_IDS}
    porter = WeightPorter(state_dict, source, file_key)
    port_text_encoder(porter, text_encoder, prefix)
    porter.finish(text_encoder.weights)
