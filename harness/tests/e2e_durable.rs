//! End to end on real loopback sockets, real processes: a `tether relay` and two
//! `tether node`s keeping their channels in their data folders (the default, below the
//! test's `XDG_DATA_HOME`). A node killed with SIGKILL loses no message `tether send`
//! accepted and repeats none:
//! 1. B is killed; A accepts messages for it; A is killed too; both start again: B gets
//!    every one of them, once, in order (they existed only in A's store), within a
//!    bounded time of A being back.
//! 2. A is killed in the middle of a burst of sends while B receives: after A starts
//!    again, B has every accepted message once, in order (plus, at most, the one whose
//!    send was cut off by the kill).
//! 3. B is stopped with SIGTERM: A shows the session closed by the peer at once, and a
//!    `tether watch` on B exits with an error instead of silently.
//!
//! Nothing sleeps: every wait reads output lines with a deadline.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{command, Deployment, Proc, TETHER};

/// From the killed sender being up again to the first of its stored messages reaching
/// the peer: its connect jitter (at most 250 ms) and one handshake on loopback, with a
/// wide margin for a loaded machine.
const FIRST_DELIVERY_BOUND: Duration = Duration::from_secs(3);

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Collects `watch`'s delivered texts until `expected` of them arrived, and returns
/// them with the time the first came.
fn delivered(watch: &Proc, expected: usize, within: Instant) -> (Vec<String>, Instant) {
    let mut texts = Vec::new();
    let mut first = None;
    while texts.len() < expected {
        let text = watch.wait_for(within, |l| {
            let e = json(l);
            (e["event"] == "delivered").then(|| e["text"].as_str().unwrap_or("").to_string())
        });
        first.get_or_insert_with(Instant::now);
        texts.push(text);
    }
    (texts, first.unwrap_or_else(Instant::now))
}

fn until_ready(watch: &Proc, within: Instant) {
    watch.wait_for(within, |l| {
        let e = json(l);
        (e["event"] == "status" && e["to"] == "Ready").then_some(())
    });
}

fn start_node(d: &Path, name: &str, config: &str) -> Proc {
    let node = Proc::start(d, name, TETHER, &["node", "--config", config]);
    node.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:").then_some(())
    });
    node
}

