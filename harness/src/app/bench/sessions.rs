//! `tether bench sessions`: many idle sessions to one node, and one network change of
//! that node.
//!
//! The **hub**, the node holding every session, is a [`tether::Node`] built with the
//! library's builder, alone in a child process (`tether bench sessions-hub`), so that
//! its resident memory (VmRSS) is its own. The **peers** are N nodes in this process:
//! `tether::actors::Node`s, the same actors `tether::Node` runs, but many to one actix
//! system (two systems, one thread each) rather than a thread and a runtime per node,
//! which 10 000 peers on a 2-core machine could not afford. Each peer has its own UDP
//! socket on its own loopback address (127.1.x.y), as separate devices would, and
//! dials the hub directly; a relay (in this process, admitting anyone) serves them all.
//!
//! The hub reports: its VmRSS before its node started, once it listens, and after every
//! session has been Ready and the node idle for 2 s; the time from the peers'
//! start to every session Ready; then it rebinds to 127.0.0.2 (`Node::rebind`) and
//! reports the time until every session has completed its migration and is Ready
//! again, how many are Ready after it, and the handshakes counted during it (all
//! sessions' handshake counters, before and after).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tether::actors::{NodeConfig, NodePeer, ServerInfo};
use tether::{DeviceId, Node, NodeEvent, PublicKey, RelationshipKey, StaticKeypair};
use tether_protocol::SessionStatus;
use tether_transport::{Endpoint, TransportConfig};

use super::{round2, rss_kib, runtime, start_relay, BenchError, ChildProcess};

/// Idle time after every session is Ready, before memory is read and the network
/// changes: crossing handshakes settle, buffers reach their idle size.
const SETTLE: Duration = Duration::from_secs(2);
/// Threads (actix systems) the peers run on.
const PEER_THREADS: usize = 2;
/// How long the sessions may take to recover after the hub's network change.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Peers of one thread that may be establishing their session at once: a new peer
/// node starts when one of them is Ready. All N devices of a real deployment do not
/// start within the same second, and N nodes on two threads of this process cannot
/// run N handshakes, relay connections and dials at once without falling seconds
/// behind, which the hub would see as unanswered heartbeats. 32 per thread keeps the
/// hub's 64 pending accepts (the transport's `max_pending_accepts`) and the relay's
/// 64 handshakes in progress busy without overflowing them.
const ESTABLISHING_PER_THREAD: usize = 32;
/// Longest a peer holds its establishment slot without becoming Ready.
const SLOT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often each peer thread checks how late its timers fire.
const LAG_PROBE: Duration = Duration::from_millis(100);
/// Where the hub moves to.
const NEW_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Longest time to establish `n` sessions before giving up.
fn establish_timeout(n: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(20) * n as u32
}

/// Everything `tether bench sessions` measured.
#[derive(Debug, Clone, Serialize)]
pub struct SessionsReport {
    /// Where the hub's memory was read.
    pub memory: &'static str,
    /// One row per N.
    pub sessions: Vec<SessionsRow>,
}

/// N idle sessions to one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsRow {
    /// N.
    pub sessions: usize,
    /// (VmRSS with every session established and idle − VmRSS before the node
    /// started) / N, KiB.
    pub rss_kib_per_session: f64,
    /// (VmRSS with every session established and idle − VmRSS once the node
    /// listened) / N, KiB: without the node's fixed cost.
    pub rss_kib_per_session_since_start: f64,
    /// The hub's VmRSS before its node started, KiB.
    pub rss_before_kib: u64,
    /// Once its node listened (peers configured, no session yet), KiB.
    pub rss_started_kib: u64,
    /// With every session established and idle, KiB.
    pub rss_established_kib: u64,
    /// From the peers' start to every session Ready at the hub, ms.
    pub establish_ms: f64,
    /// Sessions Ready when establishment ended.
    pub ready_established: usize,
    /// From the hub's rebind to every session migrated and Ready again (or to the
    /// give-up, 60 s, when `recovered` is false), ms.
    pub recover_ms: f64,
    /// Whether every session completed its migration and was Ready again in time.
    pub recovered: bool,
    /// Sessions Ready at the end.
    pub ready_after: usize,
    /// Handshakes completed during the recovery (all sessions' counters, after −
    /// before).
    pub handshakes_during_recovery: u64,
    /// Handshake messages sent or answered during it.
    pub handshake_attempts_during_recovery: u64,
}

