//! `tether node`: one device on a real UDP endpoint, driven through its control
//! socket, watching the OS's interfaces, logging each session and phase in its own
//! span, and serving metrics.
//!
//! One task owns the [`Node`] and does everything in turn: node events (metrics, logs,
//! watchers), control commands, interface changes and a one-second tick that accounts
//! time on each path. Control connections run as their own tasks and talk to it
//! through a command channel, so nothing but that task ever touches the node.
//!
//! # Network changes
//! With `watch_interfaces` on, a change of the OS's addresses (debounced, 250 ms) makes
//! the node rebind its endpoint, which starts a migration: with a wildcard `listen`
//! address (the default) on every change, to the wildcard address and a new port; with
//! a specific `listen` IP only when that IP disappears, then to the wildcard address.
//! Loopback addresses are never watched (they reach no peer), so on loopback the only
//! trigger is `tether migrate --bind ADDR`.

use super::config::{NodeSettings, PeerSettings};
use super::control::{self, Request, WatchEvent};
use super::episodes::{EpisodeChange, Episodes, EPISODE_QUIET};
use super::metrics::{
    self, millis, path_name, Lifecycle, NodeReporter, NodeSnapshot, NodeStatusReport,
    RejectedReport,
};
use super::run::{self, RunError, StopSignals};
use crate::hub::NodeEvent;
use crate::journal_writer::CommitOn;
use crate::node::{DurableChannels, Node, NodeConfig};
use data_encoding::BASE64;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use tether::channel_store_path;
use tether::{rebind_target, PingError};
use tether_protocol::{ChannelId, DeviceId, SessionStatus};
use tether_store::RedbChannelStore;
use tether_transport::connectivity::{self, InterfaceWatcher, WatchOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Span;

/// What a started node tells its caller (the binary prints it).
#[derive(Debug, Clone)]
pub struct NodeReady {
    /// This device's public key (hex).
    pub device: String,
    /// The bound UDP address.
    pub listen: SocketAddr,
    /// The control socket.
    pub control_socket: PathBuf,
    /// The metrics address, if any.
    pub metrics: Option<SocketAddr>,
}

/// A control connection's request to the node task.
enum Command {
    Status(oneshot::Sender<NodeStatusReport>),
    Migrate {
        addr: SocketAddr,
        reply: oneshot::Sender<Result<(SocketAddr, SocketAddr), String>>,
    },
    Snapshot(oneshot::Sender<Vec<WatchEvent>>),
}

pub use tether::unix_ms;

/// The OS's interface addresses now (loopback and link-local left out, as the
/// interface watcher sees them); none when they cannot be read.
pub async fn interface_addresses() -> Vec<std::net::IpAddr> {
    let (trigger, _) = connectivity::channel();
    InterfaceWatcher::start(trigger, WatchOptions::default())
        .await
        .map(|snapshot| snapshot.addresses())
        .unwrap_or_default()
        .into_iter()
        .map(|addr| addr.ip())
        .collect()
}

/// Runs a node until SIGINT or SIGTERM. `ready` is called once everything listens.
pub async fn run_node(
    settings: NodeSettings,
    ready: impl FnOnce(&NodeReady),
) -> Result<(), RunError> {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let endpoint = run::bind(settings.listen, settings.transport.clone()).await?;
    let local = endpoint.local_addr().map_err(|source| RunError::Start {
        what: "node",
        source,
    })?;
    // Everything that can fail is opened before the actors start, so a failure is one
    // error line and nothing is left half started.
    let metrics_listener = match settings.metrics_addr {
        Some(addr) => Some(metrics::bind_metrics(addr).await?),
        None => None,
    };
    let device = DeviceId(*settings.keypair.public().as_bytes());
    let channels_path = channel_store_path(&settings.data_dir, &device);
    if let Some(dir) = channels_path.parent() {
        run::create_private_dir(dir)?;
    }
    let channel_store = RedbChannelStore::open(&channels_path)?;
    // Last: it leaves a socket file behind.
    let listener = control::bind(&settings.control_socket).await?;
    let metrics_addr = match &metrics_listener {
        Some(l) => l.local_addr().ok(),
        None => None,
    };
    let mut stop = StopSignals::install()?;
    let (trigger, mut changes) = connectivity::channel();
    let watcher = if settings.watch_interfaces {
        match InterfaceWatcher::start(trigger, WatchOptions::default()).await {
            Ok(watcher) => {
                tracing::info!(addresses = ?watcher.addresses(), "watching network interfaces");
                Some(watcher)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch network interfaces; only `tether migrate` moves this node");
                None
            }
        }
    } else {
        drop(trigger);
        None
    };
    // The addresses announced in place of a wildcard `listen`: the watcher's, or (with
    // the watcher off) the interfaces as they are at start.
    let interfaces: Vec<std::net::IpAddr> = match &watcher {
        Some(watcher) => watcher
            .addresses()
            .into_iter()
            .map(|addr| addr.ip())
            .collect(),
        None if settings.listen.ip().is_unspecified() => interface_addresses().await,
        None => Vec::new(),
    };
    let config = NodeConfig {
        keypair: settings.keypair.clone(),
        peers: settings.peers.iter().map(|p| p.peer.clone()).collect(),
        server: settings.relay,
        presence: settings.presence.clone(),
        limits: settings.limits.clone(),
        blueprint: tether_connection_blueprint::Config::default(),
        unix_ms_at_start: unix_ms(),
        interfaces: interfaces.clone(),
        durable: Some(DurableChannels {
            store: Arc::new(Mutex::new(Box::new(channel_store))),
            commit_on: CommitOn::BlockingPool,
        }),
    };
    let mut node = Node::start(config, endpoint.clone()).map_err(|source| RunError::Start {
        what: "node",
        source,
    })?;
    // The node task reads the events; control connections send on their own tasks.
    let mut events = node.take_events();
    let node = Arc::new(node);
    let senders = Arc::new(Senders {
        node: node.clone(),
        peers: settings.peers.clone(),
    });

    let (commands, mut command_rx) = mpsc::channel::<Command>(64);
    let (watchers, _) = broadcast::channel::<String>(4096);
    actix_rt::spawn(accept_control(
        listener,
        commands.clone(),
        watchers.clone(),
        senders,
    ));
    if let Some(listener) = metrics_listener {
        let commands = commands.clone();
        actix_rt::spawn(metrics::serve_metrics(listener, move || {
            let commands = commands.clone();
            async move {
                let (reply, answer) = oneshot::channel();
                commands.send(Command::Status(reply)).await.ok()?;
                answer.await.ok().map(|r| metrics::node_prometheus(&r))
            }
        }));
    }

    let device_hex = settings.keypair.public().to_hex();
    let root = tracing::info_span!("node", device = %device.short());
    let reporter = NodeReporter::new(device, settings.relay.addr, Instant::now()).with_names(
        settings
            .peers
            .iter()
            .map(|p| (DeviceId(*p.peer.public.as_bytes()), p.name.clone())),
    );
    let mut state = NodeState {
        node,
        episodes: Episodes::default(),
        local,
        configured_ip: settings.listen.ip(),
        interfaces,
        peers: settings.peers.clone(),
        reporter,
        logs: BTreeMap::new(),
        last_status: BTreeMap::new(),
        watchers,
        root: root.clone(),
    };
    for peer in &settings.peers {
        state.log_for(DeviceId(*peer.peer.public.as_bytes()));
    }
    root.in_scope(|| {
        tracing::info!(%local, control = %settings.control_socket.display(), peers = settings.peers.len(), "node started");
    });
    ready(&NodeReady {
        device: device_hex,
        listen: local,
        control_socket: settings.control_socket.clone(),
        metrics: metrics_addr,
    });

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut watching = settings.watch_interfaces;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => state.on_event(event),
                None => break,
            },
            Some(command) = command_rx.recv() => state.on_command(command).await,
            change = changes.next(), if watching => match change {
                Some(change) => state.on_interfaces(change.new).await,
                None => watching = false,
            },
            _ = tick.tick() => state.sample().await,
            () = stop.received() => break,
        }
    }
    root.in_scope(|| tracing::info!("node stopping"));
    let told = state.node.stop().await;
    root.in_scope(|| tracing::info!(peers = told, "node stopped; peers told goodbye"));
    let _ = std::fs::remove_file(&settings.control_socket);
    Ok(())
}

