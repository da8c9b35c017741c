"""Bad input fails early with a message that names the problem and the fix."""

import keras
import pytest

from kcv_sd.components import load_components
from kcv_sd.errors import InvalidArgumentError, WeightsNotFoundError
from kcv_sd.pipeline import Pipeline
from kcv_sd.tokenizer import PromptTooLongError


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=100), "width=100.*multiples of 8.*the nearest are 96 and 104"),
    (dict(height=4096), "height=4096.*2048"),
    (dict(width=0), "width=0"),
    (dict(width=512.0), "width=512.0"),
    (dict(num_inference_steps=0), "num_inference_steps=0.*from 1 to 1000"),
    (dict(guidance_scale=-1), "guidance_scale=-1.*>= 0"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt=0"),
    (dict(output_type="jpeg"), "output_type='jpeg'"),
    (dict(negative_prompt=["a", "b"]), "2 negative prompts for 1 prompts"),
])
def test_invalid_arguments(tiny_pipeline, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        tiny_pipeline("a prompt", **{"width": 64, "height": 64, **kwargs})


@pytest.mark.parametrize("prompt", ["", "   ", [], ["ok", ""]])
def test_empty_prompt(tiny_pipeline, prompt):
    with pytest.raises(InvalidArgumentError, match="Empty prompt"):
        tiny_pipeline(prompt, width=64, height=64)


def test_prompt_too_long(tiny_pipeline):
    with pytest.raises(PromptTooLongError, match="longer than 20 chunks of 75 tokens.*Shorten"):
        tiny_pipeline("word " * 1501, width=64, height=64)


def test_unknown_precision():
    with pytest.raises(InvalidArgumentError, match="Unknown precision 'fp16'.*mixed_float16"):
        Pipeline(model="tiny", weights="random", precision="fp16")


def test_unknown_model_and_weights():
    with pytest.raises(InvalidArgumentError, match="Unknown model 'sd3'"):
        load_components("sd3", "random")
    with pytest.raises(InvalidArgumentError, match="no published weights"):
        load_components("tiny", "kerascv")
    with pytest.raises(InvalidArgumentError, match="neither 'kerascv', 'random' nor an existing folder"):
        load_components("sd15", "/no/such/folder")


def test_missing_weights_offline_name_file_place_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsNotFoundError) as error:
        load_components("sd15", "kerascv")
    message = str(error.value)
    assert "kcv_encoder.h5" in message
    assert str(tmp_path / "datasets" / "kcv_encoder.h5") in message
    assert "https://huggingface.co/fchollet/stable-diffusion/resolve/main/kcv_encoder.h5" in message
    assert error.value.__suppress_context__


def test_folder_missing_a_file(tmp_path):
    (tmp_path / "kcv_encoder.h5").write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="kcv_diffusion_model.h5 .unet weights. is missing"):
        load_components("sd15", str(tmp_path))
