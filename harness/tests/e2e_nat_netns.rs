//! Two devices behind real Linux NATs, in network namespaces (`common::netns::NatTopology`):
//! every uplink of every device (wifi and mobile) goes through a NAT of its own, an
//! nftables `masquerade` with a home router's firewall (only replies come in), so each
//! uplink has its own public address; both devices use the same private subnets; the
//! relay is on the public side. Nodes are real `tether node` processes on the wildcard
//! address, watching interfaces, with no address for each other: they meet through the
//! relay, learn their public address from it, exchange `Candidates` over the session and
//! dial each other's candidates at once.
//!
//! - Port-preserving NATs on both sides: the session is Ready over the relay, then moves
//!   to a direct path between the two NATs' public addresses, with one handshake each and
//!   the messages sent meanwhile delivered once, in order; the timeline is printed.
//! - The same, then both devices move from wifi to mobile at the same moment while they
//!   send: back on a direct path between the new NATs, no handshake, same epoch.
//! - Port-randomising NATs (`masquerade fully-random`, a new public port for every
//!   destination) on one side, and on both; port-preserving masquerades without the
//!   firewall: each stays on the relay, for the reasons given at [`stays_on_the_relay`],
//!   and still delivers every message once, in order.
//!
//! Needs `unshare`, `nsenter`, `ip`, `nft` and the right to create network namespaces
//! (root): without them the tests fail and say what is missing. Every process and
//! namespace is removed when its guard drops, on a failure too. Nothing sleeps: every
//! wait reads output lines or polls `tether status` against a deadline. Set
//! `NATNS_RUST_LOG` (a `RUST_LOG` filter) to run the nodes with more logging; a failure
//! prints the events, the nodes' logs and every NAT's rule counters and conntrack table.

// A panic in a test is a failed test, not a crashed node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::netns::{Device, NatPorts, NatTopology, Topology, Uplink};
use common::{field, run, tail, Deployment, Proc, TETHER};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// Unix ms of an RFC 3339 UTC timestamp (`2026-12-02T11:50:00.123456Z`, as the JSON
/// log writes it).
fn rfc3339_ms(stamp: &str) -> Option<u64> {
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.split(':');
    let (h, min) = (
        hms.next()?.parse::<u64>().ok()?,
        hms.next()?.parse::<u64>().ok()?,
    );
    let seconds: f64 = hms.next()?.parse().ok()?;
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(((days * 24 + h) * 60 + min) * 60_000 + (seconds * 1000.0) as u64)
}

/// `tether status --json` of the node at `socket`.
fn node_status(dir: &Path, socket: &str) -> Value {
    json(&run(dir, TETHER, &["status", "--json", "--socket", socket]))
}

/// Whether the node at `socket` is connected to the relay, as its status says.
fn relay_connected(dir: &Path, socket: &str) -> bool {
    node_status(dir, socket)["server_clients"]["relay_connection"]["state"] == "connected"
}

/// A `tether watch` and every event it showed so far.
struct Watch {
    proc: Proc,
    seen: Vec<Value>,
}

impl Watch {
    /// Starts watching and waits until the node has taken the watch (its first line).
    fn start(dir: &Path, socket: &str, until: Instant) -> Self {
        let proc = Proc::start(
            dir,
            &format!("watch-{socket}"),
            TETHER,
            &["watch", "--socket", socket],
        );
        let first = proc.wait_for(until, |l| Some(json(l)));
        Self {
            proc,
            seen: vec![first],
        }
    }

    /// Takes in the events that are there.
    fn pump(&mut self) {
        while let Some(line) = self.proc.next_line_before(Instant::now()) {
            self.seen.push(json(&line));
        }
    }

    /// Reads events until `done` holds for what was seen; false at the deadline.
    fn until(&mut self, deadline: Instant, done: impl Fn(&[Value]) -> bool) -> bool {
        while !done(&self.seen) {
            match self.proc.next_line_before(deadline) {
                Some(line) => self.seen.push(json(&line)),
                None => return false,
            }
        }
        true
    }

