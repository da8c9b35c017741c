"""KerasCV's published weights (SD v1.4): where they are, and loading them by layer order.

KerasCV's `.h5` files are Keras 2 legacy weight files: one group per weighted
layer, in the model's layer order, each holding that layer's variables in
order. We read them with h5py and assign them to an explicit list of our
layers, which lets our models differ from KerasCV's in wiring (dynamic size,
ControlNet inputs) while loading the same files unchanged. Models are built
with zero kernels first, so loading never pays for a random initialisation.
"""

import dataclasses
from pathlib import Path

import h5py
import numpy as np

from kcv_sd.cache import cached_download
from kcv_sd.errors import CheckpointError, WeightsNotFoundError

_KERASCV_BASE = "https://huggingface.co/fchollet/stable-diffusion/resolve/main/"


@dataclasses.dataclass(frozen=True)
class WeightFile:
    filename: str
    sha256: str

    @property
    def url(self):
        return _KERASCV_BASE + self.filename


# The files `keras_cv.models.StableDiffusion` downloads, with its hashes.
KERASCV_FILES = {
    "unet": WeightFile(
        "kcv_diffusion_model.h5",
        "8799ff9763de13d7f30a683d653018e114ed24a6a819667da4f5ee10f9e805fe",
    ),
    "text_encoder": WeightFile(
        "kcv_encoder.h5",
        "4789e63e07c0e54d6a34a29b45ce81ece27060c499a709d556c7755b42bb0dc4",
    ),
    "decoder": WeightFile(
        "kcv_decoder.h5",
        "ad350a65cc8bc4a80c8103367e039a3329b4231c2469a1093869a345f55b1962",
    ),
    "image_encoder": WeightFile(
        "vae_encoder.h5",
        "c60fb220a40d090e0f86a6ab4c312d113e115c87c40ff75d11ffcf380aab7ebb",
    ),
}


def kerascv_file(component, source="kerascv"):
    """Path of a component's KerasCV weight file.

    `source` is "kerascv" (Keras cache, downloaded if missing) or a folder
    holding the files under KerasCV's names.
    """
    entry = KERASCV_FILES[component]
    if source == "kerascv":
        return cached_download(entry.filename, entry.url, entry.sha256)
    path = Path(source) / entry.filename
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{entry.filename} ({component} weights) is missing from {source}. "
            f"Put it there (download it from {entry.url}), or pass weights='kerascv'."
        )
    return path


def _h5_attribute_list(group, name):
    """A string-list attribute; Keras splits big ones into name0, name1, ..."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    return [v.decode("utf8") if hasattr(v, "decode") else str(v)
            for chunk in chunks for v in chunk]


def legacy_h5_datasets(f):
    """Per-layer lists of the datasets of an open legacy Keras weights file, in
    file order, unread. Layers without weights are skipped, as Keras' own
    loader does."""
    group = f["model_weights"] if "model_weights" in f else f
    per_layer = []
    for layer_name in _h5_attribute_list(group, "layer_names"):
        layer_group = group[layer_name]
        names = _h5_attribute_list(layer_group, "weight_names")
        if names:
            per_layer.append([layer_group[n] for n in names])
    return per_layer


def assign_layer_weights(layers, per_layer_values, source="weights"):
    """Assign arrays (or h5py datasets, read one at a time) to layers one for
    one, checking counts and every shape before any assignment."""
    if len(layers) != len(per_layer_values):
        raise CheckpointError(
            f"{source} holds {len(per_layer_values)} weighted layers, the model "
            f"has {len(layers)}: it is not a file for this model."
        )
    for index, (layer, values) in enumerate(zip(layers, per_layer_values)):
        shapes = [tuple(v.shape) for v in layer.weights]
        given = [tuple(v.shape) for v in values]
        if shapes != given:
            raise CheckpointError(
                f"{source}: layer #{index} ({layer.name}) expects weights of "
                f"shapes {shapes}, the file has {given}."
            )
    for layer, values in zip(layers, per_layer_values):
        for variable, value in zip(layer.weights, values):
            variable.assign(np.asarray(value))


def weighted_layers(model):
    """A model's layers that own weights, in `model.layers` order."""
    return [layer for layer in model.layers if layer.weights]


def _damaged(path, error):
    return CheckpointError(
        f"{path} is not a readable Keras weights file ({error}): it is damaged or truncated; "
        "delete it and download it again.")


def check_legacy_h5(path):
    """`path`, once its layer list reads as a legacy Keras weights file (no
    array is read): an empty, truncated or foreign file fails before any
    model is built for it."""
    try:
        with h5py.File(path, "r") as f:
            count = len(legacy_h5_datasets(f))
    except (OSError, KeyError) as error:
        raise _damaged(path, error) from None
    if not count:
        raise CheckpointError(f"{path} holds no layer weights: it is not a KerasCV weights file.")
    return path


def load_legacy_h5(layers, path):
    """Load a legacy Keras `.h5` weights file onto an ordered list of layers,
    reading one array at a time (no second copy of the model in memory)."""
    try:
        with h5py.File(path, "r") as f:
            assign_layer_weights(layers, legacy_h5_datasets(f), source=str(path))
    except (OSError, KeyError) as error:  # not HDF5, truncated, or not a Keras weights file
        raise _damaged(path, error) from None
