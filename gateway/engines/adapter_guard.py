"""The listing hook of generation replicas: which replicas take LoRA adapters, the identity adapter on each,
and placement's view of what each replica holds.

After every successful ``GET /v1/models`` of a generation replica (``EnginePool``'s health check), for each
base model it serves whose architecture the gateway can read (``config.json`` in the engine's ``root``
folder, or ``TENANTGATE_ADAPTER_BASE_MODEL_DIRS``):

- the base model's identity adapter (``adapters.identity``: all-zero, changes nothing) is loaded on the replica
  unless the listing shows it already. That load is also the probe of LoRA support: the replica's ``lora`` is
  True when it took it, False when the engine has no runtime LoRA API (asked again at every check, so an engine
  restarted with LoRA on is found). Any other failure keeps the replica out of rotation until the next check:
  base traffic must not reach a LoRA engine that cannot isolate it (fail closed).
- placement is told which adapters the replica lists (another gateway replica may have loaded some; a
  restarted engine holds none), so its view follows the engines.

A replica restarted between two checks lists no identity adapter: the next check loads it again before the
replica is healthy again (a restart is a refused connection first, which marks it down at once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from adapters.base_model import read_base_model
from adapters.errors import BaseModelUnavailable
from adapters.identity import IdentityAdapter, identity_adapter
from adapters.lora_api import LoraAlreadyLoaded, LoraApi, LoraApiError, LoraUnsupported
from adapters.storage import CONFIG_NAME, DIR_MODE, FILE_MODE, WEIGHTS_NAME
from gateway.engines.models import ModelCard
from gateway.engines.pool import ReplicaNotReadyError
from gateway.engines.replica import Replica

__all__ = ["AdapterGuard", "ListingObserver", "base_model_folder"]

log = logging.getLogger(__name__)


class ListingObserver(Protocol):
    """Placement's side of the listing (``adapters.placement.Placement``)."""

    def observe(self, replica: Replica, listed: set[str]) -> None: ...

    def pin(self, engine_name: str) -> None: ...


def base_model_folder(card: ModelCard, base_dirs: Mapping[str, str]) -> Path | None:
    """Where the base model's ``config.json`` is readable here: the configured folder, else the engine's
    ``root`` when this host sees it; None when neither."""
    configured = base_dirs.get(card.id)
    if configured:
        return Path(configured).expanduser()
    if card.root and os.path.isabs(card.root) and os.path.isfile(os.path.join(card.root, "config.json")):
        return Path(card.root)
    return None


class AdapterGuard:
    """``EnginePool``'s listing hook (see the module docstring); also tells the catalog each base model's
    identity adapter (``identity_for``)."""

    def __init__(
        self, lora: LoraApi[Replica], identity_root: Path, base_dirs: Mapping[str, str],
        placement: ListingObserver | None = None,
    ) -> None:
        self._lora = lora
        self._root = identity_root
        self._base_dirs = dict(base_dirs)
        self._placement = placement
        self._identities: dict[str, IdentityAdapter | None] = {}  # base model -> its identity (None: unknown arch)

    def identity_for(self, base_model: str) -> str | None:
        identity = self._identities.get(base_model)
        return identity.engine_name if identity is not None else None

    def identity_path(self, identity: IdentityAdapter) -> Path:
        return self._root / identity.checksum.removeprefix("sha256:")

    async def __call__(self, replica: Replica, cards: dict[str, ModelCard]) -> dict[str, ModelCard]:
        for card in [card for card in cards.values() if not card.is_adapter]:
            identity = await self._identity_of(card)
            if identity is None:
                continue
            if identity.engine_name in cards:
                replica.lora = True
                continue
            path = self.identity_path(identity)
            try:
                await self._lora.load(replica, identity.engine_name, str(path))
            except LoraAlreadyLoaded:
                pass
            except LoraUnsupported:
                replica.lora = False
                continue
            except LoraApiError as exc:
                raise ReplicaNotReadyError(
                    f"cannot load the identity adapter of {card.id} that isolates base traffic: {exc.message}"
                ) from exc
            if not replica.lora:
                log.info("engine %s takes LoRA adapters; base traffic to %s is isolated", replica.display_url, card.id)
            replica.lora = True
            cards = {**cards, identity.engine_name: ModelCard(id=identity.engine_name, parent=card.id, root=str(path))}
        if self._placement is not None and replica.lora:
            self._placement.observe(replica, {card.id for card in cards.values() if card.is_adapter})
        return cards

    async def _identity_of(self, card: ModelCard) -> IdentityAdapter | None:
        if card.id in self._identities:
            return self._identities[card.id]
        folder = base_model_folder(card, self._base_dirs)
        identity: IdentityAdapter | None = None
        if folder is not None:
            try:
                spec = await asyncio.to_thread(read_base_model, folder, card.id)
                identity = identity_adapter(spec)
                await asyncio.to_thread(self._write, identity)
            except BaseModelUnavailable as exc:
                log.warning("adapters for %s are not possible: %s", card.id, exc.message)
                identity = None
        else:
            log.warning(
                "adapters for %s are not possible: its config.json is not readable here"
                " (set TENANTGATE_ADAPTER_BASE_MODEL_DIRS)", card.id,
            )
        self._identities[card.id] = identity
        if identity is not None and self._placement is not None:
            self._placement.pin(identity.engine_name)
        return identity

    def _write(self, identity: IdentityAdapter) -> None:
        """The identity adapter's two files under the store's ``identity/`` area, written once, whole (renamed
        into place), readable by the engines (0755/0644): apart from tenant adapters, so no delete touches it."""
        final = self.identity_path(identity)
        if (final / WEIGHTS_NAME).is_file():
            return
        self._root.mkdir(parents=True, exist_ok=True)
        os.chmod(self._root, DIR_MODE)
        incoming = self._root / f".incoming-{secrets.token_hex(8)}"
        incoming.mkdir(mode=DIR_MODE)
        os.chmod(incoming, DIR_MODE)
        for name, data in ((CONFIG_NAME, identity.config), (WEIGHTS_NAME, identity.weights)):
            target = incoming / name
            with target.open("xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(target, FILE_MODE)
        try:
            os.rename(incoming, final)
        except OSError:  # another gateway process wrote it first: the same bytes
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                (incoming / name).unlink(missing_ok=True)
            incoming.rmdir()
