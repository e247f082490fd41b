"""The request fields the gateway acts on, for each OpenAI endpoint; everything else goes to vLLM untouched.

References: https://platform.openai.com/docs/api-reference/chat/create ,
/completions/create and /embeddings/create. Unknown fields are accepted and forwarded as they are.

A completion's `prompt` and an embedding's `input` are decoded in two steps: first kept as raw JSON
(`msgspec.Raw`), then, by their first byte, as exactly one of OpenAI's four forms (see
`gateway.openai.decode`). Each form is then a homogeneous type that msgspec checks in C, so a list of
millions of items costs no Python loop. `TextOrTokens` documents the forms in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

TokenId = Annotated[int, msgspec.Meta(ge=0)]
TokenIds = Annotated[list[TokenId], msgspec.Meta(min_length=1)]
# A string, a list of strings, a list of token ids, or a list of token-id lists.
TextOrTokens = str | list[str | TokenId | TokenIds]


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool | None = None


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str | list[dict[str, Any]] | None = None


class _Generation(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    stream: bool | None = None
    # UNSET (absent) is told apart from null: only an absent field may be spliced into the raw body.
    stream_options: StreamOptions | UnsetType | None = UNSET
    max_tokens: int | None = None
    n: int | None = None
    # tenantgate's grounded generation (issue 10): {"vector_store_ids", ...}, read by the retrieval step only.
    retrieval: msgspec.Raw | UnsetType = UNSET
    # vLLM's prefix-cache salt: the gateway always sends the tenant's own (gateway.services.salts).
    cache_salt: msgspec.Raw | UnsetType = UNSET

    @property
    def wants_usage_in_stream(self) -> bool:
        return isinstance(self.stream_options, StreamOptions) and bool(self.stream_options.include_usage)


class ChatCompletionRequest(_Generation, frozen=True, kw_only=True):
    messages: list[ChatMessage]


class CompletionRequest(_Generation, frozen=True, kw_only=True):
    prompt: msgspec.Raw


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    input: msgspec.Raw
    encoding_format: str | None = None
    dimensions: int | None = None
    cache_salt: msgspec.Raw | UnsetType = UNSET  # replaced by the tenant's own (gateway.services.salts)


# The same requests as the OpenAPI document shows them (the forms of `prompt` and `input` spelled out).
class CompletionRequestSchema(CompletionRequest, frozen=True, kw_only=True):
    prompt: TextOrTokens  # type: ignore[assignment]


class EmbeddingRequestSchema(EmbeddingRequest, frozen=True, kw_only=True):
    input: TextOrTokens  # type: ignore[assignment]
