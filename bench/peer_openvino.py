"""OpenVINO on the CPU: the random diffusers parts of `bench.peer_diffusers`, each converted with
`openvino.convert_model` at the workload's static shapes and compiled for "CPU"; building, tracing (once: without
torch.jit.trace's check, which runs each model twice more), conversion and compilation all count as the build.

The denoising loop is the diffusers pipeline's (kcv-sd tokenizer's token ids, DDIM, the same guidance and initial
noise), with numpy arrays between the compiled models. Precision is OpenVINO's INFERENCE_PRECISION_HINT per model:
float32 is f32 (the CPU plugin's default can be bf16), bfloat16 and float16 run all three models in bf16 or f16, and
the mixed precisions run the UNet in 16 bits and the text encoder and VAE in f32, as kcv-sd's mixed precisions keep
them. The notes give each model's precision as compiled. No ControlNet: `bench.configs` plans those rows as skipped.
"""

import numpy as np
import openvino as ov
import torch
from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

from bench.measure import timed_into
from bench.peer_diffusers import guidance_context, guided, initial_latent, sd15_parts

UNET_HINTS = {"float32": "f32", "mixed_float16": "f16", "float16": "f16", "mixed_bfloat16": "bf16",
              "bfloat16": "bf16"}


class _Traced(torch.nn.Module):
    """A diffusers part as `call(part, *tensors)` to one tensor, for `convert_model` to trace (the part a submodule,
    so that its weights are parameters)."""

    def __init__(self, part, call):
        super().__init__()
        self.part, self.call = part, call

    def forward(self, *inputs):
        return self.call(self.part, *inputs)


def hints(precision):
    """INFERENCE_PRECISION_HINT per model for a kcv-sd precision."""
    if precision not in UNET_HINTS:
        raise ValueError(f"no OpenVINO precision for {precision!r}")
    unet = UNET_HINTS[precision]
    others = "f32" if precision.startswith("mixed_") else unet
    return {"text_encoder": others, "unet": unet, "vae": others}


def converted(parts, workload, token_ids):
    """The text encoder, UNet and VAE decoder as OpenVINO models at the workload's shapes (guided batch: 2 x batch,
    77 tokens, latent H/8 x W/8)."""
    batch, height, width = workload["batch"], workload["height"] // 8, workload["width"] // 8
    unet = parts["unet"]
    ids = torch.tensor(token_ids)
    latent = torch.zeros(batch, unet.config.in_channels, height, width)
    context = torch.zeros(2 * batch, ids.shape[1], unet.config.cross_attention_dim)
    examples = {
        "text_encoder": (lambda part, i: part(i, return_dict=False)[0], (ids,)),
        "unet": (lambda part, x, t, c: part(x, t, encoder_hidden_states=c, return_dict=False)[0],
                 (torch.cat([latent] * 2), torch.tensor([999.0]), context)),
        "vae": (lambda part, z: part.decode(z / part.config.scaling_factor, return_dict=False)[0], (latent,)),
    }
    with torch.no_grad():
        return {name: _static(ov.convert_model(TorchScriptPythonDecoder(
            _Traced(parts[name], call).eval(), example_input=inputs, trace_kwargs={"check_trace": False})), inputs)
            for name, (call, inputs) in examples.items()}


def _static(model, inputs):
    """`model` with its inputs' shapes fixed to those of the example `inputs`."""
    model.reshape({index: list(x.shape) for index, x in enumerate(inputs)})
    return model


class Runner:
    def __init__(self, spec):
        self.workload = w = spec["workload"]
        if spec["config"].get("controlnet"):
            raise ValueError("the OpenVINO peer has no ControlNet")
        precision_hints = hints(spec["config"]["precision"])
        parts = sd15_parts(spec.get("part_configs"))
        self.scheduler, self.token_ids = parts["scheduler"], np.array(spec["token_ids"])
        core = ov.Core()
        self.models = {name: core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision_hints[name],
                                                               "PERFORMANCE_HINT": "LATENCY"})
                       for name, model in converted(parts, w, spec["token_ids"]).items()}
        compiled = {name: model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                    for name, model in self.models.items()}
        self.notes = ["diffusers' random torch parts converted with openvino.convert_model at static shapes",
                      "no CLIPTokenizer offline: the text encoder gets kcv-sd's token ids",
                      "inference precision: " + ", ".join(f"{name} {hint}" for name, hint in compiled.items())]
        self.device = "CPU"

    def peak_device_bytes(self):
        return None

    def _run(self, model, *inputs):
        return model(inputs, share_inputs=True)[0]

    def _guided_step(self, latent, t, context):
        """UNet on both halves, guidance, DDIM update (the scheduler's, on torch views of the arrays)."""
        noise = self._run(self.models["unet"], np.concatenate([latent] * 2), np.array([float(t)], np.float32), context)
        noise = guided(noise, self.workload["guidance_scale"])
        return self.scheduler.step(torch.from_numpy(noise), t, torch.from_numpy(latent)).prev_sample.numpy()

    def _image(self, seed, times):
        """One image as diffusers' pipeline makes it, each stage's seconds appended to `times`."""
        w = self.workload
        embeddings = timed_into(times["text_encoding_s"], self._run, self.models["text_encoder"], self.token_ids)
        context = guidance_context(embeddings, w["batch"])
        latent = initial_latent(w, seed).numpy()
        self.scheduler.set_timesteps(w["steps"])
        for t in self.scheduler.timesteps:
            latent = timed_into(times["step_s"], self._guided_step, latent, t, context)
        pixels = timed_into(times["decode_s"], self._run, self.models["vae"], latent)
        return np.clip(pixels / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)

    def generate(self, seed):
        return self._image(seed, {"text_encoding_s": [], "step_s": [], "decode_s": []})

    def stages(self, seed):
        """Text encoding, each guided step with the DDIM update, VAE decoding: calls return when done."""
        times = {"text_encoding_s": [], "step_s": [], "decode_s": []}
        self._image(seed, times)
        return {"text_encoding_s": times["text_encoding_s"][0], "step_s": times["step_s"],
                "decode_s": times["decode_s"][0]}
