//! `tether bench relay`: envelopes through one relay between many connected devices.
//!
//! The **relay** is the relay server `tether relay` runs ([`RelayServer`]: the QUIC
//! endpoint, the queue core, the rendezvous table), with the default bounds and rate
//! limits and open admission, alone in a child process (`tether bench relay-server`),
//! so that its CPU time is its own; its queue is in memory, or with `--durable` in a
//! redb file as `tether relay` keeps it. The **devices** are lightweight relay
//! clients in this process: each has its own key, its own UDP socket on its own
//! loopback address (127.1.x.y) and one QUIC connection to the relay, and speaks the
//! relay protocol itself (challenge, proof, then requests), without a session layer
//! on top. They run on one tokio runtime with two worker threads.
//!
//! Once every device is connected and authenticated, each sends its share of the
//! envelopes, round-robin to every other device, keeping at most `--window` of its
//! envelopes between its request and their delivery (a closed loop: the relay is
//! kept busy, and its queues stay far from their bounds). An envelope is opaque bytes
//! to the relay; the bench writes its number and its send time into its first 16.
//!
//! - **queue** path (the default; what a node uses for migration pings to a peer that
//!   may be offline): `Enqueue` → the relay stores it, answers `Enqueued` and pushes it
//!   to the connected recipient (`Push`), which acknowledges it (`Delivered`) and the
//!   relay removes it. Latency: from just before the sender writes the `Enqueue` to
//!   the recipient reading the `Push`.
//! - **forward** path (what a session uses while the relay is its path): `Forward` →
//!   `Forwarded` on the recipient's connection, nothing stored.
//!
//! Throughput is the envelopes delivered divided by the time from the first send to
//! the last delivery. The relay's CPU time over that interval (from `/proc`, in 10 ms
//! steps) gives the envelopes per CPU-second of the relay, which does not depend on
//! what else the machine runs. The relay's own counters (stored, pushed, refused…)
//! are read at the end.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tether::actors::{GetServerState, RelayServer};
use tether::{PublicKey, StaticKeypair};
use tether_crypto::{server_auth_proof, verify_server_proof};
use tether_protocol::{DeviceId, RelayMessage, ServerRefusal, WireFrame};
use tether_rcs::{Admission, RelayServerConfig};
use tether_transport::bench::process_cpu_time;
use tether_transport::{Endpoint, LinkReceiver, LinkSender, TransportConfig};
use tokio::sync::{Notify, Semaphore};

use super::sessions::peer_ip;
use super::{round2, BenchError, ChildProcess};

/// Dials (QUIC handshake plus the relay's challenge) in flight at once while the
/// devices connect: below the relay's 64 pending accepts.
const CONNECT_CONCURRENCY: usize = 32;
/// How long one device may take to connect and authenticate.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// TTL asked for each envelope (a node's relay client asks the same).
const TTL_MS: u64 = 600_000;
/// Bytes of the bench's header in each envelope: its number and its send time.
const HEADER: usize = 16;
/// Largest envelope the bench sends (the relay takes up to 64 KiB + 1 KiB).
const MAX_ENVELOPE: usize = 60 * 1024;

/// Which relay path the envelopes take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayPath {
    /// `Enqueue` → stored → `Push` → `Delivered`.
    Queue,
    /// `Forward` → `Forwarded`, live.
    Forward,
}

/// `tether bench relay`'s options.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Devices connected to the relay (each sends and receives).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub devices: usize,
    /// Envelopes sent in all (split evenly among the devices). The relay's default
    /// rate limit lets a device enqueue a burst of 512, then 64 a second: above 512 per
    /// device the queue path measures the rate limit.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub envelopes: usize,
    /// Bytes per envelope (at least 16).
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    pub bytes: usize,
    /// Envelopes each device keeps between its request and their delivery. The
    /// default, 2 per device (2 000 in flight with 1 000 devices), keeps the relay busy;
    /// 8 (8 000 in flight) overflows its socket's receive buffer in bursts.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub window: usize,
    /// The relay path: `queue` (Enqueue → Push) or `forward` (Forward → Forwarded).
    #[arg(long, value_enum, default_value_t = RelayPath::Queue)]
    pub path: RelayPath,
    /// Keep the relay's queue in a redb file, as `tether relay` does (the frames waiting
    /// when the relay wakes up share one commit, on the store's own thread), instead of
    /// in memory.
    #[arg(long)]
    pub durable: bool,
    /// Worker threads of the relay's tokio runtime, where its QUIC endpoint and its
    /// connections' readers and writers run (its actor keeps its own thread); 0: one
    /// thread for everything.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub relay_workers: usize,
}

