//! A fast sender and a slow application, in two processes: the receiving node's memory
//! stays bounded and the sender is held back to the application's pace.
//!
//! The test runs this binary a second time as the receiver (the environment variable
//! [`RECEIVER`] says so): a node built with `Node::builder` whose application takes one
//! event every [`READ_EVERY`]. The sender, in the test's own process, sends 16 KiB
//! messages as fast as `send` lets it for [`SENDING_FOR`], while the test samples the
//! receiver's resident memory (`/proc/PID/status`). Without backpressure from the
//! application to the sender (credit granted on receipt, unbounded queues) the receiver
//! would hold everything the sender can push over loopback, hundreds of MiB; with it
//! the receiver holds at most its receive budget and its links' QUIC buffers
//! (docs/architecture.md, "What a peer can make a node hold": about 40 MiB).

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::start_relay;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether::{Node, NodeEvent, PublicKey, RelationshipKey, StaticKeypair};

/// Set in the receiver process: the directory holding what it needs (see `receiver`).
const RECEIVER: &str = "TETHER_TEST_SLOW_RECEIVER";
/// The slow application's pace: 50 messages a second.
const READ_EVERY: Duration = Duration::from_millis(20);
/// How long the sender pushes.
const SENDING_FOR: Duration = Duration::from_secs(12);
const MESSAGE: usize = 16 * 1024;
/// Resident memory the receiver may add while the sender pushes: the stated worst case
/// per peer (about 40 MiB) plus allocator slack.
const MAX_GROWTH_KIB: u64 = 48 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the receiver process reads from `dir`: its key file, and one line each of the
/// relay's address, the relay's public key, the sender's public key and address, and
/// the relationship key.
fn write_receiver_setup(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join("setup"), lines.join("\n")).unwrap();
}

/// The receiver: a node whose application reads one event every [`READ_EVERY`]. It
/// prints its address, then counts what it read until its stdin closes.
async fn receiver(dir: &Path) {
    let setup = std::fs::read_to_string(dir.join("setup")).unwrap();
    let lines: Vec<&str> = setup.lines().collect();
    let relay: SocketAddr = lines[0].parse().unwrap();
    let relay_public = PublicKey::from_hex(lines[1]).unwrap();
    let sender = PublicKey::from_hex(lines[2]).unwrap();
    let sender_addr: SocketAddr = lines[3].parse().unwrap();
    let rk = RelationshipKey::from_hex(lines[4]).unwrap();
    let mut node = Node::builder()
        .key_file(dir.join("receiver.key"))
        .relay(relay, relay_public)
        .peer_at(sender, rk, vec![sender_addr])
        .listen("127.0.0.1:0".parse().unwrap())
        .watch_interfaces(false)
        .start()
        .await
        .unwrap();
    println!("receiver ready");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
    });
    tokio::pin!(stdin_closed);
    let mut pace = tokio::time::interval(READ_EVERY);
    let mut read = 0_u64;
    loop {
        tokio::select! {
            _ = &mut stdin_closed => break,
            _ = pace.tick() => {
                if let Some(NodeEvent::Delivered { .. }) = node.next_event().await {
                    read += 1;
                }
            }
        }
    }
    println!("receiver read {read}");
    node.stop().await;
}

fn spawn_receiver(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_slow_application_holds_the_sender_back_and_its_memory_bounded",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(RECEIVER, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_application_holds_the_sender_back_and_its_memory_bounded() {
    if let Some(dir) = std::env::var_os(RECEIVER) {
        receiver(Path::new(&dir)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::OsRng;
    let relay_key = StaticKeypair::generate(&mut rng);
    let relay_public = *relay_key.public();
    let relay = start_relay(relay_key);
    let receiver_key = StaticKeypair::generate(&mut rng);
    receiver_key.save(&dir.path().join("receiver.key")).unwrap();
    let receiver_public = *receiver_key.public();
    let rk = RelationshipKey::generate(&mut rng);

    let mut sender = Node::builder()
        .keypair(StaticKeypair::generate(&mut rng))
        .relay(relay, relay_public)
        .peer(receiver_public, rk.clone())
        .listen("127.0.0.1:0".parse().unwrap())
        .watch_interfaces(false)
        .start()
        .await
        .unwrap();
    let sender_public = PublicKey::from_bytes(sender.device().0).unwrap();
    write_receiver_setup(
        dir.path(),
        &[
            relay.to_string(),
            relay_public.to_hex(),
            sender_public.to_hex(),
            sender.local_addr().to_string(),
            rk.to_hex().to_string(),
        ],
    );
    let mut child = spawn_receiver(dir.path());
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    // The test harness prints its own lines around ours (and "test NAME ... " just
    // before the first).
    tokio::task::block_in_place(|| {
        out.find(|l| l.as_ref().is_ok_and(|l| l.ends_with("receiver ready")))
            .expect("the receiver did not start")
    })
    .unwrap();
    let receiver = tether::device_id(&receiver_public);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(NodeEvent::Ready(r)) = sender.next_event().await {
                if r.peer == receiver {
                    return;
                }
            }
        }
    })
    .await
    .expect("no session within 20 s");

    // The sender pushes as fast as `send` lets it, while a thread samples the
    // receiver's memory every 100 ms.
    let before = rss_kib(pid);
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sending = sending.clone();
        std::thread::spawn(move || {
            let mut peak = before;
            while sending.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::park_timeout(Duration::from_millis(100));
            }
            peak.max(rss_kib(pid))
        })
    };
    let started = Instant::now();
    let mut accepted = 0_u64;
    while started.elapsed() < SENDING_FOR {
        sender.send(receiver, vec![0x5a; MESSAGE]).await.unwrap();
        accepted += 1;
    }
    sending.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    let read: u64 = tokio::task::block_in_place(|| {
        out.find_map(|l| {
            let line = l.unwrap();
            line.split_once("receiver read ")
                .map(|(_, n)| n.trim().parse().unwrap())
        })
        .unwrap()
    });
    assert!(tokio::task::block_in_place(|| child.wait())
        .unwrap()
        .success());
    sender.stop().await;

    let growth = peak.saturating_sub(before);
    let paced = SENDING_FOR.as_millis() as u64 / READ_EVERY.as_millis() as u64;
    println!(
        "receiver RSS {before} KiB before, peak {peak} KiB (+{growth} KiB); \
         sender accepted {accepted} messages of {MESSAGE} B, the application read {read} \
         (about {paced} at its pace)"
    );
    assert!(
        growth <= MAX_GROWTH_KIB,
        "the receiver grew by {growth} KiB, more than {MAX_GROWTH_KIB} KiB"
    );
    // Held back: what was accepted is what the application read plus what the
    // receiver's budget (8 MiB) and the sender's queue (16 MiB) hold, nowhere near
    // what loopback could carry in the time.
    let budget_and_queue = (8 + 16) * 1024 * 1024 / MESSAGE as u64;
    assert!(
        accepted <= read + budget_and_queue,
        "the sender got {accepted} messages accepted, the application read {read}"
    );
}
