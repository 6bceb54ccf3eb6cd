//! NATs for the simulated network, with the behaviours of RFC 4787 that decide whether
//! two devices behind them can reach each other directly: how a public port is chosen
//! (mapping), which remotes may send through it (filtering), how long an idle mapping
//! lives, whether the NAT rebinds its mappings now and then, and hairpinning.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::HostId;

/// First public port a NAT hands out; any fixed value works, this one is easy to spot
/// in logs.
const NAT_FIRST_PORT: u16 = 20000;

/// Most remotes one mapping remembers for its filter. Above it the oldest is forgotten
/// (a real NAT keeps one conntrack entry per remote; tests never come near this).
const MAX_PERMITTED_PER_MAPPING: usize = 256;

/// How a NAT chooses the public port of an outbound flow (RFC 4787 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatMapping {
    /// One public port per internal address and port, whatever the destination: what
    /// the relay sees is what every peer sees ("cone" NATs; Linux masquerade while the
    /// port is free).
    EndpointIndependent,
    /// A new public port per destination address and port ("symmetric" NATs, a
    /// port-randomising masquerade): the address the relay sees is useless to a peer.
    AddressAndPortDependent,
}

/// Which inbound packets a NAT lets through a mapping (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatFiltering {
    /// Any remote ("full cone").
    EndpointIndependent,
    /// Remotes at an address the mapping has sent to ("restricted cone").
    AddressDependent,
    /// Remotes at an address and port the mapping has sent to ("port-restricted cone";
    /// Linux conntrack).
    AddressAndPortDependent,
}

/// What a simulated NAT does. The presets name the classic kinds; the `with_` methods
/// add a mapping timeout, rebinding or hairpinning to any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatBehavior {
    /// How public ports are chosen.
    pub mapping: NatMapping,
    /// Which remotes may send through a mapping.
    pub filtering: NatFiltering,
    /// A mapping no packet crossed (either way) for this long is gone; `None`: never.
    pub mapping_timeout: Option<Duration>,
    /// Every this often the NAT drops all its mappings, so the next packet of each flow
    /// leaves from a new public port (NAT rebinding); `None`: never.
    pub rebind_every: Option<Duration>,
    /// Whether a host behind the NAT reaches another host behind it at the NAT's public
    /// address (most home NATs do not).
    pub hairpinning: bool,
}

impl NatBehavior {
    /// Endpoint-independent mapping and filtering.
    pub const fn full_cone() -> Self {
        Self::of(
            NatMapping::EndpointIndependent,
            NatFiltering::EndpointIndependent,
        )
    }

    /// Endpoint-independent mapping, address-dependent filtering.
    pub const fn restricted_cone() -> Self {
        Self::of(
            NatMapping::EndpointIndependent,
            NatFiltering::AddressDependent,
        )
    }

    /// Endpoint-independent mapping, address-and-port-dependent filtering (what Linux
    /// masquerade does while it can keep the port).
    pub const fn port_restricted_cone() -> Self {
        Self::of(
            NatMapping::EndpointIndependent,
            NatFiltering::AddressAndPortDependent,
        )
    }

    /// Address-and-port-dependent mapping and filtering.
    pub const fn symmetric() -> Self {
        Self::of(
            NatMapping::AddressAndPortDependent,
            NatFiltering::AddressAndPortDependent,
        )
    }

    /// A NAT with this mapping and filtering, no timeout, no rebinding, no hairpinning.
    pub const fn of(mapping: NatMapping, filtering: NatFiltering) -> Self {
        Self {
            mapping,
            filtering,
            mapping_timeout: None,
            rebind_every: None,
            hairpinning: false,
        }
    }

    /// The same NAT, forgetting mappings idle for `timeout`.
    pub const fn with_mapping_timeout(mut self, timeout: Duration) -> Self {
        self.mapping_timeout = Some(timeout);
        self
    }

    /// The same NAT, rebinding every mapping every `period`.
    pub const fn with_rebinding(mut self, period: Duration) -> Self {
        self.rebind_every = Some(period);
        self
    }

    /// The same NAT, hairpinning.
    pub const fn with_hairpinning(mut self) -> Self {
        self.hairpinning = true;
        self
    }
}

impl Default for NatBehavior {
    fn default() -> Self {
        Self::full_cone()
    }
}

/// One internal flow's public port: for which internal socket (and, with dependent
/// mapping, which destination) it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct MappingKey {
    host: HostId,
    internal: SocketAddr,
    destination: Option<SocketAddr>,
}

#[derive(Debug)]
struct Mapping {
    key: MappingKey,
    last_used: Instant,
    /// The rebinding period this mapping was made in.
    generation: u64,
    /// Remotes this mapping sent to, oldest first (the filter's state).
    permitted: Vec<SocketAddr>,
}

/// Why a NAT dropped an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboundDrop {
    /// No mapping holds this public port (never made, timed out or rebound).
    NoMapping,
    /// A mapping holds the port, but its filter does not admit this remote.
    Filtered,
}

