//! Configuration: defaults, then an optional TOML file (CONFIG_FILE), then the
//! environment (which wins). Keys are the flat, upper-case names the deployment
//! docs use (DATABASE_URL, REDIS_URL, ...); in the TOML file the same names in
//! lower case. Secrets may come from `*_FILE` variables (Docker secrets).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::{ApiKeys, KeyParseError};

/// A value that must never be printed: Debug and Display redact it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// figment reads environment values TOML-style, so a password such as `123`
/// arrives as a number: accept any scalar and keep its text.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Secret(match Scalar::deserialize(d)? {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::F(x) => x.to_string(),
            Scalar::B(b) => b.to_string(),
        }))
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The flat shape that figment fills. Converted into [`Settings`] by
/// [`Settings::load`], which checks every value.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default)]
struct Raw {
    bind_address: String,
    database_url: Option<Secret>,
    database_url_file: Option<PathBuf>,
    db_pool_max: u32,
    db_pool_min: u32,
    db_acquire_timeout_ms: u64,
    db_connect_timeout_seconds: u64,
    redis_url: Option<Secret>,
    redis_url_file: Option<PathBuf>,
    redis_optional: bool,
    redis_pool_timeout_ms: u64,
    cache_ttl_seconds: u64,
    embedding_cache_ttl_seconds: u64,
    cache_key_prefix: String,
    local_cache_entries: u64,
    embedding_service_url: Option<String>,
    embedding_provider: Option<String>,
    embedding_model_dir: Option<PathBuf>,
    embedding_queue_size: usize,
    embedding_dim: u32,
    embedding_timeout_ms: u64,
    embedding_max_retries: u32,
    embedding_batch_size: usize,
    embedding_worker_interval_ms: u64,
    api_keys: Option<Secret>,
    api_keys_file: Option<PathBuf>,
    auth_disabled: bool,
    max_body_bytes: usize,
    max_concurrent_requests: usize,
    request_timeout_ms: u64,
    shutdown_delay_ms: u64,
    shutdown_timeout_seconds: u64,
    purge_interval_seconds: u64,
    purge_batch_size: i64,
    log_level: String,
    log_format: String,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0:8000".into(),
            database_url: None,
            database_url_file: None,
            db_pool_max: 10,
            db_pool_min: 1,
            db_acquire_timeout_ms: 3_000,
            db_connect_timeout_seconds: 30,
            redis_url: None,
            redis_url_file: None,
            redis_optional: false,
            redis_pool_timeout_ms: 250,
            cache_ttl_seconds: 300,
            embedding_cache_ttl_seconds: 86_400,
            cache_key_prefix: "context-api:".into(),
            local_cache_entries: 10_000,
            embedding_service_url: None,
            embedding_provider: None,
            embedding_model_dir: None,
            embedding_queue_size: 256,
            embedding_dim: 768,
            embedding_timeout_ms: 5_000,
            embedding_max_retries: 2,
            embedding_batch_size: 32,
            embedding_worker_interval_ms: 2_000,
            api_keys: None,
            api_keys_file: None,
            auth_disabled: false,
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 512,
            request_timeout_ms: 20_000,
            shutdown_delay_ms: 0,
            shutdown_timeout_seconds: 25,
            purge_interval_seconds: 60,
            purge_batch_size: 1_000,
            log_level: "info".into(),
            log_format: "json".into(),
        }
    }
}

