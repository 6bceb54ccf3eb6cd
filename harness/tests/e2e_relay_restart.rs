//! End to end on real loopback sockets: a `tether relay` process with a `data_dir`
//! holds envelopes for an offline device, is killed with SIGKILL, and is started
//! again on the same folder and port; the device then connects and is pushed every
//! envelope, once, in order.
//!
//! The devices speak the relay protocol from this test ([`common::relay_device`]) over
//! real UDP. Every process is killed when its guard drops. Nothing sleeps: every wait
//! reads output lines or frames with a deadline.

// A panic in a test is a failed test, not a crashed relay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::relay_device::RelayDevice;
use common::{field, run, Proc, TETHER};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tether_crypto::{PublicKey, StaticKeypair};
use tether_protocol::RelayMessage;
use tether_transport::{Endpoint, TransportConfig};

/// How long a device waits for the relay's next frame: loopback answers in
/// milliseconds; this is only a deadline for a broken relay.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Starts `tether relay` on `relay.toml` and returns it with its listen address.
fn start_relay(dir: &Path, name: &str) -> (Proc, SocketAddr) {
    let relay = Proc::start(dir, name, TETHER, &["relay", "--config", "relay.toml"]);
    let listen = relay.wait_for(Instant::now() + Duration::from_secs(30), |l| {
        l.starts_with("tether relay ready:")
            .then(|| field(l, "listen").unwrap().parse().unwrap())
    });
    (relay, listen)
}

async fn device(rng: &mut ChaCha20Rng) -> RelayDevice {
    let endpoint = Endpoint::bind_udp("127.0.0.1:0".parse().unwrap(), TransportConfig::default())
        .await
        .unwrap();
    RelayDevice::new(endpoint, StaticKeypair::generate(rng), ANSWER_WITHIN)
}

#[test]
fn a_relay_killed_with_sigkill_pushes_its_stored_envelopes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let relay_public = run(d, TETHER, &["keygen", "--out", "relay.key"]);
    let relay_key = PublicKey::from_hex(relay_public.trim()).unwrap();
    std::fs::write(
        d.join("relay.toml"),
        // The devices make their own keys: an open relay.
        "key_file = \"relay.key\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nadmission = \"open\"\n",
    )
    .unwrap();
    let (mut relay, addr) = start_relay(d, "relay");
    assert!(d.join("data/relay/queue.redb").exists());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (mut sender, mut receiver) = runtime.block_on(async {
        let mut sender = device(&mut rng).await;
        let receiver = device(&mut rng).await;
        sender.connect(addr, &relay_key).await;
        (sender, receiver)
    });
    let sent: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("envelope {i:02}").into_bytes())
        .collect();
    // Enqueued means durable: nothing is waited for after the last answer.
    runtime.block_on(sender.enqueue_all(receiver.id(), 1, &sent));
    relay.kill();

    // Started again on the same folder and port.
    std::fs::write(
        d.join("relay.toml"),
        format!("key_file = \"relay.key\"\nlisten = \"{addr}\"\ndata_dir = \"data\"\nadmission = \"open\"\ncontrol_socket = \"relay.sock\"\n"),
    )
    .unwrap();
    let (_relay, again) = start_relay(d, "relay-again");
    assert_eq!(again, addr);
    // Its status shows what it holds: the 50 envelopes taken over from the store.
    let status: serde_json::Value = serde_json::from_str(&run(
        d,
        TETHER,
        &["status", "--socket", "relay.sock", "--json"],
    ))
    .unwrap();
    assert_eq!(status["holding"]["stored_envelopes"], 50, "{status}");
    assert!(
        status["holding"]["stored_bytes"].as_u64().unwrap() > 50 * 11,
        "{status}"
    );

    runtime.block_on(async {
        receiver.connect(addr, &relay_key).await;
        let (ids, received) = receiver.pushes(sent.len()).await;
        let expected: Vec<_> = sent.iter().map(|e| (sender.id(), e.clone())).collect();
        assert_eq!(received, expected, "every envelope, once, in order");
        receiver
            .send(RelayMessage::Delivered { envelope_ids: ids })
            .await;
    });
}
