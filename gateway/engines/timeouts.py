"""Timeouts for talking to engines."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineTimeouts"]


@dataclass(frozen=True, slots=True)
class EngineTimeouts:
    """Seconds allowed for each stage of one exchange with an engine.

    `first_byte` runs from the start of the attempt until the response headers arrive. vLLM sends
    the headers of a non-streaming answer only when generation is done, so for those it bounds
    generation; for a stream it bounds queueing plus prefill. `total` bounds the whole exchange,
    body or stream included.
    """

    connect: float = 3.0
    first_byte: float = 60.0
    total: float = 600.0

    def __post_init__(self) -> None:
        if min(self.connect, self.first_byte, self.total) <= 0:
            raise ValueError("engine timeouts must be positive")

    @property
    def probe(self) -> float:
        """Timeout of a health probe: short, so one dead replica cannot stall a refresh."""
        return min(self.connect + 2.0, 5.0)
