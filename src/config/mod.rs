//! Configuration: defaults, then an optional TOML file (CONFIG_FILE), then the
//! environment (which wins). Keys are the flat, upper-case names the deployment
//! docs use (DATABASE_URL, REDIS_URL, ...); in the TOML file the same names in
//! lower case. Secrets may come from `*_FILE` variables (Docker secrets).
//!
//! - `declared.rs`: every setting, once (name, type, default, meaning, secrecy);
//! - `secret.rs`: the type that never prints;
//! - `provider.rs`: which embedding provider the settings name;
//! - here: loading, and the checked sections each part of the service uses.
//!   Each subcommand checks the sections it uses, and nothing more.

mod declared;
mod provider;
mod secret;

pub use declared::{markdown_table, Declared, DECLARED};
pub use secret::{redact_url, Secret};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::Serialize;

use crate::auth::{ApiKeys, KeyParseError};
use crate::domain::Fusion;
use crate::store::{HnswGraph, Schema, VectorIndex};
use declared::Raw;

/// `EMBEDDING_DIM` when it is not set (the committed OpenAPI document's).
pub fn default_embedding_dim() -> usize {
    Raw::default().embedding_dim as usize
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub bind_address: SocketAddr,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub embeddings: EmbeddingSettings,
    pub search: SearchSettings,
    pub auth: AuthSettings,
    pub http: HttpSettings,
    pub workers: WorkerSettings,
    pub log: LogSettings,
    /// The values as given, for the redacted print (Debug redacts secrets).
    declared: Raw,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: Secret,
    /// Read replicas: searches and lists go to them.
    pub replicas: Vec<Secret>,
    /// A replica further behind is skipped.
    pub replica_max_lag: Duration,
    pub pool_max: u32,
    pub pool_min: u32,
    pub acquire_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `None` disables the cache entirely.
    pub url: Option<Secret>,
    /// A Redis Cluster: `url` is one or more of its nodes, comma-separated.
    pub cluster: bool,
    pub optional: bool,
    pub op_timeout: Duration,
    pub ttl: Duration,
    pub embedding_ttl: Duration,
    pub key_prefix: String,
    /// Contexts kept in process in front of Redis; 0 turns that tier off.
    pub local_entries: u64,
}

#[derive(Debug, Clone)]
pub struct EmbeddingSettings {
    pub provider: EmbeddingProvider,
    pub dim: usize,
    pub timeout: Duration,
    pub max_retries: u32,
    pub batch_size: usize,
    /// The model the stored vectors were made with, after a change of model:
    /// a TEI server and its dimension (the other fields as above).
    pub previous: Option<(reqwest::Url, usize)>,
}

impl EmbeddingSettings {
    /// The settings of the previous model's embedder, if one is configured.
    pub fn previous(&self) -> Option<EmbeddingSettings> {
        self.previous.as_ref().map(|(url, dim)| EmbeddingSettings {
            provider: EmbeddingProvider::Tei { url: url.clone() },
            dim: *dim,
            previous: None,
            ..self.clone()
        })
    }

    /// How long the embedding worker's claim on a batch lasts: twice the
    /// longest a batch can take (every attempt timing out), plus a margin.
    /// Only a worker that dies mid-batch lets a claim lapse.
    pub fn claim_lease(&self) -> Duration {
        self.timeout * (self.max_retries + 1) * 2 + Duration::from_secs(10)
    }
}

#[derive(Debug, Clone)]
pub enum EmbeddingProvider {
    /// A text-embeddings-inference server.
    Tei { url: reqwest::Url },
    /// A sentence-transformers model run in process (feature `local-embeddings`).
    Local {
        model_dir: PathBuf,
        queue_size: usize,
    },
}

