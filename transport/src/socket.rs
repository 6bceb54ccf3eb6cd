//! The endpoint's UDP socket: where it comes from (the OS or the simulated network) and
//! a thin guard around it that counts traffic and drops datagrams that cannot be QUIC.
//!
//! Real sockets are never `connect()`ed: one socket talks to every peer, and a connected
//! UDP socket fails for good once its local address goes away (see DESIGN.md's checked
//! facts). When the device changes networks the endpoint binds a fresh socket and
//! quinn's rebind swaps it in.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

use crate::receive_drops::{socket_inode, OpenSocket, ReceiveDrops};
use crate::sim::{HostId, SimNetwork};
use crate::stats::{add, len64, EndpointCounters};

/// The shortest datagram that can hold a QUIC packet: header protection samples 16
/// bytes starting 4 bytes after the packet number offset, and the first byte plus a
/// zero-length connection id come before it (RFC 9001 §5.4.2); a stateless reset is at
/// least this long too (RFC 9000 §10.3).
const MIN_QUIC_DATAGRAM: usize = 21;

/// The QUIC fixed bit (RFC 9000 §17). We never advertise `grease_quic_bit`, so every
/// packet addressed to us must have it set; anything else is not QUIC.
const QUIC_FIXED_BIT: u8 = 0x40;

/// The header form bit (RFC 9000 §17.2): set on long headers, which carry a version.
const LONG_HEADER: u8 = 0x80;

/// The version field of a long header that marks a version negotiation packet (RFC 9000
/// §17.2.1): never dropped here, quinn's client side reads it.
const VERSION_NEGOTIATION: u32 = 0;

/// The smallest datagram a server answers with a version negotiation packet; quinn
/// (RFC 9000 §5.2.2 and §14.1) drops shorter ones that name an unsupported version, so
/// an answer can never be larger than the datagram that asked for it.
const MIN_INITIAL_DATAGRAM: usize = 1200;

/// Where an endpoint gets its sockets from, at creation and on every rebind.
#[derive(Clone)]
pub(crate) enum SocketFactory {
    /// Real UDP sockets from the OS.
    Udp,
    /// Sockets of a host on the simulated network.
    Sim {
        /// The network.
        net: SimNetwork,
        /// The host the endpoint lives on.
        host: HostId,
    },
}

impl fmt::Debug for SocketFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp => write!(f, "Udp"),
            Self::Sim { host, .. } => write!(f, "Sim({host:?})"),
        }
    }
}

impl SocketFactory {
    /// Binds a new socket at `addr`, wrapped in the counting guard; the kernel's drops
    /// on a real socket are counted in `drops` while it is open.
    pub(crate) fn bind(
        &self,
        addr: SocketAddr,
        counters: Arc<EndpointCounters>,
        drops: &Arc<ReceiveDrops>,
    ) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let (inner, kernel): (Arc<dyn AsyncUdpSocket>, _) = match self {
            Self::Udp => {
                let socket = std::net::UdpSocket::bind(addr)?;
                socket.set_nonblocking(true)?;
                enlarge_receive_buffer(&socket);
                let kernel = socket_inode(&socket).map(|inode| drops.register(inode));
                (quinn::TokioRuntime.wrap_udp_socket(socket)?, kernel)
            }
            Self::Sim { net, host } => (Arc::new(net.bind(*host, addr)?), None),
        };
        Ok(Arc::new(GuardedSocket {
            _kernel: kernel,
            inner,
            counters,
        }))
    }
}

/// Receive buffer asked of the kernel for each real socket. Linux's default (about
/// 208 KiB) holds about a hundred small QUIC packets: a relay with a thousand connected
/// devices overflowed it many times a second (the kernel dropped tens of thousands of
/// datagrams in a two-second burst of `tether bench relay`), and every drop costs a
/// QUIC loss recovery. The kernel caps the request at `net.core.rmem_max`; memory is
/// only used while datagrams wait.
pub const RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// The most payload the kernel may hold for a socket that asked for
/// [`RECEIVE_BUFFER_BYTES`]: it caps the request at `net.core.rmem_max` and doubles it for
/// its bookkeeping, never below `net.core.rmem_default` (Linux; elsewhere, or when
/// `/proc` cannot be read, Linux's usual defaults). For floods that must overflow it.
pub fn receive_buffer_ceiling_bytes() -> u64 {
    let read = |path: &str| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let rmem_default = read("/proc/sys/net/core/rmem_default").unwrap_or(212_992);
    let rmem_max = read("/proc/sys/net/core/rmem_max").unwrap_or(rmem_default);
    let asked = RECEIVE_BUFFER_BYTES as u64;
    (2 * asked.min(rmem_max)).max(rmem_default)
}

