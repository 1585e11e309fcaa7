//! Integration tests: one binary, one file per feature. Each test gets its own
//! database, Redis key prefix and TEI stand-in (see helpers.rs).

mod helpers;
use tei_stub as tei;

mod auth;
mod batch;
mod cache;
mod contexts;
mod docs;
mod embeddings;
mod health;
mod idempotency;
mod input;
mod keys;
mod lifecycle;
mod limits;
#[cfg(feature = "local-embeddings")]
mod local;
mod modes;
mod plan;
mod reembed;
mod replicas;
mod search;
mod secrets;
mod storage;
mod transfer;
