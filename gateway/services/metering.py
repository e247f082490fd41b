"""Usage metering as a pipeline observer: one usage row per call, however it ended."""

from __future__ import annotations

from gateway.services.call import Call
from observability.usage import INT4_MAX, UsageEvent, UsageMeter

__all__ = ["MAX_STORED_MODEL_NAME", "MeterUsage", "storable_model_name"]

MAX_STORED_MODEL_NAME = 256


def storable_model_name(model: str) -> str:
    """The model name as a usage row can hold it: a client's name may be anything, and Postgres text
    cannot hold NUL, which would fail the whole batch it is written in."""
    return model.replace("\x00", "\ufffd")[:MAX_STORED_MODEL_NAME]


class MeterUsage:
    """Records each ended call with the :class:`UsageMeter` (an append to its queue: no I/O here)."""

    __slots__ = ("_meter",)

    def __init__(self, meter: UsageMeter) -> None:
        self._meter = meter

    def __call__(self, call: Call) -> None:
        p = call.principal
        self._meter.record(
            UsageEvent(
                created_at=call.arrived_at, request_id=call.request_id, tenant_id=p.tenant_id, key_id=p.key_id,
                endpoint=call.endpoint, model=storable_model_name(call.model_label), stream=call.stream,
                status_code=call.status, error_code=call.error_code,
                prompt_tokens=min(max(call.prompt_tokens, 0), INT4_MAX),
                completion_tokens=min(max(call.completion_tokens, 0), INT4_MAX),
                latency_ms=call.latency_ms, ttft_ms=call.ttft_ms,
                end_reason=call.end_reason,
            )
        )
