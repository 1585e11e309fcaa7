"""The sync client, every method, against the live service."""

from __future__ import annotations

import math
import time
import uuid

import pytest

from context_api_client import (
    ContextAPI,
    Forbidden,
    NotFound,
    PreconditionFailed,
    RateLimited,
    RetryPolicy,
    TransportError,
    Unauthorized,
    ValidationFailed,
)

from .proxy import DroppingProxy


def test_create_get_update_delete_round_trip(user: ContextAPI, service) -> None:
    ctx = user.create(
        {"text": "prefers green tea"}, context_type="preference", metadata={"topic": "drinks"}, ttl_seconds=3600
    )
    assert str(ctx.user_id) == service.user_id
    assert (ctx.version, ctx.context_type, ctx.metadata) == (1, "preference", {"topic": "drinks"})
    assert ctx.expires_at is not None

    got = user.get(ctx.id, include_embedding=True)
    assert got.content == {"text": "prefers green tea"}
    assert got.embedding is not None and len(got.embedding) == service.dim
    assert user.get(ctx).embedding is None

    changed = user.update(got, content={"text": "prefers black coffee"}, expires_at=None)
    assert (changed.version, changed.content["text"], changed.expires_at) == (2, "prefers black coffee", None)
    assert changed.metadata == {"topic": "drinks"}, "a field left out keeps its value"

    user.delete(changed, hard=True)
    with pytest.raises(NotFound) as e:
        user.get(ctx.id)
    assert e.value.status == 404 and e.value.type == "urn:context-api:problem:not-found"


def test_if_match_comes_from_the_fetched_context(user: ContextAPI) -> None:
    ctx = user.create({"text": "lives in Lisbon"})
    user.update(ctx.id, content={"text": "lives in Porto"})  # someone else's change: version 2
    with pytest.raises(PreconditionFailed) as e:
        user.update(ctx, content={"text": "lives in Faro"})  # If-Match: "1"
    assert e.value.problem.status == 412
    with pytest.raises(PreconditionFailed):
        user.delete(ctx)
    with pytest.raises(PreconditionFailed):
        user.update(ctx.id, if_match=1, content={})
    assert user.update(ctx.id, if_match=2, content={"text": "lives in Faro"}).version == 3
    assert user.update(ctx, if_match=False, metadata={"k": 1}).version == 4
    user.delete(ctx.id, if_match=4)
    with pytest.raises(NotFound):
        user.get(ctx.id)


def test_problems_are_raised_as_typed_exceptions(service, user: ContextAPI) -> None:
    with pytest.raises(ValidationFailed) as e:
        user.create({"text": "x"}, context_type="")
    assert e.value.status == 422 and "context_type" in e.value.detail
    with pytest.raises(ValidationFailed):
        user.create({}, embedding=[0.5] * (service.dim + 1))
    with pytest.raises(NotFound):
        user.get(uuid.uuid4())
    with ContextAPI(service.url, "not-a-key") as stranger:
        with pytest.raises(Unauthorized) as e:
            stranger.list()
    assert e.value.problem.title and e.value.response.status_code == 401


def test_a_user_key_is_confined_to_its_user(service, admin: ContextAPI, user: ContextAPI, tag) -> None:
    other = str(uuid.uuid4())
    theirs = admin.create({"text": "someone else's secret"}, user_id=other, context_type=tag)
    mine = user.create({"text": "my own secret"}, context_type=tag)
    with pytest.raises(Forbidden):
        user.create({"text": "x"}, user_id=other)
    with pytest.raises(NotFound):
        user.get(theirs.id)
    with pytest.raises(NotFound):
        user.delete(theirs.id)
    with pytest.raises(Forbidden):
        user.search("secret", user_id=other)
    found = user.search("secret", context_type=tag, k=10).results
    assert [str(r.context.id) for r in found] == [str(mine.id)]
    assert [c.id for c in user.iterate(context_type=tag)] == [mine.id]
    assert {c.id for c in admin.iterate(context_type=tag, user_id=other)} == {theirs.id}


