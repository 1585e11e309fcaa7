//! Embeddings. [`Embedder`] checks what a provider returns (dimension, count)
//! before anything is stored; the provider itself is the TEI HTTP client.

#[cfg(feature = "local-embeddings")]
mod bert;
#[cfg(feature = "local-embeddings")]
mod local;
#[cfg(feature = "local-embeddings")]
mod simd;
mod tei;
#[cfg(feature = "local-embeddings")]
mod weights;

#[cfg(feature = "local-embeddings")]
pub use local::{LoadError, LocalModel};
pub use tei::TeiClient;

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::config::{EmbeddingProvider, EmbeddingSettings};

#[derive(Debug, Clone, thiserror::Error)]
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

/// Whether two model ids name the same model. An in-process model's id is
/// `local/NAME@DIGEST`, and the digest of its config and weights alone
/// identifies it: NAME was once the directory's (`local/model@…`), so the id
/// recorded by an older version still names the model it runs now.
pub fn same_model(a: &str, b: &str) -> bool {
    a == b || local_digest(a).is_some_and(|d| local_digest(b) == Some(d))
}

/// The ids that name the same model as `model` other than itself, as a SQL
/// LIKE pattern, or `None` when only `model` does.
pub fn model_aliases(model: &str) -> Option<String> {
    local_digest(model).map(|d| format!("local/%@{d}"))
}

fn local_digest(id: &str) -> Option<&str> {
    let (_, digest) = id.strip_prefix("local/")?.rsplit_once('@')?;
    (!digest.is_empty() && digest.chars().all(|c| c.is_ascii_hexdigit())).then_some(digest)
}

/// Where vectors come from.
#[derive(Clone)]
enum Provider {
    Tei(TeiClient),
    #[cfg(feature = "local-embeddings")]
    Local(LocalModel),
}

struct ProviderInfo {
    model_id: String,
    max_client_batch_size: Option<usize>,
}

