"""Text files: decoding (BOMs, UTF-8, then charset-normalizer), and plain text or Markdown cut into blocks.

Plain text and Markdown keep the file's own text (newlines normalised to ``\\n``), so block offsets point into what
the tenant uploaded; Markdown's ATX (``## Title``) and setext (underlined) headings make the heading path, and
fenced code stays one block (a ``#`` inside a fence is not a heading).
"""

from __future__ import annotations

import codecs
import re

import charset_normalizer
import msgspec

from retrieval._parse_model import Block, HeadingStack, ParsedDocument

__all__ = ["Decoded", "decode_html", "decode_text", "is_markdown", "parse_markdown_or_text"]

_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# C0 controls other than tab, newline, form feed, carriage return: text has (almost) none of them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MAX_CONTROL_SHARE = 0.01
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


class Decoded(msgspec.Struct, frozen=True):
    text: str
    certain: bool  # a BOM or valid UTF-8; False when charset-normalizer guessed


def decode_text(data: bytes) -> Decoded | None:
    """The file as text, or None when it is not text in any encoding we can tell."""
    decoded = _decode(data)
    if decoded is None:
        return None
    sample = decoded.text[:8192]
    if sample and len(_CONTROL.findall(sample)) > _MAX_CONTROL_SHARE * len(sample):
        return None
    return Decoded(_normalise_newlines(decoded.text), decoded.certain)


def _decode(data: bytes) -> Decoded | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data[len(bom) :].decode(encoding), certain=True)
            except UnicodeDecodeError:
                return None
    try:
        return Decoded(data.decode("utf-8"), certain=True)
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    # On short texts several single-byte code pages tie; windows-1252 (what browsers read Latin-1 as) is by
    # far the likeliest among equals.
    for match in matches:
        if match.chaos <= best.chaos and "cp1252" in match.could_be_from_charset:
            return Decoded(str(match), certain=False)
    return Decoded(str(best), certain=False)


def decode_html(data: bytes, decoded: Decoded) -> str:
    """An HTML page's text: a ``<meta charset>`` wins over charset-normalizer's guess (not over UTF-8 or a BOM)."""
    if decoded.certain:
        return decoded.text
    match = _META_CHARSET.search(data[:4096])
    if match is None:
        return decoded.text
    try:
        encoding = codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return decoded.text
    return _normalise_newlines(data.decode(encoding, errors="replace"))


def _normalise_newlines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


_ATX_ANY = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_FENCE_ANY = re.compile(r"^ {0,3}(?:```|~~~)", re.MULTILINE)
_SETEXT_ANY = re.compile(r"^[ \t]{0,3}\S[^\n]*\n {0,3}(?:=+|-{2,})[ \t]*$", re.MULTILINE)


def is_markdown(text: str) -> bool:
    """Markdown's headings (ATX or setext) or a fenced code block: what changes how the text is cut."""
    if _ATX_ANY.search(text) or _SETEXT_ANY.search(text):
        return True
    return len(_FENCE_ANY.findall(text, 0, 1_000_000)) >= 2


def parse_markdown_or_text(text: str) -> ParsedDocument:
    if is_markdown(text):
        return ParsedDocument("text/markdown", text, _MarkdownBlocks(text).run(), None)
    return ParsedDocument("text/plain", text, _paragraphs(text), None)


_PARAGRAPH = re.compile(r"(?:[^\n]*\S[^\n]*(?:\n|$))+")


def _paragraphs(text: str) -> list[Block]:
    """Runs of non-blank lines."""
    blocks = []
    for match in _PARAGRAPH.finditer(text):
        block = _span_block(text, match.start(), match.end(), None, is_heading=False)
        if block is not None:
            blocks.append(block)
    return blocks


def _span_block(text: str, start: int, end: int, heading: str | None, *, is_heading: bool) -> Block | None:
    """``text[start:end]`` without its surrounding whitespace, as a block (None when blank)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return None
    return Block(text[start:end], start, end, None, heading, is_heading)


_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")


class _MarkdownBlocks:
    """One pass over the lines: paragraphs, headings, fenced code."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.blocks: list[Block] = []
        self.headings = HeadingStack()
        self.para: tuple[int, int] | None = None  # (start, end) of the open paragraph

    def run(self) -> list[Block]:
        text = self.text
        fence: str | None = None  # the open fence's marker, e.g. "```"
        fence_start = 0
        pos = 0
        for line in text.split("\n"):
            start, end = pos, pos + len(line)
            pos = end + 1
            if fence is not None:
                if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                    self._emit(fence_start, end)
                    fence = None
                continue
            if not line.strip():
                self._flush()
            elif match := _FENCE.match(line):
                self._flush()
                fence, fence_start = match.group(1), start
            elif match := _ATX.match(line):
                self._flush()
                self._heading(len(match.group(1)), match.group(2) or "", start, end)
            elif (match := _SETEXT.match(line)) and self.para is not None:
                para_start, _ = self.para
                self.para = None
                title = text[para_start:start]
                self._heading(1 if match.group(1).startswith("=") else 2, title, para_start, end)
            elif self.para is None:
                self.para = (start, end)
            else:
                self.para = (self.para[0], end)
        if fence is not None:
            self._emit(fence_start, len(text))
        self._flush()
        return self.blocks

    def _flush(self) -> None:
        if self.para is not None:
            self._emit(*self.para)
            self.para = None

    def _emit(self, start: int, end: int) -> None:
        block = _span_block(self.text, start, end, self.headings.path(), is_heading=False)
        if block is not None:
            self.blocks.append(block)

    def _heading(self, level: int, title: str, start: int, end: int) -> None:
        title = " ".join(title.split())
        above = self.headings.enter(level, title)
        block = _span_block(self.text, start, end, above, is_heading=True)
        if block is not None:
            self.blocks.append(msgspec.structs.replace(block, title=title or None))
