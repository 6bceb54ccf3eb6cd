//! Typed messages exchanged between the orchestrators, the transport driver and the
//! application, named after the roles in DESIGN.md.
//!
//! Every message between actors is fire-and-forget (`rtype = "()"`): an actor never
//! awaits another actor's answer. A request that expects an answer carries a
//! [`RequestId`], and the answer is a separate message carrying the same id. Only the
//! application's [`SendMessage`] is answered directly (the node awaits it; no actor does).
//!
//! | message | from → to | phase |
//! |---|---|---|
//! | [`ConnectivityChanged`] | transport → Presence | migration 1 |
//! | [`ConnectPeer`] | Presence → DirectConnection | establishment, migration 3 |
//! | [`BlueprintCompiled`] | ConnectionBlueprint → DirectConnection | whenever a peer's candidate order changes |
//! | [`PeerAnnounced`] | DirectConnection → ConnectionBlueprint | the peer said where it is |
//! | [`PeerEndpointsChanged`] | DirectConnection → Presence | the peer said where it is |
//! | [`HandshakeStarted`] | DirectConnection → Presence | establishment |
//! | [`ConnectFailed`] | DirectConnection → Presence | establishment |
//! | [`PathLost`] / [`PeerReset`] | DirectConnection → Presence | runtime, failure |
//! | [`SessionReady`] | DirectConnection → Presence | establishment, migration 4 |
//! | [`SendMigrationPing`] | Presence → DirectConnection | migration 2 |
//! | [`RelayMigrationPing`] / [`CarryOverRelay`] | Presence → DirectConnection | migration 2, when no direct path answered in time |
//! | [`DirectDialFailed`] | DirectConnection → Presence | migration 2 |
//! | [`SendWaiting`] | DirectConnection → Presence | a send while the peer is unreachable |
//! | [`InboundMigrationPing`] | DirectConnection → Presence | migration 3 |
//! | [`PathMeasured`] | DirectConnection → ConnectionBlueprint, Presence | scores, migration timing |
//! | [`RelayEnqueue`] / [`RelayEnqueueResult`] | DirectConnection ↔ Rcs | migration 2, relay fallback |
//! | [`RelayForward`] | DirectConnection → Rcs | relay path |
//! | [`RelayDelivered`] | Rcs → DirectConnection | migration 2, relay fallback |
//! | [`RelayStatus`] | Rcs → DirectConnection, Pms | relay path, rendezvous |
//! | [`ReflexiveAddress`] | Rcs → DirectConnection, Presence | announced endpoints |
//! | [`RelayPoll`] | Presence → Rcs | heartbeat fallback |
//! | [`RendezvousToServer`] / [`RendezvousFromServer`] | Pms ↔ Rcs | rendezvous on the device's one server connection |
//! | [`PublishEndpointHint`] / [`LookupEndpointHint`] | Presence → Pms | migration 2 |
//! | [`PeerEndpointHint`] | Pms → DirectConnection | migration 2 |
//! | [`LivenessReport`] | DirectConnection → Presence | runtime |
//! | [`EvictSession`] | Presence → DirectConnection | failure |
//! | [`StatusChanged`] | Presence → node | all |
//! | [`Shutdown`] | node → every actor | teardown |
//! | [`SendMessage`], [`SendMessages`] (answered directly) / [`MessageDelivered`] | application ↔ DirectConnection | runtime |
//! | [`TransportCommand`] (in an [`OwnedCommand`], through a [`TransportPort`]) / [`TransportEvent`] | DirectConnection, Rcs, Pms ↔ transport driver | all |

use crate::ids::{ChannelId, DeviceId, Epoch, LinkId, RequestId, SessionId};
use crate::status::SessionStatus;
use crate::wire::{RendezvousMessage, ResetReason};
use actix::{Message, Recipient};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A transport path to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PathKind {
    /// Direct QUIC over UDP.
    Direct,
    /// Through the relay server (live forwarding or queue).
    Relay,
}

/// Where a path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// A UDP address of the peer.
    Direct(SocketAddr),
    /// The relay server.
    Relay,
}

