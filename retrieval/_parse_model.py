"""The parsed document's shape, and a builder that lays blocks end to end with their heading paths."""

from __future__ import annotations

import msgspec

from retrieval.errors import DocumentTooLarge

HEADING_SEPARATOR = " > "
BLOCK_SEPARATOR = "\n\n"


class Block(msgspec.Struct, frozen=True):
    """A heading or a paragraph: ``ParsedDocument.text[start:end] == text``.

    ``heading`` is the path of the headings above it ("Intro > Setup"); for a heading block that is its parents'
    path, and ``title`` is its own clean title (no ``#`` marks, no permalink signs).
    """

    text: str
    start: int
    end: int
    page: int | None
    heading: str | None
    is_heading: bool
    title: str | None = None

    @property
    def path(self) -> str | None:
        """The heading path this block belongs to; a heading belongs to its own section."""
        if not self.is_heading or not self.title:
            return self.heading
        return self.title if self.heading is None else f"{self.heading}{HEADING_SEPARATOR}{self.title}"


class ParsedDocument(msgspec.Struct, frozen=True):
    """``media_type``: text/plain, text/markdown, text/html or application/pdf; ``pages`` for PDFs only."""

    media_type: str
    text: str
    blocks: list[Block]
    pages: int | None


class HeadingStack:
    """The open headings, by level (1 outermost)."""

    def __init__(self) -> None:
        self._open: list[tuple[int, str]] = []

    def path(self) -> str | None:
        return HEADING_SEPARATOR.join(title for _, title in self._open) or None

    def enter(self, level: int, title: str) -> str | None:
        """Open a heading; return the path above it."""
        while self._open and self._open[-1][0] >= level:
            self._open.pop()
        above = self.path()
        if title:
            self._open.append((level, title))
        return above


class _Open:
    """Marker: the path of the open headings."""


_OPEN = _Open()


class DocumentBuilder:
    """Appends blocks separated by a blank line, so the document's text is the blocks' text end to end."""

    def __init__(self, max_chars: int) -> None:
        self._parts: list[str] = []
        self._length = 0
        self._max_chars = max_chars
        self.blocks: list[Block] = []
        self.headings = HeadingStack()

    def heading(self, level: int, title: str, page: int | None = None) -> None:
        title = " ".join(title.split())
        if not title:
            return
        above = self.headings.enter(level, title)
        self._append(title, page=page, heading=above, is_heading=True, title=title)

    def paragraph(self, text: str, page: int | None = None, heading: str | _Open | None = _OPEN) -> None:
        """A paragraph under the open headings, or under ``heading`` when given (a PDF's outline path)."""
        text = text.strip()
        if text:
            path = self.headings.path() if isinstance(heading, _Open) else heading
            self._append(text, page=page, heading=path, is_heading=False, title=None)

    def _append(self, text: str, *, page: int | None, heading: str | None, is_heading: bool, title: str | None) -> None:
        if self._parts:
            self._parts.append(BLOCK_SEPARATOR)
            self._length += len(BLOCK_SEPARATOR)
        start = self._length
        self._parts.append(text)
        self._length += len(text)
        if self._length > self._max_chars:
            raise DocumentTooLarge(f"The file has more than {self._max_chars} characters of text.")
        self.blocks.append(Block(text, start, self._length, page, heading, is_heading, title))

    def build(self, media_type: str, pages: int | None = None) -> ParsedDocument:
        return ParsedDocument(media_type=media_type, text="".join(self._parts), blocks=self.blocks, pages=pages)
