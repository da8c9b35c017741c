"""Which Keras variable, in which layout, each diffusers module's weight fills:
the converters' own tables, read instead of ported.

A LoRA names the PyTorch modules it changes (diffusers' module paths, or
kohya's underscore-joined spelling of them). Running the converters' port
functions with a `TargetRecorder` in place of a `WeightPorter` lists every
`<module>.weight` key with the variable and the layout change the converter
would use, so a LoRA's delta reaches our layers through the same mapping as
the checkpoint's weights do.
"""

import dataclasses

from kcv_sd.convert.ldm_unet import unet_prefixes
from kcv_sd.convert.porter import Transpose
from kcv_sd.convert.renaming import replace_prefix
from kcv_sd.convert.text_encoder_diffusers import port_text_encoder
from kcv_sd.convert.unet_diffusers import port_unet

TEXT_PREFIX = "text_model."  # transformers' CLIPTextModel module paths start here


@dataclasses.dataclass(frozen=True)
class Target:
    """A module's weight: our `variable`, and `transform` from PyTorch's layout to it."""

    variable: object
    transform: Transpose

    @property
    def torch_shape(self):
        """The PyTorch weight's shape: (out, in) or (out, in, kh, kw)."""
        shape = [0] * len(self.variable.shape)
        for axis, source in enumerate(self.transform.axes):
            shape[source] = self.variable.shape[axis]
        return tuple(shape)


class TargetRecorder:
    """Stands in for `WeightPorter`: records each weight key's variable and
    layout, for the layers whose weight is a Dense or convolution kernel."""

    def __init__(self):
        self.targets = {}

    def port(self, variable, key, transform=None):
        if key.endswith(".weight") and isinstance(transform, Transpose):
            self.targets[key[: -len(".weight")]] = Target(variable, transform)


def unet_targets(unet):
    """{diffusers module path: `Target`} of a `kcv_sd.unet.UNet` (its model built)."""
    recorder = TargetRecorder()
    unet.model()
    port_unet(recorder, unet)
    return recorder.targets


def text_encoder_targets(text_encoder):
    """{transformers module path ("text_model. ..."): `Target`} of our CLIP text encoder."""
    recorder = TargetRecorder()
    port_text_encoder(recorder, text_encoder, TEXT_PREFIX)
    return recorder.targets


def ldm_module_names(unet_config, modules):
    """{CompVis/LDM module path: diffusers module path} for `modules`, through
    the single-file converter's table (kohya's SD1.x LoRAs extracted from an
    original-format checkpoint name the UNet's modules that way)."""
    inverse = {new: old for old, new in unet_prefixes(unet_config).items()}
    names = {}
    for module in modules:
        original = replace_prefix(module + ".weight", inverse)
        if original is not None:
            names[original[: -len(".weight")]] = module
    return names


def underscored(names):
    """{name with dots as underscores: diffusers module path}, as kohya spells
    module paths, of module paths or of {name: diffusers module path}."""
    if not isinstance(names, dict):
        names = {name: name for name in names}
    table = {name.replace(".", "_"): path for name, path in names.items()}
    assert len(table) == len(names), "two module paths spell alike with underscores"
    return table
