//! Reports as Prometheus text (exposition format 0.0.4), and the small HTTP listener
//! that serves them.

use super::{
    NodeStatusReport, PathTrafficReport, PeerReport, RelayStatusReport, TransportReport,
    MIGRATION_BUCKETS_MS,
};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
        "Completed handshakes: key generations committed, one per new epoch.",
        |x| x.handshakes,
    );
    p.per_peer(
        report,
        "tether_handshake_attempts_total",
        "counter",
        "Handshake initiations sent (every retry) or answered.",
        |x| x.handshake_attempts,
    );
    p.per_peer(
        report,
        "tether_rekeys_total",
        "counter",
        "Rekeys committed: new keys for the live session after the time or volume limit.",
        |x| x.rekeys,
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
    p.per_peer(
        report,
        "tether_restart_handshakes_total",
        "counter",
        "Handshakes that brought the session back after one side restarted and lost it.",
        |x| x.restart_handshakes,
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
        "tether_udp_receive_buffer_drops_total",
        "counter",
        "UDP datagrams the kernel dropped because the socket's receive buffer was full \
         (Linux; 0 elsewhere).",
    );
    p.sample(
        "tether_udp_receive_buffer_drops_total",
        &[],
        t.receive_buffer_drops,
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
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
