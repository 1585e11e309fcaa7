"""LangGraph's long-term memory store (`BaseStore`) over context-api.

One store keeps one context-api user's memory: the user of a user key, or
`user_id` with an admin key (make one store per end user: a user key then
confines each to its own). An item is one context:

- its `key` is the JSON text of `[*namespace, key]`: unique per user, so a
  put replaces (`PUT /contexts`) and a get is a lookup by key;
- its `content` is the item's value; the text embedded is the value's
  fields named by `index` (the store's, or the put's), or its whole JSON;
- its `metadata` holds the namespace by position (`{"0": "users", "1":
  "u1"}`: a prefix is then a containment filter) and a copy of the value
  (equality filters run in the service; `$gt`, `$ne`, ... on the result);
- its `context_type` is `langgraph` (`context_type=` to change it);
- a TTL (minutes, as LangGraph counts) becomes the context's expiry.

Searches with a query rank by the service's vector search (scores are
cosine similarities); without one, newest first. Items put with
`index=False` are stored but only found by filters, as in LangGraph's own
stores. `list_namespaces` reads the user's items of this store (a full
scan, as LangGraph's Postgres store does with SELECT DISTINCT).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from .client import AsyncContextAPI, ContextAPI
from .errors import NotFound
from .models import ContextResponse

CONTEXT_TYPE = "langgraph"
#: The service's largest k.
MAX_K = 100


def context_key(namespace: tuple[str, ...], key: str) -> str:
    return json.dumps([*namespace, key], ensure_ascii=False, separators=(",", ":"))


def _namespace_filter(prefix: tuple[str, ...]) -> dict[str, str]:
    return {str(i): label for i, label in enumerate(prefix)}


def _item(ctx: ContextResponse, score: float | None = None, search: bool = False) -> Item:
    *namespace, key = json.loads(ctx.key or "[]")
    fields = dict(
        namespace=tuple(namespace),
        key=key,
        value=ctx.content,
        created_at=ctx.created_at,
        updated_at=ctx.updated_at,
    )
    return SearchItem(**fields, score=score) if search else Item(**fields)


def _split_filter(flt: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(equality conditions the service can test by containment, the rest)."""
    served, rest = {}, {}
    for k, v in (flt or {}).items():
        if isinstance(v, dict) and any(str(op).startswith("$") for op in v):
            rest[k] = v
        elif isinstance(v, (dict, list)):
            rest[k] = v  # containment is looser than equality for these
        else:
            served[k] = v
    return served, rest


def _matches(value: Any, condition: Any) -> bool:
    if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
        return all(_operator(value, op, arg) for op, arg in condition.items())
    if isinstance(condition, dict):
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in condition.items())
    return value == condition


