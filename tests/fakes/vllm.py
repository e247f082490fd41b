"""A fake of vLLM's OpenAI-compatible HTTP server, on a real TCP port.

Used by the integration tests and by the benchmarks, so it is quick (no logging, little work per
request) and deterministic: the answer to a prompt is always the same words.

Shapes follow vLLM 0.32 (`vllm/entrypoints/openai/...`): errors are
`{"error": {"message", "type": "BadRequestError"|"NotFoundError", "param", "code": <int status>}}`;
an error after a stream began is sent as one SSE event with that same object, then `data: [DONE]`
(`OpenAIServing.create_streaming_error_response`); routes the server does not have answer FastAPI's
`{"detail": "Not Found"}`.

Misbehaviour is set at run time through `fake.faults` (see `Faults`); `down` is `await fake.stop()`,
and `await fake.start()` comes back on the same port. What the fake received is recorded on it:
`request_count`, `path_counts`, `last_path`, `last_body`, `last_headers`, `streams_started`,
`streams_finished`, `cancelled` (and `await fake.wait_cancelled()`), `in_progress`, `embedding_requests`
and `embedding_inputs`. Embeddings are a hashed bag of words (see `FakeVLLM.embedding`); an embedding
fake's model cards say `max_model_len` 256, as vLLM's for all-MiniLM-L6-v2, and a longer input is a 400.

Runtime LoRA (``lora=True``; off, the routes are absent and answer 404 as vLLM's do without
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` answers 200
``Success: LoRA adapter '<name>' added successfully.`` after ``lora_load_delay`` seconds, 400 ``InvalidUserInput``
when the name is loaded already, 404 ``NotFoundError`` "No adapter found for <path>" when the path is not a folder
with an ``adapter_config.json``; ``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` answers 200, or 404 when it is
not loaded. Loaded adapters are listed in ``GET /v1/models`` (``root`` their path, ``parent`` the first model) and
served: the generated text starts with ``[lora:<name>] ``. Like vLLM, the fake registers more adapters than
``lora_slots``; it counts ``lora_loads``, ``lora_unloads``, ``lora_evictions`` (loads made while all slots were
taken: vLLM would drop another adapter from its cache) and ``lora_peak``, and ``lora_requests`` per adapter.
A stopped fake forgets its adapters, as a restarted engine does.

As a process, for benchmarks::

    python -m tests.fakes.vllm --port 9001 [--purpose generate|embed] [--model NAME ...] [--lora ...]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import hashlib
import math
import re
import signal
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import msgspec
from aiohttp import web
from multidict import CIMultiDict

__all__ = ["FakeVLLM", "Faults"]

_WORDS = (
    "The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "calm",
    "river", "carries", "small", "boats", "past", "green", "hills", "under", "a", "bright", "sky",
)  # fmt: skip
MAX_MODEL_LEN = 2048  # what the fake's model cards say, and the most tokens a request may ask for
EMBED_MAX_MODEL_LEN = 256  # what an embedding fake's cards say, as vLLM does for all-MiniLM-L6-v2
_WORD = re.compile(r"\w+")
_DEFAULT_MAX_TOKENS = 16
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


@dataclass
class Faults:
    """Misbehaviour of the inference routes (chat, completions, embeddings), changeable at any time.

    Order of effects: `header_delay`, then `drop_requests` / `raw_garbage` / `status` / `garbage`,
    else a normal answer in which the stream faults apply. Stream events are counted from 0: the
    chat role event is event 0, each word one more, the usage event (if asked) the last before [DONE].
    """

    header_delay: float = 0.0  # seconds to wait before sending response headers
    chunk_delay: float = 0.0  # seconds to wait before each stream event after the first
    status: int | None = None  # answer this HTTP status with `body` and `content_type` instead
    body: bytes = b""
    content_type: str = "application/json"
    garbage: bool = False  # answer 200 with a body that is not JSON (nor SSE)
    raw_garbage: bool = False  # answer bytes that are not HTTP at all, then close the connection
    drop_requests: int = 0  # close the connection of the next N requests before any response byte
    die_after_chunks: int | None = None  # stream: close the TCP connection after N events, no [DONE]
    error_after_chunks: int | None = None  # stream: send vLLM's error event after N events, then [DONE]
    error_message: str = "Internal server error"
    error_code: int = 500  # the numeric `code` of that in-stream error
    stream_body: bytes | None = None  # stream: send these bytes as the whole SSE body instead of the events
    health_status: int = 200  # status of GET /health
    lora_status: int | None = None  # answer load/unload of LoRA adapters with this status (vLLM's error body)


class FakeVLLM:
    """An aiohttp server answering like vLLM's OpenAI-compatible API (see the module docstring)."""

    def __init__(
        self,
        models: Sequence[str] = ("fake-chat",),
        embedding_dim: int = 384,
        purpose: Literal["generate", "embed"] = "generate",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lora: bool = False,
        lora_load_delay: float = 0.0,
        lora_slots: int | None = None,
    ) -> None:
        self.embedding_dim = embedding_dim
        self.purpose = purpose
        self.lora = lora
        self.lora_load_delay = lora_load_delay
        self.lora_slots = lora_slots
        self.loras: dict[str, str] = {}  # loaded adapter name -> its path, in load order
        self.faults = Faults()
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._created = 1_700_000_000
        self._seq = 0
        self._vectors: dict[str, list[float]] = {}
        self._word_vectors: dict[str, list[float]] = {}
        self._cancel_event = asyncio.Event()
        self.set_models(models)
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeVLLM was never started")
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again): on a random port the first time, on the same port after `stop()`."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/tokenize", self._tokenize)
        if self.purpose == "generate":
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/completions", self._completions)
            if self.lora:
                app.router.add_post("/v1/load_lora_adapter", self._load_lora)
                app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        else:
            app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.01)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and drop every connection, as a crashed engine would."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        try:
            await runner.cleanup()
        finally:
            self._stopping = False
            if self.loras:  # a restarted engine has no runtime adapters
                self.loras.clear()
                self._render_models()

    async def __aenter__(self) -> FakeVLLM:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- test helpers ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the faults and everything recorded."""
        self.faults = Faults()
        self.request_count = 0  # inference requests (chat, completions, embeddings) received
        self.path_counts: Counter[str] = Counter()  # every request, by path
        self.last_path: str | None = None
        self.last_body: bytes | None = None
        self.last_headers: CIMultiDict[str] = CIMultiDict()
        self.in_progress = 0
        self.streams_started = 0
        self.streams_finished = 0  # streams that sent [DONE]
        self.cancelled = 0  # inference requests whose client went away before the answer was complete
        self.embedding_requests = 0  # POST /v1/embeddings answered with vectors
        self.embedding_inputs = 0  # texts embedded in those answers
        self.lora_loads = 0  # adapters loaded (200 answers)
        self.lora_unloads = 0  # adapters unloaded (200 answers)
        self.lora_evictions = 0  # loads made while every slot was taken (see the module docstring)
        self.lora_peak = len(self.loras)  # the most adapters loaded at once
        self.lora_requests: Counter[str] = Counter()  # inference requests per adapter
        self._cancel_event.clear()

    async def wait_cancelled(self) -> None:
        """Wait until some request was cancelled by its client (wrap it in `asyncio.timeout`)."""
        await self._cancel_event.wait()

    def set_models(self, models: Sequence[str]) -> None:
        """Change the served model ids (e.g. to mimic a LoRA adapter being loaded)."""
        self.models = tuple(models)
        self.max_model_len = EMBED_MAX_MODEL_LEN if self.purpose == "embed" else MAX_MODEL_LEN
        self._render_models()

    def _render_models(self) -> None:
        cards = [_model_card(m, self._created, self.max_model_len) for m in self.models]
        parent = self.models[0] if self.models else None
        cards += [_lora_card(name, path, parent, self._created) for name, path in self.loras.items()]
        self._models_body = _encode({"object": "list", "data": cards})

    def embedding(self, text: str) -> list[float]:
        """The deterministic unit vector the fake answers for `text`: the normalised sum of one hashed vector
        per (lowercased) word, so texts that share words are near and texts that share none are nearly
        orthogonal, as a real embedding model's would be for paraphrases and unrelated sentences."""
        vec = self._vectors.get(text)
        if vec is None:
            words = _WORD.findall(text.lower()) or [text]
            total = [0.0] * self.embedding_dim
            for word in words:
                for i, x in enumerate(self._word_vector(word)):
                    total[i] += x
            norm = math.sqrt(sum(x * x for x in total)) or 1.0
            vec = [x / norm for x in total]
            if len(self._vectors) < 10_000:
                self._vectors[text] = vec
        return vec

    def _word_vector(self, word: str) -> list[float]:
        vec = self._word_vectors.get(word)
        if vec is None:
            raw = array.array("h", hashlib.shake_256(word.encode()).digest(2 * self.embedding_dim))
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            vec = [x / norm for x in raw]
            if len(self._word_vectors) < 100_000:
                self._word_vectors[word] = vec
        return vec

    @staticmethod
    def answer_words(prompt: str, n: int) -> list[str]:
        """The `n` words the fake answers to `prompt`."""
        start = zlib.crc32(prompt.encode())
        return [_WORDS[(start + i) % len(_WORDS)] for i in range(n)]

    # -- routes ----------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        self.path_counts[request.path] += 1
        return web.Response(status=self.faults.health_status)

    async def _models(self, request: web.Request) -> web.Response:
        self.path_counts[request.path] += 1
        return web.Response(body=self._models_body, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        self.path_counts[request.path] += 1
        lines = ["# TYPE vllm:num_requests_running gauge"]
        lines += [f'vllm:num_requests_running{{model_name="{m}"}} {self.in_progress}' for m in self.models]
        lines.append("# TYPE vllm:num_requests_waiting gauge")
        lines += [f'vllm:num_requests_waiting{{model_name="{m}"}} 0' for m in self.models]
        lines.append("# TYPE vllm:request_success_total counter")
        lines += [f'vllm:request_success_total{{model_name="{m}"}} {self.request_count}' for m in self.models]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``POST /tokenize``: ``{"model", "prompt"}`` or ``{"model", "messages"}`` -> ``{"count",
        "max_model_len", "tokens"}``; a token is a word here, as the fake counts its prompt tokens."""
        self.path_counts[request.path] += 1
        doc = _decode(await request.read())
        if isinstance(doc, web.Response):
            return doc
        _, err = self._check_model(doc)
        if err is not None:
            return err
        messages, prompt = doc.get("messages"), doc.get("prompt")
        if isinstance(messages, list):
            text = " ".join(_message_text(m) for m in messages)
        elif isinstance(prompt, str):
            text = prompt
        else:
            return _error(400, "send 'prompt' (a string) or 'messages' (a list)", param="prompt")
        tokens = [zlib.crc32(word.encode()) & 0xFFFF for word in text.split()] or [0]
        out = {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens}
        return web.Response(body=_encode(out), content_type="application/json")

    async def _load_lora(self, request: web.Request) -> web.Response:
        """vLLM's ``POST /v1/load_lora_adapter`` (``OpenAIServingModels.load_lora_adapter``)."""
        self.path_counts[request.path] += 1
        doc = _decode(await request.read())
        if isinstance(doc, web.Response):
            return doc
        if self.faults.lora_status is not None:
            return _error(self.faults.lora_status, "LoRA fault injected", "InternalServerError")
        name, path = doc.get("lora_name"), doc.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if self.lora_load_delay:
            await asyncio.sleep(self.lora_load_delay)
        if name in self.loras:
            return _error(
                400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                "set 'load_inplace' to True.", "InvalidUserInput",
            )  # fmt: skip
        if not _is_adapter_folder(path):
            return _error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        if self.lora_slots is not None and len(self.loras) >= self.lora_slots:
            self.lora_evictions += 1
        self.loras[name] = path
        self.lora_loads += 1
        self.lora_peak = max(self.lora_peak, len(self.loras))
        self._render_models()
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        """vLLM's ``POST /v1/unload_lora_adapter``."""
        self.path_counts[request.path] += 1
        doc = _decode(await request.read())
        if isinstance(doc, web.Response):
            return doc
        if self.faults.lora_status is not None:
            return _error(self.faults.lora_status, "LoRA fault injected", "InternalServerError")
        name = doc.get("lora_name")
        if not isinstance(name, str) or not name:
            return _error(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        if self.loras.pop(name, None) is None:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        self.lora_unloads += 1
        self._render_models()
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _not_found(self, request: web.Request) -> web.Response:
        self.path_counts[request.path] += 1
        return web.Response(status=404, body=b'{"detail":"Not Found"}', content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._answer_chat)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._answer_completion)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._answer_embeddings)

    async def _serve(self, request: web.Request, answer: Any) -> web.StreamResponse:
        """Record, apply the faults, then answer; count a client that went away."""
        body = await request.read()
        self.request_count += 1
        self.path_counts[request.path] += 1
        self.last_path = request.path
        self.last_body = body
        self.last_headers = CIMultiDict(request.headers)
        self.in_progress += 1
        try:
            faults = self.faults
            if faults.header_delay:
                await asyncio.sleep(faults.header_delay)
            if faults.drop_requests > 0 or faults.raw_garbage:
                assert request.transport is not None
                if faults.drop_requests > 0:
                    faults.drop_requests -= 1
                else:
                    request.transport.write(b"THIS IS NOT HTTP\r\n\x00\x01garbage\r\n\r\n")
                request.transport.close()
                return web.Response()
            if faults.status is not None:
                return web.Response(status=faults.status, body=faults.body, content_type=faults.content_type)
            if faults.garbage:
                return web.Response(body=b"<html>502 oops, not JSON", content_type="application/json")
            doc = _decode(body)
            if isinstance(doc, web.Response):
                return doc
            resp: web.StreamResponse = await answer(request, doc)
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            if not self._stopping:
                self.cancelled += 1
                self._cancel_event.set()
            raise
        finally:
            self.in_progress -= 1

    def _check_model(self, doc: dict[str, Any]) -> tuple[str, web.Response | None]:
        model = doc.get("model") or self.models[0]
        if model not in self.models and model not in self.loras:
            msg = f"The model `{model}` does not exist."
            return model, _error(404, msg, "NotFoundError", "model")
        return model, None

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:032x}"

    async def _answer_chat(self, request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "1 validation error: messages: Field required or empty")
        model, err = self._check_model(doc)
        if err is not None:
            return err
        prompt = " ".join(_message_text(m) for m in messages)
        return await self._generate(request, doc, model, prompt, chat=True)

    async def _answer_completion(self, request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        prompt = doc.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = " ".join(prompt)
        if not isinstance(prompt, str):
            return _error(400, "prompt: a string or a list of strings is required", param="prompt")
        model, err = self._check_model(doc)
        if err is not None:
            return err
        return await self._generate(request, doc, model, prompt, chat=False)

    async def _generate(
        self, request: web.Request, doc: dict[str, Any], model: str, prompt: str, *, chat: bool
    ) -> web.StreamResponse:
        limit = doc.get("max_completion_tokens") or doc.get("max_tokens")
        prompt_tokens = max(1, len(prompt.split()))
        if isinstance(limit, int) and limit + prompt_tokens > MAX_MODEL_LEN:  # as vLLM: never past the context
            return _error(
                400, f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                f"{limit + prompt_tokens} tokens ({prompt_tokens} in the messages, {limit} in the completion).",
                param="max_tokens",
            )
        n = limit if isinstance(limit, int) and limit > 0 else _DEFAULT_MAX_TOKENS
        finish = "length" if limit else "stop"
        words = self.answer_words(prompt, n)
        if model in self.loras:  # an adapter's answer says so (same token count)
            self.lora_requests[model] += 1
            words[0] = f"[lora:{model}] {words[0]}"
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": 0, "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + n
        rid = self._next_id("chatcmpl" if chat else "cmpl")
        obj = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "object": obj, "created": self._created, "model": model}
        if not doc.get("stream"):
            text = " ".join(words)
            choice: dict[str, Any] = {"index": 0}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
            else:
                choice["text"] = text
            choice.update(logprobs=None, finish_reason=finish, stop_reason=None)
            return web.Response(
                body=_encode({**head, "choices": [choice], "usage": usage}), content_type="application/json"
            )
        head["object"] = obj + ".chunk" if chat else obj
        options = doc.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        # vLLM: `continuous_usage_stats` (with `include_usage`) puts the running usage on every chunk
        running = include_usage and isinstance(options, dict) and bool(options.get("continuous_usage_stats"))
        prompt_tokens = usage["prompt_tokens"]
        events = [
            _chunk(head, chat, i, word, finish if i == n - 1 else None, prompt_tokens if running else None, i + 1)
            for i, word in enumerate(words)
        ]
        if chat:
            events.insert(0, _chunk(head, chat, -1, "", None, prompt_tokens if running else None, 0))
        if include_usage:
            events.append(b"data: " + _encode({**head, "choices": [], "usage": usage}) + b"\n\n")
        return await self._stream(request, events)

    async def _stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        faults = self.faults
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        self.streams_started += 1
        if faults.stream_body is not None:
            await resp.write(faults.stream_body)
            await resp.write_eof()
            return resp
        for i, event in enumerate(events):
            if i == faults.die_after_chunks:
                assert request.transport is not None
                request.transport.close()
                return resp
            if i == faults.error_after_chunks:
                err = {
                    "message": faults.error_message,
                    "type": "InternalServerError" if faults.error_code >= 500 else "BadRequestError",
                    "param": None,
                    "code": faults.error_code,
                }
                await resp.write(b"data: " + _encode({"error": err}) + b"\n\n")
                break
            if i and faults.chunk_delay:
                await asyncio.sleep(faults.chunk_delay)
            await resp.write(event)
        await resp.write(_DONE)
        await resp.write_eof()
        self.streams_finished += 1
        return resp

    async def _answer_embeddings(self, request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        raw = doc.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            return _error(400, "input: this fake takes a string or a list of strings", param="input")
        model, err = self._check_model(doc)
        if err is not None:
            return err
        for text in inputs:  # as vLLM: an input past the context is refused, never cut (2 for [CLS] [SEP])
            if len(_WORD.findall(text)) + 2 > self.max_model_len:
                return _error(
                    400, f"This model's maximum context length is {self.max_model_len} tokens. However, you"
                    f" requested {len(_WORD.findall(text)) + 2} tokens in the input for embedding generation."
                    " Please reduce the length of the input.", param="input",
                )
        self.embedding_requests += 1
        self.embedding_inputs += len(inputs)
        as_base64 = doc.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vec: Any = self.embedding(text)
            if as_base64:
                packed = array.array("f", vec)
                if sys.byteorder != "little":
                    packed.byteswap()
                vec = base64.b64encode(packed.tobytes()).decode()
            data.append({"index": i, "object": "embedding", "embedding": vec})
        tokens = sum(max(1, len(t.split())) for t in inputs)
        out = {
            "id": self._next_id("embd"),
            "object": "list",
            "created": self._created,
            "model": model,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }
        return web.Response(body=_encode(out), content_type="application/json")


def _error(status: int, message: str, err_type: str = "BadRequestError", param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return web.Response(status=status, body=_encode(body), content_type="application/json")


def _decode(body: bytes) -> dict[str, Any] | web.Response:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return _error(400, f"JSON decode error: {exc}")
    if not isinstance(doc, dict):
        return _error(400, "Input should be a valid dictionary or object to extract fields from")
    return doc


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _chunk(
    head: dict[str, Any], chat: bool, i: int, word: str, finish: str | None, prompt_tokens: int | None = None,
    completion_tokens: int = 0,
) -> bytes:
    """One SSE event; `i == -1` is the chat stream's first event (the role). With `prompt_tokens`, the event
    carries vLLM's running usage (`continuous_usage_stats`) after its choices, as vLLM serialises it."""
    text = word if i <= 0 else " " + word
    choice: dict[str, Any] = {"index": 0}
    if chat:
        choice["delta"] = {"role": "assistant", "content": ""} if i < 0 else {"content": text}
    else:
        choice["text"] = text
    choice.update(logprobs=None, finish_reason=finish)
    if finish is not None:
        choice["stop_reason"] = None
    event: dict[str, Any] = {**head, "choices": [choice]}
    if prompt_tokens is not None:
        event["usage"] = {
            "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
        }
    return b"data: " + _encode(event) + b"\n\n"


def _model_card(model: str, created: int, max_model_len: int = MAX_MODEL_LEN) -> dict[str, Any]:
    permission = {
        "id": f"modelperm-{zlib.crc32(model.encode()):08x}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": f"/models/{model}",
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }


def _is_adapter_folder(path: str) -> bool:
    """What vLLM checks before loading: a folder holding ``adapter_config.json`` (one stat; fine in a fake)."""
    return (Path(path) / "adapter_config.json").is_file()


def _lora_card(name: str, path: str, parent: str | None, created: int) -> dict[str, Any]:
    """A loaded adapter as vLLM lists it: its own model, ``root`` its folder, ``parent`` the base model."""
    return {
        "id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path, "parent": parent,
        "max_model_len": None, "permission": [],
    }  # fmt: skip


async def _serve_forever(fake: FakeVLLM) -> None:
    await fake.start()
    print(f"READY {fake.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake vLLM OpenAI-compatible API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--purpose", choices=("generate", "embed"), default="generate")
    parser.add_argument("--model", action="append", help="a served model id (repeatable)")
    parser.add_argument("--embedding-dim", type=int, default=384)
    parser.add_argument("--lora", action="store_true", help="serve the runtime LoRA API")
    parser.add_argument("--lora-load-delay", type=float, default=0.0)
    parser.add_argument("--lora-slots", type=int, default=None)
    args = parser.parse_args(argv)
    models = args.model or (["fake-chat"] if args.purpose == "generate" else ["fake-embed"])
    fake = FakeVLLM(
        models, args.embedding_dim, args.purpose, host=args.host, port=args.port, lora=args.lora,
        lora_load_delay=args.lora_load_delay, lora_slots=args.lora_slots,
    )  # fmt: skip
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_forever(fake))
    else:
        uvloop.run(_serve_forever(fake))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
