// The client: each method builds a request and sends it through `send`, which
// applies the retry policy. ESM, the platform's fetch, no runtime dependencies.
import type { components } from "./schema.js";
import { PayloadTooLarge, problemError, parseRetryAfter, TransportError } from "./errors.js";

type Schemas = components["schemas"];
export type Context = Schemas["ContextResponse"];
export type ListResponse = Schemas["ListResponse"];
export type SearchRequest = Schemas["SearchRequest"];
export type SearchResponse = Schemas["SearchResponse"];
export type BatchItemResult = Schemas["BatchItemResult"];
export type Readiness = Schemas["Readiness"];
export type PatchContextRequest = Schemas["PatchContextRequest"];
/** A create's fields; `context_type` defaults to "note". */
export type NewContext = Omit<Schemas["CreateContextRequest"], "context_type"> & { context_type?: string };

/** What `list` and `iterate` filter on. */
export interface ListFilter {
  user_id?: string;
  context_type?: string;
  /** Only the context of this key (`put`). */
  key?: string;
  /** Only contexts whose metadata contains this object. */
  metadata?: Record<string, unknown>;
  /** "pending": only contexts whose vector is yet to be made; "ready": only those with one. */
  embedding_status?: "pending" | "ready";
}

/** How a context is named: its id, or a fetched context (which also gives its version for If-Match). */
export type ContextRef = string | Context;

/** The batch route's limit on items (MAX_BATCH_ITEMS in the service). */
export const MAX_BATCH_ITEMS = 1000;

/**
 * Retries of 429 and 503 answers (honouring Retry-After) and of connection
 * failures, at most `maxRetries` times, never waiting more than `maxDelayMs`
 * at once: a longer Retry-After is thrown, not slept.
 */
export interface RetryPolicy {
  maxRetries: number;
  backoffMs: number;
  maxDelayMs: number;
}

export interface ClientOptions {
  /** Default: CONTEXT_API_URL, else http://127.0.0.1:8080. */
  baseUrl?: string;
  /** Default: CONTEXT_API_KEY. */
  apiKey?: string;
  timeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  fetch?: typeof fetch;
}

/** Per-call If-Match: a version, or `false` to skip the check a fetched context implies. */
export interface Precondition {
  ifMatch?: number | false;
}

interface Call {
  method: string;
  path: string;
  query?: Record<string, string | number | boolean | undefined | null>;
  body?: unknown;
  headers?: Record<string, string>;
  /** May be sent again after the connection failed mid-request: reads, and writes named by an Idempotency-Key. */
  resendSafe: boolean;
  /** Error statuses that are this call's answer: read, neither thrown nor retried. */
  answers?: number[];
}

/** `addMany`'s outcome: one result per item, in the order given. */
export class BatchResult {
  constructor(readonly results: BatchItemResult[]) {}
  get created(): number {
    return this.results.filter((r) => r.status === 201).length;
  }
  get failed(): number {
    return this.results.length - this.created;
  }
  /** Of the created, those stored `pending`: their vectors come later (`waitUntilSearchable`). */
  get pending(): number {
    return this.results.filter((r) => r.context?.embedding_status === "pending").length;
  }
  /** The contexts created, in order (failed items left out). */
  get contexts(): Context[] {
    return this.results.flatMap((r) => (r.context ? [r.context] : []));
  }
  /** [index, problem] of each item that failed. */
  get problems(): [number, Schemas["Problem"]][] {
    return this.results.flatMap((r, i) => (r.problem ? [[i, r.problem] as [number, Schemas["Problem"]]] : []));
  }
}

const env = (name: string): string | undefined =>
  (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env[name];

const NEVER_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT"]);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function idOf(ref: ContextRef): string {
  return typeof ref === "string" ? ref : ref.id;
}

function ifMatch(ref: ContextRef, pre: Precondition | undefined): Record<string, string> {
  if (pre?.ifMatch === false) return {};
  if (typeof pre?.ifMatch === "number") return { "if-match": `"${pre.ifMatch}"` };
  return typeof ref === "string" ? {} : { "if-match": `"${ref.version}"` };
}

export class ContextAPI {
  readonly baseUrl: string;
  readonly #auth: Record<string, string>;
  readonly #timeoutMs: number;
  readonly #retry: RetryPolicy;
  readonly #fetch: typeof fetch;