impl SessionsReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "idle sessions to one node over loopback (memory: {})\n\n",
            self.memory
        );
        out.push_str(
            "sessions   KiB/session   establish ms   recover ms   ready after   handshakes during recovery\n",
        );
        for r in &self.sessions {
            out.push_str(&format!(
                "{:>8}   {:>11.1}   {:>12.0}   {:>10.0}{}   {:>11}   {:>26}\n",
                r.sessions,
                r.rss_kib_per_session,
                r.establish_ms,
                r.recover_ms,
                if r.recovered { " " } else { "!" },
                r.ready_after,
                r.handshakes_during_recovery
            ));
        }
        if self.sessions.iter().any(|r| !r.recovered) {
            out.push_str("! not every session was Ready again within 60 s\n");
        }
        out
    }
}

/// Runs each N in turn.
pub fn run(counts: &[usize]) -> Result<SessionsReport, BenchError> {
    let sessions = counts
        .iter()
        .map(|&n| run_one(n))
        .collect::<Result<_, _>>()?;
    Ok(SessionsReport {
        memory: "VmRSS of the hub, a child process holding only the hub node",
        sessions,
    })
}

/// The loopback address of peer `i`: 127.1.0.1 onwards, 250 per /24.
pub(super) fn peer_ip(i: usize) -> Ipv4Addr {
    let block = 1 + i / (250 * 256);
    let within = i % (250 * 256);
    Ipv4Addr::new(
        127,
        u8::try_from(block).unwrap_or(u8::MAX),
        u8::try_from(within / 250).unwrap_or(u8::MAX),
        u8::try_from(within % 250 + 1).unwrap_or(u8::MAX),
    )
}

/// A scratch folder for the hub's key and setup, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_one(n: usize) -> Result<SessionsRow, BenchError> {
    let relay = start_relay(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let scratch = Scratch(
        std::env::temp_dir().join(format!("tether-bench-sessions-{}-{n}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)?;
    let mut rng = rand::rngs::OsRng;
    let hub_key = StaticKeypair::generate(&mut rng);
    let hub_public = *hub_key.public();
    hub_key
        .save(&scratch.0.join("hub.key"))
        .map_err(|e| BenchError::Setup(format!("hub key: {e}")))?;
    let peers: Vec<(StaticKeypair, RelationshipKey)> = (0..n)
        .map(|_| {
            (
                StaticKeypair::generate(&mut rng),
                RelationshipKey::generate(&mut rng),
            )
        })
        .collect();
    let mut setup = format!("{}\n{}\n", relay.addr, relay.public.to_hex());
    for (key, rk) in &peers {
        setup.push_str(&format!(
            "{} {}\n",
            key.public().to_hex(),
            rk.to_hex().as_str()
        ));
    }
    let setup_path = scratch.0.join("setup");
    write_private(&setup_path, setup.as_bytes())?;

    let mut hub = ChildProcess::spawn(&[
        "bench".as_ref(),
        "sessions-hub".as_ref(),
        "--setup".as_ref(),
        setup_path.as_os_str(),
    ])?;
    let line = hub.line("hub")?;
    let hub_addr: SocketAddr = line
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| BenchError::Hub(format!("no address in {line:?}")))?;
    hub.say("go")?;
    let server = ServerInfo {
        addr: relay.addr,
        public: relay.public,
    };
    let peer_nodes = PeerNodes::start(peers, hub_public, hub_addr, server)?;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let tally = peer_nodes.tally.clone();
    let started = Instant::now();
    let reporter = std::thread::spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            done_rx.recv_timeout(Duration::from_secs(5))
        {
            eprintln!(
                "tether bench sessions: peers after {} ms: {}",
                started.elapsed().as_millis(),
                tally.line()
            );
        }
    });
    let result = hub.line("result");
    drop(done_tx);
    let _ = reporter.join();
    peer_nodes.stop();
    hub.finish();
    drop(relay);
    serde_json::from_str(&result?).map_err(|e| BenchError::Hub(format!("its result: {e}")))
}