/// The names read from the environment (and, lower-cased, from the file).
const KEYS: &[&str] = &[
    "bind_address",
    "database_url",
    "database_url_file",
    "db_pool_max",
    "db_pool_min",
    "db_acquire_timeout_ms",
    "db_connect_timeout_seconds",
    "redis_url",
    "redis_url_file",
    "redis_optional",
    "redis_pool_timeout_ms",
    "cache_ttl_seconds",
    "embedding_cache_ttl_seconds",
    "cache_key_prefix",
    "local_cache_entries",
    "embedding_service_url",
    "embedding_provider",
    "embedding_model_dir",
    "embedding_queue_size",
    "embedding_dim",
    "embedding_timeout_ms",
    "embedding_max_retries",
    "embedding_batch_size",
    "embedding_worker_interval_ms",
    "api_keys",
    "api_keys_file",
    "auth_disabled",
    "max_body_bytes",
    "max_concurrent_requests",
    "request_timeout_ms",
    "shutdown_delay_ms",
    "shutdown_timeout_seconds",
    "purge_interval_seconds",
    "purge_batch_size",
    "log_level",
    "log_format",
];

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
    pub auth: AuthSettings,
    pub http: HttpSettings,
    pub workers: WorkerSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub pool_max: u32,
    pub pool_min: u32,
    pub acquire_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `None` disables the cache entirely.
    pub url: Option<Secret>,
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
pub struct AuthSettings {
    /// `None` when AUTH_DISABLED=true.
    pub keys: Option<ApiKeys>,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
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

fn err(var: &str, msg: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{var}: {msg}"))
}

impl Settings {
    /// Defaults, then CONFIG_FILE (if set), then the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(
            std::env::var_os("CONFIG_FILE").map(PathBuf::from),
        ))
    }

    fn figment(file: Option<PathBuf>) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Raw::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        fig.merge(Env::raw().filter(|k| KEYS.contains(&k.as_str().to_ascii_lowercase().as_str())))
    }

    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let raw: Raw = fig.extract().map_err(|e| {
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
        })?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> Result<Self, ConfigError> {
        let bind_address = raw.bind_address.parse().map_err(|e| {
            err(
                "BIND_ADDRESS",
                format!("{e} (expected host:port, e.g. 0.0.0.0:8000)"),
            )
        })?;

        let database_url = secret_or_file("DATABASE_URL", raw.database_url, raw.database_url_file)?
            .ok_or_else(|| err("DATABASE_URL", "is required (or DATABASE_URL_FILE)"))?;
        if !database_url.expose().starts_with("postgres://")
            && !database_url.expose().starts_with("postgresql://")
        {
            return Err(err(
                "DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }
        positive("DB_POOL_MAX", raw.db_pool_max as u64)?;
        if raw.db_pool_min > raw.db_pool_max {
            return Err(err("DB_POOL_MIN", "must not exceed DB_POOL_MAX"));
        }

        let redis_url = secret_or_file("REDIS_URL", raw.redis_url, raw.redis_url_file)?;
        if let Some(url) = &redis_url {
            if !url.expose().starts_with("redis://") && !url.expose().starts_with("rediss://") {
                return Err(err("REDIS_URL", "must start with redis:// or rediss://"));
            }
        }

        let provider = embedding_provider(
            raw.embedding_provider.as_deref(),
            raw.embedding_service_url,
            raw.embedding_model_dir,
            raw.embedding_queue_size,
        )?;
        if !(1..=16_000).contains(&raw.embedding_dim) {
            return Err(err(
                "EMBEDDING_DIM",
                format!("must be between 1 and 16000, got {}", raw.embedding_dim),
            ));
        }
        positive("EMBEDDING_BATCH_SIZE", raw.embedding_batch_size as u64)?;
        positive("EMBEDDING_TIMEOUT_MS", raw.embedding_timeout_ms)?;

        let keys_text = secret_or_file("API_KEYS", raw.api_keys, raw.api_keys_file)?;
        let keys = match (raw.auth_disabled, keys_text) {
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

        positive("MAX_BODY_BYTES", raw.max_body_bytes as u64)?;
        positive(
            "MAX_CONCURRENT_REQUESTS",
            raw.max_concurrent_requests as u64,
        )?;
        positive("REQUEST_TIMEOUT_MS", raw.request_timeout_ms)?;
        positive("PURGE_INTERVAL_SECONDS", raw.purge_interval_seconds)?;
        positive("PURGE_BATCH_SIZE", raw.purge_batch_size.max(0) as u64)?;
        positive(
            "EMBEDDING_WORKER_INTERVAL_MS",
            raw.embedding_worker_interval_ms,
        )?;

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

        Ok(Settings {
            bind_address,
            database: DatabaseSettings {
                url: database_url,
                pool_max: raw.db_pool_max,
                pool_min: raw.db_pool_min,
                acquire_timeout: Duration::from_millis(raw.db_acquire_timeout_ms),
                connect_timeout: Duration::from_secs(raw.db_connect_timeout_seconds),
            },
            redis: RedisSettings {
                url: redis_url,
                optional: raw.redis_optional,
                op_timeout: Duration::from_millis(raw.redis_pool_timeout_ms.max(1)),
                ttl: Duration::from_secs(raw.cache_ttl_seconds.max(1)),
                embedding_ttl: Duration::from_secs(raw.embedding_cache_ttl_seconds.max(1)),
                key_prefix: raw.cache_key_prefix,
                local_entries: raw.local_cache_entries,
            },
            embeddings: EmbeddingSettings {
                provider,
                dim: raw.embedding_dim as usize,
                timeout: Duration::from_millis(raw.embedding_timeout_ms),
                max_retries: raw.embedding_max_retries,
                batch_size: raw.embedding_batch_size,
            },
            auth: AuthSettings { keys },
            http: HttpSettings {
                max_body_bytes: raw.max_body_bytes,
                max_concurrent_requests: raw.max_concurrent_requests,
                request_timeout: Duration::from_millis(raw.request_timeout_ms),
                shutdown_delay: Duration::from_millis(raw.shutdown_delay_ms),
                shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_seconds),
            },
            workers: WorkerSettings {
                embed_interval: Duration::from_millis(raw.embedding_worker_interval_ms),
                purge_interval: Duration::from_secs(raw.purge_interval_seconds),
                purge_batch_size: raw.purge_batch_size,
            },
            log: LogSettings {
                level: raw.log_level,
                format,
            },
        })
    }

    /// The effective configuration as TOML, secrets redacted (`context-api config`).
    pub fn redacted(&self) -> String {
        let unset = || "(unset)".to_string();
        let (provider_name, service_url, model_dir, queue_size) = match &self.embeddings.provider {
            EmbeddingProvider::Tei { url } => ("tei", redact_url(url.as_str()), unset(), unset()),
            EmbeddingProvider::Local {
                model_dir,
                queue_size,
            } => (
                "local",
                unset(),
                model_dir.display().to_string(),
                queue_size.to_string(),
            ),
        };
        let redis = self.redis.url.as_ref().map(|u| redact_url(u.expose()));
        let auth = match &self.auth.keys {
            None => "disabled".to_string(),
            Some(k) => format!("{} key(s): {}", k.len(), k.scopes_summary()),
        };
        let lines = [
            ("bind_address", self.bind_address.to_string()),
            ("database_url", redact_url(self.database.url.expose())),
            ("db_pool_max", self.database.pool_max.to_string()),
            ("db_pool_min", self.database.pool_min.to_string()),
            (
                "db_acquire_timeout_ms",
                self.database.acquire_timeout.as_millis().to_string(),
            ),
            (
                "db_connect_timeout_seconds",
                self.database.connect_timeout.as_secs().to_string(),
            ),
            (
                "redis_url",
                redis.unwrap_or_else(|| "(unset: cache disabled)".into()),
            ),
            ("redis_optional", self.redis.optional.to_string()),
            (
                "redis_pool_timeout_ms",
                self.redis.op_timeout.as_millis().to_string(),
            ),
            ("cache_ttl_seconds", self.redis.ttl.as_secs().to_string()),
            (
                "embedding_cache_ttl_seconds",
                self.redis.embedding_ttl.as_secs().to_string(),
            ),
            ("cache_key_prefix", self.redis.key_prefix.clone()),
            ("local_cache_entries", self.redis.local_entries.to_string()),
            ("embedding_provider", provider_name.into()),
            ("embedding_service_url", service_url),
            ("embedding_model_dir", model_dir),
            ("embedding_queue_size", queue_size),
            ("embedding_dim", self.embeddings.dim.to_string()),
            (
                "embedding_timeout_ms",
                self.embeddings.timeout.as_millis().to_string(),
            ),
            (
                "embedding_max_retries",
                self.embeddings.max_retries.to_string(),
            ),
            (
                "embedding_batch_size",
                self.embeddings.batch_size.to_string(),
            ),
            (
                "embedding_worker_interval_ms",
                self.workers.embed_interval.as_millis().to_string(),
            ),
            ("api_keys", auth),
            ("max_body_bytes", self.http.max_body_bytes.to_string()),
            (
                "max_concurrent_requests",
                self.http.max_concurrent_requests.to_string(),
            ),
            (
                "request_timeout_ms",
                self.http.request_timeout.as_millis().to_string(),
            ),
            (
                "shutdown_delay_ms",
                self.http.shutdown_delay.as_millis().to_string(),
            ),
            (
                "shutdown_timeout_seconds",
                self.http.shutdown_timeout.as_secs().to_string(),
            ),
            (
                "purge_interval_seconds",
                self.workers.purge_interval.as_secs().to_string(),
            ),
            (
                "purge_batch_size",
                self.workers.purge_batch_size.to_string(),
            ),
            ("log_level", self.log.level.clone()),
            (
                "log_format",
                format!("{:?}", self.log.format).to_ascii_lowercase(),
            ),
        ];
        lines
            .iter()
            .map(|(k, v)| format!("{k} = {}\n", toml_string(v)))
            .collect()
    }
}

/// EMBEDDING_PROVIDER, or what the other settings imply: `tei` when
/// EMBEDDING_SERVICE_URL is set, else `local` when EMBEDDING_MODEL_DIR is.
fn embedding_provider(
    explicit: Option<&str>,
    url: Option<String>,
    model_dir: Option<PathBuf>,
    queue_size: usize,
) -> Result<EmbeddingProvider, ConfigError> {
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
        let mut url = reqwest::Url::parse(&url)
            .map_err(|e| err("EMBEDDING_SERVICE_URL", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(
                "EMBEDDING_SERVICE_URL",
                "must be an http:// or https:// URL",
            ));
        }
        // So that joining "embed" keeps a path prefix (TEI behind a proxy).
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        return Ok(EmbeddingProvider::Tei { url });
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

fn toml_string(v: &str) -> String {
    serde_json::to_string(v).expect("strings always serialize")
}

fn positive(var: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(err(var, "must be greater than 0"));
    }
    Ok(())
}

/// `VAR` wins over `VAR_FILE`; a file's trailing newline is not part of the secret.
fn secret_or_file(
    var: &str,
    value: Option<Secret>,
    file: Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(v), _) if !v.expose().is_empty() => Ok(Some(v)),
        (_, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
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

/// Keeps scheme, host, port and path; hides the password.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "[redacted]".into(),
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
        Settings::from_figment(Settings::figment(
            std::env::var_os("CONFIG_FILE").map(PathBuf::from),
        ))
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
            assert!(!format!("{s:?}").contains("hunter2"));
            assert!(!shown.contains("5e884898"));
            Ok(())
        });
    }
}
