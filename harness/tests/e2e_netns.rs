//! Nodes react on their own to real network changes, in network namespaces.
//!
//! - In one fresh namespace (`unshare -n`, with a veth interface), `tether node`
//!   listening on the wildcard address sees a new address appear (netlink), rebinds and
//!   migrates its session with a peer node, with no handshake and the same PeerSecret.
//! - On the topology of `common::netns` (a router; devices A and B each with a "wifi" and
//!   a "mobile" uplink; the relay in its own namespace; loss from nftables on the router),
//!   with every node on the wildcard address and watching interfaces, driven only through
//!   the CLI and the network: one device changes networks while it sends; both change
//!   networks at the same moment and must come back to a direct path (the time is
//!   printed); a device's active link goes down while its address stays.
//!
//! Needs `unshare`, `nsenter`, `ip`, `nft` and the right to create network namespaces
//! (root), which this project's machines and CI have (`.ci/run` installs nftables):
//! without them the tests fail and say what is missing. Every process and namespace is
//! removed when its guard drops, on a failure too. Nothing sleeps: every wait reads
//! output lines or polls `tether status` against a deadline.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::netns::{switch_at_once, works, Device, Topology, Uplink};
use common::nodes::{
    assert_both_kept, assert_same_session, delivered, direct_to, numbered, ready, unix_ms, Nodes,
    TwoNodes, Watch,
};
use common::{command, field, run, Deployment, Proc, TETHER};

