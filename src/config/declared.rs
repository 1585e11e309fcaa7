//! Every setting, declared once: its name, type, default, meaning and (by
//! its type, [`Secret`]) secrecy. The environment variable is the name in
//! upper case, the TOML key the name itself. The key list figment reads, the
//! configuration table of docs/configuration.md (`context-api config --table`, checked by a
//! test) and the redacted print (`context-api config`) all come from here.
//!
//! Adding a setting: one line here, then its use (usually in a section's
//! `from_raw` in `config/mod.rs`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// One declared setting, as documentation sees it.
pub struct Declared {
    /// The TOML key; upper-cased, the environment variable.
    pub key: &'static str,
    pub doc: &'static str,
    pub secret: bool,
}

/// Whether `ty` names `name`: a const `str::contains`.
const fn mentions(ty: &str, name: &str) -> bool {
    let (ty, name) = (ty.as_bytes(), name.as_bytes());
    let mut i = 0;
    while i + name.len() <= ty.len() {
        let mut j = 0;
        while j < name.len() && ty[i + j] == name[j] {
            j += 1;
        }
        if j == name.len() {
            return true;
        }
        i += 1;
    }
    false
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])+ $key:ident : $ty:ty = $default:expr; )*) => {
        /// The flat shape figment fills: every value as given, before checks.
        #[derive(Clone, Debug, Deserialize, Serialize)]
        #[serde(default)]
        pub(crate) struct Raw {
            $( $(#[doc = $doc])+ pub(crate) $key: $ty, )*
        }

        impl Default for Raw {
            fn default() -> Self {
                Self { $( $key: $default, )* }
            }
        }

        /// Every setting, in declaration order.
        pub const DECLARED: &[Declared] = &[
            $( Declared {
                key: stringify!($key),
                doc: concat!($($doc),+),
                secret: mentions(stringify!($ty), "Secret"),
            }, )*
        ];
    };
}

settings! {
    /// listen address
    bind_address: String = "0.0.0.0:8000".into();
    /// required: `postgres://user:pass@host:5432/db`
    database_url: Option<Secret> = None;
    /// a file holding `DATABASE_URL` (Docker secrets)
    database_url_file: Option<PathBuf> = None;
    /// read replicas (streaming standbys), comma-separated `postgres://` URLs: searches and lists go to them, every other statement to `DATABASE_URL`; see Scaling
    database_replica_urls: Option<Secret> = None;
    /// a file holding `DATABASE_REPLICA_URLS`
    database_replica_urls_file: Option<PathBuf> = None;
    /// a replica further behind than this (or down) is skipped: its reads go to the primary
    db_replica_max_lag_ms: u64 = 1_000;
    /// connection pool size (each replica has a pool of this size too)
    db_pool_max: u32 = 10;
    /// connections kept open when idle; the production compose file sets it to `DB_POOL_MAX`, so that no request waits for a connection to be opened (a DNS lookup and a handshake)
    db_pool_min: u32 = 1;
    /// wait for a free connection, then 503
    db_acquire_timeout_ms: u64 = 3_000;
    /// how long startup retries an unreachable database
    db_connect_timeout_seconds: u64 = 30;
    /// `redis://default:password@host:6379`; unset: no cache
    redis_url: Option<Secret> = None;
    /// a file holding `REDIS_URL`
    redis_url_file: Option<PathBuf> = None;
    /// `true`: `REDIS_URL` names a Redis Cluster (a node, or comma-separated nodes; a list of several implies it); see Scaling
    redis_cluster: bool = false;
    /// when true, a Redis outage does not make `/ready` fail
    redis_optional: bool = false;
    /// bound on each cache operation; past it the cache is bypassed
    redis_pool_timeout_ms: u64 = 250;
    /// TTL of cached contexts (never beyond a context's expiry)
    cache_ttl_seconds: u64 = 300;
    /// TTL of cached query embeddings
    embedding_cache_ttl_seconds: u64 = 86_400;
    /// Redis key prefix
    cache_key_prefix: String = "context-api:".into();
    /// contexts kept in process in front of Redis, kept coherent across replicas by Redis pub/sub; `0` turns this tier off
    local_cache_entries: u64 = 10_000;
    /// `tei`: TEI base URL, e.g. `http://embeddings:80`
    embedding_service_url: Option<String> = None;
    /// `tei` or `local`; unset: `tei` when `EMBEDDING_SERVICE_URL` is set, else `local` when `EMBEDDING_MODEL_DIR` is set, else a startup error
    embedding_provider: Option<String> = None;
    /// `local`: a sentence-transformers model directory (`scripts/model.sh` fetches all-MiniLM-L6-v2)
    embedding_model_dir: Option<PathBuf> = None;
    /// `local`: requests waiting for the model before the answer is "overloaded"
    embedding_queue_size: usize = 256;
    /// vector dimension (bge-base-en-v1.5); fixed by the first `migrate`
    embedding_dim: u32 = 768;
    /// Postgres text-search configuration for search modes `text` and `hybrid` (`english`, `simple`, ...); fixed by the first `migrate`
    text_search_config: String = "english".into();
    /// form of the HNSW index: `halfvec` (half the size of `vector`), `vector`, or `bit` (binary quantization, a tenth of the size, re-ranked by the exact distance; see Scaling for its recall); `migrate` builds a new one beside the old and switches; unset: a database keeps its index, a new one gets `halfvec`
    vector_index: Option<String> = None;
    /// HNSW graph: neighbours kept per element (pgvector's `m`), 2 to 100; more finds more of the true nearest on hard data (recall@10 0.98 at a million rows with 24, 0.89 with 16), for a longer build and a larger index below 768-d `halfvec`; `migrate` rebuilds the index beside the old one when it changes; unset: a database keeps its graph, a new one gets 24 (see Scaling)
    hnsw_m: Option<u16> = None;
    /// HNSW graph: the candidate list of each insertion (pgvector's `ef_construction`), 4 to 1000 and at least twice `HNSW_M`; unset: a database keeps its graph, a new one gets 128 (see Scaling)
    hnsw_ef_construction: Option<u16> = None;
    /// vector search: the HNSW candidate list (`hnsw.ef_search`), at least twice the results asked for (for a `bit` index, twice its candidates), 40 to 1000; higher finds more of the true nearest, at some cost (see Scaling)
    hnsw_ef_search: u32 = crate::store::DEFAULT_EF_SEARCH as u32;
    /// hybrid search: k of reciprocal rank fusion (a result's score is the sum of `weight / (k + rank)`)
    hybrid_rrf_k: f64 = 60.0;
    /// hybrid search: weight of the vector ranking
    hybrid_vector_weight: f64 = 1.0;
    /// hybrid search: weight of the text ranking
    hybrid_text_weight: f64 = 1.0;
    /// hybrid search: results taken from each ranking before fusion (at least the `k` asked for), 1 to 500
    hybrid_candidates: u32 = 100;
    /// after a change of model: a TEI server of the model the stored vectors were made with, which serves searches and writes until `context-api reembed` switches to the configured model (see Re-embedding)
    embedding_previous_service_url: Option<String> = None;
    /// the dimension of `EMBEDDING_PREVIOUS_SERVICE_URL`'s model (required with it)
    embedding_previous_dim: Option<u32> = None;
    /// per TEI call; also how long a write waits before storing `pending`
    embedding_timeout_ms: u64 = 5_000;
    /// retries, with jittered backoff, on connect errors, 429 and 5xx
    embedding_max_retries: u32 = 2;
    /// upper bound on a batch (lowered to TEI's `max_client_batch_size`; for `local`, the texts run through the model at once)
    embedding_batch_size: usize = 32;
    /// how often the worker looks for pending rows (it backs off while TEI is down)
    embedding_worker_interval_ms: u64 = 2_000;
    /// required unless `AUTH_DISABLED`: comma- or newline-separated `SCOPE:SHA256HEX` entries; see Auth
    api_keys: Option<Secret> = None;
    /// a file holding `API_KEYS`
    api_keys_file: Option<PathBuf> = None;
    /// `true` serves without keys, as admin (logged as a warning)
    auth_disabled: bool = false;
    /// larger bodies get 413 (the batch route takes 16 times this)
    max_body_bytes: usize = 1024 * 1024;
    /// API requests beyond this get 503 at once
    max_concurrent_requests: usize = 512;
    /// API requests running longer get 503
    request_timeout_ms: u64 = 20_000;
    /// requests a minute for each admin key, shared by all replicas through Redis; 0: no limit
    rate_limit_admin_per_minute: u32 = 0;
    /// requests a minute for each user key, shared by all replicas through Redis; 0: no limit
    rate_limit_user_per_minute: u32 = 0;
    /// how long the first answer to a write with an `Idempotency-Key` is kept (across replicas)
    idempotency_ttl_seconds: u64 = 86_400;
    /// after SIGTERM, how long `/ready` says `draining` before the listener closes
    shutdown_delay_ms: u64 = 0;
    /// how long in-flight requests get to finish (under compose's 30 s)
    shutdown_timeout_seconds: u64 = 25;
    /// how often expired rows are deleted
    purge_interval_seconds: u64 = 60;
    /// expired rows deleted per statement
    purge_batch_size: i64 = 1_000;
    /// a level, or directives like `info,sqlx=warn,context_api=debug`
    log_level: String = "info".into();
    /// `json` (one object per line) or `pretty`
    log_format: String = "json".into();
}

impl Raw {
    /// Each declared key with its value as given (secrets redacted), `None`
    /// where unset.
    fn shown(&self) -> Vec<(&'static str, Option<String>)> {
        let values = serde_json::to_value(self).expect("settings always serialize");
        DECLARED
            .iter()
            .map(|d| {
                let shown = match &values[d.key] {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                };
                (d.key, shown)
            })
            .collect()
    }

    /// The configuration as TOML, secrets redacted (`context-api config`).
    pub(crate) fn redacted(&self) -> String {
        self.shown()
            .into_iter()
            .map(|(key, value)| {
                let value = value.unwrap_or_else(|| "(unset)".into());
                format!(
                    "{key} = {}\n",
                    serde_json::to_string(&value).expect("strings serialize")
                )
            })
            .collect()
    }
}

/// The configuration table of docs/configuration.md (`context-api config --table`).
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for (key, default) in Raw::default().shown() {
        let d = DECLARED.iter().find(|d| d.key == key).expect("declared");
        let default = default.map_or_else(|| "unset".to_string(), |v| format!("`{v}`"));
        let secret = if d.secret { " (secret)" } else { "" };
        out.push_str(&format!(
            "| `{}`{secret} | {default} | {} |\n",
            key.to_ascii_uppercase(),
            d.doc.trim()
        ));
    }
    out
}
