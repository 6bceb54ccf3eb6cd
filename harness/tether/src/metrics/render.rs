//! `tether status` as text: the report rendered for people. Everything it shows comes
//! from the report (times as measured when the report was made), so the same report
//! always renders the same text.

use super::{NodeStatusReport, PeerReport, RelayStatusReport};
use std::fmt::Write as _;

fn opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or("-".to_string(), |v| v.to_string())
}

/// A duration in ms as people read it: `850 ms`, `12 s`, `4 min`, `3 h`, `2 d`.
fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{} s", ms / 1000),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        7_200_000..=172_799_999 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The relay line: connected, connecting, unreachable since when, or refused and why.
fn relay_line(r: &NodeStatusReport) -> String {
    let c = &r.server_clients.relay_connection;
    let auth = &r.server_clients.relay_auth;
    let state = match c.state.as_str() {
        "refused" => {
            let why = match auth.status.as_str() {
                "wrong key" => "wrong server key?",
                other => other,
            };
            match &auth.reason {
                Some(reason) => format!("refused: {why} ({reason})"),
                None => format!("refused: {why}"),
            }
        }
        "unreachable" => {
            let since = c.since_unix_ms.map_or(String::new(), |since| {
                let age = r.generated_unix_ms.saturating_sub(since);
                format!(" since {} ({} ago)", utc(since), ago(age))
            });
            format!("unreachable{since}; last failure: {}", opt(&c.last_failure))
        }
        "connecting" => match &c.last_failure {
            Some(failure) => format!("connecting (last failure: {failure})"),
            None => "connecting".to_string(),
        },
        other => other.to_string(),
    };
    format!("relay {}: {state}\n", c.addr)
}

fn peer_details(p: &PeerReport) -> String {
    let mut out = String::new();
    let seen = p
        .last_seen_ms_ago
        .map_or("never".to_string(), |ms| format!("{} ago", ago(ms)));
    let handshake = match (p.last_handshake_ms_ago, p.last_handshake_unix_ms) {
        (Some(ms), Some(at)) => format!("{} ago ({})", ago(ms), utc(at)),
        (Some(ms), None) => format!("{} ago", ago(ms)),
        (None, Some(at)) => utc(at),
        (None, None) => "none".to_string(),
    };
    let _ = writeln!(
        out,
        "{} ({}): last seen {seen}; last handshake {handshake}; path: {}",
        p.name,
        p.id,
        p.path_reason.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "{}: messages accepted {}, acknowledged by the peer {}, waiting for its acknowledgement {}; received {}",
        p.name, p.accepted, p.acknowledged, p.queued, p.received
    );
    let _ = writeln!(
        out,
        "{}: handshakes completed {} (of them rekeys {}), attempts {} (initiations sent or answered); peer rekeys deferred while not Ready {}",
        p.name, p.handshakes, p.rekeys, p.handshake_attempts, p.rekeys_refused
    );
    let s = &p.session;
    let _ = writeln!(
        out,
        "{}: sessions started {}, evicted {}, closed {}; handshakes completed {}; migrations started {}, completed {}, failed {}; up {} s direct, {} s relay",
        p.name, s.sessions_started, s.sessions_evicted, s.sessions_closed, s.handshakes_completed,
        s.migrations_started, s.migrations_completed, s.migrations_failed, s.direct_ms / 1000, s.relay_ms / 1000
    );
    let (d, r) = (&p.traffic.direct, &p.traffic.relay);
    let _ = writeln!(
        out,
        "{}: frames direct sent {} ({} B) received {} ({} B), relay sent {} ({} B) received {} ({} B); gave up on {} handshakes, {} reconnects; {} handshakes after a restart",
        p.name, d.frames_sent, d.bytes_sent, d.frames_received, d.bytes_received,
        r.frames_sent, r.bytes_sent, r.frames_received, r.bytes_received,
        p.handshake_timeouts, p.reconnect_timeouts, p.restart_handshakes
    );
    out
}

