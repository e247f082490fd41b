"""Errors raised by the retrieval package; ``gateway.errors`` maps them to HTTP."""


class RetrievalError(Exception):
    """Base of every retrieval error. ``param`` names the offending request field, ``code`` is stable."""

    code: str = "retrieval_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class FileNotFound(RetrievalError):  # noqa: N818  # OpenAI's wording: "No such File object"
    """No file with that id in this tenant (another tenant's file is not found either)."""

    code = "file_not_found"


class FileTooLarge(RetrievalError):  # noqa: N818
    """The uploaded file is larger than ``max_file_bytes``."""

    code = "file_too_large"


class InvalidFile(RetrievalError):  # noqa: N818
    """The upload is unusable: no file part, an empty file, a bad purpose or file name."""

    code = "invalid_file"
