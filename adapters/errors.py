"""Errors raised by the adapters package; ``gateway.errors`` maps them to HTTP (the status is noted per class)."""


class AdapterError(Exception):
    """Base of every adapter error (400 unless a subclass says otherwise). ``param`` names the offending
    request field, ``code`` is stable."""

    code: str = "adapter_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidAdapter(AdapterError):  # noqa: N818  # reads as OpenAI's codes do
    """The upload is not an adapter this gateway can serve: the message says what is wrong (400)."""

    code = "invalid_adapter"


class BaseModelUnavailable(AdapterError):  # noqa: N818
    """The base model is not served here, or its architecture (``config.json``) cannot be read (400)."""

    code = "base_model_unavailable"


class AdapterTooLarge(AdapterError):  # noqa: N818
    """The upload is larger than ``adapter_max_bytes`` (413)."""

    code = "adapter_too_large"


class AdapterNotFound(AdapterError):  # noqa: N818
    """No adapter of that name in this tenant: another tenant's is not found either (404)."""

    code = "adapter_not_found"


class AdapterNameTaken(AdapterError):  # noqa: N818
    """The name is another adapter's of this tenant, or a served base model's (409)."""

    code = "adapter_name_taken"


class AdapterLoadFailed(AdapterError):  # noqa: N818
    """An engine could not load the adapter (502; ``files_at_fault``: the engine blamed the files, and the
    adapter is marked ``failed``)."""

    code = "adapter_load_failed"

    def __init__(self, message: str, *, files_at_fault: bool = False, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.files_at_fault = files_at_fault


class AdapterCapacityExhausted(AdapterError):  # noqa: N818
    """Every replica of the base model is full of adapters in use: none can be unloaded now (503)."""

    code = "adapter_capacity_exhausted"


class AdapterEnginesUnavailable(AdapterCapacityExhausted):
    """No healthy engine replica of the base model takes adapters right now (503, as capacity exhausted; its own
    ``code`` tells the two apart)."""

    code = "engine_unavailable"
