"""The plug-in points of the inference path: steps, filters and observers (run by ``InferenceService``).

One call goes::

    route: authenticate, read and check the body              -> Call
    runner: stream usage body edit, model resolution -> route  (built in)
    steps, in order                                            may end the call with an error
    engine call: body edits applied once, upstream headers     lease on a replica of the route
    answer filters (JSON)  |  stream filters per event, then before_done() just before [DONE]
    observers, each once, whatever the outcome                 usage meter (built in), metrics, quotas, spans

- A :class:`Step` is async (retrieval searches, limits may ask a shared store). It reads and changes the
  :class:`~gateway.services.call.Call`: sets body fields (say ``messages``), adds upstream headers
  (``traceparent``) and response headers (``x-ratelimit-*``), installs per-call filters, or ends the call by
  raising an error (a 429 with ``Retry-After`` in ``call.response_headers``): the error is answered with
  those headers, and observers see it.
- Filters are synchronous and see bytes: an :class:`AnswerFilter` the whole JSON body of a 200 answer; a
  :class:`StreamFilter` each ``data:`` event that carries a chunk, with its blank line (not error events,
  not ``[DONE]``), and returns whole events (none, one, or several); once, when the engine finished the
  stream, :meth:`StreamFilter.before_done` adds events just before ``data: [DONE]`` (retrieval's
  ``sources``). Service-wide filters are given to the service and hold no
  per-call state; a step that needs per-call state installs a filter built for that call
  (``call.add_stream_filter``), so a call that needs none pays nothing.
- An :class:`Observer` is called once per call that passed authentication, with the call's outcome
  (``status``, ``error_code``, ``end_reason``, tokens, ``ttft_ms``, ``replica``, latency from ``started``).
  It must not block: it records and returns. One that raises is logged and the others still run.

Built in: the stream usage edit (``gateway.services.sse.ask_for_running_usage``), the filter that hides
the usage the client did not ask for (``gateway.services.sse.HideUsage``) and usage metering
(``gateway.services.metering.MeterUsage``). With nothing else installed the body goes to the engine as it
came and stream bytes go on as the engine sent them, but for the usage the client did not ask for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.services.call import Call

__all__ = ["AnswerFilter", "Observer", "Pipeline", "Step", "StreamFilter"]


class Step(Protocol):
    async def __call__(self, call: Call) -> None:
        """Act on the call before the engine sees it; raise to end it with that error."""


class AnswerFilter(Protocol):
    def answer(self, body: bytes) -> bytes:
        """The JSON body to send instead of ``body`` (a 200 answer, whole)."""


class StreamFilter(Protocol):
    def event(self, event: bytes) -> bytes:
        """The bytes to send for one ``data: {...}`` event and its blank line: whole events, ``b""`` drops it."""

    def before_done(self) -> bytes:
        """Complete events (each ending in a blank line) to send just before ``data: [DONE]``; usually ``b""``."""


class Observer(Protocol):
    def __call__(self, call: Call) -> None:
        """See one ended call (its outcome fields are set)."""


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What the service runs besides its built-in parts, in order."""

    steps: Sequence[Step] = ()
    answer_filters: Sequence[AnswerFilter] = ()
    stream_filters: Sequence[StreamFilter] = ()
    observers: Sequence[Observer] = ()
