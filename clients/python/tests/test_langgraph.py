"""The LangGraph store over the live service: what LangGraph's own
InMemoryStore does with the same operations, ours must do too; then the
store inside a LangGraph graph, sync and async."""

from __future__ import annotations

import time
import uuid
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from context_api_client import AsyncContextAPI, ContextAPI
from context_api_client.langgraph import ContextAPIStore

ITEMS = [
    (("users", "u1", "memories"), "m1", {"text": "likes green tea", "n": 1, "kind": "fact"}),
    (("users", "u1", "memories"), "m2", {"text": "rides a bike to work", "n": 5, "kind": "habit"}),
    (("users", "u1", "prefs"), "p1", {"text": "dark mode", "n": 3, "kind": "fact"}),
    (("users", "u2", "memories"), "m1", {"text": "plays the cello", "n": 2, "kind": "fact"}),
    (("docs",), "d1", {"text": "the manual", "n": 9, "kind": "doc", "tags": {"lang": "en"}}),
]


@pytest.fixture
def store(service, fresh_user):
    client = ContextAPI(service.url, service.admin_key)
    yield ContextAPIStore(client, user_id=fresh_user, index={"fields": ["text"]})
    client.close()


def fill(*stores: BaseStore) -> None:
    for s in stores:
        for ns, key, value in ITEMS:
            s.put(ns, key, value)


def keys(items) -> list[tuple[tuple[str, ...], str]]:
    return sorted((i.namespace, i.key) for i in items)


