"""From a file's bytes to its text as a reader sees it, cut into blocks (headings, paragraphs) with offsets.

The type comes from the content, never the name: ``%PDF-`` is a PDF, a WHATWG-style sniff of the first tag
finds HTML, known binary signatures (images, archives, office files, executables) and NUL bytes are refused,
and anything else that decodes as text is plain text, or Markdown when it has Markdown's headings or fences.
Libraries (see ``_parse_html`` and ``_parse_pdf``): selectolax (Lexbor, a WHATWG HTML5 parser) for HTML,
pypdfium2 (PDFium, Chrome's PDF engine) for PDF text layers, charset-normalizer for legacy encodings.

A document that cannot be indexed raises a ``DocumentRejected`` subclass whose ``code`` ("unsupported_file" or
"invalid_file") and ``message`` become the vector store file's ``last_error``.
"""

from __future__ import annotations

from retrieval._parse_detect import Kind, detect_kind, sniff_is_html
from retrieval._parse_html import parse_html
from retrieval._parse_model import Block, ParsedDocument
from retrieval._parse_pdf import parse_pdf
from retrieval._parse_text import decode_html, decode_text, parse_markdown_or_text
from retrieval.errors import DocumentRejected, DocumentTooLarge, EmptyDocument, UnsupportedDocument

__all__ = ["Block", "DocumentRejected", "ParsedDocument", "parse_document"]

DEFAULT_MAX_PAGES = 2_000
DEFAULT_MAX_CHARS = 20_000_000


def parse_document(
    data: bytes, *, max_pages: int = DEFAULT_MAX_PAGES, max_chars: int = DEFAULT_MAX_CHARS
) -> ParsedDocument:
    """Parse ``data`` (a whole file); raise ``DocumentRejected`` when it cannot be indexed.

    ``max_pages`` bounds a PDF's pages, ``max_chars`` the extracted text of any kind. CPU-bound and
    synchronous: an async caller runs it in a thread (PDF parsing is serialised inside, PDFium is not
    thread-safe).
    """
    if not data.strip():
        raise EmptyDocument("The file is empty.")
    kind = detect_kind(data)
    if isinstance(kind, str):
        raise UnsupportedDocument(
            f"The file type is not supported ({kind}). Supported: plain text, Markdown, HTML and PDF with a text layer."
        )
    if kind is Kind.PDF:
        document = parse_pdf(data, max_pages=max_pages, max_chars=max_chars)
    else:
        decoded = decode_text(data)
        if decoded is None:
            raise UnsupportedDocument(
                "The file is binary or in an unknown text encoding. "
                "Supported: plain text, Markdown, HTML and PDF with a text layer."
            )
        if sniff_is_html(decoded.text):
            document = parse_html(decode_html(data, decoded), max_chars=max_chars)
        else:
            if len(decoded.text) > max_chars:
                raise DocumentTooLarge(f"The file has more than {max_chars} characters of text.")
            document = parse_markdown_or_text(decoded.text)
    if not document.blocks:
        raise EmptyDocument("The file has no text." if kind is not Kind.PDF else _NO_TEXT_LAYER)
    return document


_NO_TEXT_LAYER = "The PDF has no text layer (a scanned document?); only PDFs with text can be indexed."
