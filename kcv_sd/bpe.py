"""CLIP's byte-level BPE: prompt text -> token ids, as OpenAI's CLIP encodes it.

The text is HTML-unescaped (twice), its whitespace runs collapsed to one
space, lower-cased and split into words by CLIP's pattern. Each word's UTF-8
bytes become one printable symbol per byte, the last marked as ending the
word, and adjacent symbols are merged by the vocabulary's ranked merges,
lowest rank first, until no ranked pair is left. The ids are the ones
KerasCV's tokenizer gives (`tests/test_tokenizer.py` compares both, and
an independent tokenizer).
"""

import functools
import gzip
import html

import regex

START, END = "<|startoftext|>", "<|endoftext|>"
# The vocabulary (49408 ids) is the 256 byte symbols, the same with the
# end-of-word mark, this many merges, and the two special tokens.
MERGES_USED = 49152 - 256 - 2
WORDS = regex.compile(
    "|".join(map(regex.escape, (START, END)))
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
WORD_END = "</w>"


@functools.lru_cache(maxsize=None)
def byte_symbols():
    """{byte: symbol}: printable Latin-1 bytes stand for themselves; every
    other byte, in byte order, for the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + len(symbols) - len(printable))
    return symbols


def read_merges(path):
    """The ranked merges of a gzipped CLIP merges file: (first, second) pairs, rank order."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1:MERGES_USED + 1]]


def clean(text):
    """Unescaped, whitespace runs made one space, trimmed, lower-cased."""
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class BytePairEncoder:
    """Token ids of text from a CLIP merges file (`bpe_simple_vocab_16e6.txt.gz`).

    `encoder` maps each vocabulary symbol to its id and `bpe_ranks` each merge
    to its rank, under the names transformers' and KerasCV's tokenizers use.
    """

    def __init__(self, merges_path):
        merges = read_merges(merges_path)
        symbols = list(byte_symbols().values())
        vocabulary = [*symbols, *(s + WORD_END for s in symbols), *("".join(m) for m in merges), START, END]
        self.encoder = {symbol: index for index, symbol in enumerate(vocabulary)}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self._words = {START: [START], END: [END]}

    @property
    def start_of_text(self):
        return self.encoder[START]

    @property
    def end_of_text(self):
        return self.encoder[END]

    def merged(self, word):
        """The word's symbols after every ranked merge (cached per word)."""
        if word in self._words:
            return self._words[word]
        parts = [*word[:-1], word[-1] + WORD_END]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            joined, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    joined.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    joined.append(parts[i])
                    i += 1
            parts = joined
        self._words[word] = parts
        return parts

    def encode(self, text):
        """Ids of `text`, with the start and end tokens."""
        symbols = byte_symbols()
        ids = [self.start_of_text]
        for word in WORDS.findall(clean(text)):
            ids += [self.encoder[part] for part in self.merged("".join(symbols[b] for b in word.encode("utf-8")))]
        return ids + [self.end_of_text]
