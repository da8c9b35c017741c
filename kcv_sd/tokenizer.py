"""CLIP prompt tokenizer for Stable Diffusion: finding the vocabulary, padding, added tokens.

The BPE itself is `kcv_sd.bpe`, whose ids are KerasCV's. This module adds
what KerasCV lacks: finding the vocabulary file without a network
connection, and clear errors.

The vocabulary ``bpe_simple_vocab_16e6.txt.gz`` is looked up in this order:

1. an explicit ``bpe_path``;
2. the Keras download cache (``$KERAS_HOME/datasets``, default ``~/.keras``);
3. a copy extracted earlier into ``$KERAS_HOME/kcv_sd``, or a fresh one taken
   from the ``instant-clip-tokenizer`` package, whose compiled extension embeds
   the same merges text;
4. a download with ``keras.utils.get_file`` (KerasCV's URL and hash).

Prompt-length policy: nothing is truncated. The pipeline encodes a prompt in
chunks of 75 tokens (`kcv_sd.prompts`), so prompts longer than the text
encoder's 77 tokens work; only a prompt of more than `kcv_sd.prompts.MAX_CHUNKS`
chunks raises ``PromptTooLongError``. `ClipTokenizer.pad` is KerasCV's
one-chunk padding, for prompts of at most 77 tokens. An empty prompt is allowed
here; the pipeline decides whether it makes sense.
"""

import copy
import functools
import gzip
import importlib
import importlib.machinery
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from kcv_sd.bpe import MERGES_USED, BytePairEncoder
from kcv_sd.cache import cached_download, keras_home
from kcv_sd.errors import InvalidArgumentError, WeightsNotFoundError

MAX_PROMPT_LENGTH = 77

VOCABULARY_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCABULARY_URL = (
    "https://github.com/openai/CLIP/blob/main/clip/"
    "bpe_simple_vocab_16e6.txt.gz?raw=true"
)
VOCABULARY_SHA256 = (
    "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
)

_MERGES_HEADER = b"#version: 0.2\n"
# A merge line is two non-blank symbols separated by one space.
_MERGE_LINE = re.compile(r"\S+ \S+")


class PromptTooLongError(InvalidArgumentError):
    """A prompt needs more chunks of tokens than kcv-sd encodes.

    A ``ValueError`` (via ``InvalidArgumentError``) so the CLI reports it as a
    user error rather than a crash.
    """

    def __init__(self, max_chunks, chunk_tokens):
        super().__init__(
            f"The prompt is longer than {max_chunks} chunks of {chunk_tokens} tokens "
            f"({max_chunks * chunk_tokens} tokens; BREAK starts a new chunk). Shorten the prompt."
        )


def _instant_clip_tokenizer_extension():
    """Path of the package's compiled extension, or None if not installed."""
    try:
        package = importlib.import_module("instant_clip_tokenizer")
    except ImportError:
        return None
    package_dir = Path(package.__file__).parent
    extensions = (
        path
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        for path in package_dir.glob(f"*{suffix}")
    )
    return next(extensions, None)


def _extract_merges(binary_path):
    """Merges text embedded in a compiled binary, or None if absent/short.

    The text has no terminator of its own in the binary; it ends at the first
    line that is not a merge (the next embedded string starts there).
    """
    data = binary_path.read_bytes()
    start = data.find(_MERGES_HEADER)
    if start < 0:
        return None
    merges = []
    for raw_line in data[start + len(_MERGES_HEADER) :].split(b"\n"):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            break
        if not _MERGE_LINE.fullmatch(line):
            break
        merges.append(line)
    if len(merges) < MERGES_USED:
        return None
    return _MERGES_HEADER + "".join(f"{m}\n" for m in merges).encode("utf-8")


def _write_atomically(path, content):
    """Write via a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name)
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(content)
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise


def _extracted_vocabulary():
    """Vocabulary from instant-clip-tokenizer, extracted once; else None."""
    extracted_path = keras_home() / "kcv_sd" / VOCABULARY_FILENAME
    if extracted_path.is_file():
        return extracted_path
    extension = _instant_clip_tokenizer_extension()
    if extension is None:
        return None
    merges = _extract_merges(extension)
    if merges is None:
        return None
    _write_atomically(extracted_path, gzip.compress(merges, mtime=0))
    return extracted_path


def find_vocabulary_file(bpe_path=None):
    """Path of the BPE vocabulary, in the module docstring's lookup order."""
    if bpe_path is not None:
        bpe_path = Path(bpe_path)
        if not bpe_path.is_file():
            raise WeightsNotFoundError(
                f"CLIP vocabulary file {bpe_path} does not exist. Pass the "
                f"path of {VOCABULARY_FILENAME}, or omit it to use the cache."
            )
        return bpe_path
    keras_cache_dir = keras_home() / "datasets"
    cached_path = keras_cache_dir / VOCABULARY_FILENAME
    if cached_path.is_file():
        return cached_path
    return _extracted_vocabulary() or cached_download(
        VOCABULARY_FILENAME,
        VOCABULARY_URL,
        VOCABULARY_SHA256,
        offline_hint=", or run `pip install instant-clip-tokenizer` for an offline vocabulary",
    )


class ClipTokenizer:
    """Turns prompts into the fixed-length ids the text encoder takes."""

    added = {}  # text: ids, of tokens added after the vocabulary (`with_added_tokens`)

    def __init__(self, bpe_path=None):
        vocabulary = find_vocabulary_file(bpe_path)
        self._bpe = BytePairEncoder(vocabulary)

    @property
    def start(self):
        return self._bpe.start_of_text

    @property
    def end(self):
        """The end token, also the padding token (SD 1.x)."""
        return self._bpe.end_of_text

    @property
    def comma(self):
        return self._bpe.encoder[",</w>"]

    def encode(self, text):
        """Token ids of ``text``, start and end tokens included, unpadded;
        added tokens (`with_added_tokens`) are found first and the text
        between them goes through the BPE."""
        if not self.added:
            return self._bpe.encode(text)
        ids = [self.start]
        pattern = "|".join(map(re.escape, sorted(self.added, key=len, reverse=True)))
        for piece in re.split(f"({pattern})", text):
            ids += self.added[piece] if piece in self.added else self._bpe.encode(piece)[1:-1]
        return ids + [self.end]

    def with_added_tokens(self, tokens):
        """A copy that also reads each of `tokens` ({text: [ids]}) as its ids,
        wherever the text appears (as transformers' added tokens); the BPE
        vocabulary is shared."""
        added = copy.copy(self)
        added.added = {**self.added, **tokens}
        return added

    def pad(self, text):
        """Ids of ``text`` padded to 77 with the end token, as KerasCV does;
        for a prompt of at most 77 tokens (no emphasis syntax read)."""
        ids = self.encode(text)
        if len(ids) > MAX_PROMPT_LENGTH:
            raise ValueError(f"pad() takes at most {MAX_PROMPT_LENGTH} tokens, not {len(ids)}: "
                             "kcv_sd.prompts.chunks splits longer prompts.")
        padded = np.full(MAX_PROMPT_LENGTH, self.end, np.int32)
        padded[: len(ids)] = ids
        return padded

    def pad_batch(self, texts):
        """``pad`` for several prompts, stacked to shape (len(texts), 77)."""
        rows = [self.pad(text) for text in texts]
        return np.array(rows, np.int32).reshape(len(texts), MAX_PROMPT_LENGTH)


@functools.lru_cache(maxsize=None)
def get_tokenizer():
    """Shared tokenizer: loading the vocabulary takes a noticeable moment."""
    return ClipTokenizer()
