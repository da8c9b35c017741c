"""LoRAs fused into the UNet's and text encoder's weights: nothing per step.

Setting a list of (file, scale) restores every variable a LoRA touched to an
exact copy of its value before any LoRA, then assigns, per touched
variable, original + the sum of the LoRAs' changes, computed in float32 and
rounded once to the variable's dtype (16-bit weights under 16-bit
precisions, `kcv_sd.unet_blocks.weights_policy`). Variables are assigned in
place: the models and their compiled functions stay as they are. Every file
is read and checked before any weight changes, so a bad file leaves the
models untouched.
"""

import dataclasses
import os
from pathlib import Path

import keras
import numpy as np

from kcv_sd.convert.lora_delta import ModuleTables, lora_changes, module_delta
from kcv_sd.convert.lora_file import read_lora
from kcv_sd.convert.state_dict import check_readable
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.weight_cache import FROZEN_WEIGHTS_VARIABLE, caching_asked


@dataclasses.dataclass(frozen=True)
class Lora:
    """A LoRA file and the scale it is applied at."""

    path: Path
    scale: float = 1.0

    def identity(self):
        """What makes two loads the same: the file's path, size and time, and the scale."""
        check_readable(self.path, allow_pickle=True)  # it exists, of a known type
        stat = self.path.stat()
        return str(self.path.resolve()), stat.st_size, stat.st_mtime_ns, self.scale


def as_lora(entry):
    """A `Lora` from "file", "file:scale", (file, scale) or a `Lora`."""
    if isinstance(entry, Lora):
        return entry
    if isinstance(entry, (tuple, list)):
        if len(entry) != 2:
            raise InvalidArgumentError(f"A LoRA is a file or (file, scale), not {entry!r}.")
        path, scale = entry
    else:
        path, scale = parse_lora_argument(str(entry))
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale):
        raise InvalidArgumentError(f"LoRA scale {scale!r} for {path} is not a finite number.")
    return Lora(Path(path), float(scale))


def parse_lora_argument(text):
    """(path, scale) of "FILE[:SCALE]": a trailing ":number" is the scale
    (a path may hold colons); no scale is 1."""
    head, colon, tail = text.rpartition(":")
    if colon:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


def as_loras(loras):
    """A tuple of `Lora` from None, one entry or a list of entries (`as_lora`)."""
    if loras is None:
        return ()
    if isinstance(loras, (str, os.PathLike, Lora)):
        loras = [loras]
    return tuple(as_lora(entry) for entry in loras)


class FusedLoras:
    """The LoRAs fused into a `Components`' UNet and text encoder, and the
    original values of the variables they change.

    `version` counts the changes to the text encoder's weights, for those
    who cache its outputs (the pipeline's empty-prompt encoding).
    """

    def __init__(self, components):
        self.components = components
        self.active = ()  # the `Lora`s fused now
        self._identity = ()
        # id(variable): (variable, exact copy of its value before any LoRA, component)
        self.originals = {}
        self.version = 0
        self._tables = None

    @property
    def tables(self):
        if self._tables is None:
            self._tables = ModuleTables(self.components.unet, self.components.text_encoder)
        return self._tables

    def differs(self, loras):
        """Whether `loras` are not the ones fused now (same files, unchanged, at the same scales)."""
        return tuple(lora.identity() for lora in as_loras(loras)) != self._identity

    def set(self, loras, allow_pickle=False):
        """Fuse exactly `loras` (a list of `Lora`), replacing those fused
        before; nothing happens when they are the ones fused already."""
        loras = as_loras(loras)
        identity = tuple(lora.identity() for lora in loras)
        if identity == self._identity:
            return
        fused = {}  # id(variable): (variable, [(module, target, scale), ...], component)
        for lora in loras:  # every file read and checked before any weight changes
            modules = read_lora(lora.path, allow_pickle)
            for component, target, module, scale in lora_changes(modules, self.tables, lora.scale, lora.path.name):
                variable = target.variable
                fused.setdefault(id(variable), (variable, [], component))[1].append((module, target, scale))
        changed = {component for *_, component in (*fused.values(), *self.originals.values())}
        self._restore(keep=fused)
        for key, (variable, parts, component) in fused.items():  # one change in memory at a time
            if key not in self.originals:
                self.originals[key] = (variable, exact_copy(variable), component)
            original = self.originals[key][1]
            total = keras.ops.cast(original, "float32")
            for module, target, scale in parts:
                total = total + module_delta(module, target, scale)
            variable.assign(keras.ops.cast(total, original.dtype))
        self.active, self._identity = loras, identity
        if "text_encoder" in changed:
            self.version += 1

    def _restore(self, keep=()):
        """Give every changed variable that `keep` does not name its original
        value back, and forget that (those in `keep` are assigned anew)."""
        for key in [key for key in self.originals if key not in keep]:
            variable, original, _ = self.originals.pop(key)
            variable.assign(original)


def exact_copy(variable):
    """The variable's value as a numpy array of its dtype that owns its data
    (from the read tensor: several times faster than through the variable)."""
    value = keras.ops.convert_to_numpy(variable.value)
    return value if value.flags.owndata else value.copy()


def fused_loras(components):
    """The `FusedLoras` of `components`, made on first use."""
    if components.loras is None:
        components.loras = FusedLoras(components)
    return components.loras


def text_weights_version(components):
    """Counts the LoRA changes to `components`' text encoder weights (0: none yet)."""
    return 0 if components.loras is None else components.loras.version


def check_weights_changeable(pipeline_has_run):
    """Refuse to change weights that oneDNN weight caching has frozen
    (`kcv_sd.weight_cache`): kernels would go on computing with the old ones."""
    if pipeline_has_run and caching_asked():
        raise InvalidArgumentError(
            f"LoRAs cannot change after the pipeline's first image while {FROZEN_WEIGHTS_VARIABLE}=1 "
            "(oneDNN weight caching keeps the first weights): set them before the first image, or set it to 0."
        )
