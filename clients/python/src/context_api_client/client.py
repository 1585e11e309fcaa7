"""`ContextAPI` (sync) and `AsyncContextAPI`: the same methods, one sending
with httpx.Client, the other with httpx.AsyncClient. Each method builds its
call in `_core` and sends it with the retry policy."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import httpx

from . import _core, errors
from ._core import UNSET, BatchResult, Call, ContextRef, RetryPolicy
from .models import BatchItemResult, ContextResponse, ListResponse, Readiness, SearchResponse

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = base_url or os.environ.get("CONTEXT_API_URL") or DEFAULT_URL
    key = api_key or os.environ.get("CONTEXT_API_KEY")
    auth = {"authorization": f"Bearer {key}"} if key else {}
    return url, auth


def _with_defaults(
    items: Iterable[Mapping[str, Any]], defaults: Mapping[str, Any]
) -> Iterator[Mapping[str, Any]]:
    for item in items:
        yield {**defaults, **item} if defaults else item


def _too_large(chunk: list[Mapping[str, Any]], exc: errors.PayloadTooLarge) -> list[BatchItemResult]:
    """A single item over the body limit fails alone, like any invalid item."""
    return [BatchItemResult(status=413, problem=exc.problem)] if len(chunk) == 1 else []


class ContextAPI:
    """A client of context-api. `base_url` and `api_key` default to
    CONTEXT_API_URL and CONTEXT_API_KEY.

    >>> with ContextAPI("http://127.0.0.1:8080", "ctx_...") as api:
    ...     api.create({"text": "likes green tea"}, context_type="preference")
    ...     api.search("what does the user drink?", k=3)
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        http_client: httpx.Client | None = None,
    ) -> None:
        url, self._auth = _settings(base_url, api_key)
        self._http = http_client or httpx.Client(base_url=url, timeout=timeout)
        self._retry = retry

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ContextAPI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(call.request(self._http, self._auth))
            except httpx.TransportError as exc:
                delay = _core.retry_delay(call, self._retry, attempt, exc=exc)
                if delay is None:
                    raise errors.TransportError(f"{call.method} {call.path}: {exc!r}") from exc
            else:
                delay = _core.retry_delay(call, self._retry, attempt, response=response)
                if delay is None:
                    return _core.result(call, response)
            time.sleep(delay)
            attempt += 1

    def create(
        self,
        content: Mapping[str, Any],
        *,
        key: str | None = None,
        context_type: str = "note",
        user_id: str | UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        embedding: list[float] | None = None,
        ttl_seconds: int | None = None,
        expires_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> ContextResponse:
        """Store a context. An Idempotency-Key (a new UUID unless given) names
        it, so that a retry never stores it twice. With a `key` a live
        context of the user has: `Conflict` (see `put`)."""
        return self._send(
            _core.create(
                content,
                key=key,
                context_type=context_type,
                user_id=user_id,
                metadata=metadata,
                text=text,
                embedding=embedding,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
                idempotency_key=idempotency_key,
            )
        )

    def put(
        self,
        key: str,
        content: Mapping[str, Any],
        *,
        context_type: str = "note",
        user_id: str | UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        embedding: list[float] | None = None,
        ttl_seconds: int | None = None,
        expires_at: datetime | str | None = None,
    ) -> ContextResponse:
        """Create the context of `key`, or replace the one that has it (same
        id, new version; every field is the call's)."""
        return self._send(
            _core.create(
                content,
                key=key,
                replace=True,
                context_type=context_type,
                user_id=user_id,
                metadata=metadata,
                text=text,
                embedding=embedding,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
                idempotency_key=None,
            )
        )

    def get(self, ref: ContextRef, *, include_embedding: bool = False) -> ContextResponse:
        return self._send(_core.get(ref, include_embedding=include_embedding))

    def update(
        self,
        ref: ContextRef,
        *,
        if_match: int | bool | None = None,
        content: Mapping[str, Any] = UNSET,
        context_type: str = UNSET,
        metadata: Mapping[str, Any] | None = UNSET,
        text: str | None = UNSET,
        embedding: list[float] | None = UNSET,
        ttl_seconds: int | None = UNSET,
        expires_at: datetime | str | None = UNSET,
    ) -> ContextResponse:
        """Replace the fields given. Given a fetched context, only if it is
        unchanged since (If-Match its version; `PreconditionFailed` if not);
        `if_match` names a version instead, or `False` skips the check."""
        return self._send(
            _core.update(
                ref,
                if_match,
                content=content,
                context_type=context_type,
                metadata=metadata,
                text=text,
                embedding=embedding,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
            )
        )

    def delete(self, ref: ContextRef, *, if_match: int | bool | None = None, hard: bool = False) -> None:
        """Hide a context (`hard=True`: remove the row). If-Match as `update`."""
        self._send(_core.delete(ref, if_match, hard=hard))

    def list(
        self,
        *,
        user_id: str | UUID | None = None,
        context_type: str | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        embedding_status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ListResponse:
        """One page, newest first; `next_cursor` names the next."""
        return self._send(
            _core.list_page(
                user_id=user_id,
                context_type=context_type,
                key=key,
                metadata=metadata,
                embedding_status=embedding_status,
                limit=limit,
                cursor=cursor,
            )
        )

    def iterate(
        self,
        *,
        user_id: str | UUID | None = None,
        context_type: str | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        embedding_status: str | None = None,
        page_size: int = 100,
    ) -> Iterator[ContextResponse]:
        """Every context, newest first, page after page."""
        cursor = None
        while True:
            page = self.list(
                user_id=user_id,
                context_type=context_type,
                key=key,
                metadata=metadata,
                embedding_status=embedding_status,
                limit=page_size,
                cursor=cursor,
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def search(
        self,
        query: str | None = None,
        *,
        vector: list[float] | None = None,
        mode: str | None = None,
        k: int | None = None,
        user_id: str | UUID | None = None,
        context_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        fallback_to_text: bool | None = None,
    ) -> SearchResponse:
        """Best first. `mode`: "vector" (default; `query` or `vector`),
        "text" or "hybrid"."""
        return self._send(
            _core.search(
                query,
                vector=vector,
                mode=mode,
                k=k,
                user_id=user_id,
                context_type=context_type,
                metadata=metadata,
                min_score=min_score,
                fallback_to_text=fallback_to_text,
            )
        )

    def add_many(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        chunk_size: int = _core.MAX_BATCH_ITEMS,
        **defaults: Any,
    ) -> BatchResult:
        """Store many contexts (each a dict of `create`'s fields; `defaults`
        fill what an item leaves out, `context_type` "note" as in `create`) through the batch route, `chunk_size`
        a request, halving a chunk the service finds too large. One result
        per item, in order: an invalid item fails alone."""
        results: list[BatchItemResult] = []
        for chunk in _core.chunks(_with_defaults(items, {"context_type": "note", **defaults}), chunk_size):
            results.extend(self._batch(chunk))
        return BatchResult(results)

    def _batch(self, chunk: list[Mapping[str, Any]]) -> list[BatchItemResult]:
        try:
            return self._send(_core.batch(chunk)).results
        except errors.PayloadTooLarge as exc:
            if len(chunk) == 1:
                return _too_large(chunk, exc)
            half = len(chunk) // 2
            return self._batch(chunk[:half]) + self._batch(chunk[half:])

    def wait_until_searchable(
        self, *, user_id: str | UUID | None = None, timeout: float = 300.0, poll: float = 1.0
    ) -> None:
        """Return once no context of `user_id` (every user's, with an admin
        key and no user) waits for its vector: a load is then found by every
        search mode. Polls every `poll` seconds; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.list(user_id=user_id, embedding_status="pending", limit=1).items:
            if time.monotonic() + poll > deadline:
                raise TimeoutError(f"contexts still wait for their vectors after {timeout} s")
            time.sleep(poll)

    def ready(self) -> Readiness:
        """The service's readiness, with each dependency's state."""
        return self._send(_core.ready())


class AsyncContextAPI:
    """`ContextAPI` for asyncio: the same methods, awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        url, self._auth = _settings(base_url, api_key)
        self._http = http_client or httpx.AsyncClient(base_url=url, timeout=timeout)
        self._retry = retry

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncContextAPI:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(call.request(self._http, self._auth))
            except httpx.TransportError as exc:
                delay = _core.retry_delay(call, self._retry, attempt, exc=exc)
                if delay is None:
                    raise errors.TransportError(f"{call.method} {call.path}: {exc!r}") from exc
            else:
                delay = _core.retry_delay(call, self._retry, attempt, response=response)
                if delay is None:
                    return _core.result(call, response)
            await asyncio.sleep(delay)
            attempt += 1

    async def create(
        self,
        content: Mapping[str, Any],
        *,
        key: str | None = None,
        context_type: str = "note",
        user_id: str | UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        embedding: list[float] | None = None,
        ttl_seconds: int | None = None,
        expires_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> ContextResponse:
        return await self._send(
            _core.create(
                content,
                key=key,
                context_type=context_type,
                user_id=user_id,
                metadata=metadata,
                text=text,
                embedding=embedding,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
                idempotency_key=idempotency_key,
            )
        )

    async def put(
        self,
        key: str,
        content: Mapping[str, Any],
        *,
        context_type: str = "note",
        user_id: str | UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        embedding: list[float] | None = None,
        ttl_seconds: int | None = None,
        expires_at: datetime | str | None = None,
    ) -> ContextResponse:
        """Create the context of `key`, or replace the one that has it (same
        id, new version; every field is the call's)."""
        return await self._send(
            _core.create(
                content,
                key=key,
                replace=True,
                context_type=context_type,
                user_id=user_id,
                metadata=metadata,
                text=text,
                embedding=embedding,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
                idempotency_key=None,
            )
        )

    async def get(self, ref: ContextRef, *, include_embedding: bool = False) -> ContextResponse:
        return await self._send(_core.get(ref, include_embedding=include_embedding))

    async def update(
        self,
        ref: ContextRef,
        *,
        if_match: int | bool | None = None,
        content: Mapping[str, Any] = UNSET,
        context_type: str = UNSET,
        metadata: Mapping[str, Any] | None = UNSET,
        text: str | None = UNSET,
        embedding: list[float] | None = UNSET,
        ttl_seconds: int | None = UNSET,
        expires_at: datetime | str | None = UNSET,
    ) -> ContextResponse:
        return await self._send(
            _core.update(
                ref,
                if_match,
                content=content,
                context_type=context_type,
                metadata=metadata,
                text=text,
                embedding=embedding,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
            )
        )

    async def delete(
        self, ref: ContextRef, *, if_match: int | bool | None = None, hard: bool = False
    ) -> None:
        await self._send(_core.delete(ref, if_match, hard=hard))

    async def list(
        self,
        *,
        user_id: str | UUID | None = None,
        context_type: str | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        embedding_status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ListResponse:
        return await self._send(
            _core.list_page(
                user_id=user_id,
                context_type=context_type,
                key=key,
                metadata=metadata,
                embedding_status=embedding_status,
                limit=limit,
                cursor=cursor,
            )
        )

    async def iterate(
        self,
        *,
        user_id: str | UUID | None = None,
        context_type: str | None = None,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        embedding_status: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[ContextResponse]:
        cursor = None
        while True:
            page = await self.list(
                user_id=user_id,
                context_type=context_type,
                key=key,
                metadata=metadata,
                embedding_status=embedding_status,
                limit=page_size,
                cursor=cursor,
            )
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def search(
        self,
        query: str | None = None,
        *,
        vector: list[float] | None = None,
        mode: str | None = None,
        k: int | None = None,
        user_id: str | UUID | None = None,
        context_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        fallback_to_text: bool | None = None,
    ) -> SearchResponse:
        return await self._send(
            _core.search(
                query,
                vector=vector,
                mode=mode,
                k=k,
                user_id=user_id,
                context_type=context_type,
                metadata=metadata,
                min_score=min_score,
                fallback_to_text=fallback_to_text,
            )
        )

    async def add_many(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        chunk_size: int = _core.MAX_BATCH_ITEMS,
        **defaults: Any,
    ) -> BatchResult:
        results: list[BatchItemResult] = []
        for chunk in _core.chunks(_with_defaults(items, {"context_type": "note", **defaults}), chunk_size):
            results.extend(await self._batch(chunk))
        return BatchResult(results)

    async def _batch(self, chunk: list[Mapping[str, Any]]) -> list[BatchItemResult]:
        try:
            return (await self._send(_core.batch(chunk))).results
        except errors.PayloadTooLarge as exc:
            if len(chunk) == 1:
                return _too_large(chunk, exc)
            half = len(chunk) // 2
            return await self._batch(chunk[:half]) + await self._batch(chunk[half:])

    async def wait_until_searchable(
        self, *, user_id: str | UUID | None = None, timeout: float = 300.0, poll: float = 1.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while (await self.list(user_id=user_id, embedding_status="pending", limit=1)).items:
            if time.monotonic() + poll > deadline:
                raise TimeoutError(f"contexts still wait for their vectors after {timeout} s")
            await asyncio.sleep(poll)

    async def ready(self) -> Readiness:
        return await self._send(_core.ready())
