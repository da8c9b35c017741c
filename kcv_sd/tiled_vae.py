"""Tiled VAE decoding: large images in bounded memory.

The decoder's cost grows with the latent's area (its attention block is
quadratic in it), so a 2048x2048 image does not decode in one call on most
GPUs. `decode_tiled` decodes overlapping latent tiles of one size (one
compiled shape) and cross-fades them with linear ramps over the overlaps.
Tiles see less context than the whole latent, so seams are blended, not
exact; a latent that fits in one tile decodes exactly as in one call.
"""

import math

import numpy as np

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.vae import PIXELS_PER_LATENT


def tile_starts(length, tile, overlap):
    """Start offsets of tiles of size min(tile, length) covering [0, length),
    spread evenly so that neighbours share at least `overlap`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [int(start) for start in np.round(np.linspace(0, length - tile, count))]


def blend_weights(length, starts, size):
    """Per-tile weights along one axis, float32 (size,) each, summing to one at
    every position: linear ramps across each overlap with a neighbour, flat
    elsewhere, then normalised (which matters only where three tiles meet)."""
    centres = np.arange(size) + 0.5
    ramps = []
    for index, start in enumerate(starts):
        weight = np.ones(size)
        shared_before = starts[index - 1] + size - start if index > 0 else 0
        shared_after = start + size - starts[index + 1] if index < len(starts) - 1 else 0
        if shared_before > 0:
            weight = np.minimum(weight, centres / shared_before)
        if shared_after > 0:
            weight = np.minimum(weight, (size - centres) / shared_after)
        ramps.append(weight)
    total = np.zeros(length)
    for start, weight in zip(starts, ramps):
        total[start : start + size] += weight
    return [(weight / total[start : start + size]).astype(np.float32) for start, weight in zip(starts, ramps)]


def decode_tiled(decoder, latent, tile=64, overlap=16):
    """Decode `latent` (B, h, w, C) tile by tile into float32 (B, 8h, 8w, 3).

    Args:
        decoder: latent -> image callable (the pipeline's compiled decoder).
        tile: tile side in latent pixels (64 = 512 image pixels).
        overlap: latent pixels neighbouring tiles share at least.
    """
    if not 0 <= overlap < tile:
        raise InvalidArgumentError(f"tile={tile}, overlap={overlap}: need 0 <= overlap < tile.")
    batch, height, width = (int(n) for n in latent.shape[:3])
    factor = PIXELS_PER_LATENT
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    tile_height, tile_width = min(tile, height), min(tile, width)
    row_weights = blend_weights(height * factor, [r * factor for r in rows], tile_height * factor)
    column_weights = blend_weights(width * factor, [c * factor for c in columns], tile_width * factor)
    image = np.zeros((batch, height * factor, width * factor, 3), np.float32)
    for row, row_weight in zip(rows, row_weights):
        for column, column_weight in zip(columns, column_weights):
            pixels = np.asarray(decoder(latent[:, row : row + tile_height, column : column + tile_width]))
            weight = row_weight[:, None, None] * column_weight[None, :, None]
            image[:, row * factor : (row + tile_height) * factor,
                  column * factor : (column + tile_width) * factor] += pixels * weight
    return image
