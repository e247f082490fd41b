"""Cut a parsed document into chunks of at most ``max_tokens`` tokens of the embedding model's tokenizer.

One pass, linear in the document: the blocks are tokenised once (in pieces, in parallel on the Rust side), each
boundary between two tokens gets a score (page > heading > block > line after a sentence > sentence or line >
word > inside a word), and each chunk ends at the best-scoring boundary in the second half of its window, the
latest one on a tie. The next chunk starts ``overlap_tokens`` earlier, moved forward to a word boundary; there is
no overlap across a heading or a page, where the context changes anyway. A chunk never spans two pages, so its
``page`` is exact. Every chunk's text is recounted alone and cut shorter if it counts more than ``max_tokens``
(a piece of a word may tokenise differently on its own): a chunk never exceeds what the engine accepts.

A chunk's text is ``document.text[char_start:char_end]``; consecutive chunks touch or overlap, so together they
cover the whole text but the whitespace between blocks.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from retrieval._parse_model import Block
from retrieval.parsing import ParsedDocument
from retrieval.tokens import Tokenizer

__all__ = ["Chunk", "chunk_document", "iter_chunks"]


class Chunk(msgspec.Struct, frozen=True):
    index: int
    text: str
    tokens: int  # tokenizer.count(text): special tokens excluded
    page: int | None  # the page it is on (PDF), else None
    heading: str | None  # the heading path where it starts ("Intro > Setup")
    char_start: int
    char_end: int


# Boundary scores: where to prefer cutting.
_INSIDE_WORD, _WORD, _SENTENCE, _PARAGRAPH_LINE, _BLOCK, _HEADING, _PAGE = range(7)
_SENTENCE_ENDS = frozenset(".!?;:\u3002\uff01\uff1f")  # ASCII and CJK full stops
_PIECE_CHARS = 16_384  # a long block is tokenised in pieces of about this size, cut at whitespace
_BATCH_PIECES = 64
_TRIM_AT = 65_536  # consumed tokens are dropped from the buffer past this many


def chunk_document(doc: ParsedDocument, tokenizer: Tokenizer, *, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """All chunks of ``doc`` (see ``iter_chunks``)."""
    return list(iter_chunks(doc, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens))


def iter_chunks(doc: ParsedDocument, tokenizer: Tokenizer, *, max_tokens: int, overlap_tokens: int) -> Iterator[Chunk]:
    """Chunks of ``doc`` in order; ``max_tokens`` excludes the special tokens the engine adds."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    overlap_tokens = max(0, min(overlap_tokens, max_tokens // 2))
    yield from _Chunker(doc, tokenizer, max_tokens, overlap_tokens).run()


