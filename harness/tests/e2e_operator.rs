//! End to end with real processes: the operator's commands and what they show.
//! `tether ping` between two nodes on loopback (and to a peer whose node is gone),
//! `tether netcheck` against a running relay, one with another key and an address
//! where nothing answers, the fields of `tether status` (the NAT line, which netcheck
//! also gets from a running node, among them), and the logs that explain a
//! failure once: an unreachable relay (and its return), refused handshakes.
//!
//! Every process is killed when its guard drops. Nothing sleeps: every wait reads
//! output, or polls the control socket, with a deadline.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{command, field, run, tail, Deployment, Proc, TETHER};

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

fn status_json(dir: &Path, socket: &str) -> serde_json::Value {
    let text = run(dir, TETHER, &["status", "--json", "--socket", socket]);
    serde_json::from_str(&text).unwrap()
}

/// Polls `socket`'s status until `wanted` holds, before `until`; the report.
fn status_until(
    dir: &Path,
    socket: &str,
    node: &Proc,
    until: Instant,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let report = status_json(dir, socket);
        if wanted(&report) {
            return report;
        }
        assert!(
            Instant::now() < until,
            "{socket}: not reached: {report}\nstderr:\n{}",
            tail(&node.stderr_text())
        );
    }
}

/// Starts `tether node` for `name` with `config` written to `NAME.toml`; the process
/// and the address it listens on.
fn start_node(dir: &Path, name: &str, config: &str) -> (Proc, String) {
    std::fs::write(dir.join(format!("{name}.toml")), config).unwrap();
    let toml = format!("{name}.toml");
    let node = Proc::start(dir, name, TETHER, &["node", "--config", &toml]);
    let listen = node.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:")
            .then(|| field(l, "listen").unwrap().to_string())
    });
    (node, listen)
}

/// Starts node `who` on loopback whose entry for its peer lists `peer_addr` (the
/// peer's node listens there).
fn start_node_knowing(
    dir: &Path,
    deployment: &Deployment,
    who: &str,
    peer_addr: &str,
) -> (Proc, String) {
    let entry = deployment
        .peers_entry(who)
        .replace("addresses = []", &format!("addresses = [\"{peer_addr}\"]"));
    let config = deployment.node_config(who, who, "127.0.0.1:0", "", &entry);
    start_node(dir, who, &config)
}

/// Two nodes `a` and `b` (b knows a's address) with a session Ready on both sides.
fn two_ready_nodes(dir: &Path, deployment: &Deployment) -> (Proc, Proc) {
    let a_config =
        deployment.node_config("a", "a", "127.0.0.1:0", "", &deployment.peers_entry("a"));
    let (a, a_addr) = start_node(dir, "a", &a_config);
    let (b, _) = start_node_knowing(dir, deployment, "b", &a_addr);
    let ready = |r: &serde_json::Value| r["peers"][0]["status"] == "Ready";
    status_until(dir, "a.sock", &a, deadline(30), ready);
    status_until(dir, "b.sock", &b, deadline(30), ready);
    (a, b)
}

