//! `tether demo --json`, run as the README runs it: every scenario must pass, and each
//! JSON object carries the fields the issue promises, with values that agree with the
//! verdict (no handshake and an unchanged PeerSecret for migrations; a new epoch after
//! window expiry; every message exactly once).

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::process::Command;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

fn demo(args: &[&str]) -> Vec<Value> {
    let mut command = Command::new(TETHER);
    command.arg("demo").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TETHER_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tether demo {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn common_checks(r: &Value) {
    let name = r["scenario"].as_str().unwrap();
    for key in [
        "scenario",
        "passed",
        "handshakes_before",
        "handshakes_after",
        "epoch_before",
        "epoch_after",
        "fingerprint_a",
        "fingerprint_b",
        "migration_ms",
        "rtt_ms",
        "messages_sent",
        "messages_delivered",
        "duplicates",
        "path_after",
    ] {
        assert!(r.get(key).is_some(), "{name}: no `{key}`");
    }
    assert_eq!(r["passed"], true, "{name}: {r:#}");
    assert!(r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true));
    assert_eq!(r["messages_sent"], r["messages_delivered"], "{name}");
    assert!(r["messages_sent"].as_u64().unwrap() > 0, "{name}");
    assert_eq!(r["duplicates"], 0, "{name}");
    assert!(r["fingerprint_a"]["after"].is_string(), "{name}");
    assert_eq!(
        r["fingerprint_a"]["after"], r["fingerprint_b"]["after"],
        "{name}"
    );
}

fn assert_migration_kept_the_session(r: &Value) {
    let name = r["scenario"].as_str().unwrap();
    assert_eq!(r["handshakes_before"], r["handshakes_after"], "{name}");
    assert_eq!(r["epoch_before"], r["epoch_after"], "{name}");
    assert_eq!(
        r["fingerprint_a"]["before"], r["fingerprint_a"]["after"],
        "{name}"
    );
    assert_eq!(
        r["fingerprint_b"]["before"], r["fingerprint_b"]["after"],
        "{name}"
    );
    assert!(r["migration_ms"].as_u64().is_some(), "{name}");
}

#[test]
fn every_simulated_scenario_passes() {
    let reports = demo(&["--json"]);
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "establish",
            "single-side-move",
            "direct-blocked-relay",
            "both-move",
            "window-expiry"
        ]
    );
    for r in &reports {
        common_checks(r);
        let paths = r["path_after"].as_str().unwrap();
        match r["scenario"].as_str().unwrap() {
            "establish" => {
                assert_eq!(r["handshakes_before"]["a"], 0);
                assert!(r["handshakes_after"]["a"].as_u64().unwrap() >= 1);
                assert_eq!(paths, "direct");
            }
            "direct-blocked-relay" => {
                assert_migration_kept_the_session(r);
                assert_eq!(paths, "relay");
            }
            "window-expiry" => {
                assert!(r["epoch_after"].as_u64() > r["epoch_before"].as_u64());
                assert_ne!(r["fingerprint_a"]["before"], r["fingerprint_a"]["after"]);
                assert!(r["recovery_ms"].as_u64().is_some());
            }
            _ => {
                assert_migration_kept_the_session(r);
                assert_eq!(paths, "direct");
            }
        }
    }
}

#[test]
fn the_demo_is_deterministic_for_a_seed() {
    let strip = |mut r: Value| {
        r.as_object_mut().unwrap().remove("wall_ms");
        r
    };
    let first: Vec<Value> = demo(&["--json", "--scenario", "single-side-move", "--seed", "11"])
        .into_iter()
        .map(strip)
        .collect();
    let second: Vec<Value> = demo(&["--json", "--scenario", "single-side-move", "--seed", "11"])
        .into_iter()
        .map(strip)
        .collect();
    assert_eq!(first, second);
    assert_eq!(first[0]["seed"], 11);
}

#[test]
fn the_real_socket_single_side_move_passes() {
    let reports = demo(&["--json", "--real"]);
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r["scenario"], "single-side-move-real");
    assert_eq!(r["network"], "loopback");
    common_checks(r);
    assert_migration_kept_the_session(r);
    assert_eq!(r["path_after"], "direct");
}
