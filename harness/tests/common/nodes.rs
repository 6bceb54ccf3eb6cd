//! Two nodes, A and B, driven only through the CLI and the network and watched through
//! it: their `tether watch` events ([`Watch`]), `tether status`, and the waits on both
//! ([`TwoNodes`]), each against a deadline, never a sleep. The namespace tests share
//! them, each with its own network and its own way of starting the nodes.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{command, run, tail, Proc, TETHER};

/// Now, in unix ms: the clock of the nodes' events (`at_ms`) and logs.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A line as JSON; `Null` if it is not JSON.
pub fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// `tether status --json` of the node at `socket`.
pub fn node_status(dir: &Path, socket: &str) -> Value {
    json(&run(dir, TETHER, &["status", "--json", "--socket", socket]))
}

/// `tether status --json` of the node at `socket`: its one peer.
pub fn peer_status(dir: &Path, socket: &str) -> Value {
    node_status(dir, socket)["peers"][0].clone()
}

/// A `tether watch` and every event it showed so far.
pub struct Watch {
    pub proc: Proc,
    pub seen: Vec<Value>,
}

impl Watch {
    /// Starts watching the node at `socket`, without waiting for it.
    pub fn start(dir: &Path, socket: &str) -> Self {
        Self {
            proc: Proc::start(
                dir,
                &format!("watch-{socket}"),
                TETHER,
                &["watch", "--socket", socket],
            ),
            seen: Vec::new(),
        }
    }

    /// Starts watching and waits until the node has taken the watch (its first line).
    pub fn started(dir: &Path, socket: &str, until: Instant) -> Self {
        let mut watch = Self::start(dir, socket);
        let first = watch.proc.wait_for(until, |l| Some(json(l)));
        watch.seen.push(first);
        watch
    }

    /// Takes in the next event if it comes before `deadline`; whether one came.
    pub fn next_before(&mut self, deadline: Instant) -> bool {
        match self.proc.next_line_before(deadline) {
            Some(line) => {
                self.seen.push(json(&line));
                true
            }
            None => false,
        }
    }

    /// Takes in every event already there and those that come before `until` (which
    /// it waits for).
    pub fn pump(&mut self, until: Instant) {
        while self.next_before(until) {}
    }

    /// Reads events until `done` holds for what was seen; false at the deadline.
    pub fn until(&mut self, deadline: Instant, done: impl Fn(&[Value]) -> bool) -> bool {
        while !done(&self.seen) {
            if !self.next_before(deadline) {
                return false;
            }
        }
        true
    }

    /// The delivered texts that start with `prefix`, in order.
    pub fn delivered(&self, prefix: &str) -> Vec<String> {
        delivered(&self.seen, prefix)
    }

    /// When (unix ms) each delivered text starting with `prefix` was delivered.
    pub fn delivered_at(&self, prefix: &str) -> Vec<u64> {
        self.seen
            .iter()
            .filter(|e| e["event"] == "delivered")
            .filter(|e| e["text"].as_str().is_some_and(|t| t.starts_with(prefix)))
            .filter_map(|e| e["at_ms"].as_u64())
            .collect()
    }

