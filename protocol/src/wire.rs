//! The wire frames: everything that crosses a link between two devices, or between a
//! device and the relay/rendezvous server.
//!
//! Two layers:
//! - [`WireFrame`] is what a link carries: Noise handshake messages, sealed session
//!   frames, and the relay and rendezvous protocols. Servers see only this layer.
//! - [`SessionFrame`] is the plaintext inside a [`SealedFrame`], encrypted with the
//!   session keys. The same sealed frame may travel any path (direct QUIC, relay forward,
//!   relay queue), be duplicated during a migration and arrive in any order; the session
//!   layer dedupes by nonce and sequence number.
//!
//! Both are encoded by [`crate::codec`].

use crate::ids::{ChannelId, DeviceId, Epoch, SessionId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

// The sizes below are cryptographic choices owned by `tether-crypto`, whose constants
// give the reasons. This crate does not depend on crypto, so its fixed-size wire
// fields repeat the sizes; `tether-harness`, which links both crates, asserts at
// compile time that each pair agrees.

/// Bytes of the PeerSecret tag on a migration ping: crypto's `MIGRATION_TAG_LEN`.
pub const MIGRATION_TAG_LEN: usize = 16;

/// Bytes of a path challenge: crypto's `PATH_CHALLENGE_LEN`.
pub const PATH_CHALLENGE_LEN: usize = 16;

/// Bytes of a rendezvous id: the BLAKE2s output of crypto's `RendezvousId`.
pub const RENDEZVOUS_ID_LEN: usize = 32;

/// Everything a link carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireFrame {
    /// Noise message 1, initiator to responder (PeerSessionEstablishment only).
    HandshakeInit(HandshakeMessage),
    /// Noise message 2, responder to initiator.
    HandshakeResponse(HandshakeMessage),
    /// A session frame sealed under the session keys.
    Sealed(SealedFrame),
    /// Device ↔ relay server (queue and live forwarding).
    Relay(RelayMessage),
    /// Device ↔ rendezvous server (sealed endpoint hints).
    Rendezvous(RendezvousMessage),
}

/// One Noise handshake message for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeMessage {
    /// The session this handshake establishes or recovers.
    pub session: SessionId,
    /// The Noise message bytes.
    #[serde(with = "serde_bytes")]
    pub noise: Vec<u8>,
}