/// Direct candidates dialled for one connect or migration. A device dials them in
/// parallel during a migration; 8 covers dual-stack WiFi plus mobile plus stale ones
/// without a storm.
pub const MAX_DIRECT_CANDIDATES: usize = 8;

/// How a candidate address became known; feeds the ordering policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CandidateSource {
    /// Written in the config at pairing.
    Configured,
    /// The address the session last worked on.
    LastKnownGood,
    /// Announced by the peer itself (migration ping or ack, authenticated).
    LearnedFromPeer,
    /// Read from a sealed endpoint hint at the rendezvous server.
    Rendezvous,
    /// The relay path, always last.
    Relay,
}

/// One entry of a blueprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// How it became known.
    pub source: CandidateSource,
}

/// The local network changed: the device's addresses are not what they were.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ConnectivityChanged {
    /// Local addresses before the change.
    pub old: Vec<SocketAddr>,
    /// Local addresses after the change.
    pub new: Vec<SocketAddr>,
}

/// PresenceConnect: reach this peer. DirectConnection tries the peer's newest
/// announcement first, then the latest [`BlueprintCompiled`] order, then the relay.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ConnectPeer {
    /// Answered by [`SessionReady`] or [`ConnectFailed`] with this id.
    pub request: RequestId,
    /// The peer.
    pub peer: DeviceId,
    /// True from ReconnectingInbound: reconnect the transport of the existing session,
    /// never run a handshake.
    pub transport_only: bool,
}

/// A [`ConnectPeer`] found no working path.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ConnectFailed {
    /// The request.
    pub request: RequestId,
    /// The peer.
    pub peer: DeviceId,
    /// Human-readable reason for logs and metrics.
    pub reason: String,
}

/// DirectConnection started a Noise handshake for a connect request (Connecting →
/// Handshaking on the Presence side).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct HandshakeStarted {
    /// The connect request, if the handshake answers one.
    pub request: Option<RequestId>,
    /// The peer.
    pub peer: DeviceId,
}

/// The path a session was bound to went away without a signal from the peer (e.g. the
/// accepting side of a QUIC connection moved and QUIC could not migrate it).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PathLost {
    /// The peer.
    pub peer: DeviceId,
    /// Why, for logs.
    pub reason: String,
}

/// The peer dropped our session (it sent a Reset frame). Presence evicts and recovers.
/// A peer that restarted or evicted us shows up instead as a [`SessionReady`] after a
/// handshake with a newer epoch, which Presence treats the same way.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PeerReset {
    /// The peer.
    pub peer: DeviceId,
    /// Why: [`ResetReason::Closed`] is a goodbye (the peer stopped on purpose and comes
    /// back with a handshake of its own), anything else a session the peer dropped.
    pub reason: ResetReason,
}

/// A session is usable on a path (after a handshake, a transport-only reconnect, or a
/// completed migration).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct SessionReady {
    /// The connect request this answers, if any.
    pub request: Option<RequestId>,
    /// The peer.
    pub peer: DeviceId,
    /// The session.
    pub session: SessionId,
    /// Its epoch (unchanged by a migration).
    pub epoch: Epoch,
    /// The path now bound.
    pub path: PathKind,
    /// The peer's address on that path, for a direct path.
    pub remote: Option<SocketAddr>,
    /// Whether a handshake produced this (false for migrations and transport reconnects).
    pub after_handshake: bool,
    /// True when that handshake was a rekey of the live session (time or volume limit,
    /// either side initiating): only the keys and the epoch changed. The path, the
    /// status and any migration in progress are untouched; it is neither a restart nor
    /// an eviction by the peer (those are `after_handshake` without `rekey`).
    pub rekey: bool,
}

/// Presence tells DirectConnection whether a rekey of this peer's session may run now:
/// allowed while the session is Ready, refused from the moment it leaves Ready (a
/// migration, a degraded path, an eviction). DirectConnection starts a due rekey only
/// while allowed, answers the peer's rekey only while allowed, and gives up its own
/// rekey in flight when refused. Sent on every change of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct AllowRekey {
    /// The peer.
    pub peer: DeviceId,
    /// Whether a rekey may run.
    pub allowed: bool,
}

