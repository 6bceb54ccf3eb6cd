//! A device node: the five orchestrator actors, the transport driver and the event hub,
//! wired together, behind a small async API (`send`, events, `status`, `rebind`).

use crate::announce::announced_endpoints;
use crate::driver::{DriverRecipients, Rebind, TransportDriver};
use crate::hub::{EventBacklog, EventHub, GetPresence, NodeEvent, PresenceView};
use crate::journal_writer::{CommitOn, Flush, JournalWriter, SharedChannelStore};
use actix::{Actor, Addr, AsyncContext, Context};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_crypto::{Fingerprint, PublicKey, RelationshipKey, RendezvousId, StaticKeypair};
use tether_direct_connection::{
    self as direct_connection, GetPeerSnapshots, PeerConfig, PeerCounters,
};
use tether_pms::{GetRendezvousClientCounters, RendezvousClientConfig, RendezvousClientCounters};
use tether_protocol::{
    ChannelId, ChannelStoreError, DeviceId, LinkOwner, MessageConsumed, PathKind, RequestId,
    RestoredChannels, SendError, SendMessage, SendMessages, SendRefused, SessionStatus, Shutdown,
    TransportPort,
};
use tether_rcs::{GetRelayClientCounters, RelayClientConfig, RelayClientCounters};
use tether_transport::{Endpoint, EndpointStats};
use tokio::sync::mpsc;

/// A paired peer as the node's config lists it.
#[derive(Clone)]
pub struct NodePeer {
    /// Its static public key.
    pub public: PublicKey,
    /// The relationship key of the pair.
    pub rk: RelationshipKey,
    /// Addresses to try first.
    pub addrs: Vec<SocketAddr>,
}

/// Where the relay and rendezvous server is.
#[derive(Clone, Copy)]
pub struct ServerInfo {
    /// Its address.
    pub addr: SocketAddr,
    /// Its static public key.
    pub public: PublicKey,
}

/// Everything a node needs to start.
#[derive(Clone)]
pub struct NodeConfig {
    /// This device's static keypair.
    pub keypair: StaticKeypair,
    /// Paired peers.
    pub peers: Vec<NodePeer>,
    /// The relay and rendezvous server.
    pub server: ServerInfo,
    /// Presence settings.
    pub presence: tether_presence::Config,
    /// DirectConnection limits.
    pub limits: direct_connection::Limits,
    /// Candidate ordering settings.
    pub blueprint: tether_connection_blueprint::Config,
    /// Unix time in ms at start (handshake timestamps, hint expiry).
    pub unix_ms_at_start: u64,
    /// The device's interface addresses, announced in place of a wildcard endpoint
    /// address (see [`announced_endpoints`]); unused when the endpoint is bound to one
    /// address.
    pub interfaces: Vec<IpAddr>,
    /// Where channels are kept across restarts; without one, a stop loses every message
    /// not yet acknowledged.
    pub durable: Option<DurableChannels>,
}

/// A node's channel store and where its commits run.
#[derive(Clone)]
pub struct DurableChannels {
    /// The store.
    pub store: SharedChannelStore,
    /// Where its commits run.
    pub commit_on: CommitOn,
}

