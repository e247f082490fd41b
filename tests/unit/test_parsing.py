"""parse_document: the type from the content, the text a reader sees, and every way a file is refused."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from retrieval.errors import (
    CorruptDocument,
    DocumentRejected,
    DocumentTooLarge,
    EmptyDocument,
    EncryptedDocument,
    UnsupportedDocument,
)
from retrieval.parsing import ParsedDocument, parse_document

FIXTURES = Path(__file__).parent.parent / "data" / "parsing"


def _assert_offsets(doc: ParsedDocument) -> None:
    assert doc.blocks
    previous_end = 0
    for block in doc.blocks:
        assert doc.text[block.start : block.end] == block.text
        assert block.text == block.text.strip() and block.text
        assert block.start >= previous_end
        previous_end = block.end


def _texts(doc: ParsedDocument) -> list[str]:
    return [block.text for block in doc.blocks]


# --- plain text and Markdown ---


def test_plain_text_paragraphs_with_windows_newlines() -> None:
    doc = parse_document(b"First paragraph,\r\nsecond line.\r\n\r\n\r\nSecond paragraph.\r\n")
    assert doc.media_type == "text/plain" and doc.pages is None
    assert _texts(doc) == ["First paragraph,\nsecond line.", "Second paragraph."]
    assert all(block.heading is None and not block.is_heading for block in doc.blocks)
    _assert_offsets(doc)


def test_markdown_headings_make_the_heading_path() -> None:
    source = (
        "# Guide\n\nIntro text.\n\n## Setup\n\nInstall it.\n\n```sh\n# not a heading\npip install x\n```\n\n"
        "### Details ###\n\nMore.\n\nUsage\n-----\n\n- one\n- two\n\nTop again\n=========\n\nEnd.\n"
    )
    doc = parse_document(source.encode())
    assert doc.media_type == "text/markdown"
    _assert_offsets(doc)
    by_text = {block.text: block for block in doc.blocks}
    assert by_text["Intro text."].heading == "Guide"
    assert by_text["Install it."].heading == "Guide > Setup"
    fence = by_text["```sh\n# not a heading\npip install x\n```"]
    assert fence.heading == "Guide > Setup" and not fence.is_heading
    details = by_text["### Details ###"]
    assert details.is_heading and details.title == "Details" and details.heading == "Guide > Setup"
    assert details.path == "Guide > Setup > Details"
    assert by_text["More."].heading == "Guide > Setup > Details"
    assert by_text["Usage\n-----"].is_heading and by_text["- one\n- two"].heading == "Guide > Usage"
    assert by_text["End."].heading == "Top again"


def test_text_with_hash_comments_but_no_space_is_plain() -> None:
    doc = parse_document(b"#include <stdio.h>\n\nint main(void) { return 0; }\n")
    assert doc.media_type == "text/plain"


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (codecs.BOM_UTF8 + "Grüße aus Köln".encode(), "Grüße aus Köln"),
        (codecs.BOM_UTF16_LE + "Grüße aus Köln".encode("utf-16-le"), "Grüße aus Köln"),
        (codecs.BOM_UTF16_BE + "Grüße aus Köln".encode("utf-16-be"), "Grüße aus Köln"),
        ("Café crème, déjà vu, naïve façade: voilà où ça mène.".encode("cp1252"), "Café crème"),
    ],
)
def test_text_encodings(encoded: bytes, expected: str) -> None:
    doc = parse_document(encoded)
    assert doc.text.startswith(expected)
    assert "\ufeff" not in doc.text


# --- HTML ---

_PAGE = b"""<!DOCTYPE html>
<html><head><title>Ignored title</title><style>p { color: red }</style>
<script>var secret = "tracking code";</script></head>
<body>
<div class="related" role="navigation"><a href="/">Home</a> | <a href="next.html">Next</a></div>
<div class="document"><div class="body" role="main">
<h1>Arrays<a class="headerlink" href="#arrays" title="Permalink">\xc2\xb6</a></h1>
<p>This module defines <code>array</code>,
   an object type.</p>
