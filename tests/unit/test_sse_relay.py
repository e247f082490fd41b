from __future__ import annotations

import msgspec
import pytest

from gateway.engines.errors import EngineBadResponseError
from gateway.errors import InvalidRequestError
from gateway.services.call import Call
from gateway.services.sse import HIDE_ALL_USAGE, HIDE_RUNNING_USAGE, HideUsage, SseRelay, ask_for_running_usage
from tests.unit.calls import make_call

CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
DONE = b"data: [DONE]\n\n"


def relay_for(
    *, keep_usage_chunk: bool, keep_running_usage: bool = False, request_id: str | None = None,
    max_event_bytes: int = 1024 * 1024,
) -> SseRelay:
    """The relay of a call whose client asked for the final usage chunk, and for running usage, or not."""
    if not keep_usage_chunk:
        filters: tuple[HideUsage, ...] = (HIDE_ALL_USAGE,)
    else:
        filters = () if keep_running_usage else (HIDE_RUNNING_USAGE,)
    return SseRelay(filters, request_id=request_id, max_event_bytes=max_event_bytes)


def with_running_usage(body: bytes, *, stream_options_present: bool) -> tuple[bytes, bool]:
    """The body sent to the engine after the stream usage edit, and whether the client asked for running usage."""
    call: Call = make_call(body)
    ask_for_running_usage(call, stream_options_present)
    return call.engine_body(), call.client_running_usage


def running(completion: int, prompt: int = 3) -> bytes:
    """CHUNK as vLLM sends it with `continuous_usage_stats`: the running usage is its last member."""
    total = prompt + completion
    usage = f'"usage":{{"prompt_tokens":{prompt},"total_tokens":{total},"completion_tokens":{completion}}}'
    return CHUNK.replace(b"]}\n\n", b"]," + usage.encode() + b"}\n\n")


def test_events_split_across_reads_are_passed_whole_and_in_order() -> None:
    relay = relay_for(keep_usage_chunk=True)
    stream = CHUNK + CHUNK + USAGE + DONE
    out = b"".join(relay.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + relay.finish()
    assert out == stream
    assert relay.saw_done and relay.usage is not None and relay.usage.completion_tokens == 2


def test_a_separator_split_between_two_reads_ends_the_event() -> None:
    relay = relay_for(keep_usage_chunk=True)
    assert relay.feed(CHUNK[:-1]) == b""
    assert relay.feed(b"\n" + DONE) == CHUNK + DONE


def test_usage_chunk_is_held_back_when_the_client_did_not_ask() -> None:
    relay = relay_for(keep_usage_chunk=False)
    assert relay.feed(CHUNK + USAGE + DONE) == CHUNK + DONE
    assert relay.usage is not None and relay.usage.prompt_tokens == 3


def test_content_mentioning_usage_is_not_mistaken_for_usage() -> None:
    relay = relay_for(keep_usage_chunk=False)
    tricky = b'data: {"choices":[{"index":0,"delta":{"content":"the \\"usage\\": field"}}]}\n\n'
    assert relay.feed(tricky) == tricky and relay.usage is None


def test_running_usage_is_cut_out_byte_for_byte_for_a_client_that_did_not_ask_for_it() -> None:
    relay = relay_for(keep_usage_chunk=False)
    assert relay.feed(running(0) + running(1) + running(2)) == CHUNK * 3
    usage = relay.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 2)


def test_running_usage_in_another_layout_is_removed_by_decoding() -> None:
    relay = relay_for(keep_usage_chunk=True)
    spaced = b'data: {"usage": {"prompt_tokens": 4, "completion_tokens": 1}, "choices": [{"index": 0,' \
             b' "x": 1e999}]}\n\n'
    out = relay.feed(spaced)
    assert out == b'data: {"choices":[{"index": 0, "x": 1e999}]}\n\n'
    assert relay.usage is not None and relay.usage.completion_tokens == 1


def test_a_client_that_asked_for_usage_gets_the_final_chunk_only_or_every_chunk_when_it_asked() -> None:
    final_only = relay_for(keep_usage_chunk=True)
    assert final_only.feed(running(1) + USAGE + DONE) == CHUNK + USAGE + DONE
    every = relay_for(keep_usage_chunk=True, keep_running_usage=True)
    assert every.feed(running(1) + USAGE + DONE) == running(1) + USAGE + DONE


