"""The cache's exception root.

Every error PrismCache raises is a CacheError (itself a prism PrismError), and
errors from the embedding endpoint, SQLite or the model files are translated
into these where they occur. `retriable` says whether the same call can
succeed later (an embedding endpoint that timed out) or not (bad arguments,
missing model weights, a corrupt cache file).

An exception raised by the user's `call_fn` is never wrapped: it propagates
as it is, and nothing is cached.
"""

from __future__ import annotations

from prism.fabric.errors import PrismError


class CacheError(PrismError):
    """Root of errors raised by prism.cache."""


class CacheConfigError(CacheError):
    """An argument of PrismCache.build (or another constructor) is invalid;
    the message names it and the value."""


class EmbedderError(CacheError):
    """The embedder could not embed a text: model files missing or corrupt,
    or the embedding endpoint refused the request."""


class EmbeddingServiceError(EmbedderError):
    """An OpenAI-compatible embedding endpoint failed: a connection error,
    a timeout or a 5xx is retriable, a 4xx (bad key, unknown model) is not."""

    def __init__(
        self, message: str, *, status: int | None = None, retriable: bool | None = None
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.status = status


class StoreError(CacheError):
    """The cache file cannot be opened, read or written (not a cache file,
    another schema, disk full). Retriable when the database was busy."""


class ExportFormatError(CacheError):
    """A file given to load() is not a PrismCache export, or of another
    format version; the message names the line."""