def test_pages_and_iteration(admin: ContextAPI, fresh_user: str) -> None:
    made = admin.add_many([{"content": {"i": i}} for i in range(25)], user_id=fresh_user, context_type="page")
    assert made.created == 25
    page = admin.list(user_id=fresh_user, limit=10)
    assert len(page.items) == 10 and page.next_cursor
    second = admin.list(user_id=fresh_user, limit=10, cursor=page.next_cursor)
    assert not {c.id for c in page.items} & {c.id for c in second.items}
    walked = list(admin.iterate(user_id=fresh_user, page_size=10))
    assert len(walked) == 25 and len({c.id for c in walked}) == 25
    assert [c.created_at for c in walked] == sorted((c.created_at for c in walked), reverse=True)
    assert list(admin.iterate(user_id=fresh_user, context_type="other")) == []


def test_every_search_mode_and_filter(service, user: ContextAPI, tag) -> None:
    tea = user.create({"text": "green tea every morning"}, context_type=tag, metadata={"topic": "drinks"})
    user.create({"text": "coffee after lunch"}, context_type=tag, metadata={"topic": "drinks"})
    bike = user.create({"text": "rides a bike to work"}, context_type=tag, metadata={"topic": "travel"})
    for mode in ("vector", "text", "hybrid"):
        resp = user.search("green tea", mode=mode, context_type=tag, k=3)
        assert resp.mode.root == mode
        assert resp.results[0].context.id == tea.id, mode
    travel = user.search("tea", metadata={"topic": "travel"}, context_type=tag)
    assert [r.context.id for r in travel.results] == [bike.id]
    assert len(user.search("green tea", context_type=tag, k=1).results) == 1
    strict = user.search("green tea", context_type=tag, min_score=0.99)
    assert all(r.score >= 0.99 for r in strict.results)
    vector = user.get(tea, include_embedding=True).embedding
    exact = user.search(vector=vector, context_type=tag, k=1).results[0]
    assert exact.context.id == tea.id and math.isclose(exact.score, 1.0, abs_tol=1e-4)
    fallback = user.search("green tea", context_type=tag, fallback_to_text=True)
    assert fallback.results[0].context.id == tea.id


def test_add_many_chunks_and_answers_each_item_in_order(admin: ContextAPI, fresh_user: str) -> None:
    items = [{"content": {"text": f"fact {i}"}} for i in range(2100)]
    items[1500] = {"content": {"text": "bad"}, "ttl_seconds": 0}
    result = admin.add_many(items, user_id=fresh_user, context_type="fact")
    assert (result.created, result.failed) == (2099, 1)
    assert [(i, p.status) for i, p in result.problems] == [(1500, 422)]
    assert [c.content["text"] for c in result.contexts[1498:1501]] == ["fact 1498", "fact 1499", "fact 1501"]
    assert sum(1 for _ in admin.iterate(user_id=fresh_user, page_size=100)) == 2099
    with pytest.raises(ValueError):
        admin.add_many(items, chunk_size=1001)


def test_a_load_stored_pending_becomes_searchable_and_is_waited_for(
    service, admin: ContextAPI, fresh_user: str
) -> None:
    # Through an instance that cannot reach its embedding service: stored
    # pending. The first instance's worker makes the vectors.
    with ContextAPI(service.unembedded_url, service.admin_key) as unembedded:
        result = unembedded.add_many(
            [{"content": {"text": f"tulip bulb {i}"}} for i in range(5)]
            + [{"content": {"text": "given"}, "embedding": [0.5] * service.dim}],
            user_id=fresh_user,
        )
    assert (result.created, result.pending) == (6, 5)
    waiting = admin.list(user_id=fresh_user, embedding_status="pending", limit=100).items
    assert {c.id for c in waiting} <= {c.id for c in result.contexts[:5]}
    admin.wait_until_searchable(user_id=fresh_user, timeout=60, poll=0.5)
    assert admin.list(user_id=fresh_user, embedding_status="pending").items == []
    ready = list(admin.iterate(user_id=fresh_user, embedding_status="ready"))
    assert len(ready) == 6
    found = admin.search("tulip bulb 3", user_id=fresh_user, k=1).results
    assert found[0].context.content["text"] == "tulip bulb 3"


