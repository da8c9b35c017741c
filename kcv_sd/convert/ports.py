"""One port function per layer type: diffusers' names for our layers' weights.

Each function takes a `WeightPorter`, one of our layers and the diffusers
prefix of its PyTorch module, and lists every tensor the module has.
"""

from kcv_sd.convert.porter import torch_conv_kernel, torch_dense_kernel


def port_conv(porter, layer, prefix):
    """`PaddedConv2D` <- `nn.Conv2d`."""
    porter.port(layer.conv2d.kernel, f"{prefix}.weight", torch_conv_kernel)
    porter.port(layer.conv2d.bias, f"{prefix}.bias")


def port_dense(porter, layer, prefix):
    """`keras.layers.Dense` <- `nn.Linear` (with or without bias)."""
    porter.port(layer.kernel, f"{prefix}.weight", torch_dense_kernel)
    if layer.use_bias:
        porter.port(layer.bias, f"{prefix}.bias")


def port_norm(porter, layer, prefix):
    """Group or layer normalisation <- `nn.GroupNorm` / `nn.LayerNorm`."""
    porter.port(layer.gamma, f"{prefix}.weight")
    porter.port(layer.beta, f"{prefix}.bias")


def port_resblock(porter, block, prefix):
    """`ResBlock` <- `ResnetBlock2D`."""
    port_norm(porter, block.norm1, f"{prefix}.norm1")
    port_conv(porter, block.conv1, f"{prefix}.conv1")
    port_dense(porter, block.embedding_projection, f"{prefix}.time_emb_proj")
    port_norm(porter, block.norm2, f"{prefix}.norm2")
    port_conv(porter, block.conv2, f"{prefix}.conv2")
    if block.skip_projection is not None:
        port_conv(porter, block.skip_projection, f"{prefix}.conv_shortcut")


def port_attention(porter, attention, prefix):
    """`Attention` <- diffusers `Attention` (bias-free q, k, v as in SD1.x)."""
    port_dense(porter, attention.to_q, f"{prefix}.to_q")
    port_dense(porter, attention.to_k, f"{prefix}.to_k")
    port_dense(porter, attention.to_v, f"{prefix}.to_v")
    port_dense(porter, attention.out_proj, f"{prefix}.to_out.0")


def port_transformer_block(porter, block, prefix):
    """`TransformerBlock` <- `BasicTransformerBlock` with a GEGLU feed-forward."""
    port_norm(porter, block.norm1, f"{prefix}.norm1")
    port_attention(porter, block.attn1, f"{prefix}.attn1")
    port_norm(porter, block.norm2, f"{prefix}.norm2")
    port_attention(porter, block.attn2, f"{prefix}.attn2")
    port_norm(porter, block.norm3, f"{prefix}.norm3")
    port_dense(porter, block.geglu.dense, f"{prefix}.ff.net.0.proj")
    port_dense(porter, block.dense, f"{prefix}.ff.net.2")


def port_spatial_transformer(porter, transformer, prefix):
    """`SpatialTransformer` <- `Transformer2DModel` with 1x1-conv projections."""
    port_norm(porter, transformer.norm, f"{prefix}.norm")
    port_conv(porter, transformer.proj_in, f"{prefix}.proj_in")
    port_transformer_block(porter, transformer.transformer_block, f"{prefix}.transformer_blocks.0")
    port_conv(porter, transformer.proj_out, f"{prefix}.proj_out")
