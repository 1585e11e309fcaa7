// The TypeScript client against the live service (scripts/clients-test.sh
// starts it: the release build, real Postgres and Redis, the TEI stand-in).
// Without the service the tests fail, naming what is missing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { randomUUID } from "node:crypto";

import {
  BatchResult,
  Conflict,
  ContextAPI,
  Forbidden,
  NotFound,
  PreconditionFailed,
  RateLimited,
  type SearchRequest,
  TransportError,
  Unauthorized,
  ValidationFailed,
} from "../src/index.js";

const NEEDED = [
  "CONTEXT_API_URL",
  "CONTEXT_API_LIMITED_URL",
  "CONTEXT_API_UNEMBEDDED_URL",
  "CONTEXT_API_ADMIN_KEY",
  "CONTEXT_API_USER_KEY",
  "CONTEXT_API_USER_ID",
  "CONTEXT_API_DIM",
  "CONTEXT_API_RATE_PER_MINUTE",
];
const missing = NEEDED.filter((k) => !process.env[k]);
if (missing.length) {
  throw new Error(`these tests run against a live service; missing ${missing.join(", ")}. Run scripts/clients-test.sh.`);
}
const env = (k: string) => process.env[k] as string;
const url = env("CONTEXT_API_URL");
const dim = Number(env("CONTEXT_API_DIM"));
const admin = new ContextAPI({ baseUrl: url, apiKey: env("CONTEXT_API_ADMIN_KEY") });
const user = new ContextAPI({ baseUrl: url, apiKey: env("CONTEXT_API_USER_KEY") });
const tag = () => "ts" + randomUUID().slice(0, 8);

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe("contexts", () => {
  test("create, get, update and delete", async () => {
    const ctx = await user.create({ content: { text: "prefers green tea" }, metadata: { topic: "drinks" }, ttl_seconds: 3600 });
    assert.equal(ctx.user_id, env("CONTEXT_API_USER_ID"));
    assert.equal(ctx.version, 1);
    assert.equal(ctx.context_type, "note");
    assert.ok(ctx.expires_at);
    const got = await user.get(ctx.id, { includeEmbedding: true });
    assert.equal(got.embedding?.length, dim);
    assert.equal((await user.get(ctx)).embedding, undefined);
    const changed = await user.update(got, { content: { text: "prefers black coffee" }, expires_at: null });
    assert.equal(changed.version, 2);
    assert.equal(changed.expires_at, null);
    assert.deepEqual(changed.metadata, { topic: "drinks" });
    await user.delete(changed, { hard: true });
    await assert.rejects(user.get(ctx.id), (e: NotFound) => e instanceof NotFound && e.type === "urn:context-api:problem:not-found");
  });

  test("If-Match comes from the fetched context", async () => {
    const ctx = await user.create({ content: { text: "lives in Lisbon" } });
    await user.update(ctx.id, { content: { text: "lives in Porto" } });
    await assert.rejects(user.update(ctx, { content: { text: "lives in Faro" } }), PreconditionFailed);
    await assert.rejects(user.delete(ctx), PreconditionFailed);
    assert.equal((await user.update(ctx.id, { content: {} }, { ifMatch: 2 })).version, 3);
    assert.equal((await user.update(ctx, { metadata: { k: 1 } }, { ifMatch: false })).version, 4);
    await user.delete(ctx.id, { ifMatch: 4 });
    await assert.rejects(user.get(ctx.id), NotFound);
  });

  test("problems are thrown as typed errors", async () => {
    await assert.rejects(user.create({ content: {}, context_type: "" }), (e: ValidationFailed) => {
      assert.ok(e instanceof ValidationFailed);
      assert.equal(e.status, 422);
      assert.match(e.detail, /context_type/);
      return true;
    });
    await assert.rejects(user.create({ content: {}, embedding: new Array(dim + 1).fill(0.5) }), ValidationFailed);
    await assert.rejects(user.get(randomUUID()), NotFound);
    const stranger = new ContextAPI({ baseUrl: url, apiKey: "not-a-key" });
    await assert.rejects(stranger.list(), (e: Unauthorized) => e instanceof Unauthorized && e.response.status === 401);
  });

  test("a user key is confined to its user", async () => {
    const t = tag();
    const other = randomUUID();
    const theirs = await admin.create({ content: { text: "someone else's secret" }, user_id: other, context_type: t });
    const mine = await user.create({ content: { text: "my own secret" }, context_type: t });
    await assert.rejects(user.create({ content: {}, user_id: other }), Forbidden);
    await assert.rejects(user.get(theirs.id), NotFound);
    await assert.rejects(user.search({ query: "secret", user_id: other }), Forbidden);
    const found = await user.search({ query: "secret", context_type: t, k: 10 });
    assert.deepEqual(found.results.map((r) => r.context.id), [mine.id]);
    assert.deepEqual((await all(user.iterate({ context_type: t }))).map((c) => c.id), [mine.id]);
    assert.deepEqual((await all(admin.iterate({ context_type: t, user_id: other }))).map((c) => c.id), [theirs.id]);
  });

  test("pages and iteration", async () => {
    const owner = randomUUID();
    const made = await admin.addMany(
      Array.from({ length: 25 }, (_, i) => ({ content: { i } })),
      { defaults: { user_id: owner } },
    );
    assert.equal(made.created, 25);
    const page = await admin.list({ user_id: owner, limit: 10 });
    assert.equal(page.items.length, 10);
    assert.ok(page.next_cursor);
    const walked = await all(admin.iterate({ user_id: owner, pageSize: 10 }));
    assert.equal(new Set(walked.map((c) => c.id)).size, 25);
    const times = walked.map((c) => c.created_at);
    assert.deepEqual(times, [...times].sort().reverse());
  });

  test("every search mode and filter", async () => {
    const t = tag();
    const tea = await user.create({ content: { text: "green tea every morning" }, context_type: t, metadata: { topic: "drinks" } });
    await user.create({ content: { text: "coffee after lunch" }, context_type: t, metadata: { topic: "drinks" } });
    const bike = await user.create({ content: { text: "rides a bike to work" }, context_type: t, metadata: { topic: "travel" } });
    for (const mode of ["vector", "text", "hybrid"] as const) {
      const resp = await user.search({ query: "green tea", mode, context_type: t, k: 3 } as SearchRequest);
      assert.equal(resp.mode, mode);
      assert.equal(resp.results[0]?.context.id, tea.id, mode);
    }
    const travel = await user.search({ query: "tea", metadata: { topic: "travel" }, context_type: t });
    assert.deepEqual(travel.results.map((r) => r.context.id), [bike.id]);
    const strict = await user.search({ query: "green tea", context_type: t, min_score: 0.99 });
    assert.ok(strict.results.every((r) => r.score >= 0.99));
    const vector = (await user.get(tea, { includeEmbedding: true })).embedding as number[];
    const exact = await user.search({ vector, context_type: t, k: 1 });
    assert.equal(exact.results[0]?.context.id, tea.id);
    assert.ok(Math.abs((exact.results[0]?.score ?? 0) - 1) < 1e-4);
  });

  test("addMany chunks and answers each item in order", async () => {
    const owner = randomUUID();
    const items: Parameters<ContextAPI["create"]>[0][] = Array.from({ length: 2100 }, (_, i) => ({ content: { text: `fact ${i}` } }));
    items[1500] = { content: { text: "bad" }, ttl_seconds: 0 };
    const result = await admin.addMany(items, { defaults: { user_id: owner, context_type: "fact" } });
    assert.ok(result instanceof BatchResult);
    assert.deepEqual([result.created, result.failed], [2099, 1]);
    assert.deepEqual(result.problems.map(([i, p]) => [i, p.status]), [[1500, 422]]);
    assert.deepEqual(result.contexts.slice(1498, 1501).map((c) => c.content["text"]), ["fact 1498", "fact 1499", "fact 1501"]);
    await assert.rejects(admin.addMany(items, { chunkSize: 1001 }), RangeError);
  });

  test("a load stored pending is counted, listed and waited for", async () => {
    const owner = randomUUID();
    // Through an instance whose embedding service is unreachable: stored
    // pending. The first instance's worker makes the vectors.
    const unembedded = new ContextAPI({ baseUrl: env("CONTEXT_API_UNEMBEDDED_URL"), apiKey: env("CONTEXT_API_ADMIN_KEY") });
    const result = await unembedded.addMany(
      [...Array.from({ length: 4 }, (_, i) => ({ content: { text: `orchid ${i}` } })), { content: { text: "given" }, embedding: Array(dim).fill(0.5) }],
      { defaults: { user_id: owner } },
    );
    assert.equal(result.created, 5);
    assert.equal(result.pending, 4);
    const waiting = await admin.list({ user_id: owner, embedding_status: "pending", limit: 100 });
    const made = new Set(result.contexts.slice(0, 4).map((c) => c.id));
    assert.ok(waiting.items.every((c) => made.has(c.id)));
    await admin.waitUntilSearchable({ user_id: owner, timeoutMs: 60_000, pollMs: 500 });
    assert.equal((await admin.list({ user_id: owner, embedding_status: "pending" })).items.length, 0);
    assert.equal((await all(admin.iterate({ user_id: owner, embedding_status: "ready" }))).length, 5);
    const hits = await admin.search({ query: "orchid 2", user_id: owner, k: 1 });
    assert.equal(hits.results[0]?.context.content.text, "orchid 2");
  });

  test("addMany halves a chunk the service finds too large", async () => {
    // Bodies of 64 KiB, batches of 1 MiB: 600 items of 3 KB are 1.8 MB; one of 1.2 MB fails alone.
    const owner = randomUUID();
    const items: Parameters<ContextAPI["create"]>[0][] = Array.from({ length: 600 }, (_, i) => ({ content: { text: `note ${i}`, pad: "x".repeat(3000) } }));
    items.splice(10, 0, { content: { pad: "y".repeat(1_200_000) } });
    const result = await admin.addMany(items, { defaults: { user_id: owner } });
    assert.equal(result.created, 600);
    assert.deepEqual(result.problems.map(([i, p]) => [i, p.status]), [[10, 413]]);
    assert.equal(result.contexts[10]?.content["text"], "note 10");
  });

  test("put creates then replaces by key, and list finds it by key and metadata", async () => {
    const t = tag();
    const first = await user.put({ key: `${t}-drink`, content: { text: "green tea" }, context_type: t, metadata: { topic: "drinks" } });
    const second = await user.put({ key: `${t}-drink`, content: { text: "black coffee" }, context_type: t, metadata: { topic: "drinks" } });
    assert.deepEqual([second.id, second.version, second.key], [first.id, 2, `${t}-drink`]);
    await assert.rejects(user.create({ key: `${t}-drink`, content: { text: "again" } }), (e: Conflict) => {
      assert.ok(e instanceof Conflict);
      assert.equal(e.type, "urn:context-api:problem:key-taken");
      assert.equal(e.retryAfter, undefined);
      return true;
    });
    const byKey = await user.list({ key: `${t}-drink` });
    assert.deepEqual(byKey.items.map((c) => c.content["text"]), ["black coffee"]);
    await user.create({ content: { text: "a bus" }, context_type: t, metadata: { topic: "travel" } });
    const drinks = await all(user.iterate({ context_type: t, metadata: { topic: "drinks" } }));
    assert.deepEqual(drinks.map((c) => c.id), [first.id]);
  });

  test("ready reports the dependencies", async () => {
    const r = await user.ready();
    assert.equal(r.status, "ready");
    for (const k of ["postgres", "redis", "embeddings"]) assert.ok(k in r.checks, k);
  });
});

