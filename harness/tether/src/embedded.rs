//! [`Node`]: a Tether node an application embeds. It runs the node's actors on a thread
//! of its own (an actix system inside), so it works from any tokio runtime, and talks
//! to them through channels: the application sees async methods and a stream of
//! [`NodeEvent`]s, never an actor.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_crypto::{KeyFileError, PublicKey, RelationshipKey, StaticKeypair};
use tether_direct_connection::Limits;
use tether_protocol::{ChannelId, DeviceId, SendError};
use tether_store::RedbChannelStore;
use tether_transport::connectivity::{self, InterfaceWatcher, WatchOptions};
use tether_transport::{Endpoint, TransportConfig};
use tokio::sync::{mpsc, oneshot};

use crate::announce::rebind_target;
use crate::config::{self, ConfigError, NodeSettings};
use crate::hub::NodeEvent;
use crate::journal_writer::CommitOn;
use crate::metrics::{self, NodeReporter, NodeSnapshot, NodeStatusReport};
use crate::node::{
    self, DurableChannels, NodeConfig, NodePeer, PeerStatus, PingAnswer, PingError, SendAllError,
    ServerInfo,
};

/// Events the node's thread may have handed over that the application has not read:
/// a delivered message's credit returns when it enters this buffer, so it bounds what
/// the application can leave unread beyond the receive budget (64 messages).
const EVENT_BUFFER: usize = 64;

/// Requests from the application waiting for the node's thread: enough for many
/// concurrent senders; a full queue makes the caller wait, never grows.
const COMMAND_BUFFER: usize = 256;

/// Why a node did not start. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Neither `key_file` nor `keypair` was given.
    #[error("no device key: call key_file or keypair")]
    NoKey,
    /// `relay` was not given.
    #[error("no relay: call relay with its address and public key")]
    NoRelay,
    /// No `peer` was given.
    #[error("no peer: call peer for each paired device")]
    NoPeers,
    /// The key file could not be read or created.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: KeyFileError,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS's reason.
        reason: String,
    },
    /// The data directory or the channel store in it could not be opened.
    #[error("channel store {path}: {reason}")]
    Store {
        /// The store's file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The node's thread or actors could not start.
    #[error("the node could not start: {0}")]
    Start(String),
}

/// The node's thread has ended: [`Node::stop`] was called elsewhere, or it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node stopped")]
pub struct NodeStopped;

