//! Redis read-through cache. A Redis failure never fails a request: every
//! operation is bounded by a timeout, and errors are logged, counted and
//! treated as a miss.
//!
//! Entries carry the context's generation (see [`Context::generation`]) and a
//! Lua script only replaces an entry with a newer one. Writers store the new
//! state (or a tombstone) after their commit; a reader that loaded an older row
//! before the write cannot put it back. So a read after a write is never stale,
//! across any number of instances sharing one Redis.
//!
//! In front of Redis sits an in-process tier ([`local`]), kept coherent by the
//! invalidation messages that the put script publishes.

mod backend;
mod local;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend as RedisBackend, Conn as RedisConn};
use backend::{Backend, Conn};
use local::{Entry, Local};

use crate::config::RedisSettings;
use crate::domain::{Context, ContextId};

const PUT_IF_NEWER: &str = include_str!("put_if_newer.lua");
const THROTTLE: &str = include_str!("throttle.lua");

/// A deleted context: cached so that a concurrent reader cannot revive it.
const TOMBSTONE: &str = "";
/// Generation of a hard-deleted row: nothing can be newer.
const GONE: i64 = i64::MAX / 2;
/// How long reads skip Redis after one of its operations failed.
const BYPASS: Duration = Duration::from_secs(1);
/// The longest an entry stays in the in-process tier.
const LOCAL_TTL: Duration = Duration::from_secs(60);

pub enum Lookup {
    Hit(Box<Context>),
    /// Deleted: answer 404 without asking the database.
    Gone,
    Miss,
}

/// One request counted against a key's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub allowed: bool,
    /// Requests left in the window after this one.
    pub remaining: u64,
    /// Until the whole quota is available again.
    pub reset: Duration,
    /// Until the next request is allowed (zero when this one was).
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHealth {
    Ok,
    Down,
    Disabled,
}

#[derive(Clone)]
pub struct Cache {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    client: Backend,
    conn: OnceCell<Conn>,
    prefix: String,
    ttl: Duration,
    embedding_ttl: Duration,
    op_timeout: Duration,
    put_script: Script,
    throttle_script: Script,
    /// `None` when LOCAL_CACHE_ENTRIES is 0.
    local: Option<Arc<Local>>,
    /// Where the put script announces newer entries.
    channel: String,
    /// Until when (ms since `started`) reads skip Redis: see [`Inner::bypassing`].
    bypass_until_ms: AtomicU64,
    started: std::time::Instant,
}

#[derive(Debug, thiserror::Error)]
enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("corrupt cache entry: {0}")]
    Corrupt(String),
}

