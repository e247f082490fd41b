"""Errors raised by the retrieval package; ``gateway.errors`` maps them to HTTP."""


class RetrievalError(Exception):
    """Base of every retrieval error. ``param`` names the offending request field, ``code`` is stable."""

    code: str = "retrieval_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