/// One peer's status, as `tether status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub peer: DeviceId,
    /// Its session status.
    pub status: Option<SessionStatus>,
    /// Committed epoch.
    pub epoch: Option<u64>,
    /// Completed handshakes: generations committed with the peer, one per new epoch
    /// (establishment, recovery, restart, rekey).
    pub handshakes: u64,
    /// Handshake messages 1 sent to the peer (every retry counts) or answered.
    pub handshake_attempts: u64,
    /// Fingerprint of the committed PeerSecret.
    pub peer_secret: Option<Fingerprint>,
    /// Fingerprint of the committed session keys.
    pub session_keys: Option<Fingerprint>,
    /// Current path kind.
    pub path: Option<PathKind>,
    /// Current remote address.
    pub remote: Option<SocketAddr>,
    /// Smoothed RTT.
    pub rtt_ms: Option<u64>,
    /// Messages queued.
    pub queued: usize,
    /// Bytes of this peer's messages held for the application: delivered and not yet
    /// read, or buffered ahead of a gap (at most `Limits::receive_budget`).
    pub held_bytes: usize,
    /// Messages sent and delivered, duplicates, frames per path kind, connects given up.
    pub counters: PeerCounters,
    /// Migrations completed, and the last one's duration.
    pub migrations: u64,
    /// Duration of the last migration.
    pub last_migration: Option<Duration>,
    /// Open transport links DirectConnection holds to this peer.
    pub links: usize,
    /// When the last authenticated frame from the peer arrived.
    pub last_received: Option<std::time::Instant>,
    /// When the current session keys' handshake completed here.
    pub last_handshake: Option<std::time::Instant>,
    /// Whether the bound direct link's address answered a challenge (None unless bound
    /// to a direct link).
    pub path_validated: Option<bool>,
    /// Direct addresses known for the peer (announced, configured or remembered).
    pub direct_candidates: usize,
    /// Smoothed round trip of the relay path, when measured.
    pub relay_rtt_ms: Option<u64>,
    /// The last direct path left unused for being slower than the relay, since the
    /// session last changed paths.
    pub direct_declined: Option<tether_direct_connection::DeclinedDirect>,
    /// Where the peer last saw this device on a direct path, and what that says about
    /// this device's NAT (since it last moved).
    pub seen_by_peer: Option<tether_direct_connection::SeenByPeer>,
}

/// A [`Node::ping`] that was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingAnswer {
    /// From sending the ping to its answer.
    pub rtt: Duration,
    /// The kind of path the answer came by.
    pub path: PathKind,
    /// The peer's address it came from, on a direct path.
    pub remote: Option<SocketAddr>,
}

/// Why a [`Node::ping`] was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// Not a paired peer.
    #[error("unknown peer")]
    UnknownPeer,
    /// No session carries it: not established, or no path bound.
    #[error("no session{}", .status.map_or(String::new(), |s| format!(" ({s})")))]
    NoSession {
        /// The session's status.
        status: Option<SessionStatus>,
    },
    /// Sent, and not answered in time.
    #[error("timeout: no answer within {} ms{}", .waited.as_millis(), match .path { PathKind::Relay => " (sent on the relay)", PathKind::Direct => "" })]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// The kind of path it was sent on.
        path: PathKind,
    },
    /// The node stopped.
    #[error("the node stopped")]
    Stopped,
}

/// Most messages [`Node::send_all_on`] hands DirectConnection in one request: the
/// channel's credit (`Limits::credit`, 256), so one request can fill the window, while
/// the node's thread is never held by one request for long.
pub const MAX_SEND_BATCH: usize = 256;

/// Why [`Node::send_all_on`] stopped before all of its messages were accepted and
/// durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {} messages were accepted)", accepted.len())]
pub struct SendAllError {
    /// Sequence numbers of the messages accepted before the error, in order.
    pub accepted: Vec<u64>,
    /// What stopped the rest.
    pub error: SendError,
}

/// A running device node.
pub struct Node {
    device: DeviceId,
    dc: Addr<direct_connection::Orchestrator>,
    presence: Addr<tether_presence::Orchestrator>,
    blueprint: Addr<tether_connection_blueprint::Orchestrator>,
    rcs: Addr<tether_rcs::Orchestrator>,
    pms: Addr<tether_pms::Orchestrator>,
    driver: Addr<TransportDriver>,
    hub: Addr<EventHub>,
    events: NodeEvents,
    /// What the hub and this handle share: unread notices, waiting sends.
    backlog: Arc<EventBacklog>,
    /// Frames dropped because a link's writer queue was full.
    writes_dropped: Arc<AtomicU64>,
    /// A handle for reading the endpoint's counters (the driver owns and closes it).
    endpoint: Endpoint,
    /// The journal writer, when channels are kept across restarts.
    journal: Option<Addr<JournalWriter>>,
}