/// Writes a file only its owner can read (it holds relationship keys).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

/// The peers: nodes on [`PEER_THREADS`] actix systems of this process.
struct PeerNodes {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The peers' status changes, counted.
    tally: Arc<PeerTally>,
}

/// The peers' status changes, by (from, to): what the progress lines show of the
/// peers' side.
#[derive(Default)]
struct PeerTally {
    changes: std::sync::Mutex<BTreeMap<(Option<SessionStatus>, SessionStatus), u64>>,
    /// The longest a peer thread's timer fired late since the last line, in µs.
    worst_lag_us: std::sync::atomic::AtomicU64,
}

impl PeerTally {
    fn count(&self, from: Option<SessionStatus>, to: SessionStatus) {
        if let Ok(mut counts) = self.changes.lock() {
            *counts.entry((from, to)).or_default() += 1;
        }
    }

    fn lagged(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.worst_lag_us
            .fetch_max(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// The changes so far, and the worst lag since the last line.
    fn line(&self) -> String {
        let changes = self
            .changes
            .lock()
            .map(|counts| status_changes(&counts))
            .unwrap_or_default();
        let lag_us = self
            .worst_lag_us
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        format!(
            "changes [{changes}]; timers up to {} ms late",
            lag_us / 1000
        )
    }
}

impl PeerNodes {
    /// Starts one node per peer, each paired with the hub and told its address.
    fn start(
        peers: Vec<(StaticKeypair, RelationshipKey)>,
        hub: PublicKey,
        hub_addr: SocketAddr,
        server: ServerInfo,
    ) -> Result<Self, BenchError> {
        let mut shares: Vec<Vec<(usize, StaticKeypair, RelationshipKey)>> =
            (0..PEER_THREADS).map(|_| Vec::new()).collect();
        for (i, (key, rk)) in peers.into_iter().enumerate() {
            shares[i % PEER_THREADS].push((i, key, rk));
        }
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let tally = Arc::new(PeerTally::default());
        let mut nodes = PeerNodes {
            stops: Vec::new(),
            threads: Vec::new(),
            tally: tally.clone(),
        };
        for share in shares {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let started_tx = started_tx.clone();
            let tally = tally.clone();
            let thread = std::thread::Builder::new()
                .name("bench-peers".into())
                .spawn(move || {
                    let system = actix_rt::System::new();
                    system.block_on(async move {
                        let probe = tally.clone();
                        actix_rt::spawn(async move {
                            // How late this thread's timers fire: its nodes' heartbeats
                            // and answers are that late too.
                            loop {
                                let asked = Instant::now();
                                tokio::time::sleep(LAG_PROBE).await;
                                probe.lagged(asked.elapsed().saturating_sub(LAG_PROBE));
                            }
                        });
                        let _ = started_tx.send(Ok(()));
                        let slots = Arc::new(tokio::sync::Semaphore::new(ESTABLISHING_PER_THREAD));
                        let mut running = Vec::with_capacity(share.len());
                        let starting = async {
                            for (i, keypair, rk) in share {
                                let Ok(slot) = slots.clone().acquire_owned().await else {
                                    break;
                                };
                                match start_peer(i, keypair, rk, hub, hub_addr, server).await {
                                    Ok(mut node) => {
                                        let events = node.take_events();
                                        actix_rt::spawn(watch_peer(events, slot, tally.clone()));
                                        running.push(node);
                                    }
                                    Err(e) => eprintln!("tether bench sessions: {e}"),
                                }
                            }
                            std::future::pending::<()>().await;
                        };
                        tokio::select! {
                            _ = stop_rx => {}
                            () = starting => {}
                        }
                        drop(running);
                    });
                })?;
            nodes.stops.push(stop_tx);
            nodes.threads.push(thread);
        }
        drop(started_tx);
        for _ in 0..PEER_THREADS {
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    nodes.stop();
                    return Err(e);
                }
                Err(_) => {
                    nodes.stop();
                    return Err(BenchError::Setup("a peer thread ended".into()));
                }
            }
        }
        Ok(nodes)
    }

    fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Counts a peer node's status changes, and holds its establishment slot until its
/// session is first Ready (or [`SLOT_TIMEOUT`] passed).
async fn watch_peer(
    mut events: tether::actors::NodeEvents,
    slot: tokio::sync::OwnedSemaphorePermit,
    tally: Arc<PeerTally>,
) {
    let mut slot = Some(slot);
    let give_up = tokio::time::sleep(SLOT_TIMEOUT);
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(NodeEvent::Status { from, to, .. }) => {
                    tally.count(from, to);
                    if to == SessionStatus::Ready {
                        slot = None;
                    }
                }
                Some(_) => {}
                None => return,
            },
            () = &mut give_up, if slot.is_some() => slot = None,
        }
    }
}

async fn start_peer(
    i: usize,
    keypair: StaticKeypair,
    rk: RelationshipKey,
    hub: PublicKey,
    hub_addr: SocketAddr,
    server: ServerInfo,
) -> Result<tether::actors::Node, BenchError> {
    let addr = SocketAddr::from((peer_ip(i), 0));
    let endpoint = Endpoint::bind_udp(addr, TransportConfig::default())
        .await
        .map_err(|e| BenchError::Setup(format!("peer {i} on {addr}: {e}")))?;
    let config = NodeConfig {
        keypair,
        peers: vec![NodePeer {
            public: hub,
            rk,
            addrs: vec![hub_addr],
        }],
        server,
        presence: tether_presence::Config::default(),
        limits: tether::Limits::default(),
        blueprint: tether_connection_blueprint::Config::default(),
        unix_ms_at_start: tether::unix_ms(),
        interfaces: Vec::new(),
        durable: None,
    };
    tether::actors::Node::start(config, endpoint)
        .map_err(|e| BenchError::Setup(format!("peer {i}: {e}")))
}

/// What the hub process reads from its setup file.
struct HubSetup {
    key_file: PathBuf,
    relay: SocketAddr,
    relay_public: PublicKey,
    peers: Vec<(PublicKey, RelationshipKey)>,
}

