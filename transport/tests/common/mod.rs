//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use tether_transport::{Endpoint, Link};

/// Parses an IP address literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Parses a socket address literal.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Frame `i` of a test stream: its length varies from 1 byte to ~30 KB and its
/// content depends on `i`, so a lost, duplicated, reordered or corrupted frame shows.
pub fn frame(i: u32) -> Bytes {
    let len = 1 + (i.wrapping_mul(7919) % 30_000) as usize;
    let seed = i.to_be_bytes();
    Bytes::from(
        (0..len)
            .map(|k| seed[k % 4] ^ (k as u8).wrapping_mul(31))
            .collect::<Vec<u8>>(),
    )
}

/// Dials `to` from `from` and accepts on `to`; returns (dialled, accepted).
pub async fn connect(from: &Endpoint, to: &Endpoint) -> (Link, Link) {
    let addr = to.local_addr().unwrap();
    let (dialled, accepted) = tokio::join!(from.dial(addr), to.accept());
    (dialled.unwrap(), accepted.unwrap())
}
