"""Prompt syntax: AUTOMATIC1111's emphasis and BREAK, and chunks of 75 tokens.

Emphasis, always on (write a literal bracket as ``\\(``, ``\\)``, ``\\[``,
``\\]``, a backslash as ``\\\\``):

- ``(text)`` multiplies the weight of its tokens by 1.1, ``[text]`` divides it
  by 1.1; nested brackets multiply: ``((text))`` is 1.21;
- ``(text:1.3)`` multiplies by 1.3 (any number, ``(text:0.5)`` lowers it);
- an unclosed bracket runs to the end of the prompt, a closing bracket
  without its opening one is text, and so is ``:1.3)`` outside brackets;
- ``BREAK`` (capitals, a word of its own) ends the current chunk.

`parse` follows A1111's ``parse_prompt_attention``: round and square brackets
are two separate stacks, and neighbouring pieces of equal weight are joined
before tokenizing. Unlike A1111, a ``BREAK`` inside brackets still breaks (A1111
multiplies its marker's weight and then encodes the word "BREAK").

`chunks` tokenizes the pieces and cuts them into chunks of 75 tokens as
A1111 does: a new chunk at BREAK or when one is full, and a full chunk whose
last comma is at most `COMMA_BACKTRACK` tokens back ends at that comma, the
rest moving on (A1111's default; compel cuts at 75 exactly). Each chunk is
wrapped in the start and end tokens and padded with the end token to 77; the
start, end and padding tokens weigh 1. How the weights act on the text
encoder's output is `kcv_sd.emphasis`. Prompt editing (``[a:b:0.5]``) and
alternation (``[a|b]``) are not implemented: their brackets are emphasis.
"""

import re

import numpy as np

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, PromptTooLongError, get_tokenizer

CHUNK_TOKENS = MAX_PROMPT_LENGTH - 2  # a chunk's prompt tokens, between start and end
# Longest prompt: 20 chunks (1500 tokens, a context of 1540); beyond, one error line.
MAX_CHUNKS = 20
COMMA_BACKTRACK = 20
ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = ("BREAK", None)  # the piece `parse` gives for BREAK

_SYNTAX = re.compile(r"""
    (?P<escaped>\\[()\[\]\\]?)                   # \( \) \[ \] \\; a lone backslash is dropped
  | (?P<weighted>:\s*(?P<weight>[+-]?[\d.]+)\s*\))  # closes "(" with this weight
  | (?P<opening>[(\[])
  | (?P<closing>[)\]])
  | (?P<text>[^\\()\[\]:]+|:)
""", re.VERBOSE)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def _multiply(pieces, start, factor):
    for piece in pieces[start:]:
        if piece[1] is not None:
            piece[1] *= factor


def _weight(match):
    try:
        return float(match["weight"])
    except ValueError:
        raise InvalidArgumentError(
            f"The prompt weight '{match[0]}' is not a number: write (text:1.3), or \\( for a literal "
            "parenthesis.") from None


def parse(prompt):
    """The prompt's pieces: a list of (text, weight) in order, BREAK as `BREAK`."""
    pieces, opened = [], {"(": [], "[": []}
    for match in _SYNTAX.finditer(prompt):
        kind = match.lastgroup
        closes = {")": "(", "]": "["}.get(match[0], "(" if kind == "weighted" else None)
        if kind == "escaped":
            pieces.append([match[0][1:], 1.0])
        elif kind == "opening":
            opened[match[0]].append(len(pieces))
        elif closes and opened[closes]:
            factor = _weight(match) if kind == "weighted" else ROUND if closes == "(" else SQUARE
            _multiply(pieces, opened[closes].pop(), factor)
        else:
            for index, part in enumerate(_BREAK.split(match[0])):
                pieces += [list(BREAK)] * (index > 0) + [[part, 1.0]]
    for bracket, factor in (("(", ROUND), ("[", SQUARE)):
        for start in opened[bracket]:
            _multiply(pieces, start, factor)
    joined = []
    for text, weight in pieces or [["", 1.0]]:
        if joined and weight is not None and joined[-1][1] == weight:
            joined[-1] = (joined[-1][0] + text, weight)
        else:
            joined.append((text, weight))
    return [BREAK if weight is None else (text, weight) for text, weight in joined]


class _Chunker:
    """Collects (token, weight) pairs into chunks of `CHUNK_TOKENS`."""

    def __init__(self, comma):
        self.comma, self.done = comma, []
        self.tokens, self.weights, self.last_comma = [], [], -1

    def close(self):
        if len(self.done) == MAX_CHUNKS:
            raise PromptTooLongError(MAX_CHUNKS, CHUNK_TOKENS)
        self.done.append((self.tokens, self.weights))
        self.tokens, self.weights, self.last_comma = [], [], -1

    def add(self, token, weight):
        if token == self.comma:
            self.last_comma = len(self.tokens)
        elif len(self.tokens) == CHUNK_TOKENS and 0 <= CHUNK_TOKENS - self.last_comma <= COMMA_BACKTRACK:
            cut = self.last_comma + 1
            moved = self.tokens[cut:], self.weights[cut:]
            del self.tokens[cut:], self.weights[cut:]
            self.close()
            self.tokens, self.weights = moved
        if len(self.tokens) == CHUNK_TOKENS:
            self.close()
        self.tokens.append(token)
        self.weights.append(weight)


def chunks(prompt, tokenizer):
    """The prompt's chunks: token ids int32 (k, 77) and weights float32 (k, 77),
    k >= 1 (an empty prompt is one chunk: start, then end tokens)."""
    chunker = _Chunker(tokenizer.comma)
    for text, weight in parse(prompt):
        if weight is None:
            chunker.close()
            continue
        for token in tokenizer.encode(text)[1:-1]:
            chunker.add(token, weight)
    if chunker.tokens or not chunker.done:
        chunker.close()
    ids = np.full((len(chunker.done), MAX_PROMPT_LENGTH), tokenizer.end, np.int32)
    weights = np.ones(ids.shape, np.float32)
    ids[:, 0] = tokenizer.start
    for row, (tokens, token_weights) in enumerate(chunker.done):
        ids[row, 1 : 1 + len(tokens)] = tokens
        weights[row, 1 : 1 + len(tokens)] = token_weights
    return ids, weights


def chunk_batch(prompts, tokenizer):
    """`chunks` of several prompts, each padded to the most chunks among them
    with empty-prompt chunks: ids int32 (N, k, 77), weights float32 (N, k, 77)."""
    each = [chunks(prompt, tokenizer) for prompt in prompts]
    count = max(len(ids) for ids, _ in each)
    empty = chunks("", tokenizer)
    return tuple(np.stack([np.concatenate([arrays[part]] + [empty[part]] * (count - len(arrays[part])))
                           for arrays in each]) for part in (0, 1))


def check_prompts(prompts):
    """Raise the one-line errors `chunks` would (a weight that is no number,
    too long a prompt) for these prompts, before any model is built."""
    for prompt in dict.fromkeys(prompts):
        chunks(prompt, get_tokenizer())
