"""Helpers, no tests: the references the parity tests compare against, built
to match our configs (diffusers UNets, ControlNets, VAEs and schedulers,
transformers CLIP text models).

torch, diffusers and transformers are imported inside the functions that
need them, so that a test module importing only the configs or the numpy
helpers here never loads them.

diffusers zero-initialises zero convolutions and the hint encoder's exit
conv, which would make any parity check vacuous, so `randomize_` redraws
every parameter.
"""

import dataclasses

import numpy as np

from kcv_sd.config import ControlNetConfig
from kcv_sd import config as unet_configs
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH

# Tiny UNet configs that diffusers can express: its timestep MLP is fixed at
# block_channels[0] -> 4 * block_channels[0], and it has diffusers numerics.
# TINY_A has SD1.5's whole layout (two residual blocks per level, attention
# on all levels but the bottom one) at tiny width.
TINY_A = unet_configs.UNetConfig(
    block_channels=(8, 16, 16, 16), num_heads=2, context_dim=16, timestep_dim=8, time_embed_dim=32,
    norm_groups=4, transformer_norm_epsilon=1e-6, gelu_approximate=False,
)
# The tiny family's UNet as a diffusers folder converts to it.
TINY_FAMILY_DIFFUSERS = dataclasses.replace(
    unet_configs.TINY, transformer_norm_epsilon=1e-6, gelu_approximate=False
)
# The pipeline-level parity tests (samplers, guidance, ControlNets, img2img)
# run on the tiny family's layout, which traces several times faster; the
# whole SD1.5 layout (TINY_A) is held to diffusers layer by layer
# (test_convert_unet, test_convert_controlnet).
TINY_FAMILY_CONTROLNET = ControlNetConfig(unet=TINY_FAMILY_DIFFUSERS, conditioning_channels=(4, 8, 8, 16))
TINY_B = unet_configs.UNetConfig(
    block_channels=(16, 32), attention_levels=(False, True), layers_per_block=1,
    num_heads=4, context_dim=24, timestep_dim=16, time_embed_dim=64, norm_groups=8,
    transformer_norm_epsilon=1e-6, gelu_approximate=False,
)
TINY_CONTROLNETS = {
    "four-levels": ControlNetConfig(unet=TINY_A, conditioning_channels=(4, 8, 8, 16)),
    "two-levels": ControlNetConfig(unet=TINY_B, conditioning_channels=(8, 8, 16, 32)),
}

START, END = 49406, 49407  # CLIP's start token; the end token also pads, as our tokenizer does

# Unequal channels, so that the residual blocks where channels change carry
# a conv_shortcut in both decoder and encoder.
TINY_VAE_CHANNELS = (64, 32, 32, 32)

# runwayml/stable-diffusion-v1-5's scheduler/scheduler_config.json.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
# Our sampler name: the diffusers scheduler class it is checked against.
REFERENCE_SCHEDULERS = {"dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler"}
# The samplers added since, each with the scheduler's class and the
# arguments that select it (the pipeline-level parity tests keep to the two above).
MORE_REFERENCE_SCHEDULERS = {
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
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
    import torch

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
    from diffusers import ControlNetModel

    model = ControlNetModel(**diffusers_unet_kwargs(config.unet),
                            conditioning_embedding_out_channels=config.conditioning_channels)
    return randomize_(model, seed)


def diffusers_unet(config, seed=0):
    from diffusers import UNet2DConditionModel

    up_block_types = tuple("CrossAttnUpBlock2D" if attention else "UpBlock2D"
                           for attention in reversed(config.attention_levels))
    model = UNet2DConditionModel(**diffusers_unet_kwargs(config), up_block_types=up_block_types,
                                 out_channels=config.latent_channels)
    return randomize_(model, seed)


def numpy_state_dict(module):
    return {key: value.detach().numpy().copy() for key, value in module.state_dict().items()}


def nchw(array):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.transpose(array, (0, 3, 1, 2))))


