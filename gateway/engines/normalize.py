"""Turn whatever an engine said on an error into OpenAI's error fields.

vLLM answers `{"error": {"message", "type": "BadRequestError", "param", "code": 400}}` (older versions
a flat `{"object": "error", "message", "type", "param", "code": 400}`); FastAPI itself answers
`{"detail": ...}`; proxies answer text or HTML. OpenAI's `type` is one of a few snake_case names and
its `code` is a string or null, never a number.

Inside a 200 stream vLLM reports an error as one SSE event carrying the same `{"error": {...}}`
object (numeric `code`, e.g. 400 or 500) and then still sends `data: [DONE]`
(`OpenAIServing.create_streaming_error_response`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec

__all__ = [
    "MAX_MESSAGE_CHARS",
    "ErrorInfo",
    "normalize_error_body",
    "parse_stream_error",
    "redact",
    "stream_error_info",
]

MAX_MESSAGE_CHARS = 1000

_OPENAI_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "server_error",
    }
)
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")
_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ufffd]+")
_TAGS = re.compile(r"<[^>]*>")
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ErrorInfo(msgspec.Struct, frozen=True):
    """An error in OpenAI's terms."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The whole OpenAI error body: `{"error": {message, type, param, code}}`."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def redact(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Drop URL credentials (`scheme://user:pass@`), collapse whitespace, truncate."""
    text = _SPACES.sub(" ", _CONTROL.sub("", _USERINFO.sub(r"\1", text))).strip()
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "server_error"


def normalize_error_body(status: int, body: bytes) -> ErrorInfo:
    """OpenAI's error fields for an engine's error answer with HTTP `status` and `body`."""
    try:
        doc: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict):
        inner = doc.get("error")
        if isinstance(inner, dict):
            return _from_fields(status, inner)
        if isinstance(inner, str):
            return _from_fields(status, {"message": inner})
        if "message" in doc:
            return _from_fields(status, doc)
        if "detail" in doc:
            return _from_fields(status, {"message": _detail_text(doc["detail"])})
    text = doc if isinstance(doc, str) else body.decode("utf-8", "replace")
    if text.lstrip().startswith("<"):  # an HTML error page from a proxy
        text = _TAGS.sub(" ", text)
    return _from_fields(status, {"message": text})


def stream_error_info(event: Mapping[str, Any]) -> ErrorInfo | None:
    """The error in a decoded SSE event of a 200 stream, or None when the event is no error.

    vLLM's in-stream error carries its would-be HTTP status as the numeric `code`; without a usable
    one the error is taken as the engine's fault (500).
    """
    inner = event.get("error")
    if isinstance(inner, str):
        inner = {"message": inner}
    if not isinstance(inner, dict):
        if event.get("object") == "error":
            inner = dict(event)
        else:
            return None
    code = inner.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    return _from_fields(status, inner)


def parse_stream_error(data: bytes) -> ErrorInfo | None:
    """Like `stream_error_info` for the raw payload of one `data:` line (cheap when no error)."""
    if b'"error"' not in data:
        return None
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return stream_error_info(doc) if isinstance(doc, dict) else None


def _from_fields(status: int, fields: Mapping[str, Any]) -> ErrorInfo:
    raw_message = fields.get("message")
    message = redact(raw_message if isinstance(raw_message, str) else _detail_text(raw_message))
    if not message:
        message = _default_message(status)
    raw_param = fields.get("param")
    param = raw_param[:200] if isinstance(raw_param, str) and raw_param else None
    raw_type = fields.get("type")
    err_type = raw_type if raw_type in _OPENAI_TYPES else openai_type(status)
    return ErrorInfo(message=message, type=err_type, param=param, code=_code(status, fields, message, param))


def _code(status: int, fields: Mapping[str, Any], message: str, param: str | None) -> str | None:
    raw = fields.get("code")
    if isinstance(raw, str) and _CODE.fullmatch(raw):
        return raw
    if status == 404 and (param == "model" or "model" in message.lower()):
        return "model_not_found"
    if status == 400 and "maximum context length" in message:
        return "context_length_exceeded"
    if status == 429:
        return "rate_limit_exceeded"
    return None


def _detail_text(detail: Any) -> str:
    """FastAPI's `detail`: a string, or a list of validation errors `{loc, msg, type}`."""
    if detail is None:
        return ""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(msgspec.json.encode(detail), "utf-8")


def _default_message(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"The engine answered HTTP {status} ({phrase}) with no usable error message."
