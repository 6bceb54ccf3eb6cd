//! `tether bench throughput`: one Tether session over real loopback against bare quinn
//! with the same QUIC settings, in the same run, and the Noise transport cipher alone.
//!
//! The session: two nodes built with [`tether::Node::builder`] in this process (each
//! node's actors on a thread of their own, each application on a thread and runtime of
//! its own) and a relay; the sending application calls `send` one message after
//! another for the given time, the receiving one takes every event as it comes. The
//! figure runs from the first `send` to the `NodeEvent::Delivered` of the last message
//! on the other node. Bare quinn: one stream between two endpoints configured as a
//! Tether endpoint is ([`tether_transport::bench`]), one `write_chunk` per message
//! and `read_chunk` on the other end, on a tokio runtime with 2 workers. The two
//! alternate which goes first at each size, so a drift in the machine's load hits both.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tether::{DeviceId, Node, NodeEvent, RelationshipKey, StaticKeypair};
use tether_transport::bench::{bare_quinn_configs, bare_quinn_transfer, Amount};
use tether_transport::TransportConfig;

use super::handshake::paired_rings;
use super::{mib_per_s, round2, runtime, start_relay, BenchError};

/// The message sizes measured: 1 KiB, 16 KiB and 60 KiB (a little under the largest
/// frame a session carries).
pub const SIZES: [usize; 3] = [1024, 16 * 1024, 60 * 1024];

/// The largest message size `--size` takes: the largest message a session carries by
/// default (`Limits::max_message_len`).
pub const MAX_SIZE: usize = 60 * 1024;

/// Messages per `Node::send_all` call in the batched contender: 64 KiB of 1 KiB
/// messages, a quarter of a channel's credit, so the next call is queued while the
/// last one's messages are on the wire.
pub const SEND_ALL_BATCH: usize = 64;

/// How long to wait for the last message of a run to be delivered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything `tether bench throughput` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    /// Seconds each contender sent at each size.
    pub seconds: f64,
    /// Whether QUIC's path MTU discovery was on, for both contenders.
    pub mtu_discovery: bool,
    /// One row per message size.
    pub throughput: Vec<SizeRow>,
    /// The Noise transport cipher alone.
    pub seal_open: SealOpen,
}

/// One message size: the session against bare quinn.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    /// Bytes per message.
    pub message_bytes: usize,
    /// The session: MiB/s of payload from the first `send` to the last delivery.
    pub tether_mib_s: f64,
    /// The session: messages per second.
    pub tether_messages_s: f64,
    /// Bare quinn: MiB/s from the first write to the last byte read.
    pub quinn_mib_s: f64,
    /// Bare quinn: messages (chunks written) per second.
    pub quinn_messages_s: f64,
    /// `tether_mib_s / quinn_mib_s`.
    pub ratio: f64,
    /// The session with `Node::send_all`, [`SEND_ALL_BATCH`] messages per call: MiB/s.
    pub tether_send_all_mib_s: f64,
    /// The session with `Node::send_all`: messages per second.
    pub tether_send_all_messages_s: f64,
    /// `tether_send_all_mib_s / quinn_mib_s`.
    pub send_all_ratio: f64,
    /// UDP datagrams per message at the sender's endpoint during the `send` run.
    pub send_datagrams_per_message: DatagramsPerMessage,
}

/// UDP datagrams per message one endpoint sent and received during a run: what the
/// session's per-message frames (data out, acknowledgements in) cost in packets.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DatagramsPerMessage {
    /// Datagrams sent per message.
    pub sent: f64,
    /// Datagrams received per message.
    pub received: f64,
}

/// Seal and open speed of the session cipher (Noise's ChaChaPoly transport keys, as
/// `tether_crypto::KeyRing` uses them), on one thread.
#[derive(Debug, Clone, Serialize)]
pub struct SealOpen {
    /// The cipher.
    pub cipher: &'static str,
    /// One row per message size.
    pub sizes: Vec<CipherRow>,
}

/// Seal and open at one message size.
#[derive(Debug, Clone, Serialize)]
pub struct CipherRow {
    /// Bytes of plaintext per message.
    pub message_bytes: usize,
    /// Sealing, MiB/s of plaintext.
    pub seal_mib_s: f64,
    /// Opening (with the replay window), MiB/s of plaintext.
    pub open_mib_s: f64,
}

