//! Length-delimited framing, sans IO: a u32 big-endian length prefix, then the payload.
//!
//! The same framing is used on the direct QUIC stream and on relay streams, so it is
//! kept free of any I/O: [`FrameDecoder`] is fed byte chunks as they arrive and yields
//! whole frames. A length above the maximum is skipped without allocating, a zero
//! length is dropped, and a partial frame at end of stream is dropped; each is counted.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::LinkError;
use crate::stats::{bump, LinkCounters};

/// Size of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Encodes the length prefix of a frame of `len` bytes, refusing lengths the peer would
/// drop (empty or above `max`).
pub fn frame_header(len: usize, max: usize) -> Result<[u8; FRAME_HEADER_LEN], LinkError> {
    if len == 0 {
        return Err(LinkError::EmptyFrame);
    }
    match u32::try_from(len) {
        Ok(n) if len <= max => Ok(n.to_be_bytes()),
        _ => Err(LinkError::FrameTooLarge { len, max }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 4-byte prefix.
    Header,
    /// Waiting for `len` payload bytes.
    Body { len: usize },
    /// Discarding the payload of an oversized frame.
    Skip { remaining: u64 },
}

/// Reassembles frames from arbitrarily split byte chunks.
///
/// Memory use is bounded by the maximum frame length plus one chunk: payload is only
/// gathered once the whole frame has arrived, and oversized frames are discarded as
/// their bytes come in. A frame that arrives inside a single chunk is returned without
/// copying.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: usize,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    state: State,
    counters: Arc<LinkCounters>,
}

impl FrameDecoder {
    /// A decoder that accepts frames up to `max_frame_len` bytes and counts drops into
    /// `counters`.
    pub(crate) fn new(max_frame_len: usize, counters: Arc<LinkCounters>) -> Self {
        Self {
            max_frame_len,
            chunks: VecDeque::new(),
            buffered: 0,
            state: State::Header,
            counters,
        }
    }

    /// A standalone decoder with its own counters (see [`FrameDecoder::stats`]).
    pub fn standalone(max_frame_len: usize) -> Self {
        Self::new(max_frame_len, Arc::default())
    }

    /// Drop counters of this decoder.
    pub fn stats(&self) -> crate::stats::LinkStats {
        self.counters.snapshot()
    }

    /// Feeds bytes received from the stream.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// The next complete frame, if one has fully arrived.
    pub fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            match self.state {
                State::Header => {
                    if self.buffered < FRAME_HEADER_LEN {
                        return None;
                    }
                    let mut prefix = [0u8; FRAME_HEADER_LEN];
                    self.copy_out(&mut prefix);
                    let len = u32::from_be_bytes(prefix);
                    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
                    if len == 0 {
                        bump(&self.counters.empty_frames_dropped);
                        tracing::debug!("dropping empty frame");
                    } else if len_usize > self.max_frame_len {
                        bump(&self.counters.oversized_frames_dropped);
                        tracing::debug!(len, max = self.max_frame_len, "skipping oversized frame");
                        self.state = State::Skip {
                            remaining: u64::from(len),
                        };
                    } else {
                        self.state = State::Body { len: len_usize };
                    }
                }
                State::Body { len } => {
                    if self.buffered < len {
                        return None;
                    }
                    self.state = State::Header;
                    return Some(self.take(len));
                }
                State::Skip { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.buffered);
                    self.discard(n);
                    let left = remaining - crate::stats::len64(n);
                    if left > 0 {
                        self.state = State::Skip { remaining: left };
                        return None;
                    }
                    self.state = State::Header;
                }
            }
        }
    }

    /// Declares the end of the stream: a partial frame still buffered is dropped and
    /// counted. Returns whether the stream ended cleanly on a frame boundary.
    pub fn finish(&mut self) -> bool {
        let clean = self.state == State::Header && self.buffered == 0;
        if !clean {
            bump(&self.counters.truncated_frames_dropped);
            tracing::debug!(
                buffered = self.buffered,
                "dropping truncated frame at end of stream"
            );
        }
        self.chunks.clear();
        self.buffered = 0;
        self.state = State::Header;
        clean
    }

    /// Copies exactly `out.len()` buffered bytes into `out`, consuming them.
    fn copy_out(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = front.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&front[..n]);
            front.advance(n);
            filled += n;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.buffered -= filled;
    }

    /// Takes `len` buffered bytes (callers check `len <= buffered`), zero-copy when they
    /// sit in one chunk.
    fn take(&mut self, len: usize) -> Bytes {
        if let Some(front) = self.chunks.front_mut() {
            if front.len() >= len {
                let frame = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.buffered -= len;
                return frame;
            }
        }
        let mut out = BytesMut::with_capacity(len);
        while out.len() < len {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = front.len().min(len - out.len());
            out.extend_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.buffered -= out.len();
        out.freeze()
    }

    /// Discards `n` buffered bytes.
    fn discard(&mut self, mut n: usize) {
        self.buffered -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = front.len().min(n);
            front.advance(k);
            n -= k;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&frame_header(f.len(), usize::MAX >> 1).unwrap());
            out.extend_from_slice(f);
        }
        out
    }

    fn decode_all(dec: &mut FrameDecoder) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| dec.next_frame())
            .map(|b| b.to_vec())
            .collect()
    }

    #[test]
    fn header_refuses_empty_and_oversized() {
        assert_eq!(frame_header(0, 10), Err(LinkError::EmptyFrame));
        assert_eq!(
            frame_header(11, 10),
            Err(LinkError::FrameTooLarge { len: 11, max: 10 })
        );
        assert_eq!(frame_header(10, 10), Ok([0, 0, 0, 10]));
    }

    #[test]
    fn single_chunk_frame_is_zero_copy() {
        let wire = Bytes::from(encode(&[b"hello".to_vec()]));
        let mut dec = FrameDecoder::standalone(100);
        dec.push(wire.clone());
        let frame = dec.next_frame().unwrap();
        assert_eq!(&frame[..], b"hello");
        // Same allocation as the input chunk.
        assert_eq!(frame.as_ptr(), wire[4..].as_ptr());
    }

    #[test]
    fn oversized_frame_is_skipped_and_counted_then_decoding_resumes() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&101u32.to_be_bytes());
        wire.extend_from_slice(&[0xAA; 101]);
        wire.extend_from_slice(&0u32.to_be_bytes());
        wire.extend_from_slice(&encode(&[b"ok".to_vec()]));
        let mut dec = FrameDecoder::standalone(100);
        for b in wire.chunks(7) {
            dec.push(Bytes::copy_from_slice(b));
        }
        assert_eq!(decode_all(&mut dec), vec![b"ok".to_vec()]);
        let s = dec.stats();
        assert_eq!(s.oversized_frames_dropped, 1);
        assert_eq!(s.empty_frames_dropped, 1);
        assert!(dec.finish());
    }

    #[test]
    fn huge_length_prefix_allocates_nothing() {
        let mut dec = FrameDecoder::standalone(100);
        dec.push(Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]));
        assert_eq!(dec.next_frame(), None);
        assert_eq!(dec.buffered, 0);
        assert_eq!(dec.stats().oversized_frames_dropped, 1);
        assert!(!dec.finish());
        assert_eq!(dec.stats().truncated_frames_dropped, 1);
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same_frames(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..20),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let wire = encode(&frames);
            let mut dec = FrameDecoder::standalone(1000);
            let mut out = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - pos);
                dec.push(Bytes::copy_from_slice(&wire[pos..pos + n]));
                out.extend(decode_all(&mut dec));
                pos += n;
                i += 1;
            }
            prop_assert_eq!(out, frames);
            prop_assert!(dec.finish());
        }

        #[test]
        fn garbage_never_panics(garbage in prop::collection::vec(any::<u8>(), 0..2000)) {
            let mut dec = FrameDecoder::standalone(256);
            for chunk in garbage.chunks(13) {
                dec.push(Bytes::copy_from_slice(chunk));
                while let Some(f) = dec.next_frame() {
                    prop_assert!(!f.is_empty() && f.len() <= 256);
                }
            }
            dec.finish();
        }
    }
}
