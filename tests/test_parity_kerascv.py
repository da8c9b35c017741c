"""Full-size parity with keras-cv 0.9: same (random) weights, same numbers.

KerasCV's models get random weights, are saved as legacy `.h5` files under
KerasCV's own file names, and our pipeline loads that folder; everything is
then compared with what KerasCV computed on its own models. Slow (~2 min).
"""

import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras_cv.models import StableDiffusion
from keras_cv.src.models.stable_diffusion.decoder import Decoder
from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

from kcv_sd.pipeline import Pipeline
from kcv_sd.tokenizer import get_tokenizer
from kcv_sd.unet import timestep_embedding
from kcv_sd.weights import KERASCV_FILES

pytestmark = [pytest.mark.full_size, pytest.mark.slow]  # slow: handed out first
REPO = Path(__file__).resolve().parents[1]

SIZE = 128  # KerasCV needs multiples of 128; a 16x16 latent keeps this quick.


class LatentCapture:
    """Stands in for KerasCV's decoder to record the final latent it receives."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.latent = None

    def predict_on_batch(self, latent):
        self.latent = np.asarray(latent)
        return self.decoder.predict_on_batch(latent)


KERASCV_PROMPT = "a photograph of an astronaut riding a horse"
DDIM_PROMPT = "a cozy reading room, warm light"
NEGATIVE_PROMPTS = [None, "blurry, low quality"]


def unet_inputs():
    rng = np.random.default_rng(0)
    return {
        "latent": rng.standard_normal((2, SIZE // 8, SIZE // 8, 4)).astype("float32"),
        "timestep_embedding": np.asarray(timestep_embedding(np.array([999.0, 20.0]), 320)),
        "context": rng.standard_normal((2, 77, 768)).astype("float32"),
    }


def write_kerascv(folder):
    """KerasCV's models with random weights: their weight files and their
    outputs (`outputs.npz`) written to `folder`."""
    keras.utils.set_random_seed(1234)
    reference = StableDiffusion(SIZE, SIZE, jit_compile=False)
    models = {
        "unet": DiffusionModel(SIZE, SIZE, 77, download_weights=False),
        "text_encoder": TextEncoder(77, download_weights=False),
        "decoder": Decoder(SIZE, SIZE, download_weights=False),
    }
    for name, model in models.items():
        with h5py.File(folder / KERASCV_FILES[name].filename, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    reference._diffusion_model = models["unet"]
    reference._text_encoder = models["text_encoder"]
    reference._decoder = LatentCapture(models["decoder"])
    reference._tokenizer = get_tokenizer()._bpe
    outputs = {"unet": np.asarray(models["unet"](unet_inputs())),
               "text": np.asarray(reference.encode_text(KERASCV_PROMPT))}
    for index, negative_prompt in enumerate(NEGATIVE_PROMPTS):
        outputs[f"pixels {index}"] = reference.text_to_image(
            DDIM_PROMPT, negative_prompt=negative_prompt, num_steps=3, seed=42)
        outputs[f"latent {index}"] = reference._decoder.latent
    np.savez(folder / "outputs.npz", **outputs)


@pytest.fixture(scope="module")
def kerascv(tmp_path_factory):
    """(folder of KerasCV's weight files, KerasCV's outputs), made in a child
    process, so this one never holds two SD1.5 models (TensorFlow keeps what
    KerasCV's traced functions held after the models are gone)."""
    folder = tmp_path_factory.mktemp("kerascv_weights")
    subprocess.run([sys.executable, __file__, str(folder)], cwd=REPO, check=True)
    with np.load(folder / "outputs.npz") as outputs:
        return folder, dict(outputs)


@pytest.fixture(scope="module")
def ours(kerascv):
    return Pipeline(model="sd15", weights=str(kerascv[0]), precision="float32")  # KerasCV computes in float32


def test_unet_matches_kerascv_diffusion_model(kerascv, ours):
    actual = np.asarray(ours.components.unet.model()(unet_inputs()))
    # float32 rounding only: at this latent the 1280-channel convolutions run
    # as matmuls over patches, which sum the same products in another order
    # (max |output| is ~3, so 2e-5 is ~1e-5 relative).
    assert np.abs(actual - kerascv[1]["unet"]).max() <= 2e-5


def test_text_encoder_matches_kerascv(kerascv, ours):
    actual = np.asarray(ours.encode_prompts([KERASCV_PROMPT]))
    assert np.abs(actual - kerascv[1]["text"]).max() <= 1e-5


@pytest.mark.parametrize("negative_prompt", NEGATIVE_PROMPTS)
def test_ddim_pipeline_matches_generate_image(kerascv, ours, negative_prompt):
    index = NEGATIVE_PROMPTS.index(negative_prompt)
    expected_pixels, expected_latent = kerascv[1][f"pixels {index}"], kerascv[1][f"latent {index}"]
    latent = ours(DDIM_PROMPT, negative_prompt=negative_prompt, width=SIZE, height=SIZE,
                  num_inference_steps=3, seed=42, output_type="latent")
    pixels = ours(DDIM_PROMPT, negative_prompt=negative_prompt, width=SIZE, height=SIZE,
                  num_inference_steps=3, seed=42, output_type="np")
    # Random-weight latents reach ~100 and the first DDIM step divides by
    # sqrt(alpha_999) ~ 0.07, so float32 rounding from batching both CFG
    # halves into one call (KerasCV makes two) shows up at ~1e-5 relative.
    scale = np.abs(expected_latent).max()
    assert np.abs(latent - expected_latent).max() <= 3e-5 * max(1.0, scale)
    difference = np.abs(pixels.astype(int) - expected_pixels.astype(int))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.001


if __name__ == "__main__":
    write_kerascv(Path(sys.argv[1]))