/// A node's status as `tether status` prints it.
pub fn render_node_status(r: &NodeStatusReport) -> String {
    let mut out = format!(
        "device {} on {}, up {} s\n",
        r.device,
        r.listen,
        r.uptime_ms / 1000
    );
    out.push_str(&relay_line(r));
    let replaced = r.server_clients.relay.get("replaced").copied().unwrap_or(0);
    if replaced > 0 {
        let _ = writeln!(
            out,
            "relay: our connection was replaced {replaced} times by another connection \
             with this device's key (a second instance with the same key file?)"
        );
    }
    if !r.nat.summary.is_empty() {
        let _ = writeln!(out, "NAT: {}", r.nat.summary);
    }
    let _ = writeln!(
        out,
        "{:<12} {:<16} {:<20} {:<6} {:<22} {:>5} {:>10} {:<16} {:>6} {:>9} {:>8} {:>5} {:>8} {:>10} {:>14}",
        "peer",
        "id",
        "status",
        "path",
        "remote",
        "epoch",
        "handshakes",
        "PeerSecret",
        "rtt",
        "last seen",
        "accepted",
        "acked",
        "received",
        "migrations",
        "last migration"
    );
    for p in &r.peers {
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:<20} {:<6} {:<22} {:>5} {:>10} {:<16} {:>6} {:>9} {:>8} {:>5} {:>8} {:>10} {:>14}",
            p.name,
            p.id,
            opt(&p.status),
            opt(&p.path),
            opt(&p.remote),
            opt(&p.epoch),
            p.handshakes,
            opt(&p.peer_secret),
            p.rtt_ms.map_or("-".into(), |v| format!("{v}ms")),
            p.last_seen_ms_ago.map_or("-".into(), ago),
            p.accepted,
            p.acknowledged,
            p.received,
            p.session.migrations_completed,
            p.last_migration_ms.map_or("-".into(), |v| format!("{v}ms")),
        );
    }
    for p in &r.peers {
        out.push_str(&peer_details(p));
    }
    let t = &r.transport;
    let _ = writeln!(
        out,
        "udp: sent {} datagrams / {} bytes, received {} / {}; dropped by the kernel (receive buffer full) {}; rebinds {}",
        t.datagrams_sent, t.bytes_sent, t.datagrams_received, t.bytes_received,
        t.receive_buffer_drops, t.rebinds
    );
    let rejected: Vec<String> = r
        .rejected
        .by_reason
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "rejected input: {}",
        if rejected.is_empty() {
            "none".to_string()
        } else {
            rejected.join(" ")
        }
    );
    out
}

