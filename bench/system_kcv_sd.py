"""kcv-sd itself: `kcv_sd.Pipeline` with random weights of the chosen family."""

import time

import keras
import tensorflow as tf

import kcv_sd


def tensorflow_device():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


class Runner:
    def __init__(self, spec):
        config, self.workload = spec["config"], spec["workload"]
        self.pipeline = kcv_sd.Pipeline(model=self.workload["model"], weights="random",
                                        precision=config["precision"], jit_compile=config["xla"])
        self.device = tensorflow_device()
        self.notes = []

    def generate(self, seed):
        w = self.workload
        return self.pipeline(w["prompt"], width=w["width"], height=w["height"],
                             num_inference_steps=w["steps"], guidance_scale=w["guidance_scale"],
                             seed=seed, num_images_per_prompt=w["batch"], output_type="np")

    def stages(self, seed):
        """Text encoding, guided denoising steps and decoding, each synchronised.

        Each step is a one-step `denoise` call: the same compiled step
        function (same shapes) the full schedule runs, with nothing else in it
        but a one-row schedule, so the measurement does not depend on the
        step function's private signature.
        """
        w, p = self.workload, self.pipeline
        start = time.perf_counter()
        encodings = p.encode_prompts([w["prompt"], ""])
        encodings.numpy()
        text_encoding_s = time.perf_counter() - start

        context = tf.repeat(encodings, w["batch"], axis=0)
        latent = keras.random.normal((w["batch"], w["height"] // 8, w["width"] // 8, p.config.latent_channels),
                                     seed=seed)
        step_s = []
        for _ in range(w["steps"]):
            start = time.perf_counter()
            latent = p.denoise(latent, context, 1, w["guidance_scale"], True)
            latent.numpy()
            step_s.append(time.perf_counter() - start)

        start = time.perf_counter()
        p.decode(latent).numpy()
        return {"text_encoding_s": text_encoding_s, "step_s": step_s,
                "decode_s": time.perf_counter() - start}
