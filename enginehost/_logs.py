"""Read an engine's log since its start and find why it failed.

vLLM logs the root cause in the process that failed (often a worker), then each parent reports its own
generic failure ("Engine core initialization failed. See root cause above."). The first exception line
of this start is the reason; the lines before it (its traceback) and after it (a message spread over
several lines) are what to show.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["explain_failure", "read_since"]

_NOISE = re.compile(r"it/s\]|s/it\]|%\|")
# vLLM's prefix: "(EngineCore pid=12) ERROR 11-25 16:27:36 [core.py:1510] "
_PREFIX = re.compile(r"^\([\w-]+ pid=\d+\) (?:[A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\] ?)?")
_EXCEPTION = re.compile(r"^((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)): (.+)$")


def read_since(path: Path, offset: int) -> list[str]:
    """The log's lines from byte ``offset``, without progress bars and blank lines."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    lines = (line.rstrip() for line in text.replace("\r", "\n").splitlines())
    return [line for line in lines if line.strip() and not _NOISE.search(line)]


def explain_failure(lines: list[str], *, exit_code: int | None, keep: int = 30) -> tuple[str, list[str]]:
    """The reason (the first exception of this start) and up to ``keep`` lines around it."""
    for index, line in enumerate(lines):
        match = _EXCEPTION.match(_PREFIX.sub("", line))
        if match:
            after = min(len(lines), index + 1 + keep // 4)
            before = max(0, after - keep)
            return f"{match.group(1)}: {match.group(2)}", lines[before:after]
    tail = lines[-keep:]
    if tail:
        return _PREFIX.sub("", tail[-1]), tail
    return f"it exited with code {exit_code} and wrote nothing to its log", []
