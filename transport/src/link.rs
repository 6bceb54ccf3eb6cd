//! A direct link: one QUIC connection carrying one bidirectional stream of
//! length-delimited frames (u32 big-endian length, then the sealed frame).
//!
//! A [`Link`] splits into a cloneable [`LinkSender`] and a [`LinkReceiver`], so the
//! session layer can run a reader task while any number of writers send. A
//! [`LinkHandle`] observes the link: the remote address (it changes when the peer
//! migrates), the counters, and [`LinkHandle::lost`], which resolves when the
//! connection ends, with the reason.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};

use crate::error::{LinkError, LostReason};
use crate::framing::{frame_header, FrameDecoder};
use crate::stats::{add, bump, len64, LinkCounters, LinkStats};
use crate::sync::lock;

/// First bytes the dialler writes on the frame stream. QUIC only announces a stream
/// once data flows on it, so the dialler must write something; a magic value also lets
/// the acceptor reject streams that are not Tether links.
pub(crate) const LINK_PREAMBLE: [u8; 4] = *b"TLK1";

/// Application close codes of link connections.
pub(crate) mod close_code {
    /// Normal close by the application.
    pub(crate) const NORMAL: u32 = 0;
    /// The accepting side moved to a new address: this connection cannot follow.
    pub(crate) const ACCEPTOR_MOVED: u32 = 1;
    /// The frame stream did not start with the link preamble.
    pub(crate) const BAD_PREAMBLE: u32 = 2;
    /// A send was cancelled half-way through a frame: the stream is unframeable.
    pub(crate) const CANCELLED_SEND: u32 = 3;
}

/// Identifies a link within its endpoint (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub(crate) u64);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Which side of the QUIC connection this device is; it decides what happens when this
/// device changes address (see [`Endpoint::rebind`](crate::Endpoint::rebind)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkRole {
    /// We dialled: on a local address change QUIC migrates the connection.
    Dialled,
    /// We accepted: QUIC cannot migrate the server side, so a local address change
    /// loses the link and the session layer re-dials.
    Accepted,
}

pub(crate) struct LinkShared {
    id: LinkId,
    role: LinkRole,
    conn: quinn::Connection,
    counters: Arc<LinkCounters>,
    max_frame_len: usize,
    /// A reason decided locally before closing, which wins over quinn's generic one.
    lost_override: Mutex<Option<LostReason>>,
}

impl LinkShared {
    pub(crate) fn role(&self) -> LinkRole {
        self.role
    }

    pub(crate) fn id(&self) -> LinkId {
        self.id
    }

    /// Whether the QUIC connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn lost_reason(&self, e: quinn::ConnectionError) -> LostReason {
        lock(&self.lost_override)
            .clone()
            .unwrap_or_else(|| LostReason::from(e))
    }

    /// Closes the connection, recording why (the first recorded reason wins).
    pub(crate) fn close_with(&self, reason: LostReason, code: u32, message: &[u8]) {
        lock(&self.lost_override).get_or_insert(reason);
        self.conn.close(VarInt::from_u32(code), message);
    }
}

/// QUIC's statistics of a link's current path, for observability and path choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window in bytes.
    pub congestion_window: u64,
    /// QUIC packets sent on the path.
    pub sent_packets: u64,
    /// QUIC packets declared lost.
    pub lost_packets: u64,
    /// Bytes in those lost packets.
    pub lost_bytes: u64,
}

/// A cloneable observer of a link.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<LinkShared>,
}

impl fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkHandle")
            .field("id", &self.shared.id)
            .field("role", &self.shared.role)
            .field("remote", &self.remote_addr())
            .finish()
    }
}

impl LinkHandle {
    /// The link's id within its endpoint.
    pub fn id(&self) -> LinkId {
        self.shared.id
    }

    /// Whether we dialled or accepted it.
    pub fn role(&self) -> LinkRole {
        self.shared.role
    }

