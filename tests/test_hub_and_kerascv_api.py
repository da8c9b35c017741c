"""Where users already are: Hub repo ids as weights, and KerasCV's
`StableDiffusion` API with one import changed.

The Hub is a stand-in: `huggingface_hub.hf_hub_download` serves a tiny
random diffusers folder, or fails as the Hub does offline or for an unknown
repo. The KerasCV API runs on the shared tiny pipeline (no new trace).
"""

import inspect

import huggingface_hub
import keras_cv
import numpy as np
import pytest
from click.testing import CliRunner
from huggingface_hub import errors

import kcv_sd
from kcv_sd import components
from kcv_sd.cli import main
from kcv_sd.errors import InvalidArgumentError, WeightsNotFoundError
from kcv_sd.hub import diffusers_snapshot, is_repo_id
from kcv_sd.kerascv_api import StableDiffusion
from kcv_sd.text_encoder import TINY_TEXT

REPO = "someone/tiny-sd"


WEIGHTS = ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
           "vae/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A diffusers repo's file names (its UNet only there as the fp16
    variant), empty: loading a diffusers folder is tested on its own
    (tests/test_convert_sd_folder.py, tests/test_sizes.py)."""
    folder = tmp_path_factory.mktemp("hub")
    for name in (*WEIGHTS, "text_encoder/config.json", "unet/config.json", "vae/config.json"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).touch()
    return folder


def repo_not_found():
    """The Hub's RepositoryNotFoundError (it wants an HTTP response to build)."""
    error = errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError)
    Exception.__init__(error, "404 Client Error. Repository Not Found")
    return error


def fake_hub(monkeypatch, folder, cached=(), unreachable=False, requests=None):
    """`hf_hub_download` serving `folder` as the repo REPO, with the files
    `cached` in the Hub cache; `unreachable`: the Hub cannot be reached.
    `requests` gets the files asked of the Hub (not of the cache alone)."""
    def download(repo_id, filename, local_files_only=False):
        if not local_files_only and requests is not None:
            requests.append(filename)
        if filename in cached:
            return str(folder / filename)
        if local_files_only or unreachable:
            raise errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")
        if repo_id != REPO:
            raise repo_not_found()
        if not (folder / filename).is_file():
            raise errors.EntryNotFoundError(f"404 {filename}")
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def test_repo_id_downloads_only_what_a_diffusers_folder_needs_and_loads_it(hub_folder, monkeypatch):
    requests = []
    fake_hub(monkeypatch, hub_folder, requests=requests)
    monkeypatch.setattr(components, "_load_diffusers_folder", lambda family, folder, precision, seed: folder)
    assert components.load_components("tiny", REPO) == hub_folder
    assert requests == ["text_encoder/model.safetensors", "text_encoder/config.json",
                        "unet/diffusion_pytorch_model.safetensors",  # absent: its fp16 variant is taken
                        "unet/diffusion_pytorch_model.fp16.safetensors", "unet/config.json",
                        "vae/diffusion_pytorch_model.safetensors", "vae/config.json"]


def test_cached_weights_need_no_hub_and_a_cached_fp16_variant_serves(hub_folder, monkeypatch):
    requests = []
    fake_hub(monkeypatch, hub_folder, cached=WEIGHTS, unreachable=True, requests=requests)
    assert diffusers_snapshot(REPO) == hub_folder and requests == []


@pytest.mark.parametrize("repo,unreachable,message", [
    (REPO, True, "text_encoder/model.safetensors of 'someone/tiny-sd' is not in the Hugging Face cache and the "
                 "Hub cannot be reached. Check your connection"),
    ("nobody/no-such-model", False, "'nobody/no-such-model' is not a Hugging Face repo you can read"),
])
def test_offline_or_unknown_repo_is_one_line(hub_folder, monkeypatch, repo, unreachable, message):
    requests = []
    fake_hub(monkeypatch, hub_folder, unreachable=unreachable, requests=requests)
    with pytest.raises(WeightsNotFoundError, match="^" + message) as caught:
        components.load_components("tiny", repo)
    assert "\n" not in str(caught.value)
    assert len(requests) == 1  # unreachable: the Hub's retries are paid once, the rest is the cache's


def test_a_repo_without_diffusers_layout_is_named(tmp_path, monkeypatch):
    fake_hub(monkeypatch, tmp_path)
    with pytest.raises(WeightsNotFoundError, match="'someone/tiny-sd' has no text_encoder weights in "
                                                   "diffusers' layout .*not a diffusers SD1.x repo"):
        diffusers_snapshot(REPO)


def test_a_local_path_of_the_same_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_repo_id(REPO) and not is_repo_id("kerascv") and not is_repo_id("model.safetensors")
    (tmp_path / REPO).mkdir(parents=True)
    assert not is_repo_id(REPO)


