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


# --- Issue 10, vector stores and search. gateway/errors.py maps the bases below; add subclasses freely. ---


class NotFound(RetrievalError):  # noqa: N818
    """No such object in this tenant: another tenant's, or a malformed id, is not found either (404)."""

    code = "not_found"


class VectorStoreNotFound(NotFound):
    code = "vector_store_not_found"


class VectorStoreFileNotFound(NotFound):
    code = "vector_store_file_not_found"


class FileBatchNotFound(NotFound):
    code = "file_batch_not_found"


class InvalidRequest(RetrievalError):  # noqa: N818
    """A request the retrieval package cannot act on as asked (400): a bad filter, chunking strategy, limit."""

    code = "invalid_request"


class EmbeddingUnavailable(RetrievalError):  # noqa: N818
    """No embedding engine can take the request now (503): worth retrying later."""

    code = "embedding_unavailable"


class EmbeddingFailed(RetrievalError):  # noqa: N818
    """The embedding engine refused or broke the request (502); retrying the same input will not help."""

    code = "embedding_failed"


# --- Issue 10, ingestion: a document that cannot be indexed. Its ``code`` is OpenAI's ``last_error.code``. ---


class DocumentRejected(RetrievalError):  # noqa: N818  # the file ends ``failed``; never an HTTP error
    """The file's content cannot be indexed; ``message`` is shown to the tenant as ``last_error.message``."""

    code = "invalid_file"


class UnsupportedDocument(DocumentRejected):
    """Not text, Markdown, HTML or PDF (an image, an archive, an office file, other binary data)."""

    code = "unsupported_file"


class EncryptedDocument(DocumentRejected):
    """A PDF that needs a password to open."""


class CorruptDocument(DocumentRejected):
    """A PDF (or other container) that cannot be read."""


class EmptyDocument(DocumentRejected):
    """No text at all: an empty file, blank text, or a PDF without a text layer (a scan)."""


class DocumentTooLarge(DocumentRejected):
    """More pages than the page limit, or more extracted text than the character limit."""


# --- Issue 10, ingestion jobs (retrieval/ingest.py): never an HTTP error, the file ends ``failed``. ---


class TokenizerUnavailable(RetrievalError):  # noqa: N818
    """The embedding model's tokenizer cannot be loaded (or its vectors do not fit the store): the file ends
    ``failed`` with ``server_error`` and this message, which names the setting to fix."""

    code = "server_error"