/// Per-peer log spans: the session, and the phase it is in.
struct PeerLog {
    session: Span,
    phase: Option<Phase>,
    /// Phases entered so far, by name (numbers the phase spans).
    counts: BTreeMap<&'static str, u64>,
}

struct Phase {
    name: &'static str,
    span: Span,
    since: Instant,
    /// Set when the session is Ready again; a migration phase stays open for the
    /// MigrationCompleted event that follows, then closes with this time and outcome.
    ended: Option<(Instant, SessionStatus)>,
}

impl PeerLog {
    /// The span events of this peer belong in now.
    fn span(&self) -> Span {
        self.phase
            .as_ref()
            .map_or_else(|| self.session.clone(), |p| p.span.clone())
    }

    fn close_phase(&mut self, now: Instant, outcome: SessionStatus) {
        if let Some(old) = self.phase.take() {
            let (at, outcome) = old.ended.unwrap_or((now, outcome));
            let took = at.saturating_duration_since(old.since);
            old.span.in_scope(|| tracing::info!(took_ms = millis(took), outcome = %outcome, "phase {} ended", old.name));
        }
    }

    /// Moves to the phase of `to`, closing the current one if it differs.
    fn enter(&mut self, to: SessionStatus, now: Instant) {
        // A migration phase that already ended (Ready, waiting for MigrationCompleted)
        // closes on whatever status comes next.
        if self.phase.as_ref().is_some_and(|p| p.ended.is_some()) {
            self.close_phase(now, to);
        }
        let wanted = phase_of(to);
        match (self.phase.as_ref().map(|p| p.name), wanted) {
            (Some(current), Some(wanted)) if current == wanted => {}
            (Some("migration"), None) => {
                if let Some(phase) = self.phase.as_mut() {
                    phase.ended = Some((now, to));
                }
            }
            (Some(_), _) => {
                self.close_phase(now, to);
                self.open(wanted, now);
            }
            (None, _) => self.open(wanted, now),
        }
    }

