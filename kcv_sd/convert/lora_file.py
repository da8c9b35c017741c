"""Reading a LoRA file into its modules: down and up matrices and alpha, by module name.

Three spellings of the same thing are read:

    kohya / A1111   lora_unet_<module>.lora_down.weight, .lora_up.weight, .alpha
                    lora_te_<module>...            (module path, dots as underscores)
    diffusers/PEFT  unet.<module>.lora_A.weight, .lora_B.weight
                    text_encoder.<module>.lora_A.weight, ...
                    (alpha from the file's `lora_adapter_metadata`, else = rank)
    older diffusers unet.<module>.lora.down.weight, <attention>.processor.to_q_lora.down.weight,
                    text_encoder.<module>.lora_linear_layer.down.weight

Names are kept as the file spells them; `kcv_sd.convert.lora_delta` matches
them against the modules the converters know. SDXL LoRAs (a second text
encoder) and LyCORIS variants other than plain LoRA/LoCon are refused.
"""

import dataclasses
import json

from safetensors import safe_open

from kcv_sd.convert.checks import describe
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.state_dict import check_readable, read_state_dict

_SHOWN = 8

# Key ending -> which tensor of a LoRA module it is.
PARTS = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),  # attention processors, kept below
    (".alpha", "alpha"),
)
# Old diffusers attention-processor LoRAs: "<attention>.processor.to_q_lora" names <attention>.to_q.
PROCESSOR_LAYERS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
CLIP_PROCESSOR_LAYERS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

# Name prefix -> (component, naming); naming "kohya" joins the module path with underscores.
PREFIXES = (
    ("lora_unet_", "unet", "kohya"), ("lora_te_", "text_encoder", "kohya"),
    ("lora_te1_", "text_encoder", "kohya"),
    ("unet.", "unet", "diffusers"), ("text_encoder.", "text_encoder", "diffusers"),
)
SDXL_PREFIXES = ("lora_te2_", "text_encoder_2.")
# The oldest diffusers files (attention processors alone) have no component prefix.
UNET_MODULES = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.")
# LyCORIS and PEFT variants whose delta is not up @ down.
VARIANT_MARKERS = ("hada_", "lokr_", "lora_mid", "dora_scale", "lora_magnitude_vector", ".diff", "oft_",
                   "lora_embedding_")


@dataclasses.dataclass
class LoraModule:
    """One module's LoRA: down (rank, in[, kh, kw]), up (out, rank[, 1, 1]), alpha or None."""

    component: str  # "unet" or "text_encoder"
    name: str  # as the file spells it, prefix removed
    naming: str  # "kohya" (underscores) or "diffusers" (dots)
    key: str  # the file's key of the down matrix, for messages
    down: object = None
    up: object = None
    alpha: float = None

    @property
    def rank(self):
        return self.down.shape[0]


def split_key(key):
    """(component, naming, module name, part) of a LoRA key, or None if it is none."""
    part = next(((end, kind) for end, kind in PARTS if key.endswith(end)), None)
    if part is None:
        return None
    end, kind = part
    name = key[: -len(end)]
    for prefix, component, naming in PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    else:
        if not name.startswith(UNET_MODULES):
            return None
        component, naming = "unet", "diffusers"
    if end.startswith("_lora."):  # "<attention>.processor.to_q" or "<attention>.to_q"
        attention, _, layer = name.rpartition(".")
        attention = attention.removesuffix(".processor")
        layers = CLIP_PROCESSOR_LAYERS if component == "text_encoder" else PROCESSOR_LAYERS
        if layer not in layers:
            return None
        name = f"{attention}.{layers[layer]}"
    return component, naming, name, kind


def read_lora(path, allow_pickle=False):
    """The modules of a LoRA file: {(component, name): `LoraModule`}.

    Raises:
        CheckpointError: not a LoRA, an SDXL LoRA, a LyCORIS variant other
            than LoRA/LoCon, or a module without both matrices.
    """
    path = check_readable(path, allow_pickle)
    tensors = read_state_dict(path, allow_pickle)
    splits = split_keys(tensors, path.name, describe(tensors))
    modules = {}
    for key, (component, naming, name, kind) in splits.items():
        module = modules.setdefault((component, name), LoraModule(component, name, naming, key))
        if kind == "alpha":
            module.alpha = float(tensors[key])
        else:
            setattr(module, kind, tensors[key])
            if kind == "down":
                module.key = key
    incomplete = [m.key for m in modules.values() if m.down is None or m.up is None]
    if incomplete:
        raise CheckpointError(f"{path.name} has LoRA modules without both matrices: {_listing(incomplete)}.")
    if path.suffix == ".safetensors":
        apply_metadata_alphas(modules, _adapter_metadata(path), path.name)
    return modules


def check_lora_file(path):
    """Refuse, from its key names alone, a .safetensors file that is no SD1.x
    LoRA (what `read_lora` refuses before it looks at shapes); other files
    are checked when read."""
    path = check_readable(path, allow_pickle=True)
    if path.suffix == ".safetensors":
        with safe_open(path, framework="np") as f:
            keys = f.keys()
        split_keys(dict.fromkeys(keys), path.name, f"its keys look like: {', '.join(sorted(keys)[:3])}")


def split_keys(keys, source, description):
    """{key: `split_key(key)`} of a file's keys; the key-level refusals."""
    sdxl = next((key for key in keys if key.startswith(SDXL_PREFIXES)), None)
    if sdxl is not None:
        raise CheckpointError(f"{source} is an SDXL LoRA (it has {sdxl!r}): kcv-sd runs SD1.x models only.")
    variant = next((key for key in sorted(keys) if any(m in key for m in VARIANT_MARKERS)), None)
    if variant is not None:
        raise CheckpointError(
            f"{source} is a LoRA variant kcv-sd does not apply (key {variant!r}: LyCORIS LoHa/LoKr/DoRA "
            "or the like); plain LoRA and LoCon files are supported."
        )
    splits = {key: split_key(key) for key in keys}
    unknown = [key for key, split in splits.items() if split is None]
    if len(unknown) == len(splits):
        raise CheckpointError(f"{source} is not a LoRA file (no lora_down/lora_A keys); {description}.")
    if unknown:
        raise CheckpointError(f"{source} has keys that are no LoRA tensors: {_listing(unknown)}.")
    return splits


def _adapter_metadata(path):
    with safe_open(path, framework="np") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    return json.loads(raw) if raw else {}


def apply_metadata_alphas(modules, metadata, source):
    """The alpha of each module without an alpha key, from the LoRA config
    diffusers saves with a PEFT file ("unet.lora_alpha", "unet.alpha_pattern", ...)."""
    for (component, name), module in modules.items():
        if module.alpha is not None:
            continue
        config = {key[len(component) + 1:]: value for key, value in metadata.items()
                  if key.startswith(component + ".")}
        if config.get("use_dora") or config.get("use_rslora"):
            raise CheckpointError(f"{source}: DoRA and rsLoRA adapters are not supported.")
        pattern = next((alpha for suffix, alpha in (config.get("alpha_pattern") or {}).items()
                        if name == suffix or name.endswith("." + suffix)), None)
        alpha = pattern if pattern is not None else config.get("lora_alpha")
        if alpha is not None:
            module.alpha = float(alpha)


def _listing(keys):
    keys = sorted(keys)
    return ", ".join(keys[:_SHOWN]) + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")
