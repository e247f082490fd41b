"""One engine replica (a vLLM server) as the gateway knows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from gateway.engines.http1 import Origin
from gateway.engines.models import ModelCard

__all__ = ["Purpose", "Replica"]

Purpose = Literal["generate", "embed"]


@dataclass(eq=False, slots=True)
class Replica:
    """A single vLLM server, tracked individually.

    Replicas compare and hash by identity, so they can be put in sets (`EnginePool.lease(exclude=)`).
    The served models are whatever its `GET /v1/models` listed last, LoRA adapters included
    (vLLM lists a loaded adapter as its own model with a `parent`): a replica that holds an adapter
    is the one that serves it, which is what lets the pool prefer it.
    """

    url: str
    purpose: Purpose
    healthy: bool = False
    in_flight: int = 0  # requests holding a `Lease` on it (only leases change it)
    # Model cards from the last successful `GET /v1/models`, by id. Kept when the replica fails,
    # so an unknown model can still be told apart from a known one whose replicas are down.
    model_cards: dict[str, ModelCard] = field(default_factory=dict)
    last_error: str | None = None
    # Wall-clock time (time.time()) of the last health check, None before the first one.
    last_check: float | None = None
    # Health checks failed in a row, and when (event-loop time) the next one is due: see EnginePool.
    failures: int = 0
    next_check: float = 0.0
    # Whether it takes LoRA adapters at run time (/v1/load_lora_adapter): None until the pool's listing hook
    # found out (gateway.engines.adapter_guard); only such replicas get tenant adapters and isolated base traffic.
    lora: bool | None = None
    origin: Origin = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        try:
            self.origin = Origin.from_url(self.url)
        except ValueError:
            raise ValueError(f"engine URL must be absolute http(s): {self.display_url}") from None

    @property
    def display_url(self) -> str:
        """The URL without credentials: safe for logs, errors and health details."""
        parts = urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self.model_cards)

    def serves(self, model: str) -> bool:
        return model in self.model_cards
