//! A node reacts on its own to a real address change: inside a fresh network namespace
//! (`unshare -n`, with a veth interface), `tether node` listening on the wildcard address
//! sees a new address appear (netlink), rebinds and migrates its session with a peer
//! node, with no handshake and the same PeerSecret.
//!
//! Needs `unshare`, `nsenter` and `ip` and the right to create a network namespace
//! (root, or unprivileged user namespaces), which this project's machines and CI have:
//! without them the test fails and says what is missing. Every process is killed when
//! its guard drops.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{command, field, run, Proc, TETHER};

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

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