#[derive(Debug, Clone)]
pub struct SearchSettings {
    pub text_search_config: String,
    pub fusion: Fusion,
    /// VECTOR_INDEX, for `serve --migrate`.
    pub vector_index: Option<VectorIndex>,
    /// HNSW_EF_SEARCH: the least HNSW candidate list of a vector search.
    pub ef_search: i64,
    /// HNSW_M and HNSW_EF_CONSTRUCTION, for `serve --migrate`.
    pub hnsw_graph: (Option<u16>, Option<u16>),
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `None` when AUTH_DISABLED=true.
    pub keys: Option<ApiKeys>,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    pub idempotency_ttl: Duration,
    /// Requests a minute per admin key and per user key; 0: no limit.
    pub rate_limit_admin_per_minute: u32,
    pub rate_limit_user_per_minute: u32,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub embed_interval: Duration,
    pub purge_interval: Duration,
    pub purge_batch_size: i64,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// One line that names the setting and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

pub(crate) fn err(var: &str, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{var}: {msg}"))
}

/// Defaults, then `file` (if any), then the declared names in the environment.
fn figment(file: Option<PathBuf>) -> Figment {
    let mut fig = Figment::from(Serialized::defaults(Raw::default()));
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    fig.merge(Env::raw().filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        DECLARED.iter().any(|d| d.key == k && !d.secret)
    }))
    .merge(SecretsFromEnv)
}

/// The secret settings from the environment, as the strings they are: figment's
/// `Env` reads values TOML-style, which turns a password `0042` into 42.
struct SecretsFromEnv;

impl figment::Provider for SecretsFromEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let dict = DECLARED
            .iter()
            .filter(|d| d.secret)
            .filter_map(|d| {
                let value = std::env::var(d.key.to_ascii_uppercase()).ok()?;
                Some((d.key.to_string(), figment::value::Value::from(value)))
            })
            .collect();
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn from_environment() -> Figment {
    figment(std::env::var_os("CONFIG_FILE").map(PathBuf::from))
}

/// The values as given; a value of the wrong type names its variable.
fn extract(fig: Figment) -> Result<Raw, ConfigError> {
    fig.extract().map_err(|e| {
        let e = e
            .into_iter()
            .next()
            .expect("figment errors are never empty");
        let key = e
            .path
            .last()
            .map(|k| k.to_ascii_uppercase())
            .unwrap_or_default();
        let source = e
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        err(&key, format!("{}{source}", e.kind))
    })
}

impl Settings {
    /// Defaults, then CONFIG_FILE (if set), then the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_figment(from_environment())
    }

    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let raw = extract(fig)?;
        Ok(Settings {
            bind_address: bind_address(&raw)?,
            database: DatabaseSettings::from_raw(&raw)?,
            redis: RedisSettings::from_raw(&raw)?,
            embeddings: EmbeddingSettings::from_raw(&raw)?,
            search: SearchSettings::from_raw(&raw)?,
            auth: AuthSettings::from_raw(&raw)?,
            http: HttpSettings::from_raw(&raw)?,
            workers: WorkerSettings::from_raw(&raw)?,
            log: LogSettings::from_raw(&raw)?,
            declared: raw,
        })
    }

    /// What the migrations are built with.
    pub fn schema(&self) -> Schema {
        Schema {
            dim: self.embeddings.dim,
            text_search_config: self.search.text_search_config.clone(),
            vector_index: self.search.vector_index,
            hnsw_m: self.search.hnsw_graph.0,
            hnsw_ef_construction: self.search.hnsw_graph.1,
        }
    }

    /// The configuration as given, as TOML, secrets redacted (`context-api config`).
    pub fn redacted(&self) -> String {
        self.declared.redacted()
    }
}

/// What `context-api migrate` uses: the database, the schema's choices, the logs.
pub struct MigrateSettings {
    pub database: DatabaseSettings,
    pub schema: Schema,
    /// EMBEDDING_PREVIOUS_DIM: during a change of model, the dimension the
    /// stored vectors may still have.
    pub previous_dim: Option<usize>,
    pub log: LogSettings,
}

impl MigrateSettings {
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_figment(from_environment())
    }

    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let raw = extract(fig)?;
        Ok(Self {
            database: DatabaseSettings::from_raw(&raw)?,
            schema: schema(&raw)?,
            previous_dim: raw.embedding_previous_dim.map(|d| d as usize),
            log: LogSettings::from_raw(&raw)?,
        })
    }
}

/// What `context-api export` and `import` use: the database, the schema's
/// choices, the embedding service (for its model), the logs.
pub struct TransferSettings {
    pub database: DatabaseSettings,
    pub schema: Schema,
    pub embeddings: EmbeddingSettings,
    pub log: LogSettings,
}

