//! The integration harness: N whole devices (the real actors, real quinn, real Noise)
//! and a relay server on the simulated network, under tokio's paused clock, seeded.
//!
//! Build one with [`ClusterBuilder`] inside [`run_simulation`], then drive it: pair
//! devices, partition, change addresses, block direct UDP, crash and restart nodes,
//! restart the relay with its queue kept, and run until a condition holds or a virtual
//! deadline passes. The relay admits the cluster's devices only (an allowlist, as a
//! `tether relay` config has by default), unless the builder opens it
//! ([`ClusterBuilder::open_relay`]) for tests whose devices make their own keys. Every node event is logged
//! with its virtual time for phase timelines.

use crate::hub::{phase_timeline, NodeEvent};
use crate::journal_writer::CommitOn;
use crate::node::{DurableChannels, Node, NodeConfig, NodePeer, PeerStatus, ServerInfo};
use crate::relay_server::{RelayServer, RelayServerHandle};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_crypto::{RelationshipKey, StaticKeypair};
use tether_direct_connection::Limits;
use tether_pms::RendezvousTableConfig;
use tether_protocol::{DeviceId, RestoredChannels, SessionStatus, Shutdown};
use tether_rcs::{Admission, MemoryRelayQueueStore, RelayServerConfig};
use tether_transport::sim::{HostId, LinkConditions, NatBehavior, SimNetwork};
use tether_transport::{Endpoint, TransportConfig};

/// The UDP port every simulated device listens on.
pub const DEVICE_PORT: u16 = 4433;

/// The relay server's address on the simulated network.
pub const RELAY_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)), 443);

/// Step of virtual time between checks of a waited-for condition. 5 ms is finer than
/// any latency the scenarios use, so measured durations are accurate to it.
const POLL_STEP: Duration = Duration::from_millis(5);

/// Unix time the simulated wall clock starts at (handshake timestamps, hint expiry).
const SIM_UNIX_MS: u64 = 1_700_000_000_000;

/// Runs `f` on a fresh actix system whose tokio runtime starts with paused time, so the
/// whole simulation runs in virtual time.
pub fn run_simulation<F, Fut>(f: F) -> Fut::Output
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            // INVARIANT: building a current-thread runtime only fails when the OS cannot
            // create its IO driver, which leaves nothing to simulate on.
            .expect("tokio runtime")
    });
    system.block_on(f())
}

/// How to build a cluster.
#[derive(Clone)]
pub struct ClusterBuilder {
    seed: u64,
    devices: usize,
    pairs: Vec<(usize, usize)>,
    blocked: Vec<(usize, usize)>,
    stale: Vec<(usize, usize)>,
    stale_one_way: Vec<(usize, usize)>,
    one_way: Vec<(usize, usize)>,
    conditions: LinkConditions,
    presence: tether_presence::Config,
    limits: Limits,
    wildcard: Vec<usize>,
    volatile: Vec<usize>,
    behind_nat: Vec<(usize, NatBehavior)>,
    open_relay: bool,
    relay_tune: Option<fn(&mut RelayServerConfig)>,
    rendezvous: RendezvousTableConfig,
}

impl ClusterBuilder {
    /// `devices` devices, no pairs yet, default conditions.
    pub fn new(seed: u64, devices: usize) -> Self {
        Self {
            seed,
            devices,
            pairs: Vec::new(),
            wildcard: Vec::new(),
            volatile: Vec::new(),
            behind_nat: Vec::new(),
            blocked: Vec::new(),
            stale: Vec::new(),
            stale_one_way: Vec::new(),
            one_way: Vec::new(),
            conditions: LinkConditions::default(),
            presence: tether_presence::Config::default(),
            limits: Limits::default(),
            open_relay: false,
            relay_tune: None,
            rendezvous: RendezvousTableConfig::default(),
        }
    }

    /// Device `i` sits behind a full-cone NAT of its own (endpoint-independent mapping
    /// and filtering, public address [`nat_public_ip`]): its interface address is
    /// private, so no other device reaches it there, and the relay sees it at the NAT's
    /// side.
    pub fn behind_nat(self, i: usize) -> Self {
        self.behind_nat_of(i, NatBehavior::full_cone())
    }

