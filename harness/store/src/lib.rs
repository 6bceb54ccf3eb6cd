//! Tether's durable stores on disk, in [redb](https://www.redb.org) files (pure Rust,
//! ACID, a stable file format).
//!
//! - [`channels`]: a node's channels ([`RedbChannelStore`]): the messages `send`
//!   accepted and the peer has not acknowledged, and where each receiving channel
//!   stands, so that a node's restart loses and repeats nothing. It implements
//!   [`tether_protocol::ChannelStore`]; DirectConnection decides what is kept (its
//!   journal), the store only keeps it.
//! - [`relay_queue`]: the relay's queue of sealed envelopes for offline devices
//!   ([`RedbRelayQueueStore`]), so that a relay restart loses no envelope before its
//!   TTL. It implements [`tether_rcs::RelayQueueStore`]; the relay queue server core
//!   decides what is kept, the store only keeps it.
//!
//! The crate holds file IO only: no sockets, no actors, no clock.

pub mod channels;
mod file;
pub mod relay_queue;

pub use channels::{ChannelDbError, RedbChannelStore, CHANNELS_FORMAT};
pub use relay_queue::{RedbRelayQueueStore, RelayQueueDbError};