impl TransferSettings {
    pub fn load() -> Result<Self, ConfigError> {
        let raw = extract(from_environment())?;
        Ok(Self {
            database: DatabaseSettings::from_raw(&raw)?,
            schema: schema(&raw)?,
            embeddings: EmbeddingSettings::from_raw(&raw)?,
            log: LogSettings::from_raw(&raw)?,
        })
    }
}

/// What `context-api healthcheck` uses: the address to probe.
pub fn load_bind_address() -> Result<SocketAddr, ConfigError> {
    bind_address(&extract(from_environment())?)
}

fn bind_address(raw: &Raw) -> Result<SocketAddr, ConfigError> {
    raw.bind_address.parse().map_err(|e| {
        err(
            "BIND_ADDRESS",
            format!("{e} (expected host:port, e.g. 0.0.0.0:8000)"),
        )
    })
}

fn embedding_dim(raw: &Raw) -> Result<usize, ConfigError> {
    if !(1..=16_000).contains(&raw.embedding_dim) {
        return Err(err(
            "EMBEDDING_DIM",
            format!("must be between 1 and 16000, got {}", raw.embedding_dim),
        ));
    }
    Ok(raw.embedding_dim as usize)
}

impl DatabaseSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let url = secret_or_file("DATABASE_URL", &raw.database_url, &raw.database_url_file)?
            .ok_or_else(|| err("DATABASE_URL", "is required (or DATABASE_URL_FILE)"))?;
        if !url.expose().starts_with("postgres://") && !url.expose().starts_with("postgresql://") {
            return Err(err(
                "DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }
        positive("DB_POOL_MAX", raw.db_pool_max as u64)?;
        if raw.db_pool_min > raw.db_pool_max {
            return Err(err("DB_POOL_MIN", "must not exceed DB_POOL_MAX"));
        }
        let replicas = match secret_or_file(
            "DATABASE_REPLICA_URLS",
            &raw.database_replica_urls,
            &raw.database_replica_urls_file,
        )? {
            None => Vec::new(),
            Some(list) => {
                let urls: Vec<Secret> = list
                    .expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(|u| Secret::new(u.to_owned()))
                    .collect();
                if urls.iter().any(|u| {
                    !u.expose().starts_with("postgres://")
                        && !u.expose().starts_with("postgresql://")
                }) {
                    return Err(err(
                        "DATABASE_REPLICA_URLS",
                        "each URL must start with postgres:// or postgresql://",
                    ));
                }
                urls
            }
        };
        Ok(Self {
            url,
            replicas,
            replica_max_lag: Duration::from_millis(raw.db_replica_max_lag_ms),
            pool_max: raw.db_pool_max,
            pool_min: raw.db_pool_min,
            acquire_timeout: Duration::from_millis(raw.db_acquire_timeout_ms),
            connect_timeout: Duration::from_secs(raw.db_connect_timeout_seconds),
        })
    }
}

impl RedisSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let url = secret_or_file("REDIS_URL", &raw.redis_url, &raw.redis_url_file)?;
        let mut cluster = raw.redis_cluster;
        if let Some(url) = &url {
            let nodes: Vec<&str> = url.expose().split(',').map(str::trim).collect();
            if nodes
                .iter()
                .any(|u| !u.starts_with("redis://") && !u.starts_with("rediss://"))
            {
                return Err(err(
                    "REDIS_URL",
                    "must start with redis:// or rediss:// (each node of a cluster's list too)",
                ));
            }
            cluster |= nodes.len() > 1;
        }
        Ok(Self {
            url,
            cluster,
            optional: raw.redis_optional,
            op_timeout: Duration::from_millis(raw.redis_pool_timeout_ms.max(1)),
            ttl: Duration::from_secs(raw.cache_ttl_seconds.max(1)),
            embedding_ttl: Duration::from_secs(raw.embedding_cache_ttl_seconds.max(1)),
            key_prefix: raw.cache_key_prefix.clone(),
            local_entries: raw.local_cache_entries,
        })
    }
}

