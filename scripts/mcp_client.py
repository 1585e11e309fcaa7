"""The official MCP Python SDK against context-api's /mcp, as an agent uses it:
an admin key stores a memory for a user and recalls it, and replaces a
memory by its key; a key scoped to another user neither sees it nor reaches
it by id.

    mcp_client.py URL ADMIN_KEY USER_KEY USER_ID OTHER_USER_ID

USER_KEY belongs to USER_ID. Exits 1 with a message on the first failure.
"""
import asyncio
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def session_call(url: str, key: str, calls):
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                return await calls(s)


def check(cond: bool, what: str) -> None:
    if not cond:
        sys.exit(f"mcp_client: {what}")


async def main(url: str, admin_key: str, user_key: str, user: str, other: str) -> None:
    async def as_admin(s: ClientSession):
        tools = {t.name for t in (await s.list_tools()).tools}
        check(tools >= {"remember", "recall", "list_memories", "get_memory", "update_memory", "forget"},
              f"tools: {tools}")
        mine = await s.call_tool("remember", {"text": "the user's cat is called Miso", "user_id": user,
                                              "metadata": {"source": "python-sdk"}})
        check(not mine.is_error, f"remember: {mine}")
        theirs = await s.call_tool("remember", {"text": "the other user's cat is called Pixel",
                                                "user_id": other})
        check(not theirs.is_error, f"remember: {theirs}")
        found = await s.call_tool("recall", {"query": "what is the cat called?", "user_id": user,
                                             "mode": "hybrid", "k": 5})
        check(not found.is_error, f"recall: {found}")
        ids = [r["context"]["id"] for r in found.structured_content["results"]]
        check(ids and ids[0] == mine.structured_content["id"], f"recall found {ids}")
        # A key names a memory: remembering under it again replaces it.
        first = await s.call_tool("remember", {"text": "the user drinks green tea", "user_id": user,
                                               "key": "drink"})
        again = await s.call_tool("remember", {"text": "the user drinks black coffee", "user_id": user,
                                               "key": "drink"})
        check(not first.is_error and not again.is_error, f"remember with a key: {first} {again}")
        check(again.structured_content["id"] == first.structured_content["id"]
              and again.structured_content["version"] == 2, f"the key's memory replaced: {again}")
        listed = await s.call_tool("list_memories", {"user_id": user, "key": "drink"})
        texts = [c["content"]["text"] for c in listed.structured_content["items"]]
        check(texts == ["the user drinks black coffee"], f"list_memories by key: {texts}")
        return mine.structured_content["id"], theirs.structured_content["id"]

    mine, theirs = await session_call(url, admin_key, as_admin)

    async def as_user(s: ClientSession):
        found = await s.call_tool("recall", {"query": "cat", "mode": "text"})
        users = {r["context"]["user_id"] for r in found.structured_content["results"]}
        check(users == {user}, f"a user key recalled {users}")
        denied = await s.call_tool("recall", {"query": "cat", "user_id": other})
        check(denied.is_error and denied.structured_content["status"] == 403, f"another user's recall: {denied}")
        hidden = await s.call_tool("get_memory", {"id": theirs})
        check(hidden.is_error and hidden.structured_content["status"] == 404, f"another user's memory: {hidden}")
        bad = await s.call_tool("recall", {"query": "cat", "k": 1000})
        check(bad.is_error and bad.structured_content["status"] == 422, f"k=1000: {bad}")
        own = await s.call_tool("get_memory", {"id": mine})
        check(not own.is_error, f"own memory: {own}")

    await session_call(url, user_key, as_user)
    print("mcp_client: ok: stored, recalled, scoped")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