/// What `tether bench relay` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// Devices connected.
    pub devices: usize,
    /// Envelopes sent.
    pub envelopes: usize,
    /// `queue` or `forward`.
    pub path: RelayPath,
    /// `memory` or `redb`.
    pub store: &'static str,
    /// Bytes per envelope.
    pub envelope_bytes: usize,
    /// Envelopes each device kept in flight.
    pub window: usize,
    /// Worker threads of the relay's runtime (0: everything on one thread).
    pub relay_workers: usize,
    /// Time to connect and authenticate every device, ms.
    pub connect_ms: f64,
    /// Envelopes delivered (each counted once).
    pub delivered: usize,
    /// Envelopes the relay refused.
    pub refused: usize,
    /// Of those, refused for a rate limit.
    pub rate_limited: usize,
    /// Envelopes delivered more than once (extra copies).
    pub duplicates: usize,
    /// Envelopes neither delivered nor refused when the bench stopped waiting.
    pub lost: usize,
    /// Devices whose connection to the relay failed during the run.
    pub links_failed: usize,
    /// From the first send to the last delivery, ms.
    pub elapsed_ms: f64,
    /// Delivered envelopes per second of that time.
    pub envelopes_per_s: f64,
    /// Enqueue (or Forward) → delivery: median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// CPU time of the relay process during the sends, s (10 ms steps).
    pub relay_cpu_s: f64,
    /// Delivered envelopes per CPU-second of the relay.
    pub envelopes_per_relay_cpu_s: f64,
    /// CPU time of this process (the devices) during the sends, s.
    pub devices_cpu_s: f64,
    /// Datagrams the kernel dropped at the devices' sockets (receive buffer full).
    pub devices_receive_buffer_drops: u64,
    /// The relay's counters at the end (the datagram counters over the whole run,
    /// connecting included).
    pub relay_counters: RelayCounters,
}

/// The relay's counters, as its process reported them at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayCounters {
    /// Envelopes stored.
    pub stored: u64,
    /// Envelopes acknowledged and removed.
    pub delivered: u64,
    /// Push frames sent.
    pub pushed: u64,
    /// Frames forwarded live.
    pub forwarded: u64,
    /// Requests refused for a rate limit.
    pub rate_limited: u64,
    /// Frames dropped at a full connection writer queue.
    pub writes_dropped: u64,
    /// Store commits that failed.
    pub store_failures: u64,
    /// Connections open at the end.
    pub connections: usize,
    /// The relay process's CPU time so far, ms.
    pub cpu_ms: u64,
    /// UDP datagrams the relay's endpoint received.
    pub datagrams_received: u64,
    /// UDP datagrams it sent.
    pub datagrams_sent: u64,
    /// Datagrams the kernel dropped at the relay's socket because its receive buffer
    /// was full.
    pub receive_buffer_drops: u64,
}

impl RelayReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let path = match self.path {
            RelayPath::Queue => "queue (Enqueue → Push)",
            RelayPath::Forward => "forward (Forward → Forwarded)",
        };
        let runtime = match self.relay_workers {
            0 => "one thread".to_string(),
            n => format!("its actor + {n} worker threads"),
        };
        let mut out = format!(
            "relay over loopback QUIC: {} devices, {} envelopes of {} bytes, {path} path, \
             queue in {}, window {} per device, relay on {runtime}\n\n",
            self.devices, self.envelopes, self.envelope_bytes, self.store, self.window
        );
        out.push_str("envelopes/s   p50 ms   p90 ms   p99 ms   max ms   relay CPU s   envelopes/relay CPU-s   devices CPU s\n");
        out.push_str(&format!(
            "{:>11.0}   {:>6.2}   {:>6.2}   {:>6.2}   {:>6.2}   {:>11.2}   {:>21.0}   {:>13.2}\n",
            self.envelopes_per_s,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.relay_cpu_s,
            self.envelopes_per_relay_cpu_s,
            self.devices_cpu_s
        ));
        out.push_str(&format!(
            "\ndelivered {} of {} in {:.0} ms (connecting took {:.0} ms); refused {} ({} rate limited); duplicates {}; lost {}; connections failed {}\n",
            self.delivered,
            self.envelopes,
            self.elapsed_ms,
            self.connect_ms,
            self.refused,
            self.rate_limited,
            self.duplicates,
            self.lost,
            self.links_failed
        ));
        let c = &self.relay_counters;
        out.push_str(&format!(
            "relay counters: stored {}, pushed {}, acknowledged {}, forwarded {}, rate limited {}, writes dropped {}, store failures {}\n",
            c.stored, c.pushed, c.delivered, c.forwarded, c.rate_limited, c.writes_dropped, c.store_failures
        ));
        out.push_str(&format!(
            "UDP: relay received {} and sent {} datagrams; dropped at a full receive buffer: {} at the relay, {} at the devices\n",
            c.datagrams_received, c.datagrams_sent, c.receive_buffer_drops, self.devices_receive_buffer_drops
        ));
        out
    }
}

