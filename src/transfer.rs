//! `context-api export` and `context-api import`: contexts as NDJSON, one
//! [`Record`] a line, with their ids, times, versions, texts, vectors and the
//! model that made the vectors. Import is the inverse of export: a file
//! exported, imported into an empty database and exported again comes out
//! byte for byte the same.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{
    json_object, storable_instant, Context, ContextId, ContextKey, ContextType, Embedding,
    NewContext, UserId, ValidationError,
};
use crate::embeddings::Embedder;
use crate::store::{Restored, Store, StoreError};

/// One line of an export file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The client's name for it (absent when it has none; files written
    /// before keys existed have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub context_type: String,
    pub content: Value,
    pub metadata: Value,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
    /// The text the embedding is made from.
    pub text: String,
    /// `null` while the embedding is pending.
    pub embedding: Option<Vec<f64>>,
    /// The model that made `embedding`: the embedding service's model id,
    /// or `null` for a vector the client gave (or with no vector).
    pub model: Option<String>,
}

impl Record {
    fn exported(c: Context, text: String) -> Self {
        let model = c.embedding.as_ref().and(c.embedding_model);
        Self {
            id: c.id.0,
            user_id: c.user_id.0,
            key: c.key,
            context_type: c.context_type,
            content: Value::Object(c.content),
            metadata: Value::Object(c.metadata),
            expires_at: c.expires_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
            version: c.version,
            text,
            embedding: c.embedding.map(|v| v.into_iter().map(f64::from).collect()),
            model,
        }
    }

    /// Checked as a create is, plus the fields a create does not take. A
    /// vector made by another model than `model` is dropped: it is made again
    /// from the text. A vector with no model is the client's: kept as given.
    fn restore(self, dim: usize, model: &str) -> Result<(Restored, bool), ValidationError> {
        // (vector, its model, whether it must be made again)
        let (embedding, embedding_model, stale) = match (self.embedding, self.model) {
            (Some(v), Some(m)) if m == model => (
                Some(Embedding::from_wire("embedding", v, dim)?),
                Some(m),
                false,
            ),
            (Some(v), None) => (
                Some(Embedding::from_wire("embedding", v, dim)?),
                None,
                false,
            ),
            (Some(_), Some(_)) => (None, None, true),
            (None, _) => (None, None, false),
        };
        if self.version < 1 {
            return Err(ValidationError::new("version", "must be 1 or more"));
        }
        let restored = Restored {
            new: NewContext {
                id: ContextId(self.id),
                user_id: UserId(self.user_id),
                key: self.key.as_deref().map(ContextKey::parse).transpose()?,
                context_type: ContextType::parse(&self.context_type)?,
                content: json_object("content", self.content)?,
                metadata: json_object("metadata", self.metadata)?,
                expires_at: self
                    .expires_at
                    .map(|at| storable_instant("expires_at", at))
                    .transpose()?,
                text: self.text,
                embedding,
                embedding_model,
            },
            created_at: storable_instant("created_at", self.created_at)?,
            updated_at: storable_instant("updated_at", self.updated_at)?,
            version: self.version,
        };
        Ok((restored, stale))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot tell which model the embedding service runs ({0}); is it up?")]
    Model(crate::embeddings::EmbedError),
    #[error("line {line}: {message}")]
    Invalid { line: u64, message: String },
    #[error("the HNSW index: {0}")]
    Index(#[from] crate::store::SwitchError),
}

/// Progress on stderr: a bar with rate and ETA on a terminal, else a plain
/// line every few seconds (and at the end) for logs.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    unit: &'static str,
    total: u64,
    done: u64,
    /// Counted before this run (not part of its rate).
    resumed: u64,
    started: Instant,
    last_line: Instant,
    /// More than the count: e.g. an import's embedding progress.
    note: String,
}

impl Progress {
    pub(crate) fn new(label: &'static str, unit: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let template = if unit == "bytes" {
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            } else {
                "{msg} {wide_bar} {pos}/{len} {per_sec} ETA {eta}"
            };
            bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
            bar.set_message(label);
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            label,
            unit,
            total,
            done: 0,
            resumed: 0,
            started: now,
            last_line: now,
            note: String::new(),
        }
    }

    /// Shown beside the count from now on.
    pub(crate) fn note(&mut self, note: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} ({note})", self.label));
        }
        self.note = note;
    }

    /// Starts the count at `done` (a resumed job), without counting it in the rate.
    pub(crate) fn resume_at(&mut self, done: u64) {
        self.done = done;
        self.resumed = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.reset_eta();
        }
    }

    pub(crate) fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    pub(crate) fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                self.line();
            }
            None => {}
        }
    }

    fn line(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.done - self.resumed) as f64 / secs;
        let eta = if rate > 0.0 {
            format!(
                "{:.0} s",
                self.total.saturating_sub(self.done) as f64 / rate
            )
        } else {
            "unknown".into()
        };
        let note = if self.note.is_empty() {
            String::new()
        } else {
            format!("; {}", self.note)
        };
        eprintln!(
            "{}: {}/{} {} ({:.0} {}/s, ETA {eta}{note})",
            self.label, self.done, self.total, self.unit, rate, self.unit
        );
    }

    pub(crate) fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => self.line(),
        }
    }
}