/// A session frame sealed with an explicit nonce, so it can be opened out of order and
/// on any path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFrame {
    /// The session the frame belongs to. Routing only: it selects the keys, so a frame
    /// with a wrong session (or key id) simply fails to open.
    pub session: SessionId,
    /// Which key generation sealed it (derived from the handshake hash).
    pub key_id: u32,
    /// The explicit 64-bit AEAD nonce, checked against the replay window.
    pub nonce: u64,
    /// AEAD ciphertext of an encoded [`SessionFrame`].
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// The plaintext of a sealed frame (frame kinds of 002, plus migration and path
/// validation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionFrame {
    /// Application bytes on a channel, with the channel's sequence number.
    Data {
        /// The logical channel.
        channel: ChannelId,
        /// Sequence number within the channel, from 0, without gaps.
        seq: u64,
        /// Application bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Cumulative acknowledgement and flow-control credit for a channel.
    Ack {
        /// The logical channel.
        channel: ChannelId,
        /// Every sequence number below this one was received (the next one expected).
        next_expected: u64,
        /// The sender may send sequence numbers below `next_expected + credit`.
        credit: u64,
    },
    /// Liveness probe; answered by a Pong with the same id.
    Ping {
        /// Echoed in the Pong to measure RTT.
        id: u64,
    },
    /// Answer to a Ping.
    Pong {
        /// The Ping's id.
        id: u64,
    },
    /// "I moved": sent by the migrating device on every candidate path.
    MigrationPing(MigrationPing),
    /// "I saw your move": the receiving device's answer to a migration ping.
    MigrationAck(MigrationAck),
    /// Proof-of-address challenge to a new path before the session moves there.
    PathChallenge {
        /// Random bytes to echo.
        #[serde(with = "serde_bytes")]
        data: [u8; PATH_CHALLENGE_LEN],
    },
    /// Echo of a path challenge, sent on the path being validated.
    PathResponse {
        /// The challenge's bytes.
        #[serde(with = "serde_bytes")]
        data: [u8; PATH_CHALLENGE_LEN],
    },
    /// Sent on a path the channel just moved to (or after a new epoch): where the
    /// sender stands, so the receiver acknowledges exactly what it has, and so a side
    /// that lost its state (a restarted device) resynchronises instead of waiting or
    /// dropping.
    Migrate {
        /// The logical channel.
        channel: ChannelId,
        /// Random per channel and sender run: a new value means the sender restarted
        /// and numbers the channel afresh.
        incarnation: u64,
        /// The next sequence number the sender will assign.
        next_seq: u64,
        /// The oldest sequence number the sender still holds unacknowledged (everything
        /// below it was acknowledged by the receiver, possibly before a restart).
        first_unacked: u64,
    },
    /// Filler the receiver discards. The moving side sends it after a migration ping
    /// on a migrated QUIC connection: the peer may answer an unvalidated address with
    /// only three times the bytes it received there, and its own path challenge is
    /// 1200 bytes, so without filler the peer's answer waits a round trip.
    Padding {
        /// Ignored bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The sender dropped the session (or a channel); the receiver stops using it.
    Reset {
        /// Why.
        reason: ResetReason,
    },
    /// Sent on a direct link after a Pong when the link's remote address is not the one
    /// last told there: the address the sender sees the receiver's packets come from,
    /// after any NAT on the way. Next to the address the relay sees, it tells the
    /// receiver how its NAT maps. A node that does not know this kind drops it.
    ObservedAddress {
        /// The receiver's address as the sender sees it.
        addr: SocketAddr,
    },
    /// Where the sender can be reached directly: its interface addresses and the
    /// reflexive address the relay sees it at. Sent over the relay while the session
    /// runs there, and answered in kind once, so both sides dial each other's
    /// addresses at about the same moment: a NAT lets the peer's packets in once its
    /// own device has sent towards the peer.
    Candidates {
        /// At most `MAX_DIRECT_CANDIDATES` addresses.
        endpoints: Vec<SocketAddr>,
    },
}

/// The migrating device's authenticated announcement of its new endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPing {
    /// The epoch whose PeerSecret keys the tag (it never changes in a migration).
    pub epoch: Epoch,
    /// Strictly increasing per migration signal; replays are rejected.
    pub counter: u64,
    /// The migrating device's current endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// MAC over (session, epoch, counter, endpoints) keyed by the PeerSecret.
    #[serde(with = "serde_bytes")]
    pub tag: [u8; MIGRATION_TAG_LEN],
}

/// Acknowledgement of a migration ping, carrying the acknowledger's own endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationAck {
    /// Epoch of the acknowledged ping.
    pub epoch: Epoch,
    /// Counter of the acknowledged ping.
    pub counter: u64,
    /// The acknowledging device's current endpoints.
    pub endpoints: Vec<SocketAddr>,
}

/// Why a session was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetReason {
    /// The sender stopped on purpose (a goodbye): the receiver shows the session
    /// closed, retries nothing, and takes the sender back when it returns.
    Closed,
    /// The migration window expired without a working path.
    MigrationWindowExpired,
    /// The receiver holds no keys for this session.
    UnknownSession,
    /// Local policy (e.g. the peer was unpaired).
    Policy,
}

