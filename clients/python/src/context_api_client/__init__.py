"""Python client for context-api: per-user memory for LLM applications."""

from ._core import UNSET, BatchResult, RetryPolicy
from .client import AsyncContextAPI, ContextAPI
from .errors import (
    BadRequest,
    Conflict,
    ContextAPIError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ProblemError,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from .models import (
    BatchItemResult,
    ContextResponse,
    ListResponse,
    Problem,
    Readiness,
    SearchResponse,
    SearchResult,
)

#: A stored context.
Context = ContextResponse

__all__ = [
    "AsyncContextAPI",
    "BadRequest",
    "BatchItemResult",
    "BatchResult",
    "Conflict",
    "Context",
    "ContextAPI",
    "ContextAPIError",
    "ContextResponse",
    "Forbidden",
    "ListResponse",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "Problem",
    "ProblemError",
    "RateLimited",
    "Readiness",
    "RetryPolicy",
    "SearchResponse",
    "SearchResult",
    "ServerError",
    "TransportError",
    "UNSET",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
]
