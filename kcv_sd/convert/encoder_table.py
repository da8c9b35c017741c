"""The part UNet and ControlNet share: timestep MLP, input conv, down path, middle.

diffusers names it the same way in `UNet2DConditionModel` and
`ControlNetModel`, so both converters use this table.
"""

from kcv_sd.convert.ports import (
    port_conv,
    port_dense,
    port_resblock,
    port_spatial_transformer,
)


def port_encoder(porter, model):
    """Port the layers a `UNet` and a `ControlNet` both own."""
    port_dense(porter, model.time_dense1, "time_embedding.linear_1")
    port_dense(porter, model.time_dense2, "time_embedding.linear_2")
    port_conv(porter, model.conv_in, "conv_in")
    for level, (blocks, downsample) in enumerate(model.down_levels):
        for index, (resblock, transformer) in enumerate(blocks):
            port_resblock(porter, resblock, f"down_blocks.{level}.resnets.{index}")
            if transformer is not None:
                port_spatial_transformer(
                    porter, transformer, f"down_blocks.{level}.attentions.{index}"
                )
        if downsample is not None:
            port_conv(porter, downsample, f"down_blocks.{level}.downsamplers.0.conv")
    res1, transformer, res2 = model.mid_blocks
    port_resblock(porter, res1, "mid_block.resnets.0")
    port_spatial_transformer(porter, transformer, "mid_block.attentions.0")
    port_resblock(porter, res2, "mid_block.resnets.1")