    /// The delivered texts that start with `prefix`, in order.
    fn delivered(&self, prefix: &str) -> Vec<String> {
        delivered(&self.seen, prefix)
    }

    /// When (unix ms) each delivered text starting with `prefix` was delivered.
    fn delivered_at(&self, prefix: &str) -> Vec<u64> {
        self.seen
            .iter()
            .filter(|e| e["event"] == "delivered")
            .filter(|e| e["text"].as_str().is_some_and(|t| t.starts_with(prefix)))
            .filter_map(|e| e["at_ms"].as_u64())
            .collect()
    }
}

fn delivered(seen: &[Value], prefix: &str) -> Vec<String> {
    seen.iter()
        .filter(|e| e["event"] == "delivered")
        .filter_map(|e| e["text"].as_str())
        .filter(|t| t.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// `prefix 0` … `prefix count-1`.
fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix} {i}")).collect()
}

/// Sends `prefix 0`, `prefix 1`, … from the node at `socket` to `peer`, one `tether
/// send` at a time, on a thread, until `stop` is set and 3 more went (so the last ones
/// go after whatever the test waited for), at least `min` of them; says on `started`
/// once the first is accepted. The thread returns when (unix ms) the node accepted each.
fn send_until(
    dir: &Path,
    socket: &'static str,
    peer: &'static str,
    prefix: &'static str,
    min: usize,
    stop: Arc<AtomicBool>,
    started: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Vec<u64>> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut accepted = Vec::new();
        let mut after_stop = 0;
        while accepted.len() < min || after_stop < 3 {
            let stopped = stop.load(Ordering::SeqCst);
            let text = format!("{prefix} {}", accepted.len());
            run(&dir, TETHER, &["send", "--socket", socket, peer, &text]);
            accepted.push(unix_ms());
            if accepted.len() == 1 {
                let _ = started.send(());
            }
            if stopped {
                after_stop += 1;
            }
            assert!(accepted.len() < 2000, "{prefix}: never told to stop");
        }
        accepted
    })
}

/// The lines of a node's JSON log (`--log-format json`), each as (unix ms, message,
/// fields).
fn log_events(log: &str) -> Vec<(u64, String, Value)> {
    log.lines()
        .map(json)
        .filter_map(|l| {
            let at = rfc3339_ms(l["timestamp"].as_str()?)?;
            let message = l["fields"]["message"].as_str()?.to_string();
            Some((at, message, l["fields"].clone()))
        })
        .collect()
}

