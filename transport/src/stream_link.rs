//! Frames over any byte stream: the relay path's face.
//!
//! The relay protocol (addressing, authentication to the relay) comes later; what is
//! fixed here is that the relay path carries the same length-delimited sealed frames as
//! a direct link and presents the same [`FrameSink`] / [`FrameSource`] face, whatever
//! stream it rides on (a QUIC stream to the relay, TCP, or an in-memory pipe in tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::LinkError;
use crate::frame_link::{FrameFuture, FrameLink, FrameSink, FrameSource, PathInfo};
use crate::framing::{frame_header, FrameDecoder};
use crate::stats::{add, bump, len64, LinkCounters, LinkStats};

/// Bytes requested from the stream per read: 64 KiB amortises the read call over many
/// small frames without holding much memory per link.
const READ_SIZE: usize = 64 * 1024;

/// A framed byte stream, before it is split.
#[derive(Debug)]
pub struct StreamLink<R, W> {
    sink: StreamFrameSink<W>,
    source: StreamFrameSource<R>,
}

impl<R, W> StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// Frames `reader`/`writer` as a path described by `path`.
    pub fn new(reader: R, writer: W, path: PathInfo, max_frame_len: usize) -> Self {
        let counters = Arc::new(LinkCounters::default());
        Self {
            sink: StreamFrameSink {
                writer: tokio::sync::Mutex::new(writer),
                broken: AtomicBool::new(false),
                path: path.clone(),
                max_frame_len,
                counters: counters.clone(),
            },
            source: StreamFrameSource {
                reader,
                decoder: FrameDecoder::new(max_frame_len, counters.clone()),
                path,
                counters,
            },
        }
    }

    /// Splits into the sending and receiving halves.
    pub fn split(self) -> (StreamFrameSink<W>, StreamFrameSource<R>) {
        (self.sink, self.source)
    }
}

/// The sending half of a [`StreamLink`].
#[derive(Debug)]
pub struct StreamFrameSink<W> {
    writer: tokio::sync::Mutex<W>,
    broken: AtomicBool,
    path: PathInfo,
    max_frame_len: usize,
    counters: Arc<LinkCounters>,
}

/// Marks the sink broken if a write is dropped half-way through a frame.
struct BreakOnDrop<'a> {
    broken: &'a AtomicBool,
    armed: bool,
}

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> StreamFrameSink<W> {
    /// Sends one frame; frames from concurrent callers never interleave. Cancelling
    /// half-way breaks the sink (later sends fail with [`LinkError::Broken`]).
    pub async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        let header = frame_header(frame.len(), self.max_frame_len)?;
        let mut writer = self.writer.lock().await;
        if self.broken.load(Ordering::Relaxed) {
            return Err(LinkError::Broken);
        }
        let mut guard = BreakOnDrop {
            broken: &self.broken,
            armed: true,
        };
        let io = async {
            writer.write_all(&header).await?;
            writer.write_all(&frame).await?;
            writer.flush().await
        };
        let result = io.await;
        guard.armed = result.is_err();
        drop(guard);
        result.map_err(|e| LinkError::Io(e.to_string()))?;
        bump(&self.counters.frames_sent);
        add(&self.counters.bytes_sent, len64(frame.len()));
        Ok(())
    }

    /// Counters shared by both halves.
    pub fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }
}

/// The receiving half of a [`StreamLink`].
#[derive(Debug)]
pub struct StreamFrameSource<R> {
    reader: R,
    decoder: FrameDecoder,
    path: PathInfo,
    counters: Arc<LinkCounters>,
}

impl<R: AsyncRead + Unpin + Send> StreamFrameSource<R> {
    /// The next frame; `Ok(None)` at end of stream. Cancel-safe: bytes already read
    /// stay in the decoder.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        loop {
            if let Some(frame) = self.decoder.next_frame() {
                bump(&self.counters.frames_received);
                add(&self.counters.bytes_received, len64(frame.len()));
                return Ok(Some(frame));
            }
            let mut buf = BytesMut::with_capacity(READ_SIZE);
            let n = self
                .reader
                .read_buf(&mut buf)
                .await
                .map_err(|e| LinkError::Io(e.to_string()))?;
            if n == 0 {
                self.decoder.finish();
                return Ok(None);
            }
            self.decoder.push(buf.freeze());
        }
    }

    /// Counters shared by both halves.
    pub fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> FrameSink for StreamFrameSink<W> {
    fn send_frame(&self, frame: Bytes) -> FrameFuture<'_, ()> {
        Box::pin(self.send(frame))
    }

    fn path(&self) -> PathInfo {
        self.path.clone()
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameSource for StreamFrameSource<R> {
    fn recv_frame(&mut self) -> FrameFuture<'_, Option<Bytes>> {
        Box::pin(self.recv())
    }

    fn path(&self) -> PathInfo {
        self.path.clone()
    }
}

impl<R, W> FrameLink for StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    fn path(&self) -> PathInfo {
        self.sink.path.clone()
    }

    fn into_halves(self: Box<Self>) -> (Arc<dyn FrameSink>, Box<dyn FrameSource>) {
        let (sink, source) = self.split();
        (Arc::new(sink), Box::new(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_link::PathKind;

    fn relay_path() -> PathInfo {
        PathInfo {
            kind: PathKind::Relay,
            remote: None,
            label: "test relay".into(),
        }
    }

    #[tokio::test]
    async fn relay_shaped_link_carries_frames_through_the_common_traits() {
        let (a, b) = tokio::io::duplex(1024);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let left: Box<dyn FrameLink> = Box::new(StreamLink::new(ar, aw, relay_path(), 1 << 16));
        let right: Box<dyn FrameLink> = Box::new(StreamLink::new(br, bw, relay_path(), 1 << 16));
        assert_eq!(left.path().kind, PathKind::Relay);
        let (sink, left_source) = left.into_halves();
        let (_right_sink, mut source) = right.into_halves();
        let frames: Vec<Bytes> = (1..=50u8)
            .map(|i| Bytes::from(vec![i; usize::from(i) * 97]))
            .collect();
        let sender = {
            let sink = sink.clone();
            let frames = frames.clone();
            tokio::spawn(async move {
                for f in frames {
                    sink.send_frame(f).await.unwrap();
                }
            })
        };
        for expected in &frames {
            assert_eq!(source.recv_frame().await.unwrap().as_ref(), Some(expected));
        }
        sender.await.unwrap();
        assert_eq!(
            sink.send_frame(Bytes::new()).await,
            Err(LinkError::EmptyFrame)
        );
        // The far end sees end-of-stream once both halves of this end are gone.
        drop(sink);
        drop(left_source);
        assert_eq!(source.recv_frame().await.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_on_a_stream_is_dropped_and_counted() {
        let (mut raw, b) = tokio::io::duplex(1024);
        let (br, bw) = tokio::io::split(b);
        let (_sink, mut source) = StreamLink::new(br, bw, relay_path(), 100).split();
        let mut wire = Vec::new();
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        wire.extend_from_slice(&[7u8; 300]);
        raw.write_all(&wire).await.unwrap();
        drop(raw);
        assert_eq!(source.recv().await.unwrap(), None);
        let stats = source.stats();
        assert_eq!(stats.oversized_frames_dropped, 1);
        assert_eq!(stats.truncated_frames_dropped, 1);
        assert_eq!(stats.frames_received, 0);
    }
}