/// A relay's status as `tether status` prints it.
pub fn render_relay_status(r: &RelayStatusReport) -> String {
    let mut out = format!(
        "relay {} on {}, up {} s\n",
        r.public_key,
        r.listen,
        r.uptime_ms / 1000
    );
    let held = |k: &str| r.holding.get(k).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "holding {} envelopes ({} bytes), {} rendezvous ids; {} connections",
        held("stored_envelopes"),
        held("stored_bytes"),
        held("rendezvous_ids"),
        held("connections")
    );
    for (k, v) in &r.counters {
        let _ = writeln!(out, "{k:<28} {v}");
    }
    let t = &r.transport;
    let _ = writeln!(
        out,
        "udp: sent {} datagrams / {} bytes, received {} / {}; dropped by the kernel (receive buffer full) {}",
        t.datagrams_sent, t.bytes_sent, t.datagrams_received, t.bytes_received,
        t.receive_buffer_drops
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{
        PathTrafficReport, RejectedReport, RelayConnectionReport, ServerAuthReport,
        ServerClientsReport, SessionMetrics, TrafficReport, TransportReport,
    };

    const NOW: u64 = 1_700_000_000_000;

    fn peer(name: &str, hex: &str) -> PeerReport {
        PeerReport {
            name: name.into(),
            device: hex.repeat(64 / hex.len()),
            id: hex.repeat(16 / hex.len()),
            status: Some("Ready".into()),
            path: Some("direct".into()),
            remote: Some("192.0.2.7:7001".into()),
            epoch: Some(2),
            handshakes: 2,
            handshake_attempts: 5,
            peer_secret: Some("0123456789abcdef".into()),
            session_keys: Some("fedcba9876543210".into()),
            rtt_ms: Some(14),
            queued: 1,
            accepted: 6,
            acknowledged: 5,
            received: 4,
            sent: 6,
            delivered: 4,
            last_seen_ms_ago: Some(850),
            last_handshake_unix_ms: Some(NOW - 754_000),
            last_handshake_ms_ago: Some(754_000),
            path_reason: Some("direct: validated path".into()),
            duplicate_frames: 0,
            traffic: TrafficReport {
                direct: PathTrafficReport {
                    frames_sent: 40,
                    bytes_sent: 4000,
                    frames_received: 38,
                    bytes_received: 3900,
                },
                relay: PathTrafficReport::default(),
            },
            handshake_timeouts: 0,
            reconnect_timeouts: 0,
            restart_handshakes: 0,
            rekeys: 1,
            rekeys_refused: 0,
            migrations: 1,
            last_migration_ms: Some(61),
            session: SessionMetrics {
                sessions_started: 1,
                handshakes_completed: 2,
                migrations_started: 1,
                migrations_completed: 1,
                direct_ms: 754_000,
                ..SessionMetrics::default()
            },
        }
    }

    fn report(connection: RelayConnectionReport, auth: ServerAuthReport) -> NodeStatusReport {
        let mut relayed = peer("phone", "ab");
        relayed.path = Some("relay".into());
        relayed.remote = None;
        relayed.last_seen_ms_ago = None;
        relayed.path_reason =
            Some("relay: no direct path answered since 2023-11-14 22:13:20 UTC".into());
        NodeStatusReport {
            device: "cd".repeat(32),
            listen: "0.0.0.0:7001".into(),
            uptime_ms: 754_321,
            generated_unix_ms: NOW,
            peers: vec![peer("laptop", "7f"), relayed],
            transport: TransportReport::default(),
            rejected: RejectedReport::default(),
            server_clients: ServerClientsReport {
                relay_auth: auth,
                relay_connection: connection,
                ..ServerClientsReport::default()
            },
            nat: crate::metrics::NatReport {
                mapping: "endpoint-independent".into(),
                summary: "one mapping for every destination (a cone NAT): the relay and laptop see this device at 198.51.100.4:40001".into(),
                relay_sees: Some("198.51.100.4:40001".into()),
                seen_by: vec![crate::metrics::SeenByReport {
                    peer: "laptop".into(),
                    addr: "198.51.100.4:40001".into(),
                }],
            },
        }
    }

    #[test]
    fn status_text() {
        let connected = RelayConnectionReport {
            addr: "192.0.2.1:7300".into(),
            state: "connected".into(),
            since_unix_ms: None,
            last_failure: Some("link lost".into()),
        };
        insta::assert_snapshot!(render_node_status(&report(
            connected,
            ServerAuthReport::default()
        )));
    }

    #[test]
    fn the_relay_line_says_since_when_it_is_unreachable_or_why_it_refuses() {
        let unreachable = RelayConnectionReport {
            addr: "192.0.2.1:7300".into(),
            state: "unreachable".into(),
            since_unix_ms: Some(NOW - 45_000),
            last_failure: Some("dial failed".into()),
        };
        let refused = RelayConnectionReport {
            state: "refused".into(),
            since_unix_ms: None,
            last_failure: Some("refused: wrong server key?".into()),
            ..unreachable.clone()
        };
        let wrong = ServerAuthReport {
            status: "wrong key".into(),
            reason: Some("the server presents key 99…, not the configured one".into()),
        };
        let lines: Vec<String> = [
            render_node_status(&report(unreachable, ServerAuthReport::default())),
            render_node_status(&report(refused, wrong)),
        ]
        .iter()
        .map(|text| text.lines().nth(1).unwrap_or_default().to_string())
        .collect();
        insta::assert_snapshot!(lines.join("\n"), @r"
        relay 192.0.2.1:7300: unreachable since 2023-11-14 22:12:35 UTC (45 s ago); last failure: dial failed
        relay 192.0.2.1:7300: refused: wrong server key? (the server presents key 99…, not the configured one)
        ");
    }

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(NOW), "2023-11-14 22:13:20 UTC");
    }
}