def test_cli_weights_repo_id_offline_is_one_line(hub_folder, monkeypatch, tmp_path):
    fake_hub(monkeypatch, hub_folder, unreachable=True)
    result = CliRunner().invoke(main, ["generate", "a", "--model", "tiny", "--precision", "float32", "--weights", REPO, "--width", "64",
                                       "--height", "64", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "of 'someone/tiny-sd' is not in the Hugging Face cache" in line


# --- keras_cv.models.StableDiffusion's API ---

ARGS = dict(batch_size=2, num_steps=2, seed=7)


@pytest.fixture(scope="module")
def kerascv_like(tiny_pipeline):
    return StableDiffusion(img_height=64, img_width=64, pipeline=tiny_pipeline)


@pytest.mark.parametrize("method", ["__init__", "text_to_image", "encode_text", "generate_image"])
def test_signatures_are_kerascv_own(method):
    theirs = list(inspect.signature(getattr(keras_cv.models.StableDiffusion, method)).parameters.values())
    ours = list(inspect.signature(getattr(StableDiffusion, method)).parameters.values())
    assert [(p.name, p.default, p.kind) for p in ours[:len(theirs)]] == \
           [(p.name, p.default, p.kind) for p in theirs]
    assert all(p.kind == p.KEYWORD_ONLY for p in ours[len(theirs):])  # kcv-sd's own additions


def test_kerascv_code_runs_with_one_import_changed(generate_on_tiny_pipeline):
    model = kcv_sd.StableDiffusion(img_width=64, img_height=64, jit_compile=False, model="tiny",
                                   weights="random")
    assert model.pipeline is generate_on_tiny_pipeline
    images = model.text_to_image("a photograph of an astronaut riding a horse", **ARGS)
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (2, 64, 64, 3)


def test_same_seed_same_images_and_encode_then_generate_is_text_to_image(kerascv_like, tiny_pipeline):
    prompt, negative = "a cozy reading room", "blurry"
    images = kerascv_like.text_to_image(prompt, negative_prompt=negative, **ARGS)
    np.testing.assert_array_equal(kerascv_like.text_to_image(prompt, negative_prompt=negative, **ARGS), images)
    encoded = kerascv_like.encode_text(prompt)
    assert encoded.shape == (1, 77, TINY_TEXT.embed_dim) and encoded.dtype == np.float32
    np.testing.assert_array_equal(kerascv_like.generate_image(encoded, negative_prompt=negative, **ARGS), images)
    # KerasCV's noise for the seed and KerasCV's DDIM: the pipeline's own (tests/test_parity_kerascv.py)
    np.testing.assert_array_equal(tiny_pipeline(prompt, width=64, height=64, num_inference_steps=2, seed=7,
                                                num_images_per_prompt=2, output_type="np"),
                                  kerascv_like.text_to_image(prompt, **ARGS))


def test_diffusion_noise_without_batch_seeds_every_image(kerascv_like):
    noise = np.random.default_rng(0).standard_normal((8, 8, 4)).astype("float32")
    first, second = kerascv_like.generate_image(kerascv_like.encode_text("a"), batch_size=2, num_steps=2,
                                                diffusion_noise=noise)
    np.testing.assert_array_equal(first, second)


def test_sizes_round_to_multiples_of_8(tiny_pipeline):
    model = StableDiffusion(img_height=101, img_width=60, pipeline=tiny_pipeline)  # Python's round, as KerasCV
    assert (model.img_height, model.img_width) == (104, 64)
    with pytest.raises(InvalidArgumentError, match="img_width=16 is not supported"):
        StableDiffusion(img_width=20, pipeline=tiny_pipeline)


@pytest.mark.parametrize("call,error,message", [
    (lambda m: m.generate_image(m.encode_text("a"), diffusion_noise=np.zeros((8, 8, 4)), seed=1),
     ValueError, "`diffusion_noise` and `seed` should not both be passed"),
    (lambda m: m.encode_text("word " * 90), ValueError, "The prompt is 92 tokens long; encode_text takes at most 77"),
    (lambda m: m.generate_image(np.zeros((3, 77, 16)), batch_size=2),
     InvalidArgumentError, r"encoded_text has shape \(3, 77, 16\): give \(77, 16\) or \(2, 77, 16\)"),
    (lambda m: m.generate_image(m.encode_text("a"), diffusion_noise=np.zeros((16, 16, 4))),
     InvalidArgumentError, r"diffusion_noise has shape \(16, 16, 4\): give \(8, 8, 4\) or \(1, 8, 8, 4\)"),
    (lambda m: m.text_to_image("a", num_steps=0), InvalidArgumentError, "num_steps=0"),
    (lambda m: m.text_to_image("a", diffusion_noise=None), TypeError, "diffusion_noise"),
])
def test_what_kerascv_refuses_or_kcv_sd_cannot_do_is_one_line(kerascv_like, call, error, message):
    with pytest.raises(error, match=message):
        call(kerascv_like)
