"""Cut a parsed document into chunks of at most ``max_tokens`` tokens of the embedding model's tokenizer.

One pass, linear in the document. The text is read in segments and cut into units: words (runs of characters
between ASCII whitespace) when the tokenizer's counts add up across whitespace (``Tokenizer.splits_at_whitespace``,
true of BERT's), else its tokens. Each unit knows its character span and the number of its first token, so a
window of ``max_tokens`` tokens is a range of units found by bisection, and no per-token Python work is done.

Each chunk ends at the best boundary in the second half of its window, the latest one on a tie: page > heading >
block (found in short per-document lists) > line after a sentence > sentence or line > word (scored only for the
units in that half window) > inside a word. The next chunk starts ``overlap_tokens`` earlier, moved forward to a
word boundary; there is no overlap across a heading or a page, where the context changes anyway. A chunk never
spans two pages, so its ``page`` is exact.

A chunk's count is exact: a chunk whose both ends fall between words counts the sum of its words' tokens, which
is what its text alone counts when counts add up; any other chunk (a cut inside a word longer than half the
window, or a tokenizer whose counts do not add up) is recounted alone and cut shorter while it counts more than
``max_tokens``. A chunk never exceeds what the engine accepts.

A chunk's text is ``document.text[char_start:char_end]``; consecutive chunks touch or overlap, so together they
cover the whole text but the whitespace between words.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from itertools import accumulate, compress
from operator import add

import msgspec

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
_WHITESPACE = " \t\n\r"  # what splits words: always a pre-token boundary for a tokenizer that splits at whitespace
_SEGMENT_CHARS = 1 << 18  # the text is cut into units this many characters at a time (bounds GIL holds and memory)
_TRIM_UNITS = 1 << 16  # consumed units are dropped from the arrays past this many


def chunk_document(doc: ParsedDocument, tokenizer: Tokenizer, *, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """All chunks of ``doc`` (see ``iter_chunks``)."""
    return list(iter_chunks(doc, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens))


def iter_chunks(doc: ParsedDocument, tokenizer: Tokenizer, *, max_tokens: int, overlap_tokens: int) -> Iterator[Chunk]:
    """Chunks of ``doc`` in order; ``max_tokens`` excludes the special tokens the engine adds."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    overlap_tokens = max(0, min(overlap_tokens, max_tokens // 2))
    if not doc.blocks:
        return
    yield from _Chunker(doc, tokenizer, max_tokens, overlap_tokens).run()


