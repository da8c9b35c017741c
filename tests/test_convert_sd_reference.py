"""Helpers, no tests: tiny diffusers VAEs and transformers CLIP text models shaped like ours."""

import numpy as np
import torch
from diffusers import AutoencoderKL
from test_convert_reference import randomize_
from transformers import CLIPTextConfig, CLIPTextModel

from kcv_sd.tokenizer import MAX_PROMPT_LENGTH

START, END = 49406, 49407  # CLIP's start token; the end token also pads, as our tokenizer does

# Unequal channels, so that the residual blocks where channels change carry
# a conv_shortcut in both decoder and encoder.
TINY_VAE_CHANNELS = (64, 32, 32, 32)


def diffusers_vae(config, seed=0):
    """An `AutoencoderKL` laid out as `kcv_sd.vae` builds `config`, every weight random.

    diffusers lists channels from the image side, our config from the latent's.
    KerasCV's blocks normalise over 32 groups.
    """
    levels = len(config.block_channels)
    model = AutoencoderKL(
        block_out_channels=tuple(reversed(config.block_channels)),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=2,
        norm_num_groups=32,
        latent_channels=config.latent_channels,
    )
    return randomize_(model, seed)


def set_group_norm_epsilon(module, epsilon):
    """diffusers' VAE normalises with epsilon 1e-6, KerasCV's blocks with 1e-5."""
    for submodule in module.modules():
        if isinstance(submodule, torch.nn.GroupNorm):
            submodule.eps = epsilon
    return module


def transformers_clip(config, seed=0):
    """A `CLIPTextModel` shaped as `build_text_encoder(config)`, every weight random."""
    clip_config = CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.embed_dim,
        intermediate_size=4 * config.embed_dim, num_attention_heads=config.num_heads,
        num_hidden_layers=config.num_layers, max_position_embeddings=MAX_PROMPT_LENGTH,
        hidden_act="quick_gelu",
    )
    return randomize_(CLIPTextModel(clip_config), seed)


def hub_clip_state_dict(model):
    """A state dict as SD1.5's text_encoder/model.safetensors has it.

    transformers < 5 saved keys under "text_model." with the position_ids
    buffer; transformers 5 drops both.
    """
    tensors = {f"text_model.{key}": value.detach().numpy().copy()
               for key, value in model.state_dict().items()}
    positions = np.arange(MAX_PROMPT_LENGTH, dtype=np.int64)[None]
    return {**tensors, "text_model.embeddings.position_ids": positions}


def prompt_tokens(lengths, seed=0):
    """Token ids (B, 77): start, random words, then the end token to the end."""
    rng = np.random.default_rng(seed)
    tokens = np.full((len(lengths), MAX_PROMPT_LENGTH), END, np.int32)
    tokens[:, 0] = START
    for row, length in enumerate(lengths):
        tokens[row, 1:1 + length] = rng.integers(0, START, length)
    return tokens


def text_inputs(tokens):
    positions = np.tile(np.arange(MAX_PROMPT_LENGTH, dtype=np.int32), (len(tokens), 1))
    return {"tokens": tokens, "positions": positions}
