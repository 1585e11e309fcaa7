# Generated from docs/openapi.json by scripts/clients-generate.sh
# (datamodel-code-generator 0.89.0). Do not edit: regenerate.

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel


class BatchCreateRequest(BaseModel):
    model_config = ConfigDict(
        extra='forbid',
    )
    items: Annotated[list[dict[str, Any]], Field(max_length=1000, min_length=1)]
    """
    Each item an object with the fields of a create (`CreateContextRequest`).
    An item is read on its own: one with a bad field fails alone, in its
    result. (Kept as raw JSON text, so no JSON tree of the whole batch, 1,000
    vectors as `Value` numbers and tens of MB, is ever built.)
    """


class ContextResponse(BaseModel):
    """
    A stored context. Its `version` is also its ETag.
    """

    content: dict[str, Any]
    context_type: str
    created_at: AwareDatetime
    embedding: list[float] | None = None
    """
    Only with `?include=embedding`.
    """
    embedding_model: str | None = None
    """
    The embedding service's model that made the vector; `null` while
    pending, or when the vector was given by the client.
    """
    embedding_status: Annotated[str, Field(pattern='^(ready|pending)$')]
    """
    `ready` once the context has its vector, `pending` until the worker embeds it.
    """
    expires_at: AwareDatetime | None = None
    id: UUID
    is_active: bool
    key: str | None = None
    """
    The client's name for it, or `null`.
    """
    metadata: dict[str, Any]
    updated_at: AwareDatetime
    user_id: UUID
    version: int


class Embedding(RootModel[float]):
    root: Annotated[float, Field(ge=1e-15, le=1000000000000000.0)]


class Embedding1(RootModel[float]):
    root: Annotated[float, Field(ge=-1000000000000000.0, le=-1e-15)]


class CreateContextRequest(BaseModel):
    """
    A context to store.
    """

    model_config = ConfigDict(
        extra='forbid',
    )
    content: dict[str, Any]
    """
    Any JSON object. `content.text`, when a string, is what gets embedded
    unless `text` is given.
    """
    context_type: Annotated[
        str, Field(examples=['conversation'], max_length=50, min_length=1)
    ]
    """
    A short label, 1 to 50 characters, no control characters.
    """
    embedding: Annotated[
        list[Literal[0] | Embedding | Embedding1] | None,
        Field(max_length=768, min_length=768),
    ] = None
    """
    A vector of exactly `EMBEDDING_DIM` values, not all zero; when given,
    nothing is embedded.
    """
    expires_at: AwareDatetime | None = None
    """
    When the context stops being visible (years 0001 to 9999). Not with `ttl_seconds`.
    """
    key: Annotated[str | None, Field(max_length=1024, min_length=1)] = None
    """
    A name of the client's choosing, unique among the user's live
    contexts (1 to 1,024 characters, no control characters). A create
    whose key is in use is 409; `PUT /contexts` replaces that context.
    Required by `PUT /contexts`.
    """
    metadata: dict[str, Any] | None = None
    """
    A JSON object, matched by the search's `metadata` filter (containment).
    """
    text: Annotated[
        str | None,
        Field(
            pattern='[^\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]'
        ),
    ] = None
    """
    The text to embed, instead of the one derived from `content`.
    """
    ttl_seconds: Annotated[int | None, Field(ge=1, le=3153600000)] = None
    """
    Seconds from now until it expires, at most 100 years. Not with `expires_at`.
    """
    user_id: UUID | None = None
    """
    Optional for a user key (its own user); required for an admin key.
    """


class ListResponse(BaseModel):
    """
    A page, newest first.
    """

    items: list[ContextResponse]
    next_cursor: str | None = None
    """
    Pass as `cursor` for the next page; `null` on the last one.
    """


class Mode(RootModel[Literal['vector', 'text', 'hybrid']]):
    root: Literal['vector', 'text', 'hybrid']
    """
    How results are ranked.
    """


class Embedding2(RootModel[float]):
    root: Annotated[float, Field(ge=1e-15, le=1000000000000000.0)]


class Embedding3(RootModel[float]):
    root: Annotated[float, Field(ge=-1000000000000000.0, le=-1e-15)]


class PatchContextRequest(BaseModel):
    """
    Fields to replace; absent fields keep their value.
    """

    model_config = ConfigDict(
        extra='forbid',
    )
    content: dict[str, Any] | None = None
    context_type: Annotated[str | None, Field(max_length=50, min_length=1)] = None
    embedding: Annotated[
        list[Literal[0] | Embedding2 | Embedding3] | None,
        Field(max_length=768, min_length=768),
    ] = None
    expires_at: AwareDatetime | None = None
    """
    `null` clears the expiry; absent keeps it.
    """
    metadata: dict[str, Any] | None = None
    text: Annotated[
        str | None,
        Field(
            pattern='[^\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]'
        ),
    ] = None
    ttl_seconds: Annotated[int | None, Field(ge=1, le=3153600000)] = None


