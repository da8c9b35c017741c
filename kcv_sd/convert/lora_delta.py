"""A LoRA's weight changes, in our variables' layouts.

For a module with down (r, in[, kh, kw]), up (out, r[, 1, 1]) and alpha,
the change to its PyTorch weight (out, in[, kh, kw]) is

    scale * (alpha / r) * up @ down     (alpha = r when the file has none)

as kohya's scripts, A1111 and diffusers' `fuse_lora` apply it (a LoCon's
convolution LoRA flattens down's (in, kh, kw) into one axis). The change
goes through the converter's layout change for `<module>.weight`
(`kcv_sd.convert.lora_targets`).
"""

import keras
import numpy as np

from kcv_sd.convert.checks import TEXT_WIDTH_FAMILIES
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.lora_targets import (
    TEXT_PREFIX,
    ldm_module_names,
    text_encoder_targets,
    underscored,
    unet_targets,
)

_SHOWN = 8
COMPONENT_NAMES = {"unet": "UNet", "text_encoder": "text encoder"}


class ModuleTables:
    """The modules a LoRA may change, by the names files give them."""

    def __init__(self, unet, text_encoder):
        self.context_dim = unet.config.context_dim
        self.text_width = text_encoder.output_shape[-1]
        unet_modules = unet_targets(unet)
        text_modules = text_encoder_targets(text_encoder)
        self.targets = {"unet": unet_modules, "text_encoder": text_modules}
        # kohya: underscores for dots, in diffusers' names or (SD1.x LoRAs
        # extracted from a CompVis checkpoint) in the original ones.
        self.kohya = {
            "unet": {**underscored(ldm_module_names(unet.config, unet_modules)), **underscored(list(unet_modules))},
            "text_encoder": underscored(list(text_modules)),
        }

    def path(self, module):
        """The diffusers module path `module` names, or None."""
        names = self.kohya[module.component] if module.naming == "kohya" else self.targets[module.component]
        prefix = TEXT_PREFIX.replace(".", "_") if module.naming == "kohya" else TEXT_PREFIX
        if module.name in names:
            return names[module.name] if module.naming == "kohya" else module.name
        # transformers 5 names CLIP's modules without "text_model.".
        if module.component == "text_encoder" and prefix + module.name in names:
            return names[prefix + module.name] if module.naming == "kohya" else prefix + module.name
        return None

    def check_widths(self, modules, source):
        """Refuse another family's LoRA by the text width it reads."""
        for module in modules.values():
            name = module.name.replace("_", ".")
            reads_text = module.component == "unet" and name.endswith(("attn2.to.k", "attn2.to.v"))
            expected = self.context_dim if reads_text else self.text_width
            if (reads_text or module.component == "text_encoder" and name.endswith("q.proj")) \
                    and module.down.shape[1] != expected:
                width = module.down.shape[1]
                family = TEXT_WIDTH_FAMILIES.get(width, "an unknown model family")
                what = "cross-attends to" if reads_text else "has a text encoder of"
                raise CheckpointError(
                    f"{source} {what} {width}-wide text encodings ({family}; key {module.key}); "
                    f"the model's are {expected} wide: not supported."
                )


def lora_changes(modules, tables, scale, source):
    """[(component, `Target`, `LoraModule`, scale)] of a LoRA file's modules
    (`kcv_sd.convert.lora_file.read_lora`), each checked to fit its weight.

    Raises:
        CheckpointError: a module the models do not have, or shapes that do
            not fit its weight; one line naming the file and the keys.
    """
    tables.check_widths(modules, source)
    paths = {key: tables.path(module) for key, module in modules.items()}
    unknown = [f"{modules[key].key}" for key, path in paths.items() if path is None]
    if unknown:
        listing = ", ".join(sorted(unknown)[:_SHOWN]) + (
            f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else "")
        raise CheckpointError(f"{source} changes modules the SD1.x UNet and text encoder do not have: {listing}.")
    changes = []
    for key, module in modules.items():
        target = tables.targets[module.component][paths[key]]
        check_fit(module, target, source)
        changes.append((module.component, target, module, scale))
    return changes


def check_fit(module, target, source):
    """Refuse down (rank, in[, kh, kw]) and up (out, rank[, 1, 1]) that do
    not make `target`'s PyTorch weight shape."""
    down, up, shape = module.down, module.up, target.torch_shape
    rank = down.shape[0] if down.ndim in (2, 4) else None
    fits = (
        rank is not None and up.ndim == down.ndim and up.shape[1] == rank and up.shape[0] == shape[0]
        and tuple(up.shape[2:]) in ((), (1, 1)) and down.shape[1] == shape[1]
        and int(np.prod(down.shape[1:])) == int(np.prod(shape[1:]))
    )
    if not fits:
        raise CheckpointError(
            f"{source}: {module.key} {tuple(down.shape)} with up {tuple(up.shape)} does not fit "
            f"{COMPONENT_NAMES[module.component]} weight {tuple(shape)} (down (rank, in[, kh, kw]), "
            "up (out, rank[, 1, 1]))."
        )


def module_delta(module, target, scale):
    """scale * alpha / rank * up @ down, in `target`'s variable layout, float32
    (a backend tensor: the matmul and transpose run multithreaded)."""
    shape, rank = target.torch_shape, module.rank
    alpha = rank if module.alpha is None else module.alpha
    down = keras.ops.reshape(keras.ops.cast(module.down, "float32"), (rank, -1))
    up = keras.ops.reshape(keras.ops.cast(module.up, "float32"), (shape[0], rank))
    delta = keras.ops.matmul(up * np.float32(scale * alpha / rank), down)
    return keras.ops.transpose(keras.ops.reshape(delta, shape), target.transform.axes)
