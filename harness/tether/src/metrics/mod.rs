//! What a node and the relay report about themselves: the status report that
//! `tether status --json` prints, the per-session bookkeeping that fills it from node
//! events (session start/stop, handshakes, migrations, time on each path), its
//! rendering as text for people, and as Prometheus text.
//!
//! An application embedding a [`Node`](crate::Node) gets both from the node itself:
//! [`Node::status_report`](crate::Node::status_report) and
//! [`Node::metrics`](crate::Node::metrics) (the Prometheus text `tether node` serves at
//! its `metrics_addr`, for the application to serve on its own HTTP endpoint).
//! Programs that run the actors themselves ([`actors::Node`](crate::actors::Node))
//! make the report with a [`NodeReporter`] fed with every event and a [`NodeSnapshot`].
//!
//! - this module: the reports and their parts;
//! - [`NodeReporter`], [`NodeSnapshot`]: a node's report from its events and state;
//! - [`SessionTracker`]: the per-session bookkeeping;
//! - [`node_prometheus`], [`relay_prometheus`]: Prometheus text (`prometheus-client`);
//! - [`render_node_status`], [`render_relay_status`]: the text `tether status` prints.
//!
//! Everything here is measured, nothing estimated: time on each path is accounted from
//! the session's path events, frames and bytes per path are DirectConnection's counts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tether_direct_connection::{Counters, PathTraffic};
use tether_pms::{RendezvousClientCounters, TableCounters};
use tether_protocol::PathKind;
use tether_rcs::{
    ConnectionCounters, RefusalCounters, RelayClientCounters, RelayServerCounters,
    ServerAuthFailure,
};
use tether_transport::EndpointStats;

mod prometheus;
mod render;
mod report;
mod sessions;

pub use prometheus::{node_prometheus, relay_prometheus, PROMETHEUS_CONTENT_TYPE};
pub use render::{render_node_status, render_relay_status, utc};
pub use report::{NodeReporter, NodeSnapshot};
pub use sessions::{Lifecycle, SessionTracker};

/// Upper bounds (ms) of the migration duration histogram buckets: from well under one
/// RTT of a LAN to the default 30 s migration window.
pub const MIGRATION_BUCKETS_MS: [u64; 10] =
    [25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000];

/// A node's full status: identity, every peer, and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatusReport {
    /// This device's public key (hex).
    pub device: String,
    /// The local UDP address.
    pub listen: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// When this report was made (Unix ms): the `…_ms_ago` fields count from it.
    #[serde(default)]
    pub generated_unix_ms: u64,
    /// One entry per paired peer.
    pub peers: Vec<PeerReport>,
    /// UDP traffic of the endpoint.
    pub transport: TransportReport,
    /// Input dropped and counted (never acted on).
    pub rejected: RejectedReport,
    /// The relay and rendezvous clients' counters.
    pub server_clients: ServerClientsReport,
    /// What this device's NAT does, from how its peers on direct paths and the relay
    /// see it.
    #[serde(default)]
    pub nat: NatReport,
}

/// How this device's NAT maps its socket, once a peer on a direct path has said where
/// it sees it (`ObservedAddress`) since the device last moved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NatReport {
    /// `none` (the relay and a peer see an interface address), `endpoint-independent`
    /// (the relay and the peers see one address: a cone NAT), `endpoint-dependent`
    /// (they see different ones: a symmetric NAT, or a port-preserving one whose port
    /// was taken towards a peer), or `unknown`.
    pub mapping: String,
    /// What it means and what it rests on, in one line.
    pub summary: String,
    /// Where the relay last saw this device since it moved.
    pub relay_sees: Option<String>,
    /// Where each peer on a direct path last saw this device.
    pub seen_by: Vec<SeenByReport>,
}

/// Where one peer saw this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenByReport {
    /// The peer's name.
    pub peer: String,
    /// The address it saw.
    pub addr: String,
}