fn read_setup(path: &Path) -> Result<HubSetup, BenchError> {
    let bad = |what: &str| BenchError::Hub(format!("setup file {}: {what}", path.display()));
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let relay = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("no relay address"))?;
    let relay_public = lines
        .next()
        .and_then(|l| PublicKey::from_hex(l).ok())
        .ok_or_else(|| bad("no relay key"))?;
    let peers = lines
        .map(|l| {
            let (public, rk) = l.split_once(' ').ok_or_else(|| bad("a peer line"))?;
            Ok((
                PublicKey::from_hex(public).map_err(|_| bad("a peer key"))?,
                RelationshipKey::from_hex(rk).map_err(|_| bad("a relationship key"))?,
            ))
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    let key_file = path
        .parent()
        .map(|d| d.join("hub.key"))
        .ok_or_else(|| bad("no folder"))?;
    Ok(HubSetup {
        key_file,
        relay,
        relay_public,
        peers,
    })
}

/// The hub process: the node, then the measurements, reported on stdout.
pub fn hub_process(setup: &Path) -> Result<(), BenchError> {
    let setup = read_setup(setup)?;
    let rt = runtime()?;
    rt.block_on(hub(setup))
}

/// Each peer's last status, which peers completed a migration since a mark, and how
/// many times each status change happened (what the progress lines show).
#[derive(Default)]
struct Tracker {
    status: HashMap<DeviceId, SessionStatus>,
    migrated: HashSet<DeviceId>,
    transitions: BTreeMap<(Option<SessionStatus>, SessionStatus), u64>,
}

impl Tracker {
    fn see(&mut self, event: NodeEvent) {
        match event {
            NodeEvent::Status { peer, from, to } => {
                self.status.insert(peer, to);
                *self.transitions.entry((from, to)).or_default() += 1;
            }
            NodeEvent::MigrationCompleted { peer, .. } => {
                self.migrated.insert(peer);
            }
            _ => {}
        }
    }

    fn ready(&self) -> usize {
        self.status
            .values()
            .filter(|s| **s == SessionStatus::Ready)
            .count()
    }

    fn migrated_and_ready(&self) -> usize {
        self.migrated
            .iter()
            .filter(|p| self.status.get(p) == Some(&SessionStatus::Ready))
            .count()
    }
}

/// Reads events until `done` holds for the tracker, or (checked every `poll` on the
/// node's own status, in case events were dropped) for the status, or `timeout`.
/// Returns whether it held, and when.
async fn wait(
    node: &mut Node,
    tracker: &mut Tracker,
    timeout: Duration,
    done: impl Fn(&Tracker) -> bool,
    done_status: impl Fn(&[tether::PeerStatus]) -> bool,
) -> (bool, Instant) {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut looks = 0_u64;
    loop {
        if done(tracker) {
            return (true, Instant::now());
        }
        let mut look = false;
        tokio::select! {
            event = node.next_event() => match event {
                Some(event) => tracker.see(event),
                None => return (false, Instant::now()),
            },
            _ = poll.tick() => look = true,
            _ = tokio::time::sleep_until(deadline) => return (false, Instant::now()),
        }
        if look {
            let at = Instant::now();
            let status = node.status().await;
            if done_status(&status) {
                return (true, at);
            }
            looks += 1;
            if looks.is_multiple_of(10) {
                eprintln!(
                    "tether bench sessions: hub: {} of {} Ready, {} migrated since the mark, after {} ms",
                    ready_count(&status),
                    status.len(),
                    tracker.migrated.len(),
                    start.elapsed().as_millis()
                );
                if let Ok(report) = node.status_report().await {
                    eprintln!("tether bench sessions: hub: {}", progress(&report, tracker));
                }
            }
        }
    }
}

/// Reads (and drops) events for `time`.
async fn idle(node: &mut Node, tracker: &mut Tracker, time: Duration) {
    let end = tokio::time::sleep(time);
    tokio::pin!(end);
    loop {
        tokio::select! {
            event = node.next_event() => match event {
                Some(event) => tracker.see(event),
                None => return,
            },
            _ = &mut end => return,
        }
    }
}

/// One line on why sessions are where they are: the status changes so far, the
/// sessions' give-ups and evictions, the links, and the input dropped, by reason.
fn progress(report: &tether::metrics::NodeStatusReport, tracker: &Tracker) -> String {
    let sum =
        |f: fn(&tether::metrics::PeerReport) -> u64| -> u64 { report.peers.iter().map(f).sum() };
    let dropped: Vec<String> = report
        .rejected
        .by_reason
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let mut rtts: Vec<u64> = report.peers.iter().filter_map(|p| p.rtt_ms).collect();
    rtts.sort_unstable();
    let at = |q: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "heartbeat RTT ms p50 {} p90 {} max {}; changes [{}]; handshakes {} (attempts {}), handshake timeouts {}, reconnect timeouts {}, restart handshakes {}, evicted {}; links dialled {}, accepted {}; datagrams dropped by the kernel (receive buffer full) {}; dropped [{}]",
        at(0.5),
        at(0.9),
        at(1.0),
        status_changes(&tracker.transitions),
        sum(|p| p.handshakes),
        sum(|p| p.handshake_attempts),
        sum(|p| p.handshake_timeouts),
        sum(|p| p.reconnect_timeouts),
        sum(|p| p.restart_handshakes),
        sum(|p| p.session.sessions_evicted),
        report.transport.links_dialled,
        report.transport.links_accepted,
        report.transport.receive_buffer_drops,
        dropped.join(", "),
    )
}

