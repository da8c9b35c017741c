"""diffusers' `AutoencoderKL` (vae/diffusion_pytorch_model.safetensors) -> our decoder and encoder.

Our VAE models are KerasCV's layer sequences (`kcv_sd.vae`), so the tables
below list the diffusers module behind each weighted layer in sequence order,
and the layer's type picks the port function. diffusers' decoder up_blocks
start at the latent's resolution, as the sequence does, so up_blocks.i is
the i-th level of the sequence. SD1.5's VAE has 248 keys (decoder 138,
post_quant_conv 2, encoder 106, quant_conv 2).
"""

from kcv_sd.convert.checks import describe
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.porter import WeightPorter
from kcv_sd.convert.ports import port_conv, port_norm
from kcv_sd.group_norm import GroupNorm
from kcv_sd.padded_conv import PaddedConv2D
from kcv_sd.vae_blocks import AttentionBlock, ResnetBlock
from kcv_sd.weights import weighted_layers

LEVELS = 4  # resolution levels `kcv_sd.vae` builds
DECODER_RESNETS = 3  # per up block: diffusers' layers_per_block=2, plus one
ENCODER_RESNETS = 2  # per down block

# What a decoder-only conversion leaves out of a full AutoencoderKL file.
ENCODER_PREFIXES = ("encoder.", "quant_conv.")

# Attention names before diffusers 0.14, which community VAEs still carry.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def port_vae_resnet(porter, block, prefix):
    """`ResnetBlock` <- `ResnetBlock2D` (no timestep projection in a VAE)."""
    port_norm(porter, block.norm1, f"{prefix}.norm1")
    port_conv(porter, block.conv1, f"{prefix}.conv1")
    port_norm(porter, block.norm2, f"{prefix}.norm2")
    port_conv(porter, block.conv2, f"{prefix}.conv2")
    # The 1x1 projection exists only where the channels change.
    if block.residual_projection is not None:
        port_conv(porter, block.residual_projection, f"{prefix}.conv_shortcut")


def port_vae_attention(porter, block, prefix):
    """`AttentionBlock` (1x1 convs) <- diffusers' single-head VAE `Attention`."""
    port_norm(porter, block.norm, f"{prefix}.group_norm")
    for ours, theirs in zip(("q", "k", "v", "proj_out"), ATTENTION_PROJECTIONS):
        port_conv(porter, getattr(block, ours), f"{prefix}.{theirs}")


PORTS = {
    PaddedConv2D: port_conv,
    ResnetBlock: port_vae_resnet,
    AttentionBlock: port_vae_attention,
    GroupNorm: port_norm,
}


def mid_block(prefix):
    return [f"{prefix}.resnets.0", f"{prefix}.attentions.0", f"{prefix}.resnets.1"]


def decoder_table():
    """diffusers prefix of each weighted layer of `build_decoder`'s model, in order."""
    table = ["post_quant_conv", "decoder.conv_in", *mid_block("decoder.mid_block")]
    for level in range(LEVELS):
        if level:  # UpSampling2D, then the previous level's upsampler conv
            table.append(f"decoder.up_blocks.{level - 1}.upsamplers.0.conv")
        table += [f"decoder.up_blocks.{level}.resnets.{i}" for i in range(DECODER_RESNETS)]
    return table + ["decoder.conv_norm_out", "decoder.conv_out"]


def encoder_table():
    """diffusers prefix of each weighted layer of `build_encoder`'s model, in order."""
    table = ["encoder.conv_in"]
    for level in range(LEVELS):
        table += [f"encoder.down_blocks.{level}.resnets.{i}" for i in range(ENCODER_RESNETS)]
        if level < LEVELS - 1:
            table.append(f"encoder.down_blocks.{level}.downsamplers.0.conv")
    table += mid_block("encoder.mid_block")
    return table + ["encoder.conv_norm_out", "encoder.conv_out", "quant_conv"]


def port_sequence(porter, model, table):
    layers = weighted_layers(model)
    if len(layers) != len(table):
        raise CheckpointError(
            f"{model.name} has {len(layers)} weighted layers where a diffusers VAE has "
            f"{len(table)}: build it with kcv_sd.vae.build_decoder / build_encoder."
        )
    for layer, prefix in zip(layers, table):
        PORTS[type(layer)](porter, layer, prefix)


def attention_as_convs(state_dict, source):
    """The state dict with current attention names and 1x1-conv-shaped projections.

    diffusers keeps the VAE's attention projections as Linear layers (out, in);
    KerasCV's block has 1x1 convolutions, whose PyTorch shape is (out, in, 1, 1).
    """
    converted = {}
    for key, value in state_dict.items():
        head, attention, tail = key.partition(".attentions.0.")
        if attention:
            name, _, parameter = tail.rpartition(".")
            name = LEGACY_ATTENTION_NAMES.get(name, name)
            key = f"{head}{attention}{name}.{parameter}"
            if name in ATTENTION_PROJECTIONS and parameter == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        if key in converted:
            raise CheckpointError(
                f"{source} holds {key} twice, under its current and its legacy "
                "(query/key/value/proj_attn) name: keep one of the two."
            )
        converted[key] = value
    return converted


def convert_diffusers_vae(state_dict, decoder, encoder=None, source="the state dict", file_key=None):
    """Fill our VAE decoder (and encoder) with a diffusers `AutoencoderKL` state dict.

    Args:
        state_dict: {key: numpy array} in PyTorch layouts.
        decoder: a model from `kcv_sd.vae.build_decoder`.
        encoder: a model from `kcv_sd.vae.build_encoder`, or None to fill the
            decoder only.
        source: what the tensors came from, for error messages.
        file_key: names a key as the file does, for messages (`WeightPorter`).
    Returns:
        The keys left out because no encoder was given (sorted), so a caller
        can say what it did not load.
    Raises:
        CheckpointError: not a diffusers VAE, or any key or shape that does
            not match the models.
    """
    if not any(key.startswith("decoder.up_blocks.") for key in state_dict):
        raise CheckpointError(
            f"{source} is not a diffusers AutoencoderKL (it has no decoder.up_blocks.* "
            f"keys); {describe(state_dict)}."
        )
    skipped = ()
    if encoder is None:
        skipped = tuple(sorted(key for key in state_dict if key.startswith(ENCODER_PREFIXES)))
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ENCODER_PREFIXES)}
    porter = WeightPorter(attention_as_convs(state_dict, source), source, file_key)
    port_sequence(porter, decoder, decoder_table())
    variables = list(decoder.weights)
    if encoder is not None:
        port_sequence(porter, encoder, encoder_table())
        variables += encoder.weights
    porter.finish(variables)
    return skipped
