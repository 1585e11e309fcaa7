//! Request ids and tracing, metrics by route template, admission control.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::ApiError;

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
