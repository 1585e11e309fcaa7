//! The state every handler shares, cloned per request: one reference count
//! (a deep clone of every handle inside cost about 8% of a cached GET).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::ApiKeys;
use crate::service::Contexts;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub contexts: Contexts,
    pub auth: AuthState,
    pub lifecycle: Lifecycle,
    pub metrics: PrometheusHandle,
    pub redis_optional: bool,
    /// How long an Idempotency-Key's first answer is kept.
    pub idempotency_ttl: std::time::Duration,
    /// REQUEST_TIMEOUT_MS: how long a retry waits for a first answer.
    pub request_timeout: std::time::Duration,
}

/// `None` keys: authentication disabled, every caller is admin.
#[derive(Clone)]
pub struct AuthState {
    pub keys: Option<Arc<ApiKeys>>,
}

impl FromRef<AppState> for AuthState {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

/// Whether shutdown has begun: `/ready` reports it so load balancers stop sending.
#[derive(Clone, Default)]
pub struct Lifecycle {
    draining: Arc<AtomicBool>,
}

impl Lifecycle {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
