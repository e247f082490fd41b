"""observability.logging and observability.context: JSON lines, request ids, redaction."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from observability.context import (
    get_request_id,
    is_valid_request_id,
    new_request_id,
    reset_request_id,
    set_request_id,
)
from observability.logging import JsonFormatter, TextFormatter, configure_logging, redact

TENANT_KEY = "sk-tg-AbCdEf123456-" + "x9" * 20
ADMIN_KEY = "sk-tgadmin-" + "Q" * 52


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger whose JSON lines land in a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.observability.capture")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_shape(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("hello %s", "world", extra={"tenant": "acme", "tokens": 12, "ratio": 0.5, "tags": ("a", "b")})
    [line] = lines(buffer)
    assert list(line)[:4] == ["ts", "level", "logger", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert line["level"] == "info"
    assert line["logger"] == "tests.observability.capture"
    assert line["message"] == "hello world"
    assert line["tenant"] == "acme"
    assert line["tokens"] == 12
    assert line["ratio"] == 0.5
    assert line["tags"] == ["a", "b"]
    assert "request_id" not in line
    assert "exception" not in line


def test_uvicorns_coloured_copy_of_the_message_is_left_out(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("Uvicorn running on %s", "http://x", extra={"color_message": "Uvicorn running on \x1b[1m%s\x1b[0m"})
    [line] = lines(buffer)
    assert line["message"] == "Uvicorn running on http://x"
    assert "color_message" not in line


def test_request_id_inside_context_only(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    token = set_request_id("req_abc")
    try:
        assert get_request_id() == "req_abc"
        logger.warning("inside")
    finally:
        reset_request_id(token)
    assert get_request_id() is None
    logger.warning("outside")
    inside, outside = lines(buffer)
    assert inside["request_id"] == "req_abc"
    assert inside["level"] == "warning"
    assert "request_id" not in outside


def test_explicit_request_id_extra_wins(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("x", extra={"request_id": "req_explicit"})
    assert lines(buffer)[0]["request_id"] == "req_explicit"


def test_redacts_keys_in_message_and_extras(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("auth with %s failed; header Authorization: Bearer %s", TENANT_KEY, ADMIN_KEY)
    logger.info(
        "request",
        extra={
            "key": TENANT_KEY,
            "authorization": "Bearer opaque-token",
            "headers": {"Authorization": "Basic dXNlcjpwYXNz", "Content-Type": "application/json"},
            "raw_headers": [(b"authorization", b"Bearer zzz"), (b"host", b"gw")],
            "nested": [{"note": f"key={TENANT_KEY}"}],
            "tenant": "acme",
        },
    )
    output = buffer.getvalue()
    for secret in (TENANT_KEY, ADMIN_KEY, "opaque-token", "dXNlcjpwYXNz", "zzz"):
        assert secret not in output
    first, second = lines(buffer)
    assert first["message"] == "auth with [REDACTED] failed; header Authorization: [REDACTED]"
    assert second["key"] == "[REDACTED]"
    assert second["authorization"] == "[REDACTED]"
    assert second["headers"] == {"Authorization": "[REDACTED]", "Content-Type": "application/json"}
    assert second["raw_headers"] == [["authorization", "[REDACTED]"], ["host", "gw"]]
    assert second["nested"] == [{"note": "key=[REDACTED]"}]
    assert second["tenant"] == "acme"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {TENANT_KEY}.", "key [REDACTED]."),
        ("{'authorization': 'Bearer abc.def'}", "{'authorization': '[REDACTED]'}"),
        ('"Authorization":"sk-tg-x"', '"Authorization":"[REDACTED]"'),
        ("curl -H 'Authorization: Bearer tok_123' url", "curl -H 'Authorization: [REDACTED]' url"),
        ("sent bearer abc123==", "sent bearer [REDACTED]"),
        ("nothing secret, sk-other-key", "nothing secret, sk-other-key"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_exception_rendering(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    try:
        raise ValueError(f"bad key {TENANT_KEY}")
    except ValueError:
        logger.exception("it broke")
    [line] = lines(buffer)
    assert line["level"] == "error"
    assert line["message"] == "it broke"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad key [REDACTED]" in line["exception"]
    assert TENANT_KEY not in buffer.getvalue()


class Unserialisable:
    def __str__(self) -> str:
        return f"<thing {TENANT_KEY}>"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_unserialisable_extras_become_strings(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    tenant = UUID("12345678-1234-5678-1234-567812345678")
    logger.info(
        "x",
        extra={
            "obj": Unserialisable(),
            "broken": Unprintable(),
            "tenant_id": tenant,
            "big": 10**30,
            "m": {1: "a"},
        },
    )
    [line] = lines(buffer)
    assert line["obj"] == "<thing [REDACTED]>"
    assert line["broken"] == "<unprintable Unprintable>"
    assert line["tenant_id"] == str(tenant)
    assert line["m"] == {"1": "a"}
    assert int(line["big"]) == 10**30


def test_text_format_redacts_and_names_request() -> None:
    record = logging.LogRecord("gw", logging.INFO, __file__, 1, "key %s", (TENANT_KEY,), None)
    record.authorization = "Bearer t"
    token = set_request_id("req_text")
    try:
        text = TextFormatter().format(record)
    finally:
        reset_request_id(token)
    assert "[req_text] key [REDACTED]" in text
    assert "authorization='[REDACTED]'" in text
    assert TENANT_KEY not in text


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in ("aiohttp.access", "psycopg.pool", "httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_is_idempotent() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("debug", "json", stream=second)
    configure_logging("info", "json", stream=second)
    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h).__name__ == "_TenantgateHandler"]
    assert len(ours) == 1
    assert root.level == logging.INFO
    assert logging.getLogger("psycopg.pool").level == logging.ERROR  # the gateway's own pool logs outages once
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    logging.getLogger("tests.observability.root").info("once", extra={"n": 1})
    assert first.getvalue() == ""
    [line] = [json.loads(raw) for raw in second.getvalue().splitlines() if '"once"' in raw]
    assert line["n"] == 1


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")


def test_new_request_ids_are_unique_and_valid() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", rid) and is_valid_request_id(rid) for rid in ids)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abc", True),
        ("0b6c7e1e-4a52-4c1f-9a39-0e1b2c3d4e5f", True),
        ("trace:span.1_2-3", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("has space", False),
        ("new\nline", False),
        ('quote"d', False),
        ("ünïcode", False),
        ("abc\n", False),
    ],
)
def test_is_valid_request_id(value: str, valid: bool) -> None:
    assert is_valid_request_id(value) is valid
