"""Recognising what a checkpoint is, to refuse the wrong one with a clear message.

Only SD1.x models are supported. SDXL and SD2.x checkpoints have the same
key names with other widths, so they are told apart by their telltale keys
and by the width of the text encoding their cross-attention reads.
"""

from kcv_sd.convert.errors import CheckpointError

# Keys only SDXL UNets and ControlNets have (added size/crop conditioning),
# in diffusers and in original naming.
SDXL_MARKERS = ("add_embedding.linear_1.weight", "label_emb.0.0.weight",
                "control_model.label_emb.0.0.weight", "model.diffusion_model.label_emb.0.0.weight")

TEXT_WIDTH_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}

# A few keys that tell what a file is when it is not what was asked for.
LOOKS_LIKE = {
    "controlnet_cond_embedding.conv_in.weight": "a diffusers ControlNet",
    "control_model.input_hint_block.0.weight": "an original-format ControlNet",
    "conv_norm_out.weight": "a diffusers UNet (UNet2DConditionModel)",
    "model.diffusion_model.out.0.weight": "an original-format (CompVis) Stable Diffusion checkpoint",
    "decoder.conv_out.weight": "a VAE",
    "text_model.embeddings.token_embedding.weight": "a CLIP text encoder",
}


def reject_sdxl(state_dict, source):
    marker = next((key for key in SDXL_MARKERS if key in state_dict), None)
    if marker is not None:
        raise CheckpointError(
            f"{source} is an SDXL model (it has {marker!r}): not supported, "
            "kcv-sd runs SD1.x models only."
        )


def check_text_width(state_dict, context_dim, source):
    """Refuse a checkpoint whose cross-attention reads another text width."""
    key = next((k for k in state_dict if k.endswith("attn2.to_k.weight")), None)
    if key is None:
        return
    width = state_dict[key].shape[1]
    if width != context_dim:
        family = TEXT_WIDTH_FAMILIES.get(width, "an unknown model family")
        raise CheckpointError(
            f"{source} cross-attends to {width}-wide text encodings ({family}), "
            f"the model reads {context_dim}-wide ones: not supported."
        )


def describe(state_dict):
    """What a checkpoint looks like, for messages: a kind or a few of its keys."""
    kind = next((LOOKS_LIKE[key] for key in LOOKS_LIKE if key in state_dict), None)
    if kind is not None:
        return f"it looks like {kind}"
    sample = ", ".join(sorted(state_dict)[:3])
    return f"its keys look like: {sample}" if sample else "it holds no tensors"