/// Migration phase 2: announce our new endpoints to the peer on every link the session
/// keeps and every candidate (as for [`ConnectPeer`]).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct SendMigrationPing {
    /// The peer.
    pub peer: DeviceId,
    /// Our endpoints after the change.
    pub new_endpoints: Vec<SocketAddr>,
}

/// Migration phase 2, when no direct path answered in time: the relay queue carries the
/// current migration ping too. It is pushed at once to a connected peer and kept for one
/// that is offline; the peer dedupes copies by counter. Nothing is sent when the ping
/// was acknowledged meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RelayMigrationPing {
    /// The peer.
    pub peer: DeviceId,
}

/// Migration phase 2, a round trip after the relay copy: the queued messages follow the
/// migration ping through the relay rather than wait for its acknowledgement, unless
/// the ping was acknowledged or a direct path was heard from since the move.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct CarryOverRelay {
    /// The peer.
    pub peer: DeviceId,
}

/// A dial to the peer's direct candidates failed on every one of them: a migration ping
/// waiting for a direct answer should go to the relay at once.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct DirectDialFailed {
    /// The peer.
    pub peer: DeviceId,
}

/// A message was accepted for a peer the session cannot reach now (no usable path):
/// a connect retry that is backing off should run at once, since the application is
/// waiting. Sent once until the session carries data again.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct SendWaiting {
    /// The peer.
    pub peer: DeviceId,
}

/// Migration phase 3: an authenticated, non-replayed migration ping arrived.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct InboundMigrationPing {
    /// The peer that moved.
    pub peer: DeviceId,
    /// The session.
    pub session: SessionId,
    /// The session's epoch (unchanged).
    pub epoch: Epoch,
    /// The ping's counter.
    pub counter: u64,
    /// The path the ping came over.
    pub via: PathKind,
}

/// A peer's candidates in ConnectionBlueprint's order, sent when the order changes
/// (a new address, a measurement, an address going stale), so DirectConnection dials
/// without asking first.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct BlueprintCompiled {
    /// The peer.
    pub peer: DeviceId,
    /// Best first; the relay last.
    pub candidates: Vec<Candidate>,
}

/// The peer said where it is: an authenticated migration ping or ack, or a sealed
/// rendezvous hint. DirectConnection keeps the newest announcement (it dials it first);
/// ConnectionBlueprint remembers and ranks the addresses.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PeerAnnounced {
    /// The peer.
    pub peer: DeviceId,
    /// Its endpoints, in the order it gave them (never empty).
    pub endpoints: Vec<SocketAddr>,
    /// [`CandidateSource::LearnedFromPeer`] or [`CandidateSource::Rendezvous`].
    pub source: CandidateSource,
}

/// The peer's announced endpoints changed: Presence decides whether to try a direct
/// path now. It carries no addresses: DirectConnection holds them.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PeerEndpointsChanged {
    /// The peer.
    pub peer: DeviceId,
    /// The change came from a rendezvous hint (not from the session itself).
    pub hinted: bool,
}

/// A measurement of a path, feeding the blueprint's scores and Presence's migration
/// timing.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PathMeasured {
    /// The peer.
    pub peer: DeviceId,
    /// The path measured.
    pub endpoint: Endpoint,
    /// Round-trip time in milliseconds, when it answered.
    pub rtt_ms: Option<u64>,
    /// DirectConnection's smoothed round-trip time of the session after this sample
    /// (the one estimate; receivers keep it rather than smooth again).
    pub srtt_ms: Option<u64>,
}

/// Store a sealed envelope for a device at the relay queue.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RelayEnqueue {
    /// Answered by [`RelayEnqueueResult`].
    pub request: RequestId,
    /// Recipient.
    pub to: DeviceId,
    /// An encoded sealed frame.
    pub envelope: Vec<u8>,
}

/// Whether the relay accepted an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RelayEnqueueResult {
    /// The request.
    pub request: RequestId,
    /// `Err` holds the server's or the client's reason.
    pub result: Result<(), String>,
}

