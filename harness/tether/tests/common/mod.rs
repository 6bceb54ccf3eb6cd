//! What the library's tests share.

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use tether::actors::RelayServer;
use tether::StaticKeypair;
use tether_rcs::{Admission, RelayServerConfig};
use tether_transport::{Endpoint, TransportConfig};

/// Starts a relay on loopback on a thread of its own; returns its address.
pub fn start_relay(keypair: StaticKeypair) -> SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix_rt::System::new();
        system.block_on(async move {
            let endpoint =
                Endpoint::bind_udp("127.0.0.1:0".parse().unwrap(), TransportConfig::default())
                    .await
                    .unwrap();
            let addr = endpoint.local_addr().unwrap();
            let config = RelayServerConfig::new(keypair, [7; 32], Admission::Open);
            let _relay = RelayServer::start(endpoint, config).unwrap();
            addr_tx.send(addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    addr_rx.recv().unwrap()
}
