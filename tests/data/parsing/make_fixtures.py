"""Writes the PDF fixtures of tests/unit/test_parsing.py (run once; the small PDFs are committed).

    .venv/bin/pip install 'pypdf>=7.1,<8' && .venv/bin/python tests/data/parsing/make_fixtures.py

pypdf writes pages whose content streams draw text in Helvetica (a real text layer), an outline, and encrypts
(AES-256). Nothing here runs in the test suite.
"""

from __future__ import annotations

from pathlib import Path

from pypdf import PdfWriter
from pypdf.constants import UserAccessPermissions
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

HERE = Path(__file__).parent

PAGES = [
    ("Introduction", ["Tenantgate indexes the documents of each tenant.", "Page one talks about the gateway."]),
    ("Installation", ["Install the package with pip.", "The error code TG-4711 means the disk is full."]),
    ("Operation", ["Page three explains how the workers ingest files.", "Chunks never span two pages."]),
]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _text_page(writer: PdfWriter, lines: list[str]) -> None:
    page = writer.add_blank_page(width=612, height=792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    body = "".join(f"BT /F1 12 Tf 72 {720 - 40 * i} Td ({_escape(line)}) Tj ET\n" for i, line in enumerate(lines))
    stream = DecodedStreamObject()
    stream.set_data(body.encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(stream)


def text_pdf() -> PdfWriter:
    writer = PdfWriter()
    for number, (title, lines) in enumerate(PAGES):
        _text_page(writer, [title, *lines])
        writer.add_outline_item(title=title, page_number=number)
    return writer


def main() -> None:
    text_pdf().write(HERE / "multipage.pdf")

    encrypted = text_pdf()
    encrypted.encrypt(user_password="secret", owner_password="owner-secret", algorithm="AES-256")
    encrypted.write(HERE / "encrypted.pdf")

    owner_only = text_pdf()  # opens without a password; only permissions are restricted
    owner_only.encrypt(
        user_password="", owner_password="owner-secret", algorithm="AES-256", permissions_flag=UserAccessPermissions(0)
    )
    owner_only.write(HERE / "owner_password_only.pdf")

    scanned = PdfWriter()  # pages with nothing to read: what a scan without OCR looks like to a text extractor
    scanned.add_blank_page(width=612, height=792)
    scanned.add_blank_page(width=612, height=792)
    scanned.write(HERE / "no_text_layer.pdf")

    (HERE / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\nthis is no PDF at all\n")

    whole = (HERE / "multipage.pdf").read_bytes()
    (HERE / "truncated.pdf").write_bytes(whole[: len(whole) // 3])


if __name__ == "__main__":
    main()