impl EmbeddingSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let provider = provider::resolve(raw)?;
        let dim = embedding_dim(raw)?;
        positive("EMBEDDING_BATCH_SIZE", raw.embedding_batch_size as u64)?;
        positive("EMBEDDING_TIMEOUT_MS", raw.embedding_timeout_ms)?;
        let previous = match (
            &raw.embedding_previous_service_url,
            raw.embedding_previous_dim,
        ) {
            (None, None) => None,
            (Some(url), Some(dim)) if (1..=16_000).contains(&dim) => Some((
                provider::tei_url("EMBEDDING_PREVIOUS_SERVICE_URL", url)?,
                dim as usize,
            )),
            (Some(_), Some(dim)) => {
                return Err(err(
                    "EMBEDDING_PREVIOUS_DIM",
                    format!("must be between 1 and 16000, got {dim}"),
                ))
            }
            (Some(_), None) => {
                return Err(err(
                    "EMBEDDING_PREVIOUS_DIM",
                    "is required with EMBEDDING_PREVIOUS_SERVICE_URL",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "EMBEDDING_PREVIOUS_SERVICE_URL",
                    "is required with EMBEDDING_PREVIOUS_DIM",
                ))
            }
        };
        Ok(Self {
            provider,
            dim,
            timeout: Duration::from_millis(raw.embedding_timeout_ms),
            max_retries: raw.embedding_max_retries,
            batch_size: raw.embedding_batch_size,
            previous,
        })
    }
}

/// What the migrations are built with: fixed once they have run.
fn schema(raw: &Raw) -> Result<Schema, ConfigError> {
    Ok(Schema {
        dim: embedding_dim(raw)?,
        text_search_config: text_search_config(raw)?,
        vector_index: vector_index(raw)?,
        hnsw_m: hnsw_graph(raw)?.0,
        hnsw_ef_construction: hnsw_graph(raw)?.1,
    })
}

/// HNSW_M and HNSW_EF_CONSTRUCTION, each in pgvector's range; when both are
/// given, checked together (the build checks one against a database's other).
fn hnsw_graph(raw: &Raw) -> Result<(Option<u16>, Option<u16>), ConfigError> {
    let (m, ef) = (raw.hnsw_m, raw.hnsw_ef_construction);
    let checked = HnswGraph::new(
        m.unwrap_or(HnswGraph::PGVECTOR.m),
        ef.unwrap_or(
            HnswGraph::PGVECTOR
                .ef_construction
                .max(m.unwrap_or(0).saturating_mul(2)),
        ),
    );
    // The message names the variable.
    checked.map_err(ConfigError)?;
    Ok((m, ef))
}

fn vector_index(raw: &Raw) -> Result<Option<VectorIndex>, ConfigError> {
    let Some(name) = raw.vector_index.as_deref() else {
        return Ok(None);
    };
    let index = VectorIndex::parse(name).ok_or_else(|| {
        err(
            "VECTOR_INDEX",
            format!("must be vector, halfvec or bit, got {name:?}"),
        )
    })?;
    let dim = embedding_dim(raw)?;
    if dim > index.max_dim() {
        return Err(err(
            "VECTOR_INDEX",
            format!(
                "{name} indexes at most {} dimensions, and EMBEDDING_DIM is {dim}",
                index.max_dim()
            ),
        ));
    }
    Ok(Some(index))
}

/// A configuration name as Postgres spells one unquoted (it is written into
/// the migration's SQL); whether it exists is the migration's check.
fn text_search_config(raw: &Raw) -> Result<String, ConfigError> {
    let name = raw.text_search_config.as_str();
    let plain = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(err(
            "TEXT_SEARCH_CONFIG",
            format!("must be a configuration name such as english or simple (lowercase letters, digits, _), got {name:?}"),
        ));
    }
    Ok(name.to_owned())
}