/// One peer's session, as `tether status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The name from the config.
    pub name: String,
    /// The peer's public key (hex).
    pub device: String,
    /// The peer's short id: the first 16 hex characters of its public key, as logs
    /// name it.
    #[serde(default)]
    pub id: String,
    /// Session status (`Ready`, `ReconnectingOutbound`, …).
    pub status: Option<String>,
    /// `direct` or `relay`.
    pub path: Option<String>,
    /// The peer's address on a direct path.
    pub remote: Option<String>,
    /// Committed epoch.
    pub epoch: Option<u64>,
    /// Completed handshakes: generations committed with this peer, one per new epoch
    /// (establishment, recovery, restart, rekey).
    pub handshakes: u64,
    /// Handshake messages 1 sent to this peer (every retry counts) or answered.
    pub handshake_attempts: u64,
    /// Fingerprint of the committed PeerSecret.
    pub peer_secret: Option<String>,
    /// Fingerprint of the committed session keys.
    pub session_keys: Option<String>,
    /// Smoothed RTT of the bound path.
    pub rtt_ms: Option<u64>,
    /// Messages waiting for the peer's acknowledgement.
    pub queued: usize,
    /// Messages accepted by `send` (since the node started).
    #[serde(default)]
    pub accepted: u64,
    /// Messages the peer acknowledged (since the node started).
    #[serde(default)]
    pub acknowledged: u64,
    /// Messages received from the peer and delivered to the application (since the
    /// node started).
    #[serde(default)]
    pub received: u64,
    /// `accepted`, under its older name.
    pub sent: u64,
    /// `received`, under its older name.
    pub delivered: u64,
    /// Milliseconds since the last authenticated frame from the peer arrived.
    #[serde(default)]
    pub last_seen_ms_ago: Option<u64>,
    /// When the current session keys' handshake completed here (Unix ms).
    #[serde(default)]
    pub last_handshake_unix_ms: Option<u64>,
    /// Milliseconds since then.
    #[serde(default)]
    pub last_handshake_ms_ago: Option<u64>,
    /// Why the session is on this path (`direct: validated path`, `relay: no direct
    /// path answered since …`, `no path: …`).
    #[serde(default)]
    pub path_reason: Option<String>,
    /// Duplicate data frames dropped (the transport's, not the application's).
    pub duplicate_frames: u64,
    /// Sealed session frames and their bytes, per kind of path.
    pub traffic: TrafficReport,
    /// Connects with a handshake (establishment, recovery) this device gave up on: no
    /// path answered in time.
    pub handshake_timeouts: u64,
    /// Transport-only reconnects this device gave up on.
    pub reconnect_timeouts: u64,
    /// Handshakes that brought the pair back after one side restarted and lost the
    /// session the other still held (the responder raised the epoch).
    pub restart_handshakes: u64,
    /// Rekeys committed (either side initiating): new keys and PeerSecret for the live
    /// session after the time or volume limit.
    pub rekeys: u64,
    /// The peer's rekeys not answered because the session was not Ready here.
    pub rekeys_refused: u64,
    /// Migrations completed (as the node counts them).
    pub migrations: u64,
    /// Duration of the last migration.
    pub last_migration_ms: Option<u64>,
    /// Session lifecycle counters.
    pub session: SessionMetrics,
}

/// A session's frames per kind of path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    /// Over direct links.
    pub direct: PathTrafficReport,
    /// Through the relay.
    pub relay: PathTrafficReport,
}

/// Sealed session frames on one kind of path (received: authentic ones only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathTrafficReport {
    /// Frames sent.
    pub frames_sent: u64,
    /// Their encoded bytes.
    pub bytes_sent: u64,
    /// Authentic frames received.
    pub frames_received: u64,
    /// Their encoded bytes.
    pub bytes_received: u64,
}

impl From<PathTraffic> for PathTrafficReport {
    fn from(t: PathTraffic) -> Self {
        Self {
            frames_sent: t.frames_sent,
            bytes_sent: t.bytes_sent,
            frames_received: t.frames_received,
            bytes_received: t.bytes_received,
        }
    }
}

