"""HTML to the text a reader sees, with selectolax (Lexbor: a fast, WHATWG-conformant HTML5 parser, no deps).

Reader-mode rules, kept small and predictable instead of a statistical extractor: read ``<main>`` (or
``role="main"``) when the page has one, else ``<body>`` without its ``header``/``footer``/``aside`` and landmark
roles; never scripts, styles, forms, navigation, hidden elements or permalink signs (``¶``). Headings make the
heading path, block elements (paragraphs, list items, table rows, ``<pre>``) make blocks, inline elements flow.
"""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser, LexborNode

from retrieval._parse_model import DocumentBuilder, ParsedDocument

__all__ = ["parse_html"]

_ALWAYS_DROP = (
    "script, style, noscript, template, svg, iframe, object, embed, canvas, audio, video, map, button, select, "
    "input, textarea, form, nav, dialog, [role=navigation], [role=search], [hidden], [aria-hidden=true]"
)
_PAGE_CHROME = "header, footer, aside, [role=banner], [role=contentinfo], [role=complementary]"
_PERMALINK_SIGNS = frozenset({"¶", "#", "§", "🔗", "⚓", "link"})

_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = frozenset(
    (
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "caption",
        "center",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "header",
        "hgroup",
        "hr",
        "html",
        "legend",
        "li",
        "main",
        "menu",
        "ol",
        "p",
        "section",
        "summary",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "ul",
    )
)
_BREAK = "\x00"  # <br>: a line break that survives whitespace collapsing
_CELL = "\x01"  # a table cell boundary
_SPACES = re.compile(r"[^\S\x00\x01]+")  # whitespace, sentinels excepted
_CELLS = re.compile(r" ?\x01[ \x01]*")


def parse_html(html: str, *, max_chars: int) -> ParsedDocument:
    tree = LexborHTMLParser(html)
    root = tree.css_first("main") or tree.css_first("[role=main]")
    if root is None:
        root = tree.body
        if root is None:
            return DocumentBuilder(max_chars).build("text/html")
        _drop(root, _PAGE_CHROME)
    _drop(root, _ALWAYS_DROP)
    for anchor in root.css("a[href^='#']"):
        if anchor.text(deep=True).strip() in _PERMALINK_SIGNS:
            anchor.decompose()
    walker = _Walker(DocumentBuilder(max_chars))
    walker.walk(root)
    return walker.builder.build("text/html")


def _drop(root: LexborNode, selector: str) -> None:
    for node in root.css(selector):
        node.decompose()


class _Walker:
    """Depth-first over the tree without recursion (deeply nested pages must not hit the recursion limit)."""

    def __init__(self, builder: DocumentBuilder) -> None:
        self.builder = builder
        self.buffer: list[str] = []
        self.rows = 0  # open table rows: a row is one block, whatever blocks its cells hold

    def walk(self, root: LexborNode) -> None:
        stack: list[tuple[LexborNode, bool]] = [(root, False)]
        while stack:
            node, leaving = stack.pop()
            if leaving:
                self._leave(node)
            else:
                self._enter(node, stack)

    def _leave(self, node: LexborNode) -> None:
        if node.tag == "tr":
            self.rows -= 1
        if not self.rows:
            self.flush()

    def _enter(self, node: LexborNode, stack: list[tuple[LexborNode, bool]]) -> None:
        tag = node.tag
        if tag == "-text":
            self.buffer.append(node.text_content or "")
        elif tag in _HEADINGS and not self.rows:
            self.flush()
            self.builder.heading(_HEADINGS[tag], node.text(deep=True))
        elif tag == "pre" and not self.rows:
            self.flush()
            self.builder.paragraph(node.text(deep=True).strip("\n"))
        elif tag == "br":
            self.buffer.append(_BREAK)
        elif tag is not None and not tag.startswith("-"):
            if tag in ("td", "th"):
                self.buffer.append(_CELL)
            if tag == "tr":
                self.flush()
                self.rows += 1
                stack.append((node, True))
            elif tag in _BLOCKS:
                if self.rows:
                    self.buffer.append(" ")
                else:
                    self.flush()
                    stack.append((node, True))
            stack.extend((child, False) for child in reversed(_children(node)))

    def flush(self) -> None:
        if not self.buffer:
            return
        text = _SPACES.sub(" ", "".join(self.buffer)).strip(" " + _CELL)
        self.buffer.clear()
        text = _CELLS.sub(" | ", text)
        text = "\n".join(line.strip() for line in text.split(_BREAK))
        self.builder.paragraph(text)


def _children(node: LexborNode) -> list[LexborNode]:
    children = []
    child = node.child
    while child is not None:
        children.append(child)
        child = child.next
    return children