impl Cache {
    /// A cache that never connects (no REDIS_URL).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Does not connect: the first operation does, so a Redis that starts after
    /// us (or comes back) is picked up without a restart.
    pub fn new(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        let Some(url) = &settings.url else {
            return Ok(Self::disabled());
        };
        let client = Backend::open(url.expose(), settings.cluster, settings.op_timeout)?;
        // The in-process tier's read-after-write rests on one subscriber
        // seeing the invalidations and its own barriers in publication
        // order; a cluster does not order messages published on different
        // nodes, so with a cluster every read asks Redis.
        let local_entries = if client.is_cluster() {
            0
        } else {
            settings.local_entries
        };
        Ok(Self {
            inner: Some(Arc::new(Inner {
                client,
                conn: OnceCell::new(),
                prefix: settings.key_prefix.clone(),
                ttl: settings.ttl,
                embedding_ttl: settings.embedding_ttl,
                op_timeout: settings.op_timeout,
                put_script: Script::new(PUT_IF_NEWER),
                throttle_script: Script::new(THROTTLE),
                // Invalidation is the coherence; the TTL only bounds memory held
                // by entries nobody reads.
                local: (local_entries > 0)
                    .then(|| Local::new(local_entries, settings.ttl.min(LOCAL_TTL))),
                channel: format!("{}invalidate", settings.key_prefix),
                bypass_until_ms: AtomicU64::new(0),
                started: std::time::Instant::now(),
            })),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Counts one request against `who`'s limit of `quota` per `window`
    /// (see throttle.lua). `None` when Redis is disabled or failing: a
    /// limiter that cannot count lets requests through (counted in
    /// `rate_limit_errors_total`) rather than failing them.
    #[tracing::instrument(level = "debug", name = "cache.throttle", skip(self, window))]
    pub async fn throttle(&self, who: &str, quota: u32, window: Duration) -> Option<Throttle> {
        let inner = self.inner.as_ref().filter(|i| !i.bypassing())?;
        let key = format!("{}rl:{who}", inner.prefix);
        let window_ms = window.as_millis().max(1) as u64;
        let interval_ms = (window_ms / u64::from(quota.max(1))).max(1);
        let script = &inner.throttle_script;
        let res = inner
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(interval_ms)
                    .arg(window_ms)
                    .invoke_async::<(i64, i64, i64, i64)>(&mut c)
                    .await
            })
            .await;
        match res {
            Ok((allowed, remaining, reset_ms, retry_ms)) => Some(Throttle {
                allowed: allowed == 1,
                remaining: remaining.max(0) as u64,
                reset: Duration::from_millis(reset_ms.max(0) as u64),
                retry_after: Duration::from_millis(retry_ms.max(0) as u64),
            }),
            Err(e) => {
                metrics::counter!("rate_limit_errors_total").increment(1);
                tracing::warn!(error = %e, "rate limiter unavailable; letting the request through");
                None
            }
        }
    }

    /// PING within `timeout` (longer than the per-request bound: a probe
    /// should not flap on one slow answer).
    pub async fn health(&self, timeout: Duration) -> CacheHealth {
        let Some(inner) = &self.inner else {
            return CacheHealth::Disabled;
        };
        let ping = inner
            .run_within(timeout, |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
        match ping {
            Ok(_) => CacheHealth::Ok,
            Err(e) => {
                tracing::debug!(error = %e, "redis health check failed");
                CacheHealth::Down
            }
        }
    }

    #[tracing::instrument(name = "cache.get", level = "debug", skip(self), fields(id = %id.0))]
    pub async fn get_context(&self, id: ContextId) -> Lookup {
        let Some(inner) = &self.inner else {
            return Lookup::Miss;
        };
        let local = inner.local.as_deref();
        // Only an entry that can answer is worth a barrier: a `Newer` marker
        // sends the read to Redis at once.
        let answerable = |l: &&Local| matches!(l.get(id), Some(Entry::Value(..) | Entry::Gone(_)));
        if let Some(l) = local.filter(answerable) {
            // Every write acknowledged before this read is applied past the barrier.
            if l.barrier.pass(inner.op_timeout).await {
                match l.get(id) {
                    Some(Entry::Value(_, ctx)) => {
                        metrics::counter!("cache_hits_total", "kind" => "context_local")
                            .increment(1);
                        return Lookup::Hit(Box::new(Context::clone(&ctx)));
                    }
                    Some(Entry::Gone(_)) => {
                        metrics::counter!("cache_hits_total", "kind" => "context_local")
                            .increment(1);
                        return Lookup::Gone;
                    }
                    Some(Entry::Newer(_)) | None => {}
                }
            }
        }
        if inner.bypassing() {
            return Lookup::Miss;
        }
        let epoch = local.map(Local::epoch);
        let key = inner.context_key(id);
        let got = inner
            .run(|mut c| async move { c.get::<_, Option<String>>(key).await })
            .await
            .and_then(|v| v.map(|s| decode(&s)).transpose());
        match got {
            Ok(Some((generation, Some(ctx)))) => {
                metrics::counter!("cache_hits_total", "kind" => "context").increment(1);
                if let (Some(l), Some(e)) = (local, epoch) {
                    l.offer(e, id, Entry::Value(generation, Arc::new(ctx.clone())));
                }
                Lookup::Hit(Box::new(ctx))
            }
            Ok(Some((generation, None))) => {
                metrics::counter!("cache_hits_total", "kind" => "context").increment(1);
                if let (Some(l), Some(e)) = (local, epoch) {
                    l.offer(e, id, Entry::Gone(generation));
                }
                Lookup::Gone
            }
            Ok(None) => {
                metrics::counter!("cache_misses_total", "kind" => "context").increment(1);
                Lookup::Miss
            }
            Err(e) => {
                failed("get_context", &e);
                Lookup::Miss
            }
        }
    }

    /// Follows the invalidation channel until `stop`, reconnecting as needed.
    /// The in-process tier serves only while this is subscribed.
    pub async fn listen(&self, stop: CancellationToken) {
        let Some(inner) = &self.inner else { return };
        let Some(local) = inner.local.clone() else {
            return;
        };
        let mut delay = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let subscribed = async {
                let client = inner
                    .client
                    .single()
                    .expect("the in-process tier runs on one Redis");
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&inner.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = stop.cancelled() => break,
                r = tokio::time::timeout(inner.op_timeout * 4, subscribed) => r,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    delay = Duration::from_millis(100);
                    local.reset(true);
                    tracing::debug!(channel = %inner.channel, "in-process cache live");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => None,
                            m = messages.next() => m,
                        };
                        let Some(msg) = msg else { break };
                        let readable = msg
                            .get_payload::<String>()
                            .is_ok_and(|payload| local.apply(&payload));
                        if !readable {
                            // Be safe: forget everything.
                            local.reset(true);
                        }
                    }
                    local.reset(false);
                    if !stop.is_cancelled() {
                        tracing::warn!("cache invalidation channel lost: in-process cache off until it is back");
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cache invalidation channel unavailable"),
                Err(_) => tracing::debug!("cache invalidation channel: subscribe timed out"),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Publishes read barriers as readers ask for them, one PUBLISH in flight
    /// at a time, until `stop` (see [`local`]).
    pub async fn publish_barriers(&self, stop: CancellationToken) {
        let Some(inner) = &self.inner else { return };
        let Some(local) = inner.local.clone() else {
            return;
        };
        let barrier = &local.barrier;
        loop {
            let Some(n) = barrier.take_wanted() else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = barrier.wake.notified() => continue,
                }
            };
            let channel = inner.channel.clone();
            let message = format!("barrier {} {n}", barrier.instance);
            let published = inner
                .run(|mut c| async move { c.publish::<_, _, i64>(channel, message).await })
                .await;
            match published {
                // The next barrier may go out at once: readers that arrived while
                // this PUBLISH was in flight wait for that one.
                Ok(_) => {}
                Err(e) => {
                    failed("publish_barrier", &e);
                    // Readers time out and read Redis; do not spin meanwhile.
                    tokio::time::sleep(inner.op_timeout).await;
                }
            }
        }
    }

    /// Whether reads are served in process (the listener is subscribed);
    /// `None` when there is no in-process tier.
    pub fn local_live(&self) -> Option<bool> {
        self.inner
            .as_ref()
            .and_then(|i| i.local.as_ref())
            .map(|l| l.is_live())
    }

    /// A read's fill: [`Self::put_context`], skipped while reads bypass Redis
    /// (it only stores what was read; the generation check makes it optional).
    pub async fn fill_context(&self, ctx: &Context) {
        if self.inner.as_ref().is_some_and(|i| !i.bypassing()) {
            self.put_context(ctx).await;
        }
    }

    /// Stores `ctx` unless the cache already holds a newer generation.
    /// Writers call it after every commit, bypass or not: the new state (or
    /// the attempt, when Redis is gone) is what keeps later reads fresh.
    #[tracing::instrument(name = "cache.put", level = "debug", skip_all, fields(id = %ctx.id.0))]
    pub async fn put_context(&self, ctx: &Context) {
        let Some(inner) = &self.inner else { return };
        let json = serde_json::to_string(ctx).expect("contexts always serialize");
        let mut ttl = inner.ttl;
        if let Some(at) = ctx.expires_at {
            // Never outlive the context itself.
            let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            ttl = ttl.min(left.max(Duration::from_millis(1)));
        }
        let epoch = inner.local.as_deref().map(Local::epoch);
        if inner
            .put(ctx.id, ctx.generation(), &json, ttl, "put_context")
            .await
        {
            if let (Some(l), Some(e)) = (inner.local.as_deref(), epoch) {
                let mut local = ctx.clone();
                local.embedding = None;
                l.offer(e, ctx.id, Entry::Value(ctx.generation(), Arc::new(local)));
            }
        }
    }

    /// Marks a context deleted at `generation` (`None`: removed for good).
    #[tracing::instrument(name = "cache.tombstone", level = "debug", skip(self), fields(id = %id.0))]
    pub async fn put_tombstone(&self, id: ContextId, generation: Option<i64>) {
        let Some(inner) = &self.inner else { return };
        let generation = generation.unwrap_or(GONE);
        let epoch = inner.local.as_deref().map(Local::epoch);
        if inner
            .put(id, generation, TOMBSTONE, inner.ttl, "put_tombstone")
            .await
        {
            if let (Some(l), Some(e)) = (inner.local.as_deref(), epoch) {
                l.offer(e, id, Entry::Gone(generation));
            }
        }
    }

    #[tracing::instrument(name = "cache.get_embedding", level = "debug", skip_all, fields(model))]
    pub async fn get_embedding(&self, model: &str, text: &str) -> Option<Vec<f32>> {
        let inner = self.inner.as_ref().filter(|i| !i.bypassing())?;
        let key = inner.embedding_key(model, text);
        let got = inner
            .run(|mut c| async move { c.get::<_, Option<Vec<u8>>>(key).await })
            .await;
        match got {
            Ok(Some(bytes)) if bytes.len() % 4 == 0 => {
                metrics::counter!("cache_hits_total", "kind" => "embedding").increment(1);
                Some(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                )
            }
            Ok(Some(_)) => {
                failed(
                    "get_embedding",
                    &CacheError::Corrupt("length is not a multiple of 4".into()),
                );
                None
            }
            Ok(None) => {
                metrics::counter!("cache_misses_total", "kind" => "embedding").increment(1);
                None
            }
            Err(e) => {
                failed("get_embedding", &e);
                None
            }
        }
    }

    #[tracing::instrument(name = "cache.put_embedding", level = "debug", skip_all, fields(model))]
    pub async fn put_embedding(&self, model: &str, text: &str, vector: &[f32]) {
        // Content-addressed: skipping one costs a later embedding, never a stale read.
        let Some(inner) = self.inner.as_ref().filter(|i| !i.bypassing()) else {
            return;
        };
        let key = inner.embedding_key(model, text);
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        let ttl = inner.embedding_ttl.as_secs().max(1);
        if let Err(e) = inner
            .run(|mut c| async move { c.set_ex::<_, _, ()>(key, bytes, ttl).await })
            .await
        {
            failed("put_embedding", &e);
        }
    }
}

impl Inner {
    fn context_key(&self, id: ContextId) -> String {
        format!("{}ctx:{}", self.prefix, id.0)
    }