class Problem(BaseModel):
    """
    An RFC 9457 problem: every error answer's body (`application/problem+json`).
    """

    detail: str
    """
    What went wrong with this request, for a person to read.
    """
    status: Annotated[int, Field(examples=[422], ge=0)]
    """
    The HTTP status, repeated.
    """
    title: Annotated[str, Field(examples=['Invalid request'])]
    type: Annotated[str, Field(examples=['urn:context-api:problem:validation'])]
    """
    `urn:context-api:problem:<slug>`, one per kind of failure.
    """


class Readiness(BaseModel):
    """
    `ready`, `degraded` or `draining`, with each dependency's state.
    """

    checks: dict[str, Any]
    status: Annotated[str, Field(pattern='^(ready|degraded|draining)$')]


class Vector(RootModel[float]):
    root: Annotated[float, Field(ge=1e-15, le=1000000000000000.0)]


class Vector1(RootModel[float]):
    root: Annotated[float, Field(ge=-1000000000000000.0, le=-1e-15)]


class SearchRequest1(BaseModel):
    """
    What to search for (by `mode`), and filters.
    """

    model_config = ConfigDict(
        extra='forbid',
    )
    context_type: Annotated[str | None, Field(max_length=50, min_length=1)] = None
    fallback_to_text: bool | None = None
    """
    When `query` must be embedded and the embedding service is down,
    search by text instead of answering 503 (the answer's `mode` then
    says `text`).
    """
    k: Annotated[int | None, Field(ge=1, le=100)] = None
    """
    How many results, 1 to 100 (default 10).
    """
    metadata: dict[str, Any] | None = None
    """
    Only contexts whose metadata contains this object.
    """
    min_score: Annotated[float | None, Field(ge=-1.0, le=1.0)] = None
    """
    Only results with at least this `score` (as the mode that runs
    defines it), -1 to 1.
    """
    mode: Literal['vector'] | Mode | None = None
    query: Annotated[
        str,
        Field(
            pattern='[^\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]'
        ),
    ]
    """
    Text to search for: embedded in modes `vector` and `hybrid`, matched
    word by word in modes `text` and `hybrid`. Required in modes `text`
    and `hybrid`.
    """
    user_id: UUID | None = None
    """
    Only this user's contexts (a user key: its own, always).
    """
    vector: Annotated[
        list[Literal[0] | Vector | Vector1] | None,
        Field(max_length=768, min_length=768),
    ] = None
    """
    A vector of `EMBEDDING_DIM` values to search for: in mode `vector`
    instead of `query`; in mode `hybrid` as `query`'s vector.
    """


class Vector2(RootModel[float]):
    root: Annotated[float, Field(ge=1e-15, le=1000000000000000.0)]


class Vector3(RootModel[float]):
    root: Annotated[float, Field(ge=-1000000000000000.0, le=-1e-15)]


class SearchRequest2(BaseModel):
    """
    What to search for (by `mode`), and filters.
    """

    model_config = ConfigDict(
        extra='forbid',
    )
    context_type: Annotated[str | None, Field(max_length=50, min_length=1)] = None
    fallback_to_text: bool | None = None
    """
    When `query` must be embedded and the embedding service is down,
    search by text instead of answering 503 (the answer's `mode` then
    says `text`).
    """
    k: Annotated[int | None, Field(ge=1, le=100)] = None
    """
    How many results, 1 to 100 (default 10).
    """
    metadata: dict[str, Any] | None = None
    """
    Only contexts whose metadata contains this object.
    """
    min_score: Annotated[float | None, Field(ge=-1.0, le=1.0)] = None
    """
    Only results with at least this `score` (as the mode that runs
    defines it), -1 to 1.
    """
    mode: Literal['vector'] | Mode | None = None
    query: Annotated[
        str | None,
        Field(
            pattern='[^\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]'
        ),
    ] = None
    """
    Text to search for: embedded in modes `vector` and `hybrid`, matched
    word by word in modes `text` and `hybrid`. Required in modes `text`
    and `hybrid`.
    """
    user_id: UUID | None = None
    """
    Only this user's contexts (a user key: its own, always).
    """
    vector: Annotated[
        list[Literal[0] | Vector2 | Vector3], Field(max_length=768, min_length=768)
    ]
    """
    A vector of `EMBEDDING_DIM` values to search for: in mode `vector`
    instead of `query`; in mode `hybrid` as `query`'s vector.
    """


class Vector4(RootModel[float]):
    root: Annotated[float, Field(ge=1e-15, le=1000000000000000.0)]


class Vector5(RootModel[float]):
    root: Annotated[float, Field(ge=-1000000000000000.0, le=-1e-15)]