#[test]
fn a_node_rebinds_and_migrates_when_an_address_appears() {
    assert!(
        works("unshare", &["-n", "true"])
            && works("ip", &["-V"])
            && works("nsenter", &["--version"]),
        "this machine cannot create a network namespace (unshare -n, nsenter, ip): the test \
         cannot run where it is meant to"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deadline = |secs| Instant::now() + Duration::from_secs(secs);

    // A network namespace, held open by a sleeping process, with loopback and a veth.
    let holder = Proc::start(d, "netns", "unshare", &["-n", "--", "sleep", "600"]);
    let pid = holder.pid().to_string();
    let in_ns = |args: &[&str]| -> Vec<String> {
        let mut all = vec![
            "-t".to_string(),
            pid.clone(),
            "-n".to_string(),
            "--".to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    // `unshare` may not have entered the namespace yet: wait until `nsenter` finds a
    // namespace with no interface but lo.
    let ns_output = |args: &[&str]| {
        let all = in_ns(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        command(d, "nsenter", &refs).output().unwrap()
    };
    let until = deadline(10);
    loop {
        let links = ns_output(&["ip", "-o", "link"]);
        if links.status.success() && String::from_utf8_lossy(&links.stdout).lines().count() == 1 {
            break;
        }
        assert!(Instant::now() < until, "network namespace not ready");
        std::thread::yield_now();
    }
    let ns = |args: &[&str]| {
        let all = in_ns(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run(d, "nsenter", &refs)
    };
    ns(&["ip", "link", "set", "lo", "up"]);
    let veth = ns_output(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    assert!(
        veth.status.success(),
        "cannot create a veth pair in the namespace: {}",
        String::from_utf8_lossy(&veth.stderr)
    );
    ns(&["ip", "addr", "add", "10.9.0.1/24", "dev", "v0"]);
    ns(&["ip", "link", "set", "v0", "up"]);
    ns(&["ip", "link", "set", "v1", "up"]);

    // Keys and configs: A listens on the wildcard address and watches interfaces.
    let relay_public = run(d, TETHER, &["keygen", "--out", "relay.key"])
        .trim()
        .to_string();
    let pairing = run(d, TETHER, &["pair", "a.key", "b.key"]);
    let entry_for = |who: &str| {
        pairing
            .split("# --- in ")
            .find(|s| s.starts_with(&format!("{who}'s config")))
            .map(|s| s.split_once('\n').unwrap().1.to_string())
            .unwrap()
    };
    std::fs::write(
        d.join("relay.toml"),
        format!(
            "key_file = \"relay.key\"\nlisten = \"127.0.0.1:0\"\n{}\n",
            common::relay_allow(&pairing)
        ),
    )
    .unwrap();
    let tether_in_ns = |name: &str, args: &[&str]| {
        let mut all = in_ns(&[TETHER]);
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Proc::start(d, name, "nsenter", &refs)
    };
    let relay = tether_in_ns("relay", &["relay", "--config", "relay.toml"]);
    let relay_addr = relay.wait_for(deadline(30), |l| {
        l.starts_with("tether relay ready:")
            .then(|| field(l, "listen").unwrap().to_string())
    });
    let config = |name: &str, listen: &str, peers: String| {
        format!(
            "key_file = \"{name}.key\"\nlisten = \"{listen}\"\ncontrol_socket = \"{name}.sock\"\n\n[relay]\naddr = \"{relay_addr}\"\npublic_key = \"{relay_public}\"\n\n{peers}"
        )
    };
    std::fs::write(d.join("a.toml"), config("a", "0.0.0.0:0", entry_for("a"))).unwrap();
    let a = tether_in_ns("a", &["node", "--config", "a.toml"]);
    let a_port = a.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:").then(|| {
            field(l, "listen")
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_string()
        })
    });
    let b_peers = entry_for("b").replace(
        "addresses = []",
        &format!("addresses = [\"127.0.0.1:{a_port}\"]"),
    );
    std::fs::write(
        d.join("b.toml"),
        config("b", "127.0.0.1:0", b_peers)
            .replace("control_socket", "watch_interfaces = false\ncontrol_socket"),
    )
    .unwrap();
    let b = tether_in_ns("b", &["node", "--config", "b.toml"]);
    b.wait_for(deadline(30), |l| {
        l.starts_with("tether node ready:").then_some(())
    });

    // The control socket is a path: `tether watch` and `status` work from outside.
    let watch = Proc::start(d, "watch-a", TETHER, &["watch", "--socket", "a.sock"]);
    watch.wait_for(deadline(30), |l| {
        let e: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        (e["event"] == "status" && e["to"] == "Ready").then_some(())
    });
    let status = || -> serde_json::Value {
        serde_json::from_str(&run(d, TETHER, &["status", "--json", "--socket", "a.sock"])).unwrap()
    };
    // One message each way settles the session before the baseline.
    run(d, TETHER, &["send", "--socket", "b.sock", "a", "before"]);
    watch.wait_for(deadline(30), |l| {
        l.contains("\"event\":\"delivered\"").then_some(())
    });
    let before = status();

    // The network changes: a new address appears. Nobody tells the node.
    ns(&["ip", "addr", "add", "10.9.0.2/24", "dev", "v0"]);
    let rebound = watch.wait_for(deadline(30), |l| {
        let e: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        (e["event"] == "rebound").then_some(e)
    });
    assert_eq!(rebound["cause"], "interface", "{rebound}");
    watch.wait_for(deadline(30), |l| {
        l.contains("\"event\":\"migration_completed\"")
            .then_some(())
    });
    run(d, TETHER, &["send", "--socket", "b.sock", "a", "after"]);
    watch.wait_for(deadline(30), |l| {
        l.contains("\"text\":\"after\"").then_some(())
    });

    let after = status();
    let (p0, p1) = (&before["peers"][0], &after["peers"][0]);
    assert_eq!(p1["status"], "Ready", "{after:#}");
    assert_eq!(p1["handshakes"], p0["handshakes"], "no handshake");
    assert_eq!(p1["peer_secret"], p0["peer_secret"], "same PeerSecret");
    assert_eq!(p1["epoch"], p0["epoch"]);
    assert_eq!(after["transport"]["rebinds"], 1);
    assert_ne!(after["listen"], before["listen"], "a new socket");
}

// ---------------------------------------------------------------------------------------
// The topology tests: router, two uplinks per device, the relay in its own namespace.

/// Sends `prefix 0` … `prefix count-1` from the node at `socket` to `peer`, one `tether
/// send` at a time, on a thread; says on `started` once `signal_after` of them are sent.
fn send_numbered(
    dir: &Path,
    socket: &'static str,
    peer: &'static str,
    prefix: &'static str,
    count: usize,
    signal_after: usize,
    started: mpsc::Sender<()>,
) -> std::thread::JoinHandle<()> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for (i, text) in numbered(prefix, count).iter().enumerate() {
            if i == signal_after {
                let _ = started.send(());
            }
            run(&dir, TETHER, &["send", "--socket", socket, peer, text]);
        }
    })
}

/// Two nodes and a relay running on the topology, the session Ready and settled.
/// Fields drop in order: processes first, then namespaces, then the folder.
struct Pair {
    nodes: Nodes,
    _deployment: Deployment,
    net: Topology,
    _dir: tempfile::TempDir,
}

impl TwoNodes for Pair {
    fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    fn nodes_mut(&mut self) -> &mut Nodes {
        &mut self.nodes
    }
}

