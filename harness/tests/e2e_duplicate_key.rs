//! End to end with real processes: a device holds one connection to the relay, and a
//! second instance started with the same key file is noticed.
//!
//! With nodes A and B connected, the relay holds two authenticated connections (one
//! per device, relay and rendezvous traffic together). Then a second node starts with
//! A's key: its connection replaces A's, and A logs a warning naming the likely cause,
//! counts it (`replaced` in `tether status --json`) and does not reconnect at once.
//!
//! Every process is killed when its guard drops. Nothing sleeps: every wait polls a
//! control socket or reads output with a deadline.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{run, tail, Deployment, Proc, TETHER};

fn status_json(dir: &Path, socket: &str) -> serde_json::Value {
    let text = run(dir, TETHER, &["status", "--json", "--socket", socket]);
    serde_json::from_str(&text).unwrap()
}

fn relay_connections(dir: &Path) -> u64 {
    status_json(dir, "relay.sock")["holding"]["connections"]
        .as_u64()
        .unwrap()
}

fn relay_connects(dir: &Path, socket: &str) -> u64 {
    status_json(dir, socket)["server_clients"]["relay"]["connects"]
        .as_u64()
        .unwrap_or(0)
}

const WARNING: &str = "another connection proved this device's key";

#[test]
fn one_relay_connection_per_device_and_a_second_instance_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deadline = |secs| Instant::now() + Duration::from_secs(secs);
    let relay = Deployment::start(d);
    // Each instance has its own data directory, as on another machine (on one machine
    // the second instance of a key already fails to open the first one's store).
    let start = |name: &str, key: &str, peer: &str| {
        let data_dir = format!("data_dir = \"{name}-data\"\n");
        let config = relay.node_config(
            name,
            key,
            "127.0.0.1:0",
            &data_dir,
            &relay.peers_entry(peer),
        );
        std::fs::write(d.join(format!("{name}.toml")), config).unwrap();
        let node = Proc::start(
            d,
            name,
            TETHER,
            &["node", "--config", &format!("{name}.toml")],
        );
        node.wait_for(deadline(30), |l| {
            l.starts_with("tether node ready:").then_some(())
        });
        node
    };
    let a = start("a", "a", "a");
    let _b = start("b", "b", "b");

    // Both authenticated: the relay holds exactly one connection per device.
    let until = deadline(30);
    while relay_connects(d, "a.sock") == 0 || relay_connects(d, "b.sock") == 0 {
        assert!(Instant::now() < until, "the nodes did not reach the relay");
    }
    assert_eq!(relay_connections(d), 2, "one connection per device");

    // A second instance with A's key: A's connection is replaced, A says why.
    let second = start("a2", "a", "a");
    let until = deadline(30);
    while !a.stderr_text().contains(WARNING) {
        assert!(
            Instant::now() < until,
            "A did not notice the second instance; stderr:\n{}",
            tail(&a.stderr_text())
        );
    }
    let report = status_json(d, "a.sock");
    assert_eq!(report["server_clients"]["relay"]["replaced"], 1, "{report}");
    let text = run(d, TETHER, &["status", "--socket", "a.sock"]);
    assert!(
        text.contains("replaced 1 times by another connection with this device's key"),
        "{text}"
    );
    assert!(
        !second.stderr_text().contains(WARNING),
        "the newer instance holds the connection"
    );
    // A waits the longest backoff (30 s) before it tries again: meanwhile the relay
    // holds the second instance's connection and B's.
    assert_eq!(relay_connections(d), 2);
    assert_eq!(relay_connects(d, "a.sock"), 1);
}