    /// The events since `from_ms` (unix ms), but deliveries, as `+ms event details`
    /// lines: a migration's timeline.
    pub fn timeline(&self, who: &str, from_ms: u64) -> String {
        self.seen
            .iter()
            .filter(|e| e["event"] != "delivered")
            .filter_map(|e| {
                let at = e["at_ms"].as_u64()?.checked_sub(from_ms)?;
                let what = match e["event"].as_str()? {
                    "status" => format!("{} -> {}", e["from"].as_str().unwrap_or("-"), e["to"]),
                    "ready" => format!("bound {} {}", e["path"], e["remote"]),
                    "rebound" => format!("rebound {} -> {}", e["old"], e["new"]),
                    "migration_completed" => {
                        format!("migration completed ({} ms)", e["duration_ms"])
                    }
                    other => other.to_string(),
                };
                Some(format!("  {who} +{at} ms {what}"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The delivered texts among `seen` that start with `prefix`, in order.
pub fn delivered(seen: &[Value], prefix: &str) -> Vec<String> {
    seen.iter()
        .filter(|e| e["event"] == "delivered")
        .filter_map(|e| e["text"].as_str())
        .filter(|t| t.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Whether a Ready event is among `seen`.
pub fn ready(seen: &[Value]) -> bool {
    seen.iter()
        .any(|e| e["event"] == "status" && e["to"] == "Ready")
}

/// `prefix 0` … `prefix count-1`.
pub fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix} {i}")).collect()
}

/// Whether a peer status shows Ready on a direct path to an address starting with
/// `remote`.
pub fn direct_to(status: &Value, remote: &str) -> bool {
    status["status"] == "Ready"
        && status["path"] == "direct"
        && status["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(remote))
}

/// The same session as `before`: Ready, no handshake, same epoch, PeerSecret and keys.
pub fn assert_same_session(name: &str, before: &Value, after: &Value) {
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

/// `same(name, before, after)` for A's status and for B's (each pair A's, B's): from
/// `before` to `after` an event, and from `before` to the `end` of the test.
pub fn assert_both_kept(
    same: fn(&str, &Value, &Value),
    before: &(Value, Value),
    after: &(Value, Value),
    end: &(Value, Value),
) {
    for (name, before, after) in [
        ("A", &before.0, &after.0),
        ("B", &before.1, &after.1),
        ("A at the end", &before.0, &end.0),
        ("B at the end", &before.1, &end.1),
    ] {
        same(name, before, after);
    }
}

/// Nodes A and B running in `d` (control sockets `a.sock` and `b.sock`), each with a
/// watch. Fields drop in order: the watches, then the nodes.
pub struct Nodes {
    pub watch_a: Watch,
    pub watch_b: Watch,
    pub a: Proc,
    pub b: Proc,
    pub d: PathBuf,
}

impl Nodes {
    /// Starts a watch on each node.
    pub fn watch(a: Proc, b: Proc, d: &Path) -> Self {
        Self {
            watch_a: Watch::start(d, "a.sock"),
            watch_b: Watch::start(d, "b.sock"),
            a,
            b,
            d: d.to_path_buf(),
        }
    }

    /// Both peer statuses, A's and B's.
    pub fn status(&self) -> (Value, Value) {
        (
            peer_status(&self.d, "a.sock"),
            peer_status(&self.d, "b.sock"),
        )
    }

    /// `tether send` from the node at `socket` to `peer`.
    pub fn send(&self, socket: &str, peer: &str, text: &str) {
        run(&self.d, TETHER, &["send", "--socket", socket, peer, text]);
    }

    /// `what`, both watches' events but deliveries, and the end of both nodes' logs.
    pub fn report(&self, what: &str) -> String {
        let events = |w: &Watch| {
            w.seen
                .iter()
                .filter(|e| e["event"] != "delivered")
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let deliveries = |w: &Watch| w.seen.iter().filter(|e| e["event"] == "delivered").count();
        // Each node's own account (queued, accepted, acknowledged, received, path), if
        // it still answers.
        let status = |socket: &str| {
            command(&self.d, TETHER, &["status", "--json", "--socket", socket])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        format!(
            "{what}\n--- A's events ({} deliveries):\n{}\n--- B's events ({} deliveries):\n{}\n--- A's status:\n{}\n--- B's status:\n{}\n--- A's log:\n{}\n--- B's log:\n{}",
            deliveries(&self.watch_a),
            events(&self.watch_a),
            deliveries(&self.watch_b),
            events(&self.watch_b),
            status("a.sock"),
            status("b.sock"),
            tail(&self.a.stderr_text()),
            tail(&self.b.stderr_text())
        )
    }
}

/// A test's [`Nodes`] and whatever else it has to say when it fails: the waits on both
/// nodes, each failing the test at its deadline.
pub trait TwoNodes {
    fn nodes(&self) -> &Nodes;

    fn nodes_mut(&mut self) -> &mut Nodes;

    /// Fails the test with `what` and [`Nodes::report`].
    fn fail(&self, what: &str) -> ! {
        panic!("{}", self.nodes().report(what));
    }

    /// Reads A's events until `done` holds for them; fails with `what` at the deadline.
    fn wait_a(&mut self, deadline: Instant, what: &str, done: impl Fn(&[Value]) -> bool) {
        if !self.nodes_mut().watch_a.until(deadline, done) {
            self.fail(what);
        }
    }

    /// Reads B's events until `done` holds for them; fails with `what` at the deadline.
    fn wait_b(&mut self, deadline: Instant, what: &str, done: impl Fn(&[Value]) -> bool) {
        if !self.nodes_mut().watch_b.until(deadline, done) {
            self.fail(what);
        }
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
            let (a, b) = self.nodes().status();
            let at = Instant::now();
            if done(&a, &b) {
                return (a, b, at);
            }
            if at >= deadline {
                self.fail(&format!("{what}; last status:\nA: {a}\nB: {b}"));
            }
            let nodes = self.nodes_mut();
            nodes
                .watch_a
                .next_before(deadline.min(at + Duration::from_millis(50)));
            nodes.watch_a.pump(Instant::now());
            nodes.watch_b.pump(Instant::now());
        }
    }
}