def test_it_does_what_langgraphs_in_memory_store_does(store: ContextAPIStore) -> None:
    ref = InMemoryStore()
    fill(ref, store)
    # (Not a get in a namespace the reference lacks: its get creates it.)
    assert store.get(("nope",), "m1") is None
    for ns, key, _ in ITEMS + [(("users", "u1", "memories"), "absent", None)]:
        want, got = ref.get(ns, key), store.get(ns, key)
        assert (got is None) == (want is None), (ns, key)
        if want is not None:
            assert (got.namespace, got.key, got.value) == (want.namespace, want.key, want.value)

    searches = [
        dict(namespace_prefix=("users",)),
        dict(namespace_prefix=("users", "u1")),
        dict(namespace_prefix=("users", "u1", "memories")),
        dict(namespace_prefix=()),
        dict(namespace_prefix=("users",), filter={"kind": "fact"}),
        dict(namespace_prefix=(), filter={"n": {"$gt": 2}}),
        dict(namespace_prefix=(), filter={"n": {"$gte": 2, "$lt": 9}, "kind": {"$ne": "habit"}}),
        dict(namespace_prefix=(), filter={"tags": {"lang": "en"}}),
        dict(namespace_prefix=("users",), filter={"kind": "none"}),
    ]
    for args in searches:
        prefix = args["namespace_prefix"]
        flt = args.get("filter")
        want = ref.search(prefix, filter=flt, limit=10)
        got = store.search(prefix, filter=flt, limit=10)
        assert keys(got) == keys(want), args
        assert all(i.score is None for i in got)
    # Pages: the same number of items, none twice.
    pages = [store.search(("users",), limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [len(p) for p in (ref.search(("users",), limit=2, offset=o) for o in (0, 2, 4))]
    assert len({(i.namespace, i.key) for p in pages for i in p}) == 4

    for kwargs in [
        {},
        {"prefix": ("users",)},
        {"prefix": ("users", "*", "memories")},
        {"suffix": ("memories",)},
        {"prefix": ("users",), "max_depth": 2},
        {"max_depth": 1},
        {"limit": 2, "offset": 1},
        {"prefix": ("nope",)},
    ]:
        assert store.list_namespaces(**kwargs) == ref.list_namespaces(**kwargs), kwargs

    # A put replaces; a delete removes; both as the reference does.
    before = store.get(("docs",), "d1")
    time.sleep(0.01)
    for s in (ref, store):
        s.put(("docs",), "d1", {"text": "the new manual", "n": 10, "kind": "doc"})
        s.delete(("users", "u2", "memories"), "m1")
    after = store.get(("docs",), "d1")
    assert after.value == ref.get(("docs",), "d1").value
    assert after.created_at == before.created_at and after.updated_at > before.updated_at
    assert store.get(("users", "u2", "memories"), "m1") is None
    # The reference keeps a namespace whose last item went; LangGraph's
    # Postgres store, like ours, lists the namespaces of the items there are.
    assert store.list_namespaces() == sorted({i.namespace for i in ref.search((), limit=100)})
    store.delete(("users", "u2", "memories"), "m1")  # again: nothing to do


def test_a_query_ranks_by_meaning_and_skips_items_not_indexed(store: ContextAPIStore) -> None:
    fill(store)
    store.put(("users", "u1", "memories"), "secret", {"text": "green tea is a secret"}, index=False)
    hits = store.search(("users", "u1"), query="green tea", limit=3)
    assert hits[0].key == "m1" and hits[0].value["text"] == "likes green tea"
    assert hits[0].score is not None and hits[0].score > hits[-1].score
    assert all(h.key != "secret" for h in hits), "index=False: not found by a query"
    assert "secret" in [i.key for i in store.search(("users", "u1", "memories"), limit=10)], "but by a listing"
    only_facts = store.search(("users",), query="green tea", filter={"kind": "fact"}, limit=10)
    assert {h.key for h in only_facts} == {"m1", "p1"}
    paged = store.search(("users", "u1"), query="green tea", limit=1, offset=1)
    assert [h.key for h in paged] == [hits[1].key]


def test_ttl_expires_items(store: ContextAPIStore) -> None:
    store.put(("tmp",), "t", {"text": "brief"}, ttl=1 / 60)  # one second
    assert store.get(("tmp",), "t") is not None
    time.sleep(1.3)
    assert store.get(("tmp",), "t") is None
    assert store.list_namespaces(prefix=("tmp",)) == []


def test_a_user_key_store_sees_only_its_user(service) -> None:
    other = str(uuid.uuid4())
    with ContextAPI(service.url, service.admin_key) as admin, ContextAPI(service.url, service.user_key) as user:
        theirs = ContextAPIStore(admin, user_id=other)
        mine = ContextAPIStore(user)
        ns = ("shared", uuid.uuid4().hex)
        theirs.put(ns, "k", {"text": "theirs"})
        assert mine.get(ns, "k") is None
        mine.put(ns, "k", {"text": "mine"})
        assert theirs.get(ns, "k").value == {"text": "theirs"}
        assert mine.get(ns, "k").value == {"text": "mine"}
        assert mine.search(ns, query="theirs") and mine.search(ns, query="theirs")[0].value == {"text": "mine"}


class State(TypedDict):
    text: str
    recalled: list[str]


def memory_graph():
    def remember(state: State, runtime: Runtime) -> dict:
        n = len(runtime.store.search(("memories",), limit=100))
        runtime.store.put(("memories",), f"m{n}", {"text": state["text"]})
        return {}

    def recall(state: State, runtime: Runtime) -> dict:
        hits = runtime.store.search(("memories",), query=state["text"], limit=2)
        return {"recalled": [h.value["text"] for h in hits]}

    async def aremember(state: State, runtime: Runtime) -> dict:
        n = len(await runtime.store.asearch(("memories",), limit=100))
        await runtime.store.aput(("memories",), f"m{n}", {"text": state["text"]})
        return {}

    async def arecall(state: State, runtime: Runtime) -> dict:
        hits = await runtime.store.asearch(("memories",), query=state["text"], limit=2)
        return {"recalled": [h.value["text"] for h in hits]}

    graphs = []
    for a, b in ((remember, recall), (aremember, arecall)):
        g = StateGraph(State)
        g.add_node("remember", a)
        g.add_node("recall", b)
        g.add_edge(START, "remember")
        g.add_edge("remember", "recall")
        g.add_edge("recall", END)
        graphs.append(g)
    return graphs


def test_a_langgraph_graph_keeps_its_memory_in_the_service(service) -> None:
    sync_graph, _ = memory_graph()
    with ContextAPI(service.url, service.admin_key) as api:
        store = ContextAPIStore(api, user_id=str(uuid.uuid4()))
        app = sync_graph.compile(store=store)
        app.invoke({"text": "the user likes green tea", "recalled": []})
        out = app.invoke({"text": "the user rides a bike", "recalled": []})
        assert out["recalled"][0] == "the user rides a bike"
        out = app.invoke({"text": "green tea", "recalled": []})
        assert "the user likes green tea" in out["recalled"]
        assert len(store.search(("memories",), limit=10)) == 3


async def test_the_async_store_in_an_async_graph(service) -> None:
    _, async_graph = memory_graph()
    owner = str(uuid.uuid4())
    async with AsyncContextAPI(service.url, service.admin_key) as api:
        store = ContextAPIStore(aclient=api, user_id=owner)
        app = async_graph.compile(store=store)
        await app.ainvoke({"text": "plays the cello on sundays", "recalled": []})
        out = await app.ainvoke({"text": "cello", "recalled": []})
        assert "plays the cello on sundays" in out["recalled"]
        assert await store.alist_namespaces() == [("memories",)]
        await store.adelete(("memories",), "m0")
        assert await store.aget(("memories",), "m0") is None
        with pytest.raises(RuntimeError):
            store.get(("memories",), "m1")
