"""Bodies of millions of tiny items are refused before decoding; every form OpenAI accepts still decodes."""

from __future__ import annotations

import msgspec
import pytest

from gateway.errors import InvalidRequestError
from gateway.openai.decode import BodyLimits, check_completion, check_embedding, decode_json_body
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

LIMITS = BodyLimits(max_containers=100_000, max_items=1_000_000, max_input_items=2048)


def completion(prompt: bytes) -> bytes:
    return b'{"model": "m", "prompt": ' + prompt + b"}"


def decode_completion(body: bytes, limits: BodyLimits = LIMITS) -> CompletionRequest:
    req = decode_json_body(body, CompletionRequest, limits)
    check_completion(req, limits)
    return req


@pytest.mark.parametrize(
    "body",
    [
        # The probe's body: a 7.6 MiB prompt of 2 million one-token lists.
        completion(b"[" + b",".join([b"[1]"] * 2_000_000) + b"]"),
        completion(b"[" + b",".join([b'"a"'] * 1_500_000) + b"]"),
        completion(b"[" + b",".join([b"7"] * 1_500_000) + b"]"),
        b'{"model": "m", "messages": [' + b",".join([b"{}"] * 200_000) + b"]}",
    ],
    ids=["two-million-token-lists", "strings", "token-ids", "empty-messages"],
)
def test_bodies_of_millions_of_items_are_refused_before_decoding(body: bytes) -> None:
    type_ = ChatCompletionRequest if b"messages" in body else CompletionRequest
    with pytest.raises(InvalidRequestError) as caught:
        decode_json_body(body, type_, LIMITS)
    assert caught.value.code == "too_many_items"
    assert caught.value.status == 400


def test_limits_are_settings() -> None:
    body = completion(b"[[1],[2],[3]]")
    with pytest.raises(InvalidRequestError, match="arrays and objects"):
        decode_json_body(body, CompletionRequest, BodyLimits(max_containers=3))
    with pytest.raises(InvalidRequestError, match="JSON values"):
        decode_json_body(body, CompletionRequest, BodyLimits(max_items=2))
    with pytest.raises(InvalidRequestError, match="more than 2 items") as caught:
        decode_completion(body, BodyLimits(max_input_items=2))
    assert caught.value.param == "prompt"


@pytest.mark.parametrize(
    ("prompt", "items"),
    [
        (b'"once upon a time"', 1),
        (b' [ "a", "b,[{" ] ', 2),
        (b"[1, 2, 3]", 3),
        (b"[[1, 2], [3]]", 2),
        (b"[ ]", 0),
    ],
)
def test_every_form_openai_accepts_still_decodes(prompt: bytes, items: int) -> None:
    req = decode_completion(completion(prompt))
    assert msgspec.json.decode(req.prompt) == msgspec.json.decode(prompt)


def test_a_long_token_prompt_is_one_input_not_many() -> None:
    tokens = b"[" + b",".join([b"11"] * 100_000) + b"]"
    req = decode_completion(completion(tokens))
    assert bytes(req.prompt) == tokens


@pytest.mark.parametrize(
    "prompt",
    [b'["a", 1]', b"[1, [2]]", b"[[1], 2]", b"[[]]", b"[-1]", b"[1.5]", b"[true]", b"null", b"5", b"{}",
     b'[["a"]]'],
)
def test_mixed_or_wrong_forms_are_400_naming_the_param(prompt: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_completion(completion(prompt))
    assert caught.value.param == "prompt"


def test_embedding_input_must_not_be_empty_and_is_bounded() -> None:
    def embed(value: bytes, limits: BodyLimits = LIMITS) -> None:
        req = decode_json_body(b'{"model": "m", "input": ' + value + b"}", EmbeddingRequest, limits)
        check_embedding(req, limits)

    embed(b'["a", "b"]')
    with pytest.raises(InvalidRequestError, match="must not be empty"):
        embed(b"[]")
    with pytest.raises(InvalidRequestError, match="more than 1 items"):
        embed(b'["a", "b"]', BodyLimits(max_input_items=1))