/// A NAT in front of one or more hosts.
#[derive(Debug)]
pub(crate) struct Nat {
    pub(crate) public_ip: IpAddr,
    pub(crate) behavior: NatBehavior,
    created: Instant,
    next_port: u16,
    by_key: BTreeMap<MappingKey, u16>,
    by_port: BTreeMap<u16, Mapping>,
}

impl Nat {
    pub(crate) fn new(public_ip: IpAddr, behavior: NatBehavior, now: Instant) -> Self {
        Self {
            public_ip,
            behavior,
            created: now,
            next_port: NAT_FIRST_PORT,
            by_key: BTreeMap::new(),
            by_port: BTreeMap::new(),
        }
    }

    fn generation(&self, now: Instant) -> u64 {
        match self.behavior.rebind_every {
            Some(period) if !period.is_zero() => {
                let age = now.saturating_duration_since(self.created).as_nanos();
                u64::try_from(age / period.as_nanos()).unwrap_or(u64::MAX)
            }
            _ => 0,
        }
    }

    /// Whether the mapping on `port` is still alive at `now`; a dead one is removed.
    fn alive(&mut self, port: u16, now: Instant) -> bool {
        let generation = self.generation(now);
        let timeout = self.behavior.mapping_timeout;
        let Some(mapping) = self.by_port.get(&port) else {
            return false;
        };
        let idle = now.saturating_duration_since(mapping.last_used);
        if mapping.generation == generation && timeout.is_none_or(|t| idle < t) {
            return true;
        }
        let key = mapping.key;
        self.by_port.remove(&port);
        self.by_key.remove(&key);
        false
    }

    /// The public address a packet from `internal` on `host` to `destination` leaves
    /// from; makes or refreshes the mapping and lets `destination` answer through it.
    pub(crate) fn map_outbound(
        &mut self,
        now: Instant,
        host: HostId,
        internal: SocketAddr,
        destination: SocketAddr,
    ) -> SocketAddr {
        let key = MappingKey {
            host,
            internal,
            destination: match self.behavior.mapping {
                NatMapping::EndpointIndependent => None,
                NatMapping::AddressAndPortDependent => Some(destination),
            },
        };
        let port = match self.by_key.get(&key).copied() {
            Some(port) if self.alive(port, now) => port,
            _ => self.allocate(now, key),
        };
        if let Some(mapping) = self.by_port.get_mut(&port) {
            mapping.last_used = now;
            if !mapping.permitted.contains(&destination) {
                if mapping.permitted.len() >= MAX_PERMITTED_PER_MAPPING {
                    mapping.permitted.remove(0);
                }
                mapping.permitted.push(destination);
            }
        }
        SocketAddr::new(self.public_ip, port)
    }

    fn allocate(&mut self, now: Instant, key: MappingKey) -> u16 {
        // Ports are never reused within a run while free ones remain, so a stale mapping
        // can never be confused with a new one (wrap-around needs 45 000 mappings).
        let mut port = self.next_port;
        for _ in 0..=u16::MAX {
            if !self.by_port.contains_key(&port) {
                break;
            }
            port = port.checked_add(1).unwrap_or(NAT_FIRST_PORT);
        }
        self.next_port = port.checked_add(1).unwrap_or(NAT_FIRST_PORT);
        self.by_key.insert(key, port);
        self.by_port.insert(
            port,
            Mapping {
                key,
                last_used: now,
                generation: self.generation(now),
                permitted: Vec::new(),
            },
        );
        port
    }