class _Chunker:
    def __init__(self, doc: ParsedDocument, tokenizer: Tokenizer, max_tokens: int, overlap_tokens: int) -> None:
        self.doc = doc
        self.text = doc.text
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap_tokens
        # The token buffer: parallel lists, index 0 is token number ``self.base`` of the document.
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.block_of: list[int] = []
        self.scores: list[int] = []  # the boundary before each token
        self.tokens = _tokens(doc, tokenizer)
        self.exhausted = False

    def run(self) -> Iterator[Chunk]:
        a = 0
        index = 0
        first = True
        while True:
            self._fill(a + self.max_tokens + 1)
            n = len(self.starts)
            if a >= n:
                return
            c = self._cut(a, n)
            chunk_start = self.starts[a]
            if first and self.doc.blocks:
                chunk_start = min(chunk_start, self.doc.blocks[0].start)
            c, text, count = self._fit(a, c, n, chunk_start)
            block = self.doc.blocks[self.block_of[a]]
            heading = block.path if block.is_heading and self.starts[a] == block.start else block.heading
            yield Chunk(index, text, count, block.page, heading, chunk_start, chunk_start + len(text))
            index += 1
            first = False
            if c >= n:
                return
            a = self._next_start(a, c)
            if a > _TRIM_AT:
                self._trim(a)
                a = 0

    def _cut(self, a: int, n: int) -> int:
        """Where the chunk starting at token ``a`` ends (exclusive): the best boundary in its window."""
        limit = min(a + self.max_tokens, n)
        scores = self.scores
        for position in range(a + 1, limit + 1 if limit < n else limit):
            if scores[position] == _PAGE:
                return position
        if limit == n:
            return n
        best, best_score = limit, -1
        for position in range(limit, a + max(1, self.max_tokens // 2) - 1, -1):
            if scores[position] > best_score:
                best, best_score = position, scores[position]
                if best_score >= _HEADING:
                    break
        return best

    def _fit(self, a: int, c: int, n: int, chunk_start: int) -> tuple[int, str, int]:
        """Shorten the chunk [a, c) until its text alone counts at most ``max_tokens``."""
        while True:
            end = self.starts[c] if c < n else len(self.text)
            text = self.text[chunk_start:end].rstrip()
            count = self.tokenizer.count(text)
            if count <= self.max_tokens or c - a <= 1:
                return c, text, count
            excess = count - self.max_tokens
            target = max(a + 1, c - excess)
            word = next((p for p in range(target, a, -1) if self.scores[p] >= _WORD), None)
            c = word if word is not None else target

    def _next_start(self, a: int, c: int) -> int:
        if self.overlap == 0 or self.scores[c] >= _HEADING:
            return c
        start = max(a + 1, c - self.overlap)
        for position in range(start, c + 1):
            if self.scores[position] >= _WORD:
                return position
        return start

    def _fill(self, wanted: int) -> None:
        while len(self.starts) < wanted and not self.exhausted:
            token = next(self.tokens, None)
            if token is None:
                self.exhausted = True
                return
            start, end, block = token
            self.scores.append(self._score(start, block))
            self.starts.append(start)
            self.ends.append(end)
            self.block_of.append(block)

    def _score(self, start: int, block: int) -> int:
        if not self.starts:
            return _PAGE
        previous_block = self.block_of[-1]
        if block != previous_block:
            blocks = self.doc.blocks
            if blocks[block].page != blocks[previous_block].page:
                return _PAGE
            return _HEADING if blocks[block].is_heading else _BLOCK
        previous_end = self.ends[-1]
        if previous_end >= start:
            return _INSIDE_WORD
        gap = self.text[previous_end:start]
        sentence = self.text[previous_end - 1] in _SENTENCE_ENDS
        if "\n" in gap:
            return _PARAGRAPH_LINE if sentence else _SENTENCE
        return _SENTENCE if sentence else _WORD

    def _trim(self, a: int) -> None:
        del self.starts[:a], self.ends[:a], self.block_of[:a], self.scores[:a]


def _tokens(doc: ParsedDocument, tokenizer: Tokenizer) -> Iterator[tuple[int, int, int]]:
    """(start, end, block index) of every token of the document, in order."""
    batch: list[tuple[int, int, str]] = []  # (block index, offset of the piece, piece)
    for block_index, block in enumerate(doc.blocks):
        for offset, piece in _pieces(block):
            batch.append((block_index, offset, piece))
            if len(batch) >= _BATCH_PIECES:
                yield from _encode(tokenizer, batch)
                batch = []
    if batch:
        yield from _encode(tokenizer, batch)


def _encode(tokenizer: Tokenizer, batch: list[tuple[int, int, str]]) -> Iterator[tuple[int, int, int]]:
    spans = tokenizer.encode_offsets_batch([piece for _, _, piece in batch])
    for (block_index, offset, _), piece_spans in zip(batch, spans, strict=True):
        for start, end in piece_spans:
            yield offset + start, offset + end, block_index


def _pieces(block: Block) -> Iterator[tuple[int, str]]:
    """The block's text in pieces of about ``_PIECE_CHARS``, cut after whitespace, with their document offsets."""
    text = block.text
    if len(text) <= _PIECE_CHARS:
        yield block.start, text
        return
    position = 0
    while position < len(text):
        end = min(position + _PIECE_CHARS, len(text))
        if end < len(text):
            space = max(text.rfind(" ", position, end), text.rfind("\n", position, end))
            if space > position:
                end = space + 1
        yield block.start + position, text[position:end]
        position = end
