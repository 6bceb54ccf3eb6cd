//! A node's status report, made from what the node holds at the moment
//! ([`NodeSnapshot`]) and what its events told ([`NodeReporter`]'s per-session
//! bookkeeping). Making it is a pure function of the two and the time: the snapshot is
//! the only part that asks the node.

use super::{
    millis, path_name, render::utc, Lifecycle, NatReport, NodeStatusReport, PeerReport,
    RejectedReport, RelayConnectionReport, SeenByReport, ServerClientsReport, SessionTracker,
    TrafficReport, TransportReport,
};
use crate::hub::NodeEvent;
use crate::node::{Node, PeerStatus};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;
use tether_direct_connection::{
    Counters, NatMapping, DIRECT_SLOWER_TOLERANCE_MS, FALLBACK_HOLD, QUALITY_WINDOW,
};
use tether_pms::RendezvousClientCounters;
use tether_protocol::{DeviceId, PathKind, SessionStatus};
use tether_rcs::RelayClientCounters;
use tether_transport::EndpointStats;

/// What a node holds at one moment: every peer's session and the counters of its
/// actors and endpoint.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// Every peer's session.
    pub statuses: Vec<PeerStatus>,
    /// DirectConnection's counters of dropped input.
    pub counters: Counters,
    /// The relay client's counters and its connection's state.
    pub relay_client: RelayClientCounters,
    /// The rendezvous client's counters.
    pub rendezvous_client: RendezvousClientCounters,
    /// The UDP endpoint's counters.
    pub endpoint: EndpointStats,
    /// Frames dropped at a full link writer.
    pub writes_dropped: u64,
}

impl NodeSnapshot {
    /// Asks `node` (its actors and endpoint) for everything a report shows.
    pub async fn of(node: &Node) -> Self {
        let statuses = node.status().await;
        let counters = node.counters().await;
        let (relay_client, rendezvous_client) = node.server_client_counters().await;
        Self {
            statuses,
            counters,
            relay_client,
            rendezvous_client,
            endpoint: node.endpoint_stats(),
            writes_dropped: node.writes_dropped(),
        }
    }
}

/// Makes a node's [`NodeStatusReport`]: it names the peers and keeps the per-session
/// bookkeeping ([`SessionTracker`]) that only the node's events can give (sessions
/// started and stopped, migrations, time on each kind of path), so it must see every
/// event ([`NodeReporter::observe`]).
#[derive(Debug)]
pub struct NodeReporter {
    device: DeviceId,
    relay: SocketAddr,
    started: Instant,
    names: BTreeMap<DeviceId, String>,
    tracker: SessionTracker,
}

impl NodeReporter {
    /// The reporter of the node `device`, whose relay is at `relay`, started at
    /// `started`. Peers are named by their short id unless [`NodeReporter::with_names`]
    /// names them.
    pub fn new(device: DeviceId, relay: SocketAddr, started: Instant) -> Self {
        Self {
            device,
            relay,
            started,
            names: BTreeMap::new(),
            tracker: SessionTracker::default(),
        }
    }

    /// Names for the peers (a config's names): the `peer` label of the metrics.
    pub fn with_names(mut self, names: impl IntoIterator<Item = (DeviceId, String)>) -> Self {
        self.names.extend(names);
        self
    }

    /// The peer's name: the one it was given, or its short id.
    pub fn name(&self, peer: &DeviceId) -> String {
        self.names
            .get(peer)
            .cloned()
            .unwrap_or_else(|| peer.short())
    }

    /// Applies one event of the node, observed at `now` (monotonic) / `unix_ms` (wall
    /// clock); says what it meant for the session's lifecycle.
    pub fn observe(&mut self, event: &NodeEvent, now: Instant, unix_ms: u64) -> Lifecycle {
        self.tracker.observe(event, now, unix_ms)
    }

    /// Accounts time on each path up to `now` from a status poll.
    pub fn sample(&mut self, statuses: &[PeerStatus], now: Instant) {
        for status in statuses {
            self.tracker.sample(status.peer, status.path, now);
        }
    }