<h2>Type codes</h2>
<table><tr><th>Code</th><th>C type</th></tr><tr><td><p>'b'</p></td><td><p>signed char</p></td></tr></table>
<p>Line one<br>line two</p>
<pre>x = array('b')
print(x)</pre>
<noscript>Enable JavaScript</noscript><form><input value="search"><button>Go</button></form>
<div hidden>hidden text</div>
</div></div>
<div class="footer">Copyright 2024</div>
</body></html>"""


def test_html_reads_main_content_only() -> None:
    doc = parse_document(_PAGE)
    assert doc.media_type == "text/html"
    _assert_offsets(doc)
    assert _texts(doc) == [
        "Arrays",
        "This module defines array, an object type.",
        "Type codes",
        "Code | C type",
        "'b' | signed char",
        "Line one\nline two",
        "x = array('b')\nprint(x)",
    ]
    assert doc.blocks[0].is_heading and doc.blocks[0].heading is None
    assert doc.blocks[3].heading == "Arrays > Type codes"
    for boilerplate in ("tracking", "Home", "Copyright", "search", "hidden", "JavaScript", "\xb6", "Ignored"):
        assert boilerplate not in doc.text


def test_html_without_main_drops_page_chrome() -> None:
    page = (
        b"  \n<html><body><header>Site banner</header><nav>Menu</nav>"
        b"<article><h2>Post</h2><p>Body text.</p></article>"
        b"<aside>Related posts</aside><footer>Footer links</footer></body></html>"
    )
    doc = parse_document(page)
    assert _texts(doc) == ["Post", "Body text."]


def test_html_sniffed_from_content_in_utf16_and_legacy_charset() -> None:
    utf16 = codecs.BOM_UTF16_LE + "<p>Grüße</p>".encode("utf-16-le")
    assert parse_document(utf16).text == "Grüße"
    latin1 = '<html><head><meta charset="iso-8859-1"></head><body><p>Ça coûte très cher à Noël.</p></body></html>'
    assert parse_document(latin1.encode("latin-1")).text == "Ça coûte très cher à Noël."


def test_text_mentioning_html_later_is_not_html() -> None:
    doc = parse_document(b"Use the <p> tag for paragraphs.\n")
    assert doc.media_type == "text/plain"


def test_html_with_no_visible_text_is_empty() -> None:
    with pytest.raises(EmptyDocument) as caught:
        parse_document(b"<html><head><script>x()</script></head><body><nav>Menu</nav></body></html>")
    assert caught.value.code == "invalid_file"


# --- PDF ---


def test_pdf_text_layer_with_pages_and_outline_headings() -> None:
    doc = parse_document((FIXTURES / "multipage.pdf").read_bytes())
    assert doc.media_type == "application/pdf" and doc.pages == 3
    _assert_offsets(doc)
    assert [block.page for block in doc.blocks] == [1, 2, 3]
    assert [block.heading for block in doc.blocks] == ["Introduction", "Installation", "Operation"]
    assert "The error code TG-4711 means the disk is full." in doc.blocks[1].text


def test_pdf_with_only_an_owner_password_is_read() -> None:
    """It opens in every viewer without asking: indexing it reads no more than any reader can."""
    doc = parse_document((FIXTURES / "owner_password_only.pdf").read_bytes())
    assert doc.pages == 3 and "TG-4711" in doc.text


@pytest.mark.parametrize(
    ("fixture", "error", "words"),
    [
        ("encrypted.pdf", EncryptedDocument, "encrypted"),
        ("corrupt.pdf", CorruptDocument, "damaged"),
        ("truncated.pdf", CorruptDocument, "damaged"),
        ("no_text_layer.pdf", EmptyDocument, "no text layer"),
    ],
)
def test_bad_pdfs_are_refused(fixture: str, error: type[DocumentRejected], words: str) -> None:
    with pytest.raises(error) as caught:
        parse_document((FIXTURES / fixture).read_bytes())
    assert caught.value.code == "invalid_file"
    assert words in caught.value.message
    assert "pdfium" not in caught.value.message.lower()


def test_pdf_page_limit() -> None:
    data = (FIXTURES / "multipage.pdf").read_bytes()
    assert parse_document(data, max_pages=3).pages == 3
    with pytest.raises(DocumentTooLarge) as caught:
        parse_document(data, max_pages=2)
    assert caught.value.code == "invalid_file"
    assert caught.value.message == "The PDF has 3 pages; the limit is 2."


@pytest.mark.parametrize(
    "data",
    [
        b"word " * 100,
        b"<html><body><p>" + b"word " * 100 + b"</p></body></html>",
        (FIXTURES / "multipage.pdf").read_bytes(),
    ],
    ids=["text", "html", "pdf"],
)
def test_text_beyond_max_chars(data: bytes) -> None:
    with pytest.raises(DocumentTooLarge) as caught:
        parse_document(data, max_chars=120)
    assert caught.value.code == "invalid_file" and "120 characters" in caught.value.message


# --- refused: empty and unsupported ---


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  "])
def test_empty_file(data: bytes) -> None:
    with pytest.raises(EmptyDocument) as caught:
        parse_document(data)
    assert caught.value.code == "invalid_file" and caught.value.message == "The file is empty."


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG image"),
        (b"PK\x03\x04\x14\x00\x06\x00word/document.xml", "ZIP archive or office document"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 32, "legacy office document"),
        (b"\x7fELF\x02\x01\x01", "executable"),
        (b"\x1f\x8b\x08\x00", "gzip archive"),
        (b"\x00\x00\x00\x18ftypmp42", "MP4"),
        (b"hello\x00world\x00\x01\x02binary", "binary data"),
    ],
)
def test_unsupported_types(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedDocument) as caught:
        parse_document(data)
    assert caught.value.code == "unsupported_file"
    assert named in caught.value.message
    assert "Supported: plain text, Markdown, HTML and PDF" in caught.value.message


def test_control_character_soup_is_not_text() -> None:
    with pytest.raises(UnsupportedDocument):
        parse_document(bytes(range(1, 32)) * 20)