/// Where a node's randomness comes from.
#[derive(Debug, Clone, Copy)]
enum Randomness {
    /// The operating system: every actor's RNG gets 256 fresh bits.
    Os,
    /// A simulation's seed: the same seed gives the same run.
    Seeded(u64),
}

/// The RNG seeds of a node's actors (each its own, so no two share a stream).
struct ActorSeeds {
    direct_connection: [u8; 32],
    relay: [u8; 32],
    rendezvous: [u8; 32],
    presence: [u8; 32],
}

impl ActorSeeds {
    fn new(randomness: Randomness) -> Self {
        match randomness {
            Randomness::Os => {
                let os = || {
                    let mut seed = [0_u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut seed);
                    seed
                };
                Self {
                    direct_connection: os(),
                    relay: os(),
                    rendezvous: os(),
                    presence: os(),
                }
            }
            Randomness::Seeded(seed) => {
                // Each actor's stream from its own 64-bit derivation of the seed.
                let derive =
                    |actor: u64| seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(actor);
                let expand = |actor| ChaCha20Rng::seed_from_u64(derive(actor)).get_seed();
                let mut rendezvous = [0_u8; 32];
                rendezvous[..8].copy_from_slice(&derive(3).to_le_bytes());
                Self {
                    direct_connection: expand(1),
                    relay: expand(2),
                    rendezvous,
                    presence: expand(4),
                }
            }
        }
    }
}

impl Node {
    /// Starts the node's actors on the current actix system, on `endpoint`. Every
    /// random value the node draws (Noise ephemeral keys, path challenges, jitter) comes
    /// from RNGs seeded with 256 bits from the operating system.
    pub fn start(config: NodeConfig, endpoint: Endpoint) -> Result<Self, std::io::Error> {
        Self::start_with(config, endpoint, Randomness::Os)
    }

    /// [`Node::start`] for the simulator: every RNG is derived from `seed`, so the same
    /// seed replays the same run. Never for a device on a real network: its keys would
    /// be as guessable as the seed.
    pub fn start_simulated(
        config: NodeConfig,
        endpoint: Endpoint,
        seed: u64,
    ) -> Result<Self, std::io::Error> {
        Self::start_with(config, endpoint, Randomness::Seeded(seed))
    }