class SearchRequest3(BaseModel):
    """
    What to search for (by `mode`), and filters.
    """

    model_config = ConfigDict(
        extra='forbid',
    )
    context_type: Annotated[str | None, Field(max_length=50, min_length=1)] = None
    fallback_to_text: bool | None = None
    """
    When `query` must be embedded and the embedding service is down,
    search by text instead of answering 503 (the answer's `mode` then
    says `text`).
    """
    k: Annotated[int | None, Field(ge=1, le=100)] = None
    """
    How many results, 1 to 100 (default 10).
    """
    metadata: dict[str, Any] | None = None
    """
    Only contexts whose metadata contains this object.
    """
    min_score: Annotated[float | None, Field(ge=-1.0, le=1.0)] = None
    """
    Only results with at least this `score` (as the mode that runs
    defines it), -1 to 1.
    """
    mode: Literal['text']
    query: Annotated[
        str,
        Field(
            pattern='[^\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]'
        ),
    ]
    """
    Text to search for: embedded in modes `vector` and `hybrid`, matched
    word by word in modes `text` and `hybrid`. Required in modes `text`
    and `hybrid`.
    """
    user_id: UUID | None = None
    """
    Only this user's contexts (a user key: its own, always).
    """
    vector: Annotated[
        list[Literal[0] | Vector4 | Vector5] | None,
        Field(max_length=768, min_length=768),
    ] = None
    """
    A vector of `EMBEDDING_DIM` values to search for: in mode `vector`
    instead of `query`; in mode `hybrid` as `query`'s vector.
    """


class Vector6(RootModel[float]):
    root: Annotated[float, Field(ge=1e-15, le=1000000000000000.0)]


class Vector7(RootModel[float]):
    root: Annotated[float, Field(ge=-1000000000000000.0, le=-1e-15)]


class SearchRequest4(BaseModel):
    """
    What to search for (by `mode`), and filters.
    """

    model_config = ConfigDict(
        extra='forbid',
    )
    context_type: Annotated[str | None, Field(max_length=50, min_length=1)] = None
    fallback_to_text: bool | None = None
    """
    When `query` must be embedded and the embedding service is down,
    search by text instead of answering 503 (the answer's `mode` then
    says `text`).
    """
    k: Annotated[int | None, Field(ge=1, le=100)] = None
    """
    How many results, 1 to 100 (default 10).
    """
    metadata: dict[str, Any] | None = None
    """
    Only contexts whose metadata contains this object.
    """
    min_score: Annotated[float | None, Field(ge=-1.0, le=1.0)] = None
    """
    Only results with at least this `score` (as the mode that runs
    defines it), -1 to 1.
    """
    mode: Literal['hybrid']
    query: Annotated[
        str,
        Field(
            pattern='[^\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]'
        ),
    ]
    """
    Text to search for: embedded in modes `vector` and `hybrid`, matched
    word by word in modes `text` and `hybrid`. Required in modes `text`
    and `hybrid`.
    """
    user_id: UUID | None = None
    """
    Only this user's contexts (a user key: its own, always).
    """
    vector: Annotated[
        list[Literal[0] | Vector6 | Vector7] | None,
        Field(max_length=768, min_length=768),
    ] = None
    """
    A vector of `EMBEDDING_DIM` values to search for: in mode `vector`
    instead of `query`; in mode `hybrid` as `query`'s vector.
    """


class SearchRequest(
    RootModel[SearchRequest1 | SearchRequest2 | SearchRequest3 | SearchRequest4]
):
    root: SearchRequest1 | SearchRequest2 | SearchRequest3 | SearchRequest4
    """
    What to search for (by `mode`), and filters.
    """


class SearchResult(BaseModel):
    context: ContextResponse
    score: float
    """
    By mode: `vector`, the cosine similarity to the query, -1 to 1;
    `text`, the Okapi BM25 score s (k1 1.2, b 0.75) mapped to 0..1 as
    s / (s + 1); `hybrid`, the fused score, the sum of
    `weight / (HYBRID_RRF_K + rank)` over the two rankings that found it.
    """


class BatchItemResult(BaseModel):
    """
    One item's outcome: 201 with its context, or its own problem.
    """

    context: ContextResponse | None = None
    problem: Problem | None = None
    status: Annotated[int, Field(ge=0)]


class SearchResponse(BaseModel):
    """
    Best first.
    """

    mode: Mode
    """
    The mode that ran: the one asked for, or `text` after a fallback.
    """
    results: list[SearchResult]


class BatchCreateResponse(BaseModel):
    created: Annotated[int, Field(ge=0)]
    failed: Annotated[int, Field(ge=0)]
    pending: Annotated[int, Field(ge=0)]
    """
    Of the created, those stored `pending`: the embedding service did not
    answer within the inline wait, and the worker makes their vectors
    later. `GET /contexts?embedding_status=pending` lists them.
    """
    results: list[BatchItemResult]
