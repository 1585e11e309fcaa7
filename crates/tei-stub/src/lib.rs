//! A TEI-compatible stand-in: the same /info, /embed and /health shapes as
//! text-embeddings-inference, deterministic vectors, and switches for failures,
//! delays and a wrong dimension. The integration tests start it in process
//! ([`TeiStub::start`]); the `tei-stub` binary serves it for development, the
//! benchmark and the container stack.
//!
//! Vectors are a normalized bag of words: each lower-cased word adds 1 to a
//! bucket chosen by its hash (plus a smaller weight to a second bucket), so
//! texts that share words have a higher cosine similarity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MODEL_ID: &str = "stub/bag-of-words";

#[derive(Default)]
pub struct Switches {
    /// Answer 503 to everything.
    pub down: AtomicBool,
    /// Answer this many /embed calls with 429 (overloaded) before serving again.
    pub fail_next: AtomicUsize,
    /// Sleep this long before answering /embed.
    pub delay_ms: AtomicU64,
    /// Override the output dimension (0: the configured one).
    pub dim_override: AtomicUsize,
    /// /embed calls answered with vectors.
    pub embed_calls: AtomicUsize,
    /// Largest batch seen.
    pub max_batch_seen: AtomicUsize,
    /// Every input embedded, in order.
    pub inputs: Mutex<Vec<String>>,
}

#[derive(Clone)]
pub struct TeiStub {
    pub addr: SocketAddr,
    pub switches: Arc<Switches>,
    dim: usize,
    max_batch: usize,
    model_id: Arc<str>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
}

impl TeiStub {
    /// On a free loopback port, in the background (tests).
    pub async fn start(dim: usize, max_batch: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stub");
        Self::serve(listener, dim, max_batch, MODEL_ID)
    }

    /// Serves on `listener` in the background.
    pub fn serve(
        listener: tokio::net::TcpListener,
        dim: usize,
        max_batch: usize,
        model_id: &str,
    ) -> Self {
        let addr = listener.local_addr().expect("a bound listener");
        let stub = TeiStub {
            addr,
            switches: Arc::new(Switches::default()),
            dim,
            max_batch,
            model_id: model_id.into(),
        };
        let app = Router::new()
            .route("/info", get(info))
            .route("/health", get(health))
            .route("/embed", post(embed))
            // Test controls for scripts driving the binary (scripts/faults.py).
            .route("/stub/counters", get(counters))
            .route("/stub/down", post(go_down))
            .route("/stub/up", post(go_up))
            .with_state(stub.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        stub
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.switches.down.store(down, Ordering::SeqCst);
    }

    pub fn set_delay(&self, d: Duration) {
        self.switches
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_dim(&self, dim: usize) {
        self.switches.dim_override.store(dim, Ordering::SeqCst);
    }

    pub fn embed_calls(&self) -> usize {
        self.switches.embed_calls.load(Ordering::SeqCst)
    }

    pub fn inputs(&self) -> Vec<String> {
        self.switches.inputs.lock().unwrap().clone()
    }

    fn dim(&self) -> usize {
        match self.switches.dim_override.load(Ordering::SeqCst) {
            0 => self.dim,
            d => d,
        }
    }
}

/// GET /stub/counters: /embed calls answered, and how many times each text
/// was embedded.
async fn counters(State(s): State<TeiStub>) -> Response {
    let mut texts: std::collections::BTreeMap<String, usize> = Default::default();
    for t in s.switches.inputs.lock().unwrap().iter() {
        *texts.entry(t.clone()).or_default() += 1;
    }
    Json(json!({"embed_calls": s.embed_calls(), "texts": texts})).into_response()
}

/// POST /stub/down: answer 503 to everything but the /stub routes.
async fn go_down(State(s): State<TeiStub>) -> StatusCode {
    s.set_down(true);
    StatusCode::NO_CONTENT
}

/// POST /stub/up: serve again.
async fn go_up(State(s): State<TeiStub>) -> StatusCode {
    s.set_down(false);
    StatusCode::NO_CONTENT
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "model is loading", "error_type": "Unhealthy"})),
    )
        .into_response()
}

async fn info(State(s): State<TeiStub>) -> Response {
    if s.switches.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    Json(json!({
        "model_id": &*s.model_id,
        "model_dtype": "float32",
        "model_type": {"embedding": {"pooling": "mean"}},
        "max_concurrent_requests": 512,
        "max_input_length": 512,
        "max_batch_tokens": 16384,
        "max_client_batch_size": s.max_batch,
        "tokenization_workers": 1,
        "version": "stub"
    }))
    .into_response()
}

async fn health(State(s): State<TeiStub>) -> StatusCode {
    if s.switches.down.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn embed(State(s): State<TeiStub>, Json(req): Json<EmbedRequest>) -> Response {
    let delay = s.switches.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if s.switches.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let overloaded = s
        .switches
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if overloaded {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "overloaded", "error_type": "Overloaded"})),
        )
            .into_response();
    }
    let inputs = match req.inputs {
        Inputs::One(t) => vec![t],
        Inputs::Many(v) => v,
    };
    if inputs.len() > s.max_batch {
        // TEI answers 413 to a batch above max_client_batch_size.
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"error": format!("batch size {} > maximum allowed batch size {}", inputs.len(), s.max_batch), "error_type": "Validation"})),
        )
            .into_response();
    }
    s.switches
        .max_batch_seen
        .fetch_max(inputs.len(), Ordering::SeqCst);
    s.switches.embed_calls.fetch_add(1, Ordering::SeqCst);
    s.switches
        .inputs
        .lock()
        .unwrap()
        .extend(inputs.iter().cloned());
    let dim = s.dim();
    Json(inputs.iter().map(|t| vector(t, dim)).collect::<Vec<_>>()).into_response()
}

/// The stub's embedding of `text`: tests use it to compute expected rankings.
pub fn vector(text: &str, dim: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = Sha256::digest(word.to_lowercase().as_bytes());
        let a = u64::from_le_bytes(h[0..8].try_into().unwrap()) as usize % dim;
        let b = u64::from_le_bytes(h[8..16].try_into().unwrap()) as usize % dim;
        v[a] += 1.0;
        v[b] += 0.5;
    }
    if v.iter().all(|x| *x == 0.0) {
        v[0] = 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}
