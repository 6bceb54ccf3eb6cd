//! The face every path presents to the session layer: send a sealed frame, receive a
//! sealed frame, and say what kind of path it is.
//!
//! A direct QUIC [`Link`] and the relay path (a
//! [`StreamLink`](crate::stream_link::StreamLink) over the relay's stream) both
//! implement these traits, so the session layer can hold `Arc<dyn FrameSink>` /
//! `Box<dyn FrameSource>` and never care which path a frame took. The same sealed frame
//! may travel any path; ordering and deduplication across paths are the session
//! layer's job (its nonces and replay window).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::LinkError;
use crate::link::{Link, LinkReceiver, LinkSender};

/// Which kind of path a frame takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    /// Straight to the peer over QUIC.
    Direct,
    /// Through the relay server.
    Relay,
}

/// A description of a path, for logs, status output and path selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// Direct or relay.
    pub kind: PathKind,
    /// The address at the other end of the socket: the peer's for a direct path (it
    /// changes when the peer migrates), the relay's for a relay path, if known.
    pub remote: Option<SocketAddr>,
    /// Free-form detail (relay name, link id).
    pub label: String,
}

impl fmt::Display for PathInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        };
        match self.remote {
            Some(addr) => write!(f, "{kind} {addr} ({})", self.label),
            None => write!(f, "{kind} ({})", self.label),
        }
    }
}

/// A boxed future returned by the object-safe frame traits.
pub type FrameFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LinkError>> + Send + 'a>>;

/// Sends sealed frames down one path. Shared by any number of writers.
pub trait FrameSink: Send + Sync {
    /// Sends one sealed frame, waiting while the path pushes back.
    fn send_frame(&self, frame: Bytes) -> FrameFuture<'_, ()>;
    /// What this path is.
    fn path(&self) -> PathInfo;
}

/// Receives sealed frames from one path, in the order the path delivers them.
pub trait FrameSource: Send {
    /// The next frame; `Ok(None)` when the path ended cleanly. Cancel-safe.
    fn recv_frame(&mut self) -> FrameFuture<'_, Option<Bytes>>;
    /// What this path is.
    fn path(&self) -> PathInfo;
}

/// A whole path that splits into its two halves.
pub trait FrameLink: Send {
    /// What this path is.
    fn path(&self) -> PathInfo;
    /// Splits into a shareable sink and the source.
    fn into_halves(self: Box<Self>) -> (Arc<dyn FrameSink>, Box<dyn FrameSource>);
}

fn direct_path(handle: &crate::LinkHandle) -> PathInfo {
    PathInfo {
        kind: PathKind::Direct,
        remote: Some(handle.remote_addr()),
        label: handle.id().to_string(),
    }
}

impl FrameSink for LinkSender {
    fn send_frame(&self, frame: Bytes) -> FrameFuture<'_, ()> {
        Box::pin(LinkSender::send_frame(self, frame))
    }

    fn path(&self) -> PathInfo {
        direct_path(self.handle())
    }
}

impl FrameSource for LinkReceiver {
    fn recv_frame(&mut self) -> FrameFuture<'_, Option<Bytes>> {
        Box::pin(LinkReceiver::recv_frame(self))
    }

    fn path(&self) -> PathInfo {
        direct_path(self.handle())
    }
}

impl FrameLink for Link {
    fn path(&self) -> PathInfo {
        direct_path(self.handle())
    }

    fn into_halves(self: Box<Self>) -> (Arc<dyn FrameSink>, Box<dyn FrameSource>) {
        let (sender, receiver) = self.split();
        (Arc::new(sender), Box::new(receiver))
    }
}