/// Device ↔ relay server. The server only ever sees routing ids and opaque envelopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayMessage {
    /// Server → device on connect: prove ownership of your static key over this (and
    /// over the connection's channel binding).
    Challenge {
        /// Fresh random bytes from the server.
        #[serde(with = "serde_bytes")]
        nonce: [u8; 32],
        /// The public key the server claims (unproven until `Welcome`): a device pinned
        /// to another key stops here, without sending its proof, and can say why.
        #[serde(with = "serde_bytes")]
        server_key: [u8; 32],
    },
    /// Device → server: the proof for the challenge.
    Authenticate {
        /// The device claiming to connect.
        device: DeviceId,
        /// Proof bytes (see the relay server docs for their construction).
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
        /// A connection for rendezvous requests only (pairing, while the device's node
        /// may hold its connection): it does not replace the device's connection and
        /// receives no pushes or forwarded frames.
        #[serde(default)]
        rendezvous_only: bool,
        /// The rendezvous ids of the device's pairs, sealed for the server (see the
        /// crypto crate's `server_auth`; empty: none): the server joins the device to
        /// them as it authenticates, and introduces it to a connected partner at once.
        /// Left out when empty, so such a proof is byte for byte what a server that
        /// predates the field reads.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
        rendezvous_ids: Vec<u8>,
    },
    /// Server → device: authenticated; queued envelopes follow as pushes. The device
    /// trusts nothing from the server before this proof verifies.
    Welcome {
        /// The server's proof of its static key, over the challenge nonce, the
        /// connection's channel binding and the device's key (see the crypto crate's
        /// `server_auth`).
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
        /// The address the server sees the connection come from: the device's
        /// reflexive address (its public address if it is behind a NAT).
        #[serde(default)]
        observed: Option<SocketAddr>,
    },
    /// Server → device: the connection now comes from another address (the device
    /// moved, or its NAT rebound the mapping): its new reflexive address.
    Observed {
        /// The address the server sees.
        addr: SocketAddr,
    },
    /// Device → server: store this envelope for `to` until fetched or expired.
    Enqueue {
        /// Recipient device.
        to: DeviceId,
        /// Sender's correlation number for the answer.
        request: u64,
        /// How long the server should keep it, in milliseconds.
        ttl_ms: u64,
        /// The sealed frame (opaque to the server).
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// Server → device: the envelope is stored.
    Enqueued {
        /// The Enqueue's correlation number.
        request: u64,
    },
    /// Device → server: send me what is queued for me (fallback to pushes).
    Fetch {
        /// At most this many envelopes.
        max: u32,
    },
    /// Server → device: one queued envelope.
    Push {
        /// Sender device.
        from: DeviceId,
        /// Server-assigned id, to acknowledge.
        envelope_id: u64,
        /// The sealed frame.
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// Device → server: these envelopes arrived; delete them.
    Delivered {
        /// Server-assigned ids.
        envelope_ids: Vec<u64>,
    },
    /// Device → server: forward this frame live to a connected device.
    Forward {
        /// Recipient device.
        to: DeviceId,
        /// The sealed frame.
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// Server → device: a live-forwarded frame.
    Forwarded {
        /// Sender device.
        from: DeviceId,
        /// The sealed frame.
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// Server → device: a request was refused.
    Refused {
        /// The refused request's correlation number, when it had one.
        request: Option<u64>,
        /// Why.
        reason: ServerRefusal,
    },
    /// Device → server, right after the device's network changed: ignored by the
    /// server. Its size matters: QUIC lets a server send at most three times what it
    /// received on a path it has not validated yet, and the server's path challenge
    /// alone takes 1200 bytes, so without this the server could answer on the new path
    /// (pushes, forwarded frames) only after a round trip of validation.
    PathProbe {
        /// Filler of [`PATH_PROBE_PADDING`] bytes.
        #[serde(with = "serde_bytes")]
        padding: Vec<u8>,
    },
}

/// Bytes of filler in a [`RelayMessage::PathProbe`]: with the packets around it, enough
/// for the server's 1200-byte path challenge, its first MTU probe on the new path (up to
/// 1452 bytes) and a few kilobytes of answers within QUIC's anti-amplification allowance
/// (three times what the path received).
pub const PATH_PROBE_PADDING: usize = 2400;

/// Device ↔ rendezvous server. Hints are sealed with a key only the pair holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RendezvousMessage {
    /// Store a sealed endpoint hint under the pair's rendezvous id.
    Publish {
        /// Hash of the relationship key: the same for both devices of the pair.
        #[serde(with = "serde_bytes")]
        rendezvous_id: [u8; RENDEZVOUS_ID_LEN],
        /// How long to keep it, in milliseconds.
        ttl_ms: u64,
        /// The sealed hint.
        #[serde(with = "serde_bytes")]
        hint: Vec<u8>,
    },
    /// Ask for the hints stored under a rendezvous id.
    Lookup {
        /// The pair's rendezvous id.
        #[serde(with = "serde_bytes")]
        rendezvous_id: [u8; RENDEZVOUS_ID_LEN],
    },
    /// The stored hints (sealed; the reader opens them and ignores its own).
    Hints {
        /// The pair's rendezvous id.
        #[serde(with = "serde_bytes")]
        rendezvous_id: [u8; RENDEZVOUS_ID_LEN],
        /// Sealed hints, newest last.
        hints: Vec<serde_bytes::ByteBuf>,
    },
    /// A request was refused.
    Refused {
        /// Why.
        reason: ServerRefusal,
    },
    /// Server → device, unasked: the pair's other member is connected and the server
    /// sees its authenticated connection come from `addr` (its reflexive address).
    /// Sent when either member connects or joins the id while the other is connected,
    /// and when the other member's connection moves, so both can dial at once instead
    /// of waiting for each other's hint. Only the server's observation: no sealed hint,
    /// nothing the server did not already see.
    PeerSeen {
        /// The pair's rendezvous id.
        #[serde(with = "serde_bytes")]
        rendezvous_id: [u8; RENDEZVOUS_ID_LEN],
        /// Where the server sees the other member now.
        addr: SocketAddr,
    },
}

/// Why the relay or rendezvous server refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerRefusal {
    /// The connection has not proven a static key yet.
    NotAuthenticated,
    /// The proof of key ownership was wrong.
    BadProof,
    /// The recipient's queue is full.
    QueueFull,
    /// The sender exceeded its quota.
    QuotaExceeded,
    /// The envelope or hint is larger than the server accepts.
    TooLarge,
    /// The recipient is not connected (live forwarding only).
    NotConnected,
    /// The request names something that belongs to another device.
    NotYours,
    /// The device proved its key, but the relay's admission policy does not admit it
    /// (its key is not on the relay's allowlist). The connection is closed.
    NotAdmitted,
    /// The device or connection sends this kind of request faster than the relay
    /// allows; it may retry later.
    RateLimited,
    /// Another connection authenticated as this device, and the relay keeps one per
    /// device: this one is closed. On a connection the device still uses, this means a
    /// second instance runs with the same device key.
    Replaced,
}

/// Canonical bytes of an endpoint list, as bound into migration tags: for each address,
/// a family byte (4 or 6), the IP octets and the port in big-endian.
pub fn canonical_endpoints(endpoints: &[SocketAddr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(endpoints.len() * 19);
    for endpoint in endpoints {
        match endpoint {
            SocketAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.ip().octets());
            }
        }
        out.extend_from_slice(&endpoint.port().to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_endpoints_distinguishes_order_family_and_port() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "[::1]:5000".parse().unwrap();
        let c: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        assert_ne!(canonical_endpoints(&[a, b]), canonical_endpoints(&[b, a]));
        assert_ne!(canonical_endpoints(&[a]), canonical_endpoints(&[c]));
        assert_eq!(canonical_endpoints(&[a]).len(), 7);
        assert_eq!(canonical_endpoints(&[b]).len(), 19);
    }
}
