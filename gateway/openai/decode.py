"""Decoding and checking request bodies, with errors that name the offending ``param``.

Cost is bounded before anything is decoded: a body is at most ``max_body_bytes`` (checked while reading it),
and :class:`BodyLimits` bounds how many JSON containers and values it may hold, counted with
``bytes.count`` (C speed, about a millisecond per MiB) as upper bounds (a ``[`` or ``,`` inside a string
counts too). Decoding millions of tiny lists is what costs: 2 million one-token lists took seconds, so such
a body is refused before msgspec builds a single object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from gateway.errors import InvalidRequestError
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, TokenId, TokenIds

T = TypeVar("T")

_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What one JSON body may hold (settings ``max_body_containers``, ``max_body_items``, ``max_input_items``)."""

    max_containers: int = 50_000
    max_items: int = 250_000
    max_input_items: int = 2048


DEFAULT_LIMITS = BodyLimits()


def decode_json_body(body: bytes, type_: type[T], limits: BodyLimits = DEFAULT_LIMITS) -> T:
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.", code="invalid_json")
    _check_counts(body, limits)
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc}).", code="invalid_json"
        ) from None
    except RecursionError:
        raise InvalidRequestError("The JSON body is nested too deeply.", code="invalid_json") from None
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.", code="invalid_json") from None


def _check_counts(body: bytes, limits: BodyLimits) -> None:
    containers = body.count(b"[") + body.count(b"{")
    if containers > limits.max_containers:
        raise InvalidRequestError(
            f"The request body holds too many JSON arrays and objects (at most {limits.max_containers}).",
            code="too_many_items",
        )
    if body.count(b",") >= limits.max_items:
        raise InvalidRequestError(
            f"The request body holds too many JSON values (at most {limits.max_items}).", code="too_many_items"
        )


def _validation_error(text: str, prefix: str = "") -> InvalidRequestError:
    where = _AT.search(text)
    path = prefix + (where.group(1) if where else "")
    message = _AT.sub("", text)
    missing = _MISSING.match(message)
    if missing:
        field = missing.group(1)
        param = f"{path}.{field}" if path else field
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if not path:
        return InvalidRequestError(f"Invalid request body: {message}. Send a JSON object.", code="invalid_json")
    return InvalidRequestError(f"Invalid value for '{path}': {message}.", param=path, code="invalid_type")


def check_chat(req: ChatCompletionRequest, limits: BodyLimits) -> None:
    _check_model(req.model)
    if not req.messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages",
                                  code="empty_array")
    _check_generation(req.max_tokens, req.n)


def check_completion(req: CompletionRequest, limits: BodyLimits) -> None:
    _check_model(req.model)
    _check_generation(req.max_tokens, req.n)
    _check_text_or_tokens(req.prompt, "prompt", limits.max_input_items)


def check_embedding(req: EmbeddingRequest, limits: BodyLimits) -> None:
    _check_model(req.model)
    if _check_text_or_tokens(req.input, "input", limits.max_input_items) == 0:
        raise InvalidRequestError("'input' must not be empty.", param="input", code="empty_array")
    if req.dimensions is not None and req.dimensions < 1:
        raise InvalidRequestError("'dimensions' must be at least 1.", param="dimensions", code="invalid_value")


def _check_model(model: str) -> None:
    if not model.strip():
        raise InvalidRequestError("'model' must not be empty.", param="model", code="invalid_value")


def _check_generation(max_tokens: int | None, n: int | None) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequestError("'max_tokens' must be at least 1.", param="max_tokens", code="invalid_value")
    if n is not None and n < 1:
        raise InvalidRequestError("'n' must be at least 1.", param="n", code="invalid_value")


# OpenAI's four forms of a prompt or input, told apart by the first byte of the value and of its first item.
_FORMS: dict[int, Any] = {
    ord('"'): list[str],
    ord("["): list[TokenIds],
}
_TOKENS: Any = list[TokenId]
_WHITESPACE = b" \t\r\n"


def _check_text_or_tokens(raw: msgspec.Raw, param: str, max_items: int) -> int:
    """Check a string, a list of strings, a list of token ids or a list of token-id lists, as OpenAI accepts;
    return how many items a list has (1 for a string).

    The value stays raw JSON until its form is known, then it is decoded as that one homogeneous type, so
    msgspec checks every item in C (a mixed list fails there). Lists of texts or of token-id lists may hold
    ``max_items`` entries; a list of token ids is one prompt, bounded by the body's own limits.
    """
    data = bytes(raw).strip(_WHITESPACE)
    if data[:1] != b"[":
        type_: Any = str
    else:
        first = data[1:].lstrip(_WHITESPACE)[:1]
        type_ = _FORMS.get(first[0], _TOKENS) if first and first != b"]" else _TOKENS
        if type_ is not _TOKENS and _most_items(data, first) > max_items:
            raise _too_many(param, max_items)
    try:
        value = msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise _bad_forms(param) from exc
    if isinstance(value, str):
        return 1
    if type_ is not _TOKENS and len(value) > max_items:
        raise _too_many(param, max_items)
    return len(value)


def _most_items(data: bytes, first: bytes) -> int:
    """How many items a list of texts or of token-id lists can hold at most, counted without decoding it:
    one ``[`` per token-id list (exact: token ids hold none), one unescaped ``"`` pair per text."""
    if first == b"[":
        return data.count(b"[") - 1
    return (data.count(b'"') - data.count(b'\\"')) // 2


def _too_many(param: str, max_items: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{param}' holds more than {max_items} items, the most allowed.", param=param, code="too_many_items"
    )


def _bad_forms(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{param}' must be a string, a list of strings, a list of token ids or a list of token-id lists.",
        param=param, code="invalid_type",
    )
