"""The request fields the gateway acts on, for each OpenAI endpoint; everything else goes to vLLM untouched.

References: https://platform.openai.com/docs/api-reference/chat/create ,
/completions/create and /embeddings/create. Unknown fields are accepted and forwarded as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


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

    @property
    def wants_usage_in_stream(self) -> bool:
        return isinstance(self.stream_options, StreamOptions) and bool(self.stream_options.include_usage)


class ChatCompletionRequest(_Generation, frozen=True, kw_only=True):
    messages: list[ChatMessage]


class CompletionRequest(_Generation, frozen=True, kw_only=True):
    prompt: str | list[Any]


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    input: str | list[Any]
    encoding_format: str | None = None
    dimensions: int | None = None
