"""Errors: every error answer of the service is an RFC 9457 problem, raised
as the exception class of its status, carrying the problem itself."""

from __future__ import annotations

import httpx

from .models import Problem


class ContextAPIError(Exception):
    """Anything this client raises."""


class TransportError(ContextAPIError):
    """The service could not be reached, or its answer was cut (after the
    retries this call was allowed)."""


class ProblemError(ContextAPIError):
    """An error answer. `problem` is the service's RFC 9457 document;
    `status`, `type` and `detail` repeat its fields."""

    def __init__(self, problem: Problem, response: httpx.Response) -> None:
        super().__init__(f"{problem.status} {problem.title}: {problem.detail}")
        self.problem = problem
        self.response = response

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def type(self) -> str:
        return self.problem.type

    @property
    def detail(self) -> str:
        return self.problem.detail

    @property
    def retry_after(self) -> float | None:
        """The seconds the service asked to wait, when it did."""
        return parse_retry_after(self.response.headers.get("retry-after"))


class BadRequest(ProblemError):
    """400: malformed JSON, or a header the service could not read."""


class Unauthorized(ProblemError):
    """401: no key, or an unknown one."""


class Forbidden(ProblemError):
    """403: the key may not touch this user's contexts."""


class NotFound(ProblemError):
    """404: no such context (or not this key's)."""


class Conflict(ProblemError):
    """409: the same Idempotency-Key is still being answered."""


class PreconditionFailed(ProblemError):
    """412: the context changed since the version given as If-Match."""


class PayloadTooLarge(ProblemError):
    """413: the body is over the service's limit."""


class ValidationFailed(ProblemError):
    """422: a field is invalid; `detail` names it."""


class RateLimited(ProblemError):
    """429: over this key's rate; `retry_after` says when to come back."""


class Unavailable(ProblemError):
    """503: a dependency (Postgres, the embedder) is down, or the instance drains."""


class ServerError(ProblemError):
    """Another 5xx."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def problem_error(response: httpx.Response) -> ProblemError:
    """The exception for an error answer: its problem document, or one made
    from the status when the body is not a problem (a proxy's page)."""
    try:
        problem = Problem.model_validate_json(response.content)
    except ValueError:
        problem = Problem(
            type="about:blank",
            title=response.reason_phrase or "HTTP error",
            status=response.status_code,
            detail=response.text[:500],
        )
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ProblemError)
    return cls(problem, response)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