/// Settings of a [`Node`], collected by [`Node::builder`].
pub struct NodeBuilder {
    keypair: Option<StaticKeypair>,
    key_file: Option<PathBuf>,
    relay: Option<ServerInfo>,
    peers: Vec<NodePeer>,
    /// The peers' names in a config file: the `peer` label of the metrics.
    names: Vec<(DeviceId, String)>,
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    watch_interfaces: bool,
    limits: Limits,
    presence: tether_presence::Config,
    transport: TransportConfig,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("NodeBuilder")
            .field("key_file", &self.key_file)
            .field("relay", &self.relay.as_ref().map(|r| r.addr))
            .field("peers", &self.peers.len())
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("watch_interfaces", &self.watch_interfaces)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// The device's private key, from this file; created (readable by the owner only)
    /// with a fresh key from the OS's entropy if it does not exist.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// The device's key pair, held by the application.
    pub fn keypair(mut self, keypair: StaticKeypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// The relay and rendezvous server: its address and the public key it must prove.
    pub fn relay(mut self, addr: SocketAddr, public: PublicKey) -> Self {
        self.relay = Some(ServerInfo { addr, public });
        self
    }

    /// A paired device: its public key and the relationship key both sides hold.
    pub fn peer(self, public: PublicKey, relationship_key: RelationshipKey) -> Self {
        self.peer_at(public, relationship_key, Vec::new())
    }

    /// A paired device with addresses where it may be reached directly at first.
    pub fn peer_at(
        mut self,
        public: PublicKey,
        relationship_key: RelationshipKey,
        addrs: Vec<SocketAddr>,
    ) -> Self {
        self.peers.push(NodePeer {
            public,
            rk: relationship_key,
            addrs,
        });
        self
    }

    /// The local UDP address (default `0.0.0.0:0`: every interface, any port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Keeps channels in `dir` (one folder per device key): what `send` accepted
    /// survives a crash or restart of the application, and is delivered exactly once.
    /// Without it, channels live in memory only.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Watch the OS's interfaces and move the sessions when the network changes (on by
    /// default). Off, only [`Node::rebind`] moves them.
    pub fn watch_interfaces(mut self, on: bool) -> Self {
        self.watch_interfaces = on;
        self
    }

    /// Queue, credit and timing limits (the defaults suit most applications).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Migration timings (the defaults suit most applications).
    pub fn presence(mut self, presence: tether_presence::Config) -> Self {
        self.presence = presence;
        self
    }

    /// QUIC transport settings: keep-alive, idle and dial timeouts (the defaults suit
    /// most applications).
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// A builder with everything a node config (the file `tether node` reads, see
    /// [`config::load_node`]) sets for the node: its key (and key file), listen
    /// address, relay, peers (with their addresses, and their names for the metrics),
    /// data folder, interface watching, presence, limits and transport settings. Its
    /// CLI-only keys (`control_socket`, `metrics_addr`, `log_format`) are not the
    /// node's. Any setting can still be changed on the builder before
    /// [`NodeBuilder::start`].
    pub fn from_config(settings: &NodeSettings) -> Self {
        let mut builder = Node::builder()
            .keypair(settings.keypair.clone())
            .key_file(settings.key_file.clone())
            .relay(settings.relay.addr, settings.relay.public)
            .listen(settings.listen)
            .data_dir(settings.data_dir.clone())
            .watch_interfaces(settings.watch_interfaces)
            .limits(settings.limits.clone())
            .presence(settings.presence.clone())
            .transport(settings.transport.clone());
        builder.peers = settings.peers.iter().map(|p| p.peer.clone()).collect();
        builder.names = settings
            .peers
            .iter()
            .map(|p| (device_id(&p.peer.public), p.name.clone()))
            .collect();
        builder
    }

    /// Starts the node on a thread of its own; returns once it listens.
    pub async fn start(self) -> Result<Node, StartError> {
        let keypair = match (self.keypair, &self.key_file) {
            (Some(keypair), _) => keypair,
            (None, Some(path)) => load_or_create_key(path)?,
            (None, None) => return Err(StartError::NoKey),
        };
        let server = self.relay.ok_or(StartError::NoRelay)?;
        if self.peers.is_empty() {
            return Err(StartError::NoPeers);
        }
        let device = DeviceId(*keypair.public().as_bytes());
        let durable = match &self.data_dir {
            Some(dir) => Some(open_channel_store(dir, &device)?),
            None => None,
        };
        let setup = Setup {
            config: NodeConfig {
                keypair,
                peers: self.peers,
                server,
                presence: self.presence,
                limits: self.limits,
                blueprint: tether_connection_blueprint::Config::default(),
                unix_ms_at_start: unix_ms(),
                interfaces: Vec::new(),
                durable,
            },
            listen: self.listen,
            watch_interfaces: self.watch_interfaces,
            transport: self.transport,
            names: self.names,
        };
        let (commands, command_rx) = mpsc::channel(COMMAND_BUFFER);
        let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (started_tx, started) = oneshot::channel();
        std::thread::Builder::new()
            .name("tether-node".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(run(setup, command_rx, event_tx, started_tx));
            })
            .map_err(|error| StartError::Start(error.to_string()))?;
        let local_addr = started
            .await
            .map_err(|_| StartError::Start("the node's thread ended".into()))??;
        Ok(Node {
            device,
            local_addr,
            commands,
            events,
        })
    }
}

/// A running Tether node: sessions with the paired devices, kept across network
/// changes, carrying messages exactly once and in order per channel.
#[derive(Debug)]
pub struct Node {
    device: DeviceId,
    local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<NodeEvent>,
}