    /// Device `i` sits behind a NAT of its own that behaves as `behavior` says. Every
    /// network it moves to ([`SimCluster::change_address`]) has a NAT of the same kind
    /// with a public address of its own ([`nat_public_ip_on`]).
    pub fn behind_nat_of(mut self, i: usize, behavior: NatBehavior) -> Self {
        self.behind_nat.retain(|(d, _)| *d != i);
        self.behind_nat.push((i, behavior));
        self
    }

    /// The relay admits any device that proves a key (`admission = "open"`), not only
    /// the cluster's devices: for tests whose devices make their own keys.
    pub fn open_relay(mut self) -> Self {
        self.open_relay = true;
        self
    }

    /// The rendezvous table's bounds.
    pub fn rendezvous_table(mut self, config: RendezvousTableConfig) -> Self {
        self.rendezvous = config;
        self
    }

    /// Changes the relay's settings (bounds, rates, deadlines) before it starts, and
    /// at each restart.
    pub fn relay_config(mut self, tune: fn(&mut RelayServerConfig)) -> Self {
        self.relay_tune = Some(tune);
        self
    }

    /// Pairs two devices (a relationship key for them, each in the other's config).
    pub fn pair(mut self, a: usize, b: usize) -> Self {
        self.pairs.push((a, b));
        self
    }

    /// Blocks direct UDP between two devices from the start (only the relay works).
    pub fn block_direct(mut self, a: usize, b: usize) -> Self {
        self.blocked.push((a, b));
        self
    }

    /// Gives both devices of a pair a stale address for each other in their configs,
    /// so only the rendezvous server knows where they are.
    pub fn stale_addresses(mut self, a: usize, b: usize) -> Self {
        self.stale.push((a, b));
        self
    }

    /// Gives `holder` a stale address for `of` (so `of` must dial `holder` first).
    pub fn stale_address_of(mut self, holder: usize, of: usize) -> Self {
        self.stale_one_way.push((holder, of));
        self
    }

    /// `holder` believes it is paired with `of` (it has `of`'s key and a relationship
    /// key), but `of` does not know `holder`: an unknown device knocking.
    pub fn one_way(mut self, holder: usize, of: usize) -> Self {
        self.one_way.push((holder, of));
        self
    }

    /// Device `i` binds the wildcard address, as `tether node` does with its default
    /// `listen`, and announces its host's address; each network change rebinds it to
    /// the wildcard address and a new port.
    pub fn wildcard(mut self, i: usize) -> Self {
        self.wildcard.push(i);
        self
    }

    /// Device `i` keeps no channels across a restart (no store): a restart loses what
    /// it had not delivered or had not been acknowledged. Every other device keeps them
    /// in a memory store that outlives its node, as a data directory would.
    pub fn volatile(mut self, i: usize) -> Self {
        self.volatile.push(i);
        self
    }

    /// Network conditions between every two hosts.
    pub fn conditions(mut self, conditions: LinkConditions) -> Self {
        self.conditions = conditions;
        self
    }

    /// Presence settings for every device.
    pub fn presence(mut self, presence: tether_presence::Config) -> Self {
        self.presence = presence;
        self
    }