impl ThroughputReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "session throughput over loopback, {} s per contender and size (MiB/s of payload), MTU discovery {}\n\n",
            self.seconds,
            if self.mtu_discovery { "on" } else { "off" }
        );
        out.push_str(&format!(
            "send: one message per call; send_all: {SEND_ALL_BATCH} messages per call\n\n"
        ));
        out.push_str("message   tether send MiB/s   msgs/s   ratio   tether send_all MiB/s   msgs/s   ratio   bare quinn MiB/s   msgs/s\n");
        for r in &self.throughput {
            out.push_str(&format!(
                "{:>7}   {:>17.1}   {:>6.0}   {:>5.2}   {:>21.1}   {:>6.0}   {:>5.2}   {:>16.1}   {:>6.0}\n",
                size_name(r.message_bytes),
                r.tether_mib_s,
                r.tether_messages_s,
                r.ratio,
                r.tether_send_all_mib_s,
                r.tether_send_all_messages_s,
                r.send_all_ratio,
                r.quinn_mib_s,
                r.quinn_messages_s,
            ));
        }
        out.push_str("\nUDP datagrams per message at the sender (send run), sent / received:");
        for r in &self.throughput {
            let d = r.send_datagrams_per_message;
            out.push_str(&format!(
                "  {} {:.2} / {:.2}",
                size_name(r.message_bytes),
                d.sent,
                d.received
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "\nsession cipher alone ({}, one thread)\n\nmessage   seal MiB/s   open MiB/s\n",
            self.seal_open.cipher
        ));
        for r in &self.seal_open.sizes {
            out.push_str(&format!(
                "{:>7}   {:>10.0}   {:>10.0}\n",
                size_name(r.message_bytes),
                r.seal_mib_s,
                r.open_mib_s
            ));
        }
        out
    }
}

fn size_name(bytes: usize) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Runs every size of `sizes` for `seconds` per contender, both with `transport`'s QUIC
/// settings.
pub fn run(
    seconds: Duration,
    sizes: &[usize],
    transport: &TransportConfig,
) -> Result<ThroughputReport, BenchError> {
    let quinn_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pair = SessionPair::start(transport)?;
    let mut rows = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        // Rotate who goes first, so a slow drift of machine load hits all alike.
        let mut quinn = None;
        let mut sessions: [Option<(Run, DatagramsPerMessage)>; 2] = [None; 2];
        for turn in 0..3 {
            match (i + turn) % 3 {
                0 => quinn = Some(quinn_runtime.block_on(bare_quinn(size, seconds, transport))?),
                1 => sessions[0] = Some(pair.measure(size, seconds, Sending::OneByOne)?),
                _ => sessions[1] = Some(pair.measure(size, seconds, Sending::Batches)?),
            }
        }
        let (Some(quinn), [Some((tether, datagrams)), Some((batched, _))]) = (quinn, sessions)
        else {
            return Err(BenchError::Setup("a contender did not run".into()));
        };
        let ratio = |mib_s: f64| (mib_s / quinn.mib_s(size).max(1e-9) * 1000.0).round() / 1000.0;
        rows.push(SizeRow {
            message_bytes: size,
            tether_mib_s: round2(tether.mib_s(size)),
            tether_messages_s: round2(tether.messages_s()),
            quinn_mib_s: round2(quinn.mib_s(size)),
            quinn_messages_s: round2(quinn.messages_s()),
            ratio: ratio(tether.mib_s(size)),
            tether_send_all_mib_s: round2(batched.mib_s(size)),
            tether_send_all_messages_s: round2(batched.messages_s()),
            send_all_ratio: ratio(batched.mib_s(size)),
            send_datagrams_per_message: datagrams,
        });
    }
    pair.stop();
    let cipher_time = (seconds / 3).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let sizes = sizes
        .iter()
        .map(|&size| seal_open(size, cipher_time))
        .collect::<Result<_, _>>()?;
    Ok(ThroughputReport {
        seconds: seconds.as_secs_f64(),
        mtu_discovery: transport.mtu_discovery,
        throughput: rows,
        seal_open: SealOpen {
            cipher: "ChaChaPoly (Noise transport keys, snow)",
            sizes,
        },
    })
}

/// How the session's sender hands its messages to the node.
#[derive(Debug, Clone, Copy)]
enum Sending {
    /// `Node::send`, one message per call, each call awaited before the next.
    OneByOne,
    /// `Node::send_all`, [`SEND_ALL_BATCH`] messages per call.
    Batches,
}

/// Messages moved in a time.
#[derive(Debug, Clone, Copy)]
struct Run {
    messages: u64,
    elapsed: Duration,
}

impl Run {
    fn mib_s(&self, size: usize) -> f64 {
        mib_per_s(self.messages as usize * size, self.elapsed)
    }

