//! Embeddings. [`Embedder`] checks what a provider returns (dimension, count)
//! before anything is stored; the provider itself is the TEI HTTP client.

mod tei;

pub use tei::TeiClient;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::EmbeddingSettings;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Not reachable, timed out, overloaded or failing: try again later.
    #[error("embedding service unavailable: {0}")]
    Unavailable(String),
    /// The service answers, but with vectors of the wrong size: never stored.
    #[error("embedding service returns {got}-dimensional vectors, EMBEDDING_DIM is {expected}")]
    DimensionMismatch { expected: usize, got: usize },
    /// The service refused the input itself (4xx other than 429).
    #[error("embedding service rejected the input: {0}")]
    Rejected(String),
}

/// What `/ready` reports about the embedding service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum EmbedderState {
    /// Not contacted successfully yet.
    Unknown,
    Ready {
        model: String,
    },
    Unavailable,
    DimensionMismatch {
        expected: usize,
        got: usize,
    },
}

#[derive(Debug, Clone)]
struct Info {
    model: String,
    max_batch: usize,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Embedder {
    client: TeiClient,
    dim: usize,
    batch_size: usize,
    info: Arc<Mutex<Option<Info>>>,
    state: Arc<std::sync::Mutex<EmbedderState>>,
    last_failure: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// After a failed contact, callers fail fast for this long instead of queueing
/// behind one another on a service that is down.
const COOLDOWN: std::time::Duration = std::time::Duration::from_millis(500);

impl Embedder {
    pub fn new(settings: &EmbeddingSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: TeiClient::new(settings)?,
            dim: settings.dim,
            batch_size: settings.batch_size,
            info: Arc::new(Mutex::new(None)),
            state: Arc::new(std::sync::Mutex::new(EmbedderState::Unknown)),
            last_failure: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    pub fn state(&self) -> EmbedderState {
        self.state.lock().expect("state lock").clone()
    }

    fn set_state(&self, s: EmbedderState) {
        *self.state.lock().expect("state lock") = s;
    }

    /// The model id, once the service has answered.
    pub async fn model(&self) -> Result<String, EmbedError> {
        Ok(self.info().await?.model)
    }

    /// Contacts the service once (cached after the first answer): reads /info,
    /// then embeds a probe to learn the output dimension. A mismatch is logged
    /// once and sticks until the service answers with the right size.
    async fn info(&self) -> Result<Info, EmbedError> {
        let mut guard = self.info.lock().await;
        if let Some(info) = guard.as_ref() {
            return Ok(info.clone());
        }
        if self.recently_failed() {
            return Err(EmbedError::Unavailable(
                "not reachable (recent attempt failed)".into(),
            ));
        }
        let contact = async {
            let info = self.client.info().await?;
            let probe = self.client.embed(&["dimension probe".to_string()]).await?;
            Ok::<_, EmbedError>((info, probe))
        };
        let (info, probe) = match contact.await {
            Ok(v) => v,
            Err(e) => {
                self.mark_failed();
                return Err(e);
            }
        };
        let got = probe.first().map_or(0, Vec::len);
        if got != self.dim {
            let state = EmbedderState::DimensionMismatch {
                expected: self.dim,
                got,
            };
            if self.state() != state {
                tracing::error!(
                    model = %info.model_id, expected = self.dim, got,
                    "embedding service dimension does not match EMBEDDING_DIM: no embeddings will be stored"
                );
            }
            self.set_state(state);
            *self.last_failure.lock().expect("failure lock") = Some(Instant::now());
            return Err(EmbedError::DimensionMismatch {
                expected: self.dim,
                got,
            });
        }
        let info = Info {
            model: info.model_id,
            max_batch: info
                .max_client_batch_size
                .unwrap_or(self.batch_size)
                .clamp(1, self.batch_size),
        };
        tracing::info!(model = %info.model, dim = self.dim, max_batch = info.max_batch, "embedding service ready");
        self.set_state(EmbedderState::Ready {
            model: info.model.clone(),
        });
        *guard = Some(info.clone());
        Ok(info)
    }

    /// Embeds `texts`, in batches no larger than the service accepts. Every
    /// vector returned has exactly the configured dimension.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let info = self.info().await?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(info.max_batch) {
            let started = Instant::now();
            let result = self.client.embed(chunk).await;
            metrics::histogram!("embedding_request_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("embedding_requests_total").increment(1);
            let vectors = match result {
                Ok(v) => v,
                Err(e) => {
                    metrics::counter!("embedding_failures_total").increment(1);
                    if matches!(e, EmbedError::Unavailable(_)) {
                        self.mark_failed();
                    }
                    return Err(e);
                }
            };
            if vectors.len() != chunk.len() {
                metrics::counter!("embedding_failures_total").increment(1);
                return Err(EmbedError::Unavailable(format!(
                    "asked for {} vectors, got {}",
                    chunk.len(),
                    vectors.len()
                )));
            }
            if let Some(bad) = vectors.iter().find(|v| v.len() != self.dim) {
                // The service changed under us (redeployed with another model).
                let got = bad.len();
                metrics::counter!("embedding_failures_total").increment(1);
                *self.info.lock().await = None;
                self.set_state(EmbedderState::DimensionMismatch {
                    expected: self.dim,
                    got,
                });
                tracing::error!(
                    expected = self.dim,
                    got,
                    "embedding service dimension changed"
                );
                return Err(EmbedError::DimensionMismatch {
                    expected: self.dim,
                    got,
                });
            }
            out.extend(vectors);
        }
        self.set_state(EmbedderState::Ready { model: info.model });
        Ok(out)
    }

    fn recently_failed(&self) -> bool {
        self.last_failure
            .lock()
            .expect("failure lock")
            .is_some_and(|at| at.elapsed() < COOLDOWN)
    }

    fn mark_failed(&self) {
        *self.last_failure.lock().expect("failure lock") = Some(Instant::now());
        if !matches!(self.state(), EmbedderState::DimensionMismatch { .. }) {
            self.set_state(EmbedderState::Unavailable);
        }
    }

    /// Contacts the service afresh: used while it is not known to be ready, so
    /// that a late-starting (or replaced) service is checked when it first answers.
    pub async fn check(&self) -> Result<(), EmbedError> {
        *self.info.lock().await = None;
        self.info().await.map(|_| ())
    }

    pub async fn embed_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut v = self.embed(&[text.to_owned()]).await?;
        Ok(v.pop().expect("embed returns one vector per text"))
    }
}
