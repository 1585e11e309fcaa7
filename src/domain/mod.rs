//! Domain types: parsed once at the edge, valid by construction past it.
//! Nothing here knows about HTTP or SQL.

mod context;
mod search;

pub use context::*;
pub use search::*;

/// Why a piece of client input was refused; becomes a 422 at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