    fn start_with(
        config: NodeConfig,
        endpoint: Endpoint,
        randomness: Randomness,
    ) -> Result<Self, std::io::Error> {
        let seeds = ActorSeeds::new(randomness);
        let announced = announced_endpoints(endpoint.local_addr()?, &config.interfaces);
        let device = DeviceId(*config.keypair.public().as_bytes());
        let peers: Vec<DeviceId> = config
            .peers
            .iter()
            .map(|p| DeviceId(*p.public.as_bytes()))
            .collect();

        let (restored, journal) = match &config.durable {
            Some(durable) => {
                let restored = durable
                    .store
                    .lock()
                    .map_err(|_| std::io::Error::other("the channel store's lock was poisoned"))?
                    .load()
                    .map_err(std::io::Error::other)?;
                (restored, Some(durable))
            }
            None => (RestoredChannels::default(), None),
        };
        let presence_ctx = Context::<tether_presence::Orchestrator>::new();
        let dc_ctx = Context::<direct_connection::Orchestrator>::new();
        let journal = journal.map(|durable| {
            JournalWriter::new(
                durable.store.clone(),
                durable.commit_on,
                dc_ctx.address().recipient(),
            )
            .start()
        });
        let blueprint_ctx = Context::<tether_connection_blueprint::Orchestrator>::new();
        let rcs_ctx = Context::<tether_rcs::Orchestrator>::new();
        let pms_ctx = Context::<tether_pms::Orchestrator>::new();
        let driver_ctx = Context::<TransportDriver>::new();
        let presence = presence_ctx.address();
        let dc = dc_ctx.address();
        let blueprint = blueprint_ctx.address();
        let rcs = rcs_ctx.address();
        let pms = pms_ctx.address();
        let driver = driver_ctx.address();
        let (events_tx, events) = mpsc::unbounded_channel();
        let backlog = Arc::new(EventBacklog::default());
        let hub = EventHub::new(events_tx, backlog.clone()).start();
        let port = |owner| TransportPort::new(owner, driver.clone().recipient());

        let endpoint_handle = endpoint.clone();
        let writes_dropped = Arc::new(AtomicU64::new(0));
        driver_ctx.run(TransportDriver::new(
            endpoint,
            announced.clone(),
            DriverRecipients {
                direct_connection: dc.clone().recipient(),
                rcs: rcs.clone().recipient(),
                rcs_bindings: rcs.clone().recipient(),
                connectivity: vec![
                    presence.clone().recipient(),
                    dc.clone().recipient(),
                    rcs.clone().recipient(),
                ],
            },
            writes_dropped.clone(),
        ));

        let blueprint_addr = blueprint_ctx.run(tether_connection_blueprint::Orchestrator::new(
            config.blueprint.clone(),
            tether_connection_blueprint::Recipients {
                compiled: dc.clone().recipient(),
            },
        ));
        for peer in &config.peers {
            blueprint_addr.do_send(tether_connection_blueprint::AddPeer {
                peer: DeviceId(*peer.public.as_bytes()),
                configured: peer.addrs.clone(),
            });
        }

        dc_ctx.run(direct_connection::Orchestrator::new(
            direct_connection::Config {
                local: config.keypair.clone(),
                peers: config
                    .peers
                    .iter()
                    .map(|p| PeerConfig {
                        public: p.public,
                        rk: p.rk.clone(),
                    })
                    .collect(),
                local_endpoints: announced.clone(),
                rng_seed: seeds.direct_connection,
                unix_ms_at_start: config.unix_ms_at_start,
                limits: config.limits.clone(),
                restored,
                journal: journal.is_some(),
            },
            direct_connection::Recipients {
                transport: port(LinkOwner::DirectConnection),
                relay_forward: rcs.clone().recipient(),
                relay_enqueue: rcs.clone().recipient(),
                handshake_started: presence.clone().recipient(),
                session_ready: vec![
                    presence.clone().recipient(),
                    blueprint.clone().recipient(),
                    hub.clone().recipient(),
                ],
                connect_failed: presence.clone().recipient(),
                inbound_migration_ping: presence.clone().recipient(),
                path_lost: presence.clone().recipient(),
                peer_reset: presence.clone().recipient(),
                liveness: presence.clone().recipient(),
                path_measured: vec![blueprint.clone().recipient(), presence.clone().recipient()],
                direct_dial_failed: presence.clone().recipient(),
                peer_announced: blueprint.clone().recipient(),
                peer_endpoints_changed: presence.clone().recipient(),
                send_waiting: presence.clone().recipient(),
                journal: match &journal {
                    Some(writer) => writer.clone().recipient(),
                    None => hub_sink(),
                },
                delivered: hub.clone().recipient(),
                send_capacity: hub.clone().recipient(),
                acknowledged: hub.clone().recipient(),
            },
        ));

        let mut relay_config = RelayClientConfig::new(
            config.keypair.clone(),
            config.server.public,
            config.server.addr,
            seeds.relay,
        );
        relay_config.server.first_dial_request = RequestId(1);
        // The server opens at most this many (its table seats a device under no more
        // ids than that by default); a device with more peers is introduced for the
        // first ones and finds the others through their hints.
        relay_config.server.rendezvous_ids = config
            .peers
            .iter()
            .take(tether_rcs::MAX_SEALED_RENDEZVOUS_IDS)
            .map(|p| RendezvousId::from_rk(&p.rk).0)
            .collect();
        rcs_ctx.run(tether_rcs::Orchestrator::new(
            relay_config,
            tether_rcs::Recipients {
                transport: port(LinkOwner::Rcs),
                delivered: dc.clone().recipient(),
                // The queue's answers are advisory: the session layer retransmits.
                enqueue_result: hub_sink(),
                status: vec![dc.clone().recipient(), pms.clone().recipient()],
                rendezvous: pms.clone().recipient(),
                reflexive: vec![dc.clone().recipient(), presence.clone().recipient()],
            },
        ));

        pms_ctx.run(tether_pms::Orchestrator::new(
            RendezvousClientConfig::new(
                config.keypair.clone(),
                config
                    .peers
                    .iter()
                    .map(|p| (DeviceId(*p.public.as_bytes()), p.rk.clone()))
                    .collect(),
                config.unix_ms_at_start,
                seeds.rendezvous,
            ),
            tether_pms::Recipients {
                to_server: rcs.clone().recipient(),
                hint: vec![dc.clone().recipient()],
            },
        ));

        presence_ctx.run(tether_presence::Orchestrator::new(
            config.presence.clone(),
            seeds.presence,
            peers,
            announced.clone(),
            tether_presence::Recipients {
                connect: dc.clone().recipient(),
                migration_ping: dc.clone().recipient(),
                relay_migration_ping: dc.clone().recipient(),
                carry_over_relay: dc.clone().recipient(),
                evict: dc.clone().recipient(),
                allow_rekey: dc.clone().recipient(),
                publish_hint: pms.clone().recipient(),
                lookup_hint: pms.clone().recipient(),
                relay_poll: rcs.clone().recipient(),
                status: hub.clone().recipient(),
                migration: hub.clone().recipient(),
            },
        ));

        let events = NodeEvents {
            events,
            backlog: backlog.clone(),
            dc: dc.clone(),
        };
        Ok(Self {
            device,
            dc,
            presence,
            blueprint,
            rcs,
            pms,
            driver,
            hub,
            events,
            backlog,
            writes_dropped,
            endpoint: endpoint_handle,
            journal,
        })
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Queues `payload` for `peer` on channel 0; Ok is its sequence number, and it will
    /// be delivered exactly once and in order. While the peer's queue is full this
    /// waits until it has room (the peer acknowledged); [`Node::try_send`] fails
    /// instead. Err says why it was not accepted.
    pub async fn send(&self, peer: DeviceId, payload: Vec<u8>) -> Result<u64, SendError> {
        self.send_on(peer, ChannelId(0), payload).await
    }

    /// [`Node::send`] on a given channel.
    pub async fn send_on(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
    ) -> Result<u64, SendError> {
        let seq = self.offer_waiting(peer, channel, payload).await?;
        self.durable(seq).await
    }

    /// [`Node::send_on`] for a burst: queues every payload in order, in requests of
    /// up to [`MAX_SEND_BATCH`] messages each (one hop to DirectConnection per request,
    /// not per message, and the messages go out together), waiting for room as
    /// `send_on` does; then waits once for the commit that holds them all. Ok holds
    /// their sequence numbers. Err holds the numbers of those accepted before the error
    /// (they will be delivered) and the error that stopped the rest.
    pub async fn send_all_on(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payloads: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<Vec<u64>, SendAllError> {
        let mut accepted = Vec::new();
        let mut error = None;
        let mut payloads = payloads.into_iter().peekable();
        let mut refused_back: Vec<Vec<u8>> = Vec::new();
        while !refused_back.is_empty() || payloads.peek().is_some() {
            let mut batch = std::mem::take(&mut refused_back);
            let room_for = MAX_SEND_BATCH.saturating_sub(batch.len());
            batch.extend(payloads.by_ref().take(room_for));
            // Armed before the attempt, so room made in between is not missed.
            let room = self.backlog.capacity().notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let request = SendMessages {
                peer,
                channel,
                payloads: batch,
            };
            let Ok(answer) = self.dc.send(request).await else {
                error = Some(SendError::Closed);
                break;
            };
            accepted.extend(answer.accepted);
            match answer.refused {
                None => {}
                Some((SendError::QueueFull { .. }, back)) if !self.backlog.stopped() => {
                    refused_back = back;
                    room.await;
                }
                Some((refused, _)) => {
                    error = Some(refused);
                    break;
                }
            }
        }
        if let Some(&last) = accepted.last() {
            if let Err(not_durable) = self.durable(last).await {
                error = Some(not_durable);
            }
        }
        match error {
            None => Ok(accepted),
            Some(error) => Err(SendAllError { accepted, error }),
        }
    }

    /// Hands a message to DirectConnection, waiting while the peer's queue is full;
    /// its sequence number once accepted (not yet durable).
    async fn offer_waiting(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
    ) -> Result<u64, SendError> {
        let mut payload = payload;
        loop {
            // Armed before the attempt, so room made in between is not missed.
            let room = self.backlog.capacity().notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.offer(peer, channel, payload).await {
                Err(SendRefused {
                    error: SendError::QueueFull { .. },
                    payload: refused,
                }) if !self.backlog.stopped() => {
                    payload = refused;
                    room.await;
                }
                Err(refused) => return Err(refused.error),
                Ok(seq) => return Ok(seq),
            }
        }
    }

    /// [`Node::send_on`] that does not wait: a full queue is `SendError::QueueFull`.
    pub async fn try_send(&self, peer: DeviceId, payload: Vec<u8>) -> Result<u64, SendError> {
        self.try_send_on(peer, ChannelId(0), payload).await
    }

    /// [`Node::try_send`] on a given channel.
    pub async fn try_send_on(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
    ) -> Result<u64, SendError> {
        let seq = self
            .offer(peer, channel, payload)
            .await
            .map_err(|refused| refused.error)?;
        self.durable(seq).await
    }

    /// Hands a message to DirectConnection once.
    async fn offer(
        &self,
        peer: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
    ) -> Result<u64, SendRefused> {
        let message = SendMessage {
            peer,
            channel,
            payload,
        };
        match self.dc.send(message).await {
            Ok(result) => result,
            Err(_) => Err(SendRefused {
                error: SendError::Closed,
                payload: Vec::new(),
            }),
        }
    }

    /// Waits, when channels are kept across restarts, for the commit that holds the
    /// accepted message `seq`: accepted means durable.
    async fn durable(&self, seq: u64) -> Result<u64, SendError> {
        if let Some(writer) = &self.journal {
            // Accepted means durable: wait for the commit that holds the message.
            let committed = writer
                .send(Flush)
                .await
                .unwrap_or_else(|_| Err(ChannelStoreError("the journal writer stopped".into())));
            if let Err(error) = committed {
                return Err(SendError::NotDurable {
                    seq,
                    reason: error.to_string(),
                });
            }
        }
        Ok(seq)
    }

    /// The next event, in order. None once the node stopped. Taking a delivered
    /// message returns its credit to the sender: a node whose application stops
    /// reading holds at most its receive budget per peer.
    pub async fn next_event(&mut self) -> Option<NodeEvent> {
        self.events.next().await
    }

    /// An event if one is waiting.
    pub fn try_next_event(&mut self) -> Option<NodeEvent> {
        self.events.try_next()
    }

    /// Takes the event stream out of the node, so events can be read while the node is
    /// shared (`send` takes `&self`); the node's own `next_event` then sees none.
    pub fn take_events(&mut self) -> NodeEvents {
        let (_, empty) = mpsc::unbounded_channel();
        std::mem::replace(
            &mut self.events,
            NodeEvents {
                events: empty,
                backlog: self.backlog.clone(),
                dc: self.dc.clone(),
            },
        )
    }

    /// Frames dropped because a link's writer queue held
    /// `MAX_WRITER_QUEUE_BYTES` (16 MiB; the peer stopped reading).
    pub fn writes_dropped(&self) -> u64 {
        self.writes_dropped.load(Ordering::Relaxed)
    }

    /// Events other than deliveries dropped because the application left too many
    /// unread (see [`crate::hub::MAX_PENDING_NOTICES`]).
    pub fn notices_dropped(&self) -> u64 {
        self.backlog.notices_dropped()
    }
}

/// A node's events, in order; reading a delivered message returns its credit to the
/// sender.
#[derive(Debug)]
pub struct NodeEvents {
    events: mpsc::UnboundedReceiver<NodeEvent>,
    backlog: Arc<EventBacklog>,
    dc: Addr<direct_connection::Orchestrator>,
}

impl NodeEvents {
    /// The next event; None once the node stopped.
    pub async fn next(&mut self) -> Option<NodeEvent> {
        let event = self.events.recv().await?;
        self.taken(&event);
        Some(event)
    }

    /// An event if one is waiting.
    pub fn try_next(&mut self) -> Option<NodeEvent> {
        let event = self.events.try_recv().ok()?;
        self.taken(&event);
        Some(event)
    }

    fn taken(&self, event: &NodeEvent) {
        self.backlog.read(event);
        if let NodeEvent::Delivered {
            peer,
            channel,
            payload,
            ..
        } = event
        {
            self.dc.do_send(MessageConsumed {
                peer: *peer,
                channel: *channel,
                len: payload.len(),
            });
        }
    }
}

impl Node {
    /// Every peer's status.
    pub async fn status(&self) -> Vec<PeerStatus> {
        let (snapshots, _) = self.dc.send(GetPeerSnapshots).await.unwrap_or_default();
        let presence = self.hub.send(GetPresence).await.unwrap_or_default();
        snapshots
            .into_iter()
            .map(|s| {
                let view = presence
                    .get(&s.peer)
                    .copied()
                    .unwrap_or(PresenceView::default());
                PeerStatus {
                    peer: s.peer,
                    status: view.status,
                    epoch: s.epoch,
                    handshakes: s.handshakes,
                    handshake_attempts: s.handshake_attempts,
                    peer_secret: s.peer_secret,
                    session_keys: s.session_keys,
                    path: s.path,
                    remote: s.remote,
                    rtt_ms: s.rtt_ms,
                    queued: s.queued,
                    held_bytes: s.held_bytes,
                    counters: s.counters,
                    migrations: view.migrations,
                    last_migration: view.last_migration,
                    links: s.links,
                    last_received: s.last_received,
                    last_handshake: s.last_handshake,
                    path_validated: s.path_validated,
                    direct_candidates: s.direct_candidates,
                    relay_rtt_ms: s.relay_rtt_ms,
                    direct_declined: s.direct_declined,
                    seen_by_peer: s.seen_by_peer,
                }
            })
            .collect()
    }

    /// One round trip over the session with `peer`, measured when the answer returns: a
    /// liveness ping sealed under the session keys on the session's path, answered by
    /// the peer's session layer (not by the transport), waiting at most `timeout`.
    pub async fn ping(&self, peer: DeviceId, timeout: Duration) -> Result<PingAnswer, PingError> {
        let reply = match self.dc.send(direct_connection::PingPeer { peer }).await {
            Err(_) => return Err(PingError::Stopped),
            Ok(Err(direct_connection::PingRefused::UnknownPeer)) => {
                return Err(PingError::UnknownPeer)
            }
            Ok(Err(direct_connection::PingRefused::NoSession)) => {
                let status = self
                    .hub
                    .send(GetPresence)
                    .await
                    .ok()
                    .and_then(|presence| presence.get(&peer).and_then(|view| view.status));
                return Err(PingError::NoSession { status });
            }
            Ok(Ok(reply)) => reply,
        };
        let timed_out = PingError::Timeout {
            waited: timeout,
            path: reply.sent.path,
        };
        match tokio::time::timeout(timeout, reply.answer).await {
            Ok(Ok(answer)) => Ok(PingAnswer {
                rtt: answer.rtt,
                path: answer.path,
                remote: answer.remote,
            }),
            // Displaced by newer pings, or not answered in time.
            Ok(Err(_)) | Err(_) => Err(timed_out),
        }
    }

    /// The transport endpoint's counters (links dialled and accepted, rebinds, …).
    pub fn endpoint_stats(&self) -> EndpointStats {
        self.endpoint.stats()
    }

    /// DirectConnection's counters of dropped input.
    pub async fn counters(&self) -> direct_connection::Counters {
        self.dc
            .send(GetPeerSnapshots)
            .await
            .map(|(_, counters)| counters)
            .unwrap_or_default()
    }

    /// What the relay and rendezvous clients counted.
    pub async fn server_client_counters(&self) -> (RelayClientCounters, RendezvousClientCounters) {
        let relay = self
            .rcs
            .send(GetRelayClientCounters)
            .await
            .unwrap_or_default();
        let rendezvous = self
            .pms
            .send(GetRendezvousClientCounters)
            .await
            .unwrap_or_default();
        (relay, rendezvous)
    }

    /// The device changed networks: move the endpoint to `addr` and let the session
    /// layer migrate. For an `addr` of one address, which is what the device announces;
    /// a wildcard `addr` needs the interface addresses, see [`Node::rebind_announcing`].
    pub async fn rebind(&self, addr: SocketAddr) -> Result<SocketAddr, String> {
        self.rebind_announcing(addr, Vec::new()).await
    }

    /// [`Node::rebind`] for a device whose interface addresses are `interfaces` now:
    /// those are announced in place of a wildcard `addr`.
    pub async fn rebind_announcing(
        &self,
        addr: SocketAddr,
        interfaces: Vec<IpAddr>,
    ) -> Result<SocketAddr, String> {
        self.driver
            .send(Rebind { addr, interfaces })
            .await
            .map_err(|error| error.to_string())?
    }

    /// Stops the node on purpose: every peer with a usable session is told first (a
    /// sealed goodbye, in the QUIC close of its link), so it shows the session as closed
    /// at once instead of Ready until its heartbeats fail; the channel journal is
    /// committed (what is not acknowledged stays on disk for the next start); then every
    /// actor stops, and this waits (at most [`CLOSE_LINGER`]) until the closes have gone
    /// out. Returns how many peers were told.
    pub async fn stop(&self) -> usize {
        let told = self
            .dc
            .send(direct_connection::CloseSessions)
            .await
            .unwrap_or(0);
        if let Some(writer) = &self.journal {
            // What the journal holds is kept for the next start.
            match writer.send(Flush).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "the channel store failed at stop"),
                Err(_) => tracing::error!("the journal writer stopped before the node"),
            }
        }
        self.abort();
        if tokio::time::timeout(CLOSE_LINGER, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("links still closing after {CLOSE_LINGER:?}; stopping anyway");
        }
        told
    }

    /// Stops every actor of the node at once, telling nobody and committing nothing
    /// more, as a crash would (its endpoint closes with the driver). [`Node::stop`] is
    /// the orderly way.
    pub fn abort(&self) {
        self.backlog.stop();
        self.presence.do_send(Shutdown);
        self.dc.do_send(Shutdown);
        self.blueprint.do_send(Shutdown);
        self.rcs.do_send(Shutdown);
        self.pms.do_send(Shutdown);
        self.driver.do_send(Shutdown);
        if let Some(writer) = &self.journal {
            writer.do_send(Shutdown);
        }
    }
}

/// Longest wait, in [`Node::stop`], for the links' closes (and the goodbyes in them)
/// to go out: QUIC sends a close at once and lingers about three round trips for
/// retransmissions, so one second is enough on any path a session keeps.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A recipient that drops what it gets (for outputs nobody needs to act on).
fn hub_sink<M>() -> actix::Recipient<M>
where
    M: actix::Message<Result = ()> + Send + 'static,
{
    Sink.start().recipient()
}

struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl<M: actix::Message<Result = ()> + Send + 'static> actix::Handler<M> for Sink {
    type Result = ();

    fn handle(&mut self, _message: M, _ctx: &mut Self::Context) {}
}
