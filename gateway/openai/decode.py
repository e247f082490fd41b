"""Decoding and checking request bodies, with errors that name the offending ``param``."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from gateway.errors import InvalidRequestError
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

T = TypeVar("T")

_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def decode_json_body(body: bytes, type_: type[T]) -> T:
    if not body:
        raise InvalidRequestError("The request body is empty; send a JSON object.", code="invalid_json")
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


def _validation_error(text: str) -> InvalidRequestError:
    where = _AT.search(text)
    path = where.group(1) if where else ""
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


def check_chat(req: ChatCompletionRequest) -> None:
    _check_model(req.model)
    if not req.messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages",
                                  code="empty_array")
    _check_generation(req.max_tokens, req.n)


def check_completion(req: CompletionRequest) -> None:
    _check_model(req.model)
    _check_generation(req.max_tokens, req.n)
    if isinstance(req.prompt, list):
        _check_text_or_tokens(req.prompt, "prompt")


def check_embedding(req: EmbeddingRequest) -> None:
    _check_model(req.model)
    if isinstance(req.input, list):
        if not req.input:
            raise InvalidRequestError("'input' must not be empty.", param="input", code="empty_array")
        _check_text_or_tokens(req.input, "input")
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


def _check_text_or_tokens(items: list[object], param: str) -> None:
    """A list of strings, a list of token ids, or a list of token-id lists, as OpenAI accepts."""
    if all(isinstance(i, str) for i in items) or all(_is_token(i) for i in items):
        return
    if all(isinstance(i, list) and i and all(_is_token(t) for t in i) for i in items):
        return
    raise InvalidRequestError(
        f"'{param}' must be a string, a list of strings, a list of token ids or a list of token-id lists.",
        param=param, code="invalid_type",
    )


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
