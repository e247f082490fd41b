"""Relaying an engine's server-sent events: framing, usage capture, error normalisation, stream filters.

Each complete event (``data: ...`` ended by a blank line) is passed on as soon as it has arrived. The
gateway asks the engine for running usage on every chunk (``stream_options.include_usage`` and
``continuous_usage_stats``, a body edit: see :func:`ask_for_running_usage`), so the tokens delivered are
known whenever a stream ends: the relay takes the latest usage of every event that carries one (kept as
bytes, decoded only when metered). The usage the client did not ask for is then taken out again by a stream
filter, :class:`HideUsage`, the first of the call's filters: the final usage-only chunk is held back from a
client that did not ask for usage, and running usage is cut out of the event's bytes (a slice, no
re-encoding) for one that did not ask for it: each client sees the chunks vLLM would have sent it. Other
events go on as the same bytes, through the call's other filters if it has any.

A pending (incomplete) event is kept as a list of pieces, joined once when its separator arrives, and
capped at ``max_event_bytes``: past it the stream fails with ``EngineBadResponseError``.
"""

from __future__ import annotations

import logging

import msgspec

from gateway.engines.errors import EngineBadResponseError
from gateway.engines.normalize import ErrorInfo, parse_stream_error
from gateway.errors import InvalidRequestError
from gateway.services.call import Call
from gateway.services.pipeline import StreamFilter

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
_DONE = b"data: [DONE]"
_SEP = b"\n\n"
_CLOSE_SEP = b"}\n\n"
_USAGE_KEY = b'"usage":'
_ABSENT = msgspec.Raw()
_NULL = msgspec.Raw(b"null")
_TRUE = msgspec.Raw(b"true")
_BOOL_OR_NULL = (_TRUE, msgspec.Raw(b"false"), _NULL)


class StreamUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int | None = 0


class _UsageChunk(msgspec.Struct):
    usage: msgspec.Raw = _ABSENT
    choices: list[msgspec.Raw] | None = None


_decode_chunk = msgspec.json.Decoder(_UsageChunk).decode
_decode_usage = msgspec.json.Decoder(StreamUsage).decode
_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_options = msgspec.json.Decoder(dict[str, msgspec.Raw] | None).decode


class SseRelay:
    """Feed it the engine's bytes; it returns the bytes to send to the client.

    ``filters``: the call's stream filters, in order (see ``gateway.services.pipeline``).
    """

    def __init__(
        self, filters: tuple[StreamFilter, ...] = (), *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        request_id: str | None = None,
    ) -> None:
        self._filters = filters
        self._max_event_bytes = max_event_bytes
        self._request_id = request_id
        self._parts: list[bytes] = []
        self._pending = 0
        self._usage: bytes | msgspec.Raw | None = None  # the latest usage object, as the engine wrote it
        self.relayed = 0  # events with choices from the engine: the count when the engine sends no usage
        self.error: ErrorInfo | None = None
        self.saw_done = False

    @property
    def error_status(self) -> int:
        if self.error is not None and self.error.type == "invalid_request_error":
            return 400
        return 502

    @property
    def usage(self) -> StreamUsage | None:
        """The engine's latest usage (the running count of the last chunk relayed), None if it sent none."""
        if self._usage is None:
            return None
        try:
            return _decode_usage(self._usage)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    def metered_usage(self) -> StreamUsage:
        """What to meter: the engine's latest usage, else one completion token per event relayed."""
        usage = self.usage
        return usage if usage is not None else StreamUsage(prompt_tokens=0, completion_tokens=self.relayed)

    def feed(self, data: bytes) -> bytes:
        parts = self._parts
        if parts:
            if _SEP not in data and not (data[:1] == b"\n" and parts[-1][-1:] == b"\n"):
                self._hold(data)
                return b""
            parts.append(data)
            data = b"".join(parts)
            self._parts = []
            self._pending = 0
        *events, rest = data.split(_SEP)
        if rest:
            self._hold(rest)
        if len(events) == 1:
            return self._event(events[0])
        return b"".join([self._event(ev) for ev in events if ev])

    def _hold(self, piece: bytes) -> None:
        """Keep a piece of an event whose end has not arrived; the whole event is bounded."""
        self._parts.append(piece)
        self._pending += len(piece)
        if self._pending > self._max_event_bytes:
            self._parts = []
            self._pending = 0
            raise EngineBadResponseError(
                f"The engine sent a stream event larger than {self._max_event_bytes} bytes."
            )

    def finish(self) -> bytes:
        """Whatever the engine sent after its last blank line (a final event without one)."""
        rest = b"".join(self._parts).strip()
        self._parts = []
        self._pending = 0
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        if not event:
            return b""
        if event.startswith(_DONE):
            self.saw_done = True
            if self._filters:
                return b"".join([f.before_done() for f in self._filters]) + event + _SEP
            return event + _SEP
        if not event.startswith(b"data:"):
            return event + _SEP  # a comment or another field: passed on as it is
        at = event.rfind(_USAGE_KEY)
        if at <= 0 or not self._take_usage(event, at):
            if b'"error"' in event:
                info = parse_stream_error(event[5:].strip())
                if info is not None:
                    self.error = info = self._public_error(info)
                    return b"data: " + msgspec.json.encode(info.to_openai()) + _SEP
            self.relayed += 1
        out = event + _SEP
        for f in self._filters:
            out = f.event(out)
            if not out:
                return b""
        return out

    def _take_usage(self, event: bytes, at: int) -> bool:
        """Keep the usage of an event that carries one (counting it when it has choices); False when none."""
        end = len(event)
        kind = _usage_layout(event, at, end)
        if kind:
            self._usage = event[at + 8 : end - 1]
            if kind == _WITH_CHOICES:
                self.relayed += 1
            return True
        try:
            chunk = _decode_chunk(memoryview(event)[5:])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        usage = chunk.usage
        if not usage or usage == _NULL:
            return False
        self._usage = usage
        if chunk.choices != []:
            self.relayed += 1
        return True

    def _public_error(self, info: ErrorInfo) -> ErrorInfo:
        """An engine's own failure is logged and shown to the tenant in neutral words; the tenant's errors
        (invalid request, too long a prompt, ...) are passed on as the engine worded them."""
        if info.type != "server_error":
            return info
        log.warning("engine error inside a stream: %s", info.message)
        return ErrorInfo(message=engine_failed_message(self._request_id), type="server_error", code="engine_error")


