//! A simulated UDP socket: quinn's `AsyncUdpSocket` on top of [`SimNetwork`], so real
//! quinn (and everything above it) runs over the simulation unchanged.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::{HostId, SimNetwork};
use crate::sync::lock;

/// Receive buffer of one simulated socket, in payload bytes. 256 KiB is about Linux's
/// default `rmem_default` (208 KiB) rounded up; beyond it arriving datagrams are dropped
/// as a kernel would.
pub(crate) const RECV_BUFFER_BYTES: usize = 256 * 1024;

/// The datagrams waiting in one socket, shared between the socket and the network.
#[derive(Debug, Default)]
pub(crate) struct RecvQueue {
    state: Mutex<RecvState>,
}

#[derive(Debug, Default)]
struct RecvState {
    packets: VecDeque<(SocketAddr, IpAddr, Bytes)>,
    bytes: usize,
    waker: Option<Waker>,
    dead: bool,
    oversized_dropped: u64,
}

impl RecvQueue {
    /// Queues an arriving datagram; false if the buffer is full or the socket is dead.
    pub(crate) fn push(&self, from: SocketAddr, to: IpAddr, data: Bytes) -> bool {
        let mut st = lock(&self.state);
        if st.dead || st.bytes + data.len() > RECV_BUFFER_BYTES {
            return false;
        }
        st.bytes += data.len();
        st.packets.push_back((from, to, data));
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        true
    }

    /// The socket's address went away: drop what is queued and never receive again.
    pub(crate) fn kill(&self) {
        let mut st = lock(&self.state);
        st.dead = true;
        st.packets.clear();
        st.bytes = 0;
    }

    fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// Pops the next datagram that fits `max_len`; larger ones are dropped and counted.
    fn poll_pop(&self, cx: &mut Context<'_>, max_len: usize) -> Poll<(SocketAddr, IpAddr, Bytes)> {
        let mut st = lock(&self.state);
        while let Some((from, to, data)) = st.packets.pop_front() {
            st.bytes -= data.len();
            if data.len() > max_len {
                st.oversized_dropped += 1;
                continue;
            }
            return Poll::Ready((from, to, data));
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A UDP socket bound on a simulated host. Dropping it frees its port.
pub struct SimSocket {
    pub(crate) net: SimNetwork,
    pub(crate) host: HostId,
    pub(crate) local: SocketAddr,
    pub(crate) queue: Arc<RecvQueue>,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket")
            .field("host", &self.host)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl SimSocket {
    /// The host this socket lives on.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Whether the socket's address was removed from its host (it can no longer send or
    /// receive, as after a real interface loss).
    pub fn is_dead(&self) -> bool {
        self.queue.is_dead()
    }

    /// Datagrams dropped because they were larger than the receiver's buffer.
    pub fn oversized_dropped(&self) -> u64 {
        lock(&self.queue.state).oversized_dropped
    }

    /// Sends one datagram (for tests that inject raw or garbage traffic). Like a real
    /// unconnected UDP socket, a datagram the network drops is not an error.
    pub fn send_to(&self, data: &[u8], to: SocketAddr) {
        self.net.send(self.host, self.local, None, to, data);
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        self.net.unbind(self.host, self.local, &self.queue);
    }
}

/// The simulated network never blocks a sender: congestion shows up as queueing delay
/// and tail drops, as on a real path.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.queue.is_dead() {
            // Its address or its process is gone: nothing leaves it.
            return Ok(());
        }
        match transmit.segment_size {
            Some(size) if size > 0 && size < transmit.contents.len() => {
                for segment in transmit.contents.chunks(size) {
                    self.net.send(
                        self.host,
                        self.local,
                        transmit.src_ip,
                        transmit.destination,
                        segment,
                    );
                }
            }
            _ => self.net.send(
                self.host,
                self.local,
                transmit.src_ip,
                transmit.destination,
                transmit.contents,
            ),
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Poll::Ready((from, to, data)) = self.queue.poll_pop(cx, bufs[n].len()) else {
                break;
            };
            bufs[n][..data.len()].copy_from_slice(&data);
            meta[n] = RecvMeta {
                addr: from,
                len: data.len(),
                stride: data.len(),
                ecn: None,
                dst_ip: Some(to),
            };
            n += 1;
        }
        if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(n))
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
