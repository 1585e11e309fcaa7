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
//! Read-after-write across instances is strict, through a read barrier: a
//! read served in process first waits until this instance has seen its own
//! `barrier` message come back on the channel, published after the read
//! arrived. A write acknowledged by another instance published its
//! invalidation before that, and one subscriber receives the channel's
//! messages in order, so the invalidation has been applied by then. One
//! barrier round trip serves every read that arrived before it was sent, so
//! under load a barrier costs far less than a Redis GET per read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;
use tokio::sync::{watch, Notify};

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
    pub barrier: Barrier,
}

/// Read barriers: numbered messages this instance publishes on the channel
/// and waits to see come back.
pub struct Barrier {
    /// Names this instance's barriers on the shared channel.
    pub instance: String,
    /// The number the next published barrier will carry.
    next: AtomicU64,
    /// The highest number some reader waits for.
    wanted: AtomicU64,
    /// The highest number seen back on the channel.
    seen: watch::Sender<u64>,
    /// Wakes the publisher.
    pub wake: Notify,
}

impl Barrier {
    fn new() -> Self {
        Self {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            next: AtomicU64::new(1),
            wanted: AtomicU64::new(0),
            seen: watch::channel(0).0,
            wake: Notify::new(),
        }
    }

    /// Waits for a barrier published after this call to come back; false on
    /// timeout (the caller then reads Redis instead).
    pub async fn pass(&self, timeout: Duration) -> bool {
        // Any barrier numbered `target` or higher is published after this load.
        let target = self.next.load(Ordering::SeqCst);
        self.wanted.fetch_max(target, Ordering::SeqCst);
        self.wake.notify_one();
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(timeout, seen.wait_for(|s| *s >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The publisher's next number, once a reader wants it.
    pub fn take_wanted(&self) -> Option<u64> {
        let next = self.next.load(Ordering::SeqCst);
        (self.wanted.load(Ordering::SeqCst) >= next)
            .then(|| self.next.fetch_add(1, Ordering::SeqCst))
    }

    fn saw(&self, n: u64) {
        self.seen.send_if_modified(|s| {
            let newer = n > *s;
            if newer {
                *s = n;
            }
            newer
        });
    }
}

/// What arrives on the channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// `<uuid> <generation>`: the put script stored a newer entry.
    Invalidate(ContextId, i64),
    /// `barrier <instance> <n>`.
    Barrier(&'a str, u64),
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
            barrier: Barrier::new(),
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

    /// Applies one message from the channel; false when it is unreadable.
    pub fn apply(&self, payload: &str) -> bool {
        match parse_message(payload) {
            Some(Message::Invalidate(id, generation)) => self.invalidate(id, generation),
            Some(Message::Barrier(instance, n)) if instance == self.barrier.instance => {
                self.barrier.saw(n)
            }
            Some(Message::Barrier(..)) => {}
            None => return false,
        }
        true
    }
}

pub fn parse_message(payload: &str) -> Option<Message<'_>> {
    if let Some(rest) = payload.strip_prefix("barrier ") {
        let (instance, n) = rest.split_once(' ')?;
        return Some(Message::Barrier(instance, n.parse().ok()?));
    }
    let (id, generation) = payload.split_once(' ')?;
    Some(Message::Invalidate(
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
            key: None,
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
            embedding_model: None,
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
        assert_eq!(
            parse_message(&format!("{} 7", id.0)),
            Some(Message::Invalidate(id, 7))
        );
        assert_eq!(
            parse_message("barrier abc 12"),
            Some(Message::Barrier("abc", 12))
        );
        assert_eq!(parse_message("nope"), None);
        assert_eq!(parse_message("x 7"), None);
        assert_eq!(parse_message("barrier abc x"), None);
    }

    #[tokio::test]
    async fn a_reader_passes_only_a_barrier_published_after_it_arrived() {
        let local = Local::new(10, Duration::from_secs(60));
        let b = &local.barrier;
        assert_eq!(b.take_wanted(), None, "nobody waits");
        // Barrier 1 is taken (about to be published) before the reader comes.
        b.wanted.store(1, Ordering::SeqCst);
        assert_eq!(b.take_wanted(), Some(1));
        let reader = b.pass(Duration::from_millis(300));
        tokio::pin!(reader);
        tokio::select! {
            _ = &mut reader => panic!("passed with no barrier back"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        local.apply(&format!("barrier {} 1", b.instance));
        tokio::select! {
            _ = &mut reader => panic!("passed on a barrier sent before it arrived"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        assert_eq!(b.take_wanted(), Some(2));
        local.apply("barrier someone-else 2");
        local.apply(&format!("barrier {} 2", b.instance));
        assert!(reader.await, "passed once its barrier came back");
    }
}
