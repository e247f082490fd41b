"""The embedding model's own tokenizer (Hugging Face ``tokenizers``: Rust, no torch), for counting and cutting.

Chunks are measured with the very tokenizer the embedding engine uses, so a chunk that fits here fits there:
the engine adds ``special_tokens`` (``[CLS]`` and ``[SEP]`` for BERT) to each input, which callers subtract from
its ``max_model_len``. A model's ``tokenizer.json`` often asks for truncation and padding (all-MiniLM-L6-v2's
truncates and pads to 128); both are switched off here, or counts would lie.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers

__all__ = ["Tokenizer"]


class Tokenizer:
    """Counts tokens and gives their character spans, special tokens excluded."""

    def __init__(self, inner: tokenizers.Tokenizer) -> None:
        inner.no_truncation()
        inner.no_padding()
        self._inner = inner
        self.special_tokens: int = len(inner.encode("", add_special_tokens=True).ids) - len(
            inner.encode("", add_special_tokens=False).ids
        )

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

    def count(self, text: str) -> int:
        """Tokens in ``text`` as one input, special tokens excluded."""
        return len(self._inner.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: list[str]) -> list[int]:
        """``count`` of each text, encoded in parallel by the Rust side."""
        encodings = self._inner.encode_batch(texts, add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans (start, end) in ``text`` of its tokens, in order, special tokens excluded."""
        return list(self._inner.encode(text, add_special_tokens=False).offsets)

    def encode_offsets_batch(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """``encode_offsets`` of each text, encoded in parallel by the Rust side."""
        encodings = self._inner.encode_batch(texts, add_special_tokens=False)
        return [list(encoding.offsets) for encoding in encodings]