    /// The peer's current address; it changes when the peer migrates.
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.conn.remote_address()
    }

    /// QUIC's current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.shared.conn.rtt()
    }

    /// QUIC's view of the path: round trips, congestion window, losses.
    pub fn path_stats(&self) -> PathStats {
        let s = self.shared.conn.stats();
        PathStats {
            rtt: s.path.rtt,
            congestion_window: s.path.cwnd,
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
        }
    }

    /// Frame counters of this link.
    pub fn stats(&self) -> LinkStats {
        self.shared.counters.snapshot()
    }

    /// Resolves when the connection ends, with the reason.
    pub async fn lost(&self) -> LostReason {
        let e = self.shared.conn.closed().await;
        self.shared.lost_reason(e)
    }

    /// The reason the link ended, or `None` while it is alive.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.shared
            .conn
            .close_reason()
            .map(|e| self.shared.lost_reason(e))
    }

    /// Closes the link; pending data may be lost (close after the peer acknowledged
    /// what matters, which the session layer does with its own acks).
    pub fn close(&self) {
        self.shared
            .close_with(LostReason::ClosedLocally, close_code::NORMAL, b"closed");
    }
}

struct SendState {
    stream: SendStream,
    broken: bool,
}

/// The sending half of a link; clones share the stream and never interleave frames.
#[derive(Clone)]
pub struct LinkSender {
    handle: LinkHandle,
    state: Arc<tokio::sync::Mutex<SendState>>,
}

impl fmt::Debug for LinkSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LinkSender").field(&self.handle).finish()
    }
}

/// Closes the link if a send is dropped half-way through a frame: the peer could never
/// find the next frame boundary, and a clear loss beats a silently garbled stream.
struct CancelGuard<'a> {
    broken: &'a mut bool,
    shared: &'a LinkShared,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.broken = true;
            self.shared.close_with(
                LostReason::ClosedLocally,
                close_code::CANCELLED_SEND,
                b"send cancelled mid-frame",
            );
        }
    }
}

impl LinkSender {
    /// Sends one sealed frame. Waits while QUIC flow control or congestion control
    /// holds data back (back-pressure).
    ///
    /// Cancelling this future before any byte of the frame was written is harmless;
    /// cancelling it half-way through a frame closes the link (the peer could never
    /// find the next frame boundary) and later sends fail with [`LinkError::Broken`].
    pub async fn send_frame(&self, frame: Bytes) -> Result<(), LinkError> {
        let shared = &self.handle.shared;
        let header = frame_header(frame.len(), shared.max_frame_len)?;
        let len = frame.len();
        let mut state = self.state.lock().await;
        let SendState { stream, broken } = &mut *state;
        if *broken {
            return Err(LinkError::Broken);
        }
        let mut guard = CancelGuard {
            broken,
            shared,
            armed: false,
        };
        let mut chunks = [Bytes::copy_from_slice(&header), frame];
        let mut rest: &mut [Bytes] = &mut chunks;
        while !rest.is_empty() {
            // `write_chunks` is cancel-safe: if it does not resolve, nothing was written.
            match stream.write_chunks(rest).await {
                Ok(written) => {
                    guard.armed |= written.bytes > 0;
                    rest = &mut rest[written.chunks..];
                }
                Err(e) => {
                    guard.armed = false;
                    return Err(write_error(shared, e));
                }
            }
        }
        guard.armed = false;
        bump(&shared.counters.frames_sent);
        add(&shared.counters.bytes_sent, len64(len));
        Ok(())
    }

    /// Ends our direction of the stream after the frames already sent; the peer's
    /// receiver then sees `Ok(None)`.
    pub async fn finish(&self) -> Result<(), LinkError> {
        let mut state = self.state.lock().await;
        state.stream.finish().map_err(|_| LinkError::Broken)
    }

    /// The link's observer.
    pub fn handle(&self) -> &LinkHandle {
        &self.handle
    }
}

fn write_error(shared: &LinkShared, e: WriteError) -> LinkError {
    match e {
        WriteError::Stopped(code) => LinkError::Stopped(code.into_inner()),
        WriteError::ConnectionLost(e) => LinkError::Lost(shared.lost_reason(e)),
        WriteError::ClosedStream | WriteError::ZeroRttRejected => LinkError::Broken,
    }
}