def _operator(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return value == arg
    if op == "$ne":
        return value != arg
    if value is None:
        return False
    compare = {"$gt": float.__gt__, "$gte": float.__ge__, "$lt": float.__lt__, "$lte": float.__le__}
    if op not in compare:
        raise ValueError(f"unsupported filter operator: {op}")
    return compare[op](float(value), float(arg))


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    pairs = zip(namespace, path) if condition.match_type == "prefix" else zip(reversed(namespace), reversed(path))
    return all(p == "*" or n == p for n, p in pairs)


class ContextAPIStore(BaseStore):
    """A LangGraph store keeping one user's items in context-api.

    >>> store = ContextAPIStore(ContextAPI(url, user_key), index={"fields": ["text"]})
    >>> graph = builder.compile(store=store)
    """

    supports_ttl = True

    def __init__(
        self,
        client: ContextAPI | None = None,
        *,
        aclient: AsyncContextAPI | None = None,
        user_id: str | None = None,
        index: IndexConfig | None = None,
        context_type: str = CONTEXT_TYPE,
    ) -> None:
        if client is None and aclient is None:
            raise ValueError("give a ContextAPI (sync use), an AsyncContextAPI (async use), or both")
        self._client, self._aclient = client, aclient
        self._user_id = user_id
        self._fields = list((index or {}).get("fields") or ["$"])
        self._context_type = context_type

    # -------------------------------------------------------------- batch --
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        if self._client is None:
            raise RuntimeError("this store was made with an AsyncContextAPI only: use the a* methods")
        return [self._run(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        if self._aclient is None:
            raise RuntimeError("this store was made with a ContextAPI only: use the sync methods")
        return [await self._arun(op) for op in ops]

    def _run(self, op: Op) -> Result:
        api = self._client
        assert api is not None
        if isinstance(op, GetOp):
            page = api.list(key=context_key(op.namespace, op.key), **self._scope(), limit=1)
            return _item(page.items[0]) if page.items else None
        if isinstance(op, PutOp):
            if op.value is None:
                for ctx in api.list(key=context_key(op.namespace, op.key), **self._scope(), limit=1).items:
                    try:
                        api.delete(ctx.id, hard=True)
                    except NotFound:
                        pass
                return None
            api.put(**self._put_args(op))
            return None
        if isinstance(op, SearchOp):
            metadata, rest = self._search_filter(op)
            if op.query:
                hits = api.search(op.query, **self._search_args(op, metadata)).results
                return self._ranked(op, [(h.context, h.score) for h in hits], rest)
            items = api.iterate(**self._scope(), context_type=self._context_type, metadata=metadata)
            return self._unranked(op, items, rest)
        if isinstance(op, ListNamespacesOp):
            items = api.iterate(**self._scope(), context_type=self._context_type)
            return self._namespaces(op, items)
        raise TypeError(f"unknown operation: {op!r}")

    async def _arun(self, op: Op) -> Result:
        api = self._aclient
        assert api is not None
        if isinstance(op, GetOp):
            page = await api.list(key=context_key(op.namespace, op.key), **self._scope(), limit=1)
            return _item(page.items[0]) if page.items else None
        if isinstance(op, PutOp):
            if op.value is None:
                page = await api.list(key=context_key(op.namespace, op.key), **self._scope(), limit=1)
                for ctx in page.items:
                    try:
                        await api.delete(ctx.id, hard=True)
                    except NotFound:
                        pass
                return None
            await api.put(**self._put_args(op))
            return None
        if isinstance(op, SearchOp):
            metadata, rest = self._search_filter(op)
            if op.query:
                hits = (await api.search(op.query, **self._search_args(op, metadata))).results
                return self._ranked(op, [(h.context, h.score) for h in hits], rest)
            items = [c async for c in api.iterate(**self._scope(), context_type=self._context_type, metadata=metadata)]
            return self._unranked(op, items, rest)
        if isinstance(op, ListNamespacesOp):
            items = [c async for c in api.iterate(**self._scope(), context_type=self._context_type)]
            return self._namespaces(op, items)
        raise TypeError(f"unknown operation: {op!r}")

    # ------------------------------------------------------------ mapping --
    def _scope(self) -> dict[str, Any]:
        return {"user_id": self._user_id} if self._user_id else {}

    def _put_args(self, op: PutOp) -> dict[str, Any]:
        indexed = op.index is not False
        fields = self._fields if op.index in (None, True) else list(op.index or [])
        text = self._text(op.value or {}, fields) if indexed else ""
        return dict(
            key=context_key(op.namespace, op.key),
            content=op.value,
            context_type=self._context_type,
            metadata={
                "namespace": _namespace_filter(op.namespace),
                "depth": len(op.namespace),
                "indexed": indexed and bool(text.strip()),
                "value": op.value,
            },
            # An item not indexed still needs a text: its key, never searched
            # for (searches with a query ask for indexed items only).
            text=text if text.strip() else op.key,
            ttl_seconds=None if op.ttl is None else max(1, round(op.ttl * 60)),
            **self._scope(),
        )

    @staticmethod
    def _text(value: dict[str, Any], fields: list[str]) -> str:
        if fields == ["$"]:
            return json.dumps(value, ensure_ascii=False, sort_keys=True)
        parts = []
        for path in fields:
            node: Any = value
            for step in path.split("."):
                node = node.get(step) if isinstance(node, dict) else None
            if node is not None:
                parts.append(node if isinstance(node, str) else json.dumps(node, ensure_ascii=False))
        return "\n".join(parts)

    def _search_filter(self, op: SearchOp) -> tuple[dict[str, Any], dict[str, Any]]:
        served, rest = _split_filter(op.filter)
        metadata: dict[str, Any] = {"namespace": _namespace_filter(op.namespace_prefix)}
        if served:
            metadata["value"] = served
        return metadata, rest

    def _search_args(self, op: SearchOp, metadata: dict[str, Any]) -> dict[str, Any]:
        return dict(
            k=MAX_K if op.filter else min(MAX_K, max(1, op.offset + op.limit)),
            metadata={**metadata, "indexed": True},
            context_type=self._context_type,
            **self._scope(),
        )

    @staticmethod
    def _keep(ctx: ContextResponse, rest: dict[str, Any]) -> bool:
        return all(_matches(ctx.content.get(k), v) for k, v in rest.items())

    def _ranked(self, op: SearchOp, hits: list[tuple[ContextResponse, float]], rest: dict[str, Any]) -> list[SearchItem]:
        kept = [(c, s) for c, s in hits if self._keep(c, rest)]
        return [_item(c, s, search=True) for c, s in kept[op.offset : op.offset + op.limit]]  # type: ignore[misc]

    def _unranked(self, op: SearchOp, items: Iterable[ContextResponse], rest: dict[str, Any]) -> list[SearchItem]:
        out: list[SearchItem] = []
        skipped = 0
        for ctx in items:
            if not self._keep(ctx, rest):
                continue
            if skipped < op.offset:
                skipped += 1
                continue
            out.append(_item(ctx, search=True))  # type: ignore[arg-type]
            if len(out) == op.limit:
                break
        return out

    @staticmethod
    def _namespaces(op: ListNamespacesOp, items: Iterable[ContextResponse]) -> list[tuple[str, ...]]:
        found = {tuple(json.loads(c.key or "[]")[:-1]) for c in items if c.key}
        if op.match_conditions:
            found = {ns for ns in found if all(_namespace_matches(m, ns) for m in op.match_conditions)}
        if op.max_depth is not None:
            found = {ns[: op.max_depth] for ns in found}
        return sorted(found)[op.offset : op.offset + op.limit]
