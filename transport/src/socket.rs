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
    /// Binds a new socket at `addr`, wrapped in the counting guard.
    pub(crate) fn bind(
        &self,
        addr: SocketAddr,
        counters: Arc<EndpointCounters>,
    ) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner: Arc<dyn AsyncUdpSocket> = match self {
            Self::Udp => {
                let socket = std::net::UdpSocket::bind(addr)?;
                socket.set_nonblocking(true)?;
                quinn::TokioRuntime.wrap_udp_socket(socket)?
            }
            Self::Sim { net, host } => Arc::new(net.bind(*host, addr)?),
        };
        Ok(Arc::new(GuardedSocket { inner, counters }))
    }
}

/// Counts datagrams in and out and drops received datagrams that cannot be QUIC before
/// quinn parses them.
struct GuardedSocket {
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

/// Whether one datagram can possibly be a QUIC packet for us.
fn plausible_quic(datagram: &[u8]) -> bool {
    datagram.len() >= MIN_QUIC_DATAGRAM && datagram[0] & QUIC_FIXED_BIT != 0
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
            // garbage the whole batch is dropped (a peer that coalesces garbage with
            // real packets loses both, which only hurts itself).
            if !data.is_empty() && data.chunks(stride.max(1)).all(plausible_quic) {
                add(&self.counters.datagrams_received, len64(segments));
                add(&self.counters.bytes_received, len64(data.len()));
            } else {
                add(&self.counters.garbage_datagrams_dropped, len64(segments));
                tracing::debug!(from = %m.addr, len = data.len(), "dropping non-QUIC datagram");
                // quinn skips a zero-length buffer.
                m.len = 0;
            }
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
        assert!(!plausible_quic(&[]));
        assert!(!plausible_quic(&[0x40; 20]));
        assert!(plausible_quic(&[0x40; 21]));
        assert!(!plausible_quic(&[0x80; 100]));
        assert!(plausible_quic(&[0xC3; 1200]));
    }
}