    /// DirectConnection limits for every device.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Builds the network, starts the relay server and every device.
    pub async fn start(self) -> SimCluster {
        let net = SimNetwork::new(self.seed);
        net.set_default_conditions(self.conditions.clone());
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let relay_host = net.add_host("relay", [RELAY_ADDR.ip()]);
        let relay_key = StaticKeypair::generate(&mut rng);
        let relay_endpoint = Endpoint::bind_sim(
            &net,
            relay_host,
            RELAY_ADDR,
            TransportConfig::seeded(self.seed ^ 0xff),
        )
        .await
        // INVARIANT: the relay host was just given RELAY_ADDR; binding it cannot fail.
        .expect("relay endpoint");
        let keys: Vec<StaticKeypair> = (0..self.devices)
            .map(|_| StaticKeypair::generate(&mut rng))
            .collect();
        let admission = if self.open_relay {
            Admission::Open
        } else {
            Admission::Allowlist(
                keys.iter()
                    .map(|k| DeviceId(*k.public().as_bytes()))
                    .collect(),
            )
        };
        let mut relay_config = RelayServerConfig::new(relay_key, [self.seed as u8; 32], admission);
        relay_config.unix_ms_at_start = SIM_UNIX_MS;
        if let Some(tune) = self.relay_tune {
            tune(&mut relay_config);
        }
        let relay_store = MemoryRelayQueueStore::new();
        let relay = RelayServer::start_with_store(
            relay_endpoint,
            relay_config.clone(),
            self.rendezvous.clone(),
            Box::new(relay_store.clone()),
        )
        // INVARIANT: a freshly bound sim endpoint has a local address, and an empty
        // memory store loads.
        .expect("relay server");
        let ips: Vec<IpAddr> = (0..self.devices).map(|i| device_ip(i, 0)).collect();
        let mut peers: Vec<Vec<NodePeer>> = vec![Vec::new(); self.devices];
        for &(a, b) in &self.pairs {
            let rk = RelationshipKey::generate(&mut rng);
            let stale = self
                .stale
                .iter()
                .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b));
            // A stale address is one no host has: the device used to be there.
            let configured = |holder: usize, of: usize| {
                let one_way = self.stale_one_way.contains(&(holder, of));
                let ip = if stale || one_way {
                    stale_ip(of)
                } else {
                    ips[of]
                };
                vec![SocketAddr::new(ip, DEVICE_PORT)]
            };
            peers[a].push(NodePeer {
                public: *keys[b].public(),
                rk: rk.clone(),
                addrs: configured(a, b),
            });
            peers[b].push(NodePeer {
                public: *keys[a].public(),
                rk,
                addrs: configured(b, a),
            });
        }
        for &(holder, of) in &self.one_way {
            peers[holder].push(NodePeer {
                public: *keys[of].public(),
                rk: RelationshipKey::generate(&mut rng),
                addrs: vec![SocketAddr::new(ips[of], DEVICE_PORT)],
            });
        }
        let t0 = tokio::time::Instant::now();
        let mut devices = Vec::new();
        for (i, (keypair, peers)) in keys.into_iter().zip(peers).enumerate() {
            let name = device_name(i);
            let nat = self
                .behind_nat
                .iter()
                .find(|(d, _)| *d == i)
                .map(|(_, behavior)| *behavior);
            let host = match nat {
                Some(behavior) => {
                    let nat = net.add_nat_with(nat_public_ip(i), behavior);
                    net.add_host_behind_nat(&name, nat, [ips[i]])
                        // INVARIANT: the NAT was just added.
                        .expect("host behind a new NAT")
                }
                None => net.add_host(&name, [ips[i]]),
            };
            let config = NodeConfig {
                keypair,
                peers,
                server: ServerInfo {
                    addr: RELAY_ADDR,
                    public: relay.public,
                },
                presence: self.presence.clone(),
                limits: self.limits.clone(),
                blueprint: tether_connection_blueprint::Config::default(),
                unix_ms_at_start: SIM_UNIX_MS,
                interfaces: vec![ips[i]],
                durable: (!self.volatile.contains(&i)).then(|| DurableChannels {
                    store: Arc::new(Mutex::new(Box::new(RestoredChannels::default()))),
                    commit_on: CommitOn::Inline,
                }),
            };
            devices.push(SimDevice {
                name,
                host,
                ip: ips[i],
                moves: 0,
                network: 0,
                device: DeviceId(*config.keypair.public().as_bytes()),
                config,
                seed: self.seed.wrapping_mul(1000).wrapping_add(i as u64),
                restarts: 0,
                wildcard: self.wildcard.contains(&i),
                nat,
                node: None,
                reading_paused: false,
                log: Vec::new(),
            });
        }
        let mut cluster = SimCluster {
            net,
            relay,
            relay_config,
            rendezvous: self.rendezvous,
            relay_store,
            relay_restarts: 0,
            relay_host,
            devices,
            t0,
            seed: self.seed,
        };
        for &(a, b) in &self.blocked {
            cluster.block_direct(a, b);
        }
        for i in 0..self.devices {
            cluster.start_node(i).await;
        }
        cluster
    }
}

fn device_name(i: usize) -> String {
    if i < 26 {
        char::from(b'A' + i as u8).to_string()
    } else {
        format!("D{i}")
    }
}

