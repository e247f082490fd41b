"""Errors raised by the policies package; ``gateway.errors`` maps them to HTTP."""


class PolicyError(Exception):
    """Base of every policy error. ``param`` names the offending request field, ``code`` is stable."""

    code: str = "policy_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