    fn messages_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn bare_quinn(
    size: usize,
    seconds: Duration,
    transport: &TransportConfig,
) -> Result<Run, BenchError> {
    let setup = |e: String| BenchError::Setup(format!("bare quinn: {e}"));
    let (server, client, name) = bare_quinn_configs(transport).map_err(|e| setup(e.to_string()))?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let run = bare_quinn_transfer(server, client, name, loopback, size, Amount::For(seconds))
        .await
        .map_err(|e| setup(e.to_string()))?;
    Ok(Run {
        messages: run.chunks as u64,
        elapsed: run.elapsed,
    })
}

/// What the receiving application has seen: deliveries, and when the last came.
#[derive(Debug)]
struct Progress {
    delivered: AtomicU64,
    last: Mutex<Option<Instant>>,
}

/// Two nodes with a session between them, and a relay.
struct SessionPair {
    _relay: super::RunningRelay,
    sender: Node,
    sender_runtime: tokio::runtime::Runtime,
    receiver_id: DeviceId,
    progress: Arc<Progress>,
    stop_receiver: Option<tokio::sync::oneshot::Sender<()>>,
    receiver_thread: Option<std::thread::JoinHandle<()>>,
}

impl SessionPair {
    /// Starts the relay, the receiving node on a thread of its own, and the sending node
    /// here; returns once the sender's session is Ready.
    fn start(transport: &TransportConfig) -> Result<Self, BenchError> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let relay = start_relay(loopback)?;
        let mut rng = rand::rngs::OsRng;
        let sender_key = StaticKeypair::generate(&mut rng);
        let sender_public = *sender_key.public();
        let receiver_key = StaticKeypair::generate(&mut rng);
        let receiver_public = *receiver_key.public();
        let rk = RelationshipKey::generate(&mut rng);
        let progress = Arc::new(Progress {
            delivered: AtomicU64::new(0),
            last: Mutex::new(None),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let receiver_thread = {
            let progress = progress.clone();
            let (relay_addr, relay_public, rk) = (relay.addr, relay.public, rk.clone());
            let receiver_transport = transport.clone();
            std::thread::Builder::new()
                .name("bench-receiver".into())
                .spawn(move || {
                    let rt = match runtime() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let node = Node::builder()
                            .transport(receiver_transport)
                            .keypair(receiver_key)
                            .relay(relay_addr, relay_public)
                            .peer(sender_public, rk)
                            .listen(loopback)
                            .watch_interfaces(false)
                            .start()
                            .await
                            .map_err(|e| BenchError::Setup(e.to_string()));
                        match node {
                            Ok(node) => {
                                let _ = addr_tx.send(Ok(node.local_addr()));
                                receive(node, &progress, stop_rx).await;
                            }
                            Err(e) => {
                                let _ = addr_tx.send(Err(e));
                            }
                        }
                    });
                })?
        };
        let receiver_addr = addr_rx
            .recv()
            .map_err(|_| BenchError::Setup("the receiving node's thread ended".into()))??;
        let sender_runtime = runtime()?;
        let mut sender = sender_runtime
            .block_on(
                Node::builder()
                    .transport(transport.clone())
                    .keypair(sender_key)
                    .relay(relay.addr, relay.public)
                    .peer_at(receiver_public, rk, vec![receiver_addr])
                    .listen(loopback)
                    .watch_interfaces(false)
                    .start(),
            )
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let receiver_id = tether::device_id(&receiver_public);
        sender_runtime.block_on(wait_ready(&mut sender, receiver_id))?;
        let pair = SessionPair {
            _relay: relay,
            sender,
            sender_runtime,
            receiver_id,
            progress,
            stop_receiver: Some(stop_tx),
            receiver_thread: Some(receiver_thread),
        };
        // Warm up: the first messages of a session find cold caches and windows.
        pair.measure(16 * 1024, Duration::from_millis(300), Sending::OneByOne)?;
        Ok(pair)
    }

