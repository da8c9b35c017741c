"""kcv-sd itself: `kcv_sd.Pipeline` with random weights of the chosen family.

It runs as `kcv-sd generate` does: the graph cache on a CPU without XLA, oneDNN weight caching on an AMX CPU where memory
allows (`choose_weight_cache`, "auto"), unless the config's `weight_cache` says "on" or "off"
(`tools/measure_weight_cache.py`). With `controlnet` on, one random ControlNet of the family guides every step from
`depth_ramp` at the output size.
"""

import keras
import numpy as np
import tensorflow as tf

import kcv_sd
from bench.configs import depth_ramp
from bench.measure import TFDevice, tf_sync, timed, timed_into
from kcv_sd.study import resolve_controlnet
from kcv_sd.unet import timestep_embedding
from kcv_sd.components import family_by_name
from kcv_sd.weight_cache import choose_weight_cache


def call_options(w):
    """The workload `w` as `Pipeline.__call__` options, besides the prompt and seed."""
    return {"width": w["width"], "height": w["height"], "num_inference_steps": w["steps"],
            "guidance_scale": w["guidance_scale"], "num_images_per_prompt": w["batch"], "output_type": "np"}


class Runner(TFDevice):
    def __init__(self, spec):
        config, self.workload = spec["config"], spec["workload"]
        w = self.workload
        _, weight_cache = choose_weight_cache(config.get("weight_cache", "auto"), family_by_name(w["model"]),
                                              config["precision"], controlnets=int(bool(config.get("controlnet"))))
        self.pipeline = kcv_sd.Pipeline(model=w["model"], weights="random", precision=config["precision"],
                                        jit_compile=config["xla"])
        self.controlnet = self.control_image = None
        self.notes = [weight_cache]
        if config.get("controlnet"):
            self.controlnet = resolve_controlnet(self.pipeline, "random")
            self.control_image = depth_ramp(w["width"], w["height"])
            # The ControlNet alone, on the guided (doubled) batch, as the step runs it (from the control image's
            # embedding, which a call computes once).
            self._controlnet_alone = tf.function(self.controlnet.step_model(), jit_compile=config["xla"])
            self.notes.append("random ControlNet (the family's ControlNet architecture) on every step")

    def graph_sources(self):
        """Which of the pipeline's graphs came from the graph cache (the benchmark's folder, `bench.launch`)."""
        return self.pipeline.graph_sources()

    def generate(self, seed):
        return self.pipeline(self.workload["prompt"], seed=seed, image=self.control_image, controlnet=self.controlnet,
                             **call_options(self.workload))

    def stages(self, seed):
        """Text encoding, guided denoising steps and decoding, each synchronised. Each step is a one-step `denoise`
        call: the compiled step the full schedule runs. With a ControlNet, the control image's embedding (once per
        call) comes first, and the plain UNet step and the ControlNet alone follow every step on the same inputs."""
        w, p = self.workload, self.pipeline
        encodings, text_encoding_s = timed(p.encode_prompts, [w["prompt"], ""], sync=tf_sync)
        context = tf.repeat(encodings, w["batch"], axis=0)
        latent = keras.random.normal((w["batch"], w["height"] // 8, w["width"] // 8, p.config.latent_channels),
                                     seed=seed)
        plan, times = None, {"step_s": []}
        if self.controlnet is not None:
            plan = p.plan_control(self.controlnet, self.control_image, 1, w["width"], w["height"], w["batch"])
            plan, times["control_embedding_s"] = timed(p.embed_control, plan, sync=lambda out: tf_sync(out.embeddings))
            times.update(unet_step_s=[], controlnet_s=[])
        for _ in range(w["steps"]):
            next_latent = timed_into(times["step_s"], p.denoise, latent, context, 1, w["guidance_scale"], True,
                                     control=plan, sync=tf_sync)
            if plan is not None:
                timed_into(times["unet_step_s"], p.denoise, latent, context, 1, w["guidance_scale"], True,
                           sync=tf_sync)
                timed_into(times["controlnet_s"], self._controlnet_alone,
                           self._controlnet_inputs(latent, context, plan), sync=tf_sync)
            latent = next_latent
        _, decode_s = timed(p.decode, latent, sync=tf_sync)  # tiled decoding returns numpy already
        return {"text_encoding_s": text_encoding_s, **times, "decode_s": decode_s}

    def _controlnet_inputs(self, latent, context, plan):
        doubled = tf.concat([latent, latent], axis=0)
        t_embed = timestep_embedding(np.array([500.0], np.float32), self.pipeline.config.timestep_dim)
        return {"latent": doubled, "timestep_embedding": tf.repeat(t_embed, tf.shape(doubled)[0], axis=0),
                "context": context, "control_embedding": tf.concat([plan.embeddings[0]] * 2, axis=0)}