/// The receiving half of a link.
pub struct LinkReceiver {
    handle: LinkHandle,
    stream: RecvStream,
    decoder: FrameDecoder,
}

impl fmt::Debug for LinkReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LinkReceiver").field(&self.handle).finish()
    }
}

impl LinkReceiver {
    /// The next frame; `Ok(None)` when the peer finished its stream cleanly.
    ///
    /// Cancel-safe: dropping the future loses no data. Oversized, empty and truncated
    /// frames are dropped and counted, never returned.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, LinkError> {
        let shared = &self.handle.shared;
        loop {
            if let Some(frame) = self.decoder.next_frame() {
                bump(&shared.counters.frames_received);
                add(&shared.counters.bytes_received, len64(frame.len()));
                return Ok(Some(frame));
            }
            match self.stream.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.decoder.push(chunk.bytes),
                Ok(None) => {
                    self.decoder.finish();
                    return Ok(None);
                }
                Err(e) => return Err(read_error(shared, e)),
            }
        }
    }

    /// The link's observer.
    pub fn handle(&self) -> &LinkHandle {
        &self.handle
    }
}

fn read_error(shared: &LinkShared, e: ReadError) -> LinkError {
    match e {
        ReadError::Reset(code) => LinkError::Reset(code.into_inner()),
        ReadError::ConnectionLost(e) => LinkError::Lost(shared.lost_reason(e)),
        ReadError::ClosedStream | ReadError::IllegalOrderedRead | ReadError::ZeroRttRejected => {
            LinkError::Broken
        }
    }
}

/// A direct link to a peer.
pub struct Link {
    sender: LinkSender,
    receiver: LinkReceiver,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Link").field(&self.sender.handle).finish()
    }
}

impl Link {
    /// Wraps an established connection and its frame stream.
    pub(crate) fn new(
        id: LinkId,
        role: LinkRole,
        conn: quinn::Connection,
        send: SendStream,
        recv: RecvStream,
        max_frame_len: usize,
    ) -> (Self, Arc<LinkShared>) {
        let counters = Arc::new(LinkCounters::default());
        let shared = Arc::new(LinkShared {
            id,
            role,
            conn,
            counters: counters.clone(),
            max_frame_len,
            lost_override: Mutex::new(None),
        });
        let handle = LinkHandle {
            shared: shared.clone(),
        };
        let link = Self {
            sender: LinkSender {
                handle: handle.clone(),
                state: Arc::new(tokio::sync::Mutex::new(SendState {
                    stream: send,
                    broken: false,
                })),
            },
            receiver: LinkReceiver {
                handle,
                stream: recv,
                decoder: FrameDecoder::new(max_frame_len, counters),
            },
        };
        (link, shared)
    }

    /// Splits into a cloneable sender and the receiver.
    pub fn split(self) -> (LinkSender, LinkReceiver) {
        (self.sender, self.receiver)
    }

    /// Sends one frame (see [`LinkSender::send_frame`]).
    pub async fn send_frame(&self, frame: Bytes) -> Result<(), LinkError> {
        self.sender.send_frame(frame).await
    }

    /// Receives one frame (see [`LinkReceiver::recv_frame`]).
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, LinkError> {
        self.receiver.recv_frame().await
    }

    /// The link's observer.
    pub fn handle(&self) -> &LinkHandle {
        &self.sender.handle
    }

    /// The link's id within its endpoint.
    pub fn id(&self) -> LinkId {
        self.handle().id()
    }

    /// Whether we dialled or accepted it.
    pub fn role(&self) -> LinkRole {
        self.handle().role()
    }

    /// The peer's current address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.handle().remote_addr()
    }

    /// Frame counters.
    pub fn stats(&self) -> LinkStats {
        self.handle().stats()
    }

    /// Closes the link.
    pub fn close(&self) {
        self.handle().close();
    }
}