/// Forward a sealed frame live through the relay to a connected device (best effort:
/// the session layer retransmits what is not acknowledged).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RelayForward {
    /// Recipient.
    pub to: DeviceId,
    /// An encoded sealed frame.
    pub frame: Vec<u8>,
}

/// Whether this device's authenticated connection to the relay is up.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RelayStatus {
    /// True once authenticated, false when the link is lost.
    pub connected: bool,
}

/// A rendezvous request for the server, sent on the device's one connection to it,
/// which the relay client owns.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RendezvousToServer(pub RendezvousMessage);

/// A rendezvous answer the server sent on the device's connection.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RendezvousFromServer(pub RendezvousMessage);

/// The address the relay sees this device at (its reflexive address), when the relay
/// client learns it or it changes; None when the connection is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ReflexiveAddress {
    /// The address, if known.
    pub addr: Option<SocketAddr>,
}

/// An envelope arrived through the relay (pushed, fetched or live-forwarded).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RelayDelivered {
    /// Sender device.
    pub from: DeviceId,
    /// The encoded sealed frame.
    pub envelope: Vec<u8>,
}

/// Heartbeat fallback: fetch whatever the relay queue holds for this device.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RelayPoll {
    /// Correlation id for logs.
    pub request: RequestId,
}

/// Publish our current endpoints, sealed, at the rendezvous server for this peer.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PublishEndpointHint {
    /// Correlation id for logs.
    pub request: RequestId,
    /// The peer the hint is for (selects the relationship key).
    pub peer: DeviceId,
    /// Our endpoints.
    pub endpoints: Vec<SocketAddr>,
}

/// Look up the peer's latest endpoint hint.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct LookupEndpointHint {
    /// Answered by [`PeerEndpointHint`].
    pub request: RequestId,
    /// The peer.
    pub peer: DeviceId,
}

/// The peer's endpoints, read from an authentic, unexpired hint.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PeerEndpointHint {
    /// The lookup this answers, if any.
    pub request: Option<RequestId>,
    /// The peer.
    pub peer: DeviceId,
    /// Its endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// When the peer sealed the hint (its clock, unix ms).
    pub issued_at_ms: u64,
}

/// Liveness of a peer's bound path, from heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct LivenessReport {
    /// The peer.
    pub peer: DeviceId,
    /// Whether the last heartbeat was answered in time.
    pub alive: bool,
    /// Smoothed RTT in milliseconds, when known.
    pub rtt_ms: Option<u64>,
}

/// Why a session was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictionReason {
    /// No path worked within the migration window.
    MigrationWindowExpired,
    /// The peer reset the session.
    PeerReset,
    /// The peer said goodbye (it stopped on purpose).
    PeerClosed,
    /// Heartbeats failed past the liveness limit.
    LivenessLost,
    /// Local policy.
    Policy,
}

/// Presence tells DirectConnection to drop a session's keys and path (queued messages
/// are kept for the recovered session).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct EvictSession {
    /// The peer.
    pub peer: DeviceId,
    /// Why.
    pub reason: EvictionReason,
}

/// A peer's session status changed (to the node's event stream).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct StatusChanged {
    /// The peer.
    pub peer: DeviceId,
    /// Previous status, if the peer was known.
    pub from: Option<SessionStatus>,
    /// New status.
    pub to: SessionStatus,
}

/// The application asks to send bytes to a peer. Answered at once with the sequence
/// number assigned (the message is queued for exactly-once delivery) or why it was
/// refused, with the payload handed back (a sender waiting for room sends it again).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<u64, SendRefused>")]
pub struct SendMessage {
    /// The peer.
    pub peer: DeviceId,
    /// The channel.
    pub channel: ChannelId,
    /// Application bytes.
    pub payload: Vec<u8>,
}

/// A refused [`SendMessage`]: why, and its payload back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRefused {
    /// Why it was refused.
    pub error: SendError,
    /// The payload, untouched.
    pub payload: Vec<u8>,
}

