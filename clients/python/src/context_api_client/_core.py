"""What the sync and async clients share: each operation as a `Call` (the
request, whether it may be resent, how to read its answer), and the retry
policy. The clients only send calls and sleep."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import httpx

from . import errors
from .models import (
    BatchCreateResponse,
    BatchItemResult,
    ContextResponse,
    ListResponse,
    Problem,
    Readiness,
    SearchResponse,
)

T = TypeVar("T")

#: The batch route's limit on items (MAX_BATCH_ITEMS in the service).
MAX_BATCH_ITEMS = 1000


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: A field left out of an update (keeps its value), unlike `None` (clears it).
UNSET: Any = _Unset()

#: How a context is named: its id, or a fetched context (which also gives its
#: version for If-Match).
ContextRef = str | UUID | ContextResponse


@dataclass
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Whether the call may be sent again after the connection failed
    #: mid-request: reads, and writes named by an Idempotency-Key.
    resend_safe: bool = False
    #: Error statuses that are this call's answer: read, neither raised nor retried.
    answers: frozenset[int] = frozenset()

    def request(
        self, client: httpx.Client | httpx.AsyncClient, auth: Mapping[str, str]
    ) -> httpx.Request:
        content = None
        headers = {**auth, **self.headers}
        if self.body is not None:
            content = json.dumps(self.body, default=_json_default).encode()
            headers["content-type"] = "application/json"
        return client.build_request(
            self.method, self.path, params=self.params, content=content, headers=headers
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429 and 503 answers (honouring Retry-After) and of
    connection failures, at most `max_retries` times, never waiting longer
    than `max_delay` seconds at once: a longer Retry-After is raised."""

    max_retries: int = 3
    backoff: float = 0.25
    max_delay: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up."""
        if attempt >= self.max_retries:
            return None
        if response is not None:
            asked = errors.parse_retry_after(response.headers.get("retry-after"))
            if asked is not None:
                return asked if asked <= self.max_delay else None
        wait = self.backoff * (2**attempt)
        return min(self.max_delay, wait * (0.5 + random.random() / 2))


RETRY_STATUSES = frozenset({429, 503})


def retry_delay(
    call: Call[Any],
    policy: RetryPolicy,
    attempt: int,
    response: httpx.Response | None = None,
    exc: httpx.TransportError | None = None,
) -> float | None:
    """Seconds to wait before sending `call` again after this answer or
    failure, or None when it is final. A request that never reached the
    service may always be sent again; one that may have, only when sending
    it twice does no harm."""
    if exc is not None:
        never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        return policy.delay(attempt, None) if never_sent or call.resend_safe else None
    assert response is not None
    if response.status_code not in RETRY_STATUSES or response.status_code in call.answers:
        return None
    return policy.delay(attempt, response)


def result(call: Call[T], response: httpx.Response) -> T:
    if response.is_error and response.status_code not in call.answers:
        raise errors.problem_error(response)
    return call.parse(response)


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _model(cls: Any) -> Callable[[httpx.Response], Any]:
    return lambda r: cls.model_validate_json(r.content)


def _no_content(_: httpx.Response) -> None:
    return None


def _id(ref: ContextRef) -> str:
    return str(ref.id if isinstance(ref, ContextResponse) else ref)


def _if_match(ref: ContextRef, if_match: int | bool | None) -> dict[str, str]:
    """If-Match: the version given, or the fetched context's own (unless
    `if_match=False`)."""
    if if_match is False:
        return {}
    if isinstance(if_match, int) and not isinstance(if_match, bool):
        return {"if-match": f'"{if_match}"'}
    if isinstance(ref, ContextResponse):
        return {"if-match": f'"{ref.version}"'}
    if if_match is True:
        raise ValueError("if_match=True needs a fetched context, not an id")
    return {}


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def create(
    content: Mapping[str, Any],
    *,
    key: str | None = None,
    replace: bool = False,
    context_type: str,
    user_id: str | UUID | None,
    metadata: Mapping[str, Any] | None,
    text: str | None,
    embedding: list[float] | None,
    ttl_seconds: int | None,
    expires_at: datetime | str | None,
    idempotency_key: str | None,
) -> Call[ContextResponse]:
    body = _drop_none(
        {
            "key": key,
            "content": dict(content),
            "context_type": context_type,
            "user_id": user_id,
            "metadata": metadata,
            "text": text,
            "embedding": embedding,
            "ttl_seconds": ttl_seconds,
            "expires_at": expires_at,
        }
    )
    return Call(
        "PUT" if replace else "POST",
        "/contexts",
        _model(ContextResponse),
        body=body,
        headers={"idempotency-key": idempotency_key or str(uuid.uuid4())},
        resend_safe=True,
    )


def get(ref: ContextRef, *, include_embedding: bool) -> Call[ContextResponse]:
    params = {"include": "embedding"} if include_embedding else None
    return Call(
        "GET", f"/contexts/{_id(ref)}", _model(ContextResponse), params=params, resend_safe=True
    )


def update(ref: ContextRef, if_match: int | bool | None, **fields: Any) -> Call[ContextResponse]:
    body = {k: v for k, v in fields.items() if v is not UNSET}
    return Call(
        "PATCH",
        f"/contexts/{_id(ref)}",
        _model(ContextResponse),
        body=body,
        headers=_if_match(ref, if_match),
    )


def delete(ref: ContextRef, if_match: int | bool | None, *, hard: bool) -> Call[None]:
    return Call(
        "DELETE",
        f"/contexts/{_id(ref)}",
        _no_content,
        params={"hard": "true"} if hard else None,
        headers=_if_match(ref, if_match),
    )


def list_page(
    *,
    user_id: str | UUID | None,
    context_type: str | None,
    key: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    embedding_status: str | None = None,
    limit: int | None,
    cursor: str | None,
) -> Call[ListResponse]:
    params = _drop_none(
        {
            "user_id": user_id and str(user_id),
            "context_type": context_type,
            "key": key,
            "metadata": None if metadata is None else json.dumps(metadata, separators=(",", ":")),
            "embedding_status": embedding_status,
            "limit": limit,
            "cursor": cursor,
        }
    )
    return Call("GET", "/contexts", _model(ListResponse), params=params, resend_safe=True)


def search(
    query: str | None,
    *,
    vector: list[float] | None,
    mode: str | None,
    k: int | None,
    user_id: str | UUID | None,
    context_type: str | None,
    metadata: Mapping[str, Any] | None,
    min_score: float | None,
    fallback_to_text: bool | None,
) -> Call[SearchResponse]:
    body = _drop_none(
        {
            "query": query,
            "vector": vector,
            "mode": mode,
            "k": k,
            "user_id": user_id,
            "context_type": context_type,
            "metadata": metadata,
            "min_score": min_score,
            "fallback_to_text": fallback_to_text,
        }
    )
    return Call("POST", "/contexts/search", _model(SearchResponse), body=body, resend_safe=True)


def batch(items: list[Mapping[str, Any]]) -> Call[BatchCreateResponse]:
    return Call(
        "POST",
        "/contexts/batch",
        _model(BatchCreateResponse),
        body={"items": [dict(i) for i in items]},
        headers={"idempotency-key": str(uuid.uuid4())},
        resend_safe=True,
    )


def ready() -> Call[Readiness]:
    # 503 (degraded) still carries the readiness document: read it, not raise.
    return Call("GET", "/ready", _model(Readiness), resend_safe=True, answers=frozenset({503}))


def chunks(items: Iterable[Mapping[str, Any]], size: int) -> Iterable[list[Mapping[str, Any]]]:
    if not 1 <= size <= MAX_BATCH_ITEMS:
        raise ValueError(f"chunk_size must be 1 to {MAX_BATCH_ITEMS}, got {size}")
    chunk: list[Mapping[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class BatchResult:
    """`add_many`'s outcome: one result per item, in the order given."""

    results: list[BatchItemResult]

    @property
    def created(self) -> int:
        return sum(1 for r in self.results if r.status == 201)

    @property
    def failed(self) -> int:
        return len(self.results) - self.created

    @property
    def pending(self) -> int:
        """Of the created, those stored pending: their vectors come later
        (`wait_until_searchable`)."""
        return sum(1 for c in self.contexts if c.embedding_status == "pending")

    @property
    def contexts(self) -> list[ContextResponse]:
        """The contexts created, in order (failed items left out)."""
        return [r.context for r in self.results if r.context is not None]

    @property
    def problems(self) -> list[tuple[int, Problem]]:
        """(index, problem) of each item that failed."""
        return [(i, r.problem) for i, r in enumerate(self.results) if r.problem is not None]