def engine_failed_message(request_id: str | None) -> str:
    return f"The engine failed to process the request (request id {request_id})."


_USAGE_ONLY = 1  # the final chunk: `"choices":[],"usage":{...}}`
_WITH_CHOICES = 2  # a chunk with running usage after a non-empty `"choices"`


def _usage_layout(event: bytes, at: int, end: int) -> int:
    """Where vLLM puts usage (compact JSON, ``"usage"`` a flat object and the last member, right after
    ``"choices"``): ``_USAGE_ONLY``, ``_WITH_CHOICES``, or 0 for any other layout (then decode). ``at``: where
    ``"usage":`` begins; ``end``: where the event's JSON ends."""
    if event[end - 2 : end] == b"}}" and event[at - 1] == 0x2C:  # `,"usage":{...}}`
        usage = event[at + 8 : end - 1]
        if usage.count(b"{") == 1 and usage.count(b"}") == 1 and b"[" not in usage:
            if event[at - 13 : at - 1] == b'"choices":[]':
                return _USAGE_ONLY
            if event[at - 3 : at - 1] == b"}]":
                return _WITH_CHOICES
    return 0


class HideUsage:
    """The stream filter that takes out the usage the gateway asked for and the client did not.

    ``keep_final``: the client asked for the final usage-only chunk (``include_usage``) but not for usage
    on every chunk. Stateless: the two instances serve every call.
    """

    __slots__ = ("_keep_final",)

    def __init__(self, *, keep_final: bool) -> None:
        self._keep_final = keep_final

    def event(self, event: bytes) -> bytes:
        at = event.rfind(_USAGE_KEY)
        if at <= 0:
            return event
        end = len(event) - 2 if event.endswith(_SEP) else len(event)
        kind = _usage_layout(event, at, end)
        if kind == _USAGE_ONLY:
            return event if self._keep_final else b""
        if kind == _WITH_CHOICES:
            return event[: at - 1] + _CLOSE_SEP
        try:
            chunk = _decode_chunk(memoryview(event)[5:])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return event
        usage = chunk.usage
        if not usage or usage == _NULL:
            return event
        if chunk.choices == []:
            return event if self._keep_final else b""
        return _without_usage(event[:end], usage) + _SEP

    def before_done(self) -> bytes:
        return b""


HIDE_ALL_USAGE = HideUsage(keep_final=False)
HIDE_RUNNING_USAGE = HideUsage(keep_final=True)


def usage_filter(call: Call) -> HideUsage | None:
    """The usage filter a stream call needs, if any (after :func:`ask_for_running_usage`)."""
    if not call.wants_usage:
        return HIDE_ALL_USAGE
    return None if call.client_running_usage else HIDE_RUNNING_USAGE


def _without_usage(event: bytes, usage: msgspec.Raw) -> bytes:
    """``event`` without its top-level ``"usage"`` member: cut out of the bytes where vLLM put it (compact,
    after a comma), else by re-encoding the top level (the other values stay as raw bytes)."""
    member = b'"usage":' + usage
    at = event.rfind(member)
    if at > 0 and event[at - 1] == 0x2C:  # ","
        return event[: at - 1] + event[at + len(member) :]
    doc = _decode_top(memoryview(event)[5:])
    doc.pop("usage", None)
    return b"data: " + msgspec.json.encode(doc)


_ENGINE_OPTIONS = b'{"include_usage":true,"continuous_usage_stats":true}'


def ask_for_running_usage(call: Call, stream_options_present: bool) -> None:
    """The body edit of every stream: ``stream_options`` asks the engine for usage on every chunk. Sets
    ``call.client_running_usage`` (the client asked for that itself: ``include_usage`` and
    ``continuous_usage_stats`` both true).

    An absent field is spliced in without touching the rest. A present one is merged: the client's other
    stream options are kept (only the top level is decoded, see ``Call.engine_body``).
    """
    if not stream_options_present:
        call.set_field("stream_options", _ENGINE_OPTIONS, absent=True)
        call.client_running_usage = False
        return
    options = _decode_options(call.top_level().get("stream_options", _NULL)) or {}
    continuous = options.get("continuous_usage_stats", _NULL)
    if continuous not in _BOOL_OR_NULL:
        raise InvalidRequestError(
            "'stream_options.continuous_usage_stats' must be a boolean.",
            param="stream_options.continuous_usage_stats", code="invalid_value",
        )
    call.client_running_usage = options.get("include_usage") == _TRUE and continuous == _TRUE
    options["include_usage"] = options["continuous_usage_stats"] = _TRUE
    call.set_field("stream_options", msgspec.json.encode(options))