    fn open(&mut self, wanted: Option<&'static str>, now: Instant) {
        let Some(name) = wanted else {
            return;
        };
        let n = self.counts.entry(name).or_insert(0);
        *n += 1;
        // One span name per phase, so `session{..}:migration{n=2}` reads as it is.
        let span = match name {
            "establish" => tracing::info_span!(parent: &self.session, "establish", n = *n),
            "migration" => tracing::info_span!(parent: &self.session, "migration", n = *n),
            _ => tracing::info_span!(parent: &self.session, "recovery", n = *n),
        };
        span.in_scope(|| tracing::info!("phase {name} started"));
        self.phase = Some(Phase {
            name,
            span,
            since: now,
            ended: None,
        });
    }
}

fn phase_of(status: SessionStatus) -> Option<&'static str> {
    match status {
        SessionStatus::Connecting | SessionStatus::Handshaking => Some("establish"),
        SessionStatus::Degraded
        | SessionStatus::ReconnectingOutbound
        | SessionStatus::ReconnectingInbound => Some("migration"),
        SessionStatus::Evicted | SessionStatus::Recovering => Some("recovery"),
        SessionStatus::Ready | SessionStatus::Closed => None,
    }
}

struct NodeState {
    node: Arc<Node>,
    episodes: Episodes,
    local: SocketAddr,
    configured_ip: std::net::IpAddr,
    /// The interface addresses, announced in place of a wildcard endpoint address.
    interfaces: Vec<std::net::IpAddr>,
    peers: Vec<PeerSettings>,
    /// The peers' names, and the status report's bookkeeping of the events.
    reporter: NodeReporter,
    logs: BTreeMap<DeviceId, PeerLog>,
    last_status: BTreeMap<DeviceId, SessionStatus>,
    watchers: broadcast::Sender<String>,
    root: Span,
}

impl NodeState {
    fn name(&self, peer: &DeviceId) -> String {
        self.reporter.name(peer)
    }

    fn log_for(&mut self, peer: DeviceId) -> &mut PeerLog {
        let name = self.name(&peer);
        let root = self.root.clone();
        self.logs.entry(peer).or_insert_with(|| PeerLog {
            session: tracing::info_span!(parent: &root, "session", peer = %name, id = %peer.short()),
            phase: None,
            counts: BTreeMap::new(),
        })
    }

