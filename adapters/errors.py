"""Errors raised by the adapters package; ``gateway.errors`` maps them to HTTP."""


class AdapterError(Exception):
    """Base of every adapter error. ``param`` names the offending request field, ``code`` is stable."""

    code: str = "adapter_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