/// What an export wrote.
pub struct Exported {
    pub contexts: u64,
}

/// Writes every visible context (of `user`, of `context_type`) to `out`, one
/// [`Record`] a line, oldest first.
pub async fn export(
    store: &Store,
    user: Option<UserId>,
    context_type: Option<&ContextType>,
    out: &mut impl Write,
) -> Result<Exported, TransferError> {
    let total = store.count_visible(user, context_type).await?;
    let mut progress = Progress::new("export", "contexts", total as u64);
    let mut rows = store.export(user, context_type);
    let mut contexts = 0;
    while let Some(row) = rows.next().await {
        let row = row?;
        let record = Record::exported(row.context, row.text);
        serde_json::to_writer(&mut *out, &record).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        contexts += 1;
        progress.advance(1);
    }
    out.flush()?;
    progress.finish();
    Ok(Exported { contexts })
}

/// What to do with a line that is not a valid [`Record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Report it (by line number) and go on.
    Skip,
    /// Report it and stop before writing its batch.
    Fail,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    /// Rows written.
    pub written: u64,
    /// Lines whose id was already stored: written by an earlier run.
    pub present: u64,
    /// Lines refused (with `--on-error skip`).
    pub invalid: u64,
    /// Vectors made again because the file's model is not the configured one.
    pub reembedded: u64,
    /// Of those, texts the embedding service could not embed now: stored
    /// pending, for the service's embedding worker.
    pub pending: u64,
}

impl Imported {
    /// Rows written so far, and of the vectors made on the way, how many
    /// were and how many were left to the service's worker.
    fn progress(&self) -> String {
        format!(
            "{} rows written, {} embedded, {} left pending",
            self.written,
            self.reembedded - self.pending,
            self.pending
        )
    }

    fn add(&mut self, other: Imported) {
        self.written += other.written;
        self.present += other.present;
        self.invalid += other.invalid;
        self.reembedded += other.reembedded;
        self.pending += other.pending;
    }
}

/// How to write an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Contexts a batch (one statement).
    pub batch: usize,
    /// Batches written at once, each on its own connection, so that the
    /// database's cores share the index maintenance.
    pub jobs: usize,
    pub on_error: OnError,
    /// Drop the HNSW index for the load and build it once after, in the
    /// recorded form (see [`crate::store::drop_vector_index`]).
    pub defer_index: bool,
    /// The index build's `maintenance_work_mem` (`2GB`), else the server's.
    pub maintenance_work_mem: Option<String>,
}

