//! An endpoint-independent-mapping NAT for the simulated network.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::HostId;

/// First public port a NAT hands out; any fixed value works, this one is easy to spot
/// in logs.
const NAT_FIRST_PORT: u16 = 20000;

/// An endpoint-independent-mapping NAT (RFC 4787): one public port per internal
/// (host, address, port), created by the first outbound packet and reachable by any
/// remote afterwards (endpoint-independent filtering too). Mappings do not expire.
#[derive(Debug)]
pub(crate) struct Nat {
    pub(crate) public_ip: IpAddr,
    next_port: u16,
    mappings: BTreeMap<(HostId, SocketAddr), u16>,
    reverse: BTreeMap<u16, (HostId, SocketAddr)>,
}

impl Nat {
    pub(crate) fn new(public_ip: IpAddr) -> Self {
        Self {
            public_ip,
            next_port: NAT_FIRST_PORT,
            mappings: BTreeMap::new(),
            reverse: BTreeMap::new(),
        }
    }

    /// The internal (host, address) a public port maps to, if any.
    pub(crate) fn inbound(&self, port: u16) -> Option<(HostId, SocketAddr)> {
        self.reverse.get(&port).copied()
    }

    pub(crate) fn map_outbound(&mut self, host: HostId, internal: SocketAddr) -> SocketAddr {
        if let Some(port) = self.mappings.get(&(host, internal)) {
            return SocketAddr::new(self.public_ip, *port);
        }
        // Ports are never reused within a run, so a stale mapping can never be confused
        // with a new one (wrap-around would need 45 000 mappings in one test).
        let mut port = self.next_port;
        for _ in 0..=u16::MAX {
            if !self.reverse.contains_key(&port) {
                break;
            }
            port = port.checked_add(1).unwrap_or(NAT_FIRST_PORT);
        }
        self.next_port = port.checked_add(1).unwrap_or(NAT_FIRST_PORT);
        self.mappings.insert((host, internal), port);
        self.reverse.insert(port, (host, internal));
        SocketAddr::new(self.public_ip, port)
    }

    pub(crate) fn forget(&mut self, mut which: impl FnMut(&(HostId, SocketAddr)) -> bool) {
        let gone: Vec<_> = self.mappings.keys().filter(|k| which(k)).copied().collect();
        for key in gone {
            if let Some(port) = self.mappings.remove(&key) {
                self.reverse.remove(&port);
            }
        }
    }
}
