//! Honest completion on a move to another address family: a node on IPv6 loopback that
//! is rebound to IPv4 can reach neither its peer nor the relay (both are IPv6 only), so
//! it must not report the migration complete nor the session Ready; moved back to IPv6,
//! it resumes the same session without a handshake. Real processes on loopback, driven
//! through the CLI.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;

use common::{field, run, Deployment, Proc, TETHER};

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn status_of_b(dir: &std::path::Path) -> serde_json::Value {
    let text = run(dir, TETHER, &["status", "--socket", "a.sock", "--json"]);
    json(&text)["peers"][0].clone()
}

#[test]
fn a_move_to_a_family_nothing_answers_on_is_not_reported_complete() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deadline = |secs| Instant::now() + Duration::from_secs(secs);
    let deployment =
        Deployment::start_with(d, "[::1]:0", |args| Proc::start(d, "relay", TETHER, args));
    let config = |name: &str, extra: &str| {
        deployment.node_config(name, name, "[::1]:0", extra, &deployment.peers_entry(name))
    };
    std::fs::write(d.join("a.toml"), config("a", "")).unwrap();
    std::fs::write(d.join("b.toml"), config("b", "")).unwrap();
    let a = Proc::start(d, "a", TETHER, &["node", "--config", "a.toml"]);
    let b = Proc::start(d, "b", TETHER, &["node", "--config", "b.toml"]);
    for node in [&a, &b] {
        node.wait_for(deadline(30), |l| {
            l.starts_with("tether node ready:")
                .then(|| field(l, "listen").map(str::to_string))
        });
    }
    let watch = Proc::start(d, "watch-a", TETHER, &["watch", "--socket", "a.sock"]);
    watch.wait_for(deadline(30), |l| {
        let e = json(l);
        (e["event"] == "status" && e["to"] == "Ready").then_some(())
    });
    let before = status_of_b(d);

    // IPv4 now: the peer and the relay are on IPv6 only.
    run(
        d,
        TETHER,
        &["migrate", "--socket", "a.sock", "--bind", "127.0.0.1"],
    );
    let honest_until = deadline(4);
    while let Some(line) = watch.next_line_before(honest_until) {
        let e = json(&line);
        assert!(
            e["event"] != "migration_completed" && !(e["event"] == "status" && e["to"] == "Ready"),
            "a path that cannot carry anything was reported working: {line}"
        );
    }
    let stranded = status_of_b(d);
    assert_ne!(stranded["status"], "Ready", "{stranded}");

    // Back on IPv6: the same session, no handshake.
    run(
        d,
        TETHER,
        &["migrate", "--socket", "a.sock", "--bind", "::1"],
    );
    watch.wait_for(deadline(20), |l| {
        let e = json(l);
        (e["event"] == "status" && e["to"] == "Ready").then_some(())
    });
    let after = status_of_b(d);
    assert_eq!(after["handshakes"], before["handshakes"], "{after}");
    assert_eq!(after["peer_secret"], before["peer_secret"], "{after}");
}
