//! What a node and the relay report about themselves: the status report that
//! `tether status --json` prints, the per-session bookkeeping that fills it from node
//! events (session start/stop, handshakes, migrations, time on each path), and its
//! rendering as Prometheus text, served by a tiny HTTP listener.
//!
//! Everything here is measured, nothing estimated: time on each path is accounted from
//! the session's path events, frames and bytes per path are DirectConnection's counts.

use crate::hub::NodeEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_direct_connection::{Counters, PathTraffic};
use tether_pms::RendezvousClientCounters;
use tether_protocol::{DeviceId, PathKind, SessionStatus};
use tether_rcs::{ConnectionCounters, RefusalCounters, RelayClientCounters, RelayServerCounters};
use tether_transport::EndpointStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
    /// One entry per paired peer.
    pub peers: Vec<PeerReport>,
    /// UDP traffic of the endpoint.
    pub transport: TransportReport,
    /// Input dropped and counted (never acted on).
    pub rejected: RejectedReport,
    /// The relay and rendezvous clients' counters.
    pub server_clients: ServerClientsReport,
}

/// One peer's session, as `tether status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The name from the config.
    pub name: String,
    /// The peer's public key (hex).
    pub device: String,
    /// Session status (`Ready`, `ReconnectingOutbound`, …).
    pub status: Option<String>,
    /// `direct` or `relay`.
    pub path: Option<String>,
    /// The peer's address on a direct path.
    pub remote: Option<String>,
    /// Committed epoch.
    pub epoch: Option<u64>,
    /// Handshakes started or answered with this peer.
    pub handshakes: u64,
    /// Fingerprint of the committed PeerSecret.
    pub peer_secret: Option<String>,
    /// Fingerprint of the committed session keys.
    pub session_keys: Option<String>,
    /// Smoothed RTT of the bound path.
    pub rtt_ms: Option<u64>,
    /// Messages waiting for the peer's acknowledgement.
    pub queued: usize,
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Messages delivered from the peer.
    pub delivered: u64,
    /// Duplicate data frames dropped (the transport's, not the application's).
    pub duplicate_frames: u64,
    /// Sealed session frames and their bytes, per kind of path.
    pub traffic: TrafficReport,
    /// Connects with a handshake (establishment, recovery) this device gave up on: no
    /// path answered in time.
    pub handshake_timeouts: u64,
    /// Transport-only reconnects this device gave up on.
    pub reconnect_timeouts: u64,
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
    pub fn of_node(dc: &Counters, endpoint: &EndpointStats) -> Self {
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
            ("garbage_datagrams", endpoint.garbage_datagrams_dropped),
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
    /// UDP traffic of the endpoint.
    pub transport: TransportReport,
}

impl RelayStatusReport {
    /// Flattens the server counters (refusals by reason as `refused_<reason>`).
    pub fn counters_of(c: &RelayServerCounters, endpoint: &EndpointStats) -> BTreeMap<String, u64> {
        let mut counters = named([
            ("envelopes_stored", c.stored),
            ("envelopes_delivered", c.delivered),
            ("envelopes_expired", c.expired),
            ("pushed", c.pushed),
            ("forwarded", c.forwarded),
            ("authenticated", c.authenticated),
            ("bad_frames", c.bad_frames),
            ("evicted_connections", c.evicted_connections),
            ("garbage_datagrams", endpoint.garbage_datagrams_dropped),
            ("incoming_refused", endpoint.incoming_refused),
            ("accept_failures", endpoint.accept_failures),
        ]);
        counters.extend(refusals(&c.refused));
        counters
    }
}

/// What a node's clients of the relay and rendezvous server counted: connections,
/// traffic, and the server's and the network's misbehaviour (dropped, never acted on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerClientsReport {
    /// The relay client, by kind (refusals as `refused_<reason>`).
    pub relay: BTreeMap<String, u64>,
    /// The rendezvous client, by kind.
    pub rendezvous: BTreeMap<String, u64>,
}

