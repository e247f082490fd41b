"""Relaying an engine's server-sent events: usage capture, error normalisation, nothing buffered whole.

Each complete event (``data: ...`` ended by a blank line) is passed on as soon as it has arrived. Only
events that mention ``"usage"`` or ``"error"`` are decoded; the rest are forwarded as the same bytes.
"""

from __future__ import annotations

import msgspec

from gateway.engines.normalize import ErrorInfo, parse_stream_error

_DONE = b"data: [DONE]"
_SEP = b"\n\n"


class StreamUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int | None = 0


class _UsageChunk(msgspec.Struct):
    usage: StreamUsage | None = None
    choices: list[msgspec.Raw] | None = None


_decode_chunk = msgspec.json.Decoder(_UsageChunk).decode


class SseRelay:
    """Feed it the engine's bytes; it returns the bytes to send to the client."""

    def __init__(self, *, keep_usage_chunk: bool) -> None:
        self._keep_usage_chunk = keep_usage_chunk
        self._buffer = b""
        self.usage: StreamUsage | None = None
        self.error: ErrorInfo | None = None
        self.saw_done = False

    @property
    def error_status(self) -> int:
        if self.error is not None and self.error.type == "invalid_request_error":
            return 400
        return 502

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        if _SEP not in buffer:
            self._buffer = buffer
            return b""
        *events, self._buffer = buffer.split(_SEP)
        out = [self._event(ev) for ev in events if ev]
        return b"".join(out)

    def finish(self) -> bytes:
        """Whatever the engine sent after its last blank line (a final event without one)."""
        rest, self._buffer = self._buffer.strip(), b""
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        if event.startswith(_DONE):
            self.saw_done = True
            return event + _SEP
        payload = event[5:].strip() if event.startswith(b"data:") else b""
        if b'"usage"' in payload and self._take_usage(payload):
            return b""
        if b'"error"' in payload:
            info = parse_stream_error(payload)
            if info is not None:
                self.error = info
                return b"data: " + msgspec.json.encode(info.to_openai()) + _SEP
        return event + _SEP

    def _take_usage(self, payload: bytes) -> bool:
        """Record the usage in this chunk; True when the chunk must be held back from the client."""
        try:
            chunk = _decode_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        if chunk.usage is not None:
            self.usage = chunk.usage
        return not self._keep_usage_chunk and chunk.usage is not None and chunk.choices == []


def inject_include_usage(body: bytes, stream_options_present: bool) -> bytes:
    """Ask the engine for the usage chunk. An absent field is spliced in without re-encoding the body."""
    if not stream_options_present:
        start = body.find(b"{")
        return body[: start + 1] + b'"stream_options":{"include_usage":true},' + body[start + 1 :]
    doc = msgspec.json.decode(body)
    options = doc.get("stream_options")
    doc["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return msgspec.json.encode(doc)