    /// The report of the node as `snapshot` shows it, listening on `local`, at `now`
    /// (monotonic; the snapshot's instants are compared with it) and `unix_now` (wall
    /// clock, Unix ms).
    pub fn report(
        &mut self,
        snapshot: NodeSnapshot,
        local: SocketAddr,
        now: Instant,
        unix_now: u64,
    ) -> NodeStatusReport {
        let NodeSnapshot {
            statuses,
            counters,
            relay_client,
            rendezvous_client,
            endpoint,
            writes_dropped,
        } = snapshot;
        let ago = |at: Option<Instant>| at.map(|at| millis(now.saturating_duration_since(at)));
        let nat = nat_report(
            statuses
                .iter()
                .filter_map(|s| Some((self.name(&s.peer), s.seen_by_peer?)))
                .collect(),
        );
        let mut peers = Vec::new();
        for s in statuses {
            self.tracker.sample(s.peer, s.path, now);
            let path_reason = path_reason(&s, self.tracker.path_since(s.peer));
            peers.push(PeerReport {
                name: self.name(&s.peer),
                device: s.peer.to_hex(),
                id: s.peer.short(),
                status: s.status.map(|x| x.to_string()),
                path: s.path.map(|p| path_name(p).to_string()),
                remote: s.remote.map(|r| r.to_string()),
                epoch: s.epoch,
                handshakes: s.handshakes,
                handshake_attempts: s.handshake_attempts,
                peer_secret: s.peer_secret.map(|f| f.to_hex()),
                session_keys: s.session_keys.map(|f| f.to_hex()),
                rtt_ms: s.rtt_ms,
                queued: s.queued,
                accepted: s.counters.sent,
                acknowledged: s.counters.acknowledged,
                received: s.counters.delivered,
                sent: s.counters.sent,
                delivered: s.counters.delivered,
                last_seen_ms_ago: ago(s.last_received),
                last_handshake_unix_ms: ago(s.last_handshake).map(|ms| unix_now.saturating_sub(ms)),
                last_handshake_ms_ago: ago(s.last_handshake),
                path_reason: Some(path_reason),
                duplicate_frames: s.counters.duplicates,
                traffic: TrafficReport {
                    direct: s.counters.direct.into(),
                    relay: s.counters.relay.into(),
                },
                handshake_timeouts: s.counters.handshake_timeouts,
                reconnect_timeouts: s.counters.reconnect_timeouts,
                restart_handshakes: s.counters.restart_handshakes,
                rekeys: s.counters.rekeys,
                rekeys_refused: s.counters.rekeys_refused,
                migrations: s.migrations,
                last_migration_ms: s.last_migration.map(millis),
                session: self.tracker.metrics(s.peer, now),
            });
        }
        let mut server_clients = ServerClientsReport::of(&relay_client, &rendezvous_client);
        server_clients.relay_connection =
            RelayConnectionReport::of(self.relay, &relay_client.connection, now, unix_now);
        NodeStatusReport {
            device: self.device.to_hex(),
            listen: local.to_string(),
            uptime_ms: millis(now.saturating_duration_since(self.started)),
            generated_unix_ms: unix_now,
            peers,
            transport: TransportReport::from(endpoint),
            rejected: RejectedReport::of_node(&counters, &endpoint, writes_dropped),
            server_clients,
            nat,
        }
    }
}

