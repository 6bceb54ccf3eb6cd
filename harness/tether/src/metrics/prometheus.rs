//! Reports as Prometheus text (exposition format 0.0.4, encoded by `prometheus-client`).
//!
//! A report is a snapshot taken at scrape time, so its metrics are families of
//! constant samples handed to the encoder through a [`Collector`], rather than live
//! counters in a registry.

use super::{
    Histogram, NodeStatusReport, PathTrafficReport, PeerReport, RelayStatusReport, TransportReport,
    MIGRATION_BUCKETS_MS,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The HTTP `Content-Type` of the text [`node_prometheus`] and [`relay_prometheus`]
/// write (exposition format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A series' labels, in order.
type Labels = Vec<(String, String)>;

/// One metric family and its samples.
#[derive(Debug)]
struct Family {
    /// The full name (a counter's with its `_total`).
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Labels, u64)>,
    histograms: Vec<(Labels, Histogram)>,
}

/// The families of one report, in the order they are written.
#[derive(Debug, Default)]
struct Prom {
    families: Vec<Family>,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let kind = match kind {
            "counter" => MetricType::Counter,
            "histogram" => MetricType::Histogram,
            _ => MetricType::Gauge,
        };
        self.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples: Vec::new(),
            histograms: Vec::new(),
        });
    }

    /// A sample of the family opened last.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        if let Some(family) = self.families.last_mut() {
            debug_assert_eq!(family.name, name);
            family.samples.push((owned(labels), value));
        }
    }

    /// A histogram series of the family opened last.
    fn histogram(&mut self, labels: &[(&str, &str)], histogram: &Histogram) {
        if let Some(family) = self.families.last_mut() {
            family.histograms.push((owned(labels), histogram.clone()));
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

    /// The families as Prometheus text.
    fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String fails only if a collector does, and ours do not.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

impl Collector for Prom {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            // The encoder adds a counter's `_total` itself.
            let name = match family.kind {
                MetricType::Counter => family.name.strip_suffix("_total").unwrap_or(&family.name),
                _ => &family.name,
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let mut series = metric.encode_family(labels)?;
                match family.kind {
                    MetricType::Counter => {
                        series.encode_counter::<NoLabelSet, _, u64>(value, None)?;
                    }
                    _ => series.encode_gauge(value)?,
                }
            }
            for (labels, h) in &family.histograms {
                // The report's buckets are cumulative; the encoder wants each bucket's own.
                let mut below = 0;
                let buckets: Vec<(f64, u64)> = MIGRATION_BUCKETS_MS
                    .iter()
                    .enumerate()
                    .map(|(i, bound)| {
                        let at_or_below = h.buckets.get(i).copied().unwrap_or(below);
                        let own = at_or_below.saturating_sub(below);
                        below = at_or_below;
                        (*bound as f64, own)
                    })
                    .collect();
                let none: Option<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>> =
                    None;
                metric.encode_family(labels)?.encode_histogram(
                    h.sum_ms as f64,
                    h.count,
                    &buckets,
                    none,
                )?;
            }
        }
        Ok(())
    }
}

/// A node's report as Prometheus text (exposition format 0.0.4).
pub fn node_prometheus(report: &NodeStatusReport) -> String {
    let mut p = Prom::default();
    p.family("tether_up", "gauge", "1 while the node runs.");
    p.sample("tether_up", &[("device", &report.device)], 1);
    p.family(
        "tether_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
    );
    p.sample("tether_uptime_seconds", &[], report.uptime_ms / 1000);
    p.family(
        "tether_nat_mapping",
        "gauge",
        "1, labelled with how this device's NAT maps as its peers on direct paths saw it: none, endpoint-independent (cone), endpoint-dependent (symmetric) or unknown.",
    );
    p.sample(
        "tether_nat_mapping",
        &[("mapping", report.nat.mapping.as_str())],
        1,
    );

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
        p.histogram(&[("peer", &peer.name)], &peer.session.migration_duration);
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
    p.render()
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
    let mut p = Prom::default();
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
    p.family(
        "tether_relay_holding",
        "gauge",
        "What the relay holds now: stored bytes and envelopes, rendezvous ids, connections.",
    );
    for (kind, value) in &report.holding {
        p.sample("tether_relay_holding", &[("kind", kind)], *value);
    }
    transport_prometheus(&mut p, &report.transport);
    p.render()
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
    fn families_keep_their_names_and_escape_label_values() {
        let mut p = Prom::default();
        p.family("tether_things_total", "counter", "Things.");
        p.sample("tether_things_total", &[("peer", "a\"b\\c\nd")], 3);
        p.family("tether_level", "gauge", "A level.");
        p.sample("tether_level", &[], 7);
        let mut h = Histogram::default();
        h.observe(30);
        h.observe(40_000);
        p.family("tether_wait_milliseconds", "histogram", "Waits.");
        p.histogram(&[("peer", "b")], &h);
        let text = p.render();
        assert!(
            text.contains("# TYPE tether_things_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("tether_things_total{peer=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("tether_level 7\n"), "{text}");
        assert!(
            text.contains("tether_wait_milliseconds_bucket{peer=\"b\",le=\"25\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("tether_wait_milliseconds_bucket{peer=\"b\",le=\"50\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tether_wait_milliseconds_bucket{peer=\"b\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("tether_wait_milliseconds_count{peer=\"b\"} 2\n"),
            "{text}"
        );
    }
}
