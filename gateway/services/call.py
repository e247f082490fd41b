"""One inference call as it travels the pipeline: who, what, where to, what to change, how it ended.

A :class:`Call` is built by the route once the key is authenticated, filled as the request is read and
resolved, changed by pipeline steps, and handed, ended, to every observer. It is the one object per
request the pipeline allocates: the outcome fields live on it rather than in an object of their own.

Body edits: the raw body goes to the engine as the client sent it, unless something sets a top-level
field (:meth:`Call.set_field`, the value as raw JSON). All edits are applied once, when the engine body is
made (:meth:`Call.engine_body`): fields known to be absent are spliced in after the opening brace, without
touching the rest; otherwise the top level is decoded once (values kept as raw bytes, so numbers such as
``1e999`` elsewhere go on as they came), the fields replaced, and encoded again.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

import msgspec

from gateway.auth.principal import Principal
from gateway.engines.replica import Replica
from gateway.engines.routes import Route
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

if TYPE_CHECKING:
    from gateway.services.pipeline import AnswerFilter, StreamFilter

__all__ = ["UNKNOWN_MODEL", "Call", "EndReason", "Endpoint", "OpenAIRequest"]

Endpoint = Literal["chat.completions", "completions", "embeddings"]
EndReason = Literal["completed", "rejected", "client_disconnected", "engine_error", "timeout", "server_shutdown"]
OpenAIRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
UNKNOWN_MODEL = "unknown"  # the model label of a call whose model no route was found for (or not known yet)

_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.encode
_VIEW_FROM = 4096  # bytes of body from which a splice joins a view of it rather than a slice (cheaper below)
_DROP = b""  # the edit that removes a field (compared by identity: no valid JSON value is empty)


class Call:
    """One call. Set by the route: ``principal``, ``endpoint``, ``request_id``, ``started`` (perf_counter),
    ``arrived_at``; then ``request`` and ``body`` once read, and ``upstream_headers``. Set by the runner:
    ``route``. Steps may change ``route``, set body fields, add upstream and response headers and filters.

    ``response_headers`` go with whatever answer the call gets, an error included (a 429's
    ``Retry-After``, ``x-ratelimit-*`` on every answer).
    """

    __slots__ = (
        "_edits", "_splice", "_top", "answer_filters", "arrived_at", "body", "client_running_usage",
        "completion_tokens", "end_reason", "endpoint", "error_code", "latency_ms", "model", "principal",
        "prompt_tokens", "replica", "request", "request_id", "response_headers", "route", "started", "status",
        "stream", "stream_filters", "ttft_ms", "upstream_headers",
    )

    def __init__(
        self, principal: Principal, endpoint: Endpoint, request_id: str, started: float, arrived_at: datetime
    ) -> None:
        self.principal = principal
        self.endpoint = endpoint
        self.request_id = request_id
        self.started = started
        self.arrived_at = arrived_at
        self.model = UNKNOWN_MODEL  # the public model the client named, once its body is read
        self.request: OpenAIRequest | None = None
        self.body = b""  # the raw body, as the client sent it
        self.stream = False
        self.client_running_usage = False  # the client itself asked for usage on every stream chunk
        self.route: Route | None = None
        self.upstream_headers: dict[str, str] = {}
        self.response_headers: list[tuple[str, str]] | None = None
        self.stream_filters: tuple[StreamFilter, ...] = ()
        self.answer_filters: tuple[AnswerFilter, ...] = ()
        self._edits: dict[str, bytes] | None = None
        self._splice = True  # every edit so far is of a field known to be absent
        self._top: dict[str, msgspec.Raw] | None = None
        self.replica: Replica | None = None  # the replica that answered, once one did
        # The outcome (status, error_code, end_reason, prompt_tokens, completion_tokens, ttft_ms, latency_ms)
        # is set, all of it, when the call ends: observers read it then.
        self.status: int
        self.error_code: str | None
        self.end_reason: EndReason
        self.prompt_tokens: int
        self.completion_tokens: int
        self.ttft_ms: float | None
        self.latency_ms: float

    @property
    def wants_usage(self) -> bool:
        """The client asked for the final usage chunk of a stream (``stream_options.include_usage``)."""
        request = self.request
        return isinstance(request, (ChatCompletionRequest, CompletionRequest)) and request.wants_usage_in_stream

    @property
    def model_label(self) -> str:
        """The model as usage rows and metrics name it: the public name once a route confirmed it."""
        return self.model if self.route is not None else UNKNOWN_MODEL

    # -- body edits ------------------------------------------------------------------------------

    def top_level(self) -> dict[str, msgspec.Raw]:
        """The body's top-level members, values as raw JSON (decoded once, on first use)."""
        if self._top is None:
            self._top = _decode_top(self.body)
        return self._top

    def set_field(self, key: str, raw_json: bytes, *, absent: bool = False) -> None:
        """Send the top-level ``key`` with ``raw_json`` (valid JSON) as its value. ``absent``: the caller
        knows the client's body has no such member (then it is spliced in, nothing else decoded)."""
        if self._edits is None:
            self._edits = {}
        self._edits[key] = raw_json
        self._splice = self._splice and absent

    def drop_field(self, key: str) -> None:
        """Send the body without its top-level ``key`` (a field for the gateway only, such as ``retrieval``)."""
        if self._edits is None:
            self._edits = {}
        self._edits[key] = _DROP
        self._splice = False

    def edited(self, key: str) -> bytes | None:
        return None if self._edits is None else self._edits.get(key)

    def engine_body(self) -> bytes:
        """The body to send: the client's, with every edit applied (the same object when there is none)."""
        edits = self._edits
        if edits is None:
            return self.body
        body = self.body
        if self._splice:  # every edited field is absent: splice them in after the opening brace
            start = body.find(b"{") + 1  # a body that reached here is an object with at least `model`
            parts: list[bytes | memoryview] = [body[:start]]
            for key, value in edits.items():  # one join, no bytes made per member: every request has one (the salt)
                parts += (_encode(key), b":", value, b",")
            # A large body is copied once (by the join), not twice: a slice of it would be a copy of its own.
            parts.append(body[start:] if len(body) < _VIEW_FROM else memoryview(body)[start:])
            return b"".join(parts)
        top = dict(self.top_level())
        for key, value in edits.items():
            if value is _DROP:
                top.pop(key, None)
            else:
                top[key] = msgspec.Raw(value)
        return msgspec.json.encode(top)

    # -- pipeline plug-ins per call --------------------------------------------------------------

    def add_response_header(self, name: str, value: str) -> None:
        if self.response_headers is None:
            self.response_headers = []
        self.response_headers.append((name, value))

    def add_stream_filter(self, stream_filter: StreamFilter) -> None:
        """Filter this call's stream events after the service-wide filters (steps install per-call ones)."""
        self.stream_filters = (*self.stream_filters, stream_filter)

    def add_answer_filter(self, answer_filter: AnswerFilter) -> None:
        """Filter this call's JSON answer after the service-wide filters."""
        self.answer_filters = (*self.answer_filters, answer_filter)