impl SearchSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let finite_positive = |var: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(err(var, format!("must be a number above 0, got {v}")))
            }
        };
        if !(40..=1000).contains(&raw.hnsw_ef_search) {
            return Err(err(
                "HNSW_EF_SEARCH",
                format!("must be between 40 and 1000, got {}", raw.hnsw_ef_search),
            ));
        }
        if !(1..=500).contains(&raw.hybrid_candidates) {
            return Err(err(
                "HYBRID_CANDIDATES",
                format!("must be between 1 and 500, got {}", raw.hybrid_candidates),
            ));
        }
        Ok(Self {
            text_search_config: text_search_config(raw)?,
            vector_index: vector_index(raw)?,
            ef_search: i64::from(raw.hnsw_ef_search),
            hnsw_graph: hnsw_graph(raw)?,
            fusion: Fusion {
                k: finite_positive("HYBRID_RRF_K", raw.hybrid_rrf_k)?,
                vector_weight: finite_positive("HYBRID_VECTOR_WEIGHT", raw.hybrid_vector_weight)?,
                text_weight: finite_positive("HYBRID_TEXT_WEIGHT", raw.hybrid_text_weight)?,
                candidates: i64::from(raw.hybrid_candidates),
            },
        })
    }
}

impl AuthSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let text = secret_or_file("API_KEYS", &raw.api_keys, &raw.api_keys_file)?;
        let keys = match (raw.auth_disabled, text) {
            (true, _) => None,
            (false, None) => {
                return Err(err(
                    "API_KEYS",
                    "no API keys configured: set API_KEYS (or API_KEYS_FILE) to SCOPE:SHA256HEX entries, or AUTH_DISABLED=true",
                ))
            }
            (false, Some(text)) => {
                let keys = ApiKeys::parse(text.expose()).map_err(|e: KeyParseError| err("API_KEYS", e))?;
                if keys.is_empty() {
                    return Err(err("API_KEYS", "contains no keys"));
                }
                Some(keys)
            }
        };
        Ok(Self { keys })
    }
}

impl HttpSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        positive("MAX_BODY_BYTES", raw.max_body_bytes as u64)?;
        positive(
            "MAX_CONCURRENT_REQUESTS",
            raw.max_concurrent_requests as u64,
        )?;
        positive("REQUEST_TIMEOUT_MS", raw.request_timeout_ms)?;
        positive("IDEMPOTENCY_TTL_SECONDS", raw.idempotency_ttl_seconds)?;
        let limited = raw.rate_limit_admin_per_minute > 0 || raw.rate_limit_user_per_minute > 0;
        if limited && raw.redis_url.is_none() && raw.redis_url_file.is_none() {
            return Err(err(
                "RATE_LIMIT_ADMIN_PER_MINUTE",
                "rate limits are counted in Redis, shared by every replica: set REDIS_URL",
            ));
        }
        Ok(Self {
            max_body_bytes: raw.max_body_bytes,
            max_concurrent_requests: raw.max_concurrent_requests,
            request_timeout: Duration::from_millis(raw.request_timeout_ms),
            idempotency_ttl: Duration::from_secs(raw.idempotency_ttl_seconds),
            rate_limit_admin_per_minute: raw.rate_limit_admin_per_minute,
            rate_limit_user_per_minute: raw.rate_limit_user_per_minute,
            shutdown_delay: Duration::from_millis(raw.shutdown_delay_ms),
            shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_seconds),
        })
    }
}

impl WorkerSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        positive("PURGE_INTERVAL_SECONDS", raw.purge_interval_seconds)?;
        positive("PURGE_BATCH_SIZE", raw.purge_batch_size.max(0) as u64)?;
        positive(
            "EMBEDDING_WORKER_INTERVAL_MS",
            raw.embedding_worker_interval_ms,
        )?;
        Ok(Self {
            embed_interval: Duration::from_millis(raw.embedding_worker_interval_ms),
            purge_interval: Duration::from_secs(raw.purge_interval_seconds),
            purge_batch_size: raw.purge_batch_size,
        })
    }
}

impl LogSettings {
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let format = match raw.log_format.to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "pretty" | "text" => LogFormat::Pretty,
            other => {
                return Err(err(
                    "LOG_FORMAT",
                    format!("must be json or pretty, got {other:?}"),
                ))
            }
        };
        tracing_subscriber::EnvFilter::try_new(&raw.log_level).map_err(|e| {
            err(
                "LOG_LEVEL",
                format!("{e} (a level such as info, or RUST_LOG-style directives)"),
            )
        })?;
        Ok(Self {
            level: raw.log_level.clone(),
            format,
        })
    }
}

pub(crate) fn positive(var: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(err(var, "must be greater than 0"));
    }
    Ok(())
}

