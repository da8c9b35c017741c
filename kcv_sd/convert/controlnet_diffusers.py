"""diffusers' `ControlNetModel` (diffusion_pytorch_model.safetensors) -> `ControlNet`.

SD1.5 ControlNets have 340 keys: the shared encoder (see `encoder_table`),
the conditioning embedding, 12 skip zero convolutions and the middle one.
"""

from kcv_sd.controlnet import ControlNet
from kcv_sd.convert.encoder_table import port_encoder
from kcv_sd.convert.porter import WeightPorter
from kcv_sd.convert.ports import port_conv


def port_conditioning_embedding(porter, embedding, prefix):
    """`ConditioningEmbedding` <- `ControlNetConditioningEmbedding`."""
    port_conv(porter, embedding.conv_in, f"{prefix}.conv_in")
    for index, conv in enumerate(embedding.blocks):
        port_conv(porter, conv, f"{prefix}.blocks.{index}")
    port_conv(porter, embedding.conv_out, f"{prefix}.conv_out")


def port_controlnet(porter, controlnet):
    port_encoder(porter, controlnet)
    port_conditioning_embedding(porter, controlnet.conditioning_embedding,
                                "controlnet_cond_embedding")
    for index, conv in enumerate(controlnet.zero_convs):
        port_conv(porter, conv, f"controlnet_down_blocks.{index}")
    port_conv(porter, controlnet.mid_zero_conv, "controlnet_mid_block")


def convert_diffusers_controlnet(state_dict, config, source):
    """A `ControlNet` holding a diffusers-format state dict's weights."""
    controlnet = ControlNet(config, initializer="zeros")
    model = controlnet.model()  # creates the variables
    porter = WeightPorter(state_dict, source)
    port_controlnet(porter, controlnet)
    porter.finish(model.weights)
    return controlnet
