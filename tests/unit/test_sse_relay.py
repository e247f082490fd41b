from __future__ import annotations

import msgspec

from gateway.services.sse import SseRelay, inject_include_usage

CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_events_split_across_reads_are_passed_whole_and_in_order() -> None:
    relay = SseRelay(keep_usage_chunk=True)
    stream = CHUNK + CHUNK + USAGE + DONE
    out = b"".join(relay.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + relay.finish()
    assert out == stream
    assert relay.saw_done and relay.usage is not None and relay.usage.completion_tokens == 2


def test_usage_chunk_is_held_back_when_the_client_did_not_ask() -> None:
    relay = SseRelay(keep_usage_chunk=False)
    assert relay.feed(CHUNK + USAGE + DONE) == CHUNK + DONE
    assert relay.usage is not None and relay.usage.prompt_tokens == 3


def test_content_mentioning_usage_is_not_mistaken_for_usage() -> None:
    relay = SseRelay(keep_usage_chunk=False)
    tricky = b'data: {"choices":[{"index":0,"delta":{"content":"the \\"usage\\": field"}}]}\n\n'
    assert relay.feed(tricky) == tricky and relay.usage is None


def test_error_event_is_normalized() -> None:
    relay = SseRelay(keep_usage_chunk=False)
    out = relay.feed(b'data: {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}\n\n' + DONE)
    first = out.split(b"\n\n")[0].removeprefix(b"data: ")
    assert msgspec.json.decode(first) == {"error": {"message": "boom", "type": "server_error", "param": None,
                                                    "code": None}}
    assert relay.error is not None and relay.error_status == 502


def test_include_usage_is_spliced_or_merged() -> None:
    body = b' {"model":"m","stream":true,"messages":[]}'
    spliced = inject_include_usage(body, stream_options_present=False)
    assert msgspec.json.decode(spliced)["stream_options"] == {"include_usage": True}
    assert spliced.endswith(b'"model":"m","stream":true,"messages":[]}')  # the rest is untouched
    merged = inject_include_usage(b'{"model":"m","stream_options":{"continuous_usage_stats":true}}', True)
    assert msgspec.json.decode(merged)["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    nulled = inject_include_usage(b'{"model":"m","stream_options":null}', True)
    assert msgspec.json.decode(nulled)["stream_options"] == {"include_usage": True}
