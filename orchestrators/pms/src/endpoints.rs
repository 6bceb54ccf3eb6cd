//! The endpoint list inside a sealed hint: [`tether_protocol::canonical_endpoints`]
//! (the same bytes migration tags bind) and its decoder.
//!
//! Format, per address: a family byte (4 or 6), the IP octets (4 or 16) and the port in
//! big-endian. IPv6 flow info and scope ids are not carried (a scope id means nothing on
//! the peer's machine). The list is cut, at an address boundary, to fit
//! [`MAX_HINT_ENDPOINTS_LEN`]: addresses come best first, so the worst are dropped.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use tether_crypto::hints::MAX_HINT_ENDPOINTS_LEN;

/// Family byte of an IPv4 address.
const FAMILY_V4: u8 = 4;
/// Family byte of an IPv6 address.
const FAMILY_V6: u8 = 6;

/// Why endpoint bytes from an (authentic) hint could not be read. Only a peer running
/// other code could cause it; counted and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointsError {
    /// A family byte other than 4 or 6, at this offset.
    UnknownFamily {
        /// Offset of the byte.
        at: usize,
    },
    /// The bytes end inside an address.
    Truncated,
}

impl std::fmt::Display for EndpointsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownFamily { at } => write!(f, "unknown address family at byte {at}"),
            Self::Truncated => f.write_str("endpoint list ends inside an address"),
        }
    }
}

impl std::error::Error for EndpointsError {}

/// Encodes as many of `endpoints` (best first) as fit in a hint.
pub fn encode_endpoints(endpoints: &[SocketAddr]) -> Vec<u8> {
    let mut fitting = 0;
    let mut len = 0;
    for endpoint in endpoints {
        let size = match endpoint {
            SocketAddr::V4(_) => 1 + 4 + 2,
            SocketAddr::V6(_) => 1 + 16 + 2,
        };
        if len + size > MAX_HINT_ENDPOINTS_LEN {
            break;
        }
        len += size;
        fitting += 1;
    }
    tether_protocol::canonical_endpoints(&endpoints[..fitting])
}

/// Decodes bytes written by [`encode_endpoints`].
pub fn decode_endpoints(bytes: &[u8]) -> Result<Vec<SocketAddr>, EndpointsError> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(&family) = bytes.get(at) {
        let ip_len = match family {
            FAMILY_V4 => 4,
            FAMILY_V6 => 16,
            _ => return Err(EndpointsError::UnknownFamily { at }),
        };
        let body = bytes
            .get(at + 1..at + 1 + ip_len + 2)
            .ok_or(EndpointsError::Truncated)?;
        let (ip, port) = body.split_at(ip_len);
        let port = u16::from_be_bytes([port[0], port[1]]);
        let endpoint = if family == FAMILY_V4 {
            let mut octets = [0_u8; 4];
            octets.copy_from_slice(ip);
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(octets), port))
        } else {
            let mut octets = [0_u8; 16];
            octets.copy_from_slice(ip);
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, 0))
        };
        out.push(endpoint);
        at += 1 + ip_len + 2;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn round_trip_keeps_order_family_and_port() {
        let list = vec![
            addr("198.51.100.7:4433"),
            addr("[2001:db8::1]:443"),
            addr("10.0.0.1:1"),
        ];
        let bytes = encode_endpoints(&list);
        assert_eq!(bytes, tether_protocol::canonical_endpoints(&list));
        assert_eq!(decode_endpoints(&bytes), Ok(list));
        assert_eq!(decode_endpoints(&[]), Ok(vec![]));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert_eq!(
            decode_endpoints(&[5, 1, 2, 3]),
            Err(EndpointsError::UnknownFamily { at: 0 })
        );
        let bytes = encode_endpoints(&[addr("[::1]:9")]);
        for cut in 1..bytes.len() {
            assert_eq!(
                decode_endpoints(&bytes[..cut]),
                Err(EndpointsError::Truncated),
                "cut at {cut}"
            );
        }
        let mut trailing = encode_endpoints(&[addr("10.0.0.1:9")]);
        trailing.push(4);
        assert_eq!(decode_endpoints(&trailing), Err(EndpointsError::Truncated));
    }

    #[test]
    fn too_many_endpoints_are_cut_to_fit_a_hint() {
        let list: Vec<SocketAddr> = (0..100)
            .map(|n| SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n).into(), 1))
            .collect();
        let bytes = encode_endpoints(&list);
        assert!(bytes.len() <= MAX_HINT_ENDPOINTS_LEN);
        let decoded = decode_endpoints(&bytes).unwrap();
        assert_eq!(decoded.len(), MAX_HINT_ENDPOINTS_LEN / 19);
        assert_eq!(decoded[..], list[..decoded.len()], "the best ones are kept");
    }
}