    fn embedding_key(&self, model: &str, text: &str) -> String {
        let mut h = Sha256::new();
        h.update(model.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        format!("{}emb:{}", self.prefix, hex::encode(h.finalize()))
    }

    /// Whether reads skip Redis: for [`BYPASS`] after an operation failed
    /// (Redis down or slow). Reads then go to Postgres at once instead of
    /// each waiting out the Redis timeout; that is always correct. Writes
    /// still try Redis, so that a live Redis never keeps an older entry.
    fn bypassing(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.bypass_until_ms.load(Ordering::Relaxed) {
            metrics::counter!("cache_bypassed_total").increment(1);
            return true;
        }
        false
    }

    fn trip(&self) {
        let until = (self.started.elapsed() + BYPASS).as_millis() as u64;
        self.bypass_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    async fn connection(&self) -> Result<Conn, CacheError> {
        let conn = self
            .conn
            .get_or_try_init(|| self.client.connect(self.op_timeout))
            .await?;
        Ok(conn.clone())
    }

    /// Runs one operation within the cache's timeout (connecting counts too).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(self.op_timeout * 2, op).await
    }

    async fn run_within<T, F, Fut>(&self, timeout: Duration, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.connection().await?;
            Ok::<T, CacheError>(op(conn).await?)
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Timeout(timeout)),
        };
        if matches!(result, Err(CacheError::Redis(_) | CacheError::Timeout(_))) {
            self.trip();
        }
        result
    }