/// Status changes counted by (from, to), as `Connecting>Handshaking 12, …`.
fn status_changes(counts: &BTreeMap<(Option<SessionStatus>, SessionStatus), u64>) -> String {
    let name = |s: Option<SessionStatus>| s.map_or_else(|| "-".to_string(), |s| format!("{s:?}"));
    counts
        .iter()
        .map(|((from, to), n)| format!("{}>{} {n}", name(*from), name(Some(*to))))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ready_count(status: &[tether::PeerStatus]) -> usize {
    status
        .iter()
        .filter(|s| s.status == Some(SessionStatus::Ready))
        .count()
}

async fn hub(setup: HubSetup) -> Result<(), BenchError> {
    let n = setup.peers.len();
    let rss_before = rss_kib("self").unwrap_or(0);
    let mut builder = Node::builder()
        .key_file(&setup.key_file)
        .relay(setup.relay, setup.relay_public)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .watch_interfaces(false);
    for (public, rk) in setup.peers {
        builder = builder.peer(public, rk);
    }
    let mut node = builder
        .start()
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let rss_started = rss_kib("self").unwrap_or(0);
    say(&format!("hub {}", node.local_addr()))?;
    // The peers start when the parent says so.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)
    })
    .await
    .map_err(|e| BenchError::Hub(e.to_string()))??;

    let mut tracker = Tracker::default();
    let t0 = Instant::now();
    let (_, established) = wait(
        &mut node,
        &mut tracker,
        establish_timeout(n),
        |t| t.ready() == n,
        |s| ready_count(s) == n,
    )
    .await;
    let establish = established - t0;
    let ready_established = ready_count(&node.status().await);
    idle(&mut node, &mut tracker, SETTLE).await;
    let rss_established = rss_kib("self").unwrap_or(0);

    let before = node.status().await;
    let migrations_before: HashMap<DeviceId, u64> =
        before.iter().map(|s| (s.peer, s.migrations)).collect();
    tracker.migrated.clear();
    let t1 = Instant::now();
    node.rebind(SocketAddr::from((NEW_ADDRESS, 0)))
        .await
        .map_err(|e| BenchError::Setup(format!("rebind: {e}")))?;
    let (recovered, at) = wait(
        &mut node,
        &mut tracker,
        RECOVER_TIMEOUT,
        |t| t.migrated_and_ready() == n,
        |s| {
            s.iter().all(|p| {
                p.status == Some(SessionStatus::Ready)
                    && p.migrations > migrations_before.get(&p.peer).copied().unwrap_or(0)
            })
        },
    )
    .await;
    let recover = at - t1;
    // A handshake that would follow the recovery shows within a moment.
    idle(&mut node, &mut tracker, Duration::from_millis(500)).await;
    let after = node.status().await;
    let sum = |s: &[tether::PeerStatus], f: fn(&tether::PeerStatus) -> u64| -> u64 {
        s.iter().map(f).sum()
    };
    let row = SessionsRow {
        sessions: n,
        rss_kib_per_session: round2(
            rss_established.saturating_sub(rss_before) as f64 / n.max(1) as f64,
        ),
        rss_kib_per_session_since_start: round2(
            rss_established.saturating_sub(rss_started) as f64 / n.max(1) as f64,
        ),
        rss_before_kib: rss_before,
        rss_started_kib: rss_started,
        rss_established_kib: rss_established,
        establish_ms: round2(establish.as_secs_f64() * 1000.0),
        ready_established,
        recover_ms: round2(recover.as_secs_f64() * 1000.0),
        recovered,
        ready_after: ready_count(&after),
        handshakes_during_recovery: sum(&after, |s| s.handshakes)
            .saturating_sub(sum(&before, |s| s.handshakes)),
        handshake_attempts_during_recovery: sum(&after, |s| s.handshake_attempts)
            .saturating_sub(sum(&before, |s| s.handshake_attempts)),
    };
    let json = serde_json::to_string(&row).map_err(|e| BenchError::Hub(e.to_string()))?;
    say(&format!("result {json}"))?;
    // Stay until the parent closes our input, reading events meanwhile.
    let mut input = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().lock().read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    loop {
        tokio::select! {
            _ = &mut input => break,
            event = node.next_event() => if event.is_none() { break },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), node.stop()).await;
    Ok(())
}

fn say(line: &str) -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_get_distinct_loopback_addresses() {
        assert_eq!(peer_ip(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(peer_ip(249), Ipv4Addr::new(127, 1, 0, 250));
        assert_eq!(peer_ip(250), Ipv4Addr::new(127, 1, 1, 1));
        let all: HashSet<_> = (0..20_000).map(peer_ip).collect();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|ip| ip.is_loopback()));
    }
}
