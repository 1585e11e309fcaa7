"""The client against the live service: scripts/clients-test.sh starts the
release build (real Postgres and Redis, the TEI stand-in) and passes it here.
Without it the tests fail, naming what is missing; they never skip."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest

from context_api_client import AsyncContextAPI, ContextAPI

NEEDED = {
    "CONTEXT_API_URL": "the service under test",
    "CONTEXT_API_LIMITED_URL": "a second instance with RATE_LIMIT_USER_PER_MINUTE set",
    "CONTEXT_API_UNEMBEDDED_URL": "a third instance whose embedding service is unreachable",
    "CONTEXT_API_ADMIN_KEY": "an admin key",
    "CONTEXT_API_USER_KEY": "a key scoped to CONTEXT_API_USER_ID",
    "CONTEXT_API_USER_ID": "the user of CONTEXT_API_USER_KEY",
    "CONTEXT_API_DIM": "the service's EMBEDDING_DIM",
    "CONTEXT_API_RATE_PER_MINUTE": "the limited instance's RATE_LIMIT_USER_PER_MINUTE",
}


@dataclass(frozen=True)
class Service:
    url: str
    limited_url: str
    unembedded_url: str
    admin_key: str
    user_key: str
    user_id: str
    dim: int
    rate_per_minute: int


@pytest.fixture(scope="session")
def service() -> Service:
    missing = [f"{k} ({what})" for k, what in NEEDED.items() if not os.environ.get(k)]
    if missing:
        pytest.fail(
            "these tests run against a live service; missing: " + "; ".join(missing)
            + ". Run scripts/clients-test.sh.",
            pytrace=False,
        )
    e = os.environ
    return Service(
        url=e["CONTEXT_API_URL"],
        limited_url=e["CONTEXT_API_LIMITED_URL"],
        unembedded_url=e["CONTEXT_API_UNEMBEDDED_URL"],
        admin_key=e["CONTEXT_API_ADMIN_KEY"],
        user_key=e["CONTEXT_API_USER_KEY"],
        user_id=e["CONTEXT_API_USER_ID"],
        dim=int(e["CONTEXT_API_DIM"]),
        rate_per_minute=int(e["CONTEXT_API_RATE_PER_MINUTE"]),
    )


@pytest.fixture
def admin(service: Service):
    with ContextAPI(service.url, service.admin_key) as api:
        yield api


@pytest.fixture
def user(service: Service):
    with ContextAPI(service.url, service.user_key) as api:
        yield api


@pytest.fixture
async def auser(service: Service):
    async with AsyncContextAPI(service.url, service.user_key) as api:
        yield api


@pytest.fixture
def fresh_user() -> str:
    """A user id no other test writes to, for counts and pages."""
    return str(uuid.uuid4())


@pytest.fixture
def tag() -> str:
    """A context_type of this test's own, to filter on."""
    return "t" + uuid.uuid4().hex[:12]
