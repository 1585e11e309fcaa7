//! Background jobs. Each runs until its token is cancelled, and only stops
//! between batches, so a claimed batch is either stored or rolled back.

mod embed;
mod purge;

pub use embed::embed_pending;
pub use purge::purge_expired;
