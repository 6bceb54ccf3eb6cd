//! A simulated UDP network, in process, so that real quinn (and real Noise above it)
//! runs over latency, loss, reordering, partitions, address changes and NATs in tests.
//!
//! - [`SimNetwork`] is a cloneable handle; it owns hosts ([`HostId`]) with one or more
//!   addresses, optional NATs ([`SimNetwork::add_nat_with`], of any [`NatBehavior`]),
//!   and per host-pair [`LinkConditions`].
//! - [`SimNetwork::bind`] gives a [`SimSocket`], which implements quinn's
//!   `AsyncUdpSocket`; [`Endpoint::bind_sim`](crate::Endpoint::bind_sim) uses it.
//! - Every timestamp comes from tokio's clock, so under paused time (`start_paused`)
//!   ten seconds of virtual time cost milliseconds. Create the network inside the
//!   runtime that will drive it.
//! - Randomness (loss, jitter, duplication, reordering) comes from one ChaCha RNG seeded
//!   at creation, and every map is ordered: with a current-thread runtime the same seed
//!   and the same test give the same [`packet_log`](SimNetwork::packet_log).
//!
//! Semantics worth knowing:
//! - Removing an address ([`SimNetwork::set_address`], [`SimNetwork::remove_address`])
//!   is an interface loss: sockets bound to it are dead for good (they receive nothing;
//!   what they send vanishes), packets in flight to it are dropped on arrival.
//!   Sockets bound to the unspecified address survive and send from the host's first
//!   address of the right family.
//! - A NAT maps an internal (address, port) to a public port on the first outbound
//!   packet, one port for every destination or one per destination
//!   ([`NatMapping`]), and lets through the remotes its [`NatFiltering`] admits;
//!   unsolicited packets to an unmapped port are dropped. Whether an inbound packet
//!   passes is decided when it arrives, with the mappings as they are then (so two
//!   devices punching holes at about the same moment behave as on a real network).
//!   Mappings may time out when idle and be rebound every period ([`NatBehavior`]).
//!   Hosts behind the same NAT reach each other directly on their internal addresses,
//!   and at the NAT's public address only if it hairpins.
//! - [`SimNetwork::partition`] (an outage) and [`SimNetwork::block_direct`] (a firewall
//!   that leaves only a relay path) both drop traffic between two hosts, whatever
//!   addresses or NATs are involved; they log different verdicts.

mod conditions;
mod log;
mod nat;
mod net;
mod socket;

use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::sync::lock;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use conditions::{LinkConditions, MIN_MTU};
pub use log::{PacketLogEntry, Verdict};
pub use nat::{NatBehavior, NatFiltering, NatMapping};
use net::{pair, NetState, Realm};
pub use socket::SimSocket;

/// A host on the simulated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(u32);

/// A NAT on the simulated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatId(u32);

/// Per-host packet counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Datagrams the host sent (whatever became of them).
    pub packets_sent: u64,
    /// Bytes in those datagrams.
    pub bytes_sent: u64,
    /// Datagrams the host sent that the network dropped (loss, partition, MTU, ...).
    pub packets_dropped: u64,
    /// Datagrams the host sent that were duplicated.
    pub packets_duplicated: u64,
    /// Datagrams handed to one of the host's sockets.
    pub packets_received: u64,
    /// Bytes in those datagrams.
    pub bytes_received: u64,
    /// Datagrams that reached the host but found no socket or a full buffer.
    pub packets_dropped_on_arrival: u64,
}

/// Misuse of the simulated network (never caused by packets).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SimError {
    /// No such host.
    #[error("unknown host {0:?}")]
    UnknownHost(HostId),
    /// No such NAT.
    #[error("unknown NAT {0:?}")]
    UnknownNat(NatId),
    /// The host does not own this address.
    #[error("address {0} is not on this host")]
    AddressNotOnHost(IpAddr),
    /// Something is already bound there.
    #[error("address {0} is already in use")]
    AddrInUse(SocketAddr),
    /// Every ephemeral port of the host is taken.
    #[error("no free ephemeral port")]
    NoFreePort,
}