impl ServerClientsReport {
    /// Flattens both clients' counters.
    pub fn of(relay: &RelayClientCounters, rendezvous: &RendezvousClientCounters) -> Self {
        let r = relay;
        let mut relay = named([
            ("pushes", r.pushes),
            ("forwarded_in", r.forwarded_in),
            ("forwards_dropped", r.forwards_dropped),
            ("pending_overflow", r.pending_overflow),
            ("encode_errors", r.encode_errors),
            ("decode_errors", r.decode_errors),
            ("unexpected_frames", r.unexpected_frames),
        ]);
        relay.extend(refusals(&r.refused));
        relay.extend(connection(&r.connection));
        let z = rendezvous;
        let mut rendezvous = named([
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
            ("relay_traffic_ignored", z.relay_traffic_ignored),
            ("seal_errors", z.seal_errors),
            ("decode_errors", z.decode_errors),
            ("unexpected_frames", z.unexpected_frames),
        ]);
        rendezvous.extend(connection(&z.connection));
        Self { relay, rendezvous }
    }
}

/// A server connection's own counters.
fn connection(c: &ConnectionCounters) -> BTreeMap<String, u64> {
    named([
        ("connects", c.connects),
        ("dial_failures", c.dial_failures),
        ("connect_timeouts", c.connect_timeouts),
        ("links_lost", c.links_lost),
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

/// Whether the session is up (data can flow) in this state.
fn is_up(status: SessionStatus) -> bool {
    matches!(status, SessionStatus::Ready | SessionStatus::Degraded)
}

/// Per-peer bookkeeping fed by node events and periodic samples.
#[derive(Debug, Default)]
pub struct SessionTracker {
    peers: BTreeMap<DeviceId, Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    metrics: SessionMetrics,
    status: Option<SessionStatus>,
    path: Option<PathKind>,
    /// When time on the current path was last accounted.
    since: Option<Instant>,
}

/// What a status event meant for the session's lifecycle, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Nothing notable.
    None,
    /// The session became established.
    Started,
    /// A migration began.
    MigrationStarted,
    /// A migration failed: the window expired.
    MigrationFailed,
    /// The session was evicted or closed.
    Stopped,
}

impl SessionTracker {
    /// Applies one event observed at `now` (monotonic) / `unix_ms` (wall clock).
    pub fn observe(&mut self, event: &NodeEvent, now: Instant, unix_ms: u64) -> Lifecycle {
        match event {
            NodeEvent::Status { peer, from, to } => {
                let t = self.peers.entry(*peer).or_default();
                t.account(now);
                t.status = Some(*to);
                let from = *from;
                let was_established = matches!(
                    from,
                    Some(
                        SessionStatus::Ready
                            | SessionStatus::Degraded
                            | SessionStatus::ReconnectingOutbound
                            | SessionStatus::ReconnectingInbound
                    )
                );
                match to {
                    SessionStatus::Ready if !was_established => {
                        t.metrics.sessions_started += 1;
                        t.metrics.started_at_unix_ms = Some(unix_ms);
                        Lifecycle::Started
                    }
                    SessionStatus::Ready => Lifecycle::None,
                    SessionStatus::ReconnectingOutbound | SessionStatus::ReconnectingInbound
                        if !from.is_some_and(SessionStatus::is_migrating) =>
                    {
                        t.metrics.migrations_started += 1;
                        Lifecycle::MigrationStarted
                    }
                    SessionStatus::Evicted => {
                        t.metrics.sessions_evicted += 1;
                        t.metrics.stopped_at_unix_ms = Some(unix_ms);
                        if from.is_some_and(SessionStatus::is_migrating) {
                            t.metrics.migrations_failed += 1;
                            Lifecycle::MigrationFailed
                        } else {
                            Lifecycle::Stopped
                        }
                    }
                    SessionStatus::Closed => {
                        t.metrics.sessions_closed += 1;
                        t.metrics.stopped_at_unix_ms = Some(unix_ms);
                        Lifecycle::Stopped
                    }
                    _ => Lifecycle::None,
                }
            }
            NodeEvent::Ready(ready) => {
                let t = self.peers.entry(ready.peer).or_default();
                t.account(now);
                t.path = Some(ready.path);
                if ready.after_handshake {
                    t.metrics.handshakes_completed += 1;
                }
                Lifecycle::None
            }
            NodeEvent::MigrationCompleted { peer, duration, .. } => {
                let t = self.peers.entry(*peer).or_default();
                t.metrics.migrations_completed += 1;
                t.metrics
                    .migration_duration
                    .observe(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
                Lifecycle::None
            }
            NodeEvent::Delivered { .. } => Lifecycle::None,
        }
    }

    /// Accounts time up to `now` so a report is current, and takes the path from a
    /// status poll (the same path the last path event gave, unless one is in flight).
    pub fn sample(&mut self, peer: DeviceId, path: Option<PathKind>, now: Instant) {
        let t = self.peers.entry(peer).or_default();
        t.account(now);
        if path.is_some() {
            t.path = path;
        }
    }

    /// The metrics of `peer` as of `now`.
    pub fn metrics(&mut self, peer: DeviceId, now: Instant) -> SessionMetrics {
        let t = self.peers.entry(peer).or_default();
        t.account(now);
        t.metrics.clone()
    }
}

impl Tracked {
    fn account(&mut self, now: Instant) {
        if let (Some(since), Some(status), Some(path)) = (self.since, self.status, self.path) {
            if is_up(status) {
                let ms = u64::try_from(now.saturating_duration_since(since).as_millis())
                    .unwrap_or(u64::MAX);
                match path {
                    PathKind::Direct => self.metrics.direct_ms += ms,
                    PathKind::Relay => self.metrics.relay_ms += ms,
                }
            }
        }
        self.since = Some(now);
    }
}

/// Milliseconds of a duration, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }

    fn per_peer(
        &mut self,
        report: &NodeStatusReport,
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&PeerReport) -> u64,
    ) {
        self.family(name, kind, help);
        for peer in &report.peers {
            self.sample(name, &[("peer", &peer.name)], value(peer));
        }
    }
}

/// A node's report as Prometheus text (exposition format 0.0.4).
pub fn node_prometheus(report: &NodeStatusReport) -> String {
    let mut p = Prom { out: String::new() };
    p.family("tether_up", "gauge", "1 while the node runs.");
    p.sample("tether_up", &[("device", &report.device)], 1);
    p.family(
        "tether_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
    );
    p.sample("tether_uptime_seconds", &[], report.uptime_ms / 1000);

    p.family(
        "tether_session_ready",
        "gauge",
        "1 when the session with the peer is Ready.",
    );
    for peer in &report.peers {
        let ready = u64::from(peer.status.as_deref() == Some("Ready"));
        p.sample(
            "tether_session_ready",
            &[
                ("peer", &peer.name),
                ("status", peer.status.as_deref().unwrap_or("none")),
                ("path", peer.path.as_deref().unwrap_or("none")),
            ],
            ready,
        );
    }
    p.per_peer(
        report,
        "tether_session_epoch",
        "gauge",
        "Committed epoch (handshake generation).",
        |x| x.epoch.unwrap_or(0),
    );
    p.per_peer(
        report,
        "tether_sessions_started_total",
        "counter",
        "Sessions established (first Ready, and after each recovery).",
        |x| x.session.sessions_started,
    );
    p.family(
        "tether_sessions_stopped_total",
        "counter",
        "Sessions stopped, by reason.",
    );
    for peer in &report.peers {
        p.sample(
            "tether_sessions_stopped_total",
            &[("peer", &peer.name), ("reason", "evicted")],
            peer.session.sessions_evicted,
        );
        p.sample(
            "tether_sessions_stopped_total",
            &[("peer", &peer.name), ("reason", "closed")],
            peer.session.sessions_closed,
        );
    }
    p.per_peer(
        report,
        "tether_session_started_timestamp_seconds",
        "gauge",
        "Unix time the session was last established (0: never).",
        |x| x.session.started_at_unix_ms.unwrap_or(0) / 1000,
    );
    p.per_peer(
        report,
        "tether_session_stopped_timestamp_seconds",
        "gauge",
        "Unix time the session was last stopped (0: never).",
        |x| x.session.stopped_at_unix_ms.unwrap_or(0) / 1000,
    );
    p.per_peer(
        report,
        "tether_handshakes_total",
        "counter",
        "Handshakes started or answered.",
        |x| x.handshakes,
    );
    p.per_peer(
        report,
        "tether_handshakes_completed_total",
        "counter",
        "Handshakes that bound a session.",
        |x| x.session.handshakes_completed,
    );
    p.family(
        "tether_handshake_failures_total",
        "counter",
        "Handshakes that failed, by reason: inbound messages refused, and our own \
         handshakes no path answered in time (timeout).",
    );
    for (reason, key) in [
        ("unknown_device", "handshake_unknown_device"),
        ("replayed_initiation", "handshake_replayed_initiation"),
        ("refused", "handshake_refused"),
    ] {
        let value = report.rejected.by_reason.get(key).copied().unwrap_or(0);
        p.sample(
            "tether_handshake_failures_total",
            &[("reason", reason)],
            value,
        );
    }
    let timeouts = report.peers.iter().map(|x| x.handshake_timeouts).sum();
    p.sample(
        "tether_handshake_failures_total",
        &[("reason", "timeout")],
        timeouts,
    );
    p.per_peer(
        report,
        "tether_reconnect_failures_total",
        "counter",
        "Transport-only reconnects no path answered in time.",
        |x| x.reconnect_timeouts,
    );
    p.family(
        "tether_path_seconds_total",
        "counter",
        "Time the session was up, by path kind.",
    );
    for peer in &report.peers {
        p.sample(
            "tether_path_seconds_total",
            &[("peer", &peer.name), ("path", "direct")],
            peer.session.direct_ms / 1000,
        );
        p.sample(
            "tether_path_seconds_total",
            &[("peer", &peer.name), ("path", "relay")],
            peer.session.relay_ms / 1000,
        );
    }
    p.per_peer(
        report,
        "tether_rtt_milliseconds",
        "gauge",
        "Smoothed RTT of the bound path.",
        |x| x.rtt_ms.unwrap_or(0),
    );
    p.per_peer(
        report,
        "tether_migrations_started_total",
        "counter",
        "Migrations started.",
        |x| x.session.migrations_started,
    );
    p.family(
        "tether_migrations_total",
        "counter",
        "Migrations finished, by outcome.",
    );
    for peer in &report.peers {
        p.sample(
            "tether_migrations_total",
            &[("peer", &peer.name), ("outcome", "completed")],
            peer.session.migrations_completed,
        );
        p.sample(
            "tether_migrations_total",
            &[("peer", &peer.name), ("outcome", "evicted")],
            peer.session.migrations_failed,
        );
    }
    p.family(
        "tether_migration_duration_milliseconds",
        "histogram",
        "Duration of completed migrations.",
    );
    for peer in &report.peers {
        let h = &peer.session.migration_duration;
        for (i, bound) in MIGRATION_BUCKETS_MS.iter().enumerate() {
            let le = bound.to_string();
            let count = h.buckets.get(i).copied().unwrap_or(0);
            p.sample(
                "tether_migration_duration_milliseconds_bucket",
                &[("peer", &peer.name), ("le", &le)],
                count,
            );
        }
        p.sample(
            "tether_migration_duration_milliseconds_bucket",
            &[("peer", &peer.name), ("le", "+Inf")],
            h.count,
        );
        p.sample(
            "tether_migration_duration_milliseconds_sum",
            &[("peer", &peer.name)],
            h.sum_ms,
        );
        p.sample(
            "tether_migration_duration_milliseconds_count",
            &[("peer", &peer.name)],
            h.count,
        );
    }
    p.per_peer(
        report,
        "tether_messages_sent_total",
        "counter",
        "Messages accepted by send.",
        |x| x.sent,
    );
    p.per_peer(
        report,
        "tether_messages_delivered_total",
        "counter",
        "Messages delivered from the peer.",
        |x| x.delivered,
    );
    p.per_peer(
        report,
        "tether_messages_queued",
        "gauge",
        "Messages waiting for acknowledgement.",
        |x| x.queued as u64,
    );
    p.per_peer(
        report,
        "tether_duplicate_frames_total",
        "counter",
        "Duplicate data frames dropped.",
        |x| x.duplicate_frames,
    );
    traffic_prometheus(&mut p, report);
    for (name, help, counters) in [
        (
            "tether_relay_client_events_total",
            "What the relay client counted, by kind.",
            &report.server_clients.relay,
        ),
        (
            "tether_rendezvous_client_events_total",
            "What the rendezvous client counted, by kind.",
            &report.server_clients.rendezvous,
        ),
    ] {
        p.family(name, "counter", help);
        for (kind, value) in counters {
            p.sample(name, &[("kind", kind)], *value);
        }
    }
    transport_prometheus(&mut p, &report.transport);
    p.family(
        "tether_rejected_input_total",
        "counter",
        "Input dropped and counted, by reason.",
    );
    for (reason, value) in &report.rejected.by_reason {
        p.sample("tether_rejected_input_total", &[("reason", reason)], *value);
    }
    p.out
}

fn transport_prometheus(p: &mut Prom, t: &TransportReport) {
    p.family(
        "tether_udp_datagrams_total",
        "counter",
        "UDP datagrams, by direction.",
    );
    p.sample(
        "tether_udp_datagrams_total",
        &[("direction", "sent")],
        t.datagrams_sent,
    );
    p.sample(
        "tether_udp_datagrams_total",
        &[("direction", "received")],
        t.datagrams_received,
    );
    p.family(
        "tether_udp_bytes_total",
        "counter",
        "UDP bytes, by direction.",
    );
    p.sample(
        "tether_udp_bytes_total",
        &[("direction", "sent")],
        t.bytes_sent,
    );
    p.sample(
        "tether_udp_bytes_total",
        &[("direction", "received")],
        t.bytes_received,
    );
    p.family(
        "tether_links_total",
        "counter",
        "QUIC connections, by side.",
    );
    p.sample(
        "tether_links_total",
        &[("side", "dialled")],
        t.links_dialled,
    );
    p.sample(
        "tether_links_total",
        &[("side", "accepted")],
        t.links_accepted,
    );
    p.family(
        "tether_rebinds_total",
        "counter",
        "Rebinds to a new local address.",
    );
    p.sample("tether_rebinds_total", &[], t.rebinds);
}

/// The relay's report as Prometheus text.
pub fn relay_prometheus(report: &RelayStatusReport) -> String {
    let mut p = Prom { out: String::new() };
    p.family("tether_relay_up", "gauge", "1 while the relay runs.");
    p.sample("tether_relay_up", &[("public_key", &report.public_key)], 1);
    p.family(
        "tether_relay_uptime_seconds",
        "gauge",
        "Seconds since the relay started.",
    );
    p.sample("tether_relay_uptime_seconds", &[], report.uptime_ms / 1000);
    p.family(
        "tether_relay_events_total",
        "counter",
        "Relay queue and rendezvous counters, by kind.",
    );
    for (kind, value) in &report.counters {
        p.sample("tether_relay_events_total", &[("kind", kind)], *value);
    }
    transport_prometheus(&mut p, &report.transport);
    p.out
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct MetricsBindError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS's error.
    pub source: std::io::Error,
}

/// Binds the metrics listener.
pub async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, MetricsBindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsBindError { addr, source })
}

