//! A direct link: one QUIC connection carrying length-delimited frames (u32 big-endian
//! length, then the sealed frame) on one bidirectional stream, and, after the peer
//! changed address, on the fresh unidirectional streams each side moves its sending to
//! (a stream rollover, see [`LinkSender::send_frame`]).
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
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::{LinkError, LostReason};
use crate::framing::{frame_header, FrameDecoder};
use crate::stats::{add, bump, len64, LinkCounters, LinkStats};
use crate::sync::lock;
use tether_protocol::LinkId;

/// First bytes the dialler writes on the frame stream. QUIC only announces a stream
/// once data flows on it, so the dialler must write something; a magic value also lets
/// the acceptor reject streams that are not Tether links.
pub(crate) const LINK_PREAMBLE: [u8; 4] = *b"TLK1";

/// First bytes of a rollover stream: lets the receiver reject streams that are not.
pub(crate) const ROLLOVER_PREAMBLE: [u8; 4] = *b"TLR1";

/// Stream reset code of a stream its sender left for a fresh one: not the end of the
/// link, only of that stream.
const ROLLED_OVER: u32 = 1;

/// Frames a link's readers hand over ahead of the session layer: one (plus the one each
/// stream's reader waits to hand over), so a session layer that does not keep up pushes
/// back on QUIC flow control at once, and each stream pins at most two frames beyond
/// its stream window.
const READ_AHEAD_FRAMES: usize = 1;

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
    /// The session layer said goodbye: the close's reason is its farewell frame.
    pub(crate) const FAREWELL: u32 = 4;
}

/// Longest farewell frame: QUIC carries the close reason in one packet, and 1000 bytes
/// leave room for the packet's own headers within the 1200 every path carries.
pub const MAX_FAREWELL_LEN: usize = 1000;

/// Bytes of a link's channel binding ([`LinkHandle::channel_binding`]): the 32 the
/// server authentication proofs cover (tether-protocol's `CHANNEL_BINDING_LEN`).
pub const CHANNEL_BINDING_LEN: usize = tether_protocol::CHANNEL_BINDING_LEN;

/// TLS exporter label of the channel binding; versioned so a future use of the
/// exporter for something else cannot collide with it.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-tether channel binding v1";

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
    /// UDP payload bytes sent on the connection (every path): with `lost_bytes`, the
    /// share of data lost, which ack-only packets (small, never declared lost) do not
    /// dilute as they do a share of packets.
    pub sent_bytes: u64,
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

    /// The connection's channel binding: [`CHANNEL_BINDING_LEN`] bytes of the TLS 1.3
    /// exporter (RFC 8446 §7.5) under [`CHANNEL_BINDING_LABEL`]. Both ends of one QUIC
    /// connection get the same bytes, and every other connection (the two of a man in
    /// the middle included) different ones, so a proof computed over it is worthless
    /// on any other connection. Not secret from the two ends. None only if the TLS
    /// layer cannot export (it always can once the handshake is done, which it is for
    /// every link).
    pub fn channel_binding(&self) -> Option<[u8; CHANNEL_BINDING_LEN]> {
        let mut out = [0_u8; CHANNEL_BINDING_LEN];
        self.shared
            .conn
            .export_keying_material(&mut out, CHANNEL_BINDING_LABEL, b"")
            .ok()
            .map(|()| out)
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
            sent_bytes: s.udp_tx.bytes,
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

    /// Closes the link with a farewell: `frame` travels in the QUIC close itself (one
    /// packet, resent by QUIC while the connection drains), and the peer reads it as
    /// [`LostReason::Farewell`]. Pending stream data may be lost, as with
    /// [`LinkHandle::close`]. A frame over [`MAX_FAREWELL_LEN`] closes without it.
    pub fn close_with_farewell(&self, frame: &[u8]) {
        if frame.len() > MAX_FAREWELL_LEN {
            self.close();
            return;
        }
        self.shared
            .close_with(LostReason::ClosedLocally, close_code::FAREWELL, frame);
    }
}