/** A loopback proxy that forwards each request and drops the answer of the first `drop` with `method`. */
class DroppingProxy {
  seen: { method: string; key: string | undefined }[] = [];
  server: Server;
  constructor(upstream: string, method: string, drop: number) {
    this.server = createServer(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) {
        if (typeof v === "string" && !["host", "connection", "content-length"].includes(k)) headers[k] = v;
      }
      this.seen.push({ method: req.method ?? "", key: headers["idempotency-key"] });
      const answer = await fetch(upstream + req.url, {
        method: req.method,
        headers,
        body: chunks.length ? Buffer.concat(chunks) : undefined,
      });
      const body = Buffer.from(await answer.arrayBuffer());
      if (req.method === method && drop > 0) {
        drop--;
        req.socket.destroy();
        return;
      }
      const out: Record<string, string> = {};
      answer.headers.forEach((v, k) => {
        if (!["content-length", "transfer-encoding", "connection"].includes(k)) out[k] = v;
      });
      res.writeHead(answer.status, out).end(body);
    });
  }
  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    const addr = this.server.address() as { port: number };
    return `http://127.0.0.1:${addr.port}`;
  }
  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

describe("retries", () => {
  test("a retried create is stored once", async () => {
    const owner = randomUUID();
    const proxy = new DroppingProxy(url, "POST", 1);
    try {
      const api = new ContextAPI({ baseUrl: await proxy.listen(), apiKey: env("CONTEXT_API_ADMIN_KEY") });
      const ctx = await api.create({ content: { text: "said once" }, user_id: owner });
      const posts = proxy.seen.filter((s) => s.method === "POST");
      assert.equal(posts.length, 2);
      assert.ok(posts[0]?.key && posts[0].key === posts[1]?.key, "the retry carries the first attempt's Idempotency-Key");
      const stored = await all(admin.iterate({ user_id: owner }));
      assert.deepEqual(stored.map((c) => c.id), [ctx.id]);
    } finally {
      await proxy.close();
    }
  });

  test("a write that is not safe to resend is not retried", async () => {
    const ctx = await admin.create({ content: { text: "v1" }, user_id: randomUUID() });
    const proxy = new DroppingProxy(url, "PATCH", 1);
    try {
      const api = new ContextAPI({ baseUrl: await proxy.listen(), apiKey: env("CONTEXT_API_ADMIN_KEY") });
      await assert.rejects(api.update(ctx, { content: { text: "v2" } }), TransportError);
      assert.deepEqual(proxy.seen.map((s) => s.method), ["PATCH"]);
      assert.equal((await admin.get(ctx.id)).version, 2);
    } finally {
      await proxy.close();
    }
  });

  test("429 is retried after the wait the service asks", async () => {
    const limited = env("CONTEXT_API_LIMITED_URL");
    const key = env("CONTEXT_API_USER_KEY");
    const interval = 60 / Number(env("CONTEXT_API_RATE_PER_MINUTE"));
    const impatient = new ContextAPI({ baseUrl: limited, apiKey: key, retry: { maxRetries: 0 } });
    let limitedError: RateLimited | undefined;
    for (let i = 0; i <= Number(env("CONTEXT_API_RATE_PER_MINUTE")) && !limitedError; i++) {
      await impatient.list({ limit: 1 }).catch((e) => {
        if (!(e instanceof RateLimited)) throw e;
        limitedError = e;
      });
    }
    assert.ok(limitedError, "the burst was limited");
    assert.ok((limitedError.retryAfter ?? 0) > 0 && (limitedError.retryAfter ?? 99) <= Math.ceil(interval));
    const patient = new ContextAPI({ baseUrl: limited, apiKey: key, retry: { maxRetries: 5 } });
    const t = tag();
    const t0 = performance.now();
    for (let i = 0; i < 3; i++) await patient.create({ content: { n: i }, context_type: t });
    const waited = (performance.now() - t0) / 1000;
    assert.equal((await all(patient.iterate({ context_type: t }))).length, 3, "each create stored once");
    assert.ok(waited >= interval, `it waited for the limit: ${waited}s`);
    const hasty = new ContextAPI({ baseUrl: limited, apiKey: key, retry: { maxDelayMs: 100 } });
    await assert.rejects(hasty.list({ limit: 1 }), RateLimited);
  });
});