  constructor(options: ClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? env("CONTEXT_API_URL") ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
    const key = options.apiKey ?? env("CONTEXT_API_KEY");
    this.#auth = key ? { authorization: `Bearer ${key}` } : {};
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#retry = { maxRetries: 3, backoffMs: 250, maxDelayMs: 30_000, ...options.retry };
    this.#fetch = options.fetch ?? globalThis.fetch;
  }

  /** Store a context. An Idempotency-Key (a new UUID unless given) names it, so that a retry never stores it twice. */
  create(context: NewContext, options: { idempotencyKey?: string } = {}): Promise<Context> {
    return this.#send<Context>({
      method: "POST",
      path: "/contexts",
      body: { context_type: "note", ...context },
      headers: { "idempotency-key": options.idempotencyKey ?? crypto.randomUUID() },
      resendSafe: true,
    });
  }

  /**
   * Create the context of `context.key`, or replace the one that has it
   * (same id, new version; every field is the call's).
   */
  put(context: NewContext & { key: string }): Promise<Context> {
    return this.#send<Context>({
      method: "PUT",
      path: "/contexts",
      body: { context_type: "note", ...context },
      headers: { "idempotency-key": crypto.randomUUID() },
      resendSafe: true,
    });
  }

  get(ref: ContextRef, options: { includeEmbedding?: boolean } = {}): Promise<Context> {
    return this.#send<Context>({
      method: "GET",
      path: `/contexts/${encodeURIComponent(idOf(ref))}`,
      query: { include: options.includeEmbedding ? "embedding" : undefined },
      resendSafe: true,
    });
  }

  /**
   * Replace the fields given. Given a fetched context, only if it is unchanged
   * since (If-Match its version; `PreconditionFailed` if not).
   */
  update(ref: ContextRef, fields: PatchContextRequest, options?: Precondition): Promise<Context> {
    return this.#send<Context>({
      method: "PATCH",
      path: `/contexts/${encodeURIComponent(idOf(ref))}`,
      body: fields,
      headers: ifMatch(ref, options),
      resendSafe: false,
    });
  }

  /** Hide a context (`hard`: remove the row). If-Match as `update`. */
  async delete(ref: ContextRef, options: Precondition & { hard?: boolean } = {}): Promise<void> {
    await this.#send<void>({
      method: "DELETE",
      path: `/contexts/${encodeURIComponent(idOf(ref))}`,
      query: { hard: options.hard ? "true" : undefined },
      headers: ifMatch(ref, options),
      resendSafe: false,
    });
  }

  /** One page, newest first; `next_cursor` names the next. `metadata`: containment. */
  list(filter: ListFilter & { limit?: number; cursor?: string } = {}): Promise<ListResponse> {
    const { metadata, ...rest } = filter;
    const query = { ...rest, metadata: metadata === undefined ? undefined : JSON.stringify(metadata) };
    return this.#send<ListResponse>({ method: "GET", path: "/contexts", query, resendSafe: true });
  }

  /** Every context, newest first, page after page. */
  async *iterate(
    filter: ListFilter & { pageSize?: number } = {},
  ): AsyncGenerator<Context, void, undefined> {
    const { pageSize = 100, ...rest } = filter;
    let cursor: string | undefined;
    for (;;) {
      const page = await this.list({ ...rest, limit: pageSize, cursor });
      yield* page.items;
      if (!page.next_cursor) return;
      cursor = page.next_cursor;
    }
  }

  /** Best first. `mode`: "vector" (default; `query` or `vector`), "text" or "hybrid"; every filter of the API. */
  search(request: SearchRequest): Promise<SearchResponse> {
    return this.#send<SearchResponse>({ method: "POST", path: "/contexts/search", body: request, resendSafe: true });
  }

  /**
   * Store many contexts through the batch route, `chunkSize` a request
   * (`defaults` fill what an item leaves out), halving a chunk the service
   * finds too large. One result per item, in order: an invalid item fails alone.
   */
  async addMany(
    items: Iterable<NewContext>,
    options: { chunkSize?: number; defaults?: Partial<NewContext> } = {},
  ): Promise<BatchResult> {
    const size = options.chunkSize ?? MAX_BATCH_ITEMS;
    if (!(size >= 1 && size <= MAX_BATCH_ITEMS)) throw new RangeError(`chunkSize must be 1 to ${MAX_BATCH_ITEMS}`);
    const results: BatchItemResult[] = [];
    let chunk: NewContext[] = [];
    for (const item of items) {
      chunk.push({ context_type: "note", ...options.defaults, ...item });
      if (chunk.length === size) {
        results.push(...(await this.#batch(chunk)));
        chunk = [];
      }
    }
    if (chunk.length) results.push(...(await this.#batch(chunk)));
    return new BatchResult(results);
  }

  async #batch(chunk: NewContext[]): Promise<BatchItemResult[]> {
    try {
      const answer = await this.#send<Schemas["BatchCreateResponse"]>({
        method: "POST",
        path: "/contexts/batch",
        body: { items: chunk },
        headers: { "idempotency-key": crypto.randomUUID() },
        resendSafe: true,
      });
      return answer.results;
    } catch (err) {
      if (!(err instanceof PayloadTooLarge)) throw err;
      if (chunk.length === 1) return [{ status: 413, problem: err.problem }];
      const half = Math.floor(chunk.length / 2);
      return [...(await this.#batch(chunk.slice(0, half))), ...(await this.#batch(chunk.slice(half)))];
    }
  }

  /**
   * Resolves once no context of `user_id` (every user's, with an admin key
   * and no user) waits for its vector: a load is then found by every search
   * mode. Polls every `pollMs`; rejects after `timeoutMs`.
   */
  async waitUntilSearchable(
    options: { user_id?: string; timeoutMs?: number; pollMs?: number } = {},
  ): Promise<void> {
    const { user_id, timeoutMs = 300_000, pollMs = 1000 } = options;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const page = await this.list({ user_id, embedding_status: "pending", limit: 1 });
      if (page.items.length === 0) return;
      if (Date.now() + pollMs > deadline) {
        throw new Error(`contexts still waiting for their vectors after ${timeoutMs} ms`);
      }
      await sleep(pollMs);
    }
  }

  /** The service's readiness, with each dependency's state (a 503 is read, not thrown). */
  ready(): Promise<Readiness> {
    return this.#send<Readiness>({ method: "GET", path: "/ready", resendSafe: true, answers: [503] });
  }

  async #send<T>(call: Call): Promise<T> {
    const url = new URL(this.baseUrl + call.path);
    for (const [k, v] of Object.entries(call.query ?? {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = { ...this.#auth, ...call.headers };
    if (call.body !== undefined) headers["content-type"] = "application/json";
    const body = call.body === undefined ? undefined : JSON.stringify(call.body);
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await this.#fetch(url, {
          method: call.method,
          headers,
          body,
          signal: AbortSignal.timeout(this.#timeoutMs),
        });
      } catch (err) {
        const code = (err as { cause?: { code?: string } }).cause?.code;
        const delay = (code && NEVER_SENT.has(code)) || call.resendSafe ? this.#delay(attempt) : undefined;
        if (delay === undefined) {
          throw new TransportError(`${call.method} ${call.path}: ${String((err as Error).message)}${code ? ` (${code})` : ""}`, {
            cause: err,
          });
        }
        await sleep(delay);
        continue;
      }
      const answered = response.ok || call.answers?.includes(response.status);
      if (!answered && (response.status === 429 || response.status === 503)) {
        const delay = this.#delay(attempt, parseRetryAfter(response.headers.get("retry-after")));
        if (delay !== undefined) {
          await response.body?.cancel();
          await sleep(delay);
          continue;
        }
      }
      if (!answered) throw await problemError(response);
      if (response.status === 204) return undefined as T;
      return (await response.json()) as T;
    }
  }

  /** Milliseconds to wait before attempt `attempt + 1`, or undefined to give up. */
  #delay(attempt: number, retryAfterSeconds?: number): number | undefined {
    if (attempt >= this.#retry.maxRetries) return undefined;
    if (retryAfterSeconds !== undefined) {
      const ms = retryAfterSeconds * 1000;
      return ms <= this.#retry.maxDelayMs ? ms : undefined;
    }
    const wait = this.#retry.backoffMs * 2 ** attempt;
    return Math.min(this.#retry.maxDelayMs, wait * (0.5 + Math.random() / 2));
  }
}