/// Runs the benchmark.
pub fn run(args: &RelayArgs) -> Result<RelayReport, BenchError> {
    if args.devices < 2 {
        return Err(BenchError::Argument("--devices must be at least 2".into()));
    }
    if args.envelopes == 0 {
        return Err(BenchError::Argument(
            "--envelopes must be at least 1".into(),
        ));
    }
    if !(HEADER..=MAX_ENVELOPE).contains(&args.bytes) {
        return Err(BenchError::Argument(format!(
            "--bytes must be between {HEADER} and {MAX_ENVELOPE}"
        )));
    }
    if args.window == 0 {
        return Err(BenchError::Argument("--window must be at least 1".into()));
    }
    let scratch = std::env::temp_dir().join(format!("tether-bench-relay-{}", std::process::id()));
    let store = args.durable.then_some(scratch.as_path());
    if let Some(dir) = store {
        std::fs::create_dir_all(dir)?;
    }
    let result = (|| {
        let workers = args.relay_workers.to_string();
        let mut command: Vec<&std::ffi::OsStr> = vec![
            "bench".as_ref(),
            "relay-server".as_ref(),
            "--workers".as_ref(),
            workers.as_ref(),
        ];
        if let Some(dir) = store {
            command.extend(["--store".as_ref(), dir.as_os_str()]);
        }
        let mut relay = ChildProcess::spawn(&command)?;
        let line = relay.line("relay")?;
        let mut words = line.split_whitespace();
        let addr: SocketAddr = words
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Hub(format!("no relay address in {line:?}")))?;
        let public = words
            .next()
            .and_then(|k| PublicKey::from_hex(k).ok())
            .ok_or_else(|| BenchError::Hub(format!("no relay key in {line:?}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let outcome = rt.block_on(measure(args, addr, public, &mut relay));
        drop(rt);
        relay.finish();
        outcome
    })();
    if store.is_some() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

/// What the devices share: which envelopes arrived, when, and each sender's window.
struct Shared {
    epoch: Instant,
    total: usize,
    /// Deliveries of each envelope (saturating at 255), 1 once refused-and-counted.
    seen: Vec<AtomicU8>,
    delivered: AtomicUsize,
    duplicates: AtomicUsize,
    refused: AtomicUsize,
    rate_limited: AtomicUsize,
    /// Devices whose connection failed while sending or receiving.
    links_failed: AtomicUsize,
    /// Latencies in µs.
    latencies: Mutex<Vec<u32>>,
    /// Each sender's window.
    windows: Vec<Semaphore>,
    /// Signalled when every envelope is delivered or refused.
    done: Notify,
    /// When the last one was.
    finished: Mutex<Option<Instant>>,
}

impl Shared {
    fn settled(&self) {
        if self.delivered.load(Ordering::Acquire) + self.refused.load(Ordering::Acquire)
            >= self.total
        {
            if let Ok(mut finished) = self.finished.lock() {
                finished.get_or_insert_with(Instant::now);
            }
            self.done.notify_one();
        }
    }

    /// An envelope arrived at its recipient.
    fn arrived(&self, envelope: &[u8]) {
        let (Some(number), Some(sent)) = (read_u64(envelope, 0), read_u64(envelope, 8)) else {
            return;
        };
        let Some(slot) = usize::try_from(number).ok().and_then(|n| self.seen.get(n)) else {
            return;
        };
        if slot.fetch_add(1, Ordering::AcqRel) > 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let micros = u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX);
        if let Ok(mut latencies) = self.latencies.lock() {
            latencies.push(micros);
        }
        if let Some(window) = self.windows.get(sender_of(number, self)) {
            window.add_permits(1);
        }
        self.delivered.fetch_add(1, Ordering::AcqRel);
        self.settled();
    }

    /// The relay refused one of `sender`'s envelopes.
    fn refused(&self, sender: usize, reason: ServerRefusal) {
        self.refused.fetch_add(1, Ordering::AcqRel);
        if reason == ServerRefusal::RateLimited {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(window) = self.windows.get(sender) {
            window.add_permits(1);
        }
        self.settled();
    }
}

/// Envelope `number`'s sender: numbers are dealt out in blocks per device.
fn sender_of(number: u64, shared: &Shared) -> usize {
    let per = shared.total.div_ceil(shared.windows.len().max(1)).max(1);
    usize::try_from(number).unwrap_or(usize::MAX) / per
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(slice.try_into().ok()?))
}

/// One connected device.
struct Device {
    id: DeviceId,
    sender: LinkSender,
    receiver: LinkReceiver,
    endpoint: Endpoint,
}

async fn connect(
    i: usize,
    keys: StaticKeypair,
    relay: SocketAddr,
    relay_key: PublicKey,
) -> Result<Device, BenchError> {
    let setup = |what: &str| BenchError::Setup(format!("device {i}: {what}"));
    let endpoint = Endpoint::bind_udp(
        SocketAddr::from((peer_ip(i), 0)),
        TransportConfig::default(),
    )
    .await
    .map_err(|e| setup(&e.to_string()))?;
    let link = endpoint
        .dial(relay)
        .await
        .map_err(|e| setup(&e.to_string()))?;
    let binding = link
        .handle()
        .channel_binding()
        .ok_or_else(|| setup("no channel binding"))?;
    let (sender, mut receiver) = link.split();
    let Some(RelayMessage::Challenge { nonce, .. }) = next_message(&mut receiver).await else {
        return Err(setup("no challenge from the relay"));
    };
    let id = DeviceId(*keys.public().as_bytes());
    let proof = server_auth_proof(&keys, &relay_key, &nonce, &binding).to_vec();
    send(
        &sender,
        RelayMessage::Authenticate {
            device: id,
            proof,
            rendezvous_only: false,
            rendezvous_ids: Vec::new(),
        },
    )
    .await
    .map_err(|e| setup(&e))?;
    match next_message(&mut receiver).await {
        Some(RelayMessage::Welcome { proof, .. })
            if verify_server_proof(&keys, &relay_key, &nonce, &binding, &proof) => {}
        other => return Err(setup(&format!("no verified Welcome: {other:?}"))),
    }
    Ok(Device {
        id,
        sender,
        receiver,
        endpoint,
    })
}

/// The next relay message on the link (other frames are skipped), or None when it ends.
async fn next_message(receiver: &mut LinkReceiver) -> Option<RelayMessage> {
    loop {
        let frame = receiver.recv_frame().await.ok()??;
        if let Ok(WireFrame::Relay(message)) = tether_protocol::decode(&frame) {
            return Some(message);
        }
    }
}

async fn send(sender: &LinkSender, message: RelayMessage) -> Result<(), String> {
    let bytes = tether_protocol::encode(&WireFrame::Relay(message)).map_err(|e| e.to_string())?;
    sender
        .send_frame(Bytes::from(bytes))
        .await
        .map_err(|e| e.to_string())
}

async fn measure(
    args: &RelayArgs,
    relay: SocketAddr,
    relay_key: PublicKey,
    process: &mut ChildProcess,
) -> Result<RelayReport, BenchError> {
    let n = args.devices;
    let connect_started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut dials = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        dials.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let keys = StaticKeypair::generate(&mut rand::rngs::OsRng);
            let device =
                tokio::time::timeout(CONNECT_TIMEOUT, connect(i, keys, relay, relay_key)).await;
            (i, device)
        });
    }
    let mut devices: Vec<Option<Device>> = (0..n).map(|_| None).collect();
    while let Some(joined) = dials.join_next().await {
        let (i, device) = joined.map_err(|e| BenchError::Setup(e.to_string()))?;
        let device = device.map_err(|_| {
            BenchError::Timeout(format!(
                "device {i} did not connect within {CONNECT_TIMEOUT:?}"
            ))
        })??;
        devices[i] = Some(device);
    }
    let devices: Vec<Device> = devices.into_iter().flatten().collect();
    let connect_ms = connect_started.elapsed().as_secs_f64() * 1000.0;
    let ids: Arc<Vec<DeviceId>> = Arc::new(devices.iter().map(|d| d.id).collect());

    let per_device = args.envelopes.div_ceil(n);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        total: args.envelopes,
        seen: (0..args.envelopes).map(|_| AtomicU8::new(0)).collect(),
        delivered: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        rate_limited: AtomicUsize::new(0),
        links_failed: AtomicUsize::new(0),
        latencies: Mutex::new(Vec::with_capacity(args.envelopes)),
        windows: (0..n).map(|_| Semaphore::new(args.window)).collect(),
        done: Notify::new(),
        finished: Mutex::new(None),
    });

    let relay_cpu_before = relay_stats(process)?.cpu_ms;
    let own_cpu_before = process_cpu_time().unwrap_or_default();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut endpoints = Vec::with_capacity(n);
    for (i, device) in devices.into_iter().enumerate() {
        let Device {
            sender,
            mut receiver,
            endpoint,
            ..
        } = device;
        endpoints.push(endpoint);
        let reader = shared.clone();
        let acks = sender.clone();
        tasks.spawn(async move {
            while let Some(message) = next_message(&mut receiver).await {
                match message {
                    RelayMessage::Push {
                        envelope_id,
                        envelope,
                        ..
                    } => {
                        reader.arrived(&envelope);
                        let _ = send(
                            &acks,
                            RelayMessage::Delivered {
                                envelope_ids: vec![envelope_id],
                            },
                        )
                        .await;
                    }
                    RelayMessage::Forwarded { frame, .. } => reader.arrived(&frame),
                    RelayMessage::Refused { reason, .. } => reader.refused(i, reason),
                    _ => {}
                }
            }
            if reader.links_failed.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!(
                    "tether bench relay: device {i}'s connection ended: {:?}",
                    receiver.handle().lost_reason()
                );
            }
        });
        let writer = shared.clone();
        let ids = ids.clone();
        let (bytes, path) = (args.bytes, args.path);
        let first = i * per_device;
        let last = (first + per_device).min(args.envelopes);
        tasks.spawn(async move {
            let mut filler = vec![0x5A_u8; bytes];
            for (k, number) in (first..last).enumerate() {
                let Ok(permit) = writer.windows[i].acquire().await else {
                    return;
                };
                permit.forget();
                let to = ids[(i + 1 + k % (n - 1)) % n];
                filler[..8].copy_from_slice(&(number as u64).to_le_bytes());
                let sent = writer.epoch.elapsed().as_nanos() as u64;
                filler[8..16].copy_from_slice(&sent.to_le_bytes());
                let message = match path {
                    RelayPath::Queue => RelayMessage::Enqueue {
                        to,
                        request: number as u64,
                        ttl_ms: TTL_MS,
                        envelope: filler.clone(),
                    },
                    RelayPath::Forward => RelayMessage::Forward {
                        to,
                        frame: filler.clone(),
                    },
                };
                if let Err(e) = send(&sender, message).await {
                    if writer.links_failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("tether bench relay: device {i} could not send: {e}");
                    }
                    return;
                }
            }
        });
    }
    shared.settled();
    let deadline = Duration::from_secs(30) + Duration::from_millis(args.envelopes as u64 / 5);
    let _ = tokio::time::timeout(deadline, shared.done.notified()).await;
    let finished = shared
        .finished
        .lock()
        .ok()
        .and_then(|f| *f)
        .unwrap_or_else(Instant::now);
    let elapsed = finished.saturating_duration_since(started);
    let own_cpu = process_cpu_time()
        .unwrap_or_default()
        .saturating_sub(own_cpu_before);
    let counters = relay_stats(process)?;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let devices_drops: u64 = endpoints
        .iter()
        .map(|e| e.stats().receive_buffer_drops)
        .sum();
    for endpoint in &endpoints {
        endpoint.close();
    }

    let mut latencies = shared
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        round2(f64::from(latencies[rank.clamp(1, latencies.len()) - 1]) / 1000.0)
    };
    let delivered = shared.delivered.load(Ordering::Acquire);
    let refused = shared.refused.load(Ordering::Acquire);
    let relay_cpu = Duration::from_millis(counters.cpu_ms.saturating_sub(relay_cpu_before));
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Ok(RelayReport {
        devices: n,
        envelopes: args.envelopes,
        path: args.path,
        store: if args.durable { "redb" } else { "memory" },
        envelope_bytes: args.bytes,
        window: args.window,
        relay_workers: args.relay_workers,
        connect_ms: round2(connect_ms),
        delivered,
        refused,
        rate_limited: shared.rate_limited.load(Ordering::Acquire),
        duplicates: shared.duplicates.load(Ordering::Acquire),
        lost: args.envelopes.saturating_sub(delivered + refused),
        links_failed: shared.links_failed.load(Ordering::Acquire),
        elapsed_ms: round2(elapsed.as_secs_f64() * 1000.0),
        envelopes_per_s: round2(delivered as f64 / seconds),
        p50_ms: pct(50.0),
        p90_ms: pct(90.0),
        p99_ms: pct(99.0),
        max_ms: pct(100.0),
        relay_cpu_s: round2(relay_cpu.as_secs_f64()),
        envelopes_per_relay_cpu_s: round2(delivered as f64 / relay_cpu.as_secs_f64().max(0.01)),
        devices_cpu_s: round2(own_cpu.as_secs_f64()),
        devices_receive_buffer_drops: devices_drops,
        relay_counters: counters,
    })
}