/// Asks for [`RECEIVE_BUFFER_BYTES`] of receive buffer, best effort: a smaller buffer
/// only means more drops under a burst, never a failure.
fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    let Ok(state) = quinn::udp::UdpSocketState::new(socket.into()) else {
        return;
    };
    let current = state.recv_buffer_size(socket.into()).unwrap_or(0);
    if current < RECEIVE_BUFFER_BYTES {
        if let Err(error) = state.set_recv_buffer_size(socket.into(), RECEIVE_BUFFER_BYTES) {
            tracing::debug!(%error, "could not enlarge the socket's receive buffer");
        }
    }
}

/// Counts datagrams in and out and drops received datagrams that cannot be QUIC before
/// quinn parses them.
struct GuardedSocket {
    /// Counts the kernel's drops on a real socket. Declared before `inner` so that it
    /// drops first, and its last reading finds the socket still open.
    _kernel: Option<OpenSocket>,
    inner: Arc<dyn AsyncUdpSocket>,
    counters: Arc<EndpointCounters>,
}

impl fmt::Debug for GuardedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the socket guard makes of one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Possibly a QUIC packet for us: handed to quinn.
    Quic,
    /// Cannot be QUIC: too short, or the fixed bit is clear.
    NotQuic,
    /// A long header naming a version quinn does not speak, too short for quinn to
    /// answer: quinn would drop it.
    UnsupportedVersion,
}

/// Classifies one datagram (one GRO segment).
fn classify(datagram: &[u8]) -> Verdict {
    if datagram.len() < MIN_QUIC_DATAGRAM || datagram[0] & QUIC_FIXED_BIT == 0 {
        return Verdict::NotQuic;
    }
    if datagram[0] & LONG_HEADER != 0 && datagram.len() < MIN_INITIAL_DATAGRAM {
        let version = match datagram.get(1..5) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            _ => return Verdict::NotQuic,
        };
        // quinn's endpoint speaks exactly its default versions (`quic::endpoint_config`
        // does not change them).
        if version != VERSION_NEGOTIATION
            && !quinn_proto::DEFAULT_SUPPORTED_VERSIONS.contains(&version)
        {
            return Verdict::UnsupportedVersion;
        }
    }
    Verdict::Quic
}

impl AsyncUdpSocket for GuardedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        let len = transmit.contents.len();
        let segments = match transmit.segment_size {
            Some(size) if size > 0 => len.div_ceil(size),
            _ => 1,
        };
        add(&self.counters.datagrams_sent, len64(segments));
        add(&self.counters.bytes_sent, len64(len));
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (m, buf) in meta.iter_mut().zip(bufs.iter()).take(n) {
            let data = &buf[..m.len.min(buf.len())];
            let stride = if m.stride == 0 { data.len() } else { m.stride };
            let segments = data.len().div_ceil(stride.max(1)).max(1);
            // With GRO one meta holds several datagrams of one sender; if any of them is
            // dropped the whole batch is, counted under the first reason found (a peer
            // that coalesces junk with real packets loses both, which only hurts itself).
            let verdict = if data.is_empty() {
                Verdict::NotQuic
            } else {
                data.chunks(stride.max(1))
                    .map(classify)
                    .find(|v| *v != Verdict::Quic)
                    .unwrap_or(Verdict::Quic)
            };
            let dropped = match verdict {
                Verdict::Quic => {
                    add(&self.counters.datagrams_received, len64(segments));
                    add(&self.counters.bytes_received, len64(data.len()));
                    continue;
                }
                Verdict::NotQuic => &self.counters.garbage_datagrams_dropped,
                Verdict::UnsupportedVersion => &self.counters.unsupported_version_dropped,
            };
            add(dropped, len64(segments));
            tracing::debug!(from = %m.addr, len = data.len(), ?verdict, "dropping datagram");
            // quinn skips a zero-length buffer.
            m.len = 0;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausibility() {
        assert_eq!(classify(&[]), Verdict::NotQuic);
        assert_eq!(classify(&[0x40; 20]), Verdict::NotQuic);
        assert_eq!(classify(&[0x40; 21]), Verdict::Quic);
        assert_eq!(classify(&[0x80; 100]), Verdict::NotQuic);
        assert_eq!(classify(&[0xC3; 1200]), Verdict::Quic);
    }

    #[test]
    fn long_headers_of_versions_nobody_answers_are_dropped() {
        let long = |version: u32, len: usize| {
            let mut d = vec![0xC0; len];
            d[1..5].copy_from_slice(&version.to_be_bytes());
            d
        };
        assert_eq!(
            classify(&long(0xdead_beef, 100)),
            Verdict::UnsupportedVersion
        );
        assert_eq!(
            classify(&long(0xdead_beef, 1199)),
            Verdict::UnsupportedVersion
        );
        // Long enough for a version negotiation answer: quinn answers it.
        assert_eq!(classify(&long(0xdead_beef, 1200)), Verdict::Quic);
        // QUIC v1, and version negotiation packets, go to quinn at any size.
        assert_eq!(classify(&long(1, 100)), Verdict::Quic);
        assert_eq!(classify(&long(VERSION_NEGOTIATION, 100)), Verdict::Quic);
        // A short header carries no version.
        assert_eq!(classify(&[0x40; 100]), Verdict::Quic);
    }
}