    /// Stores the entry unless Redis holds the same or a newer generation;
    /// true when it was stored (and announced).
    async fn put(
        &self,
        id: ContextId,
        generation: i64,
        body: &str,
        ttl: Duration,
        op: &'static str,
    ) -> bool {
        let key = self.context_key(id);
        let ms = ttl.as_millis().max(1) as u64;
        let body = body.to_owned();
        let script = &self.put_script;
        let channel = &self.channel;
        let res = self
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(generation)
                    .arg(body)
                    .arg(ms)
                    .arg(channel)
                    .arg(format!("{} {generation}", id.0))
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        match res {
            Ok(stored) => stored == 1,
            Err(e) => {
                failed(op, &e);
                false
            }
        }
    }
}

/// `generation|json`, or `generation|` for a tombstone.
fn decode(s: &str) -> Result<(i64, Option<Context>), CacheError> {
    let (generation, body) = s
        .split_once('|')
        .ok_or_else(|| CacheError::Corrupt("no generation prefix".into()))?;
    let generation = generation
        .parse()
        .map_err(|_| CacheError::Corrupt("generation is not a number".into()))?;
    if body == TOMBSTONE {
        return Ok((generation, None));
    }
    serde_json::from_str(body)
        .map(|c| (generation, Some(c)))
        .map_err(|e| CacheError::Corrupt(e.to_string()))
}

fn failed(op: &'static str, e: &CacheError) {
    metrics::counter!("cache_errors_total", "op" => op).increment(1);
    tracing::warn!(op, error = %e, "cache bypassed");
}
