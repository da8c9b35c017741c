"""diffusers' `StableDiffusionPipeline` (with ControlNet on, `StableDiffusionControlNetPipeline`), built from SD1.5
configs with random weights.

No CLIPTokenizer can be downloaded here, so the pipeline has none: the CLIP text model encodes the token ids of
kcv-sd's tokenizer (passed in the spec) inside every timed image, and the pipeline gets the embeddings. Mixed
precisions map to diffusers' usual whole-pipeline `torch_dtype`. The ControlNet is `ControlNetModel.from_unet`.
"""

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from bench.configs import depth_ramp
from bench.measure import timed, timed_into, torch_sync

# torch_dtype applies to every model: diffusers has no UNet-only ("mixed") precision.
TORCH_DTYPES = {"float32": torch.float32, "mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16,
                "float16": torch.float16, "bfloat16": torch.bfloat16}


# Each part's constructor arguments in the SD1.5 architecture; a spec's `part_configs` overrides some (tests: tiny).
SD15_CONFIGS = {
    "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
            "sample_size": 512, "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4},
    "text_encoder": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "projection_dim": 768},
    "unet": {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8,
             "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
             "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3},
}


def sd15_parts(part_configs=None):
    """The pipeline's parts, with random weights and no tokenizer: SD1.5's architecture, each part's arguments
    updated by `part_configs` (`{"unet": {...}, ...}`)."""
    part_configs = {name: {**config, **(part_configs or {}).get(name, {})} for name, config in SD15_CONFIGS.items()}
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"vae": AutoencoderKL(**part_configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**part_configs["text_encoder"])),
            "tokenizer": None, "unet": UNet2DConditionModel(**part_configs["unet"]), "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def guidance_context(embeddings, batch):
    """The UNet's context for a guided batch from the (prompt, negative prompt) encodings: `batch` negatives, then
    `batch` prompts (torch or numpy)."""
    return embeddings[[1] * batch + [0] * batch]


def guided(noise, scale):
    """Classifier-free guidance of the UNet's noise on a guided batch (negative half first; torch or numpy)."""
    uncond, cond = noise[:len(noise) // 2], noise[len(noise) // 2:]
    return uncond + scale * (cond - uncond)


def initial_latent(workload, seed):
    """The seed's initial noise, as diffusers' pipeline draws it on the CPU (NCHW, float32)."""
    shape = (workload["batch"], 4, workload["height"] // 8, workload["width"] // 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class Runner:
    def __init__(self, spec):
        self.workload = w = spec["workload"]
        precision = spec["config"]["precision"]
        if precision not in TORCH_DTYPES:
            raise ValueError(f"no torch dtype for precision {precision!r}")
        self.dtype, self.torch_device = TORCH_DTYPES[precision], "cuda" if torch.cuda.is_available() else "cpu"
        parts = sd15_parts(spec.get("part_configs"))
        if spec["config"].get("controlnet"):
            self.control_image = Image.fromarray(depth_ramp(w["width"], w["height"]))
            self.pipe = StableDiffusionControlNetPipeline(controlnet=ControlNetModel.from_unet(parts["unet"]), **parts)
        else:
            self.control_image, self.pipe = None, StableDiffusionPipeline(**parts)
        self.pipe.to(self.torch_device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.token_ids = torch.tensor(spec["token_ids"], device=self.torch_device)
        self.notes = ["no CLIPTokenizer offline: prompt_embeds passed directly (same token ids)",
                      f"torch_dtype={str(self.dtype).removeprefix('torch.')}"]
        self.device = torch.cuda.get_device_name() if self.torch_device == "cuda" else "CPU"

    def peak_device_bytes(self):
        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None

    def _encode(self):
        """The (prompt, negative prompt) encodings."""
        return self.pipe.text_encoder(self.token_ids)[0]

    @torch.inference_mode()
    def generate(self, seed):
        w = self.workload
        embeddings = self._encode()
        control = {} if self.control_image is None else {"image": self.control_image}
        images = self.pipe(prompt_embeds=embeddings[:1], negative_prompt_embeds=embeddings[1:], **control,
                           width=w["width"], height=w["height"], num_inference_steps=w["steps"],
                           guidance_scale=w["guidance_scale"], num_images_per_prompt=w["batch"],
                           generator=torch.Generator().manual_seed(seed), output_type="np").images
        torch_sync()
        return images

    def _controlnet_alone(self, doubled, t, context, control):
        down, mid = self.pipe.controlnet(doubled, t, encoder_hidden_states=context, controlnet_cond=control,
                                         return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _guided_step(self, latent, t, context, control=None):
        """UNet on both halves (after the ControlNet, given a `control` image), guidance, DDIM update."""
        doubled = torch.cat([latent] * 2)
        residuals = {} if control is None else self._controlnet_alone(doubled, t, context, control)
        noise = self.pipe.unet(doubled, t, encoder_hidden_states=context, **residuals).sample
        return self.pipe.scheduler.step(guided(noise, self.workload["guidance_scale"]), t, latent).prev_sample

    @torch.inference_mode()
    def stages(self, seed):
        """Text encoding, each guided step with the DDIM update, VAE decoding. With a ControlNet, the plain UNet step
        and the ControlNet alone follow every step on the same inputs."""
        w, pipe = self.workload, self.pipe
        embeddings, text_encoding_s = timed(self._encode, sync=torch_sync)
        batch = w["batch"]
        context = guidance_context(embeddings, batch)
        latent = initial_latent(w, seed).to(self.torch_device, self.dtype)
        control = None
        times = {"step_s": []}
        if self.control_image is not None:
            pixels = torch.from_numpy(np.array(self.control_image)).permute(2, 0, 1)[None] / 255
            control = pixels.repeat(2 * batch, 1, 1, 1).to(self.torch_device, self.dtype)
            times.update(unet_step_s=[], controlnet_s=[])
        pipe.scheduler.set_timesteps(w["steps"], device=self.torch_device)
        for t in pipe.scheduler.timesteps:
            next_latent = timed_into(times["step_s"], self._guided_step, latent, t, context, control, sync=torch_sync)
            if control is not None:
                timed_into(times["unet_step_s"], self._guided_step, latent, t, context, sync=torch_sync)
                timed_into(times["controlnet_s"], self._controlnet_alone, torch.cat([latent] * 2), t, context, control,
                           sync=torch_sync)
            latent = next_latent
        _, decode_s = timed(lambda: pipe.vae.decode(latent / pipe.vae.config.scaling_factor), sync=torch_sync)
        return {"text_encoding_s": text_encoding_s, **times, "decode_s": decode_s}
