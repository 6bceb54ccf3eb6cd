//! Link-state detection on a real kernel: inside a fresh network namespace, an
//! interface that loses carrier while keeping its address stops counting, and the
//! watcher reports the change; carrier back, the address counts again.
//!
//! The test runs itself again under `unshare -n` (a namespace of its own, so it can
//! create interfaces without touching the machine's). It needs `unshare` and `ip` and the
//! right to create a network namespace, which this project's machines and CI have:
//! without them it fails and says what is missing.

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_os = "linux")]

use std::process::Command;
use std::time::Duration;
use tether_transport::connectivity::{self, InterfaceWatcher, WatchOptions};

/// Set in the copy of the test that runs inside the namespace.
const INSIDE: &str = "TETHER_LINK_STATE_TEST_INSIDE";
const TEST: &str = "an_interface_losing_carrier_is_reported_while_its_address_stays";

fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {args} failed");
}

#[test]
fn an_interface_losing_carrier_is_reported_while_its_address_stays() {
    if std::env::var_os(INSIDE).is_none() {
        let exe = std::env::current_exe().unwrap();
        let output = Command::new("unshare")
            .arg("-n")
            .arg(exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(INSIDE, "1")
            .output()
            .expect(
                "this machine cannot run `unshare -n` (util-linux): the test cannot run where \
                 it is meant to",
            );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && text.contains("1 passed"),
            "inside a fresh network namespace:\n{text}"
        );
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(inside_the_namespace());
}

async fn inside_the_namespace() {
    // A veth pair: `wifi` is the device's interface, `router` the far end.
    ip("link add wifi type veth peer name router");
    ip("addr add 10.77.0.2/24 dev wifi");
    ip("link set wifi up");
    ip("link set router up");
    let (trigger, mut changes) = connectivity::channel();
    let options = WatchOptions {
        port: 4433,
        debounce: Duration::from_millis(50),
        ..WatchOptions::default()
    };
    let wifi: std::net::SocketAddr = "10.77.0.2:4433".parse().unwrap();
    let watcher = InterfaceWatcher::start(trigger, options).await.unwrap();
    let deadline = Duration::from_secs(5);
    if !watcher.addresses().contains(&wifi) {
        // Carrier may come a moment after the link is set up.
        let change = tokio::time::timeout(deadline, changes.next()).await;
        assert!(
            matches!(&change, Ok(Some(c)) if c.new.contains(&wifi)),
            "the address with carrier counts: {change:?}"
        );
    }

    // The far end goes down: `wifi` loses carrier and keeps its address.
    ip("link set router down");
    let change = tokio::time::timeout(deadline, changes.next())
        .await
        .expect("no change reported within 5 s of the carrier loss")
        .unwrap();
    assert_eq!(change.old, vec![wifi]);
    assert!(change.new.is_empty(), "{change:?}");
    let kept = Command::new("ip")
        .args(["-4", "addr", "show", "dev", "wifi"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&kept.stdout).contains("10.77.0.2"),
        "the address stayed configured"
    );

    // Carrier back: the address counts again.
    ip("link set router up");
    let change = tokio::time::timeout(deadline, changes.next())
        .await
        .expect("no change reported within 5 s of the carrier coming back")
        .unwrap();
    assert_eq!(change.new, vec![wifi]);
}
