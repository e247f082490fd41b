"""Make the RAG fixtures of this folder (run once; the files are committed, this script is kept to remake them).

    python3 -m venv /tmp/pdfvenv && /tmp/pdfvenv/bin/pip install 'fpdf2>=2.7,<3' 'pypdf>=4,<7' cryptography
    /tmp/pdfvenv/bin/python tests/data/rag/make_fixtures.py

Not the project's environment: fpdf2 writes the PDFs and pypdf encrypts one; neither is a dependency of
tenantgate. Each good document carries one invented fact that no other document (and no model's training)
knows, so a search or a grounded answer that returns it came from that document:

- kettle-spec.pdf: two pages; the Zephyrine K7 kettle boils 1.7 litres in 94 seconds (page 2).
- lighthouse.md: Markdown; the Kestrel Point lighthouse lamp turns once every 7.5 seconds.
- glacier.html: HTML with navigation, a script and a footer around the article; the Vantorr glacier
  retreated 412 metres between 1990 and 2020.
- orchard.txt: plain text; the Millbrook orchard grows 23 varieties of quince.

Bad files (each must end ``failed`` with a ``last_error``):

- encrypted.pdf: the kettle spec encrypted with a user password (AES-256).
- truncated.pdf: the kettle spec cut off inside its first content stream (no page, no cross-reference table).
- scanned.pdf: a valid PDF with drawings and no text layer.
- blank.txt: whitespace only (a file with bytes but no text).
- empty.txt: zero bytes (the Files API refuses it at upload, 400, before it can be attached).
- picture.txt: a PNG image under a text file's name (the type comes from the content).
"""

from __future__ import annotations

import datetime
import io
import struct
import zlib
from pathlib import Path

from fpdf import FPDF  # type: ignore[import-not-found, import-untyped, unused-ignore]
from pypdf import PdfReader, PdfWriter  # type: ignore[import-not-found, import-untyped, unused-ignore]

HERE = Path(__file__).resolve().parent
FIXED_DATE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)  # the same bytes every time it is run


def _pdf() -> FPDF:
    pdf = FPDF()
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title("Zephyrine K7 kettle: technical specification")
    pdf.set_font("Helvetica", size=12)
    return pdf


def kettle_pdf() -> bytes:
    pdf = _pdf()
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 12, "Zephyrine K7 kettle: technical specification", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(
        0,
        7,
        (
            "The Zephyrine K7 is a cordless electric kettle made by the (invented) Halvard Appliance Works. "
            "Its body is brushed steel with a borosilicate window, and its base rotates through 360 degrees. "
            "This sheet lists its performance figures and safety features for service engineers."
        ),
    )
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 10, "Performance", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(
        0,
        7,
        (
            "Boiling time: the Zephyrine K7 boils a full tank of 1.7 litres of water in 94 seconds, "
            "drawing 2850 watts. Its serial numbers start with the prefix ZK7-QX. "
            "The dry-boil cut-out trips at 131 degrees Celsius."
        ),
    )
    return bytes(pdf.output())


def scanned_pdf() -> bytes:
    pdf = _pdf()
    pdf.add_page()
    pdf.set_fill_color(200, 200, 200)
    pdf.rect(20, 20, 170, 60, style="F")
    pdf.circle(x=60, y=120, radius=30, style="D")
    return bytes(pdf.output())


def encrypt(data: bytes) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password="kettle-user", owner_password="kettle-owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png(width: int = 8, height: int = 8) -> bytes:
    """A small valid PNG (a red square), written with the standard library."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


LIGHTHOUSE = """# Kestrel Point lighthouse

## History

Kestrel Point lighthouse stands on the northern headland of the (invented) island of Varrow. It was
built of granite by the harbour trust and first lit in the winter of 1871.

## The light

The lamp sits 38 metres above the sea. The Kestrel Point lamp turns once every 7.5 seconds, so sailors
can tell it from the harbour light, which turns once every 12 seconds. Its range is 19 nautical miles.

## Visiting

The tower is open to visitors on Saturdays from May to September.
"""

GLACIER = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>The Vantorr glacier</title>
<style>body { font-family: serif; } nav { float: left; }</style>
<script>window.analytics = {track: function () { return "tracking-code-7731"; }};</script>
</head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/glaciers">All glaciers</a></li>
<li><a href="/contact">Contact</a></li></ul></nav>
<main>
<article>
<h1>The Vantorr glacier</h1>
<p>The Vantorr glacier is an (invented) valley glacier in the northern ranges, fed by three cirques.</p>
<h2>Retreat</h2>
<p>Surveys of its terminus show that the Vantorr glacier retreated 412 metres between 1990 and 2020,
most of it after 2005. Its meltwater feeds Lake Osk.</p>
</article>
</main>
<footer><p>Copyright 2026 Glacier Watch. All rights reserved. Cookie settings.</p></footer>
</body>
</html>
"""

ORCHARD = """The Millbrook orchard

The (invented) Millbrook orchard lies in a sheltered valley south of the river Wend. Besides apples and
pears, the Millbrook orchard grows 23 varieties of quince, the largest collection in the county.

Harvest starts in late September; the quince varieties ripen last, in October.
"""


def main() -> None:
    kettle = kettle_pdf()
    files = {
        "kettle-spec.pdf": kettle,
        "lighthouse.md": LIGHTHOUSE.encode(),
        "glacier.html": GLACIER.encode(),
        "orchard.txt": ORCHARD.encode(),
        "encrypted.pdf": encrypt(kettle),
        "truncated.pdf": kettle[: kettle.index(b"stream") + 60],  # cut inside the first page's content stream
        "scanned.pdf": scanned_pdf(),
        "blank.txt": b" \n\n\t  \n   \n",
        "empty.txt": b"",
        "picture.txt": png(),
    }
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")
    text = "".join(page.extract_text() for page in PdfReader(HERE / "kettle-spec.pdf").pages)
    assert "boils a full tank of 1.7 litres of water in 94 seconds" in " ".join(text.split()), text
    assert PdfReader(HERE / "encrypted.pdf").is_encrypted


if __name__ == "__main__":
    main()