/// The relay's counters and CPU time now.
fn relay_stats(relay: &mut ChildProcess) -> Result<RelayCounters, BenchError> {
    relay.say("stats")?;
    let line = relay.line("stats")?;
    serde_json::from_str(&line).map_err(|e| BenchError::Hub(format!("the relay's stats: {e}")))
}

/// The relay process: a relay server on 127.0.0.1, admitting any device, its queue in
/// memory or in a redb file in `store`. Says `relay ADDR KEY`, then answers each
/// `stats` line on its input with `stats {json}`; stops when its input closes.
pub fn server_process(store: Option<&Path>, workers: usize) -> Result<(), BenchError> {
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::Builder::new()
        .name("bench-relay-input".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        })?;
    let runtime = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    let system = actix_rt::System::with_tokio_rt(|| runtime);
    system.block_on(async move {
        let endpoint = Endpoint::bind_udp(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            TransportConfig::default(),
        )
        .await
        .map_err(|e| BenchError::Setup(format!("relay endpoint: {e}")))?;
        let keypair = StaticKeypair::generate(&mut rand::rngs::OsRng);
        let mut seed = [0_u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let mut config = RelayServerConfig::new(keypair, seed, Admission::Open);
        let stats_of = endpoint.clone();
        let handle = match store {
            None => RelayServer::start(endpoint, config),
            Some(dir) => {
                config.unix_ms_at_start = tether::unix_ms();
                let store = tether_store::RedbRelayQueueStore::open(&dir.join("queue.redb"))
                    .map_err(|e| BenchError::Setup(format!("relay store: {e}")))?;
                RelayServer::start_with_store(endpoint, config, Default::default(), Box::new(store))
            }
        }
        .map_err(|e| BenchError::Setup(format!("relay: {e}")))?;
        println!("relay {} {}", handle.local_addr, handle.public.to_hex());
        while let Some(line) = lines_rx.recv().await {
            if line.trim() != "stats" {
                continue;
            }
            let state = handle
                .addr
                .send(GetServerState)
                .await
                .map_err(|e| BenchError::Hub(e.to_string()))?;
            let c = state.counters;
            let counters = RelayCounters {
                stored: c.stored,
                delivered: c.delivered,
                pushed: c.pushed,
                forwarded: c.forwarded,
                rate_limited: c.refused.rate_limited,
                writes_dropped: state.writes_dropped,
                store_failures: c.store_failures,
                connections: state.connections,
                cpu_ms: process_cpu_time().map_or(0, |t| t.as_millis() as u64),
                datagrams_received: stats_of.stats().datagrams_received,
                datagrams_sent: stats_of.stats().datagrams_sent,
                receive_buffer_drops: stats_of.stats().receive_buffer_drops,
            };
            println!(
                "stats {}",
                serde_json::to_string(&counters).map_err(|e| BenchError::Hub(e.to_string()))?
            );
        }
        handle.addr.do_send(tether_protocol::Shutdown);
        Ok(())
    })
}
