"""Tiled VAE decoding and encoding: large images in bounded memory.

The decoder's and encoder's cost grows with the image's area (their
attention blocks are quadratic in the latent's), so a 2048x2048 image does
not go through either in one call on most GPUs. `decode_tiled` decodes
overlapping latent tiles of one size (one compiled shape) and cross-fades
them with linear ramps over the overlaps; `encode_tiled` does the same with
pixel tiles, cross-faded in latent space. Tiles see less context than the
whole image (and GroupNorm normalises per tile), so seams are blended, not
exact; an input that fits in one tile goes through exactly as in one call.
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


def _map_tiles(fn, inputs, tile, overlap, cell_in, cell_out):
    """`fn` over overlapping tiles of `inputs` (B, H, W, C), cross-faded.

    Tiles are laid out on a grid whose cells are `cell_in` input pixels and
    `cell_out` output pixels wide (the VAE's 8x scale), so every tile's
    output lands on whole output pixels; `tile` and `overlap` are in input
    pixels. The blend weights are built at the output's resolution.
    """
    if not 0 <= overlap < tile:
        raise InvalidArgumentError(f"tile={tile}, overlap={overlap}: need 0 <= overlap < tile.")
    batch, height, width = (int(n) for n in inputs.shape[:3])
    if any(n % cell_in for n in (height, width, tile, overlap)):
        raise InvalidArgumentError(
            f"tile={tile}, overlap={overlap} and the {width}x{height} input must all be "
            f"multiples of {cell_in} pixels: resize the input or pick other tile sizes.")
    cells_high, cells_wide, cells_tile = height // cell_in, width // cell_in, tile // cell_in
    rows = tile_starts(cells_high, cells_tile, overlap // cell_in)
    columns = tile_starts(cells_wide, cells_tile, overlap // cell_in)
    tile_high, tile_wide = min(cells_tile, cells_high), min(cells_tile, cells_wide)
    row_weights = blend_weights(cells_high * cell_out, [r * cell_out for r in rows], tile_high * cell_out)
    column_weights = blend_weights(cells_wide * cell_out, [c * cell_out for c in columns], tile_wide * cell_out)
    output = None
    for row, row_weight in zip(rows, row_weights):
        for column, column_weight in zip(columns, column_weights):
            result = np.asarray(fn(inputs[:, row * cell_in : (row + tile_high) * cell_in,
                                          column * cell_in : (column + tile_wide) * cell_in]))
            if output is None:
                output = np.zeros((batch, cells_high * cell_out, cells_wide * cell_out, result.shape[-1]),
                                  np.float32)
            weight = row_weight[:, None, None] * column_weight[None, :, None]
            output[:, row * cell_out : (row + tile_high) * cell_out,
                   column * cell_out : (column + tile_wide) * cell_out] += result * weight
    return output


def decode_tiled(decoder, latent, tile=64, overlap=16):
    """Decode `latent` (B, h, w, C) tile by tile into float32 (B, 8h, 8w, 3).

    Args:
        decoder: latent -> image callable (the pipeline's compiled decoder).
        tile: tile side in latent pixels (64 = 512 image pixels).
        overlap: latent pixels neighbouring tiles share at least.
    """
    return _map_tiles(decoder, latent, tile, overlap, cell_in=1, cell_out=PIXELS_PER_LATENT)


def encode_tiled(encoder, pixels, tile=512, overlap=128):
    """Encode `pixels` (B, H, W, 3; H, W multiples of 8) tile by tile into
    float32 latents (B, H/8, W/8, C), blended over the overlaps in latent space.

    Args:
        encoder: image -> latent callable (the pipeline's compiled encoder).
        tile: tile side in image pixels, a multiple of 8.
        overlap: image pixels neighbouring tiles share at least, a multiple
            of 8 (128 = the decoder's 16 latent pixels).
    """
    return _map_tiles(encoder, pixels, tile, overlap, cell_in=PIXELS_PER_LATENT, cell_out=1)
