//! The state of the simulated network and its packet decisions: routing (including
//! NAT), partitions, link conditions and the in-flight queue. Plain synchronous code;
//! the async scheduler in `mod.rs` only calls [`NetState::deliver_due`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use super::conditions::LinkConditions;
use super::log::{PacketLogEntry, Verdict};
use super::nat::{InboundDrop, Nat, NatBehavior};
use super::socket::RecvQueue;
use super::{HostCounters, HostId, NatId, SimError};

/// First port handed out for port-0 binds: the start of the IANA dynamic range.
const EPHEMERAL_FIRST: u16 = 49152;

/// Where a host's addresses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Realm {
    /// Publicly routable.
    Public,
    /// Behind a NAT: reachable from its realm directly, from outside only via mappings.
    Nat(NatId),
}

#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) addrs: Vec<IpAddr>,
    pub(crate) realm: Realm,
    next_port: u16,
}

#[derive(Debug)]
struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    host: HostId,
    /// The NAT whose public address `to` is: it decides on arrival, with its mappings
    /// and filters as they are then, which internal socket (if any) gets the packet.
    through: Option<NatId>,
    data: Bytes,
}

/// Where the network sends a packet: the host, the address there (internal, or a NAT's
/// public one to resolve on arrival), and the source address as the destination sees it.
struct Route {
    host: HostId,
    to: SocketAddr,
    through: Option<NatId>,
    wire_src: SocketAddr,
}

