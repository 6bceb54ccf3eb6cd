//! What crosses actor boundaries and the wire in Tether.
//!
//! - [`ids`]: [`DeviceId`] (a device's static public key), [`SessionId`], [`Epoch`],
//!   [`RequestId`], [`ChannelId`].
//! - [`status`]: [`SessionStatus`], the per-peer state machine, with its transition table
//!   and [`SessionStatus::can_transition_to`].
//! - [`messages`]: the typed actix messages that orchestrators send each other through
//!   `Recipient`s wired by the harness. Requests that expect an answer carry a
//!   [`RequestId`] and are answered by a later message, never by awaiting a reply.
//! - [`wire`]: [`WireFrame`] (what a link carries) and [`SessionFrame`] (the plaintext
//!   inside a sealed frame).
//! - [`codec`]: versioned, size-bounded encoding of both, with typed [`DecodeError`]s.
//!   The encoding choice (compact MessagePack behind a version byte) is explained there.
//!
//! - [`journal`]: what DirectConnection records of each channel so that a restart loses
//!   and repeats nothing, and what a store gives back at start.
//! - [`shell`]: the runtime clock and the re-armable timer that every orchestrator's
//!   actix shell shares.
//!
//! The crate does no IO. Decoding is total: any byte string yields a frame or an error.

pub mod codec;
pub mod ids;
pub mod journal;
pub mod messages;
pub mod shell;
pub mod status;
pub mod wire;

pub use codec::{
    decode, decode_session, encode, encode_session, DecodeError, EncodeError, MAX_FRAME_LEN,
    WIRE_VERSION,
};
pub use ids::{ChannelId, DeviceId, Epoch, IdParseError, LinkId, RequestId, SessionId};
pub use journal::{
    ChannelStore, ChannelStoreError, JournalCommitted, JournalEntry, RestoredChannels,
    RestoredInbound, RestoredOutbound,
};
pub use messages::*;
pub use status::{IllegalTransition, SessionStatus};
pub use wire::{
    canonical_endpoints, HandshakeMessage, MigrationAck, MigrationPing, RelayMessage,
    RendezvousMessage, ResetReason, SealedFrame, ServerRefusal, SessionFrame, WireFrame,
    PATH_PROBE_PADDING,
};