/// The address in a logged `Option<SocketAddr>` (`Some(203.0.21.2:4000)`).
fn logged_addr(value: &Value) -> String {
    let text = value.as_str().unwrap_or("-");
    text.strip_prefix("Some(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text)
        .to_string()
}

/// Whether a peer status shows Ready on a direct path to an address starting with
/// `remote`.
fn direct_to(status: &Value, remote: &str) -> bool {
    status["status"] == "Ready"
        && status["path"] == "direct"
        && status["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(remote))
}

/// Two nodes behind NATs and a relay on the public side, the session Ready over the
/// relay. Fields drop in order: processes first, then namespaces, then the folder.
struct NatPair {
    watch_a: Watch,
    watch_b: Watch,
    a: Proc,
    b: Proc,
    deployment: Deployment,
    net: NatTopology,
    d: PathBuf,
    _dir: tempfile::TempDir,
    /// Marks the test set on the timeline (unix ms, what).
    marks: Vec<(u64, String)>,
    /// With `NATNS_RUST_LOG` set: `conntrack -E` in every NAT (name, process).
    conntrack_events: Vec<(String, Proc)>,
}

/// What `NatPair::start` left running: the senders it started.
struct Started {
    pair: NatPair,
    /// A sends `from a 0` … to B from the moment A is up.
    a_sender: std::thread::JoinHandle<Vec<u64>>,
    /// B sends `from b 0` … to A once A's watch runs.
    b_sender: std::thread::JoinHandle<Vec<u64>>,
    /// Tells both senders to send their last 3 and stop.
    stop: Arc<AtomicBool>,
    /// When B, the first node, started (unix ms).
    start_ms: u64,
}

/// The fewest messages each side sends from the start.
const MIN_COUNT: usize = 10;

impl NatPair {
    /// Builds the topology with A's NATs mapping as `a_ports` and B's as `b_ports`, puts
    /// both devices on wifi, starts the relay, then B and, once B is connected to the
    /// relay, A. Neither has an address for the other. As soon as A is up it sends
    /// numbered messages to B, and B to A once A's watch runs (so the watch sees every
    /// delivery), through the session's setup and whatever follows until told to stop
    /// ([`send_until`]). Returns once both sides are Ready.
    fn start(a_ports: NatPorts, b_ports: NatPorts) -> Started {
        Self::start_with(a_ports, b_ports, true)
    }

    /// [`start`](Self::start) with NATs that have a firewall or are bare masquerades.
    fn start_with(a_ports: NatPorts, b_ports: NatPorts, firewall: bool) -> Started {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let net = NatTopology::build_with(&d, a_ports, b_ports, firewall);
        net.a.join(Uplink::Wifi, 100);
        net.b.join(Uplink::Wifi, 100);
        let listen = format!("{}:0", Topology::RELAY_IP);
        let deployment =
            Deployment::start_with(&d, &listen, |args| net.relay.spawn("relay", TETHER, args));
        let until = Instant::now() + Duration::from_secs(30);
        let log = std::env::var("NATNS_RUST_LOG").ok();
        let start_node = |device: &Device| {
            let peers = deployment.peers_entry(device.name);
            assert!(peers.contains("addresses = []"), "{peers}");
            let config = deployment.node_config(device.name, device.name, "0.0.0.0:0", "", &peers);
            let file = format!("{}.toml", device.name);
            std::fs::write(d.join(&file), config).unwrap();
            let mut args = vec!["--log-format", "json", "node", "--config", file.as_str()];
            let filter = log.as_ref().map(|l| format!("RUST_LOG={l}"));
            let node = match &filter {
                Some(filter) => {
                    args.insert(0, TETHER);
                    args.insert(0, filter.as_str());
                    device.ns.spawn(device.name, "env", &args)
                }
                None => device.ns.spawn(device.name, TETHER, &args),
            };
            node.wait_for(until, |l| {
                l.starts_with("tether node ready:")
                    .then(|| field(l, "listen").unwrap().to_string())
            });
            node
        };

        let conntrack_events: Vec<(String, Proc)> = if log.is_some() {
            net.nats
                .iter()
                .map(|nat| {
                    let args = ["-E", "-p", "udp", "-o", "timestamp"];
                    let name = format!("conntrack-{}", nat.name);
                    (nat.name.clone(), nat.ns.spawn(&name, "conntrack", &args))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut marks = Vec::new();
        let start_ms = unix_ms();
        marks.push((start_ms, "B started".to_string()));
        let b = start_node(&net.b);
        let watch_b = Watch::start(&d, "b.sock", until);
        while !relay_connected(&d, "b.sock") {
            assert!(Instant::now() < until, "B never connected to the relay");
        }
        marks.push((unix_ms(), "B connected to the relay (polled)".to_string()));
        marks.push((unix_ms(), "A started".to_string()));
        let a = start_node(&net.a);
        let (started, started_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let a_sender = send_until(
            &d,
            "a.sock",
            "b",
            "from a",
            MIN_COUNT,
            stop.clone(),
            started.clone(),
        );
        let watch_a = Watch::start(&d, "a.sock", until);
        let b_sender = send_until(
            &d,
            "b.sock",
            "a",
            "from b",
            MIN_COUNT,
            stop.clone(),
            started,
        );
        let mut pair = Self {
            watch_a,
            watch_b,
            a,
            b,
            deployment,
            net,
            d,
            _dir: dir,
            marks,
            conntrack_events,
        };
        while !relay_connected(&pair.d, "a.sock") {
            if Instant::now() > until {
                pair.fail("A never connected to the relay");
            }
        }
        pair.marks
            .push((unix_ms(), "A connected to the relay (polled)".to_string()));
        for _ in 0..2 {
            started_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        let ready = |seen: &[Value]| {
            seen.iter()
                .any(|e| e["event"] == "status" && e["to"] == "Ready")
        };
        pair.wait_a(until, "A Ready at the start", ready);
        pair.wait_b(until, "B Ready at the start", ready);
        Started {
            pair,
            a_sender,
            b_sender,
            stop,
            start_ms,
        }
    }

    fn status(&self) -> (Value, Value) {
        (
            node_status(&self.d, "a.sock")["peers"][0].clone(),
            node_status(&self.d, "b.sock")["peers"][0].clone(),
        )
    }

    /// The public address (`ip:`) of the NAT in front of `device`'s `uplink`, as a
    /// prefix of the `ip:port` the peer sees.
    fn public(&self, device: &Device, uplink: Uplink) -> String {
        format!("{}:", self.net.nat(device, uplink).public)
    }

    /// The paths each node's session was bound to, in order: (unix ms, `direct` or
    /// `relay`, remote), from its log.
    fn bindings(&self, node: &Proc) -> Vec<(u64, String, String)> {
        log_events(&node.stderr_text())
            .into_iter()
            .filter(|(_, m, _)| m == "session bound to a path")
            .map(|(at, _, f)| {
                (
                    at,
                    f["path"].as_str().unwrap_or("-").to_string(),
                    logged_addr(&f["remote"]),
                )
            })
            .collect()
    }

    /// Waits (reading A's or B's events, `who`) until `node`'s log holds a binding for
    /// which `wanted` holds: the log line and the event are written together, the status
    /// may show the binding a moment before.
    fn logged_binding(
        &mut self,
        who: char,
        deadline: Instant,
        wanted: impl Fn(&(u64, String, String)) -> bool,
    ) -> u64 {
        loop {
            let node = if who == 'A' { &self.a } else { &self.b };
            if let Some((at, _, _)) = self.bindings(node).into_iter().rev().find(&wanted) {
                return at;
            }
            let now = Instant::now();
            if now >= deadline {
                self.fail(&format!("{who}'s log shows no such binding"));
            }
            let watch = if who == 'A' {
                &mut self.watch_a
            } else {
                &mut self.watch_b
            };
            if let Some(line) = watch
                .proc
                .next_line_before(deadline.min(now + Duration::from_millis(20)))
            {
                watch.seen.push(json(&line));
            }
        }
    }

    /// Both nodes' logged events of interest and the test's marks since `from_ms`, in
    /// time order, as `+ms who what` lines.
    fn timeline(&self, from_ms: u64) -> String {
        let mut lines: Vec<(u64, String)> = self.marks.clone();
        for (who, node) in [("A", &self.a), ("B", &self.b)] {
            for (at, message, f) in log_events(&node.stderr_text()) {
                let what = match message.as_str() {
                    "session bound to a path" => format!(
                        "session bound to the {} path{} (epoch {}{})",
                        f["path"].as_str().unwrap_or("-"),
                        match logged_addr(&f["remote"]).as_str() {
                            "None" => String::new(),
                            remote => format!(", remote {remote}"),
                        },
                        f["epoch"],
                        if f["handshake"] == true {
                            ", after a handshake"
                        } else {
                            ""
                        }
                    ),
                    "session established" | "status" => format!(
                        "status {} -> {}",
                        f["from"].as_str().unwrap_or("-"),
                        f["to"].as_str().unwrap_or("-")
                    ),
                    "the relay sees this device at a new address" => {
                        format!("relay reports reflexive address {}", f["reflexive"])
                    }
                    "network interfaces changed" => "interfaces changed".to_string(),
                    "endpoint moved: migrating every session" => {
                        format!("rebound {} -> {}", f["old"], f["new"])
                    }
                    "migration started" | "relay reachable again" => message.clone(),
                    _ => continue,
                };
                lines.push((at, format!("{who} {what}")));
            }
        }
        lines.sort_by_key(|(at, _)| *at);
        lines
            .into_iter()
            .filter(|(at, _)| *at >= from_ms)
            .map(|(at, what)| format!("  +{:>5} ms  {what}", at - from_ms))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// With `NATNS_RUST_LOG` set: both nodes' whole logs, for a closer look.
    fn logs_if_asked(&self) -> String {
        if std::env::var_os("NATNS_RUST_LOG").is_none() {
            return String::new();
        }
        let mut conntrack = String::new();
        for (name, events) in &self.conntrack_events {
            conntrack += &format!("--- conntrack events in NAT {name}:\n");
            while let Some(line) = events.next_line_before(Instant::now()) {
                conntrack += &line;
                conntrack.push('\n');
            }
        }
        format!(
            "--- A's log:\n{}--- B's log:\n{}{conntrack}{}",
            self.a.stderr_text(),
            self.b.stderr_text(),
            self.net.diagnostics()
        )
    }

    /// Reads A's events until `done` holds for them; fails with `what` at the deadline.
    fn wait_a(&mut self, deadline: Instant, what: &str, done: impl Fn(&[Value]) -> bool) {
        if !self.watch_a.until(deadline, done) {
            self.fail(what);
        }
    }

    /// Reads B's events until `done` holds for them; fails with `what` at the deadline.
    fn wait_b(&mut self, deadline: Instant, what: &str, done: impl Fn(&[Value]) -> bool) {
        if !self.watch_b.until(deadline, done) {
            self.fail(what);
        }
    }

    /// Fails with `what`, the events, the nodes' logs and what the NATs did.
    fn fail(&self, what: &str) -> ! {
        let events = |w: &Watch| {
            w.seen
                .iter()
                .filter(|e| e["event"] != "delivered")
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{what}\n--- A's events:\n{}\n--- B's events:\n{}\n--- A's log:\n{}\n--- B's \
             log:\n{}\n--- relay's log:\n{}\n{}",
            events(&self.watch_a),
            events(&self.watch_b),
            tail(&self.a.stderr_text()),
            tail(&self.b.stderr_text()),
            tail(&self.deployment.relay.stderr_text()),
            self.net.diagnostics()
        );
    }

    /// Polls both statuses until `done(a, b)` or the deadline (then fails with `what`);
    /// the time of the poll that saw it. Between polls it waits for A's next event, at
    /// most 50 ms, and takes in the events both watches have.
    fn poll_status(
        &mut self,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Value, &Value) -> bool,
    ) -> (Value, Value, Instant) {
        loop {
            let (a, b) = self.status();
            let at = Instant::now();
            if done(&a, &b) {
                return (a, b, at);
            }
            if at >= deadline {
                self.fail(&format!("{what}; last status:\nA: {a}\nB: {b}"));
            }
            let wake = deadline.min(at + Duration::from_millis(50));
            if let Some(line) = self.watch_a.proc.next_line_before(wake) {
                self.watch_a.seen.push(json(&line));
            }
            self.watch_a.pump();
            self.watch_b.pump();
        }
    }

    /// Waits for A's `count_a` numbered messages (`prefix_a 0` …) at B and B's
    /// `count_b` at A and checks each side got the other's exactly once, in order.
    fn all_delivered_once(
        &mut self,
        prefix_a: &str,
        count_a: usize,
        prefix_b: &str,
        count_b: usize,
    ) {
        let until = Instant::now() + Duration::from_secs(30);
        let pa = format!("{prefix_a} ");
        let pb = format!("{prefix_b} ");
        let all_b = |seen: &[Value]| delivered(seen, &pa).len() >= count_a;
        let all_a = |seen: &[Value]| delivered(seen, &pb).len() >= count_b;
        self.wait_b(until, "B did not get all of A's messages", all_b);
        self.wait_a(until, "A did not get all of B's messages", all_a);
        // A duplicate would come right behind the original: a round of status (both
        // nodes answering) lets the watches take in whatever came by then.
        let _ = self.status();
        self.watch_a.pump();
        self.watch_b.pump();
        assert_eq!(
            self.watch_b.delivered(&pa),
            numbered(prefix_a, count_a),
            "A -> B: every message once, in order"
        );
        assert_eq!(
            self.watch_a.delivered(&pb),
            numbered(prefix_b, count_b),
            "B -> A: every message once, in order"
        );
    }
}

/// The same session as `before`: Ready, no handshake, same epoch, PeerSecret and keys.
fn assert_same_session(name: &str, before: &Value, after: &Value) {
    assert_eq!(after["status"], "Ready", "{name}: {after}");
    assert_eq!(
        after["handshakes"], before["handshakes"],
        "{name}: no handshake: {after}"
    );
    assert_eq!(after["epoch"], before["epoch"], "{name}: epoch");
    assert_eq!(
        after["peer_secret"], before["peer_secret"],
        "{name}: PeerSecret"
    );
    assert_eq!(
        after["session_keys"], before["session_keys"],
        "{name}: session keys"
    );
}

/// How long the session may take, after both sides are Ready over the relay, to be on a
/// direct path through two port-preserving NATs: generous (the namespaces add no
/// latency; in the simulator it takes 2.5–3 RTT).
const DIRECT_WITHIN: Duration = Duration::from_secs(10);

/// Establishment behind port-preserving NATs on both sides, and the upgrade from the
/// relay to the direct path; leaves the pair on the direct path with every message of
/// the start delivered, and returns it.
fn establish_and_upgrade() -> NatPair {
    let Started {
        mut pair,
        a_sender,
        b_sender,
        stop,
        start_ms,
    } = NatPair::start(NatPorts::Preserving, NatPorts::Preserving);
    let ready_at = Instant::now();
    let a_public = pair.public(&pair.net.a, Uplink::Wifi);
    let b_public = pair.public(&pair.net.b, Uplink::Wifi);
    let (a, b, _) = pair.poll_status(
        ready_at + DIRECT_WITHIN,
        "not on a direct path between the NATs' public addresses",
        |a, b| direct_to(a, &b_public) && direct_to(b, &a_public),
    );
    stop.store(true, Ordering::SeqCst);
    let a_sent = a_sender.join().unwrap();
    let b_sent = b_sender.join().unwrap();
    pair.all_delivered_once("from a", a_sent.len(), "from b", b_sent.len());

    let soon = Instant::now() + Duration::from_secs(5);
    let is_direct = |(_, path, _): &(u64, String, String)| path == "direct";
    pair.logged_binding('A', soon, is_direct);
    pair.logged_binding('B', soon, is_direct);
    let (bound_a, bound_b) = (pair.bindings(&pair.a), pair.bindings(&pair.b));
    let first_direct = |bound: &[(u64, String, String)]| {
        bound
            .iter()
            .find(|(_, path, _)| path == "direct")
            .map(|(at, _, _)| *at)
            .unwrap()
    };
    let direct_ms = first_direct(&bound_a).max(first_direct(&bound_b));
    let relay_ready_ms = |bound: &[(u64, String, String)]| bound[0].0;
    let both_on_relay_ms = relay_ready_ms(&bound_a).max(relay_ready_ms(&bound_b));
    let over_relay = |at: &[u64]| at.iter().filter(|t| **t < direct_ms).count();
    let last = |sent: &[u64]| sent[sent.len() - 1] - start_ms;
    println!(
        "relay -> direct behind port-preserving NATs (ms from B's start):\n{}\n  \
         both Ready over the relay at +{} ms, both direct at +{} ms: {} ms after\n  \
         remote seen: A sees B at {}, B sees A at {} (B's NAT {}, A's NAT {})\n  \
         A -> B: {} sent +{}..+{} ms, {} delivered before both were direct\n  \
         B -> A: {} sent +{}..+{} ms, {} delivered before both were direct",
        pair.timeline(start_ms),
        both_on_relay_ms - start_ms,
        direct_ms - start_ms,
        direct_ms.saturating_sub(both_on_relay_ms),
        a["remote"],
        b["remote"],
        pair.net.nat(&pair.net.b, Uplink::Wifi).public,
        pair.net.nat(&pair.net.a, Uplink::Wifi).public,
        a_sent.len(),
        a_sent[0] - start_ms,
        last(&a_sent),
        over_relay(&pair.watch_b.delivered_at("from a ")),
        b_sent.len(),
        b_sent[0] - start_ms,
        last(&b_sent),
        over_relay(&pair.watch_a.delivered_at("from b ")),
    );
    print!("{}", pair.logs_if_asked());

    // Each side's session was bound to the relay first, after its one handshake, then
    // moved to the direct path without another.
    for (who, bound) in [("A", &bound_a), ("B", &bound_b)] {
        assert_eq!(
            bound[0].1, "relay",
            "{who} first Ready over the relay: {bound:?}"
        );
    }
    for (who, status) in [("A", &a), ("B", &b)] {
        assert_eq!(status["handshakes"], 1, "{who}: one handshake: {status}");
        assert_eq!(status["epoch"], 1, "{who}: {status}");
    }
    // Both sent from before the session was direct until after: through the upgrade.
    assert!(
        a_sent[0] < direct_ms && b_sent[0] < direct_ms,
        "both sent before the session was direct"
    );
    assert!(
        a_sent[a_sent.len() - 1] > direct_ms && b_sent[b_sent.len() - 1] > direct_ms,
        "both sent until after the session was direct"
    );
    pair
}

#[test]
fn behind_port_preserving_nats_the_session_moves_from_the_relay_to_a_direct_path() {
    establish_and_upgrade();
}

#[test]
fn behind_nats_both_devices_move_to_mobile_at_once_and_return_to_a_direct_path() {
    let mut pair = establish_and_upgrade();
    let (before_a, before_b) = pair.status();
    pair.marks.clear();

    // Both send from before the move until after both are direct again.
    let (started, started_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let senders = [
        send_until(
            &pair.d,
            "a.sock",
            "b",
            "moving a",
            5,
            stop.clone(),
            started.clone(),
        ),
        send_until(&pair.d, "b.sock", "a", "moving b", 5, stop.clone(), started),
    ];
    for _ in 0..2 {
        started_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    // Both switches run at once: each is one shell in its device's namespace.
    let switched_at = Instant::now();
    let switched_at_ms = unix_ms();
    pair.marks.push((
        switched_at_ms,
        "both devices switch wifi -> mobile".to_string(),
    ));
    let moves: Vec<_> = [&pair.net.a, &pair.net.b]
        .map(|device| {
            device
                .switch_command(Uplink::Wifi, Uplink::Mobile)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .into_iter()
        .collect();
    for m in moves {
        let out = m.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let a_mobile = pair.public(&pair.net.a, Uplink::Mobile);
    let b_mobile = pair.public(&pair.net.b, Uplink::Mobile);
    let (after_a, after_b, _) = pair.poll_status(
        switched_at + Duration::from_secs(20),
        "both moved: not back on a direct path between the mobile NATs within 20 s",
        |a, b| direct_to(a, &b_mobile) && direct_to(b, &a_mobile),
    );
    stop.store(true, Ordering::SeqCst);
    let [a_sent, b_sent] = senders.map(|s| s.join().unwrap());
    pair.all_delivered_once("moving a", a_sent.len(), "moving b", b_sent.len());
    let soon = Instant::now() + Duration::from_secs(5);
    let direct_again =
        |(at, path, _): &(u64, String, String)| *at >= switched_at_ms && path == "direct";
    let direct_ms = pair
        .logged_binding('A', soon, direct_again)
        .max(pair.logged_binding('B', soon, direct_again));
    println!(
        "both devices move wifi -> mobile behind NATs (ms from the switch):\n{}\n  \
         direct again at +{} ms: A sees B at {}, B sees A at {}\n  \
         sent while moving: A -> B {}, B -> A {}, each delivered once, in order",
        pair.timeline(switched_at_ms),
        direct_ms - switched_at_ms,
        after_a["remote"],
        after_b["remote"],
        a_sent.len(),
        b_sent.len(),
    );
    print!("{}", pair.logs_if_asked());
    let (end_a, end_b) = pair.status();
    for (name, before, after) in [
        ("A", &before_a, &after_a),
        ("B", &before_b, &after_b),
        ("A at the end", &before_a, &end_a),
        ("B at the end", &before_b, &end_b),
    ] {
        assert_same_session(name, before, after);
    }
}

/// NATs that no direct path crosses: the session runs over the relay and stays there,
/// one handshake, every message delivered once, in order.
///
/// Port-randomising NATs, one side or both: **the relay, never a direct path.** A
/// `fully-random` masquerade gives every new mapping (every destination) a random public
/// port, so the reflexive address the relay reports (the mapping towards the relay) is
/// not where that device's packets to the peer come from, and nothing the peer sends to
/// it gets in. A port-preserving NAT on the other side does not save it: Linux conntrack
/// admits only replies from the exact address *and port* a mapping was opened towards,
/// and the preserving side has only ever sent to the randomising side's reflexive port,
/// never to the random port its packets come from. Getting through would need port
/// prediction or many probes (a birthday attack), which Tether does not do.
///
/// Port-preserving masquerades without a firewall (`firewall` false), on both sides:
/// **the relay** too. The first side to dial (here B, some 30 ms after Ready; A dials
/// some 250 ms later) reaches the other's NAT before that NAT has sent anything to it;
/// the packet is no reply, so it goes to the NAT itself, which answers port
/// unreachable, and conntrack keeps an entry for it (peer public:port → own
/// public:port). When the NAT's own device then
/// sends to the peer, the mapping it would get (the same port) collides with that entry
/// and the NAT picks another port: the device now leaves from a port the peer never
/// sent to, and the peer's NAT treats its packets the same way. Both sides' dials go
/// on refreshing the entries (a UDP entry lives 30 s after its last packet; probes come
/// every 5 s), so it never clears. Dialling at the same instant does not help when a
/// packet crosses the path faster than the two sides can agree on an instant (here
/// well under a millisecond); first packets with a TTL too small to reach the peer's
/// NAT would (they open one's own mapping and leave no entry at the other's).
fn stays_on_the_relay(a_ports: NatPorts, b_ports: NatPorts, firewall: bool) {
    let Started {
        mut pair,
        a_sender,
        b_sender,
        stop,
        start_ms,
    } = NatPair::start_with(a_ports, b_ports, firewall);
    // The candidates are exchanged and dialled right after Ready; give the dials, their
    // QUIC retransmissions and further rounds of candidates 5 s to get through, while
    // both keep sending.
    let until = Instant::now() + Duration::from_secs(5);
    let direct = |seen: &[Value]| {
        seen.iter()
            .any(|e| e["event"] == "ready" && e["path"] == "direct")
    };
    let a_direct = pair.watch_a.until(until, direct);
    let b_direct = pair.watch_b.until(until, direct);
    let (a, b) = pair.status();
    stop.store(true, Ordering::SeqCst);
    let a_sent = a_sender.join().unwrap();
    let b_sent = b_sender.join().unwrap();
    pair.all_delivered_once("from a", a_sent.len(), "from b", b_sent.len());
    println!(
        "NATs {a_ports:?} A, {b_ports:?} B, firewall {firewall}, ms from B's start:\n{}\n  \
         after 5 s: A {} {}, B {} {}; sent over the relay and delivered once, in order: \
         A -> B {}, B -> A {}\n{}",
        pair.timeline(start_ms),
        a["path"],
        a["remote"],
        b["path"],
        b["remote"],
        a_sent.len(),
        b_sent.len(),
        pair.net.diagnostics()
    );
    print!("{}", pair.logs_if_asked());
    if a_direct || b_direct {
        pair.fail("a direct path was not expected");
    }
    for (who, status) in [("A", &a), ("B", &b)] {
        assert_eq!(status["path"], "relay", "{who}: {status}");
        assert_eq!(status["handshakes"], 1, "{who}: one handshake: {status}");
    }
}

#[test]
fn a_port_randomising_nat_on_one_side() {
    stays_on_the_relay(NatPorts::Random, NatPorts::Preserving, true);
}

#[test]
fn port_randomising_nats_on_both_sides() {
    stays_on_the_relay(NatPorts::Random, NatPorts::Random, true);
}

#[test]
fn bare_masquerades_without_a_firewall() {
    stays_on_the_relay(NatPorts::Preserving, NatPorts::Preserving, false);
}
