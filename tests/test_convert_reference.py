"""Helpers, no tests: diffusers reference models built to match our configs.

diffusers zero-initialises zero convolutions and the hint encoder's exit
conv, which would make any parity check vacuous, so `randomize_` redraws
every parameter.
"""

import dataclasses

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from kcv_sd.config import ControlNetConfig
from kcv_sd import config as unet_configs
from kcv_sd.unet import timestep_embedding

# Tiny UNet configs that diffusers can express: its timestep MLP is fixed at
# block_channels[0] -> 4 * block_channels[0], and it has diffusers numerics.
TINY_A = dataclasses.replace(
    unet_configs.TINY, time_embed_dim=32, transformer_norm_epsilon=1e-6, gelu_approximate=False
)
TINY_B = unet_configs.UNetConfig(
    block_channels=(16, 32), attention_levels=(False, True), layers_per_block=1,
    num_heads=4, context_dim=24, timestep_dim=16, time_embed_dim=64, norm_groups=8,
    transformer_norm_epsilon=1e-6, gelu_approximate=False,
)
TINY_CONTROLNETS = {
    "four-levels": ControlNetConfig(unet=TINY_A, conditioning_channels=(4, 8, 8, 16)),
    "two-levels": ControlNetConfig(unet=TINY_B, conditioning_channels=(8, 8, 16, 32)),
}


def diffusers_unet_kwargs(config):
    """Constructor arguments shared by `UNet2DConditionModel` and `ControlNetModel`."""
    assert config.timestep_dim == config.block_channels[0]
    assert config.time_embed_dim == 4 * config.block_channels[0]
    assert (config.transformer_norm_epsilon, config.gelu_approximate) == (1e-6, False)
    return {
        "in_channels": config.latent_channels,
        "down_block_types": tuple("CrossAttnDownBlock2D" if attention else "DownBlock2D"
                                  for attention in config.attention_levels),
        "block_out_channels": config.block_channels,
        "layers_per_block": config.layers_per_block,
        "attention_head_dim": config.num_heads,  # diffusers' name for the head count
        "norm_num_groups": config.norm_groups,
        "norm_eps": config.norm_epsilon,
        "cross_attention_dim": config.context_dim,
    }


def randomize_(module, seed):
    """Redraw every parameter: fan-in-scaled weights, norms near identity."""
    generator = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for submodule in module.modules():
            for name, param in submodule.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator)
                if param.ndim >= 2:
                    param.copy_(0.5 * noise / np.sqrt(param[0].numel()))
                elif isinstance(submodule, norms) and name == "weight":
                    param.copy_(1 + 0.1 * noise)
                else:
                    param.copy_(0.1 * noise)
    return module.eval()


def diffusers_controlnet(config, seed=0):
    model = ControlNetModel(**diffusers_unet_kwargs(config.unet),
                            conditioning_embedding_out_channels=config.conditioning_channels)
    return randomize_(model, seed)


def diffusers_unet(config, seed=0):
    up_block_types = tuple("CrossAttnUpBlock2D" if attention else "UpBlock2D"
                           for attention in reversed(config.attention_levels))
    model = UNet2DConditionModel(**diffusers_unet_kwargs(config), up_block_types=up_block_types,
                                 out_channels=config.latent_channels)
    return randomize_(model, seed)


def numpy_state_dict(module):
    return {key: value.detach().numpy().copy() for key, value in module.state_dict().items()}


def random_inputs(config, batch=2, height=8, width=8, tokens=7, seed=0):
    """Our inputs (NHWC, timestep embedded) and the integer timesteps for diffusers."""
    rng = np.random.default_rng(seed)
    timesteps = rng.integers(0, 1000, batch)
    inputs = {
        "latent": rng.standard_normal((batch, height, width, config.latent_channels)),
        "timestep_embedding": np.asarray(timestep_embedding(timesteps, config.timestep_dim)),
        "context": rng.standard_normal((batch, tokens, config.context_dim)),
    }
    return {k: v.astype("float32") for k, v in inputs.items()}, timesteps


def control_image(batch, height, width, seed=1):
    """A control image (B, 8h, 8w, 3) in [0, 1] for a latent of (h, w)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (batch, 8 * height, 8 * width, 3)).astype("float32")


def nchw(array):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(array, (0, 3, 1, 2))))


def nhwc(tensor):
    return np.transpose(tensor.detach().numpy(), (0, 2, 3, 1))


def diffusers_residuals(model, inputs, timesteps, image, **kwargs):
    """diffusers' 13 residuals, NHWC, skips then middle."""
    with torch.no_grad():
        down, mid = model(
            nchw(inputs["latent"]), torch.from_numpy(timesteps),
            encoder_hidden_states=torch.from_numpy(inputs["context"]),
            controlnet_cond=nchw(image), return_dict=False, **kwargs,
        )
    return [nhwc(t) for t in down] + [nhwc(mid)]