struct SendState {
    stream: SendStream,
    broken: bool,
    /// The peer's address when `stream` was opened.
    remote: SocketAddr,
    /// `stream` is a rollover stream whose preamble is not written yet.
    preamble_pending: bool,
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
    /// When the peer's address changed since the current stream was opened, the frame
    /// goes on a fresh stream and the old one is reset. Bytes sent to the old address
    /// shortly before the peer moved are lost, and QUIC notices that only a round trip
    /// after the new path answers; on the old stream they would hold back every later
    /// frame until then. The session layer resends what such a reset may have cost.
    ///
    /// Cancelling this future before any byte of the frame was written is harmless;
    /// cancelling it half-way through a frame closes the link (the peer could never
    /// find the next frame boundary) and later sends fail with [`LinkError::Broken`].
    pub async fn send_frame(&self, frame: Bytes) -> Result<(), LinkError> {
        let shared = &self.handle.shared;
        let header = frame_header(frame.len(), shared.max_frame_len)?;
        let len = frame.len();
        let mut state = self.state.lock().await;
        if state.broken {
            return Err(LinkError::Broken);
        }
        let remote = shared.conn.remote_address();
        if remote != state.remote {
            let fresh = shared
                .conn
                .open_uni()
                .await
                .map_err(|e| LinkError::Lost(shared.lost_reason(e)))?;
            let mut old = std::mem::replace(&mut state.stream, fresh);
            // Already finished or reset streams refuse this; nothing is lost then.
            let _ = old.reset(VarInt::from_u32(ROLLED_OVER));
            state.remote = remote;
            state.preamble_pending = true;
            bump(&shared.counters.stream_rollovers);
        }
        let SendState {
            stream,
            broken,
            preamble_pending,
            ..
        } = &mut *state;
        let mut guard = CancelGuard {
            broken,
            shared,
            armed: false,
        };
        let preamble = if *preamble_pending {
            Bytes::from_static(&ROLLOVER_PREAMBLE)
        } else {
            Bytes::new()
        };
        let mut chunks = [preamble, Bytes::copy_from_slice(&header), frame];
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
        *preamble_pending = false;
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

/// What a stream reader hands the receiver.
enum StreamEvent {
    Frame(Bytes),
    /// The peer finished its stream: the link ended cleanly.
    Finished,
    Failed(LinkError),
}

/// The receiving half of a link: frames from the frame stream and from every rollover
/// stream the peer opens, each read by its own task (dropping the receiver stops them).
pub struct LinkReceiver {
    handle: LinkHandle,
    events: mpsc::Receiver<StreamEvent>,
    done: bool,
    _readers: JoinSet<()>,
}

impl fmt::Debug for LinkReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LinkReceiver").field(&self.handle).finish()
    }
}

impl LinkReceiver {
    fn start(handle: LinkHandle, recv: RecvStream) -> Self {
        let (tx, events) = mpsc::channel(READ_AHEAD_FRAMES);
        let mut readers = JoinSet::new();
        let shared = handle.shared.clone();
        readers.spawn(read_stream(recv, false, tx.clone(), shared.clone()));
        readers.spawn(accept_rollovers(tx, shared));
        Self {
            handle,
            events,
            done: false,
            _readers: readers,
        }
    }

    /// The next frame; `Ok(None)` when the peer finished its stream cleanly.
    ///
    /// Frames of one stream come in order; after a rollover, frames of the new stream
    /// may overtake the last ones of the old (the session layer orders by its own
    /// sequence numbers). Cancel-safe: dropping the future loses no data. Oversized,
    /// empty and truncated frames are dropped and counted, never returned.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, LinkError> {
        if self.done {
            return Ok(None);
        }
        let shared = &self.handle.shared;
        match self.events.recv().await {
            Some(StreamEvent::Frame(frame)) => {
                bump(&shared.counters.frames_received);
                add(&shared.counters.bytes_received, len64(frame.len()));
                Ok(Some(frame))
            }
            Some(StreamEvent::Finished) => {
                self.done = true;
                Ok(None)
            }
            Some(StreamEvent::Failed(error)) => Err(error),
            // Every reader ended without a verdict: the connection is gone.
            None => Err(LinkError::Lost(
                shared.lost_reason(shared.conn.closed().await),
            )),
        }
    }

    /// The link's observer.
    pub fn handle(&self) -> &LinkHandle {
        &self.handle
    }
}

/// Reads frames from one stream until it ends. A rollover stream must start with
/// [`ROLLOVER_PREAMBLE`]; one that does not closes the connection (not a Tether peer).
async fn read_stream(
    mut stream: RecvStream,
    rollover: bool,
    tx: mpsc::Sender<StreamEvent>,
    shared: Arc<LinkShared>,
) {
    if rollover {
        let mut preamble = [0_u8; ROLLOVER_PREAMBLE.len()];
        if stream.read_exact(&mut preamble).await.is_err() || preamble != ROLLOVER_PREAMBLE {
            shared.close_with(
                LostReason::ClosedLocally,
                close_code::BAD_PREAMBLE,
                b"bad rollover stream",
            );
            return;
        }
    }
    let mut decoder = FrameDecoder::new(shared.max_frame_len, shared.counters.clone());
    loop {
        while let Some(frame) = decoder.next_frame() {
            if tx.send(StreamEvent::Frame(frame)).await.is_err() {
                return;
            }
        }
        let event = match stream.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                decoder.push(chunk.bytes);
                continue;
            }
            Ok(None) => {
                decoder.finish();
                StreamEvent::Finished
            }
            // The sender moved to a fresh stream; this one simply ends.
            Err(ReadError::Reset(code)) if code == VarInt::from_u32(ROLLED_OVER) => return,
            Err(e) => StreamEvent::Failed(read_error(&shared, e)),
        };
        let _ = tx.send(event).await;
        return;
    }
}

/// Accepts the rollover streams the peer opens and reads each one.
async fn accept_rollovers(tx: mpsc::Sender<StreamEvent>, shared: Arc<LinkShared>) {
    let mut readers = JoinSet::new();
    while let Ok(stream) = shared.conn.accept_uni().await {
        while readers.try_join_next().is_some() {}
        readers.spawn(read_stream(stream, true, tx.clone(), shared.clone()));
    }
    // The connection ended: readers see it too and report it.
    while readers.join_next().await.is_some() {}
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
        let remote = shared.conn.remote_address();
        let link = Self {
            sender: LinkSender {
                handle: handle.clone(),
                state: Arc::new(tokio::sync::Mutex::new(SendState {
                    stream: send,
                    broken: false,
                    remote,
                    preamble_pending: false,
                })),
            },
            receiver: LinkReceiver::start(handle, recv),
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