    fn broadcast(&self, event: &WatchEvent) {
        if self.watchers.receiver_count() == 0 {
            return;
        }
        if let Ok(line) = serde_json::to_string(event) {
            let _ = self.watchers.send(line);
        }
    }

    fn on_event(&mut self, event: NodeEvent) {
        let now = Instant::now();
        let at_ms = unix_ms();
        let lifecycle = self.reporter.observe(&event, now, at_ms);
        match &event {
            NodeEvent::Status { peer, from, to } => {
                self.last_status.insert(*peer, *to);
                let name = self.name(peer);
                let log = self.log_for(*peer);
                log.enter(*to, now);
                let span = log.span();
                let from_text = from.map_or("-".to_string(), |s| s.to_string());
                match lifecycle {
                    Lifecycle::Started => span.in_scope(
                        || tracing::info!(from = %from_text, to = %to, "session established"),
                    ),
                    Lifecycle::Stopped => span.in_scope(
                        || tracing::warn!(from = %from_text, to = %to, "session stopped"),
                    ),
                    Lifecycle::None => {
                        span.in_scope(|| tracing::info!(from = %from_text, to = %to, "status"))
                    }
                }
                self.broadcast(&WatchEvent::Status {
                    peer: name,
                    from: from.map(|s| s.to_string()),
                    to: to.to_string(),
                    at_ms,
                });
            }
            NodeEvent::Ready(ready) => {
                let name = self.name(&ready.peer);
                let log = self.log_for(ready.peer);
                let span = log.span();
                span.in_scope(|| {
                    tracing::info!(
                        epoch = ready.epoch.0,
                        path = path_name(ready.path),
                        remote = ?ready.remote,
                        handshake = ready.after_handshake,
                        rekey = ready.rekey,
                        "session bound to a path"
                    )
                });
                self.broadcast(&WatchEvent::Ready {
                    peer: name,
                    epoch: ready.epoch.0,
                    path: path_name(ready.path).into(),
                    remote: ready.remote.map(|r| r.to_string()),
                    after_handshake: ready.after_handshake,
                    rekey: ready.rekey,
                    at_ms,
                });
            }
            NodeEvent::MigrationStarted { peer, outbound } => {
                let span = self.log_for(*peer).span();
                span.in_scope(|| tracing::info!(outbound = *outbound, "migration started"));
            }
            NodeEvent::MigrationFailed {
                peer,
                outbound,
                duration,
            } => {
                let span = self.log_for(*peer).span();
                span.in_scope(|| {
                    tracing::warn!(
                        outbound = *outbound,
                        after_ms = millis(*duration),
                        "migration failed: the session was evicted before a path answered"
                    )
                });
            }
            NodeEvent::MigrationCompleted {
                peer,
                outbound,
                duration,
            } => {
                let name = self.name(peer);
                let log = self.log_for(*peer);
                let span = log.span();
                span.in_scope(|| {
                    tracing::info!(
                        outbound = *outbound,
                        duration_ms = millis(*duration),
                        "migration completed without a handshake"
                    )
                });
                if log.phase.as_ref().is_some_and(|p| p.ended.is_some()) {
                    log.close_phase(now, SessionStatus::Ready);
                }
                self.broadcast(&WatchEvent::MigrationCompleted {
                    peer: name,
                    outbound: *outbound,
                    duration_ms: millis(*duration),
                    at_ms,
                });
            }
            NodeEvent::Acknowledged {
                peer,
                channel,
                below,
            } => {
                self.log_for(*peer).session.in_scope(|| {
                    tracing::trace!(channel = channel.0, below = *below, "acknowledged")
                });
            }
            NodeEvent::Delivered {
                peer,
                channel,
                seq,
                payload,
            } => {
                let name = self.name(peer);
                let log = self.log_for(*peer);
                log.session.in_scope(|| {
                    tracing::debug!(
                        channel = channel.0,
                        seq = *seq,
                        len = payload.len(),
                        "message delivered"
                    )
                });
                self.broadcast(&WatchEvent::Delivered {
                    peer: name,
                    channel: channel.0,
                    seq: *seq,
                    text: std::str::from_utf8(payload).ok().map(str::to_owned),
                    data: BASE64.encode(payload),
                    len: payload.len(),
                    at_ms,
                });
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.report().await);
            }
            Command::Migrate { addr, reply } => {
                let _ = reply.send(self.rebind(addr, "manual").await);
            }
            Command::Snapshot(reply) => {
                let at_ms = unix_ms();
                let events = self
                    .peers
                    .iter()
                    .map(|p| {
                        let id = DeviceId(*p.peer.public.as_bytes());
                        WatchEvent::Status {
                            peer: p.name.clone(),
                            from: None,
                            to: self
                                .last_status
                                .get(&id)
                                .map_or("Connecting".to_string(), |s| s.to_string()),
                            at_ms,
                        }
                    })
                    .collect();
                let _ = reply.send(events);
            }
        }
    }

    async fn rebind(
        &mut self,
        addr: SocketAddr,
        cause: &str,
    ) -> Result<(SocketAddr, SocketAddr), String> {
        let old = self.local;
        let span = tracing::info_span!(parent: &self.root, "rebind", cause = cause);
        match self
            .node
            .rebind_announcing(addr, self.interfaces.clone())
            .await
        {
            Ok(new) => {
                self.local = new;
                span.in_scope(
                    || tracing::info!(%old, %new, "endpoint moved: migrating every session"),
                );
                self.broadcast(&WatchEvent::Rebound {
                    old: old.to_string(),
                    new: new.to_string(),
                    cause: cause.into(),
                    at_ms: unix_ms(),
                });
                Ok((old, new))
            }
            Err(error) => {
                span.in_scope(|| tracing::warn!(%old, wanted = %addr, %error, "rebind failed; the old address stays"));
                Err(format!("cannot rebind to {addr}: {error}"))
            }
        }
    }

    async fn on_interfaces(&mut self, addresses: Vec<SocketAddr>) {
        self.interfaces = addresses.iter().map(|a| a.ip()).collect();
        let target = rebind_target(self.configured_ip, self.local, &addresses);
        self.root.in_scope(|| {
            tracing::info!(?addresses, rebind = ?target, "network interfaces changed");
        });
        if let Some(target) = target {
            let _ = self.rebind(target, "interface").await;
        }
    }

    async fn sample(&mut self) {
        let now = Instant::now();
        self.reporter.sample(&self.node.status().await, now);
        let counters = self.node.counters().await;
        let (relay, _) = self.node.server_client_counters().await;
        let rejected = RejectedReport::of_node(&counters, &self.node.endpoint_stats(), 0);
        let changes = self.episodes.observe(now, |kind| match kind {
            "relay_refused_rate_limited" => relay.refused.rate_limited,
            _ => rejected.by_reason.get(kind).copied().unwrap_or(0),
        });
        for change in changes {
            self.root.in_scope(|| match change {
                EpisodeChange::Started { kind, reason } => {
                    tracing::warn!(counter = kind, "{reason}");
                }
                EpisodeChange::Ended { kind, count } => tracing::info!(
                    counter = kind,
                    count,
                    "no more of these for {} s",
                    EPISODE_QUIET.as_secs()
                ),
            });
        }
    }

    async fn report(&mut self) -> NodeStatusReport {
        let snapshot = NodeSnapshot::of(&self.node).await;
        self.reporter
            .report(snapshot, self.local, Instant::now(), unix_ms())
    }
}

