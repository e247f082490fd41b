"""Errors of the local engines' supervisor.

::

    EngineStartError          an engine did not become healthy; carries its name, log and log tail
    ├── PortInUseError        its port was taken before it started
    ├── EngineExitedError     its process exited during start-up (the reason comes from its own log)
    └── EngineStartTimeoutError  still not healthy when the overall start timeout ran out
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["EngineExitedError", "EngineStartError", "EngineStartTimeoutError", "PortInUseError"]


class EngineStartError(RuntimeError):
    """An engine failed to start. ``str()`` gives the reason, the log's path and its last lines."""

    def __init__(
        self, name: str, log_path: Path, log_tail: Sequence[str], reason: str, exit_code: int | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.log_tail = list(log_tail)
        self.reason = reason
        self.exit_code = exit_code
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"engine {self.name} failed to start: {self.reason}"
        if self.exit_code is not None:
            text += f" (exit code {self.exit_code})"
        if self.log_tail:
            lines = "\n".join(f"    {line}" for line in self.log_tail)
            text += f"\nLast lines of {self.log_path}:\n{lines}"
        return text


class PortInUseError(EngineStartError):
    """The engine's port is already bound by another process."""


class EngineExitedError(EngineStartError):
    """The engine's process exited before ``GET /health`` answered 200."""


class EngineStartTimeoutError(EngineStartError):
    """The engine was still not healthy when the start timeout ran out."""