def test_add_many_halves_a_chunk_the_service_finds_too_large(admin: ContextAPI, fresh_user: str) -> None:
    # The service under test takes bodies of 64 KiB, batches of 1 MiB: 600 items
    # of 3 KB make a 1.8 MB batch, and one item of 1.2 MB fails alone.
    items = [{"content": {"text": f"note {i}", "pad": "x" * 3000}} for i in range(600)]
    items.insert(10, {"content": {"pad": "y" * 1_200_000}})
    result = admin.add_many(items, user_id=fresh_user, context_type="big")
    assert result.created == 600
    assert [(i, p.status) for i, p in result.problems] == [(10, 413)]
    assert result.contexts[10].content["text"] == "note 10"


def test_a_retried_create_is_stored_once(service, admin: ContextAPI, fresh_user: str) -> None:
    proxy = DroppingProxy(service.url, "POST", drop=1)
    try:
        with ContextAPI(proxy.url, service.admin_key) as api:
            ctx = api.create({"text": "said once"}, user_id=fresh_user)
            batch = api.add_many([{"content": {"n": 1}}, {"content": {"n": 2}}], user_id=fresh_user)
    finally:
        proxy.close()
    posts = [(path, h["idempotency-key"]) for method, path, h in proxy.seen if method == "POST"]
    assert len(posts) == 3, posts
    assert posts[0] == posts[1], "the retry carries the first attempt's Idempotency-Key"
    assert batch.created == 2
    stored = list(admin.iterate(user_id=fresh_user))
    assert len(stored) == 3 and ctx.id in {c.id for c in stored}


def test_a_write_that_is_not_safe_to_resend_is_not_retried(service, admin: ContextAPI) -> None:
    ctx = admin.create({"text": "v1"}, user_id=str(uuid.uuid4()))
    proxy = DroppingProxy(service.url, "PATCH", drop=1)
    try:
        with ContextAPI(proxy.url, service.admin_key) as api:
            with pytest.raises(TransportError):
                api.update(ctx, content={"text": "v2"})
    finally:
        proxy.close()
    assert [m for m, _, _ in proxy.seen] == ["PATCH"]
    assert admin.get(ctx.id).version == 2, "the service applied it once"


def test_429_is_retried_after_the_wait_the_service_asks(service) -> None:
    burst = service.rate_per_minute
    interval = 60 / burst
    with ContextAPI(service.limited_url, service.user_key, retry=RetryPolicy(max_retries=0)) as impatient:
        with pytest.raises(RateLimited) as e:
            for _ in range(burst + 1):
                impatient.list(limit=1)
    assert e.value.status == 429 and 0 < e.value.retry_after <= math.ceil(interval)
    with ContextAPI(service.limited_url, service.user_key, retry=RetryPolicy(max_retries=5)) as patient:
        t0 = time.monotonic()
        tag = "r" + uuid.uuid4().hex[:8]
        for i in range(3):
            patient.create({"n": i}, context_type=tag)
        waited = time.monotonic() - t0
        assert len(list(patient.iterate(context_type=tag))) == 3, "each create stored once"
    assert waited >= interval, f"it waited for the limit: {waited:.2f}s"
    with ContextAPI(service.limited_url, service.user_key, retry=RetryPolicy(max_delay=0.1)) as hasty:
        with pytest.raises(RateLimited):
            hasty.list(limit=1)  # the service asks for more than max_delay: raised, not slept


def test_ready_reports_the_dependencies(user: ContextAPI) -> None:
    r = user.ready()
    assert r.status == "ready" and {"postgres", "redis", "embeddings"} <= set(r.checks), r


def test_put_creates_then_replaces_by_key_and_list_finds_it(user: ContextAPI, tag) -> None:
    from context_api_client import Conflict

    first = user.put("favourite-drink", {"text": "green tea"}, context_type=tag, metadata={"topic": "drinks"})
    second = user.put("favourite-drink", {"text": "black coffee"}, context_type=tag, metadata={"topic": "drinks"})
    assert (second.id, second.version, second.key) == (first.id, 2, "favourite-drink")
    with pytest.raises(Conflict) as e:
        user.create({"text": "again"}, key="favourite-drink", context_type=tag)
    assert e.value.type == "urn:context-api:problem:key-taken" and e.value.retry_after is None
    [found] = user.list(key="favourite-drink").items
    assert found.content == {"text": "black coffee"}
    user.create({"text": "a bus"}, context_type=tag, metadata={"topic": "travel"})
    assert [c.id for c in user.iterate(context_type=tag, metadata={"topic": "drinks"})] == [first.id]
