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


def unet_flops(config, latent_height, latent_width, batch=1, context_length=77):
    """FLOPs of one UNet call on `batch` latents (a guided step has 2x the images)."""
    c, h, w = config, latent_height, latent_width
    flops = dense_flops(1, c.timestep_dim, c.time_embed_dim) + dense_flops(1, c.time_embed_dim, c.time_embed_dim)
    flops += conv_flops(h, w, c.latent_channels, c.block_channels[0], 3)

    def level_block(in_channels, out_channels, level):
        block = resblock_flops(h, w, in_channels, out_channels, c.time_embed_dim)
        if c.attention_levels[level]:
            block += transformer_flops(h, w, out_channels, context_length, c.context_dim)
        return block

    channels = c.block_channels[0]
    skips = [channels]
    for level, out_channels in enumerate(c.block_channels):
        for _ in range(c.layers_per_block):
            flops += level_block(channels, out_channels, level)
            channels = out_channels
            skips.append(channels)
        if level < len(c.block_channels) - 1:
            h, w = side_at(latent_height, level + 1), side_at(latent_width, level + 1)
            flops += conv_flops(h, w, channels, channels, 3)
            skips.append(channels)

    flops += 2 * resblock_flops(h, w, channels, channels, c.time_embed_dim)
    flops += transformer_flops(h, w, channels, context_length, c.context_dim)

    for level in reversed(range(len(c.block_channels))):
        out_channels = c.block_channels[level]
        for _ in range(c.layers_per_block + 1):
            flops += level_block(channels + skips.pop(), out_channels, level)
            channels = out_channels
        if level > 0:  # up to the size of the skip connection, odd or even
            h, w = side_at(latent_height, level - 1), side_at(latent_width, level - 1)
            flops += conv_flops(h, w, channels, channels, 3)

    flops += conv_flops(h, w, channels, c.latent_channels, 3)
    return batch * flops
