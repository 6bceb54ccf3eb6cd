//! What this device's NAT does, from how its peers and the relay see it.
//!
//! After answering a ping on a direct link, a peer says where it sees this device
//! (`ObservedAddress`, once per address of the link, at most every
//! [`OBSERVED_RETELL_AFTER`]); the relay reports the address it sees (the reflexive
//! address). A NAT that keeps one mapping for a socket whatever the destination
//! (endpoint-independent mapping, RFC 4787: the cone kinds) shows both the same
//! address; one that maps each destination apart (a symmetric NAT) shows two. So does
//! a port-preserving NAT (Linux masquerade) that found the port taken towards a peer:
//! the peer's own first packet, crossing ours, holds it there. When the relay and a
//! peer both see an interface address of this device, there is no NAT on the way.
//! Each peer's last word is kept and compared with the relay's last view when asked
//! (`classify`); a move of this device forgets both: they describe the network it
//! left.

use crate::core::{duration_ms, DirectConnection};
use crate::state::Via;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::{DeviceId, LinkId, SessionFrame};

/// How this device's NAT maps its socket, as one peer's view and the relay's show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMapping {
    /// The peer and the relay both see an interface address of this device: no NAT.
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
    /// The address the relay last saw since this device moved, if it said.
    pub relay_saw: Option<SocketAddr>,
    /// What the two say; None when they cannot be compared: the relay has not said,
    /// one of each address family, a peer on this device's own network, or another
    /// public address (another route).
    pub mapping: Option<NatMapping>,
}

/// What a peer seeing this device at `seen` says about its NAT, given where the relay
/// sees it and the addresses of its interfaces. None when the two cannot be compared:
/// the relay has not said; one of each address family; one sees an interface address
/// and the other does not (a peer on this device's own network, or a relay on it); or
/// two public addresses (another route, not another mapping).
pub(crate) fn classify(
    seen: SocketAddr,
    relay_saw: Option<SocketAddr>,
    local: &[SocketAddr],
) -> Option<NatMapping> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (seen, relay_saw) = (canonical(seen), canonical(relay_saw?));
    let is_local = |a: SocketAddr| local.iter().any(|l| l.ip().to_canonical() == a.ip());
    match (is_local(seen), is_local(relay_saw)) {
        (true, true) => Some(NatMapping::None),
        (false, false) if seen == relay_saw => Some(NatMapping::EndpointIndependent),
        (false, false) if seen.ip() == relay_saw.ip() => Some(NatMapping::EndpointDependent),
        _ => None,
    }
}

/// Least time between two `ObservedAddress` frames to one peer. The view is a
/// diagnostic: it must not add to what a migration costs (a few control frames each,
/// and a device may move every second), so a view this device's move made its peer
/// forget comes back within this.
pub const OBSERVED_RETELL_AFTER: Duration = Duration::from_secs(30);

impl DirectConnection {
    /// After answering a ping on `link`: tells the peer where its packets come from,
    /// unless it was told on this link at this address already, or told anything less
    /// than [`OBSERVED_RETELL_AFTER`] ago.
    pub(crate) fn tell_observed(&mut self, now: Instant, device: DeviceId, link: LinkId) {
        let now_ms = self.now_ms(now);
        let retell_ms = duration_ms(OBSERVED_RETELL_AFTER);
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if peer
            .observed_told_at_ms
            .is_some_and(|at| now_ms < at + retell_ms)
        {
            return;
        }
        let Some(addr) = self.links.observed_to_tell(link) else {
            return;
        };
        peer.observed_told_at_ms = Some(now_ms);
        self.send_frame(
            device,
            Via::Link(link),
            &SessionFrame::ObservedAddress { addr },
        );
    }

    /// The peer said, on a direct link, where it sees this device.
    pub(crate) fn seen_by_peer(&mut self, device: DeviceId, addr: SocketAddr) {
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.seen_by_peer = Some(Box::new(addr));
        }
    }

    /// The relay told where it sees this device: kept for the comparison while the
    /// relay is away.
    pub(crate) fn relay_view_changed(&mut self, addr: Option<SocketAddr>) {
        if addr.is_some() {
            self.relay_view = addr;
        }
    }

    /// This device moved: what the relay and its peers saw describes the network it
    /// left.
    pub(crate) fn forget_nat_views(&mut self) {
        self.relay_view = None;
        for peer in self.peers.values_mut() {
            peer.seen_by_peer = None;
        }
    }

    /// Where `device` last saw this device, compared with the relay's view now.
    pub(crate) fn seen_by(&self, device: &DeviceId) -> Option<SeenByPeer> {
        let addr = **self.peers.get(device)?.seen_by_peer.as_ref()?;
        Some(SeenByPeer {
            addr,
            relay_saw: self.relay_view,
            mapping: classify(addr, self.relay_view, &self.local_endpoints),
        })
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
        // One mapping for the relay and the peer: a cone NAT.
        assert_eq!(
            classify(addr("203.0.113.5:61000"), public, &local),
            Some(NatMapping::EndpointIndependent)
        );
        // Another port for the peer: a mapping per destination.
        assert_eq!(
            classify(addr("203.0.113.5:61001"), public, &local),
            Some(NatMapping::EndpointDependent)
        );
        // Both see an interface address: no NAT. IPv4-mapped IPv6 is the same address.
        let own = Some(addr("192.168.1.20:4000"));
        assert_eq!(
            classify(addr("[::ffff:192.168.1.20]:4000"), own, &local),
            Some(NatMapping::None)
        );
        // Nothing to compare: the relay has not said; a peer on this device's own
        // network while the relay sees a NAT; another family; another public address.
        assert_eq!(classify(addr("203.0.113.5:61000"), None, &local), None);
        assert_eq!(classify(addr("192.168.1.20:4000"), public, &local), None);
        assert_eq!(classify(addr("203.0.113.5:61000"), own, &local), None);
        assert_eq!(classify(addr("[2001:db8::1]:61000"), public, &local), None);
        assert_eq!(classify(addr("198.51.100.1:61000"), public, &local), None);
    }
}
