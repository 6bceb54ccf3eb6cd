//! Which addresses a device announces to its peers (in migration pings and acks, and in
//! rendezvous hints): addresses a peer can reach, never a wildcard.
//!
//! An endpoint bound to one address announces that address. An endpoint bound to the
//! wildcard address (`0.0.0.0` or `::`, the default `listen`) is reachable at each of the
//! device's interface addresses, on its port: those are announced instead. The interface
//! addresses come from the caller (the interface watcher of `tether node`, the simulated
//! cluster's hosts), already without loopback and link-local addresses, which reach no
//! peer on another device.

use std::net::{IpAddr, SocketAddr};

/// Where to move the endpoint when the interface addresses become `addresses`, or None
/// to stay: a node configured with the wildcard address rebinds on every change (a new
/// socket, so every session migrates from it); one configured with a specific IP only
/// when that IP is gone, then to the wildcard address; one on loopback or a link-local
/// address never (those are not watched and do not go away).
pub fn rebind_target(
    configured: IpAddr,
    local: SocketAddr,
    addresses: &[SocketAddr],
) -> Option<SocketAddr> {
    let wildcard = if configured.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    };
    let unwatched =
        configured.is_loopback() || matches!(configured, IpAddr::V4(ip) if ip.is_link_local());
    let own_ip_gone =
        !unwatched && local.ip() == configured && !addresses.iter().any(|a| a.ip() == configured);
    (configured.is_unspecified() || own_ip_gone).then_some(SocketAddr::new(wildcard, 0))
}

/// The addresses to announce for an endpoint bound to `socket`, given the device's
/// interface addresses. Empty when the endpoint is bound to the wildcard address and no
/// interface address is known: announcing nothing is honest, announcing the wildcard
/// sends peers to an address that reaches nobody.
pub fn announced_endpoints(socket: SocketAddr, interfaces: &[IpAddr]) -> Vec<SocketAddr> {
    if !socket.ip().is_unspecified() {
        return vec![socket];
    }
    let mut announced: Vec<SocketAddr> = interfaces
        .iter()
        .filter(|ip| !ip.is_unspecified())
        // An IPv4 wildcard socket takes IPv4 only; an IPv6 one is dual-stack by default.
        .filter(|ip| socket.is_ipv6() || ip.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, socket.port()))
        .collect();
    announced.sort_unstable();
    announced.dedup();
    announced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(text: &str) -> SocketAddr {
        text.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn a_wildcard_socket_announces_its_interfaces_never_itself() {
        let interfaces = [ip("192.0.2.7"), ip("2001:db8::7"), ip("0.0.0.0")];
        assert_eq!(
            announced_endpoints(sa("0.0.0.0:7001"), &interfaces),
            vec![sa("192.0.2.7:7001")]
        );
        assert_eq!(
            announced_endpoints(sa("[::]:7001"), &interfaces),
            vec![sa("192.0.2.7:7001"), sa("[2001:db8::7]:7001")]
        );
        assert!(announced_endpoints(sa("0.0.0.0:7001"), &[]).is_empty());
    }

    #[test]
    fn a_socket_bound_to_one_address_announces_that_address() {
        assert_eq!(
            announced_endpoints(sa("127.0.0.2:7001"), &[ip("192.0.2.7")]),
            vec![sa("127.0.0.2:7001")]
        );
    }
}
