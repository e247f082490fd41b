"""One engine replica (a vLLM server) as the gateway knows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from yarl import URL

__all__ = ["Purpose", "Replica"]

Purpose = Literal["generate", "embed"]


@dataclass(eq=False, slots=True)
class Replica:
    """A single vLLM server, tracked individually.

    Replicas compare and hash by identity, so they can be put in sets (`EnginePool.choose(exclude=)`).
    The served models are whatever its `GET /v1/models` listed last, LoRA adapters included
    (vLLM lists a loaded adapter as its own model with a `parent`): a replica that holds an adapter
    is the one that serves it, which is what lets the pool prefer it.
    """

    url: str
    purpose: Purpose
    healthy: bool = False
    in_flight: int = 0
    # Model cards from the last successful `GET /v1/models`, by id. Kept when the replica fails,
    # so an unknown model can still be told apart from a known one whose replicas are down.
    model_cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: str | None = None
    # Wall-clock time (time.time()) of the last health check, None before the first one.
    last_check: float | None = None
    # Health checks failed in a row, and when (event-loop time) the next one is due: see EnginePool.
    failures: int = 0
    next_check: float = 0.0
    _endpoints: dict[str, URL] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        base = URL(self.url)
        if not base.absolute or base.scheme not in ("http", "https"):
            raise ValueError(f"engine URL must be absolute http(s): {self.display_url}")

    @property
    def display_url(self) -> str:
        """The URL without credentials: safe for logs, errors and health details."""
        base = URL(self.url)
        if base.user is None and base.password is None:
            return self.url
        return str(base.with_user(None))

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self.model_cards)

    def serves(self, model: str) -> bool:
        return model in self.model_cards

    def endpoint(self, path: str) -> URL:
        """The absolute URL of `path` on this replica (cached: parsing a URL per request costs)."""
        url = self._endpoints.get(path)
        if url is None:
            url = URL(self.url + (path if path.startswith("/") else "/" + path), encoded=False)
            if len(self._endpoints) < 64:
                self._endpoints[path] = url
        return url
