"""Textual inversion: learned token embeddings added to the text encoder.

An embedding file holds one or more vectors as wide as the text encoder's
token embeddings (768 for SD1.x). A token of n vectors becomes n new token
ids after the vocabulary, read in prompts as `token`, `token_1`, ...
`token_{n-1}` would be in diffusers (which expands `token` to them); the
vectors are rows of the text encoder's `CLIPEmbedding`, and the
pipeline's tokenizer maps the token's text to its ids.

Files read:
    A1111 .pt/.bin   {"string_to_param": {"*": (n, width)}, "name": ..., ...}
    A1111 .safetensors   {"emb_params": (n, width)}
    diffusers        learned_embeds.safetensors / .bin: {token: (width,) or (n, width)}
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from kcv_sd.convert.checks import TEXT_WIDTH_FAMILIES
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.state_dict import check_readable
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.text_encoder import CLIPEmbedding


def read_embedding(path, allow_pickle=False):
    """(vectors (n, width) float32, the file's own token name or None).

    Raises:
        CheckpointError: no embedding in the file's formats.
    """
    path = check_readable(path, allow_pickle)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        content = load_file(path)
    else:
        import torch

        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad pickle
            raise CheckpointError(f"{path.name} cannot be read as an embedding ({type(error).__name__}).") from None
    name = None
    if isinstance(content, dict) and isinstance(content.get("string_to_param"), dict):  # A1111 .pt
        tensors = list(content["string_to_param"].values())
        name = content.get("name") if isinstance(content.get("name"), str) else None
    elif isinstance(content, dict) and "emb_params" in content:  # A1111 .safetensors
        tensors = [content["emb_params"]]
    elif isinstance(content, dict) and len(content) == 1:  # diffusers {token: vectors}
        name, tensor = next(iter(content.items()))
        tensors = [tensor]
    else:
        keys = ", ".join(sorted(map(str, content))[:3]) if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(
            f"{path.name} is not a textual inversion embedding (A1111's string_to_param or emb_params, "
            f"or diffusers' one {{token: vectors}}); it holds: {keys}."
        )
    vectors = np.asarray(tensors[0].float().numpy() if hasattr(tensors[0], "float") else tensors[0], np.float32)
    if len(tensors) != 1 or vectors.ndim not in (1, 2):
        raise CheckpointError(f"{path.name} holds {len(tensors)} embeddings of shape {vectors.shape}: expected one (n, width).")
    return vectors.reshape(-1, vectors.shape[-1]), name


def token_names(token, count):
    """The token texts of a `count`-vector embedding, as diffusers names them."""
    return [token] + [f"{token}_{index}" for index in range(1, count)]


def embedding_layer(text_encoder):
    (layer,) = [layer for layer in text_encoder.layers if isinstance(layer, CLIPEmbedding)]
    return layer


def add_embedding(text_encoder, tokenizer, path, token=None, allow_pickle=False):
    """Add a file's vectors as new token rows of `text_encoder`; the
    tokenizer that reads `token` as them. Returns (tokenizer, whether the
    text encoder must be traced again: its first added rows).

    Raises:
        CheckpointError: not an embedding, or of another width (SD2.x: 1024).
        InvalidArgumentError: the token is taken already.
    """
    vectors, name = read_embedding(path, allow_pickle)
    source = Path(path).name
    layer = embedding_layer(text_encoder)
    width = layer.token_embedding.embeddings.shape[1]
    if vectors.shape[1] != width:
        family = TEXT_WIDTH_FAMILIES.get(vectors.shape[1], "an unknown model family")
        raise CheckpointError(
            f"{source} is a {vectors.shape[1]}-wide embedding ({family}); the text encoder's tokens are "
            f"{width} wide: not supported."
        )
    token = token or name or Path(path).stem
    names = token_names(token, len(vectors))
    taken = [text for text in names if text in tokenizer.added]
    if taken:
        raise InvalidArgumentError(f"Token {taken[0]!r} is loaded already; give {source} another token=.")
    vocabulary = layer.token_embedding.embeddings.shape[0]
    dtype = layer.token_embedding.embeddings.dtype
    old = np.zeros((0, width), np.float32) if layer.extra_rows is None else layer.extra_rows.numpy().astype(np.float32)
    rows = tf.constant(np.concatenate([old, vectors]), dtype=dtype)
    first = layer.extra_rows is None
    if first:
        layer.extra_rows = tf.Variable(rows, shape=tf.TensorShape([None, width]), trainable=False)
    else:
        layer.extra_rows.assign(rows)
    ids = {text: [vocabulary + len(old) + index] for index, text in enumerate(names)}
    expanded = {token: [i for text in names for i in ids[text]], **dict(list(ids.items())[1:])}
    return tokenizer.with_added_tokens(expanded), first
