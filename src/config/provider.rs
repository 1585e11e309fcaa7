//! Which embedding provider the settings name.

use super::declared::Raw;
use super::{err, positive, ConfigError, EmbeddingProvider};

/// EMBEDDING_PROVIDER, or what the other settings imply: `tei` when
/// EMBEDDING_SERVICE_URL is set, else `local` when EMBEDDING_MODEL_DIR is.
pub(super) fn resolve(raw: &Raw) -> Result<EmbeddingProvider, ConfigError> {
    let (explicit, url, model_dir, queue_size) = (
        raw.embedding_provider.as_deref(),
        raw.embedding_service_url.clone(),
        raw.embedding_model_dir.clone(),
        raw.embedding_queue_size,
    );
    let choice = match explicit.map(str::to_ascii_lowercase).as_deref() {
        Some("tei") => "tei",
        Some("local") => "local",
        Some(other) => return Err(err("EMBEDDING_PROVIDER", format!("must be tei or local, got {other:?}"))),
        None if url.is_some() => "tei",
        None if model_dir.is_some() => "local",
        None => {
            return Err(err(
                "EMBEDDING_SERVICE_URL",
                "no embedding provider: set EMBEDDING_SERVICE_URL (a TEI server, e.g. http://embeddings:80) \
                 or EMBEDDING_MODEL_DIR (a sentence-transformers model run in process)",
            ))
        }
    };
    if choice == "tei" {
        let url = url.ok_or_else(|| {
            err(
                "EMBEDDING_SERVICE_URL",
                "is required with EMBEDDING_PROVIDER=tei",
            )
        })?;
        return tei_url("EMBEDDING_SERVICE_URL", &url).map(|url| EmbeddingProvider::Tei { url });
    }
    if !cfg!(feature = "local-embeddings") {
        return Err(err(
            "EMBEDDING_PROVIDER",
            "local embeddings are not in this build (built without the local-embeddings feature): use a TEI server",
        ));
    }
    let model_dir = model_dir.ok_or_else(|| {
        err(
            "EMBEDDING_MODEL_DIR",
            "is required with EMBEDDING_PROVIDER=local",
        )
    })?;
    if !model_dir.join("config.json").is_file() {
        return Err(err(
            "EMBEDDING_MODEL_DIR",
            format!(
                "{} has no config.json (expected a sentence-transformers model directory)",
                model_dir.display()
            ),
        ));
    }
    positive("EMBEDDING_QUEUE_SIZE", queue_size as u64)?;
    Ok(EmbeddingProvider::Local {
        model_dir,
        queue_size,
    })
}

/// A TEI base URL, as `name` gives it.
pub(super) fn tei_url(name: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let mut url = reqwest::Url::parse(url).map_err(|e| err(name, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err(name, "must be an http:// or https:// URL"));
    }
    // So that joining "embed" keeps a path prefix (TEI behind a proxy).
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}
