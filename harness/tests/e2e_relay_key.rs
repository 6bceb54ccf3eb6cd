//! End to end with real processes: a `tether node` configured with another relay key
//! than the one `tether relay` holds. The node must refuse the relay (sending it no
//! proof), keep retrying with backoff, log the failure once rather than once per retry,
//! and show it in `tether status` (text and JSON).
//!
//! Every process is killed when its guard drops. Nothing sleeps: every wait reads
//! output with a deadline.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{run, tail, Proc, TETHER};

fn status_json(dir: &Path) -> serde_json::Value {
    let text = run(dir, TETHER, &["status", "--json", "--socket", "a.sock"]);
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_node_pinned_to_another_relay_key_refuses_the_relay_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deadline = |secs| Instant::now() + Duration::from_secs(secs);

    let relay_public = run(d, TETHER, &["keygen", "--out", "relay.key"])
        .trim()
        .to_string();
    let pinned = run(d, TETHER, &["keygen", "--out", "other.key"])
        .trim()
        .to_string();
    assert_ne!(relay_public, pinned);
    let pairing = run(d, TETHER, &["pair", "a.key", "b.key"]);
    let a_entry = pairing
        .split("# --- in ")
        .find(|s| s.starts_with("a's config"))
        .map(|s| s.split_once('\n').unwrap().1.to_string())
        .unwrap();

    let (_relay, relay_addr) = common::start_relay(d, &common::relay_allow(&pairing));

    std::fs::write(
        d.join("a.toml"),
        format!(
            "key_file = \"a.key\"\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"a.sock\"\n\n[relay]\naddr = \"{relay_addr}\"\npublic_key = \"{pinned}\"\n\n{a_entry}"
        ),
    )
    .unwrap();
    let a = Proc::start(d, "a", TETHER, &["node", "--config", "a.toml"]);
    a.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:").then_some(())
    });

    // Wait (polling the control socket, with a deadline) until the node met the relay's
    // key at least three times: several retries, each refused.
    let until = deadline(30);
    let report = loop {
        let report = status_json(d);
        let clients = &report["server_clients"];
        let retries = |client: &str| clients[client]["wrong_server_key"].as_u64().unwrap_or(0);
        if retries("relay") >= 3 {
            break report;
        }
        assert!(
            Instant::now() < until,
            "the node did not meet the relay's key three times: {report}\nstderr:\n{}",
            tail(&a.stderr_text())
        );
    };
    let clients = &report["server_clients"];
    assert_eq!(clients["relay_auth"]["status"], "wrong key", "{report}");
    let reason = clients["relay_auth"]["reason"].as_str().unwrap();
    assert!(reason.contains(&relay_public), "{reason}");
    assert_eq!(clients["relay"]["connects"], 0, "{report}");
    assert_eq!(clients["relay"]["proofs_refused"], 0, "no proof was sent");

    // The text status says it too.
    let text = run(d, TETHER, &["status", "--socket", "a.sock"]);
    assert!(
        text.contains(&format!(
            ": refused: wrong server key? (the server presents key {relay_public}"
        )),
        "{text}"
    );
    assert_eq!(
        report["server_clients"]["relay_connection"]["state"], "refused",
        "{report}"
    );

    // Logged once, not once per retry.
    let log = a.stderr_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not the configured one"))
        .collect();
    assert_eq!(warnings.len(), 1, "once:\n{}", tail(&log));
}