/// Several messages for one peer and channel in one request, in order: each is taken
/// as a [`SendMessage`] would be, until one is refused. One request instead of one per
/// message, so a burst of small messages costs one hop to DirectConnection and goes
/// out together. Answered at once (the node awaits it; no actor does).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "SendBatchAnswer")]
pub struct SendMessages {
    /// The peer.
    pub peer: DeviceId,
    /// The channel.
    pub channel: ChannelId,
    /// Application bytes, one message each, in the order they are to be delivered.
    pub payloads: Vec<Vec<u8>>,
}

/// The answer to [`SendMessages`]: the messages accepted, in order, and what stopped
/// the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendBatchAnswer {
    /// Sequence numbers of the accepted messages (a prefix of the batch), in order.
    pub accepted: Vec<u64>,
    /// Why the first message after them was refused, with its payload and every later
    /// one handed back untouched, in order; None when all were accepted.
    pub refused: Option<(SendError, Vec<Vec<u8>>)>,
}

/// Why a send was refused. Nothing is lost silently: a refused message was never queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SendError {
    /// The peer is not paired with this device.
    #[error("unknown peer")]
    UnknownPeer,
    /// The outbound queue for the peer is full: it holds its most messages, or its
    /// most bytes. It has room again once the peer acknowledges (`Node::send` waits
    /// for that).
    #[error("outbound queue full (at most {messages} messages and {bytes} bytes)")]
    QueueFull {
        /// The queue's capacity in messages.
        messages: usize,
        /// The queue's capacity in bytes.
        bytes: usize,
    },
    /// The payload is larger than one message may be.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The session was closed by the application.
    #[error("session closed")]
    Closed,
    /// The message was queued but could not be made durable (the store failed): it is
    /// delivered if this node keeps running, and lost if it stops first.
    #[error("message {seq} queued but not durable: {reason}")]
    NotDurable {
        /// The sequence number it was given.
        seq: u64,
        /// What the store reported.
        reason: String,
    },
}

/// A message reached the application, exactly once and in order per channel.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct MessageDelivered {
    /// Sender.
    pub peer: DeviceId,
    /// Channel.
    pub channel: ChannelId,
    /// Sequence number within the channel.
    pub seq: u64,
    /// Application bytes.
    pub payload: Vec<u8>,
}

/// The application took a delivered message (it left the node's event queue): the
/// receive window and budget it held are free again, so the sender may send more.
/// Credit follows what the application consumes, not what arrived, so a slow reader
/// holds back its sender instead of growing the node's memory.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct MessageConsumed {
    /// Sender of the message.
    pub peer: DeviceId,
    /// Its channel.
    pub channel: ChannelId,
    /// Its length in bytes.
    pub len: usize,
}

/// The peer acknowledged every message of a channel below `below`: it has them (and,
/// with a store, durably), so they will never be sent again.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct MessagesAcknowledged {
    /// The peer.
    pub peer: DeviceId,
    /// The channel.
    pub channel: ChannelId,
    /// Every sequence number below this is acknowledged.
    pub below: u64,
}

/// A peer's outbound queue refused a message as full and has room again: a `send`
/// waiting for capacity may try again.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct SendCapacity {
    /// The peer.
    pub peer: DeviceId,
}

/// What DirectConnection, Rcs or Pms asks of the transport driver, through its
/// [`TransportPort`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportCommand {
    /// Dial these addresses in parallel (staggered); first success wins.
    Dial {
        /// Answered by [`TransportEvent::LinkUp`] or [`TransportEvent::DialFailed`].
        request: RequestId,
        /// Addresses, best first.
        addrs: Vec<SocketAddr>,
    },
    /// Send an encoded frame on a link.
    Transmit {
        /// The link.
        link: LinkId,
        /// The encoded [`crate::WireFrame`].
        frame: Vec<u8>,
    },
    /// Close a link.
    Close {
        /// The link.
        link: LinkId,
    },
    /// Close a link with a farewell: the encoded [`crate::WireFrame`] travels in the
    /// transport's close itself, and the peer's transport hands it over as the link's
    /// last [`TransportEvent::FrameReceived`].
    Farewell {
        /// The link.
        link: LinkId,
        /// The encoded frame.
        frame: Vec<u8>,
    },
}

