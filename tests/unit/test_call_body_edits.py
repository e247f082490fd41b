"""``Call.engine_body``: fields known to be absent are spliced in after the opening brace, the client's bytes
following unchanged, whatever the body's size (a large body is joined as a view, a small one as a slice)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from gateway.auth.principal import Principal
from gateway.services.call import Call

SALT = b'"0123456789abcdef0123456789abcdef"'


def call_with(body: bytes) -> Call:
    call = Call(Principal(uuid.uuid4(), "t", uuid.uuid4(), "user"), "chat.completions", "req", 0.0, datetime.now(UTC))
    call.body = body
    return call


@pytest.mark.parametrize("content_bytes", [10, 4090, 4096, 200_000])
@pytest.mark.parametrize("lead", [b"", b" \n\t"])
def test_absent_fields_are_spliced_in_front_of_the_clients_bytes(content_bytes: int, lead: bytes) -> None:
    rest = msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "x" * content_bytes}]})
    body = lead + rest
    call = call_with(body)
    call.set_field("cache_salt", SALT, absent=True)
    call.set_field("stream_options", b'{"include_usage":true}', absent=True)
    sent = call.engine_body()
    assert type(sent) is bytes
    assert sent == lead + b'{"cache_salt":' + SALT + b',"stream_options":{"include_usage":true},' + rest[1:]
    assert msgspec.json.decode(sent) == {
        **msgspec.json.decode(rest), "cache_salt": SALT[1:-1].decode(), "stream_options": {"include_usage": True}
    }


def test_a_body_without_edits_is_sent_as_it_came() -> None:
    body = b'{"model": "m", "messages": []}'
    assert call_with(body).engine_body() is body