/// What the peers that saw this device on a direct path (by name) say about its NAT:
/// one view that differs from the relay's shows a mapping per destination, whatever
/// the others show.
fn nat_report(seen: Vec<(String, tether_direct_connection::SeenByPeer)>) -> NatReport {
    let with = |mapping: NatMapping| seen.iter().filter(move |(_, s)| s.mapping == Some(mapping));
    let names = |mapping: NatMapping, addresses: bool| {
        with(mapping)
            .map(|(name, s)| match addresses {
                true => format!("{name} at {}", s.addr),
                false => name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let relay_sees = seen.iter().find_map(|(_, s)| s.relay_saw);
    let relay = relay_sees.map_or("-".to_string(), |a| a.to_string());
    let (mapping, summary) = if with(NatMapping::EndpointDependent).next().is_some() {
        (
            "endpoint-dependent",
            format!(
                "a mapping per destination: the relay sees this device at {relay}, {} (a symmetric NAT, or a port-preserving one that found the port taken towards that peer)",
                names(NatMapping::EndpointDependent, true)
            ),
        )
    } else if with(NatMapping::EndpointIndependent).next().is_some() {
        (
            "endpoint-independent",
            format!(
                "one mapping for every destination (a cone NAT): the relay and {} see this device at {relay}",
                names(NatMapping::EndpointIndependent, false)
            ),
        )
    } else if with(NatMapping::None).next().is_some() {
        (
            "none",
            format!(
                "none: the relay and {} see this device at an interface address",
                names(NatMapping::None, false)
            ),
        )
    } else if !seen.is_empty() {
        (
            "unknown",
            format!(
                "not known: where the relay sees this device ({relay}) cannot be compared with where the peers on direct paths do ({}): a peer on this device's own network, another address family or another route",
                seen.iter()
                    .map(|(name, s)| format!("{name} at {}", s.addr))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        (
            "unknown",
            "not known yet: no peer on a direct path has said where it sees this device since it last moved"
                .to_string(),
        )
    };
    NatReport {
        mapping: mapping.to_string(),
        summary,
        relay_sees: relay_sees.map(|a| a.to_string()),
        seen_by: seen
            .iter()
            .map(|(peer, s)| SeenByReport {
                peer: peer.clone(),
                addr: s.addr.to_string(),
            })
            .collect(),
    }
}

/// Why the session is on the path it is on, from what DirectConnection knows:
/// `path_since` is when it moved to this kind of path (Unix ms).
fn path_reason(s: &PeerStatus, path_since: Option<u64>) -> String {
    let since = path_since.map_or(String::new(), |at| format!(" since {}", utc(at)));
    if let (Some(PathKind::Relay), Some(declined)) = (s.path, s.direct_declined) {
        if let Some(missed) = declined.fell_back_with_missed {
            let loss = match declined.fell_back_with_loss {
                Some((direct, Some(relay))) => {
                    format!(", {direct} % of its packets lost against {relay} % on the relay")
                }
                Some((direct, None)) => format!(", {direct} % of its packets lost"),
                None => String::new(),
            };
            return format!(
                "relay: fell back from the direct path ({} ms, {missed} of its last {QUALITY_WINDOW} heartbeats late{loss}; the relay {} ms); a direct path is retried after {} s{since}",
                declined.direct_rtt_ms,
                declined.relay_rtt_ms,
                declined.retry_after_s.unwrap_or(FALLBACK_HOLD.as_secs())
            );
        }
        return format!(
            "relay: a direct path answered in {} ms, the relay in {} ms (a direct path is taken unless more than {} ms slower){since}",
            declined.direct_rtt_ms, declined.relay_rtt_ms, DIRECT_SLOWER_TOLERANCE_MS
        );
    }
    match (s.path, s.path_validated) {
        (Some(PathKind::Direct), Some(true)) => match (s.rtt_ms, s.relay_rtt_ms) {
            (Some(rtt), Some(relay)) => {
                format!("direct: validated path ({rtt} ms; the relay answered in {relay} ms)")
            }
            _ => "direct: validated path".to_string(),
        },
        (Some(PathKind::Direct), _) => {
            "direct: the peer's address has not answered its challenge yet".to_string()
        }
        (Some(PathKind::Relay), _) if s.direct_candidates == 0 => {
            format!("relay: no direct address known for the peer{since}")
        }
        (Some(PathKind::Relay), _) => format!(
            "relay: no direct path answered{since} ({} direct addresses known, dialled again while on the relay, less often as attempts fail)",
            s.direct_candidates
        ),
        (None, _) => match s.status {
            Some(SessionStatus::Closed) => {
                "no path: the session is Closed: the peer said goodbye (it stopped), or the session was closed here".to_string()
            }
            Some(status) => format!("no path: the session is {status}"),
            None => "no path: no session yet".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_direct_connection::{DeclinedDirect, PeerCounters};

    fn on(path: PathKind) -> PeerStatus {
        PeerStatus {
            peer: DeviceId([7; 32]),
            status: Some(SessionStatus::Ready),
            epoch: Some(1),
            handshakes: 1,
            handshake_attempts: 1,
            peer_secret: None,
            session_keys: None,
            path: Some(path),
            remote: None,
            rtt_ms: Some(12),
            queued: 0,
            held_bytes: 0,
            counters: PeerCounters::default(),
            migrations: 0,
            last_migration: None,
            links: 1,
            last_received: None,
            last_handshake: None,
            path_validated: (path == PathKind::Direct).then_some(true),
            direct_candidates: 2,
            relay_rtt_ms: Some(45),
            direct_declined: None,
            seen_by_peer: None,
        }
    }

    #[test]
    fn one_peer_seeing_another_mapping_than_the_relay_shows_a_symmetric_nat() {
        use tether_direct_connection::SeenByPeer;
        let relay: SocketAddr = "203.0.113.5:61000"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let seen = |port: u16, mapping| SeenByPeer {
            addr: SocketAddr::new(relay.ip(), port),
            relay_saw: Some(relay),
            mapping: Some(mapping),
        };
        assert_eq!(nat_report(Vec::new()).mapping, "unknown");
        let lan = SeenByPeer {
            addr: "192.168.1.9:4000".parse().unwrap_or_else(|e| panic!("{e}")),
            relay_saw: Some(relay),
            mapping: None,
        };
        let lan = nat_report(vec![("laptop".into(), lan)]);
        assert_eq!(lan.mapping, "unknown");
        assert!(
            lan.summary.contains("laptop at 192.168.1.9:4000"),
            "{}",
            lan.summary
        );
        let cone = nat_report(vec![(
            "phone".into(),
            seen(61000, NatMapping::EndpointIndependent),
        )]);
        assert_eq!(cone.mapping, "endpoint-independent");
        assert_eq!(
            cone.summary,
            "one mapping for every destination (a cone NAT): the relay and phone see this device at 203.0.113.5:61000"
        );
        let symmetric = nat_report(vec![
            ("phone".into(), seen(61000, NatMapping::EndpointIndependent)),
            ("tablet".into(), seen(61007, NatMapping::EndpointDependent)),
        ]);
        assert_eq!(symmetric.mapping, "endpoint-dependent");
        assert_eq!(
            symmetric.summary,
            "a mapping per destination: the relay sees this device at 203.0.113.5:61000, tablet at 203.0.113.5:61007 (a symmetric NAT, or a port-preserving one that found the port taken towards that peer)"
        );
        assert_eq!(symmetric.seen_by.len(), 2);
    }

    #[test]
    fn the_path_reason_gives_the_measured_round_trips() {
        let mut closed = on(PathKind::Direct);
        (closed.path, closed.status) = (None, Some(SessionStatus::Closed));
        assert!(path_reason(&closed, None).contains("the peer said goodbye"));
        assert_eq!(
            path_reason(&on(PathKind::Direct), None),
            "direct: validated path (12 ms; the relay answered in 45 ms)"
        );
        let mut relayed = on(PathKind::Relay);
        relayed.direct_declined = Some(DeclinedDirect {
            direct_rtt_ms: 240,
            relay_rtt_ms: 45,
            fell_back_with_missed: None,
            fell_back_with_loss: None,
            retry_after_s: None,
        });
        assert_eq!(
            path_reason(&relayed, None),
            "relay: a direct path answered in 240 ms, the relay in 45 ms (a direct path is taken unless more than 10 ms slower)"
        );
        relayed.direct_declined = Some(DeclinedDirect {
            direct_rtt_ms: 340,
            relay_rtt_ms: 45,
            fell_back_with_missed: Some(2),
            fell_back_with_loss: None,
            retry_after_s: None,
        });
        assert_eq!(
            path_reason(&relayed, None),
            "relay: fell back from the direct path (340 ms, 2 of its last 16 heartbeats late; the relay 45 ms); a direct path is retried after 30 s"
        );
        relayed.direct_declined = Some(DeclinedDirect {
            direct_rtt_ms: 41,
            relay_rtt_ms: 45,
            fell_back_with_missed: Some(0),
            fell_back_with_loss: Some((14, Some(1))),
            retry_after_s: Some(60),
        });
        assert_eq!(
            path_reason(&relayed, None),
            "relay: fell back from the direct path (41 ms, 0 of its last 16 heartbeats late, 14 % of its packets lost against 1 % on the relay; the relay 45 ms); a direct path is retried after 60 s"
        );
        relayed.direct_declined = None;
        assert!(path_reason(&relayed, None).starts_with("relay: no direct path answered"));
    }
}