    /// Sends `size`-byte messages for `seconds`; returns once the last is delivered.
    /// Also returns the UDP datagrams the sender's endpoint sent and received per
    /// message meanwhile (data and acknowledgements, QUIC's own packets included).
    fn measure(
        &self,
        size: usize,
        seconds: Duration,
        how: Sending,
    ) -> Result<(Run, DatagramsPerMessage), BenchError> {
        self.progress.delivered.store(0, Ordering::SeqCst);
        let before = self.udp_traffic()?;
        let start = Instant::now();
        let refused = |e: &dyn std::fmt::Display| BenchError::Setup(format!("send: {e}"));
        let sent = self.sender_runtime.block_on(async {
            let mut sent = 0_u64;
            while start.elapsed() < seconds {
                match how {
                    Sending::OneByOne => {
                        self.sender
                            .send(self.receiver_id, vec![0x5A; size])
                            .await
                            .map_err(|e| refused(&e))?;
                        sent += 1;
                    }
                    Sending::Batches => {
                        let batch = (0..SEND_ALL_BATCH).map(|_| vec![0x5A; size]);
                        let accepted = self
                            .sender
                            .send_all(self.receiver_id, batch)
                            .await
                            .map_err(|e| refused(&e))?;
                        sent += accepted.len() as u64;
                    }
                }
            }
            Ok::<_, BenchError>(sent)
        })?;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.progress.delivered.load(Ordering::SeqCst) < sent {
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!(
                    "{} of {sent} messages of {size} B delivered",
                    self.progress.delivered.load(Ordering::SeqCst)
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let last = self
            .progress
            .last
            .lock()
            .map_err(|_| BenchError::Setup("the receiver's lock was poisoned".into()))?
            .unwrap_or(start);
        let after = self.udp_traffic()?;
        let per_message = |count: u64| round2(count as f64 / sent.max(1) as f64);
        let datagrams = DatagramsPerMessage {
            sent: per_message(after.0.saturating_sub(before.0)),
            received: per_message(after.1.saturating_sub(before.1)),
        };
        let run = Run {
            messages: sent,
            elapsed: last.saturating_duration_since(start),
        };
        Ok((run, datagrams))
    }

    /// Datagrams the sender's endpoint has sent and received so far.
    fn udp_traffic(&self) -> Result<(u64, u64), BenchError> {
        let report = self
            .sender_runtime
            .block_on(self.sender.status_report())
            .map_err(|e| BenchError::Setup(format!("sender status: {e}")))?;
        Ok((
            report.transport.datagrams_sent,
            report.transport.datagrams_received,
        ))
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop_receiver.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.receiver_thread.take() {
            let _ = thread.join();
        }
        let SessionPair {
            sender,
            sender_runtime,
            ..
        } = self;
        sender_runtime.block_on(sender.stop());
    }
}

/// Waits for the session with `peer` to be Ready.
async fn wait_ready(node: &mut Node, peer: DeviceId) -> Result<(), BenchError> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match node.next_event().await {
                Some(NodeEvent::Ready(r)) if r.peer == peer => return Ok(()),
                Some(_) => {}
                None => return Err(BenchError::Setup("the sending node stopped".into())),
            }
        }
    })
    .await
    .map_err(|_| BenchError::Timeout("no session within 30 s".into()))?
}

/// The receiving application: takes every event as it comes and counts deliveries.
async fn receive(
    mut node: Node,
    progress: &Progress,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            event = node.next_event() => match event {
                Some(NodeEvent::Delivered { .. }) => {
                    if let Ok(mut last) = progress.last.lock() {
                        *last = Some(Instant::now());
                    }
                    progress.delivered.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => {}
                None => break,
            },
            _ = &mut stop => break,
        }
    }
    node.stop().await;
}

/// Seals and opens `size`-byte messages for about `time`, in batches.
fn seal_open(size: usize, time: Duration) -> Result<CipherRow, BenchError> {
    const BATCH: usize = 64;
    let (mut sealer, mut opener) = paired_rings()?;
    let plaintext = vec![0x5A_u8; size];
    let (mut sealing, mut opening, mut messages) = (Duration::ZERO, Duration::ZERO, 0_usize);
    let failed = |e: tether_crypto::RingError| BenchError::Setup(format!("cipher: {e}"));
    let mut batch = Vec::with_capacity(BATCH);
    while sealing + opening < time {
        let start = Instant::now();
        for _ in 0..BATCH {
            batch.push(sealer.seal(&plaintext).map_err(failed)?);
        }
        let sealed = Instant::now();
        for frame in batch.drain(..) {
            opener.open(&frame).map_err(failed)?;
        }
        sealing += sealed - start;
        opening += sealed.elapsed();
        messages += BATCH;
    }
    Ok(CipherRow {
        message_bytes: size,
        seal_mib_s: round2(mib_per_s(messages * size, sealing)),
        open_mib_s: round2(mib_per_s(messages * size, opening)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cipher_measure_opens_what_it_seals() {
        let row = seal_open(1024, Duration::from_millis(5)).unwrap();
        assert!(row.seal_mib_s > 0.0 && row.open_mib_s > 0.0);
    }
}