/// Which orchestrator a transport link or dial belongs to: the transport driver sends
/// the link's [`TransportEvent`]s to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkOwner {
    /// DirectConnection: peer links (and every accepted link: only peers dial a device).
    DirectConnection,
    /// Rcs: the device's link to the relay and rendezvous server.
    Rcs,
}

/// A [`TransportCommand`] tagged with the orchestrator that sent it, as the transport
/// driver receives it.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct OwnedCommand {
    /// Who sent it.
    pub owner: LinkOwner,
    /// What it asks.
    pub command: TransportCommand,
}

/// Where an orchestrator sends its [`TransportCommand`]s: the transport driver's
/// recipient plus the orchestrator's [`LinkOwner`], attached to each command on the
/// way. A plain value, not an actor, so tagging adds no mailbox hop between an
/// orchestrator and the wire, and orchestrators need not know the driver's type.
#[derive(Clone)]
pub struct TransportPort {
    owner: LinkOwner,
    driver: Recipient<OwnedCommand>,
}

impl TransportPort {
    /// A port that tags commands with `owner` and hands them to `driver`.
    pub fn new(owner: LinkOwner, driver: Recipient<OwnedCommand>) -> Self {
        Self { owner, driver }
    }

    /// Sends `command` to the driver, fire-and-forget (dropped if the driver stopped).
    pub fn do_send(&self, command: TransportCommand) {
        self.driver.do_send(OwnedCommand {
            owner: self.owner,
            command,
        });
    }
}

impl std::fmt::Debug for TransportPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportPort")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Bytes of a link's channel binding: crypto's `CHANNEL_BINDING_LEN`.
pub const CHANNEL_BINDING_LEN: usize = 32;

/// The transport driver's report, to the relay client, of a server
/// link's channel binding: 32 bytes both ends of the QUIC connection derive from its
/// TLS exporter, unique to that connection (not secret from either end). The server
/// authentication proofs in both directions cover it, so a proof made on one
/// connection is worthless on another (a man in the middle holds two). Sent just
/// before the link's [`TransportEvent::LinkUp`]; the client accepts it in either order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct LinkBound {
    /// The link.
    pub link: LinkId,
    /// Its channel binding.
    pub binding: [u8; CHANNEL_BINDING_LEN],
}

/// What the transport driver reports to the owner of a link or dial.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum TransportEvent {
    /// A link is up (dialled by us, or accepted).
    LinkUp {
        /// The dial it answers; None for an accepted link.
        request: Option<RequestId>,
        /// The new link.
        link: LinkId,
        /// Direct or relay.
        path: PathKind,
        /// The remote address, for a direct link.
        remote: Option<SocketAddr>,
    },
    /// No candidate of a dial answered.
    DialFailed {
        /// The dial.
        request: RequestId,
        /// Why, for logs.
        reason: String,
    },
    /// A link closed or was lost (e.g. the accepting side of QUIC moved).
    LinkDown {
        /// The link.
        link: LinkId,
        /// Why, for logs.
        reason: String,
    },
    /// The remote address of a link changed (QUIC migration of the peer).
    RemoteChanged {
        /// The link.
        link: LinkId,
        /// The new remote address.
        remote: SocketAddr,
    },
    /// A frame arrived on a link.
    FrameReceived {
        /// The link.
        link: LinkId,
        /// The encoded [`crate::WireFrame`].
        frame: Vec<u8>,
    },
    /// QUIC's byte counts of a link, taken now and then as frames arrive on it: what
    /// path choice knows of the path's losses. Sent to DirectConnection for every busy
    /// link, the device's link to the relay included.
    PathSampled {
        /// The link.
        link: LinkId,
        /// Direct, or the device's link to the relay.
        path: PathKind,
        /// UDP payload bytes sent since the link came up.
        sent_bytes: u64,
        /// Bytes of the packets QUIC declared lost since then.
        lost_bytes: u64,
    },
}

/// Stops an actor: the node is shutting down (or a test crashes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct Shutdown;
