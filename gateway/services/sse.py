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
from gateway.errors import InvalidRequestError, status_of_stream_error
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
        # The usage filter, when first, is applied with what the relay found of each event's usage (one parse
        # for both); the other filters see each event as bytes.
        self._hide = filters[0] if filters and isinstance(filters[0], HideUsage) else None
        self._rest = filters if self._hide is None else filters[1:]  # no tuple made when it is the only one
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
        return status_of_stream_error(self.error.type if self.error is not None else "")

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
        if at > 0:
            kind = _usage_layout(event, at, len(event))
            if kind:
                self._usage = event[at + 8 : -1]
                if kind == _WITH_CHOICES:
                    self.relayed += 1
            else:
                kind = self._take_decoded_usage(event)
            if kind:  # the usage filter, when there is one, is told what was found here
                out = event + _SEP if self._hide is None else self._hide.cut(event, at, kind, self._usage)
                return self._filtered(out) if self._rest else out
        if b'"error"' in event:
            info = parse_stream_error(event[5:].strip())
            if info is not None:
                self.error = info = self._public_error(info)
                return b"data: " + msgspec.json.encode(info.to_openai()) + _SEP
        self.relayed += 1
        return self._filtered(event + _SEP) if self._rest else event + _SEP

    def _filtered(self, out: bytes) -> bytes:
        for f in self._rest:
            if not out:
                break
            out = f.event(out)
        return out

    def _take_decoded_usage(self, event: bytes) -> int:
        """Keep the usage of an event in another layout than vLLM's (counting it when it has choices)."""
        kind, usage = _decoded_usage(event)
        if kind:
            self._usage = usage
            if kind == _DECODED_WITH_CHOICES:
                self.relayed += 1
        return kind

    def _public_error(self, info: ErrorInfo) -> ErrorInfo:
        """An engine's own failure is logged and shown to the tenant in neutral words; the tenant's errors
        (invalid request, too long a prompt, ...) are passed on as the engine worded them."""
        if info.type != "server_error":
            return info
        log.warning("engine error inside a stream: %s", info.message)
        return ErrorInfo(message=engine_failed_message(self._request_id), type="server_error", code="engine_error")


def engine_failed_message(request_id: str | None) -> str:
    return f"The engine failed to process the request (request id {request_id})."


_NO_USAGE = 0
_USAGE_ONLY = 1  # the final chunk: `"choices":[],"usage":{...}}`
_WITH_CHOICES = 2  # a chunk with running usage after a non-empty `"choices"`
_DECODED_USAGE_ONLY = 3  # the same two in any other layout (found by decoding the top level)
_DECODED_WITH_CHOICES = 4


def _usage_layout(event: bytes, at: int, end: int) -> int:
    """Where vLLM puts usage (compact JSON, ``"usage"`` a flat object and the last member, right after
    ``"choices"``): ``_USAGE_ONLY``, ``_WITH_CHOICES``, or ``_NO_USAGE`` for any other layout (then decode).
    ``at``: where ``"usage":`` begins; ``end``: where the event's JSON ends."""
    if event.endswith(b"}}", 0, end) and event[at - 1] == 0x2C:  # `,"usage":{...}}` (no slice copied)
        start, stop = at + 8, end - 1
        if event.count(b"{", start, stop) == 1 and event.count(b"}", start, stop) == 1 and \
                event.find(b"[", start, stop) < 0:
            if event.startswith(b'"choices":[],', at - 13):
                return _USAGE_ONLY
            if event.startswith(b"}],", at - 3):
                return _WITH_CHOICES
    return _NO_USAGE


def _decoded_usage(event: bytes) -> tuple[int, msgspec.Raw | None]:
    """The usage of an event in another layout, by decoding its top level: its kind and the raw usage."""
    try:
        chunk = _decode_chunk(memoryview(event)[5:])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _NO_USAGE, None
    usage = chunk.usage
    if not usage or usage == _NULL:
        return _NO_USAGE, None
    return (_DECODED_USAGE_ONLY if chunk.choices == [] else _DECODED_WITH_CHOICES), usage


class HideUsage:
    """The stream filter that takes out the usage the gateway asked for and the client did not.

    ``keep_final``: the client asked for the final usage-only chunk (``include_usage``) but not for usage
    on every chunk. Stateless: the two instances serve every call. As the first filter of a call the relay
    applies it through :meth:`cut`, with the usage it already found in the event (so each event is looked
    at once); :meth:`event` is the same filter on its own.
    """

    __slots__ = ("_keep_final",)

    def __init__(self, *, keep_final: bool) -> None:
        self._keep_final = keep_final

    def event(self, event: bytes) -> bytes:
        at = event.rfind(_USAGE_KEY)
        if at <= 0:
            return event
        body = event[:-2] if event.endswith(_SEP) else event
        kind = _usage_layout(body, at, len(body))
        usage = None
        if not kind:
            kind, usage = _decoded_usage(body)
        return self.cut(body, at, kind, usage) if kind else event

    def cut(self, event: bytes, at: int, kind: int, usage: bytes | msgspec.Raw | None) -> bytes:
        """The bytes to send (blank line included) for ``event`` (without its blank line) whose usage
        begins at ``at``, laid out as ``kind``; ``usage``: the usage as decoded, for the decoded kinds."""
        if kind == _WITH_CHOICES:
            return event[: at - 1] + _CLOSE_SEP
        if kind in (_USAGE_ONLY, _DECODED_USAGE_ONLY):
            return event + _SEP if self._keep_final else b""
        assert isinstance(usage, msgspec.Raw)
        return _without_usage(event, usage) + _SEP

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
