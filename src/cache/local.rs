//! The in-process tier in front of Redis: decoded contexts by id, so that a
//! cached read costs no network round trip.
//!
//! Coherence across replicas: the put script publishes `<id> <generation>` on
//! the prefix's invalidation channel whenever it stores a newer entry, and every
//! instance listens ([`Cache::listen`](super::Cache::listen)). A message marks
//! the id as "something newer exists", which evicts older values and refuses
//! any older value a concurrent reader tries to put back (entries carry
//! generations, as in Redis). The tier serves only while the listener is
//! subscribed: after a disconnect it is cleared and bypassed until the
//! listener is back, since messages may have been missed. A reader that
//! started before such a reset cannot insert after it (the epoch check).
//!
//! Staleness is bounded by the delivery of one pub/sub message: Redis sends it
//! to every subscriber before the writer's request is answered, so a client
//! that reads from B after its write through A returned sees the write unless
//! B has not yet read a message already in its socket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;

use crate::domain::{Context, ContextId};

#[derive(Clone)]
pub enum Entry {
    Value(i64, Arc<Context>),
    Gone(i64),
    /// An invalidation for this generation arrived: anything older is stale.
    Newer(i64),
}

impl Entry {
    fn generation(&self) -> i64 {
        match self {
            Entry::Value(g, _) | Entry::Gone(g) | Entry::Newer(g) => *g,
        }
    }
}

pub struct Local {
    map: moka::sync::Cache<ContextId, Entry>,
    live: AtomicBool,
    epoch: AtomicU64,
}

impl Local {
    pub fn new(entries: u64, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            map: moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_live(ttl)
                .build(),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        })
    }

    /// The entry, while the invalidation listener is subscribed.
    pub fn get(&self, id: ContextId) -> Option<Entry> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        self.map.get(&id)
    }

    /// Taken before reading Redis; [`Local::offer`] refuses the result if the
    /// tier was reset in between.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps `entry` unless the tier holds the same or a newer generation.
    pub fn offer(&self, epoch: u64, id: ContextId, entry: Entry) {
        if !self.live.load(Ordering::Acquire) || self.epoch() != epoch {
            return;
        }
        let generation = entry.generation();
        self.map
            .entry(id)
            .and_compute_with(|current| match current {
                // A marker of the same generation is what this value resolves.
                Some(c) if matches!(c.value(), Entry::Newer(g) if *g <= generation) => {
                    Op::Put(entry)
                }
                Some(c) if c.value().generation() >= generation => Op::Nop,
                _ => Op::Put(entry),
            });
    }

    /// A newer generation exists elsewhere: drop anything older.
    pub fn invalidate(&self, id: ContextId, generation: i64) {
        self.map
            .entry(id)
            .and_compute_with(|current| match current {
                Some(c) if c.value().generation() >= generation => Op::Nop,
                _ => Op::Put(Entry::Newer(generation)),
            });
    }

    /// Clears the tier and starts (`live`) or stops serving from it.
    pub fn reset(&self, live: bool) {
        self.live.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate_all();
        self.live.store(live, Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// `<uuid> <generation>`, as the put script publishes it.
pub fn parse_message(payload: &str) -> Option<(ContextId, i64)> {
    let (id, generation) = payload.split_once(' ')?;
    Some((
        ContextId(uuid::Uuid::try_parse(id).ok()?),
        generation.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(id: ContextId) -> Arc<Context> {
        let now = chrono::Utc::now();
        Arc::new(Context {
            id,
            user_id: crate::domain::UserId(uuid::Uuid::nil()),
            context_type: "note".into(),
            content: Default::default(),
            metadata: Default::default(),
            expires_at: None,
            embedding_status: crate::domain::EmbeddingStatus::Ready,
            is_active: true,
            version: 1,
            created_at: now,
            updated_at: now,
            embedding: None,
        })
    }

    fn generation_of(local: &Local, id: ContextId) -> Option<i64> {
        local.get(id).map(|e| e.generation())
    }

    #[test]
    fn older_values_never_replace_newer_ones_or_invalidations() {
        let local = Local::new(100, Duration::from_secs(60));
        let id = ContextId::new();
        local.reset(true);
        let e = local.epoch();
        local.offer(e, id, Entry::Value(4, ctx(id)));
        local.offer(e, id, Entry::Value(2, ctx(id)));
        assert_eq!(generation_of(&local, id), Some(4));
        local.invalidate(id, 6);
        local.offer(e, id, Entry::Value(4, ctx(id)));
        assert!(matches!(local.get(id), Some(Entry::Newer(6))));
        local.offer(e, id, Entry::Value(6, ctx(id)));
        assert!(matches!(local.get(id), Some(Entry::Value(6, _))));
        // Our own write's message comes back: the value stays.
        local.invalidate(id, 6);
        assert!(matches!(local.get(id), Some(Entry::Value(6, _))));
    }

    #[test]
    fn a_reset_clears_and_refuses_reads_that_began_before_it() {
        let local = Local::new(100, Duration::from_secs(60));
        let id = ContextId::new();
        let before = local.epoch();
        local.offer(before, id, Entry::Value(2, ctx(id)));
        assert!(local.get(id).is_none(), "not live yet: nothing kept");
        local.reset(true);
        local.offer(before, id, Entry::Value(2, ctx(id)));
        assert!(local.get(id).is_none(), "a read from before the reset");
        local.offer(local.epoch(), id, Entry::Value(2, ctx(id)));
        assert!(local.get(id).is_some());
        local.reset(false);
        assert!(local.get(id).is_none());
    }

    #[test]
    fn messages_parse() {
        let id = ContextId::new();
        assert_eq!(parse_message(&format!("{} 7", id.0)), Some((id, 7)));
        assert_eq!(parse_message("nope"), None);
        assert_eq!(parse_message("x 7"), None);
    }
}
