//! End to end, real processes on loopback: `tether send --stdin-lines` feeds 10 000
//! messages over one control connection, and the peer's `tether watch` shows every one
//! delivered once and in order (binary lines included, exactly, in the watch's `data`,
//! and without a `text`);
//! `tether send --file` carries any bytes and names the limit when a file is too big.
//! The nodes find the relay by host name (`localhost:PORT`), and the sender's queue is
//! small, so the batch waits for room in it again and again.
//!
//! Nothing sleeps: every wait reads output lines with a deadline.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use data_encoding::BASE64;
use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{command, field, run, Deployment, Proc, TETHER};

const MESSAGES: usize = 10_000;

/// Line `i` of the batch: text, except every 1000th, which is not UTF-8.
fn line(i: usize) -> Vec<u8> {
    let mut bytes = format!("message {i:05}").into_bytes();
    if i % 1000 == 7 {
        bytes.extend_from_slice(&[0xff, 0x00, 0xfe, b'\r']);
    }
    bytes
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

/// Reads `watch` until `count` messages from `peer` were delivered; their payloads
/// (decoded from `data`) and sequence numbers, in order.
fn delivered(watch: &Proc, peer: &str, count: usize, until: Instant) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < count {
        watch.wait_for(until, |l| {
            let e = json(l);
            assert_ne!(e["event"], "lagged", "the watch fell behind: {l}");
            if e["event"] == "delivered" && e["peer"] == peer {
                let data = BASE64
                    .decode(e["data"].as_str().unwrap().as_bytes())
                    .unwrap();
                assert_eq!(e["len"].as_u64(), Some(data.len() as u64));
                // `text` is the payload only when it is UTF-8, else absent.
                match std::str::from_utf8(&data) {
                    Ok(text) => assert_eq!(e["text"].as_str(), Some(text), "{l}"),
                    Err(_) => assert!(e.get("text").is_none(), "{l}"),
                }
                out.push((e["seq"].as_u64().unwrap(), data));
            }
            Some(())
        });
    }
    out
}

#[test]
fn ten_thousand_lines_over_one_connection_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deadline = |secs| Instant::now() + Duration::from_secs(secs);

    let deployment = Deployment::start(d);
    let port = deployment.relay_addr.rsplit_once(':').unwrap().1;
    let by_name = format!("localhost:{port}");
    let config = |name: &str, extra: &str, peers: String| {
        deployment
            .node_config(name, name, "127.0.0.1:0", extra, &peers)
            .replace(&deployment.relay_addr, &by_name)
    };
    // A's queue holds 100 messages: the batch must wait for room 99 times in 100.
    std::fs::write(
        d.join("a.toml"),
        config(
            "a",
            "[limits]\nmax_queued = 100",
            deployment.peers_entry("a"),
        ),
    )
    .unwrap();
    // The relay line of --check shows the name and what it resolved to.
    let check = run(d, TETHER, &["node", "--config", "a.toml", "--check"]);
    assert!(
        check.contains(&format!("relay {by_name} ({})", deployment.relay_addr)),
        "{check}"
    );
    let a = Proc::start(d, "a", TETHER, &["node", "--config", "a.toml"]);
    let a_addr = a.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:")
            .then(|| field(l, "listen").unwrap().to_string())
    });
    let b_entry = deployment
        .peers_entry("b")
        .replace("addresses = []", &format!("addresses = [\"{a_addr}\"]"));
    std::fs::write(d.join("b.toml"), config("b", "", b_entry)).unwrap();
    let b = Proc::start(d, "b", TETHER, &["node", "--config", "b.toml"]);
    b.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:").then_some(())
    });
    let watch_b = Proc::start(d, "watch-b", TETHER, &["watch", "--socket", "b.sock"]);
    watch_b.wait_for(deadline(30), |l| {
        let e = json(l);
        (e["event"] == "status" && e["to"] == "Ready").then_some(())
    });

    // The batch: one process, one connection, 10 000 lines on its standard input.
    let mut input = Vec::new();
    for i in 0..MESSAGES {
        input.extend_from_slice(&line(i));
        input.push(b'\n');
    }
    let started = Instant::now();
    let mut sender = command(
        d,
        TETHER,
        &["send", "--socket", "a.sock", "b", "--stdin-lines", "--json"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = sender.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    // The sender ends once the node accepted every line (or refused one).
    let out = sender.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    feeder.join().unwrap().unwrap();
    let summary = json(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(summary["sent"], MESSAGES, "{summary}");
    assert_eq!(summary["peer"], "b");
    let got = delivered(&watch_b, "a", MESSAGES, deadline(120));
    let all_delivered = started.elapsed();

    // Every line once, in order, byte for byte, with consecutive sequence numbers.
    for (i, (seq, payload)) in got.iter().enumerate() {
        assert_eq!(payload, &line(i), "message {i}");
        assert_eq!(*seq, got[0].0 + i as u64, "message {i}");
    }
    let status = json(&run(d, TETHER, &["status", "--json", "--socket", "b.sock"]));
    assert_eq!(
        status["peers"][0]["delivered"], MESSAGES,
        "no message delivered twice"
    );
    let rate = MESSAGES as f64 / all_delivered.as_secs_f64();
    println!(
        "batch send: {MESSAGES} lines accepted in {:.2} s ({}/s by the sender), all delivered after {:.2} s ({rate:.0} messages/s)",
        summary["seconds"].as_f64().unwrap(),
        summary["per_second"],
        all_delivered.as_secs_f64(),
    );

    // A file of any bytes is one message, exactly.
    let bytes: Vec<u8> = (0..=255_u8).cycle().take(3000).collect();
    std::fs::write(d.join("blob.bin"), &bytes).unwrap();
    let sent = json(&run(
        d,
        TETHER,
        &[
            "send", "--socket", "a.sock", "b", "--file", "blob.bin", "--json",
        ],
    ));
    let got = delivered(&watch_b, "a", 1, deadline(30));
    assert_eq!(got[0].1, bytes);
    assert_eq!(sent["seq"].as_u64(), Some(got[0].0));

    // Above the node's max_message_len (60 KiB by default): the node says so.
    std::fs::write(d.join("big.bin"), vec![7_u8; 62_000]).unwrap();
    let out = command(
        d,
        TETHER,
        &["send", "--socket", "a.sock", "b", "--file", "big.bin"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("message of 62000 bytes exceeds the maximum of 61440"),
        "{err}"
    );
}