/// Lifecycle counters of one peer's session, measured from the node's events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionMetrics {
    /// Unix ms when the session last became Ready from not established.
    pub started_at_unix_ms: Option<u64>,
    /// Unix ms when the session was last evicted or closed.
    pub stopped_at_unix_ms: Option<u64>,
    /// Times the session became established (first Ready, and after each recovery).
    pub sessions_started: u64,
    /// Times the session was evicted.
    pub sessions_evicted: u64,
    /// Times the session was closed.
    pub sessions_closed: u64,
    /// Handshakes that completed (a session bound after a handshake).
    pub handshakes_completed: u64,
    /// Migrations started (a Reconnecting state entered).
    pub migrations_started: u64,
    /// Migrations that ended Ready.
    pub migrations_completed: u64,
    /// Migrations that ended in eviction (the window expired).
    pub migrations_failed: u64,
    /// Completed migration durations.
    pub migration_duration: Histogram,
    /// Milliseconds the session was up on a direct path.
    pub direct_ms: u64,
    /// Milliseconds the session was up on the relay.
    pub relay_ms: u64,
}

/// A cumulative histogram in Prometheus's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations at or below each of [`MIGRATION_BUCKETS_MS`].
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of observations in ms.
    pub sum_ms: u64,
}

impl Histogram {
    fn observe(&mut self, ms: u64) {
        if self.buckets.len() != MIGRATION_BUCKETS_MS.len() {
            self.buckets = vec![0; MIGRATION_BUCKETS_MS.len()];
        }
        for (bound, slot) in MIGRATION_BUCKETS_MS.iter().zip(self.buckets.iter_mut()) {
            if ms <= *bound {
                *slot += 1;
            }
        }
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }
}

/// UDP traffic of one endpoint, across rebinds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportReport {
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes in those datagrams.
    pub bytes_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Bytes in those datagrams.
    pub bytes_received: u64,
    /// QUIC connections dialled.
    pub links_dialled: u64,
    /// QUIC connections accepted.
    pub links_accepted: u64,
    /// Rebinds to a new local address (network changes).
    pub rebinds: u64,
    /// Datagrams the kernel dropped for us, the socket's receive buffer being full
    /// (Linux; 0 elsewhere).
    #[serde(default)]
    pub receive_buffer_drops: u64,
}

impl From<EndpointStats> for TransportReport {
    fn from(s: EndpointStats) -> Self {
        Self {
            datagrams_sent: s.datagrams_sent,
            bytes_sent: s.bytes_sent,
            datagrams_received: s.datagrams_received,
            bytes_received: s.bytes_received,
            links_dialled: s.links_dialled,
            links_accepted: s.links_accepted,
            rebinds: s.rebinds,
            receive_buffer_drops: s.receive_buffer_drops,
        }
    }
}

/// Bad or unwanted input, dropped and counted, by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RejectedReport {
    /// By reason: `malformed_frames`, `rejected_frames` (authentication or replay), …
    pub by_reason: BTreeMap<String, u64>,
}

impl RejectedReport {
    /// The node's counters: DirectConnection's and the endpoint's.
    /// `writes_dropped`: frames dropped at a full link writer (`Node::writes_dropped`).
    pub fn of_node(dc: &Counters, endpoint: &EndpointStats, writes_dropped: u64) -> Self {
        let pairs = [
            ("malformed_frames", dc.malformed_frames),
            ("unknown_session", dc.unknown_session),
            ("rejected_frames", dc.rejected_frames),
            ("malformed_session_frames", dc.malformed_session_frames),
            ("handshake_unknown_device", dc.unknown_device_handshakes),
            ("handshake_replayed_initiation", dc.replayed_initiations),
            ("handshake_refused", dc.refused_handshakes),
            ("bad_migration_tags", dc.bad_migration_tags),
            ("stale_migration_pings", dc.stale_migration_pings),
            ("bad_path_responses", dc.bad_path_responses),
            ("amplification_blocked", dc.amplification_blocked),
            ("wrong_sender", dc.wrong_sender),
            ("unclaimed_links_closed", dc.unclaimed_links_closed),
            ("handshake_rate_limited", dc.rate_limited_initiations),
            ("channels_refused", dc.channels_refused),
            ("receive_budget_drops", dc.receive_budget_drops),
            ("writes_dropped", writes_dropped),
            ("garbage_datagrams", endpoint.garbage_datagrams_dropped),
            (
                "unsupported_version_datagrams",
                endpoint.unsupported_version_dropped,
            ),
            (
                "unknown_connection_datagrams",
                endpoint.unknown_connection_dropped,
            ),
            ("incoming_refused", endpoint.incoming_refused),
            ("accept_failures", endpoint.accept_failures),
            ("bad_streams", endpoint.bad_streams),
        ];
        Self {
            by_reason: pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        }
    }
}