fn output(dir: &Path, args: &[&str]) -> std::process::Output {
    command(dir, TETHER, args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ping_measures_round_trips_and_status_shows_what_the_session_did() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deployment = Deployment::start(d);
    let (a, mut b) = two_ready_nodes(d, &deployment);

    // Three answered probes, each with its path and RTT, then the summary.
    let out = output(
        d,
        &[
            "ping",
            "b",
            "--count",
            "3",
            "--interval",
            "50ms",
            "--json",
            "--socket",
            "a.sock",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, probe) in lines[..3].iter().enumerate() {
        assert_eq!(probe["probe"], i as u64 + 1, "{probe}");
        assert_eq!(probe["peer"], "b", "{probe}");
        assert_eq!(probe["answered"], true, "{probe}");
        assert_eq!(probe["path"], "direct", "{probe}");
        assert!(
            probe["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{probe}"
        );
        let rtt = probe["rtt_ms"].as_f64().unwrap();
        assert!(rtt > 0.0 && rtt < 2000.0, "{probe}");
    }
    let summary = &lines[3];
    assert_eq!(summary["summary"], true);
    assert_eq!(
        (summary["sent"].as_u64(), summary["received"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(summary["min_ms"].as_f64().unwrap() <= summary["max_ms"].as_f64().unwrap());

    // The answers on the direct path said where b sees a: one of a's own addresses, so
    // no NAT; status shows it, and so does netcheck, which asks the running node.
    let report = status_json(d, "a.sock");
    assert_eq!(report["nat"]["mapping"], "none", "{report}");
    assert_eq!(report["nat"]["seen_by"][0]["peer"], "b", "{report}");
    let out = output(d, &["netcheck", "--config", "a.toml", "--json"]);
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["nat_mapping"], "none", "{check}");
    let out = output(d, &["status", "--socket", "a.sock"]);
    assert!(
        text(&out.stdout)
            .contains("\nNAT: none: the relay and b see this device at an interface address\n"),
        "{}",
        text(&out.stdout)
    );

    // The text form, by public key prefix.
    let b_key = status_json(d, "a.sock")["peers"][0]["device"]
        .as_str()
        .unwrap()
        .to_string();
    let out = output(d, &["ping", &b_key[..12], "-n", "1", "--socket", "a.sock"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.starts_with("pong from b via direct 127.0.0.1:"),
        "{printed}"
    );
    assert!(
        printed.contains("--- b: 1 probes sent, 1 answered; rtt min/avg/max"),
        "{printed}"
    );

    // Messages: accepted and acknowledged on the sender, received on the receiver.
    for text in ["one", "two"] {
        run(d, TETHER, &["send", "--socket", "a.sock", "b", text]);
    }
    let report = status_until(d, "a.sock", &a, deadline(30), |r| {
        r["peers"][0]["acknowledged"] == 2
    });
    let p = &report["peers"][0];
    assert_eq!(
        (p["accepted"].as_u64(), p["sent"].as_u64()),
        (Some(2), Some(2)),
        "{p}"
    );
    assert_eq!(p["queued"], 0, "{p}");
    assert_eq!(p["id"].as_str().unwrap(), &b_key[..16], "{p}");
    assert_eq!(p["path_reason"], "direct: validated path", "{p}");
    assert!(p["last_seen_ms_ago"].as_u64().unwrap() < 10_000, "{p}");
    let handshake_at = p["last_handshake_unix_ms"].as_u64().unwrap();
    assert!(
        handshake_at <= report["generated_unix_ms"].as_u64().unwrap(),
        "{report}"
    );
    assert!(p["last_handshake_ms_ago"].as_u64().is_some(), "{p}");
    assert!(p["handshakes"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["handshake_attempts"].as_u64().unwrap() >= p["handshakes"].as_u64().unwrap());
    let relay = &report["server_clients"]["relay_connection"];
    assert_eq!(relay["state"], "connected", "{report}");
    assert_eq!(relay["addr"], deployment.relay_addr.as_str(), "{report}");
    let b_report = status_until(d, "b.sock", &b, deadline(30), |r| {
        r["peers"][0]["received"] == 2
    });
    assert_eq!(
        b_report["peers"][0]["delivered"], 2,
        "older name, same count"
    );
    // The text status says the same.
    let status = run(d, TETHER, &["status", "--socket", "a.sock"]);
    assert!(
        status.contains(&format!("relay {}: connected", deployment.relay_addr)),
        "{status}"
    );
    assert!(status.contains("b ("), "{status}");
    assert!(status.contains("last seen "), "{status}");
    assert!(status.contains("path: direct: validated path"), "{status}");
    assert!(
        status.contains("b: messages accepted 2, acknowledged by the peer 2, waiting for its acknowledgement 0; received 0"),
        "{status}"
    );

    // B goes away: every probe says why, and the command fails.
    assert!(b.terminate().success());
    let out = output(
        d,
        &[
            "ping",
            "b",
            "-n",
            "2",
            "-i",
            "100ms",
            "--timeout",
            "500ms",
            "--socket",
            "a.sock",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let printed = text(&out.stdout);
    assert_eq!(
        printed
            .lines()
            .filter(|l| l.starts_with("no pong from b (probe"))
            .count(),
        2,
        "{printed}"
    );
    assert!(
        printed.contains("no session (Closed)") || printed.contains("timeout"),
        "{printed}"
    );
    assert!(
        printed.contains("--- b: 2 probes sent, 0 answered"),
        "{printed}"
    );
    let error = text(&out.stderr);
    assert!(
        error.starts_with("error: no probe to b was answered"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");

    // An unknown peer is an error, at once.
    let out = output(d, &["ping", "nobody", "--socket", "a.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown peer"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn netcheck_reaches_the_relay_and_says_what_is_wrong_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deployment = Deployment::start(d);
    let peers = deployment.peers_entry("a");
    let config =
        |relay: (&str, &str)| common::node_config(relay, "a", "a", "0.0.0.0:0", "", &peers);
    std::fs::write(
        d.join("a.toml"),
        config((&deployment.relay_addr, &deployment.relay_public)),
    )
    .unwrap();

    let out = output(d, &["netcheck", "--config", "a.toml"]);
    let printed = text(&out.stdout);
    assert!(out.status.success(), "{printed}{}", text(&out.stderr));
    assert!(
        printed.contains("udp: works (QUIC handshake with the relay completed in"),
        "{printed}"
    );
    assert!(printed.contains("relay key: proved"), "{printed}");
    // The relay reports where it sees this machine: on loopback, no NAT.
    assert!(
        printed.contains("reflexive address (as the relay sees this machine): 127.0.0.1:"),
        "{printed}"
    );
    assert!(printed.contains("\nNAT: "), "{printed}");
    assert!(printed.contains("not checked: "), "{printed}");
    let out = output(d, &["netcheck", "--config", "a.toml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["relay"]["udp"], true, "{report}");
    assert_eq!(report["relay"]["check"]["outcome"], "ok", "{report}");
    assert!(report["announce"].is_array(), "{report}");
    assert!(
        report["reflexive_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{report}"
    );

    // Pinned to another key: the relay proves its own, and netcheck says so.
    let other = run(d, TETHER, &["keygen", "--out", "other.key"])
        .trim()
        .to_string();
    std::fs::write(
        d.join("wrong.toml"),
        config((&deployment.relay_addr, &other)),
    )
    .unwrap();
    let out = output(d, &["netcheck", "--config", "wrong.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let error = text(&out.stderr);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with("error: wrong key: the relay at"),
        "{error}"
    );
    assert!(error.contains(&deployment.relay_public), "{error}");
    assert!(
        text(&out.stdout).contains("udp: works"),
        "UDP worked all the same"
    );

    // Nothing answers at the address.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    std::fs::write(
        d.join("silent.toml"),
        config((&silent_addr, &deployment.relay_public)),
    )
    .unwrap();
    let out = output(
        d,
        &["netcheck", "--config", "silent.toml", "--timeout", "500ms"],
    );
    assert_eq!(out.status.code(), Some(1));
    let error = text(&out.stderr);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with(&format!("error: the relay at {silent_addr} is unreachable")),
        "{error}"
    );
    assert!(text(&out.stdout).contains("udp: no QUIC connection to the relay"));
}

#[test]
fn an_unreachable_relay_is_logged_once_shown_in_status_and_its_return_logged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let relay_public = run(d, TETHER, &["keygen", "--out", "relay.key"])
        .trim()
        .to_string();
    let pairing = run(d, TETHER, &["pair", "a.key", "b.key"]);
    // A port where nothing listens yet.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay_addr = format!("127.0.0.1:{port}");
    let config = common::node_config(
        (&relay_addr, &relay_public),
        "a",
        "a",
        "127.0.0.1:0",
        "[transport]\ndial_timeout_ms = 200\n",
        &common::peers_entry(&pairing, "a"),
    );
    let (a, _) = start_node(d, "a", &config);
    let report = status_until(d, "a.sock", &a, deadline(60), |r| {
        let relay = &r["server_clients"]["relay"];
        let attempts = relay["dial_failures"].as_u64().unwrap_or(0)
            + relay["connect_timeouts"].as_u64().unwrap_or(0);
        attempts >= 3
    });
    let relay = &report["server_clients"]["relay_connection"];
    assert_eq!(relay["state"], "unreachable", "{report}");
    assert!(relay["since_unix_ms"].as_u64().is_some(), "{report}");
    let status = run(d, TETHER, &["status", "--socket", "a.sock"]);
    assert!(
        status.contains(&format!("relay {relay_addr}: unreachable since ")),
        "{status}"
    );
    assert!(status.contains("; last failure: "), "{status}");
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains("relay unreachable"))
            .count()
    };
    assert_eq!(
        warnings(&a.stderr_text()),
        1,
        "once:\n{}",
        tail(&a.stderr_text())
    );

    // The relay comes up on that port: the node connects and says so, once.
    std::fs::write(
        d.join("relay.toml"),
        format!(
            "key_file = \"relay.key\"\nlisten = \"{relay_addr}\"\n{}\n",
            common::relay_allow(&pairing)
        ),
    )
    .unwrap();
    let relay_proc = Proc::start(d, "relay", TETHER, &["relay", "--config", "relay.toml"]);
    relay_proc.wait_for(deadline(30), |l| {
        l.starts_with("tether relay ready:").then_some(())
    });
    status_until(d, "a.sock", &a, deadline(60), |r| {
        r["server_clients"]["relay_connection"]["state"] == "connected"
    });
    let log = a.stderr_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("relay reachable again"))
            .count(),
        1,
        "{}",
        tail(&log)
    );
    assert_eq!(warnings(&log), 1, "{}", tail(&log));
}

#[test]
fn refused_handshakes_are_logged_once_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deployment = Deployment::start(d);
    // B's entry for A holds another relationship key: A's initiations name a session B
    // does not know.
    let b_entry = deployment.peers_entry("b");
    let rk = b_entry
        .lines()
        .find_map(|l| l.strip_prefix("relationship_key = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    // Every hex digit one higher: another key, never all zeros (which a config refuses)
    // unless the original was all `f`.
    let other_rk: String = rk
        .chars()
        .map(|c| {
            let digit = c.to_digit(16).unwrap();
            char::from_digit((digit + 1) % 16, 16).unwrap()
        })
        .collect();
    let b_config = deployment.node_config(
        "b",
        "b",
        "127.0.0.1:0",
        "",
        &b_entry.replace(&rk, &other_rk),
    );
    let (b, b_addr) = start_node(d, "b", &b_config);
    let (_a, _) = start_node_knowing(d, &deployment, "a", &b_addr);
    status_until(d, "b.sock", &b, deadline(60), |r| {
        r["rejected"]["by_reason"]["handshake_unknown_device"]
            .as_u64()
            .unwrap_or(0)
            >= 4
    });
    let log = b.stderr_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refusing handshakes from an unknown device"))
        .collect();
    assert_eq!(warnings.len(), 1, "once, not per retry:\n{}", tail(&log));
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
}