impl Node {
    /// Settings for a new node; [`NodeBuilder::start`] starts it.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            keypair: None,
            key_file: None,
            relay: None,
            peers: Vec::new(),
            names: Vec::new(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            data_dir: None,
            watch_interfaces: true,
            limits: Limits::default(),
            presence: tether_presence::Config::default(),
            transport: TransportConfig::default(),
        }
    }

    /// A builder from a node config file, the same TOML (with the same `TETHER_*`
    /// environment overrides) `tether node` reads: see [`NodeBuilder::from_config`]
    /// for what it sets. The relay's host name, if the config gives one, is looked up
    /// here (blocking). A config that cannot be used is an [`ConfigError`] naming the
    /// key and the problem.
    pub fn builder_from_config_file(path: impl AsRef<Path>) -> Result<NodeBuilder, ConfigError> {
        config::load_node(path.as_ref()).map(|settings| NodeBuilder::from_config(&settings))
    }

    /// This device's id (its public key).
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The local UDP address the node listens on (at start).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues `payload` for `peer` on channel 0: Ok is its sequence number, and it will
    /// be delivered exactly once and in order (and is on disk first with a
    /// `data_dir`). Waits while the peer's queue is full.
    pub async fn send(
        &self,
        peer: DeviceId,
        payload: impl Into<Vec<u8>>,
    ) -> Result<u64, SendError> {
        self.send_on(peer, ChannelId(0), payload).await
    }

    /// [`Node::send`] on a channel of its own: each channel is ordered on its own.
    pub async fn send_on(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payload: impl Into<Vec<u8>>,
    ) -> Result<u64, SendError> {
        self.request_send(peer, channel, payload.into(), true).await
    }

    /// [`Node::send`] for a burst: every payload queued for `peer` on channel 0, in
    /// order, waiting for room as `send` does; Ok holds their sequence numbers. Much
    /// cheaper per message than one `send` each when the messages are small: they
    /// reach the node in requests of up to [`actors::MAX_SEND_BATCH`](crate::actors::MAX_SEND_BATCH)
    /// and go out together. An Err holds the numbers of those accepted before the error
    /// (they will be delivered) and the error that stopped the rest.
    pub async fn send_all(
        &self,
        peer: DeviceId,
        payloads: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Vec<u64>, SendAllError> {
        self.send_all_on(peer, ChannelId(0), payloads).await
    }

    /// [`Node::send_all`] on a channel of its own.
    pub async fn send_all_on(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payloads: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Vec<u64>, SendAllError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::SendAll {
            peer,
            channel,
            payloads: payloads.into_iter().collect(),
            reply,
        };
        let closed = || SendAllError {
            accepted: Vec::new(),
            error: SendError::Closed,
        };
        self.commands.send(command).await.map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }

    /// [`Node::send`] that does not wait: a full queue is `SendError::QueueFull`.
    pub async fn try_send(
        &self,
        peer: DeviceId,
        payload: impl Into<Vec<u8>>,
    ) -> Result<u64, SendError> {
        self.try_send_on(peer, ChannelId(0), payload).await
    }

    /// [`Node::send_on`] that does not wait: a full queue is `SendError::QueueFull`.
    pub async fn try_send_on(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payload: impl Into<Vec<u8>>,
    ) -> Result<u64, SendError> {
        self.request_send(peer, channel, payload.into(), false)
            .await
    }

    async fn request_send(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
        wait: bool,
    ) -> Result<u64, SendError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Send {
            peer,
            channel,
            payload,
            wait,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| SendError::Closed)?;
        answer.await.unwrap_or(Err(SendError::Closed))
    }

    /// The next event (a message delivered, acknowledged, a session's status); None
    /// once the node stopped. Reading a delivered message lets its sender send more.
    pub async fn next_event(&mut self) -> Option<NodeEvent> {
        self.events.recv().await
    }

    /// The events as a [`Stream`](futures_core::Stream).
    pub fn events(&mut self) -> Events<'_> {
        Events { node: self }
    }

    /// Every peer's session: status, path, counters.
    pub async fn status(&self) -> Vec<PeerStatus> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Status(reply)).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// The node's full status, as `tether status --json` prints it: every peer's
    /// session (status, path and why, RTT, last seen, handshakes, messages, migrations,
    /// time on each path), the relay connection, UDP traffic and input dropped.
    /// [`metrics::render_node_status`] renders it for people. Peers are named as in the
    /// config file the node came from ([`NodeBuilder::from_config`]), else by their
    /// short id.
    pub async fn status_report(&self) -> Result<NodeStatusReport, NodeStopped> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Report(reply)).await.is_err() {
            return Err(NodeStopped);
        }
        answer.await.map_err(|_| NodeStopped)
    }

    /// The node's metrics as Prometheus text (exposition format 0.0.4, the families
    /// `tether node` serves at its `metrics_addr`: `docs/config.md` lists them), for the
    /// application to serve from its own HTTP endpoint with the `Content-Type`
    /// [`metrics::PROMETHEUS_CONTENT_TYPE`].
    pub async fn metrics(&self) -> Result<String, NodeStopped> {
        self.status_report()
            .await
            .map(|report| metrics::node_prometheus(&report))
    }

    /// One probe of the session with `peer`: a liveness ping sealed under the session
    /// keys, sent on the session's path and answered by the peer's session layer (not
    /// by the transport), waiting at most `timeout`. Ok is its round-trip time and the
    /// path the answer came by; call it again for each further probe (`tether ping`
    /// does, `interval` apart).
    ///
    /// Not answered, it says why: [`PingError::NoSession`] (with the session's status)
    /// while no session carries the peer, [`PingError::Timeout`] (and whether it went on
    /// the relay), [`PingError::UnknownPeer`] for a device that is not paired, and
    /// [`PingError::Stopped`] once the node stopped.
    pub async fn ping(&self, peer: DeviceId, timeout: Duration) -> Result<PingAnswer, PingError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Ping {
            peer,
            timeout,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(PingError::Stopped);
        }
        answer.await.unwrap_or(Err(PingError::Stopped))
    }

    /// The device changed networks without the interface watcher seeing it: move to
    /// `addr` and migrate every session. Returns the new local address.
    pub async fn rebind(&self, addr: SocketAddr) -> Result<SocketAddr, String> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Rebind { addr, reply };
        if self.commands.send(command).await.is_err() {
            return Err("the node stopped".into());
        }
        answer.await.unwrap_or(Err("the node stopped".into()))
    }

    /// Stops the node: each peer is told (its session shows closed at once), the
    /// channel store is committed, and the node's thread ends.
    pub async fn stop(self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Stop(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }
}