/// The relay's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatusReport {
    /// The server's public key (hex).
    pub public_key: String,
    /// The local UDP address.
    pub listen: String,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Queue and rendezvous counters.
    pub counters: BTreeMap<String, u64>,
    /// What the relay holds now: `stored_bytes` (charged against the global bound),
    /// `stored_envelopes`, `rendezvous_ids`, `connections`.
    #[serde(default)]
    pub holding: BTreeMap<String, u64>,
    /// UDP traffic of the endpoint.
    pub transport: TransportReport,
}

impl RelayStatusReport {
    /// Flattens the server counters (refusals by reason as `refused_<reason>`, the
    /// rendezvous table's as `rendezvous_<kind>`).
    pub fn counters_of(
        c: &RelayServerCounters,
        z: &TableCounters,
        endpoint: &EndpointStats,
    ) -> BTreeMap<String, u64> {
        let mut counters = named([
            ("envelopes_stored", c.stored),
            ("envelopes_delivered", c.delivered),
            ("envelopes_expired", c.expired),
            ("envelopes_restored", c.restored),
            ("envelopes_restore_dropped", c.restore_dropped),
            ("store_undecodable", c.store_undecodable),
            ("store_failures", c.store_failures),
            ("pushed", c.pushed),
            ("forwarded", c.forwarded),
            ("authenticated", c.authenticated),
            ("bad_frames", c.bad_frames),
            ("replaced_connections", c.replaced_connections),
            ("auth_timeouts", c.auth_timeouts),
            ("rate_limit_episodes", c.rate_limit_episodes),
            ("rendezvous_published", z.published),
            ("rendezvous_lookups", z.lookups),
            ("rendezvous_expired", z.expired),
            ("rendezvous_refused_not_yours", z.refused_not_yours),
            ("rendezvous_refused_too_large", z.refused_too_large),
            ("rendezvous_refused_table_full", z.refused_quota),
            ("rendezvous_refused_device_quota", z.refused_device_quota),
            ("rendezvous_bad_requests", z.bad_requests),
            ("garbage_datagrams", endpoint.garbage_datagrams_dropped),
            (
                "unsupported_version_datagrams",
                endpoint.unsupported_version_dropped,
            ),
            (
                "unknown_connection_datagrams",
                endpoint.unknown_connection_dropped,
            ),
            ("incoming_refused", endpoint.incoming_refused),
            ("accept_failures", endpoint.accept_failures),
        ]);
        counters.extend(refusals(&c.refused));
        counters
    }
}

/// What a node's clients of the relay and rendezvous server counted: the connection
/// (one per device, the relay client's), traffic, and the server's and the network's
/// misbehaviour (dropped, never acted on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerClientsReport {
    /// The relay client and the connection, by kind (refusals as `refused_<reason>`).
    pub relay: BTreeMap<String, u64>,
    /// The rendezvous client, by kind.
    pub rendezvous: BTreeMap<String, u64>,
    /// Whether the server proved the configured key.
    #[serde(default)]
    pub relay_auth: ServerAuthReport,
    /// Whether the relay is reachable now, and since when not.
    #[serde(default)]
    pub relay_connection: RelayConnectionReport,
}

/// Where the node's connection to the relay stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayConnectionReport {
    /// The relay's address.
    pub addr: String,
    /// `connected`, `connecting`, `unreachable` (no attempt reached it since
    /// `since_unix_ms`) or `refused` (it answered, but refused us or did not prove the
    /// configured key: see `relay_auth`).
    pub state: String,
    /// Since when it is unreachable (Unix ms).
    pub since_unix_ms: Option<u64>,
    /// How the last attempt or connection ended: `dial failed`, `timed out`, `link
    /// lost`, `refused: wrong server key?`, …
    pub last_failure: Option<String>,
}