/// What control connections send through: the node itself, so that a send that waits
/// for room waits on the connection's own task and never on the node task (which must
/// go on reading the events that bring the room back), and the peers by name.
struct Senders {
    node: Arc<Node>,
    peers: Vec<PeerSettings>,
}

/// Messages a stream hands to the node at once at most (they share commits).
const MAX_STREAM_BATCH: usize = 1024;

impl Senders {
    /// The peer named `wanted` (a name, a public key prefix of 4 or more hex digits,
    /// or a short id), and its name.
    fn resolve(&self, wanted: &str) -> Result<(DeviceId, String), String> {
        let id_of = |p: &PeerSettings| DeviceId(*p.peer.public.as_bytes());
        if let Some(p) = self.peers.iter().find(|p| p.name == wanted) {
            return Ok((id_of(p), p.name.clone()));
        }
        let lower = wanted.to_ascii_lowercase();
        let matches: Vec<&PeerSettings> = self
            .peers
            .iter()
            .filter(|p| {
                (lower.len() >= 4 && p.peer.public.to_hex().starts_with(&lower))
                    || id_of(p).short() == lower
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok((id_of(one), one.name.clone())),
            [] => Err(format!(
                "unknown peer {wanted:?} (known: {})",
                self.peers
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Err(format!("peer {wanted:?} is ambiguous")),
        }
    }

    /// One operator ping of `peer` (see [`Node::ping`]): the answer's fields, or why
    /// it was not answered; Err only for a peer that is not known.
    async fn ping(&self, peer: &str, timeout_ms: Option<u64>) -> Result<serde_json::Value, String> {
        let (id, name) = self.resolve(peer)?;
        let timeout = timeout_ms
            .map_or(control::DEFAULT_PING_TIMEOUT, Duration::from_millis)
            .clamp(Duration::from_millis(1), control::MAX_PING_TIMEOUT);
        Ok(match self.node.ping(id, timeout).await {
            Ok(answer) => serde_json::json!({
                "peer": name,
                "answered": true,
                "rtt_ms": answer.rtt.as_secs_f64() * 1000.0,
                "path": path_name(answer.path),
                "remote": answer.remote.map(|r| r.to_string()),
            }),
            Err(error @ PingError::NoSession { .. }) => serde_json::json!({
                "peer": name,
                "answered": false,
                "unanswered": "no_session",
                "reason": error.to_string(),
            }),
            Err(error @ PingError::Timeout { path, .. }) => serde_json::json!({
                "peer": name,
                "answered": false,
                "unanswered": "timeout",
                "path": path_name(path),
                "reason": error.to_string(),
            }),
            Err(error @ (PingError::UnknownPeer | PingError::Stopped)) => {
                return Err(format!("ping {peer}: {error}"))
            }
        })
    }

    /// One message; with `wait`, waits for room in a full queue.
    async fn send(
        &self,
        peer: &str,
        payload: Result<Vec<u8>, String>,
        wait: bool,
    ) -> Result<(String, u64), String> {
        let (id, name) = self.resolve(peer)?;
        let payload = payload?;
        let sent = if wait {
            self.node.send(id, payload).await
        } else {
            self.node.try_send(id, payload).await
        };
        sent.map(|seq| (name, seq))
            .map_err(|e| format!("send to {peer} refused: {e}"))
    }

    /// A `send_stream` after its request: reads the messages, hands each burst that
    /// arrived together to the node at once (waiting for room as needed), and answers
    /// each message with its sequence number, until the client's end of input or the
    /// first error.
    async fn stream<R, W>(&self, id: DeviceId, name: &str, reader: &mut BufReader<R>, write: &mut W)
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut sent: u64 = 0;
        let mut line = Vec::new();
        loop {
            let mut batch = Vec::new();
            let mut error = None;
            let mut ended = false;
            loop {
                match control::read_line(reader, &mut line).await {
                    Ok(false) => ended = true,
                    Ok(true) => match serde_json::from_slice::<control::StreamMessage>(&line)
                        .map_err(|e| e.to_string())
                        .and_then(|m| control::payload_of(m.text, m.data.as_deref()))
                    {
                        Ok(payload) => batch.push(payload),
                        Err(e) => {
                            let n = sent + batch.len() as u64 + 1;
                            error = Some(format!("message {n}: {e}"));
                        }
                    },
                    Err(e) => error = Some(e),
                }
                // Take what has already arrived, not more: a burst shares commits.
                if ended
                    || error.is_some()
                    || batch.len() >= MAX_STREAM_BATCH
                    || !reader.buffer().contains(&b'\n')
                {
                    break;
                }
            }
            let mut out = String::new();
            if !batch.is_empty() {
                let accepted = match self.node.send_all_on(id, ChannelId(0), batch).await {
                    Ok(accepted) => accepted,
                    Err(refused) => {
                        error = Some(format!("send to {name} refused: {}", refused.error));
                        refused.accepted
                    }
                };
                for seq in accepted {
                    sent += 1;
                    out.push_str(&control::ok_line(serde_json::json!({ "seq": seq })));
                }
            }
            if let Some(error) = &error {
                out.push_str(&control::error_line(error));
            } else if ended {
                out.push_str(&control::ok_line(
                    serde_json::json!({ "done": true, "sent": sent }),
                ));
            }
            if write.write_all(out.as_bytes()).await.is_err() || error.is_some() || ended {
                return;
            }
        }
    }
}

/// Accepts control connections; each runs as its own task.
async fn accept_control(
    listener: tokio::net::UnixListener,
    commands: mpsc::Sender<Command>,
    watchers: broadcast::Sender<String>,
    senders: Arc<Senders>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                actix_rt::spawn(serve_control(
                    stream,
                    commands.clone(),
                    watchers.clone(),
                    senders.clone(),
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, String> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(make(reply))
        .await
        .map_err(|_| "node is stopping".to_string())?;
    answer.await.map_err(|_| "node is stopping".to_string())
}

async fn serve_control(
    stream: tokio::net::UnixStream,
    commands: mpsc::Sender<Command>,
    watchers: broadcast::Sender<String>,
    senders: Arc<Senders>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let request = match control::read_request(&mut reader).await {
        Ok(request) => request,
        Err(error) => {
            let _ = write
                .write_all(control::error_line(&error).as_bytes())
                .await;
            return;
        }
    };
    let line = match request {
        Request::Status => match ask(&commands, Command::Status).await {
            Ok(report) => control::ok_line(serde_json::json!({ "status": report })),
            Err(e) => control::error_line(&e),
        },
        Request::Send {
            peer,
            text,
            data,
            wait,
        } => {
            let payload = control::payload_of(text, data.as_deref());
            match senders.send(&peer, payload, wait).await {
                Ok((peer, seq)) => {
                    control::ok_line(serde_json::json!({ "peer": peer, "seq": seq }))
                }
                Err(e) => control::error_line(&e),
            }
        }
        Request::SendStream { peer } => {
            let line = match senders.resolve(&peer) {
                Ok((id, name)) => {
                    let opened =
                        control::ok_line(serde_json::json!({ "peer": name, "streaming": true }));
                    if write.write_all(opened.as_bytes()).await.is_ok() {
                        senders.stream(id, &name, &mut reader, &mut write).await;
                    }
                    return;
                }
                Err(e) => control::error_line(&e),
            };
            let _ = write.write_all(line.as_bytes()).await;
            return;
        }
        Request::Ping { peer, timeout_ms } => match senders.ping(&peer, timeout_ms).await {
            Ok(answer) => control::ok_line(answer),
            Err(e) => control::error_line(&e),
        },
        Request::Migrate { bind } => match control::parse_bind(&bind) {
            Err(e) => control::error_line(&e),
            Ok(addr) => match ask(&commands, |reply| Command::Migrate { addr, reply }).await {
                Ok(Ok((old, new))) => control::ok_line(
                    serde_json::json!({ "old": old.to_string(), "new": new.to_string() }),
                ),
                Ok(Err(e)) | Err(e) => control::error_line(&e),
            },
        },
        Request::Watch => {
            // Subscribe before the snapshot, so no event falls between the two.
            let mut events = watchers.subscribe();
            let snapshot = match ask(&commands, Command::Snapshot).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = write.write_all(control::error_line(&e).as_bytes()).await;
                    return;
                }
            };
            let mut out = control::ok_line(serde_json::json!({ "watching": true }));
            for event in snapshot {
                if let Ok(line) = serde_json::to_string(&event) {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            if write.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            let mut probe = String::new();
            loop {
                let line = tokio::select! {
                    received = events.recv() => match received {
                        Ok(line) => line,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            serde_json::to_string(&WatchEvent::Lagged { missed }).unwrap_or_default()
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    // The client closed its side (or sent something): stop.
                    _ = reader.read_line(&mut probe) => return,
                };
                if write.write_all(line.as_bytes()).await.is_err()
                    || write.write_all(b"\n").await.is_err()
                {
                    return;
                }
            }
        }
    };
    let _ = write.write_all(line.as_bytes()).await;
}