def test_metered_usage_is_the_last_running_count_else_the_events_relayed() -> None:
    cut_short = relay_for(keep_usage_chunk=False)
    cut_short.feed(running(0, prompt=7) + running(1, prompt=7) + running(2, prompt=7))
    usage = cut_short.metered_usage()
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 2)
    no_usage = relay_for(keep_usage_chunk=False)
    no_usage.feed(CHUNK * 4)
    usage = no_usage.metered_usage()
    assert (usage.prompt_tokens, usage.completion_tokens) == (0, 4)


def test_a_server_error_event_is_neutral_for_the_tenant_and_a_client_error_is_passed_on() -> None:
    relay = relay_for(keep_usage_chunk=False, request_id="req_1")
    out = relay.feed(b'data: {"error": {"message": "CUDA boom at /srv", "type": "InternalServerError", "code": 500}}'
                     b"\n\n" + DONE)
    first = out.split(b"\n\n")[0].removeprefix(b"data: ")
    assert msgspec.json.decode(first) == {"error": {
        "message": "The engine failed to process the request (request id req_1).", "type": "server_error",
        "param": None, "code": "engine_error"}}
    assert relay.error is not None and relay.error_status == 502
    relay = relay_for(keep_usage_chunk=False)
    out = relay.feed(b'data: {"error": {"message": "prompt too long", "type": "BadRequestError", "code": 400}}\n\n')
    assert msgspec.json.decode(out.strip().removeprefix(b"data: "))["error"]["message"] == "prompt too long"
    assert relay.error_status == 400


def test_an_event_that_never_ends_is_capped() -> None:
    relay = relay_for(keep_usage_chunk=False, max_event_bytes=64 * 1024)
    piece = b"data: " + b"x" * 1000
    for _ in range(65):
        assert relay.feed(piece) == b""
    with pytest.raises(EngineBadResponseError, match="larger than 65536 bytes"):
        relay.feed(piece)
    # within the cap, an event sent in many pieces is relayed whole, once
    relay = relay_for(keep_usage_chunk=False, max_event_bytes=64 * 1024)
    event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"y" * 50_000 + b'"}}]}'
    out = b"".join(relay.feed(event[i : i + 100]) for i in range(0, len(event), 100)) + relay.feed(b"\n\n")
    assert out == event + b"\n\n"


def test_running_usage_is_asked_for_by_a_splice_when_the_client_sent_no_stream_options() -> None:
    body = b' {"model":"m","stream":true,"messages":[]}'
    spliced, client_asked = with_running_usage(body, stream_options_present=False)
    assert msgspec.json.decode(spliced)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert spliced.endswith(b'"model":"m","stream":true,"messages":[]}')  # the rest is untouched
    assert client_asked is False


@pytest.mark.parametrize(
    ("options", "asked"),
    [
        (b"{}", False),
        (b"null", False),
        (b'{"include_usage":true}', False),
        (b'{"include_usage": true, "continuous_usage_stats": true, "other": [1e999]}', True),
    ],
)
def test_present_stream_options_are_merged_without_decoding_the_rest_of_the_body(options: bytes, asked: bool) -> None:
    body = b'{"model":"m","temperature":1e999,"stream":true,"stream_options":' + options + b',"n":1}'
    merged, client_asked = with_running_usage(body, stream_options_present=True)
    assert client_asked is asked
    assert b'"temperature":1e999' in merged
    top = msgspec.json.decode(merged, type=dict[str, msgspec.Raw])
    sent = msgspec.json.decode(top["stream_options"], type=dict[str, msgspec.Raw])
    assert bytes(sent["include_usage"]) == bytes(sent["continuous_usage_stats"]) == b"true"
    if b"other" in options:
        assert bytes(sent["other"]) == b"[1e999]"


def test_a_stream_option_that_is_no_boolean_is_a_400_with_its_param() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":"yes"}}'
    with pytest.raises(InvalidRequestError) as exc:
        with_running_usage(body, stream_options_present=True)
    assert exc.value.param == "stream_options.continuous_usage_stats"
