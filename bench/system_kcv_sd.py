"""kcv-sd itself: `kcv_sd.Pipeline` with random weights of the chosen family.

The worker process runs as the `kcv-sd` command does, with oneDNN weight
caching (`kcv_sd.weight_cache`), unless the config has `weight_cache` false
(`tools/measure_weight_cache.py` compares the two).

With `controlnet` on, one random ControlNet of the family (the SD1.5 depth
ControlNet's architecture for sd15) guides every step from a synthetic
depth ramp at the output size.
"""

import time

import keras
import numpy as np
import tensorflow as tf

import kcv_sd
from bench.control_input import depth_ramp
from bench.tf_devices import tensorflow_device, tensorflow_peak_device_bytes
from kcv_sd.study import resolve_controlnet
from kcv_sd.unet import timestep_embedding
from kcv_sd.weight_cache import cache_weights_for_inference


class Runner:
    def __init__(self, spec):
        config, self.workload = spec["config"], spec["workload"]
        w = self.workload
        if config.get("weight_cache", True):
            cache_weights_for_inference()
        self.pipeline = kcv_sd.Pipeline(model=w["model"], weights="random",
                                        precision=config["precision"], jit_compile=config["xla"])
        self.controlnet = self.control_image = None
        if config.get("controlnet"):
            self.controlnet = resolve_controlnet(self.pipeline, "random")
            self.control_image = depth_ramp(w["width"], w["height"])
            # The ControlNet alone, on the guided (doubled) batch, as the step runs it.
            self._controlnet_alone = tf.function(self.controlnet.model(), jit_compile=config["xla"])
        self.device = tensorflow_device()
        self.notes = ["random ControlNet (the family's ControlNet architecture) on every step"] if self.controlnet else []

    def peak_device_bytes(self):
        return tensorflow_peak_device_bytes()

    def generate(self, seed):
        w = self.workload
        return self.pipeline(w["prompt"], width=w["width"], height=w["height"],
                             num_inference_steps=w["steps"], guidance_scale=w["guidance_scale"],
                             seed=seed, num_images_per_prompt=w["batch"], output_type="np",
                             image=self.control_image, controlnet=self.controlnet)

    def stages(self, seed):
        """Text encoding, guided denoising steps and decoding, each synchronised.

        Each step is a one-step `denoise` call: the same compiled step
        function (same shapes) the full schedule runs, with nothing else in it
        but a one-row schedule, so the measurement does not depend on the
        step function's private signature. With a ControlNet, every step is
        followed by the plain UNet step and the ControlNet alone on the same
        inputs, so the three are timed side by side.
        """
        w, p = self.workload, self.pipeline
        start = time.perf_counter()
        encodings = p.encode_prompts([w["prompt"], ""])
        encodings.numpy()
        text_encoding_s = time.perf_counter() - start

        context = tf.repeat(encodings, w["batch"], axis=0)
        latent = keras.random.normal((w["batch"], w["height"] // 8, w["width"] // 8, p.config.latent_channels),
                                     seed=seed)
        plan = None
        if self.controlnet is not None:
            plan = p.plan_control(self.controlnet, self.control_image, 1, w["width"], w["height"], w["batch"])
        times = {"step_s": [], "unet_step_s": [], "controlnet_s": []} if plan else {"step_s": []}
        for _ in range(w["steps"]):
            next_latent = timed(p.denoise, latent, context, 1, w["guidance_scale"], True, control=plan,
                                into=times["step_s"])
            if plan is not None:
                timed(p.denoise, latent, context, 1, w["guidance_scale"], True, into=times["unet_step_s"])
                timed(self._controlnet_alone, self._controlnet_inputs(latent, context, plan),
                      into=times["controlnet_s"])
            latent = next_latent

        start = time.perf_counter()
        np.asarray(p.decode(latent))  # tiled decoding returns numpy already
        return {"text_encoding_s": text_encoding_s, **times, "decode_s": time.perf_counter() - start}

    def _controlnet_inputs(self, latent, context, plan):
        doubled = tf.concat([latent, latent], axis=0)
        t_embed = timestep_embedding(np.array([500.0], np.float32), self.pipeline.config.timestep_dim)
        return {"latent": doubled, "timestep_embedding": tf.repeat(t_embed, tf.shape(doubled)[0], axis=0),
                "context": context, "control_image": tf.concat([plan.images[0]] * 2, axis=0)}


def timed(fn, *args, into, **kwargs):
    """`fn`'s result, synchronised; its seconds are appended to `into`."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, value)
    into.append(time.perf_counter() - start)
    return value
