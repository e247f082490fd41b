"""How long the worst request bodies within the limits hold the event loop while they are decoded.

    python -m tests.bench.bench_bodies [--repeat 5]

Each body is as large as ``max_body_bytes`` allows and shaped to be as costly as the item limits allow
(``max_body_containers`` arrays, ``max_body_items`` values, ``max_input_items`` prompts); each is decoded
and checked exactly as the inference routes do (``gateway.openai.decode``), and the slowest of
``--repeat`` runs is printed, beside the body the probe of issue 8 sent (2 million one-token lists, refused
now before decoding). Nothing here is a test: the figures go in the README.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from gateway.errors import InvalidRequestError
from gateway.openai.decode import BodyLimits, check_chat, check_completion, decode_json_body
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest
from gateway.settings import Settings


def bodies(limits: BodyLimits, max_bytes: int) -> dict[str, tuple[bytes, type, Callable[..., None]]]:
    containers = limits.max_containers - 10
    values = limits.max_items - 10
    chat = ChatCompletionRequest, check_chat
    completion = CompletionRequest, check_completion

    def fit(body: bytes) -> bytes:
        assert len(body) <= max_bytes, (len(body), max_bytes)
        return body

    return {
        "probe: 2M one-token lists (7.6 MiB)": (
            b'{"model":"m","prompt":[' + b",".join([b"[1]"] * 2_000_000) + b"]}", *completion),
        f"{containers:,} one-token lists": (
            fit(b'{"model":"m","prompt":[' + b",".join([b"[1]"] * containers) + b"]}"), *completion),
        f"{containers:,} messages": (
            fit(b'{"model":"m","messages":[' + b",".join([b'{"role":"user","content":"a"}'] * containers) + b"]}"),
            *chat),
        f"{values:,} token ids": (
            fit(b'{"model":"m","prompt":[' + b",".join([b"12345"] * values) + b"]}"), *completion),
        f"{limits.max_input_items:,} prompts of {max_bytes // limits.max_input_items // 1024} KiB": (
            fit(b'{"model":"m","prompt":[' + b",".join(
                [b'"' + b"x" * (max_bytes // limits.max_input_items - 16) + b'"'] * limits.max_input_items) + b"]}"),
            *completion),
        f"{containers:,} content parts in one message": (
            fit(b'{"model":"m","messages":[{"role":"user","content":[' + b",".join(
                [b'{"type":"text","text":"a"}'] * containers) + b"]}]}"), *chat),
        "one 8 MiB message": (
            b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * (max_bytes - 64) + b'"}]}', *chat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    limits = BodyLimits(settings.max_body_containers, settings.max_body_items, settings.max_input_items)
    print(f"limits: {settings.max_body_bytes:,} bytes, {limits.max_containers:,} arrays and objects, "
          f"{limits.max_items:,} values, {limits.max_input_items:,} prompts or inputs")
    for name, (body, type_, check) in bodies(limits, settings.max_body_bytes).items():
        worst = 0.0
        outcome = "decoded"
        for _ in range(args.repeat):
            gc.collect()
            started = time.perf_counter()
            try:
                check(decode_json_body(body, type_, limits), limits)
            except InvalidRequestError as exc:
                outcome = f"400 {exc.code}"
            worst = max(worst, time.perf_counter() - started)
        print(f"  {name:<58} {len(body) / 2**20:5.1f} MiB  {outcome:<22} worst {worst * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