def nhwc(tensor):
    return np.transpose(tensor.detach().numpy(), (0, 2, 3, 1))


def diffusers_residuals(model, inputs, timesteps, image, **kwargs):
    """diffusers' 13 residuals, NHWC, skips then middle."""
    import torch

    with torch.no_grad():
        down, mid = model(
            nchw(inputs["latent"]), torch.from_numpy(timesteps),
            encoder_hidden_states=torch.from_numpy(inputs["context"]),
            controlnet_cond=nchw(image), return_dict=False, **kwargs,
        )
    return [nhwc(t) for t in down] + [nhwc(mid)]


def converted_pipeline(torch_unet, config):
    """Our `Pipeline` around `torch_unet` converted, on the tiny family's
    text encoder and VAE (the parity tests hand in encodings and latents)."""
    from kcv_sd.components import Components, ModelFamily
    from kcv_sd.convert import convert_diffusers_unet
    from kcv_sd.pipeline import Pipeline

    family = ModelFamily(config, None, None, kerascv_weights=False, controlnet="TINY", unet_parameters=0,
                         controlnet_parameters=0)
    unet = convert_diffusers_unet(numpy_state_dict(torch_unet), config)
    return Pipeline(components=Components(family, None, unet, None, "random", "float32"))


def stand_in_vae():
    """The smallest `AutoencoderKL` diffusers' pipelines accept: they are
    given latents and asked for latents, so its weights never matter."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4)


def reference_scheduler(name):
    """What a user gets swapping the scheduler of SD 1.5's diffusers pipeline."""
    import diffusers

    scheduler, arguments = MORE_REFERENCE_SCHEDULERS.get(name, (REFERENCE_SCHEDULERS.get(name), {}))
    return getattr(diffusers, scheduler).from_config(
        diffusers.PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG).config, **arguments)


def diffusers_vae(config, seed=0):
    """An `AutoencoderKL` laid out as `kcv_sd.vae` builds `config`, every weight random.

    diffusers lists channels from the image side, our config from the latent's.
    KerasCV's blocks normalise over 32 groups.
    """
    from diffusers import AutoencoderKL

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


def transformers_clip(config, seed=0):
    """A `CLIPTextModel` shaped as `build_text_encoder(config)`, every weight random."""
    from transformers import CLIPTextConfig, CLIPTextModel

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


def tiny_family_references(seed=1):
    """Random diffusers UNet, AutoencoderKL and transformers CLIP laid out as
    the tiny family (diffusers numerics), as {component: torch module}."""
    from kcv_sd.text_encoder import TINY_TEXT
    from kcv_sd.vae import TINY_VAE

    return {"text_encoder": transformers_clip(TINY_TEXT, seed=seed),
            "unet": diffusers_unet(TINY_FAMILY_DIFFUSERS, seed=seed + 1),
            "vae": diffusers_vae(TINY_VAE, seed=seed + 2)}


def state_dicts(references):
    """{component: numpy state dict} in the keys of diffusers' folders."""
    return {name: hub_clip_state_dict(module) if name == "text_encoder" else numpy_state_dict(module)
            for name, module in references.items()}


def write_diffusers_folder(folder, state_dicts, names=None):
    """`state_dicts` saved in diffusers' folder layout; `names` overrides a
    component's file name (".bin": a torch pickle, ".fp16.": float16)."""
    import torch
    from safetensors.numpy import save_file

    names = {"text_encoder": "model.safetensors", "unet": "diffusion_pytorch_model.safetensors",
             "vae": "diffusion_pytorch_model.safetensors", **(names or {})}
    for component, name in names.items():
        (folder / component).mkdir(parents=True)
        path = folder / component / name
        if name.endswith(".bin"):
            torch.save({k: torch.from_numpy(v) for k, v in state_dicts[component].items()}, path)
        else:
            dtype = np.float16 if ".fp16." in name else None
            save_file({k: v.astype(dtype) if dtype and v.dtype == np.float32 else v
                       for k, v in state_dicts[component].items()}, path)
    return folder
