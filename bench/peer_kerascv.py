"""Stock `keras_cv.models.StableDiffusion`, set up as the KerasCV tutorial does: jit_compile on, and mixed precision
as a global policy set before the models are built (this process is fresh, so it cannot leak).

Pretrained weights cannot be downloaded here: the three models are KerasCV's own classes with `download_weights=False`,
and the tokenizer is KerasCV's BPE tokenizer with the vocabulary kcv-sd finds offline (importing kcv_sd for it counts
toward this peer's import time). Image sizes must be multiples of 128.
"""

import keras
import keras_cv
import numpy as np
from keras_cv.models.stable_diffusion import Decoder, DiffusionModel, TextEncoder

from bench.measure import TFDevice, tf_sync, timed, timed_into
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, get_tokenizer


def _compiled(model):
    """What StableDiffusion's lazy properties do with jit_compile=True."""
    model.compile(jit_compile=True)
    return model


class Runner(TFDevice):
    def __init__(self, spec):
        self.workload = w = spec["workload"]
        if spec["config"]["precision"] != "float32":
            keras.mixed_precision.set_global_policy(spec["config"]["precision"])
        sd = keras_cv.models.StableDiffusion(img_height=w["height"], img_width=w["width"], jit_compile=True)
        sd._diffusion_model = _compiled(DiffusionModel(w["height"], w["width"], MAX_PROMPT_LENGTH,
                                                       download_weights=False))
        sd._text_encoder = _compiled(TextEncoder(MAX_PROMPT_LENGTH, download_weights=False))
        sd._decoder = _compiled(Decoder(w["height"], w["width"], download_weights=False))
        sd._tokenizer = get_tokenizer()._bpe
        self.sd = sd
        self.notes = ["random weights from Keras initialisers (download_weights=False)"]

    def generate(self, seed):
        w = self.workload
        return self.sd.text_to_image(w["prompt"], batch_size=w["batch"], num_steps=w["steps"],
                                     unconditional_guidance_scale=w["guidance_scale"], seed=seed)

    def stages(self, seed):
        """The calls `text_to_image` makes, timed one by one. Each step is the two UNet calls plus guidance; the
        DDIM update, a few elementwise operations on the small latent, is left to host overhead."""
        w, sd = self.workload, self.sd
        (context, unconditional), text_encoding_s = timed(
            lambda: (sd._expand_tensor(sd.encode_text(w["prompt"]), w["batch"]),
                     np.repeat(sd._get_unconditional_context(), w["batch"], axis=0)), sync=tf_sync)

        def step(latent, timestep):
            inputs = {"latent": latent, "timestep_embedding": sd._get_timestep_embedding(999 - timestep, w["batch"])}
            noise_uncond = sd.diffusion_model.predict_on_batch({**inputs, "context": unconditional})
            noise_cond = sd.diffusion_model.predict_on_batch({**inputs, "context": context})
            return noise_uncond + w["guidance_scale"] * (noise_cond - noise_uncond)

        latent = sd._get_initial_diffusion_noise(w["batch"], seed)
        step_s = []
        for timestep in range(w["steps"]):
            latent = timed_into(step_s, step, latent, timestep, sync=tf_sync)
        _, decode_s = timed(sd.decoder.predict_on_batch, latent, sync=tf_sync)
        return {"text_encoding_s": text_encoding_s, "step_s": step_s, "decode_s": decode_s}