/// Reads `input` (NDJSON [`Record`]s) and writes it in batches, each one
/// statement: a batch is written whole or not at all. Up to `jobs` batches
/// are written at once, while the next lines are read. Ids already stored are
/// skipped, so running an import again after an interruption resumes it,
/// whichever of its batches had been written.
pub async fn import(
    store: &Store,
    embedder: &Embedder,
    input: impl BufRead,
    input_bytes: u64,
    options: ImportOptions,
) -> Result<Imported, TransferError> {
    let ImportOptions {
        batch,
        jobs,
        on_error,
        defer_index,
        maintenance_work_mem,
    } = options;
    let model = embedder.model().await.map_err(TransferError::Model)?;
    if defer_index {
        crate::store::drop_vector_index(store.pool()).await?;
        eprintln!(
            "import: the HNSW index is dropped for the load and built after it; searches that \
             used it read the rows exactly meanwhile (if this import stops, run it again, or \
             `context-api migrate`, to build the index)"
        );
    }
    let mut progress = Progress::new("import", "bytes", input_bytes);
    let mut report = Imported::default();
    let mut pending: Vec<(Restored, bool)> = Vec::with_capacity(batch);
    let mut writing = tokio::task::JoinSet::new();
    let mut line_no = 0u64;
    for line in input.lines() {
        let line = line?;
        line_no += 1;
        progress.advance(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let parsed = check_line(&line)
            .and_then(|()| serde_json::from_str::<Record>(&line).map_err(|e| e.to_string()))
            .and_then(|r| r.restore(store.dim(), &model).map_err(|e| e.to_string()));
        match parsed {
            Ok(item) => pending.push(item),
            Err(message) => {
                eprintln!("line {line_no}: {message}");
                report.invalid += 1;
                if on_error == OnError::Fail {
                    // The batches before this line are written; its own is not.
                    while let Some(done) = writing.join_next().await {
                        report.add(joined(done)?);
                    }
                    return Err(TransferError::Invalid {
                        line: line_no,
                        message,
                    });
                }
            }
        }
        if pending.len() >= batch {
            let items = std::mem::replace(&mut pending, Vec::with_capacity(batch));
            writing.spawn(write_batch(store.clone(), embedder.clone(), items));
            while writing.len() >= jobs.max(1) {
                let done = writing.join_next().await.expect("a batch is being written");
                report.add(joined(done)?);
                progress.note(report.progress());
            }
        }
    }
    writing.spawn(write_batch(store.clone(), embedder.clone(), pending));
    while let Some(done) = writing.join_next().await {
        report.add(joined(done)?);
        progress.note(report.progress());
    }
    progress.finish();
    if defer_index {
        let started = std::time::Instant::now();
        eprintln!("import: building the HNSW index ...");
        crate::store::ensure_vector_index(store.pool(), maintenance_work_mem.as_deref()).await?;
        eprintln!(
            "import: built the HNSW index in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(report)
}

/// A batch's outcome; a panic in its task goes on in the caller.
fn joined(
    done: Result<Result<Imported, TransferError>, tokio::task::JoinError>,
) -> Result<Imported, TransferError> {
    match done {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(TransferError::Io(std::io::Error::other(e))),
    }
}

/// The limits every request body is held to (NUL characters, sizes, depth).
fn check_line(line: &str) -> Result<(), String> {
    crate::routes::extract::check_json(line.as_bytes()).map_err(|e| e.to_string())
}

async fn write_batch(
    store: Store,
    embedder: Embedder,
    mut items: Vec<(Restored, bool)>,
) -> Result<Imported, TransferError> {
    let mut report = Imported::default();
    if items.is_empty() {
        return Ok(report);
    }
    let ids: Vec<Uuid> = items.iter().map(|(r, _)| r.new.id.0).collect();
    let present = store.existing_ids(&ids).await?;
    items.retain(|(r, _)| !present.contains(&r.new.id.0));
    report.present += present.len() as u64;
    let stale: Vec<usize> = (0..items.len()).filter(|&i| items[i].1).collect();
    if !stale.is_empty() {
        let texts: Vec<String> = stale.iter().map(|&i| items[i].0.new.text.clone()).collect();
        report.reembedded += stale.len() as u64;
        match embedder.embed(&texts).await {
            Ok(vectors) => {
                let model = embedder.model().await.ok();
                for (&i, v) in stale.iter().zip(vectors) {
                    let new = &mut items[i].0.new;
                    new.embedding = Embedding::parse("embedding", v, store.dim()).ok();
                    new.embedding_model = new.embedding.as_ref().and(model.clone());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, texts = texts.len(), "not embedded now: stored pending");
                report.pending += stale.len() as u64;
            }
        }
    }
    let restored: Vec<Restored> = items.into_iter().map(|(r, _)| r).collect();
    report.written += store.restore_many(&restored).await?;
    Ok(report)
}