/// Address of device `i` after `moves` network changes: 10.(1+moves).x.y.
fn device_ip(i: usize, moves: usize) -> IpAddr {
    let i = i as u32;
    IpAddr::V4(Ipv4Addr::new(
        10,
        1u8.wrapping_add(moves as u8),
        (i / 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

/// The public address of the NAT in front of device `i` on the network it started on
/// ([`ClusterBuilder::behind_nat`]): 198.51.x.y.
pub fn nat_public_ip(i: usize) -> IpAddr {
    nat_public_ip_on(i, 0)
}

/// The public address of the NAT in front of device `i` on its network number
/// `network` (0 is the one it started on): 198.(51 + network).x.y.
pub fn nat_public_ip_on(i: usize, network: usize) -> IpAddr {
    let i = i as u32;
    let network = u8::try_from(network).unwrap_or(u8::MAX).min(200);
    IpAddr::V4(Ipv4Addr::new(
        198,
        51 + network,
        (i / 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

/// An address device `i` is configured with when its config is stale: 10.200.x.y.
fn stale_ip(i: usize) -> IpAddr {
    let i = i as u32;
    IpAddr::V4(Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// One simulated device.
pub struct SimDevice {
    /// A, B, C…
    pub name: String,
    /// Its host on the simulated network.
    pub host: HostId,
    /// Its current IP.
    pub ip: IpAddr,
    /// Network changes so far.
    pub moves: usize,
    /// The number of the network it is on (0: the one it started on).
    pub network: usize,
    /// Its device id.
    pub device: DeviceId,
    /// The config it (re)starts with.
    pub config: NodeConfig,
    /// The seed of its node's RNGs on its first start.
    pub seed: u64,
    /// Restarts so far. Each run draws from its own seed, as a real process draws from
    /// the OS: a restarted process that repeated its predecessor's randomness would
    /// reuse Noise ephemeral keys and channel incarnations, which no real restart does.
    pub restarts: u64,
    /// Bound to the wildcard address (announcing its host's address) rather than to
    /// its address.
    pub wildcard: bool,
    /// The kind of NAT in front of it on every network, if it is behind one.
    pub nat: Option<NatBehavior>,
    /// The running node; None while crashed.
    pub node: Option<Node>,
    /// While set, this device's application reads no events (a slow application):
    /// they wait in the node, and its peers' credit does not come back.
    pub reading_paused: bool,
    /// Every event with its virtual time since the cluster started.
    pub log: Vec<(Duration, NodeEvent)>,
}

impl SimDevice {
    /// Payloads delivered from `peer`, in delivery order.
    pub fn delivered_from(&self, peer: DeviceId) -> Vec<Vec<u8>> {
        self.log
            .iter()
            .filter_map(|(_, event)| match event {
                NodeEvent::Delivered {
                    peer: from,
                    payload,
                    ..
                } if *from == peer => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A running simulated cluster. See the module docs.
pub struct SimCluster {
    /// The simulated network.
    pub net: SimNetwork,
    /// The relay and rendezvous server.
    pub relay: RelayServerHandle,
    /// The relay's host.
    pub relay_host: HostId,
    /// The relay's settings, for its restarts.
    relay_config: RelayServerConfig,
    rendezvous: RendezvousTableConfig,
    /// The relay's queue store: kept across [`SimCluster::restart_relay`], as a file on
    /// disk would be.
    pub relay_store: MemoryRelayQueueStore,
    relay_restarts: u64,
    /// The devices, by index.
    pub devices: Vec<SimDevice>,
    t0: tokio::time::Instant,
    seed: u64,
}

impl SimCluster {
    /// Virtual time since the cluster started.
    pub fn elapsed(&self) -> Duration {
        tokio::time::Instant::now() - self.t0
    }

    /// The device id of device `i`.
    pub fn id(&self, i: usize) -> DeviceId {
        self.devices[i].device
    }

    /// The node of device `i`. Panics if it is crashed (a test bug).
    pub fn node(&self, i: usize) -> &Node {
        // INVARIANT: tests only address running nodes; a crashed one is a test bug.
        self.devices[i].node.as_ref().expect("node is running")
    }

    async fn start_node(&mut self, i: usize) {
        let wall_ms = SIM_UNIX_MS
            .saturating_add(u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX));
        let device = &mut self.devices[i];
        // The wall clock goes on across a restart (handshake timestamps must grow).
        device.config.unix_ms_at_start = wall_ms;
        device.config.interfaces = vec![device.ip];
        let ip = if device.wildcard {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            device.ip
        };
        let addr = SocketAddr::new(ip, DEVICE_PORT);
        // A first start (no restart) keeps the seeds it always had.
        let transport = TransportConfig::seeded(
            self.seed
                .wrapping_add(i as u64 * 7919)
                .wrapping_add(device.restarts.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        let endpoint = Endpoint::bind_sim(&self.net, device.host, addr, transport)
            .await
            // INVARIANT: the host owns `ip` (set when it was added or moved).
            .expect("device endpoint");
        let seed = device
            .seed
            .wrapping_add(device.restarts.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let node = Node::start_simulated(device.config.clone(), endpoint, seed)
            // INVARIANT: a freshly bound sim endpoint has a local address.
            .expect("node");
        device.node = Some(node);
    }

    /// Moves every waiting node event into the devices' logs.
    pub fn collect_events(&mut self) {
        let at = self.elapsed();
        for device in &mut self.devices {
            if device.reading_paused {
                continue;
            }
            if let Some(node) = device.node.as_mut() {
                while let Some(event) = node.try_next_event() {
                    device.log.push((at, event));
                }
            }
        }
    }

    /// Advances virtual time by `duration`, collecting events on the way.
    pub async fn run_for(&mut self, duration: Duration) {
        let end = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < end {
            let step = POLL_STEP.min(end - tokio::time::Instant::now());
            tokio::time::sleep(step).await;
            self.collect_events();
        }
    }

    /// Advances virtual time until `condition` holds (true) or `timeout` passes (false).
    pub async fn run_until(
        &mut self,
        timeout: Duration,
        mut condition: impl FnMut(&SimCluster) -> bool,
    ) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            self.collect_events();
            if condition(self) {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(POLL_STEP).await;
        }
    }

    /// The last status Presence reported for `peer` on device `i`.
    pub fn status(&self, i: usize, peer: usize) -> Option<SessionStatus> {
        let peer = self.devices[peer].device;
        self.devices[i]
            .log
            .iter()
            .rev()
            .find_map(|(_, event)| match event {
                NodeEvent::Status { peer: p, to, .. } if *p == peer => Some(*to),
                _ => None,
            })
    }

    /// Whether both devices see each other Ready.
    pub fn both_ready(&self, a: usize, b: usize) -> bool {
        self.status(a, b) == Some(SessionStatus::Ready)
            && self.status(b, a) == Some(SessionStatus::Ready)
    }

    /// Device `i`'s status of its session with `peer`.
    pub async fn peer_status(&self, i: usize, peer: usize) -> Option<PeerStatus> {
        let peer = self.devices[peer].device;
        let node = self.devices[i].node.as_ref()?;
        node.status().await.into_iter().find(|s| s.peer == peer)
    }

    /// Device `i` changes networks: its host gets a new IP (the old one disappears) and
    /// its endpoint rebinds there, as an interface change would make it.
    pub async fn change_address(&mut self, i: usize) -> Result<SocketAddr, String> {
        let network = self.devices[i].moves + 1;
        self.change_address_to(i, network).await
    }

    /// Device `i` moves to network number `network` (0 is the one it started on), e.g.
    /// back to the WiFi it left.
    pub async fn change_address_to(
        &mut self,
        i: usize,
        network: usize,
    ) -> Result<SocketAddr, String> {
        let device = &mut self.devices[i];
        device.moves += 1;
        device.network = network;
        let old = device.ip;
        let new = device_ip(i, network);
        if let Some(behavior) = device.nat {
            // A new network, a new NAT in front of it (of the same kind).
            let nat = self
                .net
                .add_nat_with(nat_public_ip_on(i, network), behavior);
            self.net
                .set_nat(device.host, Some(nat))
                .map_err(|error| error.to_string())?;
        }
        self.net
            .set_address(device.host, old, new)
            .map_err(|error| error.to_string())?;
        device.ip = new;
        let node = device.node.as_ref().ok_or("node is crashed")?;
        if device.wildcard {
            // As `tether node` does: the wildcard address again, on a new port.
            let wildcard = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            return node.rebind_announcing(wildcard, vec![new]).await;
        }
        node.rebind(SocketAddr::new(new, DEVICE_PORT)).await
    }

    /// Blocks direct UDP between two devices (only the relay path works).
    pub fn block_direct(&self, a: usize, b: usize) {
        self.net
            .block_direct(self.devices[a].host, self.devices[b].host);
    }

    /// Lets direct UDP between two devices through again.
    pub fn unblock_direct(&self, a: usize, b: usize) {
        self.net
            .unblock_direct(self.devices[a].host, self.devices[b].host);
    }

    /// Cuts every packet between two devices.
    pub fn partition(&self, a: usize, b: usize) {
        self.net
            .partition(self.devices[a].host, self.devices[b].host);
    }

    /// Heals a partition.
    pub fn heal(&self, a: usize, b: usize) {
        self.net.heal(self.devices[a].host, self.devices[b].host);
    }

    /// Cuts a device off the relay server.
    pub fn partition_relay(&self, i: usize) {
        self.net.partition(self.devices[i].host, self.relay_host);
    }

    /// Reconnects a device to the relay server.
    pub fn heal_relay(&self, i: usize) {
        self.net.heal(self.devices[i].host, self.relay_host);
    }

    /// Crashes device `i`: every actor stops and its endpoint closes.
    pub fn crash(&mut self, i: usize) {
        self.collect_events();
        if let Some(node) = self.devices[i].node.take() {
            node.abort();
        }
        // The process is gone: so are its sockets, whatever QUIC was still draining.
        self.net.release_sockets(self.devices[i].host);
    }

    /// Stops device `i` on purpose, as SIGTERM does: its peers are told goodbye first.
    pub async fn close(&mut self, i: usize) {
        self.collect_events();
        if let Some(node) = self.devices[i].node.take() {
            node.stop().await;
        }
        self.net.release_sockets(self.devices[i].host);
    }

    /// Restarts a crashed or closed device with its config (empty session state, fresh
    /// randomness).
    pub async fn restart(&mut self, i: usize) {
        self.devices[i].restarts += 1;
        self.start_node(i).await;
    }

    /// Stops the relay server and starts a new one at the same address with the same
    /// key, which takes over the queue store (as `tether relay` restarted on its
    /// `data_dir` does): every connection to the old one is gone, its in-memory state
    /// too; the stored envelopes are pushed when their recipients reconnect. An error
    /// if the old relay's address did not come free within a second of virtual time.
    pub async fn restart_relay(&mut self) -> Result<(), String> {
        self.collect_events();
        self.relay.addr.do_send(Shutdown);
        self.relay_restarts += 1;
        // The old endpoint lets go of the address once its tasks have ended: a few
        // steps of virtual time.
        let mut attempts = 0;
        let endpoint = loop {
            tokio::time::sleep(POLL_STEP).await;
            let transport = TransportConfig::seeded((self.seed ^ 0xff) + self.relay_restarts);
            match Endpoint::bind_sim(&self.net, self.relay_host, RELAY_ADDR, transport).await {
                Ok(endpoint) => break endpoint,
                Err(error) if attempts >= 200 => {
                    return Err(format!("relay address still bound: {error}"))
                }
                Err(_) => attempts += 1,
            }
        };
        self.collect_events();
        let wall_ms = SIM_UNIX_MS
            .saturating_add(u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX));
        let mut config = self.relay_config.clone();
        // A new challenge seed: a restarted relay must not repeat its nonces.
        config.seed = [(self.seed as u8).wrapping_add(self.relay_restarts as u8); 32];
        config.unix_ms_at_start = wall_ms;
        self.relay = RelayServer::start_with_store(
            endpoint,
            config,
            self.rendezvous.clone(),
            Box::new(self.relay_store.clone()),
        )
        .map_err(|error| error.to_string())?;
        Ok(())
    }

    /// The phase timeline of the events of `devices` (one line per event, virtual ms,
    /// devices named A, B, …), for snapshots.
    pub fn timeline(&self, devices: &[usize], since: Duration) -> String {
        let names: BTreeMap<DeviceId, String> = self
            .devices
            .iter()
            .map(|d| (d.device, d.name.clone()))
            .collect();
        let name = |id: &DeviceId| names.get(id).cloned().unwrap_or_else(|| id.short());
        let logs = devices.iter().map(|&i| {
            let device = &self.devices[i];
            (device.name.as_str(), device.log.as_slice())
        });
        phase_timeline(logs, name, since)
    }
}