/// `VAR` wins over `VAR_FILE`; a file's trailing newline is not part of the secret.
fn secret_or_file(
    var: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(v), _) if !v.expose().is_empty() => Ok(Some(v.clone())),
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                err(
                    &format!("{var}_FILE"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r']))))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
// figment's Jail closures return its (large) Error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const KEY: &str = "admin:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    fn load() -> Result<Settings, ConfigError> {
        Settings::from_figment(from_environment())
    }

    #[test]
    fn environment_names_of_the_deployment_docs_work() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://u:p@db/app");
            jail.set_env("REDIS_URL", "redis://redis:6379");
            jail.set_env("EMBEDDING_SERVICE_URL", "http://embeddings:80");
            jail.set_env("LOG_LEVEL", "debug");
            jail.set_env("API_KEYS", KEY);
            let s = load().unwrap();
            assert_eq!(s.bind_address.to_string(), "0.0.0.0:8000");
            assert_eq!(s.embeddings.dim, 768);
            assert_eq!(s.log.level, "debug");
            assert_eq!(s.redis.url.unwrap().expose(), "redis://redis:6379");
            Ok(())
        });
    }

    #[test]
    fn migrate_checks_only_the_database_and_the_schema() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://db/app");
            jail.set_env("EMBEDDING_DIM", "384");
            // No API keys, no embedding provider: serving refuses, migrating does not.
            assert!(load().is_err());
            let m = MigrateSettings::from_figment(from_environment()).unwrap();
            assert_eq!(m.schema.dim, 384);
            assert_eq!(m.schema.text_search_config, "english");
            jail.set_env("EMBEDDING_DIM", "0");
            let e = MigrateSettings::from_figment(from_environment())
                .err()
                .unwrap();
            assert!(e.to_string().contains("EMBEDDING_DIM"), "{e}");
            jail.set_env("EMBEDDING_DIM", "384");
            // Written into the migration's SQL: only a plain name passes.
            for bad in ["English", "english'); DROP TABLE contexts; --", "", "1st"] {
                jail.set_env("TEXT_SEARCH_CONFIG", bad);
                let e = MigrateSettings::from_figment(from_environment())
                    .err()
                    .unwrap();
                assert!(e.to_string().contains("TEXT_SEARCH_CONFIG"), "{e}");
            }
            jail.set_env("TEXT_SEARCH_CONFIG", "simple");
            let m = MigrateSettings::from_figment(from_environment()).unwrap();
            assert_eq!(m.schema.text_search_config, "simple");
            Ok(())
        });
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("EMBEDDING_SERVICE_URL", "http://e");
            jail.set_env("AUTH_DISABLED", "true");
            let e = load().unwrap_err().to_string();
            assert!(e.contains("DATABASE_URL"), "{e}");
            assert!(!e.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn a_bad_number_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://db/app");
            jail.set_env("EMBEDDING_SERVICE_URL", "http://e");
            jail.set_env("AUTH_DISABLED", "true");
            jail.set_env("EMBEDDING_DIM", "many");
            let e = load().unwrap_err().to_string();
            assert!(e.contains("EMBEDDING_DIM"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_vector_index_and_its_candidate_list_are_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://db/app");
            jail.set_env("EMBEDDING_SERVICE_URL", "http://e");
            jail.set_env("AUTH_DISABLED", "true");
            let s = load().unwrap();
            assert_eq!(s.search.vector_index, None, "unset: the database's own");
            assert_eq!(s.search.ef_search, 100);
            jail.set_env("VECTOR_INDEX", "bit");
            jail.set_env("HNSW_EF_SEARCH", "200");
            let s = load().unwrap();
            assert_eq!(s.schema().vector_index, Some(VectorIndex::Bit));
            assert_eq!(s.search.ef_search, 200);
            jail.set_env("HNSW_EF_SEARCH", "20");
            let e = load().unwrap_err().to_string();
            assert!(e.contains("HNSW_EF_SEARCH") && e.contains("20"), "{e}");
            jail.set_env("HNSW_EF_SEARCH", "100");
            jail.set_env("VECTOR_INDEX", "pq");
            let e = load().unwrap_err().to_string();
            assert!(e.contains("VECTOR_INDEX") && e.contains("pq"), "{e}");
            // vector indexes at most 2,000 dimensions, halfvec 4,000.
            jail.set_env("VECTOR_INDEX", "vector");
            jail.set_env("EMBEDDING_DIM", "3072");
            let e = load().unwrap_err().to_string();
            assert!(e.contains("VECTOR_INDEX") && e.contains("3072"), "{e}");
            jail.set_env("VECTOR_INDEX", "halfvec");
            assert!(load().is_ok());
            assert_eq!(
                load().unwrap().schema().hnsw_m,
                None,
                "unset: the database's own"
            );
            jail.set_env("HNSW_M", "32");
            jail.set_env("HNSW_EF_CONSTRUCTION", "200");
            let schema = load().unwrap().schema();
            assert_eq!(
                (schema.hnsw_m, schema.hnsw_ef_construction),
                (Some(32), Some(200))
            );
            for (m, ef, named) in [
                ("1", "200", "HNSW_M"),
                ("101", "1000", "HNSW_M"),
                ("32", "1001", "HNSW_EF_CONSTRUCTION"),
                ("32", "63", "HNSW_EF_CONSTRUCTION"),
            ] {
                jail.set_env("HNSW_M", m);
                jail.set_env("HNSW_EF_CONSTRUCTION", ef);
                let e = load().unwrap_err().to_string();
                assert!(e.contains(&format!("error: {named}")), "{m} {ef}: {e}");
            }
            Ok(())
        });
    }

    #[test]
    fn no_keys_refuses_to_start_unless_auth_disabled() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://db/app");
            jail.set_env("EMBEDDING_SERVICE_URL", "http://e");
            let e = load().unwrap_err().to_string();
            assert!(e.contains("API_KEYS"), "{e}");
            jail.set_env("AUTH_DISABLED", "true");
            assert!(load().unwrap().auth.keys.is_none());
            Ok(())
        });
    }

    #[test]
    fn file_then_env_and_secret_files() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "app.toml",
                "embedding_dim = 384\nbind_address = \"127.0.0.1:9000\"\n",
            )?;
            jail.create_file("db_url", "postgres://u:123@db/app\n")?;
            jail.create_file("keys", &format!("{KEY}\n"))?;
            jail.set_env("CONFIG_FILE", "app.toml");
            jail.set_env("DATABASE_URL_FILE", "db_url");
            jail.set_env("API_KEYS_FILE", "keys");
            jail.set_env("EMBEDDING_SERVICE_URL", "http://e");
            jail.set_env("BIND_ADDRESS", "127.0.0.1:9100");
            let s = load().unwrap();
            assert_eq!(s.embeddings.dim, 384);
            assert_eq!(
                s.bind_address.port(),
                9100,
                "environment wins over the file"
            );
            assert_eq!(s.database.url.expose(), "postgres://u:123@db/app");
            assert_eq!(s.auth.keys.unwrap().len(), 1);
            Ok(())
        });
    }

    #[test]
    fn numeric_secret_stays_a_string_and_never_prints() {
        Jail::expect_with(|jail| {
            // Environment values are read TOML-style: these would become
            // numbers (0042 -> 42, 1e3 -> 1000) without the Secret type.
            for value in ["0042", "1e3", "123", "true", "-0"] {
                jail.set_env("API_KEYS", value);
                let raw = extract(from_environment()).unwrap();
                assert_eq!(raw.api_keys.as_ref().unwrap().expose(), value);
            }
            jail.set_env("DATABASE_URL", "postgres://u:hunter2@db/app");
            jail.set_env("REDIS_URL", "redis://default:s3cret@r:6379");
            jail.set_env("EMBEDDING_SERVICE_URL", "http://e");
            jail.set_env("API_KEYS", KEY);
            let s = load().unwrap();
            let shown = s.redacted();
            assert!(
                !shown.contains("hunter2") && !shown.contains("s3cret"),
                "{shown}"
            );
            assert!(
                shown.contains("database_url = \"postgres://u:redacted@db/app\""),
                "{shown}"
            );
            assert!(!format!("{s:?}").contains("hunter2"));
            assert!(!shown.contains("5e884898"));
            Ok(())
        });
    }
}
