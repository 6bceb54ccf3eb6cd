//! End to end on real loopback sockets, real processes: `tether relay` and two
//! `tether node`s with keys from `tether keygen` / `tether pair`. Messages flow both
//! ways while one node is told `tether migrate --bind 127.0.0.2`; then `tether status
//! --json` must show both sides Ready with the same handshake count and PeerSecret as
//! before, and `tether watch` must have seen every message once, in order.
//!
//! Every process is killed when its guard drops, so a failing assertion leaves nothing
//! running. Nothing sleeps: every wait reads output lines with a deadline.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::nodes::assert_same_session;
use common::{field, run, tail, Deployment, Proc, TETHER};

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

fn status_json(dir: &Path, socket: &str) -> serde_json::Value {
    let text = run(dir, TETHER, &["status", "--json", "--socket", socket]);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    report["peers"][0].clone()
}

/// The texts delivered from `peer` that a watch has shown, in order.
fn delivered(seen: &[serde_json::Value], peer: &str) -> Vec<String> {
    seen.iter()
        .filter(|e| e["event"] == "delivered" && e["peer"] == peer)
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_nodes_and_a_relay_migrate_on_loopback_without_a_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deadline = |secs| Instant::now() + Duration::from_secs(secs);

    let deployment = Deployment::start(d);
    // Node A first (it does not know B's address), then B (which knows A's).
    let node_config = |name: &str, peers: String, extra: &str| {
        deployment.node_config(name, name, "127.0.0.1:0", extra, &peers)
    };
    let entry_for = |who: &str| deployment.peers_entry(who);
    let a_config = node_config(
        "a",
        entry_for("a"),
        "log_format = \"json\"\nmetrics_addr = \"127.0.0.1:0\"",
    );
    std::fs::write(d.join("a.toml"), &a_config).unwrap();
    let a = Proc::start(d, "a", TETHER, &["node", "--config", "a.toml"]);
    let (a_addr, a_metrics) = a.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:").then(|| {
            (
                field(l, "listen").unwrap().to_string(),
                field(l, "metrics").unwrap().to_string(),
            )
        })
    });
    let b_entry = entry_for("b").replace("addresses = []", &format!("addresses = [\"{a_addr}\"]"));
    std::fs::write(d.join("b.toml"), node_config("b", b_entry, "")).unwrap();
    let b = Proc::start(d, "b", TETHER, &["node", "--config", "b.toml"]);
    b.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:").then_some(())
    });

    // Watch both; the stream starts with each peer's current status.
    let watch_a = Proc::start(d, "watch-a", TETHER, &["watch", "--socket", "a.sock"]);
    let watch_b = Proc::start(d, "watch-b", TETHER, &["watch", "--socket", "b.sock"]);
    let mut seen_a: Vec<serde_json::Value> = Vec::new();
    let mut seen_b: Vec<serde_json::Value> = Vec::new();
    let until_ready = deadline(30);
    watch_a.wait_for(until_ready, |l| {
        let e = json(l);
        let ready = e["event"] == "status" && e["to"] == "Ready";
        seen_a.push(e);
        ready.then_some(())
    });
    watch_b.wait_for(until_ready, |l| {
        let e = json(l);
        let ready = e["event"] == "status" && e["to"] == "Ready";
        seen_b.push(e);
        ready.then_some(())
    });

    // Phase 1: messages both ways on the established session.
    const WARM: usize = 5;
    const DURING: usize = 15;
    for i in 0..WARM {
        run(
            d,
            TETHER,
            &["send", "--socket", "a.sock", "b", &format!("from a {i}")],
        );
        run(
            d,
            TETHER,
            &["send", "--socket", "b.sock", "a", &format!("from b {i}")],
        );
    }
    let collect_until = |watch: &Proc,
                         seen: &mut Vec<serde_json::Value>,
                         from: &str,
                         count: usize,
                         until: Instant| {
        while delivered(seen, from).len() < count {
            watch.wait_for(until, |l| {
                seen.push(json(l));
                Some(())
            });
        }
    };
    collect_until(&watch_b, &mut seen_b, "a", WARM, deadline(30));
    collect_until(&watch_a, &mut seen_a, "b", WARM, deadline(30));

    // The session is settled (data went both ways): the baseline.
    let before_a = status_json(d, "a.sock");
    let before_b = status_json(d, "b.sock");
    assert_eq!(before_a["status"], "Ready");
    assert_eq!(before_b["status"], "Ready");
    assert_eq!(before_a["peer_secret"], before_b["peer_secret"]);
    assert!(before_a["peer_secret"].is_string());

    // Phase 2: messages flow from two threads while A moves to 127.0.0.2.
    let (started_tx, started_rx) = mpsc::channel();
    let senders: Vec<_> = [("a.sock", "b", "from a"), ("b.sock", "a", "from b")]
        .into_iter()
        .map(|(socket, peer, prefix)| {
            let dir = d.to_path_buf();
            let started = started_tx.clone();
            std::thread::spawn(move || {
                for i in WARM..WARM + DURING {
                    run(
                        &dir,
                        TETHER,
                        &["send", "--socket", socket, peer, &format!("{prefix} {i}")],
                    );
                    if i == WARM + 2 {
                        let _ = started.send(());
                    }
                }
            })
        })
        .collect();
    started_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let moved = run(
        d,
        TETHER,
        &["migrate", "--socket", "a.sock", "--bind", "127.0.0.2"],
    );
    assert!(moved.contains("-> 127.0.0.2:"), "{moved}");
    for sender in senders {
        sender.join().unwrap();
    }

    // Every message arrives; both sides report the migration complete.
    let total = WARM + DURING;
    let until = deadline(30);
    collect_until(&watch_b, &mut seen_b, "a", total, until);
    collect_until(&watch_a, &mut seen_a, "b", total, until);
    for (watch, seen) in [(&watch_a, &mut seen_a), (&watch_b, &mut seen_b)] {
        while !seen.iter().any(|e| e["event"] == "migration_completed") {
            watch.wait_for(until, |l| {
                seen.push(json(l));
                Some(())
            });
        }
    }
    let last_status = |seen: &[serde_json::Value]| {
        seen.iter()
            .rev()
            .find(|e| e["event"] == "status")
            .map(|e| e["to"].clone())
    };
    for (watch, seen) in [(&watch_a, &mut seen_a), (&watch_b, &mut seen_b)] {
        while last_status(seen) != Some("Ready".into()) {
            watch.wait_for(until, |l| {
                seen.push(json(l));
                Some(())
            });
        }
    }

    // Exactly once, in order.
    let expect =
        |prefix: &str| -> Vec<String> { (0..total).map(|i| format!("{prefix} {i}")).collect() };
    assert_eq!(delivered(&seen_b, "a"), expect("from a"), "A -> B");
    assert_eq!(delivered(&seen_a, "b"), expect("from b"), "B -> A");

    // Same session, no handshake, B now reaches A at 127.0.0.2.
    let after_a = status_json(d, "a.sock");
    let after_b = status_json(d, "b.sock");
    for (name, before, after) in [("A", &before_a, &after_a), ("B", &before_b, &after_b)] {
        assert_same_session(name, before, after);
        assert_eq!(after["path"], "direct", "{name}");
        assert_eq!(after["delivered"], total as u64, "{name}: delivered count");
        let direct = &after["traffic"]["direct"];
        let sent = direct["frames_sent"].as_u64().unwrap_or(0);
        let received = direct["frames_received"].as_u64().unwrap_or(0);
        assert!(
            sent >= total as u64 && received >= total as u64,
            "{name}: frames counted on the direct path: {direct}"
        );
    }
    assert_eq!(after_a["peer_secret"], after_b["peer_secret"]);
    let remote = after_b["remote"].as_str().unwrap_or_default();
    assert!(remote.starts_with("127.0.0.2:"), "B reaches A at {remote}");
    assert_eq!(after_a["session"]["migrations_completed"], 1);
    assert_eq!(after_a["session"]["migrations_failed"], 0);

    // The human-readable status, and the relay's.
    let human = run(d, TETHER, &["status", "--config", "b.toml"]);
    assert!(
        human.contains("Ready") && human.contains("127.0.0.2:"),
        "{human}"
    );
    let relay_status = run(d, TETHER, &["status", "--socket", "relay.sock"]);
    assert!(relay_status.contains("authenticated"), "{relay_status}");

    // Prometheus text on A's metrics address.
    let page = common::metrics_page(&a_metrics);
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.contains("tether_migrations_total{peer=\"b\",outcome=\"completed\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("tether_session_ready{peer=\"b\",status=\"Ready\",path=\"direct\"} 1"),
        "{page}"
    );
    let value = |series: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    assert!(
        value("tether_session_frames_total{peer=\"b\",path=\"direct\",direction=\"sent\"}")
            >= total as u64
    );
    assert!(value("tether_relay_client_events_total{kind=\"connects\"}") >= 1);
    assert_eq!(
        value("tether_handshake_failures_total{reason=\"timeout\"}"),
        0
    );

    // A's JSON log lets one follow the migration: its lines carry the session and the
    // migration span.
    let log = a.stderr_text();
    let migration_lines: Vec<serde_json::Value> = log
        .lines()
        .map(json)
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["name"] == "migration"))
        })
        .collect();
    assert!(
        migration_lines
            .iter()
            .any(|l| l["fields"]["message"] == "migration completed without a handshake"),
        "{}",
        tail(&log)
    );
    assert!(migration_lines.iter().all(|l| l["spans"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "session" && s["peer"] == "b")));
}
