//! `tether bench` runs to its end and its JSON carries the figures a script checks:
//! present, positive, every session Ready again and no handshake during the recovery.
//! No timing target is asserted here: the figures belong in docs/benchmarks.md.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// Runs `tether ARGS` and parses its one line of JSON.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(TETHER)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tether {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

fn positive(row: &serde_json::Value, field: &str) -> f64 {
    let value = row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing in {row}"));
    assert!(
        value.is_finite() && value > 0.0,
        "{field} = {value} in {row}"
    );
    value
}

#[test]
fn throughput_reports_every_message_size_against_bare_quinn() {
    let report = bench_json(&["bench", "throughput", "--seconds", "1", "--json"]);
    let rows = report["throughput"].as_array().unwrap();
    let sizes: Vec<u64> = rows
        .iter()
        .map(|r| r["message_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1024, 16 * 1024, 60 * 1024]);
    for row in rows {
        let tether = positive(row, "tether_mib_s");
        let quinn = positive(row, "quinn_mib_s");
        let ratio = positive(row, "ratio");
        assert!((ratio - tether / quinn).abs() < 0.01, "{row}");
        positive(row, "tether_messages_s");
        positive(row, "quinn_messages_s");
    }
    let cipher = report["seal_open"]["sizes"].as_array().unwrap();
    assert_eq!(cipher.len(), 3);
    for row in cipher {
        positive(row, "seal_mib_s");
        positive(row, "open_mib_s");
    }
}

#[test]
fn sessions_all_recover_from_the_hubs_network_change_without_a_handshake() {
    let report = bench_json(&["bench", "sessions", "--count", "10", "--json"]);
    let rows = report["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["sessions"], 10, "{row}");
    positive(row, "rss_kib_per_session");
    positive(row, "establish_ms");
    positive(row, "recover_ms");
    assert_eq!(row["recovered"], true, "{row}");
    assert_eq!(row["ready_after"], row["sessions"], "{row}");
    assert_eq!(row["handshakes_during_recovery"], 0, "{row}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        &["bench", "throughput", "--seconds", "0"][..],
        &["bench", "throughput", "--seconds", "nan"],
        &["bench", "sessions", "--count", "0"],
    ] {
        let out = Command::new(TETHER).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