impl RelayConnectionReport {
    /// The report of a connection's state at `now` (`unix_now` on the wall clock).
    pub fn of(
        addr: std::net::SocketAddr,
        c: &ConnectionCounters,
        now: std::time::Instant,
        unix_now: u64,
    ) -> Self {
        let since_unix_ms = c
            .unreachable_since
            .map(|since| unix_now.saturating_sub(millis(now.saturating_duration_since(since))));
        let state = if c.connected {
            "connected"
        } else if c.auth_failure.is_some() {
            "refused"
        } else if c.unreachable_since.is_some() {
            "unreachable"
        } else {
            "connecting"
        };
        Self {
            addr: addr.to_string(),
            state: state.to_string(),
            since_unix_ms: if c.connected { None } else { since_unix_ms },
            last_failure: c.last_failure.map(|f| f.to_string()),
        }
    }
}

/// Whether a server connection authenticated the configured relay key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAuthReport {
    /// `ok` (authenticated, or no attempt failed yet), `wrong key` (the server named
    /// another key) or `unauthenticated` (it did not prove the configured key, or
    /// refused our proof).
    pub status: String,
    /// Why, when not `ok`.
    pub reason: Option<String>,
}

impl Default for ServerAuthReport {
    fn default() -> Self {
        Self {
            status: "ok".to_string(),
            reason: None,
        }
    }
}

impl ServerAuthReport {
    /// The report of a connection's current authentication failure.
    pub fn of(failure: Option<ServerAuthFailure>) -> Self {
        match failure {
            None => Self::default(),
            Some(failure) => Self {
                status: failure.kind().to_string(),
                reason: Some(failure.to_string()),
            },
        }
    }
}

impl ServerClientsReport {
    /// Flattens both clients' counters.
    pub fn of(relay: &RelayClientCounters, rendezvous: &RendezvousClientCounters) -> Self {
        let r = relay;
        let mut relay = named([
            ("pushes", r.pushes),
            ("forwarded_in", r.forwarded_in),
            ("forwards_dropped", r.forwards_dropped),
            ("rendezvous_dropped", r.rendezvous_dropped),
            ("pending_overflow", r.pending_overflow),
            ("encode_errors", r.encode_errors),
            ("decode_errors", r.decode_errors),
            ("unexpected_frames", r.unexpected_frames),
        ]);
        relay.extend(refusals(&r.refused));
        relay.extend(connection(&r.connection));
        let z = rendezvous;
        let rendezvous = named([
            ("published", z.published),
            ("refused", z.refused),
            ("lookups_dropped", z.lookups_dropped),
            ("lookups_without_hint", z.lookups_without_hint),
            ("tampered_hints", z.tampered_hints),
            ("rejected_hints", z.rejected_hints),
            ("expired_hints", z.expired_hints),
            ("own_hints", z.own_hints),
            ("unknown_peer", z.unknown_peer),
            ("unknown_rendezvous", z.unknown_rendezvous),
            ("seal_errors", z.seal_errors),
            ("unexpected_frames", z.unexpected_frames),
        ]);
        Self {
            relay,
            rendezvous,
            relay_auth: ServerAuthReport::of(r.connection.auth_failure),
            relay_connection: RelayConnectionReport::default(),
        }
    }
}

/// A server connection's own counters.
fn connection(c: &ConnectionCounters) -> BTreeMap<String, u64> {
    named([
        ("connects", c.connects),
        ("dial_failures", c.dial_failures),
        ("connect_timeouts", c.connect_timeouts),
        ("links_lost", c.links_lost),
        ("wrong_server_key", c.wrong_server_key),
        ("bad_server_proofs", c.bad_server_proofs),
        ("proofs_refused", c.proofs_refused),
        ("not_admitted", c.not_admitted),
        ("replaced", c.replaced),
    ])
}

fn named<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

fn refusals(r: &RefusalCounters) -> impl Iterator<Item = (String, u64)> {
    r.by_reason()
        .into_iter()
        .map(|(reason, n)| (format!("refused_{reason}"), n))
}

/// Lower-case name of a path kind, as reports print it.
pub fn path_name(path: PathKind) -> &'static str {
    match path {
        PathKind::Direct => "direct",
        PathKind::Relay => "relay",
    }
}

/// Milliseconds of a duration, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        h.observe(30);
        h.observe(700);
        assert_eq!(h.count, 2);
        assert_eq!(h.sum_ms, 730);
        assert_eq!(h.buckets[0], 0); // <= 25
        assert_eq!(h.buckets[1], 1); // <= 50
        assert_eq!(h.buckets[5], 2); // <= 1000
    }
}