/// `tether send` through `socket`: true when the node accepted the message.
fn send(d: &Path, socket: &str, text: &str) -> bool {
    command(d, TETHER, &["send", "--socket", socket, "b", text])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn a_killed_node_loses_no_accepted_message_and_a_stopped_one_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let deployment = Deployment::start(d);
    let entry_for = |who: &str| deployment.peers_entry(who);
    let config = |socket: &str, key: &str, listen: &str, peers: &str| {
        deployment.node_config(socket, key, listen, "", peers)
    };
    // B listens on a fixed port so that every run of A finds it; each run gets its own
    // control socket (a killed process leaves its socket file behind).
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_listen = probe.local_addr().unwrap().to_string();
    drop(probe);
    let a_entry =
        entry_for("a").replace("addresses = []", &format!("addresses = [\"{b_listen}\"]"));
    for run in ["a1", "a2", "a3"] {
        std::fs::write(
            d.join(format!("{run}.toml")),
            config(run, "a", "127.0.0.1:0", &a_entry),
        )
        .unwrap();
    }
    for run in ["b1", "b2"] {
        std::fs::write(
            d.join(format!("{run}.toml")),
            config(run, "b", &b_listen, &entry_for("b")),
        )
        .unwrap();
    }

    let mut b = start_node(d, "b1", "b1.toml");
    let mut a = start_node(d, "a1", "a1.toml");
    let watch_a = Proc::start(d, "watch-a1", TETHER, &["watch", "--socket", "a1.sock"]);
    until_ready(&watch_a, deadline(30));

    // 1. The receiver is gone; the sender accepts, then dies too.
    b.kill();
    let stored: Vec<String> = (0..40).map(|i| format!("stored {i}")).collect();
    for text in &stored {
        assert!(
            send(d, "a1.sock", text),
            "A accepts {text} for an absent peer"
        );
    }
    a.kill();
    drop(watch_a);
    let mut b = start_node(d, "b2", "b2.toml");
    let watch_b = Proc::start(d, "watch-b2", TETHER, &["watch", "--socket", "b2.sock"]);
    let mut a = start_node(d, "a2", "a2.toml");
    let a_up = Instant::now();
    let (got, first_at) = delivered(&watch_b, stored.len(), deadline(30));
    let to_first = first_at.duration_since(a_up);
    eprintln!(
        "from the restarted sender up to the first stored message delivered: {} ms",
        to_first.as_millis()
    );
    assert_eq!(got, stored, "every stored message, once, in order");
    assert!(
        to_first < FIRST_DELIVERY_BOUND,
        "first stored message {to_first:?} after the sender was back"
    );

    // 2. The sender dies in the middle of a burst while the receiver takes it in.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let attempted = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (accepted, attempted) = (accepted.clone(), attempted.clone());
        let d = d.to_path_buf();
        std::thread::spawn(move || {
            for i in 0..400 {
                let text = format!("burst {i}");
                attempted.store(i + 1, Ordering::SeqCst);
                if !send(&d, "a2.sock", &text) {
                    break;
                }
                accepted.lock().unwrap().push(text);
            }
        })
    };
    // Kill A once a good part of the burst was accepted (the watch shows deliveries).
    let mut seen = Vec::new();
    while seen.len() < 60 {
        seen.extend(delivered(&watch_b, 1, deadline(30)).0);
    }
    a.kill();
    sender.join().unwrap();
    let accepted = accepted.lock().unwrap().clone();
    let cut_off = format!("burst {}", accepted.len());
    eprintln!(
        "A killed after {} sends were accepted ({} attempted)",
        accepted.len(),
        attempted.load(Ordering::SeqCst)
    );
    let _a = start_node(d, "a3", "a3.toml");
    let watch_a = Proc::start(d, "watch-a3", TETHER, &["watch", "--socket", "a3.sock"]);
    let missing = accepted.len().saturating_sub(seen.len());
    seen.extend(delivered(&watch_b, missing, deadline(30)).0);
    // Anything else that arrives within a moment is a duplicate (or the cut-off one).
    let settle = Instant::now() + Duration::from_secs(2);
    while let Some(text) = watch_b.next_line_before(settle) {
        let e = json(&text);
        if e["event"] == "delivered" {
            seen.push(e["text"].as_str().unwrap_or("").to_string());
        }
    }
    let extra = &seen[accepted.len().min(seen.len())..];
    assert_eq!(
        &seen[..accepted.len()],
        &accepted[..],
        "accepted: once, in order"
    );
    assert!(
        extra.is_empty() || extra == [cut_off.clone()],
        "beyond the accepted ones only the cut-off send may arrive: {extra:?}"
    );

    // 3. An orderly stop says goodbye.
    until_ready(&watch_a, deadline(30));
    let stopping = Instant::now();
    assert!(b.terminate().success(), "B exits cleanly on SIGTERM");
    watch_a.wait_for(deadline(5), |l| {
        let e = json(l);
        (e["event"] == "status" && e["to"] == "Closed").then_some(())
    });
    let closed_after = stopping.elapsed();
    eprintln!(
        "SIGTERM to the peer showing Closed: {} ms",
        closed_after.as_millis()
    );
    assert!(closed_after < Duration::from_secs(2), "{closed_after:?}");
    // A watch on the stopped node ends with an error, not silently.
    let mut watch_b = watch_b;
    let status = watch_b.wait_for_exit(deadline(5));
    assert!(
        !status.success(),
        "a watch whose node went away exits non-zero"
    );
    assert!(
        watch_b.stderr_text().contains("the node went away"),
        "{}",
        watch_b.stderr_text()
    );
    drop(deployment);
}
