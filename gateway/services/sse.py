"""Relaying an engine's server-sent events: usage capture, error normalisation, nothing buffered whole.

Each complete event (``data: ...`` ended by a blank line) is passed on as soon as it has arrived. The
gateway asks the engine for running usage on every chunk (``stream_options.include_usage`` and
``continuous_usage_stats``, see :func:`ask_for_running_usage`), so the tokens delivered are known whenever
a stream ends. An event mentioning ``"usage"`` is decoded with a small typed decoder (the usage and the
choices kept raw); for a client that did not ask for running usage the usage is cut out of the event's
bytes (a slice, no re-encoding), and the final usage-only chunk is held back from one that did not ask
for usage at all: each client sees the chunks vLLM would have sent it. Other events go on as the same bytes.

A pending (incomplete) event is kept as a list of pieces, joined once when its separator arrives, and
capped at ``max_event_bytes``: past it the stream fails with ``EngineBadResponseError``.
"""

from __future__ import annotations

import logging

import msgspec

from gateway.engines.errors import EngineBadResponseError
from gateway.engines.normalize import ErrorInfo, parse_stream_error
from gateway.errors import InvalidRequestError

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

    ``keep_usage_chunk``: the client asked for usage (``include_usage``), so the final usage-only chunk
    is passed on. ``keep_running_usage``: it asked for usage on every chunk too (``continuous_usage_stats``).
    """

    def __init__(
        self, *, keep_usage_chunk: bool, keep_running_usage: bool = False,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, request_id: str | None = None,
    ) -> None:
        self._keep_usage_chunk = keep_usage_chunk
        self._keep_running_usage = keep_running_usage and keep_usage_chunk
        self._max_event_bytes = max_event_bytes
        self._request_id = request_id
        self._parts: list[bytes] = []
        self._pending = 0
        self._usage: bytes | msgspec.Raw | None = None  # the latest usage object, as the engine wrote it
        self.relayed = 0  # events with choices passed to the client: the count when the engine sends no usage
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
            return event + _SEP
        if not event.startswith(b"data:"):
            return event + _SEP  # a comment or another field: passed on as it is
        at = event.rfind(_USAGE_KEY)
        if at > 0:
            kept = self._usage_event(event, at)
            if kept is not None:
                return kept
        if b'"error"' in event:
            info = parse_stream_error(event[5:].strip())
            if info is not None:
                self.error = info = self._public_error(info)
                return b"data: " + msgspec.json.encode(info.to_openai()) + _SEP
        self.relayed += 1
        return event + _SEP

    def _usage_event(self, event: bytes, at: int) -> bytes | None:
        """Take the usage of a chunk; the bytes to send for it, or None when it carries no usage.

        Fast path, no decoding: vLLM writes compact JSON with ``"usage"`` a flat object and the last
        member, right after ``"choices"``; the counts are kept as bytes and decoded only when metered.
        Any other layout is decoded (top level only, values raw).
        """
        if event.endswith(b"}}") and event[at - 1] == 0x2C:  # `,"usage":{...}}`
            usage = event[at + 8 : -1]
            if usage.count(b"{") == 1 and usage.count(b"}") == 1 and b"[" not in usage:
                if event[at - 13 : at - 1] == b'"choices":[]':  # the final usage-only chunk
                    self._usage = usage
                    return event + _SEP if self._keep_usage_chunk else b""
                if event[at - 3 : at - 1] == b"}]":  # after a non-empty "choices"
                    self._usage = usage
                    self.relayed += 1
                    return event + _SEP if self._keep_running_usage else event[: at - 1] + _CLOSE_SEP
        return self._decoded_usage_event(event)

    def _decoded_usage_event(self, event: bytes) -> bytes | None:
        try:
            chunk = _decode_chunk(memoryview(event)[5:])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        usage = chunk.usage
        if not usage or usage == _NULL:
            return None
        self._usage = usage
        if chunk.choices == []:  # the final usage-only chunk
            return event + _SEP if self._keep_usage_chunk else b""
        self.relayed += 1
        if self._keep_running_usage:
            return event + _SEP
        return _without_usage(event, usage) + _SEP

    def _public_error(self, info: ErrorInfo) -> ErrorInfo:
        """An engine's own failure is logged and shown to the tenant in neutral words; the tenant's errors
        (invalid request, too long a prompt, ...) are passed on as the engine worded them."""
        if info.type != "server_error":
            return info
        log.warning("engine error inside a stream: %s", info.message)
        return ErrorInfo(message=engine_failed_message(self._request_id), type="server_error", code="engine_error")


def engine_failed_message(request_id: str | None) -> str:
    return f"The engine failed to process the request (request id {request_id})."


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


_ENGINE_OPTIONS = b'"stream_options":{"include_usage":true,"continuous_usage_stats":true},'


def ask_for_running_usage(body: bytes, stream_options_present: bool) -> tuple[bytes, bool]:
    """The body to send for a stream: ``stream_options`` asks for usage on every chunk. Also returns whether
    the client itself asked for that (``include_usage`` and ``continuous_usage_stats`` both true).

    An absent field is spliced in without touching the rest. A present one is merged: only the top level is
    decoded, its values kept as raw bytes (a ``1e999`` elsewhere in the body goes on as it came), and the
    client's other stream options are kept.
    """
    if not stream_options_present:
        start = body.find(b"{")
        return body[: start + 1] + _ENGINE_OPTIONS + body[start + 1 :], False
    doc = _decode_top(body)
    options = _decode_options(doc.get("stream_options", _NULL)) or {}
    continuous = options.get("continuous_usage_stats", _NULL)
    if continuous not in _BOOL_OR_NULL:
        raise InvalidRequestError(
            "'stream_options.continuous_usage_stats' must be a boolean.",
            param="stream_options.continuous_usage_stats", code="invalid_value",
        )
    running = options.get("include_usage") == _TRUE and continuous == _TRUE
    options["include_usage"] = options["continuous_usage_stats"] = _TRUE
    doc["stream_options"] = msgspec.Raw(msgspec.json.encode(options))
    return msgspec.json.encode(doc), running
