//! Client for Hugging Face text-embeddings-inference: `GET /info`, `POST /embed`.
//! Retries connect errors, 429 and 5xx with jittered exponential backoff.

use std::time::Duration;

use rand::Rng;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::EmbedError;
use crate::config::EmbeddingSettings;

#[derive(Clone)]
pub struct TeiClient {
    http: reqwest::Client,
    base: Url,
    max_retries: u32,
}

#[derive(Debug, Deserialize)]
pub struct TeiInfo {
    pub model_id: String,
    pub max_client_batch_size: Option<usize>,
}

#[derive(Serialize)]
struct EmbedRequest<'a> {
    inputs: &'a [String],
    truncate: bool,
    normalize: bool,
}

impl TeiClient {
    pub fn new(base: Url, settings: &EmbeddingSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(Self {
            http,
            base,
            max_retries: settings.max_retries,
        })
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("a path joins onto a base URL")
    }

    #[tracing::instrument(name = "tei.info", level = "debug", skip_all)]
    pub async fn info(&self) -> Result<TeiInfo, EmbedError> {
        let resp = self.send(|| self.http.get(self.url("info"))).await?;
        resp.json()
            .await
            .map_err(|e| EmbedError::Unavailable(format!("unreadable /info: {e}")))
    }

    #[tracing::instrument(name = "tei.embed", level = "debug", skip_all, fields(texts = inputs.len()))]
    pub async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = EmbedRequest {
            inputs,
            truncate: true,
            normalize: true,
        };
        let resp = self
            .send(|| self.http.post(self.url("embed")).json(&body))
            .await?;
        resp.json()
            .await
            .map_err(|e| EmbedError::Unavailable(format!("unreadable /embed answer: {e}")))
    }

    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, EmbedError> {
        let mut attempt = 0;
        loop {
            let outcome = build().send().await;
            let retryable = match &outcome {
                Ok(r) if r.status().is_success() => return Ok(outcome.expect("checked Ok")),
                Ok(r) => {
                    r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error()
                }
                Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            };
            if !retryable || attempt >= self.max_retries {
                return Err(match outcome {
                    Ok(r) if retryable => EmbedError::Unavailable(format!("HTTP {}", r.status())),
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        EmbedError::Rejected(format!("HTTP {status}: {}", truncate(&text, 200)))
                    }
                    Err(e) => EmbedError::Unavailable(e.to_string()),
                });
            }
            attempt += 1;
            // Full jitter on 100ms * 2^attempt, capped at 2s.
            let cap = (100u64 << attempt.min(5)).min(2_000);
            let wait = rand::rng().random_range(cap / 2..=cap);
            tracing::debug!(attempt, wait_ms = wait, "retrying embedding request");
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
