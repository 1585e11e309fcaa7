// Every error answer of the service is an RFC 9457 problem: raised as the
// class of its status, carrying the problem itself.
import type { components } from "./schema.js";

export type Problem = components["schemas"]["Problem"];

/** Anything this client throws. */
export class ContextAPIError extends Error {
  override name = "ContextAPIError";
}

/** The service could not be reached, or its answer was cut (after the retries this call was allowed). */
export class TransportError extends ContextAPIError {
  override name = "TransportError";
}

/** An error answer; `problem` is the service's RFC 9457 document. */
export class ProblemError extends ContextAPIError {
  override name = "ProblemError";
  constructor(
    readonly problem: Problem,
    readonly response: Response,
  ) {
    super(`${problem.status} ${problem.title}: ${problem.detail}`);
  }
  get status(): number {
    return this.problem.status;
  }
  get type(): string {
    return this.problem.type;
  }
  get detail(): string {
    return this.problem.detail;
  }
  /** The seconds the service asked to wait, when it did. */
  get retryAfter(): number | undefined {
    return parseRetryAfter(this.response.headers.get("retry-after"));
  }
}

/** 400: malformed JSON, or a header the service could not read. */
export class BadRequest extends ProblemError { override name = "BadRequest"; }
/** 401: no key, or an unknown one. */
export class Unauthorized extends ProblemError { override name = "Unauthorized"; }
/** 403: the key may not touch this user's contexts. */
export class Forbidden extends ProblemError { override name = "Forbidden"; }
/** 404: no such context (or not this key's). */
export class NotFound extends ProblemError { override name = "NotFound"; }
/** 409: the same Idempotency-Key is still being answered. */
export class Conflict extends ProblemError { override name = "Conflict"; }
/** 412: the context changed since the version given as If-Match. */
export class PreconditionFailed extends ProblemError { override name = "PreconditionFailed"; }
/** 413: the body is over the service's limit. */
export class PayloadTooLarge extends ProblemError { override name = "PayloadTooLarge"; }
/** 422: a field is invalid; `detail` names it. */
export class ValidationFailed extends ProblemError { override name = "ValidationFailed"; }
/** 429: over this key's rate; `retryAfter` says when to come back. */
export class RateLimited extends ProblemError { override name = "RateLimited"; }
/** 503: a dependency (Postgres, the embedder) is down, or the instance drains. */
export class Unavailable extends ProblemError { override name = "Unavailable"; }
/** Another 5xx. */
export class ServerError extends ProblemError { override name = "ServerError"; }

const BY_STATUS: Record<number, typeof ProblemError> = {
  400: BadRequest,
  401: Unauthorized,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  412: PreconditionFailed,
  413: PayloadTooLarge,
  422: ValidationFailed,
  429: RateLimited,
  503: Unavailable,
};

/** The error for an answer: its problem, or one made from the status when the body is not a problem. */
export async function problemError(response: Response): Promise<ProblemError> {
  const text = await response.text();
  let problem: Problem;
  try {
    const parsed = JSON.parse(text) as Partial<Problem>;
    if (typeof parsed.status !== "number" || typeof parsed.type !== "string") throw new Error("not a problem");
    problem = parsed as Problem;
  } catch {
    problem = {
      type: "about:blank",
      title: response.statusText || "HTTP error",
      status: response.status,
      detail: text.slice(0, 500),
    };
  }
  const cls = BY_STATUS[response.status] ?? (response.status >= 500 ? ServerError : ProblemError);
  return new cls(problem, response);
}

/** Retry-After as seconds: delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const when = Date.parse(v);
  return Number.isNaN(when) ? undefined : Math.max(0, (when - Date.now()) / 1000);
}
