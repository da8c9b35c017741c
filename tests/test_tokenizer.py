"""Tests for kcv_sd.tokenizer: ids match CLIP/KerasCV, and the vocabulary is
found offline in the documented order. Every test runs with KERAS_HOME in a
temporary directory, so the real Keras cache is never read or written."""

import shutil
import sys

import keras
import numpy as np
import pytest
from keras_cv.src.models.stable_diffusion.constants import (
    _UNCONDITIONAL_TOKENS,
)

from kcv_sd import tokenizer as tokenizer_module
from kcv_sd.errors import WeightsNotFoundError
from kcv_sd.tokenizer import (
    MAX_PROMPT_LENGTH,
    VOCABULARY_FILENAME,
    VOCABULARY_URL,
    ClipTokenizer,
    find_vocabulary_file,
    get_tokenizer,
)

START, END = 49406, 49407

PROMPTS = [
    "A person riding a motorcycle",
    "a photograph of an astronaut riding a horse",
    "Hello, world! How's it going?",
    "1234567890 and 3.14159, 42%",
    "café naïve résumé über straße",
    "東京の夜景, ネオン",
    "emoji 🚀🔥 and ❤️",
    "it's, they're, we've, I'm, you'll, he'd, don't",
    "multiple    spaces\tand\nnewlines",
    "UPPER CASE SHOUTING",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "hyphen-ated words/with slashes & ampersands",
    'quotes "double" \'single\'; semi;colons: <angle> brackets',
    "(masterpiece:1.2), [best quality], {ultra-detailed}",
    "",
]


@pytest.fixture(scope="session")
def extracted_vocabulary(tmp_path_factory):
    """Vocabulary extracted from instant-clip-tokenizer into a scratch home."""
    pytest.importorskip("instant_clip_tokenizer")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
        return find_vocabulary_file()


@pytest.fixture(scope="session")
def clip_tokenizer(extracted_vocabulary):
    return ClipTokenizer(extracted_vocabulary)


@pytest.fixture(scope="session")
def kerascv_tokenizer(extracted_vocabulary):
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    return SimpleTokenizer(str(extracted_vocabulary))


@pytest.fixture(autouse=True)
def empty_keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def offline_without_package(monkeypatch):
    """No instant-clip-tokenizer and no network."""

    def fail_download(*args, **kwargs):
        raise Exception("network unreachable")

    monkeypatch.setitem(sys.modules, "instant_clip_tokenizer", None)
    monkeypatch.setattr(keras.utils, "get_file", fail_download)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_instant_clip_tokenizer(clip_tokenizer, prompt):
    from instant_clip_tokenizer import Tokenizer

    expected = [START, *Tokenizer().encode(prompt), END]
    assert clip_tokenizer.encode(prompt) == expected


@pytest.mark.parametrize("prompt", [*PROMPTS, "<|endoftext|> &amp;amp; x", "a <|startoftext|>b"])
def test_ids_match_kerascv_tokenizer(clip_tokenizer, kerascv_tokenizer, prompt):
    assert clip_tokenizer.encode(prompt) == kerascv_tokenizer.encode(prompt)


def test_known_ids(clip_tokenizer):
    assert clip_tokenizer.encode("A person riding a motorcycle") == [
        49406, 320, 2533, 6765, 320, 10297, 49407,
    ]


def test_empty_prompt_matches_keras_cv_unconditional_tokens(clip_tokenizer):
    np.testing.assert_array_equal(
        clip_tokenizer.pad(""), np.array(_UNCONDITIONAL_TOKENS)
    )


def test_pad_fills_with_end_token(clip_tokenizer):
    padded = clip_tokenizer.pad("a cat")
    ids = clip_tokenizer.encode("a cat")
    assert padded.shape == (MAX_PROMPT_LENGTH,)
    assert padded.dtype == np.int32
    assert padded[: len(ids)].tolist() == ids
    assert (padded[len(ids) :] == END).all()


def test_prompt_of_exactly_77_tokens_passes(clip_tokenizer):
    prompt = " ".join(["cat"] * (MAX_PROMPT_LENGTH - 2))
    assert len(clip_tokenizer.encode(prompt)) == MAX_PROMPT_LENGTH
    padded = clip_tokenizer.pad(prompt)
    assert padded[0] == START and padded[-1] == END


def test_pad_takes_one_chunk(clip_tokenizer):
    """Longer prompts go through kcv_sd.prompts in chunks; pad() is KerasCV's one-chunk padding."""
    prompt = " ".join(["cat"] * (MAX_PROMPT_LENGTH - 1))
    with pytest.raises(ValueError, match="at most 77 tokens, not 78.*kcv_sd.prompts.chunks"):
        clip_tokenizer.pad(prompt)


def test_pad_batch_shape(clip_tokenizer):
    batch = clip_tokenizer.pad_batch(["a cat", "", "a dog on a skateboard"])
    assert batch.shape == (3, MAX_PROMPT_LENGTH)
    assert batch.dtype == np.int32
    np.testing.assert_array_equal(batch[1], clip_tokenizer.pad(""))
    assert clip_tokenizer.pad_batch([]).shape == (0, MAX_PROMPT_LENGTH)


def test_explicit_path_is_used(
    extracted_vocabulary, tmp_path, offline_without_package
):
    explicit = tmp_path / "my_vocab.txt.gz"
    shutil.copy(extracted_vocabulary, explicit)
    assert find_vocabulary_file(explicit) == explicit
    assert ClipTokenizer(explicit).encode("a cat")[0] == START


def test_missing_explicit_path_raises(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        find_vocabulary_file(tmp_path / "absent.txt.gz")


def test_keras_cache_is_used_without_extraction(
    extracted_vocabulary, empty_keras_home, monkeypatch
):
    cached = empty_keras_home / "datasets" / VOCABULARY_FILENAME
    cached.parent.mkdir(parents=True)
    shutil.copy(extracted_vocabulary, cached)
    monkeypatch.setattr(tokenizer_module, "_extract_merges", pytest.fail)
    assert find_vocabulary_file() == cached
    assert not (empty_keras_home / "kcv_sd").exists()


def test_extraction_writes_kcv_sd_cache(empty_keras_home):
    pytest.importorskip("instant_clip_tokenizer")
    path = find_vocabulary_file()
    assert path == empty_keras_home / "kcv_sd" / VOCABULARY_FILENAME
    assert [p.name for p in path.parent.iterdir()] == [VOCABULARY_FILENAME]


def test_offline_without_vocabulary_raises_clear_error(
    offline_without_package,
):
    with pytest.raises(WeightsNotFoundError) as error:
        ClipTokenizer()
    assert isinstance(error.value, FileNotFoundError)
    assert error.value.__cause__ is None and error.value.__suppress_context__
    message = str(error.value)
    assert VOCABULARY_FILENAME in message
    assert VOCABULARY_URL in message
    assert "pip install instant-clip-tokenizer" in message


def test_get_tokenizer_is_shared(extracted_vocabulary):
    get_tokenizer.cache_clear()
    try:
        assert get_tokenizer() is get_tokenizer()
    finally:
        get_tokenizer.cache_clear()
