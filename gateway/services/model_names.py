"""The public model name in answers of calls the engine knew under another name (a tenant adapter's opaque
engine name, or the identity adapter that carries base-model traffic).

The engine names are random tokens (``tga-`` and 32 hex characters), so replacing the quoted token is exact:
nothing else in an answer holds it. Installed per call, only on calls whose engine name differs.
"""

from __future__ import annotations

import msgspec

__all__ = ["PublicModelName"]


class PublicModelName:
    """An answer filter and stream filter: the engine's name for the model, quoted, becomes the public one."""

    __slots__ = ("_engine", "_engine_bare", "_public", "_public_bare")

    def __init__(self, engine_model: str, public_model: str) -> None:
        self._engine = msgspec.json.encode(engine_model)
        self._public = msgspec.json.encode(public_model)
        self._engine_bare = engine_model.encode()
        self._public_bare = self._public[1:-1]

    def answer(self, body: bytes) -> bytes:
        return body.replace(self._engine, self._public)

    def event(self, event: bytes) -> bytes:
        return event.replace(self._engine, self._public)

    def before_done(self) -> bytes:
        return b""

    def error(self, body: bytes) -> bytes:
        """An engine's error body, which names the model inside messages (``The model `x` does not exist``)."""
        return body.replace(self._engine_bare, self._public_bare)
