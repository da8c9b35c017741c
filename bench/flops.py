"""Analytic FLOP count of one UNet evaluation, read off its `UNetConfig`, mirroring `kcv_sd.unet.UNet` level by level.

Two FLOPs per multiply-add of every convolution, dense layer and the two attention matmuls (scores and weighted sum).
Norms, activations and additions are left out: a few percent of the work, and not on matrix units, so achieved FLOP/s
compare directly with a matmul benchmark.
"""

from kcv_sd.routing import side_at


def conv_flops(height, width, in_channels, out_channels, kernel):
    return 2 * height * width * kernel * kernel * in_channels * out_channels


def dense_flops(tokens, in_features, out_features):
    return 2 * tokens * in_features * out_features


def attention_flops(queries, keys, width):
    """Scores (q.k over all heads) plus weights times values."""
    return 2 * (2 * queries * keys * width)


def resblock_flops(height, width, in_channels, out_channels, embed_dim):
    flops = conv_flops(height, width, in_channels, out_channels, 3) + dense_flops(1, embed_dim, out_channels)
    flops += conv_flops(height, width, out_channels, out_channels, 3)
    if in_channels != out_channels:
        flops += conv_flops(height, width, in_channels, out_channels, 1)
    return flops


def transformer_flops(height, width, channels, context_length, context_dim):
    """proj_in, self-attention, cross-attention, GEGLU feed-forward, proj_out."""
    n, c = height * width, channels
    projections = 2 * conv_flops(height, width, c, c, 1)
    self_attention = 4 * dense_flops(n, c, c) + attention_flops(n, n, c)
    cross_attention = (2 * dense_flops(n, c, c) + 2 * dense_flops(context_length, context_dim, c)
                       + attention_flops(n, context_length, c))
    feed_forward = dense_flops(n, c, 8 * c) + dense_flops(n, 4 * c, c)
    return projections + self_attention + cross_attention + feed_forward


def _level_block(c, h, w, in_channels, out_channels, level, context_length):
    block = resblock_flops(h, w, in_channels, out_channels, c.time_embed_dim)
    if c.attention_levels[level]:
        block += transformer_flops(h, w, out_channels, context_length, c.context_dim)
    return block


def _down_and_middle(c, latent_height, latent_width, context_length):
    """The part a ControlNet shares with the UNet (timestep MLP, input conv, down path, middle block): its FLOPs
    for one image, each skip tensor's (height, width, channels), and the middle output's."""
    h, w = latent_height, latent_width
    flops = dense_flops(1, c.timestep_dim, c.time_embed_dim) + dense_flops(1, c.time_embed_dim, c.time_embed_dim)
    flops += conv_flops(h, w, c.latent_channels, c.block_channels[0], 3)
    channels = c.block_channels[0]
    skips = [(h, w, channels)]
    for level, out_channels in enumerate(c.block_channels):
        for _ in range(c.layers_per_block):
            flops += _level_block(c, h, w, channels, out_channels, level, context_length)
            channels = out_channels
            skips.append((h, w, channels))
        if level < len(c.block_channels) - 1:
            h, w = side_at(latent_height, level + 1), side_at(latent_width, level + 1)
            flops += conv_flops(h, w, channels, channels, 3)
            skips.append((h, w, channels))
    flops += 2 * resblock_flops(h, w, channels, channels, c.time_embed_dim)
    flops += transformer_flops(h, w, channels, context_length, c.context_dim)
    return flops, skips, (h, w, channels)


def unet_flops(config, latent_height, latent_width, batch=1, context_length=77):
    """FLOPs of one UNet call on `batch` latents (a guided step has 2x the images)."""
    c = config
    flops, skips, (h, w, channels) = _down_and_middle(c, latent_height, latent_width, context_length)
    for level in reversed(range(len(c.block_channels))):
        out_channels = c.block_channels[level]
        for _ in range(c.layers_per_block + 1):
            flops += _level_block(c, h, w, channels + skips.pop()[2], out_channels, level, context_length)
            channels = out_channels
        if level > 0:  # up to the size of the skip connection, odd or even
            h, w = side_at(latent_height, level - 1), side_at(latent_width, level - 1)
            flops += conv_flops(h, w, channels, channels, 3)

    flops += conv_flops(h, w, channels, c.latent_channels, 3)
    return batch * flops


def controlnet_flops(config, latent_height, latent_width, batch=1, context_length=77):
    """FLOPs of one ControlNet call as a step runs it (`kcv_sd.controlnet.ControlNet.step_model`): the UNet's down
    path and middle block, and a 1x1 zero convolution on each skip and the middle output. The hint encoder runs once
    per call, not per step, and is left out. Beside `unet_flops`, 1 + this / that is the ControlNet step ratio a
    ControlNet running at the UNet's FLOP rate reaches."""
    flops, skips, middle = _down_and_middle(config.unet, latent_height, latent_width, context_length)
    flops += sum(conv_flops(h, w, channels, channels, 1) for h, w, channels in [*skips, middle])
    return batch * flops
