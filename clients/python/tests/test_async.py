"""The async client: the same surface, awaited, against the live service."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from context_api_client import AsyncContextAPI, NotFound, PreconditionFailed, ValidationFailed


async def test_round_trip_if_match_and_errors(auser: AsyncContextAPI, service) -> None:
    ctx = await auser.create({"text": "plays the cello"}, context_type="hobby", metadata={"m": 1})
    assert str(ctx.user_id) == service.user_id and ctx.version == 1
    got = await auser.get(ctx.id, include_embedding=True)
    assert got.embedding is not None and len(got.embedding) == service.dim
    changed = await auser.update(got, content={"text": "plays the viola"})
    assert changed.version == 2 and changed.metadata == {"m": 1}
    with pytest.raises(PreconditionFailed):
        await auser.update(got, content={"text": "stale"})
    with pytest.raises(ValidationFailed):
        await auser.create({}, context_type="x" * 51)
    await auser.delete(changed)
    with pytest.raises(NotFound):
        await auser.get(ctx.id)


async def test_concurrent_creates_pages_search_and_batches(service) -> None:
    owner = str(uuid.uuid4())
    async with AsyncContextAPI(service.url, service.admin_key) as api:
        made = await asyncio.gather(
            *(api.create({"text": f"memory {i} of a violin"}, user_id=owner) for i in range(20))
        )
        assert len({c.id for c in made}) == 20
        batch = await api.add_many(
            [{"content": {"text": f"note {i}"}} for i in range(30)] + [{"content": "not an object"}],
            user_id=owner,
        )
        assert (batch.created, batch.failed) == (30, 1)
        assert batch.problems[0][0] == 30
        seen = [c.id async for c in api.iterate(user_id=owner, page_size=7)]
        assert len(seen) == 50 and len(set(seen)) == 50
        page = await api.list(user_id=owner, limit=5)
        assert len(page.items) == 5 and page.next_cursor
        for mode in ("vector", "text", "hybrid"):
            hits = await api.search("violin", mode=mode, user_id=owner, k=5)
            assert len(hits.results) == 5, mode
            assert all("violin" in r.context.content["text"] for r in hits.results), mode
        assert (await api.ready()).status == "ready"


async def test_waiting_for_a_pending_load(service) -> None:
    owner = str(uuid.uuid4())
    async with AsyncContextAPI(service.unembedded_url, service.admin_key) as unembedded:
        batch = await unembedded.add_many([{"content": {"text": f"fern {i}"}} for i in range(3)], user_id=owner)
    assert batch.pending == 3
    async with AsyncContextAPI(service.url, service.admin_key) as api:
        await api.wait_until_searchable(user_id=owner, timeout=60, poll=0.5)
        assert [c async for c in api.iterate(user_id=owner, embedding_status="pending")] == []
        hits = await api.search("fern 2", user_id=owner, k=1)
        assert hits.results[0].context.content["text"] == "fern 2"
