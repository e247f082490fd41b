"""Calls for unit tests: a principal and a call without a request behind them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from gateway.auth.principal import Principal
from gateway.services.call import Call, Endpoint

PRINCIPAL = Principal(uuid.uuid4(), "unit", uuid.uuid4(), "user")


def make_call(body: bytes = b"", endpoint: Endpoint = "chat.completions", request_id: str = "req_unit") -> Call:
    call = Call(PRINCIPAL, endpoint, request_id, time.perf_counter(), datetime.now(UTC))
    call.body = body
    return call