class _Chunker:
    """Positions are token numbers in the document; units are indexed locally (the arrays lose their consumed
    head past ``_TRIM_UNITS``, one unit before the current chunk kept)."""

    def __init__(self, doc: ParsedDocument, tokenizer: Tokenizer, max_tokens: int, overlap_tokens: int) -> None:
        self.text = doc.text
        self.blocks = doc.blocks
        self.block_starts = [block.start for block in doc.blocks]
        self.tokenizer = tokenizer
        self.by_words = tokenizer.splits_at_whitespace
        self.max_tokens = max_tokens
        self.overlap = overlap_tokens
        self.unit_start: list[int] = []  # character span of each unit
        self.unit_end: list[int] = []
        self.unit_token: list[int] = []  # the number of its first token
        self.total = 0  # tokens in the units so far
        self.read_to = 0  # characters cut into units so far
        self.page_cuts: list[int] = []  # token numbers where a block on another page starts
        self.heading_cuts: list[int] = []  # ... a heading block starts (same page)
        self.block_cuts: list[int] = []  # ... any other block starts (same page)
        self.next_block = 0  # the first block whose first unit is not known yet
        self.last_block = 0  # the block of the last unit so far
        self.inner: dict[int, list[int]] = {}  # token starts inside a word cut through, by its first token

    def run(self) -> Iterator[Chunk]:
        a = 0
        index = 0
        while True:
            self._fill(a + self.max_tokens + 1)
            n = self.total
            if a >= n:
                return
            c = self._cut(a, n)
            c, chunk_start, text, count = self._fit(a, c, n, first=index == 0)
            if text:  # (tokens of whitespace alone, where a tokenizer makes them, are no chunk)
                yield Chunk(index, text, count, *self._place(a), chunk_start, chunk_start + len(text))
                index += 1
            if c >= n:
                return
            a = self._next_start(a, c)
            unit = self._unit(a)
            if unit > _TRIM_UNITS:
                self._trim(unit - 1)

    # -- cutting ------------------------------------------------------------------------------------------

    def _cut(self, a: int, n: int) -> int:
        """Where the chunk starting at token ``a`` ends (exclusive): the best boundary in its window."""
        limit = min(a + self.max_tokens, n)
        page = bisect_right(self.page_cuts, a)
        if page < len(self.page_cuts) and self.page_cuts[page] <= limit:
            return self.page_cuts[page]
        if limit == n:
            return n
        low = a + max(1, self.max_tokens // 2)
        for cuts in (self.heading_cuts, self.block_cuts):
            latest = bisect_right(cuts, limit) - 1
            if latest >= 0 and cuts[latest] >= low:
                return cuts[latest]
        # Inside blocks: scan the half window's word boundaries from its end; a line after a sentence is the best.
        tokens = self.unit_token
        best, best_score = limit, _INSIDE_WORD
        for unit in range(bisect_right(tokens, limit) - 1, bisect_left(tokens, low) - 1, -1):
            score = self._score(unit)
            if score > best_score:
                best, best_score = tokens[unit], score
                if score >= _PARAGRAPH_LINE:
                    break
        return self._snap(best, a)

    def _score(self, unit: int) -> int:
        """The boundary before ``unit`` (not the first), within a block or across: any of them is >= _WORD but
        between two tokens of one word (units are tokens when counts do not add up)."""
        previous_end = self.unit_end[unit - 1]
        start = self.unit_start[unit]
        if previous_end >= start:
            return _INSIDE_WORD
        sentence = self.text[previous_end - 1] in _SENTENCE_ENDS
        if self.text.find("\n", previous_end, start) >= 0:
            return _PARAGRAPH_LINE if sentence else _SENTENCE
        return _SENTENCE if sentence else _WORD

    def _fit(self, a: int, c: int, n: int, *, first: bool) -> tuple[int, int, str, int]:
        """The chunk [a, c): shortened until its text alone counts at most ``max_tokens``; (c, start, text, count)."""
        chunk_start = self._char(a)
        if first:
            chunk_start = min(chunk_start, self.blocks[0].start)
        exact = self.by_words and self._between_words(a)
        while True:
            raw = self.text[chunk_start : self._char(c) if c < n else len(self.text)]
            text = raw.rstrip()
            # (rstrip drops what Python calls whitespace; beyond ASCII's, the tokenizer may count some of it)
            if exact and (c >= n or self._between_words(c)) and len(text) == len(raw.rstrip(_WHITESPACE)):
                return c, chunk_start, text, c - a
            count = self.tokenizer.count(text)
            if count <= self.max_tokens or c <= self._snap(a + 1, a):
                return c, chunk_start, text, count
            target = max(a + 1, c - (count - self.max_tokens))
            c = self._snap(self._word_boundary_before(a, target), a)

    def _word_boundary_before(self, a: int, target: int) -> int:
        """The latest word boundary in (a, target], else ``target``."""
        tokens = self.unit_token
        unit = bisect_right(tokens, target) - 1
        while unit >= 0 and tokens[unit] > a:
            if self._score(unit) >= _WORD:
                return tokens[unit]
            unit -= 1
        return target

    def _next_start(self, a: int, c: int) -> int:
        if self.overlap == 0 or _member(self.page_cuts, c) or _member(self.heading_cuts, c):
            return c
        start = max(a + 1, c - self.overlap)
        tokens = self.unit_token
        for unit in range(bisect_left(tokens, start), len(tokens)):
            if tokens[unit] > c:
                break
            if self._score(unit) >= _WORD:
                return tokens[unit]
        return self._snap(start, a)

    def _place(self, a: int) -> tuple[int | None, str | None]:
        """The page and heading path of the chunk starting at token ``a``."""
        unit = self._unit(a)
        start = self.unit_start[unit]
        block = self.blocks[max(0, bisect_right(self.block_starts, start) - 1)]
        at_heading = block.is_heading and (unit == 0 or self.unit_start[unit - 1] < block.start)
        return block.page, block.path if at_heading and self._between_words(a) else block.heading

    # -- positions ----------------------------------------------------------------------------------------

    def _unit(self, token: int) -> int:
        return bisect_right(self.unit_token, token) - 1

    def _between_words(self, token: int) -> bool:
        return self.unit_token[self._unit(token)] == token

    def _snap(self, token: int, a: int) -> int:
        """Where counts do not add up, a unit's tokens share a character and are never parted: a position inside
        one moves to its start, or to its end when the chunk starts there."""
        if self.by_words:
            return token
        unit = self._unit(token)
        first = self.unit_token[unit]
        if first == token or first > a:
            return first
        return self.unit_token[unit + 1] if unit + 1 < len(self.unit_token) else self.total

    def _char(self, token: int) -> int:
        """Where token ``token`` starts in the text."""
        unit = self._unit(token)
        first = self.unit_token[unit]
        if first == token:
            return self.unit_start[unit]
        inner = self.inner.get(first)
        if inner is None:  # a word cut through: its own tokens, which are the document's (counts add up)
            start = self.unit_start[unit]
            spans = self.tokenizer.encode_offsets(self.text[start : self.unit_end[unit]])
            inner = self.inner[first] = [start + span_start for span_start, _ in spans]
        return inner[token - first]

    # -- units --------------------------------------------------------------------------------------------

    def _fill(self, wanted: int) -> None:
        while self.total < wanted and self.read_to < len(self.text):
            self._read_segment()

    def _read_segment(self) -> None:
        text = self.text
        low = self.read_to
        high = min(low + _SEGMENT_CHARS, len(text))
        if high < len(text):  # end after whitespace, or at the end of an unbroken run
            space = max(text.rfind(c, low, high) for c in _WHITESPACE)
            if space > low:
                high = space + 1
            else:
                high = min((found for c in _WHITESPACE if (found := text.find(c, high)) >= 0), default=len(text))
        self.read_to = high
        first_unit = len(self.unit_start)
        if self.by_words:
            self._add_words(text[low:high], low)
        else:
            self._add_tokens(text[low:high], low)
        self._add_block_cuts(first_unit, high)

    def _add_words(self, segment: str, offset: int) -> None:
        for c in "\t\n\r":
            segment = segment.replace(c, " ")
        words = segment.split(" ")
        lengths = list(map(len, words))
        starts = list(accumulate(map((1).__add__, lengths), initial=offset))
        counts = self.tokenizer.count_words(words)  # words without tokens (empty, or only ignored characters) go
        kept_starts = list(compress(starts, counts))
        self.unit_start.extend(kept_starts)
        self.unit_end.extend(map(add, kept_starts, compress(lengths, counts)))
        first_tokens = list(accumulate(compress(counts, counts), initial=self.total))
        self.total = first_tokens.pop()
        self.unit_token.extend(first_tokens)

    def _add_tokens(self, segment: str, offset: int) -> None:
        """Tokens as units; tokens starting at one character (pieces of it) make one unit."""
        spans = self.tokenizer.encode_offsets(segment)
        starts, ends, tokens = self.unit_start, self.unit_end, self.unit_token
        fresh = len(starts)
        for number, (start, end) in enumerate(spans, self.total):
            if len(starts) > fresh and offset + start == starts[-1]:
                ends[-1] = max(ends[-1], offset + end)
                continue
            starts.append(offset + start)
            ends.append(offset + end)
            tokens.append(number)
        self.total += len(spans)

    def _add_block_cuts(self, first_unit: int, read_to: int) -> None:
        """Note where the blocks starting in the new units begin (a unit belongs to the last block starting at or
        before it; text outside blocks, like a Markdown underline, to the block before)."""
        starts = self.unit_start
        end = len(starts)
        found: dict[int, int] = {}  # unit -> its block, the last one starting before it
        j = self.next_block
        while j < len(self.blocks) and self.block_starts[j] < read_to:
            unit = bisect_left(starts, self.block_starts[j], first_unit, end)
            if unit == end:
                break  # its first word is in a later segment
            found[unit] = j
            j += 1
        self.next_block = j
        previous = self.last_block
        for unit, block in found.items():
            token = self.unit_token[unit]
            if block == previous or token == 0:
                previous = block
                continue
            if self.blocks[block].page != self.blocks[previous].page:
                self.page_cuts.append(token)
            elif self.blocks[block].is_heading:
                self.heading_cuts.append(token)
            else:
                self.block_cuts.append(token)
            previous = block
        self.last_block = previous

    def _trim(self, units: int) -> None:
        del self.unit_start[:units], self.unit_end[:units], self.unit_token[:units]
        self.inner.clear()


def _member(cuts: list[int], token: int) -> bool:
    at = bisect_left(cuts, token)
    return at < len(cuts) and cuts[at] == token