impl Provider {
    async fn info(&self) -> Result<ProviderInfo, EmbedError> {
        match self {
            Provider::Tei(c) => c.info().await.map(|i| ProviderInfo {
                model_id: i.model_id,
                max_client_batch_size: i.max_client_batch_size,
            }),
            #[cfg(feature = "local-embeddings")]
            Provider::Local(m) => Ok(ProviderInfo {
                model_id: m.model_id.clone(),
                max_client_batch_size: Some(m.max_batch),
            }),
        }
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        match self {
            Provider::Tei(c) => c.embed(texts).await,
            #[cfg(feature = "local-embeddings")]
            Provider::Local(m) => m.embed(texts).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the HTTP client for EMBEDDING_SERVICE_URL: {0}")]
    Http(#[from] reqwest::Error),
    #[cfg(feature = "local-embeddings")]
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "the model in EMBEDDING_MODEL_DIR makes {model}-dimensional vectors but EMBEDDING_DIM is {configured}: \
         set EMBEDDING_DIM={model} (and migrate a database for it)"
    )]
    Dimension { model: usize, configured: usize },
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Embedder {
    client: Provider,
    dim: usize,
    batch_size: usize,
    /// The one lock, never held across an await.
    health: Arc<std::sync::Mutex<Health>>,
    /// Single texts go through here to the TEI provider, coalesced into batches.
    coalescer: Option<mpsc::Sender<Job>>,
}

/// What the embedder knows of its provider.
struct Health {
    /// The provider's answer to the last successful contact.
    info: Option<Info>,
    state: EmbedderState,
    last_failure: Option<Instant>,
    /// The model id of the last successful contact, kept through outages.
    last_model: Option<String>,
    /// The contact in flight, if any: concurrent callers await the same one
    /// instead of queueing one behind another on a service that hangs.
    probe: Option<Probe>,
}

type Probe = Shared<BoxFuture<'static, Result<Info, EmbedError>>>;

/// One text waiting for its vector.
type Job = (String, oneshot::Sender<Result<Vec<f32>, EmbedError>>);

/// Batches sent to the provider at once; while they are all in flight, single
/// texts queue up and go out together in the next batch.
const MAX_IN_FLIGHT: usize = 4;

/// After a failed contact, callers fail fast for this long instead of queueing
/// behind one another on a service that is down.
const COOLDOWN: std::time::Duration = std::time::Duration::from_millis(500);

impl Embedder {
    /// For a local model this loads it (on a blocking thread) and checks its
    /// dimension at once; a TEI server is checked when it first answers.
    pub async fn build(settings: &EmbeddingSettings) -> Result<Self, BuildError> {
        let client = match &settings.provider {
            EmbeddingProvider::Tei { url } => Provider::Tei(TeiClient::new(url.clone(), settings)?),
            #[cfg(feature = "local-embeddings")]
            EmbeddingProvider::Local {
                model_dir,
                queue_size,
            } => {
                let (dir, queue, batch) = (model_dir.clone(), *queue_size, settings.batch_size);
                let model =
                    tokio::task::spawn_blocking(move || LocalModel::load(&dir, queue, batch))
                        .await
                        .expect("model loading does not panic")?;
                if model.dim != settings.dim {
                    return Err(BuildError::Dimension {
                        model: model.dim,
                        configured: settings.dim,
                    });
                }
                Provider::Local(model)
            }
            #[cfg(not(feature = "local-embeddings"))]
            EmbeddingProvider::Local { .. } => {
                unreachable!("config refuses local without the feature")
            }
        };
        let coalesce = matches!(client, Provider::Tei(_));
        let mut embedder = Self {
            client,
            dim: settings.dim,
            batch_size: settings.batch_size,
            health: Arc::new(std::sync::Mutex::new(Health {
                info: None,
                state: EmbedderState::Unknown,
                last_failure: None,
                last_model: None,
                probe: None,
            })),
            coalescer: None,
        };
        // The local model has a queue of its own that batches concurrent calls.
        if coalesce {
            embedder.coalescer = Some(start_coalescer(embedder.clone()));
        }
        Ok(embedder)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().expect("embedder health lock")
    }

    pub fn state(&self) -> EmbedderState {
        self.health().state.clone()
    }

    /// The dimension of the vectors it makes.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The model id the service gave when last reached, if ever.
    pub fn last_model(&self) -> Option<String> {
        self.health().last_model.clone()
    }

    fn set_state(&self, s: EmbedderState) {
        self.health().state = s;
    }

    /// The model id, once the service has answered.
    pub async fn model(&self) -> Result<String, EmbedError> {
        Ok(self.info().await?.model)
    }

    /// The provider's info, from the last contact or from a new one (shared
    /// by every concurrent caller). Within [`COOLDOWN`] of a failed contact,
    /// callers fail at once.
    async fn info(&self) -> Result<Info, EmbedError> {
        let probe = {
            let mut h = self.health();
            if let Some(info) = &h.info {
                return Ok(info.clone());
            }
            match &h.probe {
                Some(p) => p.clone(),
                None => {
                    if h.last_failure.is_some_and(|at| at.elapsed() < COOLDOWN) {
                        return Err(EmbedError::Unavailable(
                            "not reachable (recent attempt failed)".into(),
                        ));
                    }
                    let this = self.clone();
                    let p = async move { this.contact().await }.boxed().shared();
                    h.probe = Some(p.clone());
                    p
                }
            }
        };
        probe.await
    }

    /// Contacts the service: reads /info, then embeds a probe to learn the
    /// output dimension. A mismatch is logged once and sticks until the
    /// service answers with the right size.
    #[tracing::instrument(name = "embedder.contact", level = "debug", skip_all)]
    async fn contact(&self) -> Result<Info, EmbedError> {
        let answer = async {
            let info = self.client.info().await?;
            let probe = self.client.embed(&["dimension probe".to_string()]).await?;
            Ok::<_, EmbedError>((info, probe))
        }
        .await;
        let mut h = self.health();
        h.probe = None;
        let (info, probe) = match answer {
            Ok(v) => v,
            Err(e) => {
                Self::failed(&mut h);
                return Err(e);
            }
        };
        let got = probe.first().map_or(0, Vec::len);
        if got != self.dim {
            let state = EmbedderState::DimensionMismatch {
                expected: self.dim,
                got,
            };
            if h.state != state {
                tracing::error!(
                    model = %info.model_id, expected = self.dim, got,
                    "embedding service dimension does not match EMBEDDING_DIM: no embeddings will be stored"
                );
            }
            h.state = state;
            h.last_failure = Some(Instant::now());
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
        h.state = EmbedderState::Ready {
            model: info.model.clone(),
        };
        h.last_model = Some(info.model.clone());
        h.info = Some(info.clone());
        Ok(info)
    }

    fn failed(h: &mut Health) {
        h.last_failure = Some(Instant::now());
        if !matches!(h.state, EmbedderState::DimensionMismatch { .. }) {
            h.state = EmbedderState::Unavailable;
        }
    }

    /// Embeds `texts`, in batches no larger than the service accepts. Every
    /// vector returned has exactly the configured dimension.
    #[tracing::instrument(name = "embedder.embed", level = "debug", skip_all, fields(texts = texts.len()))]
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
                        Self::failed(&mut self.health());
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
                {
                    let mut h = self.health();
                    h.info = None;
                    h.state = EmbedderState::DimensionMismatch {
                        expected: self.dim,
                        got,
                    };
                }
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

    /// Contacts the service afresh: used while it is not known to be ready, so
    /// that a late-starting (or replaced) service is checked when it first answers.
    pub async fn check(&self) -> Result<(), EmbedError> {
        self.health().info = None;
        self.info().await.map(|_| ())
    }

    /// One text's vector. Concurrent callers share provider calls: their texts
    /// are coalesced into batches (see [`start_coalescer`]).
    pub async fn embed_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let Some(queue) = &self.coalescer else {
            let mut v = self.embed(&[text.to_owned()]).await?;
            return Ok(v.pop().expect("embed returns one vector per text"));
        };
        let gone = || EmbedError::Unavailable("the embedding queue stopped".into());
        let (tx, rx) = oneshot::channel();
        queue
            .send((text.to_owned(), tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Embeds a coalesced batch and answers each caller. When the provider
    /// refuses the batch, each text is retried alone, so that one bad input
    /// fails only its own caller.
    async fn run_jobs(&self, jobs: Vec<Job>) {
        let texts: Vec<String> = jobs.iter().map(|(t, _)| t.clone()).collect();
        metrics::histogram!("embedding_coalesced_batch_size").record(texts.len() as f64);
        match self.embed(&texts).await {
            Ok(vectors) => {
                for ((_, reply), v) in jobs.into_iter().zip(vectors) {
                    let _ = reply.send(Ok(v));
                }
            }
            Err(EmbedError::Rejected(_)) if jobs.len() > 1 => {
                for (text, reply) in jobs {
                    let one = self.embed(std::slice::from_ref(&text)).await;
                    let _ = reply.send(one.map(|mut v| v.pop().expect("one vector per text")));
                }
            }
            Err(e) => {
                for (_, reply) in jobs {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Starts the task that turns single texts into provider batches: it takes the
/// first waiting text, waits for one of [`MAX_IN_FLIGHT`] slots, then adds
/// whatever else is waiting, up to the batch size. Under light load every text
/// goes out at once; under heavy load batches fill while the slots are busy.
/// The task ends when the last [`Embedder`] holding the queue is dropped.
fn start_coalescer(direct: Embedder) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(1024);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut jobs = vec![first];
            while jobs.len() < direct.batch_size {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let embedder = direct.clone();
            tokio::spawn(async move {
                embedder.run_jobs(jobs).await;
                drop(slot);
            });
        }
    });
    tx
}
