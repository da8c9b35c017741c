"""Textual inversion: diffusers' `load_textual_inversion` encodings on a tiny
CLIP, A1111's and diffusers' files alike, one retrace at most, one-line errors."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from references import hub_clip_state_dict, transformers_clip
from safetensors.numpy import save_file

from kcv_sd.components import FAMILIES, Components
from kcv_sd.convert import CheckpointError, convert_clip_text_encoder
from kcv_sd.pipeline import Pipeline
from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, get_tokenizer

PROMPTS = ["a photo of <cat-toy> on a table", "<cat-toy>", "a plain photo", "a <cat-toy> and <dot>,<dot>"]


@pytest.fixture(scope="module")
def clip():
    return transformers_clip(TINY_TEXT, seed=11)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return {"<cat-toy>": rng.standard_normal((3, 16)).astype(np.float32),
            "<dot>": rng.standard_normal((1, 16)).astype(np.float32)}


def fresh_pipeline(clip):
    """A pipeline on our copy of `clip` (only its text encoder is used)."""
    text_encoder = build_text_encoder(TINY_TEXT)
    convert_clip_text_encoder(hub_clip_state_dict(clip), text_encoder)
    components = Components(FAMILIES["tiny"], text_encoder, None, None, "test", "float32")
    return Pipeline(components=components, precision="float32", jit_compile=False)


def hf_tokenizer(folder):
    """transformers' CLIPTokenizer on the vocabulary our tokenizer reads."""
    from transformers import CLIPTokenizer

    bpe = get_tokenizer()._bpe
    (folder / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def diffusers_encodings(clip, files, folder):
    from diffusers.loaders import TextualInversionLoaderMixin

    @dataclasses.dataclass
    class Holder(TextualInversionLoaderMixin):  # what the mixin reads of a pipeline
        tokenizer: object
        text_encoder: object
        hf_device_map = None

        @property
        def components(self):
            return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}

    holder = Holder(hf_tokenizer(folder), copy.deepcopy(clip))  # the loader resizes its embeddings
    for path, token in files:
        holder.load_textual_inversion(str(path), token=token)
    prompts = [holder.maybe_convert_prompt(p, holder.tokenizer) for p in PROMPTS]
    ids = holder.tokenizer(prompts, padding="max_length", max_length=MAX_PROMPT_LENGTH, return_tensors="pt").input_ids
    with torch.no_grad():
        return holder.text_encoder(ids).last_hidden_state.numpy()


def test_diffusers_files_match_diffusers_load_textual_inversion(clip, vectors, tmp_path):
    files = []
    for index, (token, value) in enumerate(vectors.items()):
        files.append((tmp_path / f"learned_embeds_{index}.safetensors", None))
        save_file({token: value if len(value) > 1 else value[0]}, files[-1][0])
    expected = diffusers_encodings(clip, files, tmp_path)
    pipeline = fresh_pipeline(clip)
    plain = np.asarray(pipeline.encode_prompts(["a plain photo"]))
    for path, _ in files:
        pipeline.load_textual_inversion(path)
    assert pipeline._encode.experimental_get_tracing_count() == 0
    np.testing.assert_allclose(np.asarray(pipeline.encode_prompts(PROMPTS)), expected, atol=1e-5, rtol=0)
    assert np.array_equal(np.asarray(pipeline.encode_prompts(["a plain photo"])), plain)
    weighted = pipeline.encode_prompts(["a (<cat-toy>:1.0) and <dot>,(<dot>:1)"])  # emphasis syntax
    assert np.array_equal(np.asarray(weighted), np.asarray(pipeline.encode_prompts(PROMPTS[3:])))
    assert pipeline._encode.experimental_get_tracing_count() == 1
    assert len(pipeline.components.text_encoder.weights) == len(build_text_encoder(TINY_TEXT).weights)


def test_a1111_files_read_as_diffusers_ones(clip, vectors, tmp_path):
    """A1111's .pt (string_to_param) and .safetensors (emb_params), tokens given or from the file."""
    torch.save({"string_to_param": {"*": torch.from_numpy(vectors["<cat-toy>"])}, "name": "<cat-toy>", "step": 500},
               tmp_path / "cat.pt")
    save_file({"emb_params": vectors["<dot>"]}, tmp_path / "dot.safetensors")
    reference = fresh_pipeline(clip)
    for token, value in vectors.items():
        save_file({token: value}, tmp_path / f"{token}.safetensors")
        reference.load_textual_inversion(tmp_path / f"{token}.safetensors")
    pipeline = fresh_pipeline(clip)
    pipeline.load_textual_inversion(tmp_path / "cat.pt", allow_pickle=True)
    traces = pipeline._encode.experimental_get_tracing_count()
    pipeline.load_textual_inversion(tmp_path / "dot.safetensors", token="<dot>")
    assert np.array_equal(np.asarray(pipeline.encode_prompts(PROMPTS)), np.asarray(reference.encode_prompts(PROMPTS)))
    assert pipeline._encode.experimental_get_tracing_count() == traces + 1  # the first load's retrace only


def test_wrong_width_and_non_embeddings_are_one_line(clip, tmp_path):
    save_file({"emb_params": np.zeros((2, 1024), np.float32)}, tmp_path / "sd2.safetensors")
    save_file({"a": np.zeros(3, np.float32), "b": np.zeros(3, np.float32)}, tmp_path / "two.safetensors")
    pipeline = fresh_pipeline(clip)
    with pytest.raises(CheckpointError, match=r"^sd2.safetensors is a 1024-wide embedding \(SD2.x\)"):
        pipeline.load_textual_inversion(tmp_path / "sd2.safetensors")
    with pytest.raises(CheckpointError, match=r"^two.safetensors is not a textual inversion embedding"):
        pipeline.load_textual_inversion(tmp_path / "two.safetensors")
