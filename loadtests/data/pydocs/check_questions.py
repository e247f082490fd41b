"""Check the labelled questions against the pages they point to.

    python loadtests/data/pydocs/check_questions.py

Every line of ``questions.jsonl`` must name a page that is here, a kind (``semantic`` or ``identifier``),
a unique id, and an ``answer`` that occurs verbatim in the page's visible text. The visible text is the
Sphinx body (``div role="main"``) without scripts, styles and the header links, whitespace-normalised,
extracted with the standard library's HTML parser so the check needs nothing installed. Where the
project's own parser (``retrieval.parsing``) is importable, the answer must also occur in its text, since
that is the text the gateway chunks and the benchmark matches against. Exit status 1 lists what fails.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE / "questions.jsonl"
PAGES = HERE / "pages"
KINDS = ("semantic", "identifier")
_SPACE = re.compile(r"\s+")
_SKIPPED = {"script", "style", "head", "title"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def normalise(text: str) -> str:
    """Whitespace runs to one space, ends stripped (the form answers are matched in)."""
    return _SPACE.sub(" ", text).strip()


class _BodyText(HTMLParser):
    """The text inside ``<div role="main">``, minus scripts, styles and Sphinx's pilcrow header links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, opens main, hides its text)

    def _inside(self) -> tuple[bool, bool]:
        return any(m for _, m, _ in self._stack), any(h for _, _, h in self._stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        found = dict(attrs)
        main = found.get("role") == "main"
        hidden = tag in _SKIPPED or found.get("class") == "headerlink"
        self._stack.append((tag, main, hidden))
        if tag in ("p", "div", "li", "dt", "dd", "pre", "tr", "h1", "h2", "h3", "h4", "section"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break
        self.parts.append("" if tag in ("a", "span", "code", "em", "strong", "cite", "sup", "sub") else " ")

    def handle_data(self, data: str) -> None:
        main, hidden = self._inside()
        if main and not hidden:
            self.parts.append(data)


def page_text(path: Path) -> str:
    """The visible body text of a Sphinx page, whitespace-normalised."""
    parser = _BodyText()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return normalise("".join(parser.parts))


def project_text(path: Path) -> str | None:
    """The text the project's own parser extracts, normalised; None where it is not importable."""
    try:
        parsing = importlib.import_module("retrieval.parsing")  # optional: the check needs nothing installed
    except ImportError:
        return None
    return normalise(str(parsing.parse_document(path.read_bytes()).text))


def load_questions(path: Path = QUESTIONS) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def problems(questions: list[dict[str, str]], *, with_project_parser: bool = True) -> list[str]:
    """Everything wrong with ``questions``; empty when all is well."""
    found: list[str] = []
    ids = Counter(q.get("id") for q in questions)
    found += [f"{qid}: id used {n} times" for qid, n in ids.items() if n > 1]
    texts: dict[str, str] = {}
    ours: dict[str, str | None] = {}
    for q in questions:
        qid = q.get("id", "?")
        missing = {"id", "question", "file", "answer", "kind"} - q.keys()
        if missing:
            found.append(f"{qid}: missing {sorted(missing)}")
            continue
        if q["kind"] not in KINDS:
            found.append(f"{qid}: kind {q['kind']!r} is not one of {KINDS}")
        page = PAGES / q["file"]
        if not page.is_file():
            found.append(f"{qid}: no page {q['file']}")
            continue
        if q["file"] not in texts:
            texts[q["file"]] = page_text(page)
            ours[q["file"]] = project_text(page) if with_project_parser else None
        answer = normalise(q["answer"])
        if answer not in texts[q["file"]]:
            found.append(f"{qid}: answer {answer!r} is not in the visible text of {q['file']}")
        theirs = ours[q["file"]]
        if theirs is not None and answer not in theirs:
            found.append(f"{qid}: answer {answer!r} is not in retrieval.parsing's text of {q['file']}")
    return found


def main() -> int:
    questions = load_questions()
    wrong = problems(questions)
    kinds = Counter(q.get("kind") for q in questions)
    pages = {q.get("file") for q in questions}
    print(f"{len(questions)} questions ({dict(kinds)}) over {len(pages)} of {len(list(PAGES.glob('*.html')))} pages")
    for line in wrong:
        print("FAIL", line)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