/// The events of a [`Node`], as a stream.
#[derive(Debug)]
pub struct Events<'a> {
    node: &'a mut Node,
}

impl futures_core::Stream for Events<'_> {
    type Item = NodeEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.node.events.poll_recv(cx)
    }
}

/// What the application asks of the node's thread.
#[derive(Debug)]
enum Command {
    Send {
        peer: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
        wait: bool,
        reply: oneshot::Sender<Result<u64, SendError>>,
    },
    SendAll {
        peer: DeviceId,
        channel: ChannelId,
        payloads: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Vec<u64>, SendAllError>>,
    },
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Report(oneshot::Sender<NodeStatusReport>),
    Ping {
        peer: DeviceId,
        timeout: Duration,
        reply: oneshot::Sender<Result<PingAnswer, PingError>>,
    },
    Rebind {
        addr: SocketAddr,
        reply: oneshot::Sender<Result<SocketAddr, String>>,
    },
    Stop(oneshot::Sender<()>),
}

/// What the node's thread starts from.
struct Setup {
    config: NodeConfig,
    listen: SocketAddr,
    watch_interfaces: bool,
    transport: TransportConfig,
    names: Vec<(DeviceId, String)>,
}

/// The node's thread: starts the actors, then serves the application's requests and
/// hands events over until the node stops or the application drops its handle.
async fn run(
    setup: Setup,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NodeEvent>,
    started: oneshot::Sender<Result<SocketAddr, StartError>>,
) {
    let relay = setup.config.server.addr;
    let Setup {
        mut config,
        listen,
        watch_interfaces,
        transport,
        names,
    } = setup;
    let endpoint = match Endpoint::bind_udp(listen, transport).await {
        Ok(endpoint) => endpoint,
        Err(error) => {
            let _ = started.send(Err(StartError::Listen {
                addr: listen,
                reason: error.to_string(),
            }));
            return;
        }
    };
    let (trigger, mut changes) = connectivity::channel();
    let watcher = if watch_interfaces {
        match InterfaceWatcher::start(trigger, WatchOptions::default()).await {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, "cannot watch network interfaces; only Node::rebind moves this node");
                None
            }
        }
    } else {
        None
    };
    let mut interfaces: Vec<IpAddr> = watcher
        .as_ref()
        .map(|w| w.addresses().iter().map(SocketAddr::ip).collect())
        .unwrap_or_default();
    config.interfaces = interfaces.clone();
    let node = match node::Node::start(config, endpoint.clone()) {
        Ok(node) => node,
        Err(error) => {
            let _ = started.send(Err(StartError::Start(error.to_string())));
            return;
        }
    };
    let mut local = endpoint.local_addr().unwrap_or(listen);
    let _ = started.send(Ok(local));
    // Every event passes here on its way to the application: the report's bookkeeping
    // sees them all.
    let mut reporter = NodeReporter::new(node.device(), relay, Instant::now()).with_names(names);
    let mut node = node;
    let mut node_events = node.take_events();
    let node = std::rc::Rc::new(node);
    let mut pending: Option<NodeEvent> = None;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Send { peer, channel, payload, wait, reply }) => {
                    // A waiting send must not hold up the events its peer's credit
                    // depends on: it runs on its own.
                    let node = node.clone();
                    actix_rt::spawn(async move {
                        let result = if wait {
                            node.send_on(peer, channel, payload).await
                        } else {
                            node.try_send_on(peer, channel, payload).await
                        };
                        let _ = reply.send(result);
                    });
                }
                Some(Command::SendAll { peer, channel, payloads, reply }) => {
                    let node = node.clone();
                    actix_rt::spawn(async move {
                        let _ = reply.send(node.send_all_on(peer, channel, payloads).await);
                    });
                }
                Some(Command::Status(reply)) => {
                    let _ = reply.send(node.status().await);
                }
                Some(Command::Report(reply)) => {
                    let snapshot = NodeSnapshot::of(&node).await;
                    let _ = reply.send(reporter.report(snapshot, local, Instant::now(), unix_ms()));
                }
                Some(Command::Ping { peer, timeout, reply }) => {
                    // The wait for the answer must not hold up the events.
                    let node = node.clone();
                    actix_rt::spawn(async move {
                        let _ = reply.send(node.ping(peer, timeout).await);
                    });
                }
                Some(Command::Rebind { addr, reply }) => {
                    let result = node.rebind_announcing(addr, interfaces.clone()).await;
                    if let Ok(new) = result {
                        local = new;
                    }
                    let _ = reply.send(result);
                }
                Some(Command::Stop(reply)) => {
                    node.stop().await;
                    let _ = reply.send(());
                    break;
                }
                None => {
                    node.stop().await;
                    break;
                }
            },
            change = changes.next(), if watcher.is_some() => {
                let Some(change) = change else { continue };
                interfaces = change.new.iter().map(SocketAddr::ip).collect();
                if let Some(target) = rebind_target(listen.ip(), local, &change.new) {
                    match node.rebind_announcing(target, interfaces.clone()).await {
                        Ok(new) => local = new,
                        Err(error) => tracing::warn!(%error, "rebind after a network change failed"),
                    }
                }
            }
            permit = events.reserve(), if pending.is_some() => match permit {
                Ok(permit) => {
                    if let Some(event) = pending.take() {
                        permit.send(event);
                    }
                }
                // The application dropped its handle: nobody reads, nobody sends.
                Err(_) => {
                    node.stop().await;
                    break;
                }
            },
            event = node_events.next(), if pending.is_none() => match event {
                Some(event) => {
                    reporter.observe(&event, Instant::now(), unix_ms());
                    pending = Some(event);
                }
                None => break,
            },
        }
    }
    actix_rt::System::current().stop();
}

