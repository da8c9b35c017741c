"""The parts of a CompVis/LDM Stable Diffusion 1.x checkpoint (one file, `LatentDiffusion`'s state dict).

    model.diffusion_model.*          the UNet
    first_stage_model.*              the VAE (AutoencoderKL)
    cond_stage_model.transformer.*   the CLIP text encoder (transformers' CLIPTextModel)
    model_ema.*                      EMA copies of the UNet's weights, if trained with them
    betas, alphas_cumprod, ...       the noise schedule's buffers (ours is fixed for SD1.x)
"""

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."

# The noise-schedule buffers of ldm's DDPM.register_schedule.
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
})