    /// The internal (host, address) a packet from `remote` to the public `port` reaches
    /// at `now`, if a live mapping holds the port and its filter admits `remote`.
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        port: u16,
        remote: SocketAddr,
    ) -> Result<(HostId, SocketAddr), InboundDrop> {
        if !self.alive(port, now) {
            return Err(InboundDrop::NoMapping);
        }
        let filtering = self.behavior.filtering;
        let mapping = self.by_port.get_mut(&port).ok_or(InboundDrop::NoMapping)?;
        let admitted = match filtering {
            NatFiltering::EndpointIndependent => true,
            NatFiltering::AddressDependent => {
                mapping.permitted.iter().any(|p| p.ip() == remote.ip())
            }
            NatFiltering::AddressAndPortDependent => mapping.permitted.contains(&remote),
        };
        if !admitted {
            return Err(InboundDrop::Filtered);
        }
        // Traffic in either direction keeps a mapping alive (as Linux conntrack does).
        mapping.last_used = now;
        Ok((mapping.key.host, mapping.key.internal))
    }

    /// The host a packet to the public `port` would reach, without deciding whether the
    /// filter admits it (that is decided when it arrives).
    pub(crate) fn host_behind(&self, port: u16) -> Option<HostId> {
        self.by_port.get(&port).map(|m| m.key.host)
    }

    /// Forgets the mappings of the internal sockets `which` selects.
    pub(crate) fn forget(&mut self, mut which: impl FnMut(HostId, SocketAddr) -> bool) {
        let gone: Vec<_> = self
            .by_key
            .iter()
            .filter(|(k, _)| which(k.host, k.internal))
            .map(|(k, port)| (*k, *port))
            .collect();
        for (key, port) in gone {
            self.by_key.remove(&key);
            self.by_port.remove(&port);
        }
    }

    /// How many mappings the NAT holds (live or not yet noticed dead).
    #[cfg(test)]
    fn mappings(&self) -> usize {
        self.by_port.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addr(a: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, a)), port)
    }

    fn nat(behavior: NatBehavior) -> (Nat, Instant) {
        let now = Instant::now();
        let public = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        (Nat::new(public, behavior, now), now)
    }

    const H: HostId = HostId(7);

    #[test]
    fn endpoint_independent_mapping_keeps_one_port_for_every_destination() {
        let (mut n, now) = nat(NatBehavior::port_restricted_cone());
        let inside = addr(10, 5000);
        let to_relay = n.map_outbound(now, H, inside, addr(1, 7300));
        let to_peer = n.map_outbound(now, H, inside, addr(2, 9000));
        assert_eq!(to_relay, to_peer);
    }

    #[test]
    fn dependent_mapping_gives_each_destination_its_own_port() {
        let (mut n, now) = nat(NatBehavior::symmetric());
        let inside = addr(10, 5000);
        let to_relay = n.map_outbound(now, H, inside, addr(1, 7300));
        let to_peer = n.map_outbound(now, H, inside, addr(2, 9000));
        assert_ne!(to_relay.port(), to_peer.port());
        assert_eq!(n.mappings(), 2);
    }

    #[test]
    fn filters_admit_what_their_kind_admits() {
        let inside = addr(10, 5000);
        let relay = addr(1, 7300);
        let same_ip_other_port = addr(1, 7301);
        let stranger = addr(3, 7300);
        let cases = [
            (NatBehavior::full_cone(), [true, true, true]),
            (NatBehavior::restricted_cone(), [true, true, false]),
            (NatBehavior::port_restricted_cone(), [true, false, false]),
        ];
        for (behavior, expected) in cases {
            let (mut n, now) = nat(behavior);
            let public = n.map_outbound(now, H, inside, relay);
            let got = [relay, same_ip_other_port, stranger]
                .map(|remote| n.inbound(now, public.port(), remote).is_ok());
            assert_eq!(got, expected, "{behavior:?}");
        }
    }

    #[test]
    fn unsolicited_packets_find_no_mapping() {
        let (mut n, now) = nat(NatBehavior::full_cone());
        assert_eq!(
            n.inbound(now, NAT_FIRST_PORT, addr(1, 1)),
            Err(InboundDrop::NoMapping)
        );
    }

    #[test]
    fn an_idle_mapping_times_out_and_traffic_keeps_it() {
        let timeout = Duration::from_secs(30);
        let (mut n, t0) = nat(NatBehavior::port_restricted_cone().with_mapping_timeout(timeout));
        let inside = addr(10, 5000);
        let relay = addr(1, 7300);
        let public = n.map_outbound(t0, H, inside, relay);
        // Inbound traffic every 20 s keeps it alive past the timeout.
        for i in 1..=3 {
            let at = t0 + Duration::from_secs(20 * i);
            assert!(n.inbound(at, public.port(), relay).is_ok(), "{i}");
        }
        let idle = t0 + Duration::from_secs(60 + 30);
        assert_eq!(
            n.inbound(idle, public.port(), relay),
            Err(InboundDrop::NoMapping)
        );
        assert_eq!(n.mappings(), 0);
        // The next outbound packet gets a new port.
        assert_ne!(n.map_outbound(idle, H, inside, relay), public);
    }

    #[test]
    fn rebinding_moves_every_flow_to_a_new_port_each_period() {
        let period = Duration::from_secs(20);
        let (mut n, t0) = nat(NatBehavior::full_cone().with_rebinding(period));
        let inside = addr(10, 5000);
        let relay = addr(1, 7300);
        let first = n.map_outbound(t0, H, inside, relay);
        let same = n.map_outbound(t0 + Duration::from_secs(19), H, inside, relay);
        assert_eq!(first, same);
        let later = t0 + Duration::from_secs(21);
        assert_eq!(
            n.inbound(later, first.port(), relay),
            Err(InboundDrop::NoMapping)
        );
        assert_ne!(n.map_outbound(later, H, inside, relay), first);
    }

    #[test]
    fn a_filter_remembers_a_bounded_number_of_remotes() {
        let (mut n, now) = nat(NatBehavior::port_restricted_cone());
        let inside = addr(10, 5000);
        let first = addr(1, 1);
        let public = n.map_outbound(now, H, inside, first);
        for port in 2..=(MAX_PERMITTED_PER_MAPPING as u16 + 1) {
            n.map_outbound(now, H, inside, addr(1, port));
        }
        assert_eq!(
            n.inbound(now, public.port(), first),
            Err(InboundDrop::Filtered)
        );
        assert!(n.inbound(now, public.port(), addr(1, 2)).is_ok());
    }
}
