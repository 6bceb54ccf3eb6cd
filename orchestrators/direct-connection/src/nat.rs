//! What this device's NAT does, from how its peers and the relay see it.
//!
//! A peer's `Pong` on a direct link carries the address the peer sees this device at;
//! the relay reports the address it sees (the reflexive address). A NAT that keeps one
//! mapping for a socket whatever the destination (endpoint-independent mapping, RFC
//! 4787: the cone kinds) shows both the same address; one that maps each destination
//! apart (a symmetric NAT) shows two. So does a port-preserving NAT (Linux masquerade)
//! that found the port taken towards a peer: the peer's own first packet, crossing
//! ours, holds it there. A peer that sees an interface address of this
//! device reached it with no NAT on the way. Each answer replaces the last, and a move
//! of this device forgets them all: they describe the network it is on now.

use crate::core::DirectConnection;
use std::net::SocketAddr;
use tether_protocol::DeviceId;

/// How this device's NAT maps its socket, as one peer's view and the relay's show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMapping {
    /// The peer sees an interface address of this device: no NAT between them.
    None,
    /// The peer and the relay see the same address: one mapping for every destination
    /// (endpoint-independent; a full, restricted or port-restricted cone NAT).
    EndpointIndependent,
    /// The peer and the relay see different addresses: a mapping per destination
    /// (endpoint-dependent; a symmetric NAT).
    EndpointDependent,
}

/// Where a peer on a direct path last saw this device, next to where the relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenByPeer {
    /// The address the peer saw this device's packets come from.
    pub addr: SocketAddr,
    /// The address the relay saw at the same time, if it had said.
    pub relay_saw: Option<SocketAddr>,
    /// What the two say; None when they cannot be compared (no reflexive address yet,
    /// or one of each address family).
    pub mapping: Option<NatMapping>,
}

/// What a peer seeing this device at `seen` says about its NAT, given the addresses of
/// its interfaces and where the relay sees it.
pub fn classify(
    seen: SocketAddr,
    relay_saw: Option<SocketAddr>,
    local: &[SocketAddr],
) -> Option<NatMapping> {
    if local.iter().any(|l| l.ip() == seen.ip()) {
        return Some(NatMapping::None);
    }
    let relay_saw = relay_saw?;
    if relay_saw.is_ipv4() != seen.is_ipv4() || local.iter().any(|l| l.ip() == relay_saw.ip()) {
        // Another family, or no NAT towards the relay while there is one towards the
        // peer (the relay on this device's own network): nothing to compare.
        return None;
    }
    Some(if relay_saw == seen {
        NatMapping::EndpointIndependent
    } else {
        NatMapping::EndpointDependent
    })
}

impl DirectConnection {
    /// A peer's Pong on a direct link said where it sees this device.
    pub(crate) fn seen_by_peer(&mut self, device: DeviceId, addr: SocketAddr) {
        let mapping = classify(addr, self.reflexive, &self.local_endpoints);
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.seen_by_peer = Some(Box::new(SeenByPeer {
                addr,
                relay_saw: self.reflexive,
                mapping,
            }));
        }
    }

    /// This device moved: what its peers saw describes the network it left.
    pub(crate) fn forget_seen_by_peers(&mut self) {
        for peer in self.peers.values_mut() {
            peer.seen_by_peer = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_peer_and_the_relay_views_tell_the_mapping_apart() {
        let local = [addr("192.168.1.20:4000")];
        let public = Some(addr("203.0.113.5:61000"));
        // No NAT on the way to the peer (same network, or a public address).
        assert_eq!(
            classify(addr("192.168.1.20:4000"), public, &local),
            Some(NatMapping::None)
        );
        // One mapping for the relay and the peer: a cone NAT.
        assert_eq!(
            classify(addr("203.0.113.5:61000"), public, &local),
            Some(NatMapping::EndpointIndependent)
        );
        // Another port (or address) for the peer: a mapping per destination.
        assert_eq!(
            classify(addr("203.0.113.5:61001"), public, &local),
            Some(NatMapping::EndpointDependent)
        );
        assert_eq!(
            classify(addr("198.51.100.1:61000"), public, &local),
            Some(NatMapping::EndpointDependent)
        );
        // Nothing to compare: the relay has not said, says another family, or sees
        // an interface address while the peer does not.
        assert_eq!(classify(addr("203.0.113.5:61000"), None, &local), None);
        assert_eq!(classify(addr("[2001:db8::1]:61000"), public, &local), None);
        assert_eq!(
            classify(
                addr("203.0.113.5:61000"),
                Some(addr("192.168.1.20:4000")),
                &local
            ),
            None
        );
    }
}
