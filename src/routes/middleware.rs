//! Request ids and tracing, metrics by route template, admission control.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::extract::Caller;
use crate::auth::{ApiKeys, Scope};
use crate::cache::Cache;
use crate::error::ApiError;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One span per request, carrying the request id (taken from X-Request-Id or
/// generated) and the route template; the id is echoed in the response.
pub fn observe(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request| {
                        let request_id = req
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        let route = req
                            .extensions()
                            .get::<MatchedPath>()
                            .map_or("unmatched", |m| m.as_str());
                        tracing::info_span!("request", method = %req.method(), route, request_id)
                    })
                    .on_request(())
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
    )
}

/// Request count, latency and in-flight, labelled by the route template (never
/// the raw path, which would make one series per id).
pub async fn track_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let in_flight = metrics::gauge!("http_requests_in_flight");
    in_flight.increment(1.0);
    let started = Instant::now();
    let resp = next.run(req).await;
    in_flight.decrement(1.0);
    let labels = [
        ("method", method),
        ("route", route),
        ("status", resp.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// A cap on concurrent API requests (beyond it: 503 at once, never a queue)
/// and a deadline for each.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl Admission {
    pub fn new(max_concurrent: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            timeout,
        }
    }
}

pub async fn admit(State(admission): State<Admission>, req: Request, next: Next) -> Response {
    let Ok(_permit) = admission.permits.clone().try_acquire_owned() else {
        metrics::counter!("http_requests_shed_total", "reason" => "concurrency").increment(1);
        return ApiError::Overloaded("too many concurrent requests").into_response();
    };
    match tokio::time::timeout(admission.timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!("http_requests_shed_total", "reason" => "timeout").increment(1);
            ApiError::Overloaded("the request did not complete in time").into_response()
        }
    }
}

/// Per-key rate limits (RATE_LIMIT_*_PER_MINUTE), counted in Redis so that
/// every replica shares them (src/cache/throttle.lua, GCRA).
#[derive(Clone)]
pub struct RateLimits {
    pub keys: Option<Arc<ApiKeys>>,
    pub cache: Cache,
    pub admin_per_minute: u32,
    pub user_per_minute: u32,
}

const RATE_WINDOW: Duration = Duration::from_secs(60);
const RATE_LIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATE_LIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Beyond a key's limit: 429 with Retry-After. Every answer to a limited key
/// carries the IETF draft's fields (draft-ietf-httpapi-ratelimit-headers):
/// `RateLimit-Policy: "per-key";q=<quota>;w=60` and
/// `RateLimit: "per-key";r=<remaining>;t=<seconds until the quota is whole>`.
/// Requests without a valid key pass on, to be refused with 401.
pub async fn rate_limit(State(limits): State<RateLimits>, req: Request, next: Next) -> Response {
    let (Some(keys), true) = (
        limits.keys.as_ref(),
        limits.admin_per_minute > 0 || limits.user_per_minute > 0,
    ) else {
        return next.run(req).await;
    };
    let Some((scope, who)) = super::extract::bearer(req.headers()).and_then(|t| keys.identify(t))
    else {
        return next.run(req).await;
    };
    let quota = match scope {
        Scope::Admin => limits.admin_per_minute,
        Scope::User(_) => limits.user_per_minute,
    };
    if quota == 0 {
        return next.run(req).await;
    }
    let Some(t) = limits.cache.throttle(&who, quota, RATE_WINDOW).await else {
        return next.run(req).await;
    };
    let mut resp = if t.allowed {
        next.run(req).await
    } else {
        metrics::counter!("rate_limited_total").increment(1);
        ApiError::RateLimited(t.retry_after.as_secs_f64().ceil().max(1.0) as u64).into_response()
    };
    let headers = resp.headers_mut();
    let policy = format!("\"per-key\";q={quota};w={}", RATE_WINDOW.as_secs());
    let state = format!(
        "\"per-key\";r={};t={}",
        t.remaining,
        t.reset.as_secs_f64().ceil() as u64
    );
    for (name, value) in [(RATE_LIMIT_POLICY, policy), (RATE_LIMIT, state)] {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    resp
}

/// Checks the bearer key of every API request and leaves the caller's
/// [`Scope`](crate::auth::Scope) in the request's extensions, where
/// services that are not handlers (the MCP server) find it. Handlers read
/// it through [`Caller`](super::extract::Caller).
pub async fn authenticate(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let Caller(scope) = Caller::from_request_parts(&mut parts, &state).await?;
    parts.extensions.insert(scope);
    Ok(next.run(Request::from_parts(parts, body)).await)
}
