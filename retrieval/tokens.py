"""The embedding model's own tokenizer (Hugging Face ``tokenizers``: Rust, no torch), for counting and cutting.

Chunks are measured with the very tokenizer the embedding engine uses, so a chunk that fits here fits there:
the engine adds ``special_tokens`` (``[CLS]`` and ``[SEP]`` for BERT) to each input, which callers subtract from
its ``max_model_len``. A model's ``tokenizer.json`` often asks for truncation and padding (all-MiniLM-L6-v2's
truncates and pads to 128); both are switched off here, or counts would lie.

Counting by words: when the model splits its input at whitespace and drops it (BERT's and the plain whitespace
pre-tokenizers, behind character-local normalizers), a text's tokens are exactly its words' tokens end to end,
a word being a run of characters between ASCII spaces, tabs and newlines. ``count_words`` counts each distinct
word once, all the new ones in one encoding joined by spaces, and remembers the counts: prose reuses few words
many times, so chunking a document costs the tokenizer about a third of its text, and less once the cache holds
a corpus' vocabulary. ``splits_at_whitespace`` says whether that holds; when it does not, words are counted
one by one and nothing adds up across them.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from itertools import accumulate, compress, pairwise, repeat
from operator import is_, itemgetter, sub
from pathlib import Path
from typing import Any

import tokenizers

__all__ = ["Tokenizer"]

# Normalizers that map characters one by one (or compose/decompose within a grapheme, which whitespace ends),
# and pre-tokenizers that split at whitespace and drop it: with these, counts add up across whitespace.
_LOCAL_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFD", "NFC", "NFKD", "NFKC", "StripAccents"})
_WHITESPACE_SPLITTERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
_SPLITTERS_BESIDE = frozenset({"Punctuation", "Digits"})
_ASCII_WHITESPACE = frozenset(" \t\n\r")
_CACHE_WORDS = 1 << 18  # the word-count cache is emptied when it holds more words than this (about 30 MB)
_CACHE_WORD_CHARS = 64  # longer words are counted but not remembered
_JOINED_CHARS = 1 << 16  # new words are encoded in joined pieces of about this many characters


class Tokenizer:
    """Counts tokens and gives their character spans, special tokens excluded."""

    def __init__(self, inner: tokenizers.Tokenizer) -> None:
        inner.no_truncation()
        inner.no_padding()
        self._inner = inner
        self.special_tokens: int = len(inner.encode("", add_special_tokens=True).ids) - len(
            inner.encode("", add_special_tokens=False).ids
        )
        self.splits_at_whitespace: bool = _splits_at_whitespace(json.loads(inner.to_str()))
        self._word_counts: dict[str, int] = {"": 0}

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a ``tokenizer.json``."""
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load the ``tokenizer.json`` inside a model folder."""
        return cls.from_file(Path(path) / "tokenizer.json")

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """A ``tokenizer.json`` or a model folder holding one (what the ``embedding_tokenizer`` setting names)."""
        return cls.from_dir(path) if Path(path).is_dir() else cls.from_file(path)

    def to_json(self) -> str:
        """The tokenizer as ``tokenizer.json`` text (truncation and padding off), to rebuild it elsewhere."""
        return str(self._inner.to_str())

    def count(self, text: str) -> int:
        """Tokens in ``text`` as one input, special tokens excluded."""
        return len(self._inner.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: list[str]) -> list[int]:
        """``count`` of each text, encoded in parallel by the Rust side."""
        encodings = self._inner.encode_batch_fast(texts, add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def count_words(self, words: list[str]) -> list[int]:
        """``count`` of each word (a text without ASCII whitespace), remembered across calls.

        Where ``splits_at_whitespace``, the count of a text is the sum of its words' counts.
        """
        known = self._word_counts
        counts: list[int | None] = list(map(known.get, words))
        if None not in counts:
            return counts  # type: ignore[return-value]  # no None left
        new = set(compress(words, map(is_, counts, repeat(None))))
        if self.splits_at_whitespace:
            found = dict(zip(new, self._count_joined(list(new)), strict=True))
        else:
            ordered = list(new)
            found = dict(zip(ordered, self.count_batch(ordered), strict=True))
        if len(known) + len(found) > _CACHE_WORDS:
            known.clear()
            known[""] = 0
        if max(map(len, found)) <= _CACHE_WORD_CHARS:
            known.update(found)
        else:
            known.update((word, n) for word, n in found.items() if len(word) <= _CACHE_WORD_CHARS)
        return list(map(found.get, words, counts))  # type: ignore[arg-type]  # each word is in one or the other

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans (start, end) in ``text`` of its tokens, in order, special tokens excluded."""
        return list(self._inner.encode(text, add_special_tokens=False).offsets)

    def encode_offsets_batch(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """``encode_offsets`` of each text, encoded in parallel by the Rust side."""
        encodings = self._inner.encode_batch(texts, add_special_tokens=False)
        return [list(encoding.offsets) for encoding in encodings]

    def _count_joined(self, words: list[str]) -> list[int]:
        """Counts of distinct words, encoded joined by spaces; each token goes to the word where it starts."""
        ends = list(accumulate(map((1).__add__, map(len, words))))  # where each word's space ends, joined
        bounds = [0]
        while bounds[-1] < len(words):  # groups of about _JOINED_CHARS characters
            done = ends[bounds[-1] - 1] if bounds[-1] else 0
            bounds.append(max(bounds[-1] + 1, bisect_left(ends, done + _JOINED_CHARS)))
        groups = [words[low:high] for low, high in pairwise(bounds)]
        encodings = self._inner.encode_batch([" ".join(group) for group in groups], add_special_tokens=False)
        counts: list[int] = []
        for group, encoding in zip(groups, encodings, strict=True):
            token_starts = list(map(itemgetter(0), encoding.offsets))
            if token_starts != sorted(token_starts):  # never seen; count them one by one rather than guess
                counts.extend(self.count_batch(group))
                continue
            word_starts = accumulate(map((1).__add__, map(len, group)), initial=0)
            cuts = list(map(bisect_left, repeat(token_starts), word_starts))
            counts.extend(map(sub, cuts[1:], cuts))
        return counts


def _splits_at_whitespace(config: dict[str, Any]) -> bool:
    """Whether ASCII whitespace always ends a pre-token and yields no token, so counts add up across it."""
    if any(_ASCII_WHITESPACE & set(token.get("content", "")) for token in config.get("added_tokens") or []):
        return False
    normalizer = config.get("normalizer")
    normalizers = [] if normalizer is None else _members(normalizer, "normalizers")
    if not all(item.get("type") in _LOCAL_NORMALIZERS for item in normalizers):
        return False
    pre_tokenizer = config.get("pre_tokenizer")
    if pre_tokenizer is None:
        return False
    steps = [item.get("type") for item in _members(pre_tokenizer, "pretokenizers")]
    return any(step in _WHITESPACE_SPLITTERS for step in steps) and all(
        step in _WHITESPACE_SPLITTERS or step in _SPLITTERS_BESIDE for step in steps
    )


def _members(component: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A ``Sequence`` component's parts, or the component alone."""
    if component.get("type") == "Sequence":
        return [part for item in component.get(key) or [] for part in _members(item, key)]
    return [component]