/// A host pair in canonical order (conditions, partitions and blocks are symmetric).
pub(crate) fn pair(a: HostId, b: HostId) -> (HostId, HostId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Everything the simulated network knows, behind one mutex.
#[derive(Debug)]
pub(crate) struct NetState {
    rng: ChaCha8Rng,
    epoch: Instant,
    pub(crate) hosts: BTreeMap<HostId, Host>,
    pub(crate) nats: BTreeMap<NatId, Nat>,
    pub(crate) default_conditions: LinkConditions,
    pub(crate) pair_conditions: BTreeMap<(HostId, HostId), LinkConditions>,
    pub(crate) partitions: BTreeSet<(HostId, HostId)>,
    pub(crate) blocked: BTreeSet<(HostId, HostId)>,
    sockets: BTreeMap<(HostId, SocketAddr), Arc<RecvQueue>>,
    /// When each directed host pair's bottleneck is free again.
    busy_until: BTreeMap<(HostId, HostId), Instant>,
    in_flight: BTreeMap<(Instant, u64), InFlight>,
    seq: u64,
    pub(crate) log: Option<Vec<PacketLogEntry>>,
    pub(crate) counters: BTreeMap<HostId, HostCounters>,
    pub(crate) scheduler_started: bool,
}

impl NetState {
    pub(crate) fn new(rng: ChaCha8Rng, epoch: Instant) -> Self {
        Self {
            rng,
            epoch,
            hosts: BTreeMap::new(),
            nats: BTreeMap::new(),
            default_conditions: LinkConditions::default(),
            pair_conditions: BTreeMap::new(),
            partitions: BTreeSet::new(),
            blocked: BTreeSet::new(),
            sockets: BTreeMap::new(),
            busy_until: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            log: None,
            counters: BTreeMap::new(),
            scheduler_started: false,
        }
    }

    pub(crate) fn add_host(&mut self, name: &str, addrs: Vec<IpAddr>, realm: Realm) -> HostId {
        let id = HostId(u32::try_from(self.hosts.len()).unwrap_or(u32::MAX));
        self.hosts.insert(
            id,
            Host {
                name: name.to_owned(),
                addrs,
                realm,
                next_port: EPHEMERAL_FIRST,
            },
        );
        self.counters.insert(id, HostCounters::default());
        id
    }

    pub(crate) fn add_nat(
        &mut self,
        public_ip: IpAddr,
        behavior: NatBehavior,
        now: Instant,
    ) -> NatId {
        let id = NatId(u32::try_from(self.nats.len()).unwrap_or(u32::MAX));
        self.nats.insert(id, Nat::new(public_ip, behavior, now));
        id
    }

    pub(crate) fn host(&self, id: HostId) -> Result<&Host, SimError> {
        self.hosts.get(&id).ok_or(SimError::UnknownHost(id))
    }

    fn host_mut(&mut self, id: HostId) -> Result<&mut Host, SimError> {
        self.hosts.get_mut(&id).ok_or(SimError::UnknownHost(id))
    }

    /// Binds `(host, addr)`; port 0 picks a free ephemeral port.
    pub(crate) fn bind(
        &mut self,
        host: HostId,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, Arc<RecvQueue>), SimError> {
        let h = self.host(host)?;
        if !addr.ip().is_unspecified() && !h.addrs.contains(&addr.ip()) {
            return Err(SimError::AddressNotOnHost(addr.ip()));
        }
        let port = if addr.port() == 0 {
            self.free_port(host, addr.ip())?
        } else if self.port_in_use(host, addr.ip(), addr.port()) {
            return Err(SimError::AddrInUse(addr));
        } else {
            addr.port()
        };
        let local = SocketAddr::new(addr.ip(), port);
        let queue = Arc::new(RecvQueue::default());
        self.sockets.insert((host, local), queue.clone());
        Ok((local, queue))
    }

    fn port_in_use(&self, host: HostId, ip: IpAddr, port: u16) -> bool {
        self.sockets.keys().any(|(h, a)| {
            *h == host
                && a.port() == port
                && (a.ip() == ip || a.ip().is_unspecified() || ip.is_unspecified())
        })
    }

    fn free_port(&mut self, host: HostId, ip: IpAddr) -> Result<u16, SimError> {
        for _ in EPHEMERAL_FIRST..=u16::MAX {
            let h = self.host_mut(host)?;
            let port = h.next_port;
            h.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            if !self.port_in_use(host, ip, port) {
                return Ok(port);
            }
        }
        Err(SimError::NoFreePort)
    }

    pub(crate) fn unbind(&mut self, host: HostId, local: SocketAddr, queue: &Arc<RecvQueue>) {
        if let Some(q) = self.sockets.get(&(host, local)) {
            if Arc::ptr_eq(q, queue) {
                self.sockets.remove(&(host, local));
            }
        }
    }

    /// Adds an address to a host.
    pub(crate) fn add_address(&mut self, host: HostId, ip: IpAddr) -> Result<(), SimError> {
        let h = self.host_mut(host)?;
        if !h.addrs.contains(&ip) {
            h.addrs.push(ip);
        }
        Ok(())
    }

    /// Every socket of `host` dies and its port is free again.
    pub(crate) fn release_sockets(&mut self, host: HostId) {
        let held: Vec<_> = self
            .sockets
            .keys()
            .filter(|(h, _)| *h == host)
            .copied()
            .collect();
        for key in held {
            if let Some(q) = self.sockets.remove(&key) {
                q.kill();
            }
        }
    }

    /// Removes an address: sockets bound to it die, NAT mappings for it are forgotten.
    pub(crate) fn remove_address(&mut self, host: HostId, ip: IpAddr) -> Result<(), SimError> {
        let h = self.host_mut(host)?;
        let before = h.addrs.len();
        h.addrs.retain(|a| *a != ip);
        if h.addrs.len() == before {
            return Err(SimError::AddressNotOnHost(ip));
        }
        let dead: Vec<_> = self
            .sockets
            .keys()
            .filter(|(h, a)| *h == host && a.ip() == ip)
            .copied()
            .collect();
        for key in dead {
            if let Some(q) = self.sockets.remove(&key) {
                q.kill();
            }
        }
        for nat in self.nats.values_mut() {
            nat.forget(|h, a| h == host && a.ip() == ip);
        }
        Ok(())
    }

    /// Moves a host into another realm (behind a NAT or onto the public network);
    /// mappings its old NAT held for it are forgotten.
    pub(crate) fn set_realm(&mut self, host: HostId, realm: Realm) -> Result<(), SimError> {
        if let Realm::Nat(n) = realm {
            if !self.nats.contains_key(&n) {
                return Err(SimError::UnknownNat(n));
            }
        }
        let h = self.host_mut(host)?;
        let old = h.realm;
        h.realm = realm;
        if let Realm::Nat(n) = old {
            if let Some(nat) = self.nats.get_mut(&n) {
                nat.forget(|h, _| h == host);
            }
        }
        Ok(())
    }

    fn host_in_realm(&self, realm: Realm, ip: IpAddr) -> Option<HostId> {
        self.hosts
            .iter()
            .find(|(_, h)| h.realm == realm && h.addrs.contains(&ip))
            .map(|(id, _)| *id)
    }

    /// Finds where a packet from `src` on host `from` to `dst` goes; the NAT in front of
    /// the sender (if any) maps it on the way out.
    fn route(
        &mut self,
        now: Instant,
        from: HostId,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<Route, (SocketAddr, Verdict)> {
        let realm = self.hosts.get(&from).map_or(Realm::Public, |h| h.realm);
        if let Some(host) = self.host_in_realm(realm, dst.ip()) {
            return Ok(Route {
                host,
                to: dst,
                through: None,
                wire_src: src,
            });
        }
        let wire_src = match realm {
            Realm::Public => src,
            Realm::Nat(n) => match self.nats.get_mut(&n) {
                Some(nat) => nat.map_outbound(now, from, src, dst),
                None => return Err((src, Verdict::NoRoute)),
            },
        };
        if let Some(host) = self.host_in_realm(Realm::Public, dst.ip()) {
            return Ok(Route {
                host,
                to: dst,
                through: None,
                wire_src,
            });
        }
        let Some((&id, nat)) = self.nats.iter().find(|(_, n)| n.public_ip == dst.ip()) else {
            return Err((wire_src, Verdict::NoRoute));
        };
        if realm == Realm::Nat(id) && !nat.behavior.hairpinning {
            return Err((wire_src, Verdict::NoRoute));
        }
        // The host behind the port now sets the link conditions; whether the NAT lets
        // the packet in is decided when it arrives.
        match nat.host_behind(dst.port()) {
            Some(host) => Ok(Route {
                host,
                to: dst,
                through: Some(id),
                wire_src,
            }),
            None => Err((wire_src, Verdict::NoRoute)),
        }
    }

    fn conditions(&self, a: HostId, b: HostId) -> LinkConditions {
        self.pair_conditions
            .get(&pair(a, b))
            .unwrap_or(&self.default_conditions)
            .sanitized()
    }

    fn record(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, len: usize, v: Verdict) {
        if let Some(log) = &mut self.log {
            log.push(PacketLogEntry {
                at: now.saturating_duration_since(self.epoch),
                from,
                to,
                len,
                verdict: v,
            });
        }
    }

    fn since_epoch(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.epoch)
    }

    fn schedule(&mut self, at: Instant, pkt: InFlight) {
        self.seq += 1;
        self.in_flight.insert((at, self.seq), pkt);
    }

    /// Decides the fate of one datagram sent from `local` on `from`. Returns whether it
    /// became the earliest packet in flight (so the scheduler must wake up earlier).
    pub(crate) fn send(
        &mut self,
        now: Instant,
        from: HostId,
        local: SocketAddr,
        src_hint: Option<IpAddr>,
        dst: SocketAddr,
        data: &[u8],
    ) -> bool {
        let len = data.len();
        if let Some(c) = self.counters.get_mut(&from) {
            c.packets_sent += 1;
            c.bytes_sent += crate::stats::len64(len);
        }
        let verdict = self.decide(now, from, local, src_hint, dst, data);
        if !verdict.1.is_delivered() {
            if let Some(c) = self.counters.get_mut(&from) {
                c.packets_dropped += 1;
            }
        }
        self.record(now, verdict.0, dst, len, verdict.1);
        verdict.2
    }

    fn decide(
        &mut self,
        now: Instant,
        from: HostId,
        local: SocketAddr,
        src_hint: Option<IpAddr>,
        dst: SocketAddr,
        data: &[u8],
    ) -> (SocketAddr, Verdict, bool) {
        let Some(host) = self.hosts.get(&from) else {
            return (local, Verdict::SourceGone, false);
        };
        let same_family = |a: &IpAddr| a.is_ipv4() == dst.is_ipv4();
        let src_ip = if local.ip().is_unspecified() {
            src_hint
                .filter(|hint| same_family(hint) && host.addrs.contains(hint))
                .or_else(|| host.addrs.iter().copied().find(same_family))
        } else {
            host.addrs.contains(&local.ip()).then(|| local.ip())
        };
        let Some(src_ip) = src_ip else {
            return (local, Verdict::SourceGone, false);
        };
        let src = SocketAddr::new(src_ip, local.port());
        let Route {
            host: to_host,
            to,
            through,
            wire_src,
        } = match self.route(now, from, src, dst) {
            Ok(r) => r,
            Err((wire_src, v)) => return (wire_src, v, false),
        };
        let earliest_before = self.in_flight.keys().next().map(|k| k.0);
        let packet = |data: &[u8]| InFlight {
            from: wire_src,
            to,
            host: to_host,
            through,
            data: Bytes::copy_from_slice(data),
        };
        if to_host == from {
            self.schedule(now, packet(data));
            return (
                wire_src,
                Verdict::Delivered {
                    at: self.since_epoch(now),
                },
                true,
            );
        }
        let p = pair(from, to_host);
        if self.partitions.contains(&p) {
            return (wire_src, Verdict::Partitioned, false);
        }
        if self.blocked.contains(&p) {
            return (wire_src, Verdict::Blocked, false);
        }
        let cond = self.conditions(from, to_host);
        if data.len() > cond.max_payload(dst.is_ipv6()) {
            return (wire_src, Verdict::TooBig, false);
        }
        // Draw every random number in a fixed order, whatever the outcome, so that one
        // setting changing does not shift the random stream of every later packet.
        let lost = self.rng.gen_bool(cond.loss);
        let jitter = self.jitter(&cond);
        let reordered = self.rng.gen_bool(cond.reorder);
        let duplicated = self.rng.gen_bool(cond.duplicate);
        let dup_jitter = self.jitter(&cond);
        if lost {
            return (wire_src, Verdict::Lost, false);
        }
        let busy = self
            .busy_until
            .get(&(from, to_host))
            .copied()
            .unwrap_or(now);
        let departure = busy.max(now) + cond.transmit_time(data.len());
        if departure.saturating_duration_since(now) > cond.max_queue_delay {
            return (wire_src, Verdict::QueueFull, false);
        }
        self.busy_until.insert((from, to_host), departure);
        let mut at = departure + cond.latency + jitter;
        if reordered {
            at += cond.reorder_delay;
        }
        self.schedule(at, packet(data));
        let verdict = if duplicated {
            let dup_at = departure + cond.latency + dup_jitter;
            self.schedule(dup_at, packet(data));
            if let Some(c) = self.counters.get_mut(&from) {
                c.packets_duplicated += 1;
            }
            Verdict::Duplicated {
                at: self.since_epoch(at),
                dup_at: self.since_epoch(dup_at),
            }
        } else if reordered {
            Verdict::Reordered {
                at: self.since_epoch(at),
            }
        } else {
            Verdict::Delivered {
                at: self.since_epoch(at),
            }
        };
        let earliest_after = self.in_flight.keys().next().map(|k| k.0);
        (wire_src, verdict, earliest_after != earliest_before)
    }

    fn jitter(&mut self, cond: &LinkConditions) -> Duration {
        let max = u64::try_from(cond.jitter.as_nanos()).unwrap_or(u64::MAX);
        let nanos = self.rng.gen_range(0..=max);
        Duration::from_nanos(nanos)
    }

    /// Hands every packet due by `now` to its socket.
    pub(crate) fn deliver_due(&mut self, now: Instant) {
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let pkt = entry.remove();
            self.deliver(now, pkt);
        }
    }

    fn deliver(&mut self, now: Instant, pkt: InFlight) {
        let InFlight {
            from,
            to,
            host,
            through,
            data,
        } = pkt;
        let len = data.len();
        let (host, to) = match through.and_then(|id| self.nats.get_mut(&id)) {
            None => (host, to),
            Some(nat) => match nat.inbound(now, to.port(), from) {
                Ok(inside) => inside,
                Err(drop) => {
                    let verdict = match drop {
                        InboundDrop::NoMapping => Verdict::NoRoute,
                        InboundDrop::Filtered => Verdict::NatFiltered,
                    };
                    if let Some(c) = self.counters.get_mut(&host) {
                        c.packets_dropped_on_arrival += 1;
                    }
                    self.record(now, from, to, len, verdict);
                    return;
                }
            },
        };
        let owns = self
            .hosts
            .get(&host)
            .is_some_and(|h| h.addrs.contains(&to.ip()));
        let queue = self
            .sockets
            .get(&(host, to))
            .or_else(|| {
                self.sockets
                    .get(&(host, SocketAddr::new(unspecified_like(to.ip()), to.port())))
            })
            .filter(|_| owns)
            .cloned();
        let verdict = match queue {
            None => Verdict::NoSocket,
            Some(q) if !q.push(from, to.ip(), data) => Verdict::ReceiveBufferFull,
            Some(_) => {
                if let Some(c) = self.counters.get_mut(&host) {
                    c.packets_received += 1;
                    c.bytes_received += crate::stats::len64(len);
                }
                return;
            }
        };
        if let Some(c) = self.counters.get_mut(&host) {
            c.packets_dropped_on_arrival += 1;
        }
        self.record(now, from, to, len, verdict);
    }

    /// When the next packet is due, if any is in flight.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.keys().next().map(|k| k.0)
    }
}
