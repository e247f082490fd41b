"""What a file is, from its first bytes: PDF, text (HTML sniffed later, on the decoded text), or a binary type."""

from __future__ import annotations

import enum
import re

__all__ = ["Kind", "detect_kind", "sniff_is_html"]


class Kind(enum.Enum):
    PDF = "pdf"
    TEXT = "text"  # plain, Markdown or HTML: told apart once decoded


# Signatures at offset 0 of formats we refuse, with the name the message gives them.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x00\x00\x01\x00", "icon"),
    (b"PK\x03\x04", "ZIP archive or office document (docx, xlsx, pptx, epub, odt)"),
    (b"PK\x05\x06", "ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy office document (doc, xls, ppt, msg)"),
    (b"{\\rtf", "RTF document"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"(\xb5/\xfd", "zstd archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\x7fELF", "executable"),
    (b"\xca\xfe\xba\xbe", "Java class or Mach-O binary"),
    (b"\xcf\xfa\xed\xfe", "Mach-O binary"),
    (b"\x00asm", "WebAssembly module"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"PAR1", "Parquet file"),
    (b"\x89HDF", "HDF5 file"),
    (b"OggS", "Ogg media"),
    (b"fLaC", "FLAC audio"),
    (b"ID3\x02", "MP3 audio"),
    (b"ID3\x03", "MP3 audio"),
    (b"ID3\x04", "MP3 audio"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
    (b"wOFF", "web font"),
    (b"wOF2", "web font"),
    (b"%!PS", "PostScript document"),
    (b"AT&TFORM", "DjVu document"),
)

# UTF-16/32 byte order marks: such text legitimately holds NUL bytes.
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def detect_kind(data: bytes) -> Kind | str:
    """``Kind`` of a file we may read, or the name of a type we refuse."""
    head = data[:1024]
    # PDF readers accept the header anywhere in the first 1024 bytes (some files carry junk before it).
    if head.startswith(b"%PDF-") or b"%PDF-" in head:
        return Kind.PDF
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return "MP4/QuickTime/HEIF media"
    if data.startswith(b"RIFF") and data[8:12] in (b"WAVE", b"AVI ", b"WEBP"):
        return "RIFF media (WAV, AVI, WebP)"
    if data.startswith(b"BZh") and data[4:10] == b"1AY&SY":
        return "bzip2 archive"
    if not data.startswith(_WIDE_BOMS) and b"\x00" in data[:8192]:
        return "binary data"
    return Kind.TEXT


# WHATWG MIME sniffing's "text/html" patterns: the first tag, after whitespace, case-insensitive, followed by a
# space or ">" (https://mimesniff.spec.whatwg.org/#identifying-a-resource-with-an-unknown-mime-type).
_HTML_START = re.compile(
    r"<(?:!doctype\s+html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p|!--)[\s>]",
    re.IGNORECASE,
)
_XHTML = re.compile(r"<html[\s>]", re.IGNORECASE)


def sniff_is_html(text: str) -> bool:
    """True when decoded text starts the way an HTML page does (an XML prolog followed by ``<html`` too)."""
    start = text[:2048].lstrip("\ufeff \t\n\r\f")
    if start.startswith("<?xml"):
        return _XHTML.search(start) is not None
    return _HTML_START.match(start) is not None