/// Serves `GET /metrics` (and `/`) on `listener` with the text `render` produces; any
/// other path is a 404. One request per connection; the request is read up to 8 KiB.
pub async fn serve_metrics<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + 'static,
    Fut: std::future::Future<Output = Option<String>> + 'static,
{
    let render = std::rc::Rc::new(render);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        actix_rt::spawn(async move {
            let mut buf = vec![0_u8; 8192];
            let mut len = 0;
            let head_done = |b: &[u8]| b.windows(4).any(|w| w == b"\r\n\r\n");
            while len < buf.len() && !head_done(&buf[..len]) {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf[len..]))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => len += n,
                }
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let target = request.split_whitespace().nth(1).unwrap_or("");
            let method = request.split_whitespace().next().unwrap_or("");
            let (status, body, kind) = if method != "GET" {
                (
                    "405 Method Not Allowed",
                    "only GET\n".to_string(),
                    "text/plain",
                )
            } else if target == "/metrics" || target == "/" {
                match render().await {
                    Some(body) => ("200 OK", body, "text/plain; version=0.0.4; charset=utf-8"),
                    None => ("503 Service Unavailable", "stopping\n".into(), "text/plain"),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_string(), "text/plain")
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Frames and bytes per peer, kind of path and direction.
fn traffic_prometheus(p: &mut Prom, report: &NodeStatusReport) {
    type Pick = fn(&PathTrafficReport) -> (u64, u64);
    let directions: [(&str, Pick); 2] = [
        ("sent", |t| (t.frames_sent, t.bytes_sent)),
        ("received", |t| (t.frames_received, t.bytes_received)),
    ];
    for (name, help, bytes) in [
        (
            "tether_session_frames_total",
            "Sealed session frames, by path kind and direction (received: authentic only).",
            false,
        ),
        (
            "tether_session_bytes_total",
            "Encoded bytes of those frames, by path kind and direction.",
            true,
        ),
    ] {
        p.family(name, "counter", help);
        for peer in &report.peers {
            for (path, traffic) in [
                ("direct", &peer.traffic.direct),
                ("relay", &peer.traffic.relay),
            ] {
                for (direction, pick) in directions {
                    let (frames, byte_count) = pick(traffic);
                    let value = if bytes { byte_count } else { frames };
                    p.sample(
                        name,
                        &[
                            ("peer", &peer.name),
                            ("path", path),
                            ("direction", direction),
                        ],
                        value,
                    );
                }
            }
        }
    }
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
