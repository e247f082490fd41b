"""The gateway's :class:`retrieval.embedding.Embedder`: embeddings from the gateway's own embedding engines.

It goes through the same :class:`~gateway.engines.client.EngineClient` as the ``/v1/embeddings`` route
(replica choice, retries before the request is sent, timeouts), and meters every call to the tenant as a
usage row with endpoint ``embeddings``: the tokens ingestion and search spend are the tenant's. The request
id of a row is the current one (``observability.context``: the HTTP request's, or ``ingest-<vs>-<file>``
set by the ingestion job).

Vectors are kept as the engine wrote them: each embedding's JSON array is taken as raw bytes
(``msgspec.Raw``), which is already pgvector's text form, so no float is ever built in Python.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from gateway.engines.client import EngineClient
from gateway.engines.errors import EngineBadResponseError, EngineError, EngineStreamBrokenError
from gateway.engines.models import ModelCard
from gateway.engines.pool import EnginePool
from gateway.engines.routes import Route
from gateway.services.metering import storable_model_name
from gateway.services.salts import CacheSalts
from observability.context import get_request_id
from observability.usage import INT4_MAX, UsageEvent, UsageMeter
from retrieval.embedding import EmbeddingModel, EmbeddingPurpose, Embeddings
from retrieval.errors import EmbeddingFailed, EmbeddingUnavailable

__all__ = ["NO_KEY", "EngineEmbedder"]

log = logging.getLogger(__name__)

NO_KEY = uuid.UUID(int=0)  # usage rows need a key: ingestion of a file whose attaching key is unknown
_PROBE_TEXT = "dimension probe"


class _Item(msgspec.Struct):
    embedding: msgspec.Raw
    index: int = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0


class _EmbeddingList(msgspec.Struct):
    data: list[_Item]
    usage: _Usage | None = None


class _Tokenized(msgspec.Struct):
    count: int


_decode_list = msgspec.json.Decoder(_EmbeddingList).decode
_decode_tokenized = msgspec.json.Decoder(_Tokenized).decode


class EngineEmbedder:
    """Embeds with ``model`` (or the first model the embedding engines serve) and meters every call."""

    def __init__(
        self, engines: EnginePool, client: EngineClient, meter: UsageMeter, *, model: str | None = None,
        salts: CacheSalts | None = None,
    ) -> None:
        self._salts = salts  # a tenant's embeddings carry its cache_salt, as its API requests do
        self._engines = engines
        self._client = client
        self._meter = meter
        self._model = model
        self._dimensions: dict[str, int] = {}  # learnt from the engine's first answer, per model

    def route(self) -> Route:
        """The route to the embedding model; :class:`EmbeddingUnavailable` when no engine lists it."""
        if self._model is not None:
            try:
                return self._engines.route(self._model, "embed")
            except EngineError as exc:
                raise EmbeddingUnavailable(f"No embedding engine serves the model `{self._model}`.") from exc
        routes = self._engines.routes("embed")
        if not routes:
            raise EmbeddingUnavailable("No embedding engine is serving a model.")
        return routes[0]

    def card(self) -> ModelCard:
        return self.route().card

    async def model(self) -> EmbeddingModel:
        route = self.route()
        card = route.card
        if card.max_model_len is None:
            raise EmbeddingUnavailable(f"The embedding engine does not say how long an input `{card.id}` takes.")
        dims = self._dimensions.get(card.id)
        if dims is None:  # one short, unmetered call per model and process: the card does not say
            vectors, _ = await self._post(route, [_PROBE_TEXT])
            dims = self._dimensions[card.id] = _dimensions_of(vectors[0])
        return EmbeddingModel(name=card.id, dimensions=dims, max_input_tokens=card.max_model_len)

    async def embed(
        self, texts: Sequence[str], *, tenant_id: uuid.UUID, key_id: uuid.UUID | None, purpose: EmbeddingPurpose
    ) -> Embeddings:
        started = time.perf_counter()
        arrived = datetime.now(UTC)
        model = self._model or "unknown"
        status, error_code, tokens = 200, None, 0
        try:
            route = self.route()
            model = route.engine_model
            salt = self._salts.json_value(tenant_id) if self._salts is not None else None
            vectors, tokens = await self._post(route, texts, salt)
            if model not in self._dimensions and vectors:
                self._dimensions[model] = _dimensions_of(vectors[0])
            return Embeddings(vectors=vectors, prompt_tokens=tokens)
        except EmbeddingUnavailable as exc:
            status, error_code = 503, exc.code
            raise
        except EmbeddingFailed as exc:
            status, error_code = 502, exc.code
            raise
        finally:
            self._meter.record(
                UsageEvent(
                    created_at=arrived, request_id=get_request_id() or f"embed-{purpose}-{uuid.uuid4().hex}",
                    tenant_id=tenant_id, key_id=key_id or NO_KEY, endpoint="embeddings",
                    model=storable_model_name(model), stream=False, status_code=status, error_code=error_code,
                    prompt_tokens=min(max(tokens, 0), INT4_MAX), latency_ms=(time.perf_counter() - started) * 1000,
                    end_reason="completed" if status == 200 else "engine_error",
                )
            )

    async def engine_token_count(self, text: str) -> int | None:
        """What the engine's own ``POST /tokenize`` counts for ``text`` (specials included), or None when it
        does not serve that route or fails: used once to check that the local tokenizer agrees."""
        route = self.route()
        body = msgspec.json.encode({"model": route.engine_model, "prompt": text})
        try:
            reply = await self._client.post(route, "/tokenize", body)
            if reply.status != 200:
                return None
            return _decode_tokenized(reply.body).count
        except (EngineError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def _post(self, route: Route, texts: Sequence[str], salt: bytes | None = None) -> tuple[list[str], int]:
        request: dict[str, object] = {"model": route.engine_model, "input": list(texts), "encoding_format": "float"}
        if salt is not None:  # the salt's raw JSON value, as inference splices it
            request["cache_salt"] = msgspec.Raw(salt)
        body = msgspec.json.encode(request)
        try:
            reply = await self._client.post(route, "/v1/embeddings", body)
        except EngineStreamBrokenError as exc:
            raise EmbeddingUnavailable(f"The embedding engine broke off: {exc.message}") from exc
        except EngineBadResponseError as exc:
            raise EmbeddingFailed(f"The embedding engine answered badly: {exc.message}") from exc
        except EngineError as exc:  # unavailable, timeout, not served
            raise EmbeddingUnavailable(f"The embedding engine cannot be used now: {exc.message}") from exc
        if reply.status != 200:
            message = f"The embedding engine answered HTTP {reply.status}."
            if reply.status >= 500 or reply.status == 429:
                raise EmbeddingUnavailable(message)
            raise EmbeddingFailed(message + " " + _engine_message(reply.body))
        try:
            answer = _decode_list(reply.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EmbeddingFailed("The embedding engine answered something that is not an embedding list.") from exc
        if len(answer.data) != len(texts):
            raise EmbeddingFailed(f"The embedding engine answered {len(answer.data)} vectors for {len(texts)} inputs.")
        items = sorted(answer.data, key=lambda item: item.index)
        vectors = [bytes(item.embedding).decode() for item in items]
        if any(not v.startswith("[") for v in vectors):
            raise EmbeddingFailed("The embedding engine answered vectors that are not lists of numbers.")
        return vectors, answer.usage.prompt_tokens if answer.usage else 0


def _dimensions_of(vector: str) -> int:
    return vector.count(",") + 1


class _ErrorBody(msgspec.Struct):
    message: str = ""


class _Error(msgspec.Struct):
    error: _ErrorBody


def _engine_message(body: bytes) -> str:
    try:
        return _decode_error(body).error.message[:300]
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


_decode_error = msgspec.json.Decoder(_Error).decode
