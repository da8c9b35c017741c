"""Converted single-file checkpoints, kept under the Keras home by content hash.

A single-file checkpoint is converted once: our models' weights are then
saved, in Keras' layout and the checkpoint's dtype, one safetensors file
per model, in a folder named after the sha256 of the checkpoint (and of a
separate VAE), the EMA choice, the model family and the precision.
The same file under another name or path hits the same entry. A file's
hash is remembered by path, size and modification time, so a second start
reads neither the checkpoint nor its hash.
"""

import functools
import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from kcv_sd.cache import keras_home

HASHES = "hashes.json"


def cache_root():
    return keras_home() / "kcv_sd" / "checkpoints"


def file_digest(path):
    """sha256 of a file's content, read from the hash index while the file's
    path, size and modification time are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    index_path = cache_root() / HASHES
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    known = index.get(str(path))
    if known and known[:2] == stamp:
        return known[2]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    index[str(path)] = [*stamp, digest]
    write_atomically(index_path, lambda temporary: temporary.write_text(json.dumps(index)))
    return digest


def write_atomically(path, write):
    """`write(temporary_path)`, then the file renamed into place: a reader
    never sees half a file, even if the process is killed while writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{os.getpid()}.tmp.{path.name}")
    write(temporary)
    os.replace(temporary, path)


def entry(checkpoint, vae, ema, model, precision):
    """The cache folder of a conversion (existing or not)."""
    name = f"{model}-{precision}-{file_digest(checkpoint)[:24]}"
    if ema:
        name += "-ema"
    if vae is not None:
        name += f"-vae-{file_digest(vae)[:24]}"
    return cache_root() / name


def has_entry(folder, names):
    """Whether `folder` holds a file for each model name."""
    return all((folder / f"{name}.safetensors").is_file() for name in names)


def load_cached(folder, models):
    """Load {name: Keras model} from `folder`, one tensor at a time. False
    unless every model has a file there that fits it (an entry written by
    another version of the models is converted again); a model whose file
    does not fit is left as is."""
    if not has_entry(folder, models):
        return False
    for name, model in models.items():
        with safe_open(folder / f"{name}.safetensors", framework="np") as f:
            variables = model.weights
            expected = {f"{i:04d}": tuple(variable.shape) for i, variable in enumerate(variables)}
            if {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()} != expected:  # noqa: SIM118
                return False
            for key, variable in zip(expected, variables):
                variable.assign(keras.ops.cast(f.get_tensor(key), variable.dtype))
    return True


def save_cached(folder, models, source_dtype=None):
    """Save {name: Keras model} into `folder`, one safetensors file per model,
    weights by their index in `model.weights`. float32 weights are stored in
    `source_dtype`, where it is float16 or bfloat16 (the checkpoint's dtype,
    so nothing is lost and a half-precision file's entry is half its size)."""
    for name, model in models.items():
        tensors = {f"{i:04d}": stored(variable, source_dtype) for i, variable in enumerate(model.weights)}
        write_atomically(folder / f"{name}.safetensors", functools.partial(save_file, tensors))
        del tensors


def stored(variable, source_dtype):
    value = keras.ops.convert_to_numpy(variable)
    if value.dtype == np.float32 and source_dtype is not None and np.dtype(source_dtype).itemsize == 2:
        return value.astype(source_dtype)
    return value