/// The id a device has on the wire: its public key.
pub fn device_id(public: &PublicKey) -> DeviceId {
    DeviceId(*public.as_bytes())
}

/// Reads the device key from `path`, or creates one there from the OS's entropy.
fn load_or_create_key(path: &Path) -> Result<StaticKeypair, StartError> {
    let failed = |source| StartError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return StaticKeypair::load(path).map_err(failed);
    }
    let keypair = StaticKeypair::generate(&mut rand::rngs::OsRng);
    keypair.save(path).map_err(failed)?;
    Ok(keypair)
}

/// Opens (or creates) the device's channel file below `dir`.
fn open_channel_store(dir: &Path, device: &DeviceId) -> Result<DurableChannels, StartError> {
    let path = channel_store_path(dir, device);
    let failed = |reason: String| StartError::Store {
        path: path.clone(),
        reason,
    };
    if let Some(folder) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        // The channels hold the application's messages: the owner's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(|e| failed(e.to_string()))?;
    }
    let store = RedbChannelStore::open(&path).map_err(|e| failed(e.to_string()))?;
    Ok(DurableChannels {
        store: Arc::new(Mutex::new(Box::new(store))),
        commit_on: CommitOn::BlockingPool,
    })
}

/// A node's channel file below `data_dir`: one folder per device key, so several nodes
/// (and a relay) can share a `data_dir`.
pub fn channel_store_path(data_dir: &Path, device: &DeviceId) -> PathBuf {
    let hex = device.to_hex();
    data_dir
        .join(format!("node-{}", &hex[..16]))
        .join("channels.redb")
}

/// Milliseconds since the Unix epoch, from the wall clock: what the shells give the
/// cores that keep wall-clock times (stored expiries, hint timestamps).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
