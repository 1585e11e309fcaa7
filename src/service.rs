//! The context service: the operations the API offers, over the store, the
//! cache and the embedder. Knows nothing of HTTP; callers pass the caller's
//! [`Scope`] and get a [`ServiceError`] that the edge maps to a status.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::auth::Scope;
use crate::cache::{Cache, Lookup};
use crate::domain::{
    embedding_text, Context, ContextId, ContextPatch, Cursor, Embedding, Fusion, IfMatch,
    ListQuery, NewContext, Ranking, SearchFilter, SearchInput, SearchMode, TopK,
};
use crate::embeddings::{same_model, EmbedError, Embedder};
use crate::store::{
    is_dimension_error, EmbeddingChange, EmbeddingState, Replacement, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("context not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("If-Match does not name the current version of this context")]
    PreconditionFailed,
    #[error("a live context of this user already has this key; PUT /contexts replaces it")]
    KeyTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embedding(EmbedError),
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Contexts {
    store: Store,
    cache: Cache,
    /// The configured model.
    embedder: Embedder,
    /// The model the stored vectors were made with, after a change of model
    /// (EMBEDDING_PREVIOUS_*): it serves until a rebuild switches.
    previous: Option<Embedder>,
    /// What the database last said of its vectors (refreshed every second).
    vectors: Arc<std::sync::RwLock<EmbeddingState>>,
    /// Wakes the embedding worker when a write leaves a row pending.
    pending: Arc<Notify>,
    /// How long a write waits for an embedding before storing the row pending.
    inline_embed_timeout: Duration,
    /// Batches' embeddings still running past the inline wait (see [`Handover`]).
    handovers: Arc<Semaphore>,
    /// The claims those hold on their rows, given back at shutdown.
    held: Arc<std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>>,
    /// How hybrid search fuses its two rankings.
    fusion: Fusion,
}

/// A batch's embedding call that outlived the inline wait: it keeps running,
/// and its vectors are stored when it ends, under a claim on the rows (taken
/// once they are inserted), so that the worker does not embed them a second
/// time. Without this, a slow model's work for a 100-item batch was thrown
/// away at the deadline and done again by the worker.
struct Handover {
    /// The items it embeds (indexes into the batch), in order.
    items: Vec<usize>,
    call: tokio::task::JoinHandle<Result<Vec<Vec<f32>>, EmbedError>>,
    embedder: Embedder,
    _permit: OwnedSemaphorePermit,
}

/// At most this many batches' embeddings run on past their request; past
/// that a timed-out call is dropped and the worker embeds its rows.
const HANDOVERS: usize = 4;

/// How long a hand-over holds its rows: past it (the process died, or the
/// call is stuck), the worker takes them.
const HANDOVER_LEASE: Duration = Duration::from_secs(120);

/// Which embedder makes the vectors of each column, as the database last
/// said: `current` those of `contexts.embedding` (searches, writes, the
/// worker), `next` those of the rebuild under way, if this replica has its
/// model. `current` is `None` when no configured model made the stored
/// vectors: vector search then answers 503 and writes are stored pending.
struct Roles {
    current: Option<Embedder>,
    next: Option<Embedder>,
    /// The state they were chosen by.
    seen: EmbeddingState,
}

/// A vector of the rebuild's model, and that model's id.
type NextVector = Option<(Vec<f32>, String)>;

/// A page of a listing.
pub struct Page {
    pub items: Vec<Context>,
    pub next: Option<Cursor>,
}

impl Contexts {
    pub fn new(
        store: Store,
        cache: Cache,
        embedder: Embedder,
        inline_embed_timeout: Duration,
        fusion: Fusion,
    ) -> Self {
        let vectors = EmbeddingState {
            active_dim: store.dim(),
            active_model: None,
            target: None,
            rows_done: 0,
            rows_total: 0,
        };
        Self {
            store,
            cache,
            embedder,
            previous: None,
            vectors: Arc::new(std::sync::RwLock::new(vectors)),
            pending: Arc::new(Notify::new()),
            inline_embed_timeout,
            handovers: Arc::new(Semaphore::new(HANDOVERS)),
            held: Arc::default(),
            fusion,
        }
    }

    /// For readiness, metrics and shutdown.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// For readiness and the cache's background tasks.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// For readiness and the embedder watch.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// The previous model's embedder (EMBEDDING_PREVIOUS_*), if configured.
    pub fn with_previous(mut self, previous: Option<Embedder>) -> Self {
        self.previous = previous;
        self
    }

    pub fn previous(&self) -> Option<&Embedder> {
        self.previous.as_ref()
    }

    /// Reads what the database says of its vectors (dimension, model,
    /// rebuild and its progress) and publishes it as gauges.
    pub async fn refresh_vectors(&self) -> Result<EmbeddingState, ServiceError> {
        let state = self.store.embedding_state().await?;
        self.publish_vectors(state.clone());
        Ok(state)
    }

    /// Takes `state` (just read from the database) as what it says of its
    /// vectors, and publishes it as gauges.
    pub fn publish_vectors(&self, state: EmbeddingState) {
        metrics::gauge!("reembed_in_progress").set(if state.target.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("reembed_rows_done").set(state.rows_done as f64);
        metrics::gauge!("reembed_rows_total").set(state.rows_total as f64);
        *self.vectors.write().expect("vectors lock") = state;
    }

    /// What the database last said of its vectors.
    pub fn vectors(&self) -> EmbeddingState {
        self.vectors.read().expect("vectors lock").clone()
    }

    fn roles(&self) -> Roles {
        let state = self.vectors();
        self.roles_for(state)
    }

    fn roles_for(&self, state: EmbeddingState) -> Roles {
        let configured = &self.embedder;
        // A rebuild to the configured model has switched: the previous one is done.
        let switched = state
            .active_model
            .as_deref()
            .zip(configured.last_model())
            .is_some_and(|(a, b)| same_model(a, &b));
        let (current, current_is_configured) = match &self.previous {
            Some(p) if p.dim() == state.active_dim && !switched => (Some(p.clone()), false),
            _ if configured.dim() == state.active_dim => (Some(configured.clone()), true),
            _ => (None, false),
        };
        let next = state
            .target
            .clone()
            .filter(|t| t.dim == configured.dim() && !current_is_configured)
            .map(|_| configured.clone());
        Roles {
            current,
            next,
            seen: state,
        }
    }

    /// After a statement met vectors of another dimension (a rebuild has
    /// just switched): reads the state again. True when it is no longer
    /// `seen`, the one the statement was built by.
    async fn switched(&self, e: &StoreError, seen: &EmbeddingState) -> bool {
        if !is_dimension_error(e) {
            return false;
        }
        match self.refresh_vectors().await {
            Ok(now) => now.active_dim != seen.active_dim,
            Err(_) => false,
        }
    }

    /// The configured vector dimension.
    pub fn dim(&self) -> usize {
        self.store.dim()
    }

    /// Resolves when a write leaves a row pending (or [`Contexts::wake_worker`]).
    pub async fn pending_written(&self) {
        self.pending.notified().await
    }

    /// Wakes the embedding worker, e.g. when the embedding service is back.
    pub fn wake_worker(&self) {
        self.pending.notify_one();
    }

    /// Embeds up to `batch` rows stored pending. The rows are claimed for
    /// `lease` in a short statement, embedded with no transaction open, and
    /// stored only if this claim still holds them, so two workers never embed
    /// the same row and a slow embedding service holds no connection or lock.
    /// On failure the claim is released at once. Returns the rows claimed.
    #[tracing::instrument(name = "worker.fill_pending", level = "debug", skip(self))]
    pub async fn fill_pending(&self, batch: usize, lease: Duration) -> Result<usize, ServiceError> {
        let Some(embedder) = self.roles().current else {
            return Ok(0);
        };
        let claim = self.store.claim_pending(batch as i64, lease).await?;
        if claim.rows.is_empty() {
            return Ok(0);
        }
        let texts: Vec<String> = claim.rows.iter().map(|r| r.text.clone()).collect();
        let vectors = match embedder.embed(&texts).await {
            Ok(v) => v,
            Err(e) => {
                if let Err(release) = self.store.release_claim(claim.token).await {
                    tracing::warn!(error = %release, "could not release a claim: it lapses with its lease");
                }
                return Err(ServiceError::Embedding(e));
            }
        };
        let filled = claim.rows.iter().map(|r| r.id).zip(vectors).collect();
        let count = fill(&self.store, &self.cache, &embedder, claim.token, filled).await?;
        tracing::info!(count, "filled pending embeddings");
        Ok(claim.rows.len())
    }

    /// Deletes up to `batch` expired rows and tombstones them in the cache.
    /// `None` when another replica holds the purge lock.
    #[tracing::instrument(name = "worker.purge", level = "debug", skip(self))]
    pub async fn purge_expired(&self, batch: i64) -> Result<Option<usize>, ServiceError> {
        let Some(ids) = self.store.purge_expired_batch(batch).await? else {
            return Ok(None);
        };
        for id in &ids {
            self.cache.put_tombstone(*id, None).await;
        }
        Ok(Some(ids.len()))
    }

    pub async fn create(&self, scope: Scope, new: NewContext) -> Result<Context, ServiceError> {
        self.write(scope, new, false)
            .await?
            .map(|(ctx, _)| ctx)
            .ok_or(ServiceError::KeyTaken)
    }

    /// Creates the context of `new.key`, or replaces the one that has it.
    /// The context, and whether it was created.
    pub async fn put(
        &self,
        scope: Scope,
        new: NewContext,
    ) -> Result<(Context, bool), ServiceError> {
        self.write(scope, new, true)
            .await?
            .ok_or(ServiceError::KeyTaken)
    }

    /// A create, or with `replace` a put; `None` when the key is taken and
    /// not to be replaced.
    async fn write(
        &self,
        scope: Scope,
        mut new: NewContext,
        replace: bool,
    ) -> Result<Option<(Context, bool)>, ServiceError> {
        if !scope.allows(new.user_id) {
            return Err(ServiceError::Forbidden(
                "this key may only write its own user's contexts",
            ));
        }
        let given = new.embedding.is_some();
        let mut retried = false;
        loop {
            let roles = self.roles();
            // The current and the rebuild's vectors are made at the same time.
            let current = async {
                match &roles.current {
                    Some(current) if !given => self.try_embed(current, &new.text).await,
                    _ => (None, None),
                }
            };
            let (current, next) = tokio::join!(current, self.embed_next(&roles, &new.text));
            if !given {
                (new.embedding, new.embedding_model) = current;
            }
            let stored = match self.store.insert(&new, replace).await {
                Err(e) if !retried && !given && self.switched(&e, &roles.seen).await => {
                    retried = true;
                    continue;
                }
                other => other?,
            };
            let Some(ctx) = stored else {
                return Ok(None);
            };
            self.write_next(&[(&ctx, next)]).await;
            self.after_write(&ctx).await;
            // A replaced context keeps its id; a created one has the new id.
            let created = ctx.id == new.id;
            return Ok(Some((ctx, created)));
        }
    }

    /// The rebuild's vector of `text`, when a rebuild is under way and this
    /// replica has its model (`None` otherwise, or when it cannot be made
    /// now: the rebuild then embeds the row itself).
    fn embed_next<'a>(
        &'a self,
        roles: &Roles,
        text: &'a str,
    ) -> impl std::future::Future<Output = NextVector> + 'a {
        let next = roles.next.clone();
        async move {
            let next = next?;
            let (v, model) = self.try_embed(&next, text).await;
            Some((v?.into_vec(), model?))
        }
    }

    /// Stores the rebuild's vectors of rows just written (best effort).
    /// Every vector of one call comes from the one next model.
    async fn write_next(&self, rows: &[(&Context, NextVector)]) {
        let Some(model) = rows
            .iter()
            .find_map(|(_, n)| n.as_ref().map(|(_, m)| m.clone()))
        else {
            return;
        };
        let (ids, vectors): (Vec<(ContextId, i32)>, Vec<Vec<f32>>) = rows
            .iter()
            .filter_map(|(ctx, n)| n.as_ref().map(|(v, _)| ((ctx.id, ctx.version), v.clone())))
            .unzip();
        if let Err(e) = self.store.write_next(&ids, vectors, &model).await {
            tracing::warn!(error = %e, "rebuild vectors not stored: the rebuild makes them");
        }
    }

    /// Creates many contexts: one embedding call in the provider's batches for
    /// the items without a vector, one insert, the cache filled concurrently.
    /// An item the caller may not write fails alone; a store failure fails all.
    pub async fn create_many(
        &self,
        scope: Scope,
        items: Vec<NewContext>,
    ) -> Result<Vec<Result<Context, ServiceError>>, ServiceError> {
        let mut results: Vec<Option<Result<Context, ServiceError>>> =
            Vec::with_capacity(items.len());
        let mut allowed = Vec::with_capacity(items.len());
        for new in items {
            if scope.allows(new.user_id) {
                results.push(None);
                allowed.push(new);
            } else {
                results.push(Some(Err(ServiceError::Forbidden(
                    "this key may only write its own user's contexts",
                ))));
            }
        }
        let roles = self.roles();
        let handover = self
            .embed_missing(roles.current.as_ref(), &mut allowed)
            .await;
        let stored = if allowed.is_empty() {
            Vec::new()
        } else {
            self.store.insert_many(&allowed).await?
        };
        if let Some(h) = handover {
            self.hand_over(h, &stored).await;
        }
        if let Some(next) = &roles.next {
            let texts: Vec<String> = allowed.iter().map(|n| n.text.clone()).collect();
            let vectors = self
                .bounded_embeddings(next, texts.len(), next.embed(&texts))
                .await;
            if let Some(model) = next.model().await.ok().filter(|_| !stored.is_empty()) {
                let rows: Vec<_> = stored
                    .iter()
                    .zip(vectors)
                    .filter_map(|(c, v)| {
                        Some((c.as_ref()?, v.map(|v| (v.into_vec(), model.clone()))))
                    })
                    .collect();
                self.write_next(&rows).await;
            }
        }
        let written = stored.iter().flatten();
        futures_util::future::join_all(written.clone().map(|c| self.cache.put_context(c))).await;
        if written
            .clone()
            .any(|c| c.embedding_status == crate::domain::EmbeddingStatus::Pending)
        {
            self.pending.notify_one();
        }
        let mut stored = stored.into_iter();
        Ok(results
            .into_iter()
            .map(|r| match r {
                Some(failed) => failed,
                None => stored
                    .next()
                    .ok_or(ServiceError::NotFound)?
                    .ok_or(ServiceError::KeyTaken),
            })
            .collect())
    }

    /// Fills in the vectors of items that have none, in the provider's batch
    /// sizes. On failure or timeout the items stay pending; after a timeout
    /// the call goes on, and the [`Handover`] returned stores its vectors.
    async fn embed_missing(
        &self,
        embedder: Option<&Embedder>,
        items: &mut [NewContext],
    ) -> Option<Handover> {
        let missing: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].embedding.is_none())
            .collect();
        let embedder = embedder.filter(|_| !missing.is_empty())?;
        let texts: Vec<String> = missing.iter().map(|&i| items[i].text.clone()).collect();
        let n = texts.len();
        let vectors = match self.handovers.clone().try_acquire_owned() {
            Ok(permit) => {
                let e = embedder.clone();
                let mut call = tokio::spawn(async move { e.embed(&texts).await });
                match tokio::time::timeout(self.inline_embed_timeout, &mut call).await {
                    Ok(joined) => {
                        let result = joined.unwrap_or_else(|e| {
                            Err(EmbedError::Unavailable(format!("embedding task: {e}")))
                        });
                        checked_vectors(embedder, n, result)
                    }
                    Err(_) => {
                        tracing::warn!(
                            items = n,
                            "embedding outlived the inline wait: stored pending, filled when it ends"
                        );
                        return Some(Handover {
                            items: missing,
                            call,
                            embedder: embedder.clone(),
                            _permit: permit,
                        });
                    }
                }
            }
            // Enough calls run on already: this one ends with its request.
            Err(_) => {
                self.bounded_embeddings(embedder, n, embedder.embed(&texts))
                    .await
            }
        };
        let model = embedder.model().await.ok();
        for (i, v) in missing.into_iter().zip(vectors) {
            if v.is_some() {
                items[i].embedding_model.clone_from(&model);
            }
            items[i].embedding = v;
        }
        None
    }

    /// Claims the rows of a [`Handover`] that were inserted pending, and
    /// stores their vectors when its call ends (or gives the rows back to the
    /// worker at once if it fails). A row changed meanwhile loses the claim
    /// and keeps its newer state.
    async fn hand_over(&self, h: Handover, stored: &[Option<Context>]) {
        // Each row stored pending, by its vector's place in the call's answer.
        let place: std::collections::HashMap<ContextId, usize> = h
            .items
            .iter()
            .enumerate()
            .filter_map(|(k, &i)| {
                let c = stored.get(i)?.as_ref()?;
                (c.embedding_status == crate::domain::EmbeddingStatus::Pending).then_some((c.id, k))
            })
            .collect();
        if place.is_empty() {
            return;
        }
        let ids: Vec<ContextId> = place.keys().copied().collect();
        let (token, claimed) = match self.store.claim_rows(&ids, HANDOVER_LEASE).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim a batch's rows: the worker embeds them");
                return;
            }
        };
        let (store, cache, held) = (self.store.clone(), self.cache.clone(), self.held.clone());
        held.lock().expect("held claims").insert(token);
        tokio::spawn(async move {
            let stored = async {
                let result = h.call.await.unwrap_or_else(|e| {
                    Err(EmbedError::Unavailable(format!("embedding task: {e}")))
                });
                let vectors = checked_vectors(&h.embedder, h.items.len(), result);
                let filled: Vec<(ContextId, Vec<f32>)> = claimed
                    .iter()
                    .filter_map(|id| {
                        let v = vectors.get(*place.get(id)?)?.clone()?;
                        Some((*id, v.into_vec()))
                    })
                    .collect();
                if filled.len() < claimed.len() {
                    // Some or all vectors are missing: the worker makes them now.
                    if let Err(e) = store.release_claim(token).await {
                        tracing::warn!(error = %e, "could not release a claim: it lapses with its lease");
                    }
                    if filled.is_empty() {
                        return;
                    }
                }
                match fill(&store, &cache, &h.embedder, token, filled).await {
                    Ok(count) => tracing::info!(count, "stored a batch's late embeddings"),
                    Err(e) => {
                        tracing::warn!(error = %e, "a batch's late embeddings were not stored: the worker makes them")
                    }
                }
            };
            stored.await;
            held.lock().expect("held claims").remove(&token);
        });
    }

    /// Gives back the claims of batches' embeddings still running, at
    /// shutdown: their rows go to the next worker at once, not after the
    /// claims' lease (a call that ends meanwhile finds its rows released
    /// and stores nothing).
    pub async fn release_handovers(&self) {
        let tokens: Vec<uuid::Uuid> = self.held.lock().expect("held claims").drain().collect();
        for token in tokens {
            if let Err(e) = self.store.release_claim(token).await {
                tracing::warn!(error = %e, "could not release a claim: it lapses with its lease");
            }
        }
    }

    pub async fn get(
        &self,
        scope: Scope,
        id: ContextId,
        with_embedding: bool,
    ) -> Result<Context, ServiceError> {
        let now = chrono::Utc::now();
        if !with_embedding {
            match self.cache.get_context(id).await {
                Lookup::Hit(ctx) if ctx.is_visible(now) && scope.allows(ctx.user_id) => {
                    return Ok(*ctx)
                }
                Lookup::Hit(_) | Lookup::Gone => return Err(ServiceError::NotFound),
                Lookup::Miss => {}
            }
        }
        let ctx = self
            .store
            .get(id, with_embedding)
            .await?
            .ok_or(ServiceError::NotFound)?;
        if !with_embedding {
            self.cache.fill_context(&ctx).await;
        }
        // Out of scope looks exactly like absent: a user key learns nothing of others' ids.
        if !scope.allows(ctx.user_id) {
            return Err(ServiceError::NotFound);
        }
        Ok(ctx)
    }

    pub async fn list(&self, scope: Scope, mut q: ListQuery) -> Result<Page, ServiceError> {
        q.user_id = scope.confine(q.user_id).map_err(|_| {
            ServiceError::Forbidden("this key may only list its own user's contexts")
        })?;
        let items = self.store.list(&q).await?;
        let next = if items.len() as i64 == q.limit.get() {
            items.last().map(|c| Cursor {
                created_at: c.created_at,
                id: c.id,
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Applies `patch` to the stored context. `if_match` is the version the
    /// client last saw; without it, a concurrent change is retried on top of.
    pub async fn update(
        &self,
        scope: Scope,
        id: ContextId,
        patch: ContextPatch,
        if_match: Option<IfMatch>,
    ) -> Result<Context, ServiceError> {
        // Optimistic: read, compute, write if the version is unchanged. No row
        // lock is held while the embedding service is called. A lost race means
        // another write succeeded, so every round makes progress: without
        // If-Match the patch is applied on top of whatever won, however many
        // writers there are (the request timeout bounds the wait); with
        // If-Match the next round answers 412.
        let mut retried = false;
        loop {
            let roles = self.roles();
            let current = self
                .store
                .get_current(id)
                .await?
                .ok_or(ServiceError::NotFound)?;
            let ctx = &current.context;
            if !scope.allows(ctx.user_id) {
                return Err(ServiceError::NotFound);
            }
            if if_match.as_ref().is_some_and(|m| !m.matches(ctx.version)) {
                return Err(ServiceError::PreconditionFailed);
            }
            if patch.is_empty() {
                return Ok(current.context);
            }
            let content = patch.content.as_ref().unwrap_or(&ctx.content);
            let text = match (&patch.text, &patch.content) {
                (Some(t), _) => t.clone(),
                // New content without new text: derive it as on create.
                (None, Some(c)) => embedding_text(None, c),
                (None, None) => current.text.clone(),
            };
            let text_changed = text != current.text;
            // The current and the rebuild's vectors are made at the same time.
            let embedding = async {
                match (&patch.embedding, &roles.current) {
                    (Some(e), _) => EmbeddingChange::Set(e.as_slice().to_vec(), None),
                    (None, Some(embedder)) if text_changed => {
                        match self.try_embed(embedder, &text).await {
                            (Some(e), model) => EmbeddingChange::Set(e.into_vec(), model),
                            (None, _) => EmbeddingChange::Pending,
                        }
                    }
                    (None, None) if text_changed => EmbeddingChange::Pending,
                    (None, _) => EmbeddingChange::Keep,
                }
            };
            let next = async {
                match text_changed {
                    true => self.embed_next(&roles, &text).await,
                    false => None,
                }
            };
            let (embedding, next) = tokio::join!(embedding, next);
            let replacement = Replacement {
                context_type: patch
                    .context_type
                    .as_ref()
                    .map_or(ctx.context_type.as_str(), |t| t.as_str()),
                content,
                metadata: patch.metadata.as_ref().unwrap_or(&ctx.metadata),
                expires_at: patch.expires_at.unwrap_or(ctx.expires_at),
                text: &text,
                embedding,
            };
            let written = match self.store.update(id, ctx.version, replacement).await {
                Err(e)
                    if !retried
                        && patch.embedding.is_none()
                        && self.switched(&e, &roles.seen).await =>
                {
                    retried = true;
                    continue;
                }
                other => other?,
            };
            if let Some(updated) = written {
                self.write_next(&[(&updated, next)]).await;
                self.after_write(&updated).await;
                return Ok(updated);
            }
        }
    }

    pub async fn delete(
        &self,
        scope: Scope,
        id: ContextId,
        hard: bool,
        if_match: Option<IfMatch>,
    ) -> Result<(), ServiceError> {
        // Scope and If-Match are checked against the visible row first, so
        // that an out-of-scope id answers 404 and a stale version 412. The
        // row is then deleted only at the version seen (which If-Match named).
        let visible = self.store.get(id, false).await?;
        let version = match &visible {
            Some(c) if !scope.allows(c.user_id) => return Err(ServiceError::NotFound),
            Some(c) if if_match.as_ref().is_some_and(|m| !m.matches(c.version)) => {
                return Err(ServiceError::PreconditionFailed)
            }
            None => return Err(ServiceError::NotFound),
            Some(c) => Some(c.version),
        };
        let if_match = if_match.is_some();
        if hard {
            if !self.store.hard_delete(id, version).await? {
                return Err(self.lost_race(id, if_match).await);
            }
            self.cache.put_tombstone(id, None).await;
        } else {
            let Some(deleted) = self.store.soft_delete(id, version).await? else {
                return Err(self.lost_race(id, if_match).await);
            };
            self.cache
                .put_tombstone(id, Some(deleted.generation()))
                .await;
        }
        Ok(())
    }

    /// A conditional delete found the row changed: 412 if it still exists
    /// and the caller named a version, else 404.
    async fn lost_race(&self, id: ContextId, if_match: bool) -> ServiceError {
        match (if_match, self.store.get(id, false).await) {
            (true, Ok(Some(_))) => ServiceError::PreconditionFailed,
            _ => ServiceError::NotFound,
        }
    }

    /// The k best visible contexts for `input`, with the mode that ran: a
    /// search allowed to fall back to text reports `text` when it did.
    pub async fn search(
        &self,
        scope: Scope,
        input: SearchInput,
        mut filter: SearchFilter,
        k: TopK,
    ) -> Result<(SearchMode, Vec<(Context, f32)>), ServiceError> {
        filter.user_id = scope.confine(filter.user_id).map_err(|_| {
            ServiceError::Forbidden("this key may only search its own user's contexts")
        })?;
        let retry = input.clone();
        let seen = self.vectors();
        let ranking = self.ranking(input).await?;
        let hits = match self.store.search(&ranking, &filter, k).await {
            // A rebuild switched between the query's embedding and its
            // statement: embed it again with the model of the new vectors.
            Err(e) if self.switched(&e, &seen).await => {
                let ranking = self.ranking(retry).await?;
                let hits = self.store.search(&ranking, &filter, k).await?;
                return Ok((ranking.mode(), hits));
            }
            other => other?,
        };
        Ok((ranking.mode(), hits))
    }

    /// What the store ranks by for `input`: its query embedded where needed.
    async fn ranking(&self, input: SearchInput) -> Result<Ranking, ServiceError> {
        Ok(match input {
            SearchInput::Vector(v) => Ranking::Vector(v.into_vec()),
            SearchInput::Text(text) => Ranking::Text(text),
            SearchInput::Embed {
                text,
                fallback_to_text,
            } => match self
                .query_vector_or_fallback(&text, fallback_to_text)
                .await?
            {
                Some(vector) => Ranking::Vector(vector),
                None => Ranking::Text(text),
            },
            SearchInput::Hybrid {
                text,
                vector,
                fallback_to_text,
            } => {
                let vector = match vector {
                    Some(v) => Some(v.into_vec()),
                    None => {
                        self.query_vector_or_fallback(&text, fallback_to_text)
                            .await?
                    }
                };
                match vector {
                    Some(vector) => Ranking::Hybrid {
                        vector,
                        text,
                        fusion: self.fusion,
                    },
                    None => Ranking::Text(text),
                }
            }
        })
    }

    /// The query's vector; `None` when it cannot be embedded and the caller
    /// asked to fall back to a text search then.
    async fn query_vector_or_fallback(
        &self,
        text: &str,
        fallback_to_text: bool,
    ) -> Result<Option<Vec<f32>>, ServiceError> {
        match self.query_vector(text).await {
            Ok(v) => Ok(Some(v)),
            Err(ServiceError::Embedding(e)) if fallback_to_text => {
                tracing::warn!(error = %e, "query not embedded: searching by text instead");
                metrics::counter!("search_text_fallbacks_total").increment(1);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Query embeddings are cached by model and text.
    async fn query_vector(&self, text: &str) -> Result<Vec<f32>, ServiceError> {
        let embedder = self.roles().current.ok_or_else(|| {
            ServiceError::Embedding(EmbedError::Unavailable(
                "no configured model made the stored vectors: set EMBEDDING_PREVIOUS_SERVICE_URL \
                 to the model they were made with, or run `context-api reembed`"
                    .into(),
            ))
        })?;
        let model = embedder.model().await.map_err(ServiceError::Embedding)?;
        if let Some(v) = self.cache.get_embedding(&model, text).await {
            if v.len() == self.store.dim() {
                return Ok(v);
            }
        }
        let v = embedder
            .embed_one(text)
            .await
            .map_err(ServiceError::Embedding)?;
        self.cache.put_embedding(&model, text, &v).await;
        Ok(v)
    }

    /// An embedding for a write, with the id of the model that made it, or
    /// `None` (the row is then stored pending and the worker fills it later):
    /// a write never fails because TEI is down.
    async fn try_embed(
        &self,
        embedder: &Embedder,
        text: &str,
    ) -> (Option<Embedding>, Option<String>) {
        let one = async { embedder.embed_one(text).await.map(|v| vec![v]) };
        let v = self
            .bounded_embeddings(embedder, 1, one)
            .await
            .pop()
            .flatten();
        // Known once it has answered, which an embedding implies.
        let model = match v {
            Some(_) => embedder.model().await.ok(),
            None => None,
        };
        (v, model)
    }

    /// The `n` vectors `call` gives within the inline timeout, each checked
    /// against the dimension; `None` for each that is missing or unusable.
    async fn bounded_embeddings(
        &self,
        embedder: &Embedder,
        n: usize,
        call: impl std::future::Future<Output = Result<Vec<Vec<f32>>, EmbedError>>,
    ) -> Vec<Option<Embedding>> {
        match tokio::time::timeout(self.inline_embed_timeout, call).await {
            Ok(result) => checked_vectors(embedder, n, result),
            Err(_) => {
                tracing::warn!(items = n, "embedding timed out: stored pending");
                vec![None; n]
            }
        }
    }

    async fn after_write(&self, ctx: &Context) {
        self.cache.put_context(ctx).await;
        if ctx.embedding_status == crate::domain::EmbeddingStatus::Pending {
            self.pending.notify_one();
        }
    }
}

/// Stores the vectors of the rows `token` claims (see
/// [`Store::fill_embeddings`]), recorded as `embedder`'s, and puts the
/// updated contexts in the cache. Returns how many were stored.
async fn fill(
    store: &Store,
    cache: &Cache,
    embedder: &Embedder,
    token: uuid::Uuid,
    filled: Vec<(ContextId, Vec<f32>)>,
) -> Result<usize, StoreError> {
    let model = embedder.model().await.ok();
    let updated = store
        .fill_embeddings(token, filled, model.as_deref())
        .await?;
    for ctx in &updated {
        cache.put_context(ctx).await;
    }
    metrics::counter!("embeddings_filled_total").increment(updated.len() as u64);
    Ok(updated.len())
}

/// The `n` vectors of an embedding call, each checked against the dimension;
/// `None` for each that is missing or unusable (all when the call failed).
fn checked_vectors(
    embedder: &Embedder,
    n: usize,
    result: Result<Vec<Vec<f32>>, EmbedError>,
) -> Vec<Option<Embedding>> {
    match result {
        Ok(vectors) => vectors
            .into_iter()
            .map(|v| {
                Embedding::parse("embedding", v, embedder.dim())
                    .map_err(|e| {
                        tracing::warn!(error = %e, "embedding service returned an unusable vector")
                    })
                    .ok()
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, items = n, "embedding deferred: stored pending");
            vec![None; n]
        }
    }
}
