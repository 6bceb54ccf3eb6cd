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
fn relay_delivers_every_envelope_between_connected_devices() {
    for path in ["queue", "forward"] {
        let report = bench_json(&[
            "bench",
            "relay",
            "--devices",
            "6",
            "--envelopes",
            "300",
            "--path",
            path,
            "--json",
        ]);
        assert_eq!(report["devices"], 6, "{report}");
        assert_eq!(report["envelopes"], 300, "{report}");
        assert_eq!(report["path"], path, "{report}");
        assert_eq!(report["delivered"], 300, "{report}");
        assert_eq!(report["refused"], 0, "{report}");
        assert_eq!(report["duplicates"], 0, "{report}");
        assert_eq!(report["lost"], 0, "{report}");
        positive(&report, "envelopes_per_s");
        let p50 = positive(&report, "p50_ms");
        let p99 = positive(&report, "p99_ms");
        assert!(p50 <= p99 && p99 <= positive(&report, "max_ms"), "{report}");
        let counters = &report["relay_counters"];
        match path {
            "queue" => {
                assert_eq!(counters["stored"], 300, "{report}");
                assert_eq!(counters["pushed"], 300, "{report}");
            }
            _ => assert_eq!(counters["forwarded"], 300, "{report}"),
        }
    }
}

#[test]
fn migration_reports_every_row_with_its_network() {
    let report = bench_json(&[
        "bench",
        "migration",
        "--seeds",
        "1",
        "--rtt",
        "40",
        "--json",
    ]);
    let rows = report["migration"].as_array().unwrap();
    // 4 ideal rows; 3 migration scenarios × (2 loss rates, jitter, detection,
    // detection with loss).
    assert_eq!(rows.len(), 4 + 3 * 5, "{report}");
    for row in rows {
        for field in [
            "scenario",
            "rtt_ms",
            "loss",
            "jitter_ms",
            "detection_ms",
            "seeds",
        ] {
            assert!(!row[field].is_null(), "{field} missing in {row}");
        }
        assert_eq!(row["rtt_ms"], 40, "{row}");
        assert_eq!(row["seeds"], 1, "{row}");
        assert_eq!(row["unrecovered"], 0, "{row}");
        assert_eq!(row["handshakes"], 0, "{row}");
        assert_eq!(row["exactly_once"], true, "{row}");
        let p50 = positive(row, "p50_rtt");
        assert!(p50 <= positive(row, "p99_rtt"), "{row}");
        let loss = row["loss"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&loss), "{row}");
    }
    let detection: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["detection_ms"].as_u64() != Some(0))
        .collect();
    assert_eq!(detection.len(), 6, "{report}");
    for row in detection {
        assert_eq!(row["detection_ms"], 250, "{row}");
        // The time counts from the change, so it includes the detection delay.
        assert!(positive(row, "p50_ms") >= 250.0, "{row}");
    }
    assert!(rows.iter().any(|r| r["loss"] == 0.05), "{report}");
    assert!(rows.iter().any(|r| r["jitter_ms"] == 10), "{report}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        &["bench", "throughput", "--seconds", "0"][..],
        &["bench", "throughput", "--seconds", "nan"],
        &["bench", "sessions", "--count", "0"],
        &["bench", "relay", "--devices", "1"],
        &["bench", "relay", "--bytes", "8"],
        &["bench", "migration", "--seeds", "0"],
        &["bench", "migration", "--only", "no such row"],
    ] {
        let out = Command::new(TETHER).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
