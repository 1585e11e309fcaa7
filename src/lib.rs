//! context-api: per-user LLM memory ("contexts") in PostgreSQL + pgvector,
//! cached in Redis, embedded by a text-embeddings-inference server.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod domain;
pub mod embeddings;
pub mod error;
#[cfg(test)]
mod proptests;
pub mod reembed;
pub mod routes;
pub mod service;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod transfer;
pub mod workers;