impl Pair {
    /// Builds the topology, puts A and B on the given uplinks (address and default
    /// route with the metric; the first is where B first dials A), starts the relay and
    /// the nodes (wildcard `listen`, `watch_interfaces` on by default), waits for Ready
    /// and exchanges one message each way.
    fn start(a_on: &[(Uplink, u32)], b_on: &[(Uplink, u32)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let net = Topology::build(&d);
        for (uplink, metric) in a_on {
            net.a.join(*uplink, *metric);
        }
        for (uplink, metric) in b_on {
            net.b.join(*uplink, *metric);
        }
        let listen = format!("{}:0", Topology::RELAY_IP);
        let deployment =
            Deployment::start_with(&d, &listen, |args| net.relay.spawn("relay", TETHER, args));
        let until = Instant::now() + Duration::from_secs(30);
        let start_node = |device: &Device, peers: &str| {
            let config = deployment.node_config(device.name, device.name, "0.0.0.0:0", "", peers);
            let file = format!("{}.toml", device.name);
            std::fs::write(d.join(&file), config).unwrap();
            let node = device
                .ns
                .spawn(device.name, TETHER, &["node", "--config", &file]);
            let listen = node.wait_for(until, |l| {
                l.starts_with("tether node ready:")
                    .then(|| field(l, "listen").unwrap().to_string())
            });
            (node, listen)
        };
        let (a, a_listen) = start_node(&net.a, &deployment.peers_entry("a"));
        let a_port = a_listen.rsplit(':').next().unwrap();
        let b_peers = deployment.peers_entry("b").replace(
            "addresses = []",
            &format!("addresses = [\"{}:{a_port}\"]", net.a.address(a_on[0].0)),
        );
        let (b, _) = start_node(&net.b, &b_peers);
        let mut pair = Self {
            nodes: Nodes::watch(a, b, &d),
            _deployment: deployment,
            net,
            _dir: dir,
        };
        pair.wait_a(until, "A Ready at the start", ready);
        pair.wait_b(until, "B Ready at the start", ready);
        // One message each way settles the session before any baseline.
        pair.nodes.send("a.sock", "b", "settle a");
        pair.nodes.send("b.sock", "a", "settle b");
        let settled_b = |seen: &[Value]| !delivered(seen, "settle a").is_empty();
        let settled_a = |seen: &[Value]| !delivered(seen, "settle b").is_empty();
        pair.wait_b(until, "B got A's first message", settled_b);
        pair.wait_a(until, "A got B's first message", settled_a);
        pair
    }
}

/// [`assert_same_session`], and not even a handshake attempted nor a migration failed.
fn assert_same_session_untroubled(name: &str, before: &Value, after: &Value) {
    assert_same_session(name, before, after);
    assert_eq!(
        after["handshake_attempts"], before["handshake_attempts"],
        "{name}: no handshake attempted: {after}"
    );
    assert_eq!(after["session"]["migrations_failed"], 0, "{name}: {after}");
}

#[test]
fn a_device_that_changes_networks_while_sending_keeps_its_session() {
    let mut pair = Pair::start(&[(Uplink::Wifi, 100)], &[(Uplink::Wifi, 100)]);
    let (before_a, before_b) = pair.nodes.status();
    assert!(before_a["peer_secret"].is_string(), "{before_a}");

    // A sends 30 numbered messages; after the 10th it moves from wifi to mobile.
    const COUNT: usize = 30;
    let (started, started_rx) = mpsc::channel();
    let sender = send_numbered(&pair.nodes.d, "a.sock", "b", "from a", COUNT, 10, started);
    started_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let moved = pair
        .net
        .a
        .switch_command(Uplink::Wifi, Uplink::Mobile)
        .output()
        .unwrap();
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    sender.join().unwrap();

    let until = Instant::now() + Duration::from_secs(30);
    let all = |seen: &[Value]| delivered(seen, "from a ").len() >= COUNT;
    pair.wait_b(until, "B did not get all of A's messages", all);
    let rebound = |seen: &[Value]| seen.iter().any(|e| e["event"] == "rebound");
    pair.wait_a(until, "A did not rebind on its own", rebound);
    let mobile = format!("{}:", pair.net.a.address(Uplink::Mobile));
    let (after_a, after_b, _) = pair.poll_status(until, "not back on a direct path", |a, b| {
        a["status"] == "Ready" && direct_to(b, &mobile)
    });

    assert_eq!(
        pair.nodes.watch_b.delivered("from a "),
        numbered("from a", COUNT),
        "B gets every message once, in order"
    );
    let rebinds: Vec<&Value> = pair
        .nodes
        .watch_a
        .seen
        .iter()
        .filter(|e| e["event"] == "rebound")
        .collect();
    assert_eq!(
        rebinds.len(),
        1,
        "one network change, one rebind: {rebinds:?}"
    );
    assert_eq!(rebinds[0]["cause"], "interface", "{}", rebinds[0]);
    assert_same_session_untroubled("A", &before_a, &after_a);
    assert_same_session_untroubled("B", &before_b, &after_b);
    assert_eq!(after_a["path"], "direct", "{after_a}");
}

/// Both devices move from wifi to mobile within a few milliseconds of each other, with
/// `loss` % of forwarded packets dropped, while each sends to the other: the session
/// survives without a handshake, nothing is lost or duplicated, and both sides return to
/// a direct path between the new addresses. Returns the time from the switch to both
/// sides direct again.
fn both_move_at_once(loss: u32) -> Duration {
    let mut pair = Pair::start(&[(Uplink::Wifi, 100)], &[(Uplink::Wifi, 100)]);
    let before = pair.nodes.status();
    pair.net.set_loss(loss);

    const COUNT: usize = 20;
    let (started, started_rx) = mpsc::channel();
    let senders = [
        send_numbered(
            &pair.nodes.d,
            "a.sock",
            "b",
            "from a",
            COUNT,
            5,
            started.clone(),
        ),
        send_numbered(&pair.nodes.d, "b.sock", "a", "from b", COUNT, 5, started),
    ];
    for _ in 0..2 {
        started_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    let switched_at = Instant::now();
    let switched_at_ms = unix_ms();
    switch_at_once(&[&pair.net.a, &pair.net.b], Uplink::Wifi, Uplink::Mobile);
    let switch_took = switched_at.elapsed();

    // Back on a direct path between the new addresses, within a generous bound.
    let a_mobile = format!("{}:", pair.net.a.address(Uplink::Mobile));
    let b_mobile = format!("{}:", pair.net.b.address(Uplink::Mobile));
    let (after_a, after_b, direct_at) = pair.poll_status(
        switched_at + Duration::from_secs(15),
        "both sides moved: not back on a direct path within 15 s",
        |a, b| direct_to(a, &b_mobile) && direct_to(b, &a_mobile),
    );
    let polled = direct_at - switched_at;
    // The nodes' own time of the last bind to a direct path, for each side (its event
    // may still be on its way when the status shows it).
    let bound_direct = |seen: &[Value]| {
        seen.iter()
            .filter(|e| e["event"] == "ready" && e["path"] == "direct")
            .filter_map(|e| e["at_ms"].as_u64())
            .filter(|at| *at >= switched_at_ms)
            .max()
    };
    let soon = Instant::now() + Duration::from_secs(2);
    pair.nodes
        .watch_a
        .until(soon, |seen| bound_direct(seen).is_some());
    pair.nodes
        .watch_b
        .until(soon, |seen| bound_direct(seen).is_some());
    let measured = match (
        bound_direct(&pair.nodes.watch_a.seen),
        bound_direct(&pair.nodes.watch_b.seen),
    ) {
        (Some(a), Some(b)) => Duration::from_millis(a.max(b) - switched_at_ms),
        _ => polled,
    };
    println!(
        "both sides moved at {loss}% loss: direct again after {} ms (seen by polling status \
         after {} ms; the two switches took {} ms)\n{}\n{}",
        measured.as_millis(),
        polled.as_millis(),
        switch_took.as_millis(),
        pair.nodes.watch_a.timeline("A", switched_at_ms),
        pair.nodes.watch_b.timeline("B", switched_at_ms)
    );

    for s in senders {
        s.join().unwrap();
    }
    let until = Instant::now() + Duration::from_secs(30);
    let all_b = |seen: &[Value]| delivered(seen, "from a ").len() >= COUNT;
    let all_a = |seen: &[Value]| delivered(seen, "from b ").len() >= COUNT;
    pair.wait_b(until, "B did not get all of A's messages", all_b);
    pair.wait_a(until, "A did not get all of B's messages", all_a);
    let (final_a, final_b, _) = pair.poll_status(until, "not Ready at the end", |a, b| {
        a["status"] == "Ready" && b["status"] == "Ready"
    });
    assert_eq!(
        pair.nodes.watch_b.delivered("from a "),
        numbered("from a", COUNT),
        "A -> B"
    );
    assert_eq!(
        pair.nodes.watch_a.delivered("from b "),
        numbered("from b", COUNT),
        "B -> A"
    );
    assert_both_kept(
        assert_same_session_untroubled,
        &before,
        &(after_a, after_b),
        &(final_a, final_b),
    );
    measured
}

#[test]
fn both_devices_change_networks_at_once_and_return_to_a_direct_path() {
    both_move_at_once(0);
}

#[test]
fn both_devices_change_networks_at_once_at_5_percent_loss() {
    both_move_at_once(5);
}

/// How long a session may take to carry data both ways again after the link it uses
/// loses carrier (its address staying): the interface watcher's debounce (250 ms) and
/// a migration, with room to spare; three missed heartbeats (about 7.5 s) are too slow.
const LINK_DOWN_RECOVERY: Duration = Duration::from_secs(3);

#[test]
fn a_link_that_goes_down_while_its_address_stays_is_left_within_3_s() {
    // A is on both networks; wifi carries its traffic (lower metric).
    let mut pair = Pair::start(
        &[(Uplink::Wifi, 100), (Uplink::Mobile, 200)],
        &[(Uplink::Wifi, 100)],
    );
    let before = pair.nodes.status();

    // The wifi access point goes away: A keeps 10.1.1.2 on an interface without carrier.
    let down_at = Instant::now();
    let down_at_ms = unix_ms();
    pair.net.link_down(&pair.net.a, Uplink::Wifi);
    pair.nodes.send("a.sock", "b", "after down a 0");
    pair.nodes.send("b.sock", "a", "after down b 0");

    // Recovered: a message sent after the link went down delivered each way, and both
    // sides Ready. Waits past the bound, to measure.
    let until = down_at + Duration::from_secs(20);
    let got_b = |seen: &[Value]| !delivered(seen, "after down a 0").is_empty();
    let got_a = |seen: &[Value]| !delivered(seen, "after down b 0").is_empty();
    pair.wait_b(
        until,
        "A -> B never recovered after the link went down",
        got_b,
    );
    pair.wait_a(
        until,
        "B -> A never recovered after the link went down",
        got_a,
    );
    let (after_a, after_b, ready_at) =
        pair.poll_status(until, "not Ready after the link went down", |a, b| {
            a["status"] == "Ready" && b["status"] == "Ready"
        });
    let since_down = |at: Vec<u64>| Duration::from_millis(at[0].saturating_sub(down_at_ms));
    let a_to_b = since_down(pair.nodes.watch_b.delivered_at("after down a 0"));
    let b_to_a = since_down(pair.nodes.watch_a.delivered_at("after down b 0"));
    let recovered = a_to_b.max(b_to_a);
    let rebinds = |w: &Watch| w.seen.iter().filter(|e| e["event"] == "rebound").count();
    println!(
        "link down, address kept: A -> B after {} ms, B -> A after {} ms, both Ready (polled) \
         after {} ms; rebinds: A {}, B {}; paths: A {} {}, B {} {}",
        a_to_b.as_millis(),
        b_to_a.as_millis(),
        (ready_at - down_at).as_millis(),
        rebinds(&pair.nodes.watch_a),
        rebinds(&pair.nodes.watch_b),
        after_a["path"],
        after_a["remote"],
        after_b["path"],
        after_b["remote"]
    );

    // The session still carries data both ways, exactly once, in order; no handshake.
    pair.nodes.send("a.sock", "b", "after down a 1");
    pair.nodes.send("b.sock", "a", "after down b 1");
    let until = Instant::now() + Duration::from_secs(20);
    let both_b = |seen: &[Value]| delivered(seen, "after down a ").len() >= 2;
    let both_a = |seen: &[Value]| delivered(seen, "after down b ").len() >= 2;
    pair.wait_b(until, "A -> B stopped again", both_b);
    pair.wait_a(until, "B -> A stopped again", both_a);
    assert_eq!(
        pair.nodes.watch_b.delivered("after down a "),
        numbered("after down a", 2)
    );
    assert_eq!(
        pair.nodes.watch_a.delivered("after down b "),
        numbered("after down b", 2)
    );
    assert_both_kept(
        assert_same_session_untroubled,
        &before,
        &(after_a, after_b),
        &pair.nodes.status(),
    );
    if recovered > LINK_DOWN_RECOVERY {
        pair.fail(&format!(
            "the session took {} ms to carry data both ways again after the link went down \
             (A -> B {} ms, B -> A {} ms): more than {} ms",
            recovered.as_millis(),
            a_to_b.as_millis(),
            b_to_a.as_millis(),
            LINK_DOWN_RECOVERY.as_millis()
        ));
    }
}