impl From<SimError> for std::io::Error {
    fn from(e: SimError) -> Self {
        let kind = match e {
            SimError::AddrInUse(_) => std::io::ErrorKind::AddrInUse,
            SimError::AddressNotOnHost(_) => std::io::ErrorKind::AddrNotAvailable,
            _ => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e)
    }
}

struct Shared {
    state: Mutex<NetState>,
    wake: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the scheduler task notice the network is gone and exit.
        self.wake.notify_one();
    }
}

/// Handle to a simulated network; clones share it.
#[derive(Clone)]
pub struct SimNetwork {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNetwork").finish_non_exhaustive()
    }
}

impl SimNetwork {
    /// A new, empty network whose randomness comes from `seed`. Its clock starts now
    /// (tokio's clock: call this inside the runtime that drives the test).
    pub fn new(seed: u64) -> Self {
        let state = NetState::new(ChaCha8Rng::seed_from_u64(seed), Instant::now());
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                wake: Arc::new(Notify::new()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, NetState> {
        lock(&self.shared.state)
    }

    /// Adds a publicly routable host with the given addresses.
    pub fn add_host(&self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> HostId {
        self.state()
            .add_host(name, addrs.into_iter().collect(), Realm::Public)
    }

    /// Adds a full-cone NAT (endpoint-independent mapping and filtering) with a public
    /// address.
    pub fn add_nat(&self, public_ip: IpAddr) -> NatId {
        self.add_nat_with(public_ip, NatBehavior::full_cone())
    }

    /// Adds a NAT that behaves as `behavior` says, with a public address. Its rebinding
    /// periods count from now.
    pub fn add_nat_with(&self, public_ip: IpAddr, behavior: NatBehavior) -> NatId {
        self.state().add_nat(public_ip, behavior, Instant::now())
    }

    /// Adds a host behind `nat` with internal addresses.
    pub fn add_host_behind_nat(
        &self,
        name: &str,
        nat: NatId,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) -> Result<HostId, SimError> {
        let mut st = self.state();
        if !st.nats.contains_key(&nat) {
            return Err(SimError::UnknownNat(nat));
        }
        Ok(st.add_host(name, addrs.into_iter().collect(), Realm::Nat(nat)))
    }

    /// The host's name, as given when it was added.
    pub fn host_name(&self, host: HostId) -> Result<String, SimError> {
        Ok(self.state().host(host)?.name.clone())
    }

    /// The host's current addresses.
    pub fn addresses(&self, host: HostId) -> Result<Vec<IpAddr>, SimError> {
        Ok(self.state().host(host)?.addrs.clone())
    }

    /// Replaces one of the host's addresses (WiFi to mobile): sockets on `old` die.
    pub fn set_address(&self, host: HostId, old: IpAddr, new: IpAddr) -> Result<(), SimError> {
        let mut st = self.state();
        st.remove_address(host, old)?;
        st.add_address(host, new)
    }

    /// Gives the host one more address.
    pub fn add_address(&self, host: HostId, ip: IpAddr) -> Result<(), SimError> {
        self.state().add_address(host, ip)
    }

    /// Takes an address away from the host: sockets on it die.
    pub fn remove_address(&self, host: HostId, ip: IpAddr) -> Result<(), SimError> {
        self.state().remove_address(host, ip)
    }

    /// Moves the host behind `nat`, or onto the public network with `None` (a new
    /// network, a new NAT). Its addresses stay; change them with
    /// [`set_address`](Self::set_address).
    pub fn set_nat(&self, host: HostId, nat: Option<NatId>) -> Result<(), SimError> {
        self.state()
            .set_realm(host, nat.map_or(Realm::Public, Realm::Nat))
    }

    /// Conditions for every host pair without an override.
    pub fn set_default_conditions(&self, conditions: LinkConditions) {
        self.state().default_conditions = conditions;
    }

    /// Conditions between `a` and `b` (both directions).
    pub fn set_conditions(&self, a: HostId, b: HostId, conditions: LinkConditions) {
        self.state().pair_conditions.insert(pair(a, b), conditions);
    }

    /// Cuts all traffic between `a` and `b` until [`heal`](Self::heal).
    pub fn partition(&self, a: HostId, b: HostId) {
        self.state().partitions.insert(pair(a, b));
    }

    /// Restores traffic between `a` and `b`.
    pub fn heal(&self, a: HostId, b: HostId) {
        self.state().partitions.remove(&pair(a, b));
    }

    /// Restores traffic between every partitioned pair.
    pub fn heal_all(&self) {
        self.state().partitions.clear();
    }

    /// Blocks direct UDP between `a` and `b` (a firewall): only a path through a third
    /// host (the relay) still works.
    pub fn block_direct(&self, a: HostId, b: HostId) {
        self.state().blocked.insert(pair(a, b));
    }

    /// Lifts [`block_direct`](Self::block_direct).
    pub fn unblock_direct(&self, a: HostId, b: HostId) {
        self.state().blocked.remove(&pair(a, b));
    }

    /// Binds a UDP socket on `host` at `addr` (port 0 picks an ephemeral port; the
    /// unspecified address binds all of the host's addresses).
    pub fn bind(&self, host: HostId, addr: SocketAddr) -> Result<SimSocket, SimError> {
        let (local, queue) = self.state().bind(host, addr)?;
        Ok(SimSocket {
            net: self.clone(),
            host,
            local,
            queue,
        })
    }

    /// The process that held `host`'s sockets ended (it crashed or exited): every one of
    /// them dies at once (it neither sends nor receives again) and its port is free, as
    /// the kernel frees a dead process's sockets, whatever QUIC was still draining.
    pub fn release_sockets(&self, host: HostId) {
        self.state().release_sockets(host);
    }

    /// Packet counters of a host.
    pub fn counters(&self, host: HostId) -> Result<HostCounters, SimError> {
        self.state()
            .counters
            .get(&host)
            .copied()
            .ok_or(SimError::UnknownHost(host))
    }

    /// Starts recording every packet decision (off by default: long tests would grow it
    /// without bound).
    pub fn enable_packet_log(&self) {
        let mut st = self.state();
        if st.log.is_none() {
            st.log = Some(Vec::new());
        }
    }

    /// The packet log so far (empty unless enabled).
    pub fn packet_log(&self) -> Vec<PacketLogEntry> {
        self.state().log.clone().unwrap_or_default()
    }

    /// The packet log as text, one entry per line.
    pub fn packet_log_text(&self) -> String {
        self.packet_log().iter().map(|e| format!("{e}\n")).collect()
    }

    /// Sends one datagram from `local` on `host`. `src_hint` is the source address
    /// quinn asks for on a socket bound to the unspecified address (the address the
    /// peer's packets arrived on).
    pub(crate) fn send(
        &self,
        host: HostId,
        local: SocketAddr,
        src_hint: Option<IpAddr>,
        to: SocketAddr,
        data: &[u8],
    ) {
        let (earlier, start) = {
            let mut st = self.state();
            let earlier = st.send(Instant::now(), host, local, src_hint, to, data);
            let start = !st.scheduler_started
                && st.next_deadline().is_some()
                && tokio::runtime::Handle::try_current().is_ok();
            if start {
                st.scheduler_started = true;
            }
            (earlier, start)
        };
        if start {
            tokio::spawn(run_scheduler(
                Arc::downgrade(&self.shared),
                self.shared.wake.clone(),
            ));
        } else if earlier {
            self.shared.wake.notify_one();
        }
    }

    pub(crate) fn unbind(&self, host: HostId, local: SocketAddr, queue: &Arc<socket::RecvQueue>) {
        self.state().unbind(host, local, queue);
    }
}

/// Delivers packets when they are due: one task per network, sleeping on tokio's clock
/// until the earliest packet in flight, woken early when an earlier one is sent.
async fn run_scheduler(network: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(shared) = network.upgrade() else {
                return;
            };
            let mut st = lock(&shared.state);
            st.deliver_due(Instant::now());
            st.next_deadline()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
