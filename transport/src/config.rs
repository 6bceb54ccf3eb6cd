//! Transport configuration: every knob of the QUIC endpoint and its links, with the
//! reason for each default.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, VarInt};

use crate::error::ConfigError;

/// Rollover streams a peer may have open towards us at once. A sender opens one each
/// time our address changes and resets the one before, which frees its slot; four
/// cover a flapping network without letting a peer pin many streams.
pub const MAX_ROLLOVER_STREAMS: u32 = 4;

/// Everything the transport can be tuned with. `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// How often an idle connection sends a QUIC PING.
    ///
    /// Default 4 s: well under the 30 s UDP mapping timeout of the stingiest NATs seen in
    /// the wild, and often enough that a dead path is noticed within one idle timeout.
    pub keep_alive: Duration,
    /// How long a connection may hear nothing before it is declared lost.
    ///
    /// Default 15 s: more than three keep-alive intervals, so two lost PINGs in a row do
    /// not kill a healthy connection, yet short enough that the session layer learns of a
    /// dead path quickly.
    pub idle_timeout: Duration,
    /// Delay between starting two dial attempts to different candidates.
    ///
    /// Default 250 ms: RFC 8305's recommended "Connection Attempt Delay".
    pub dial_stagger: Duration,
    /// Overall deadline of one `dial_any` call (all candidates).
    ///
    /// Default 10 s: a QUIC handshake retransmits its first flight after 1 s, then 2 s,
    /// then 4 s; 10 s leaves room for three tries, and stays below the idle timeout.
    pub dial_timeout: Duration,
    /// Time an incoming connection has to finish its handshake and open its frame stream.
    ///
    /// Default 5 s: generous for any real RTT; a peer slower than this is either gone or
    /// hostile, and holds one of `max_pending_accepts` slots meanwhile.
    pub accept_timeout: Duration,
    /// Largest frame payload accepted or sent on a link, in bytes; a length prefix above
    /// it is rejected before anything is allocated for it.
    ///
    /// Default [`tether_protocol::MAX_FRAME_LEN`]: every payload a link carries is one
    /// encoded wire frame, which the codec never produces nor accepts above that size, so
    /// a larger payload could only be dropped after being buffered. The limit counts the
    /// payload alone; the 4-byte length prefix in front of it
    /// ([`FRAME_HEADER_LEN`](crate::framing::FRAME_HEADER_LEN)) is not part of the frame.
    pub max_frame_len: usize,
    /// Bytes the peer may send on our stream before we read them (QUIC stream flow
    /// control).
    ///
    /// Default 2 MiB: larger than one maximum frame, so a full frame never waits for a
    /// window update, and it sustains about 160 Mbit/s on a 100 ms RTT path (window / RTT),
    /// more than mobile paths give, while bounding what one peer can make us buffer.
    pub stream_receive_window: u32,
    /// Bytes the peer may have in flight on the whole connection (QUIC connection flow
    /// control).
    ///
    /// Default 4 MiB: twice the stream window (there is one data stream; the rest is
    /// headroom for stream setup), and the hard cap on memory one peer can pin.
    pub connection_receive_window: u32,
    /// Bytes we keep buffered for sending before `send_frame` waits.
    ///
    /// Default 8 MiB: several maximum frames, so a writer rarely blocks on a fast path,
    /// while a stalled path pushes back on the session layer instead of growing memory.
    pub send_window: u64,
    /// Incoming connections that may be in their handshake at once; more are refused.
    ///
    /// Default 64: a device has a handful of peers; 64 is room for reconnect storms and
    /// happy-eyeballs duplicates, and a hard cap against handshake floods.
    pub max_pending_accepts: usize,
    /// Of those, how many one source address may hold at once; more from it are refused.
    ///
    /// Default 8: a device dials a peer a few times at once at most (a connect, a
    /// migration, a probe, a standby link), so 8 leaves room for several devices behind
    /// one NAT address, while one address opening half-done connections can take only
    /// an eighth of the slots and never lock well-behaved peers out.
    pub max_pending_accepts_per_source: usize,
    /// Seed for quinn's internal randomness (connection ids, packet number skips).
    ///
    /// `None` (default) uses the OS RNG. Tests on the simulated network set it so that
    /// the same seed gives the same packet log.
    pub rng_seed: Option<[u8; 32]>,
    /// Whether QUIC searches each path for packets larger than its 1200-byte minimum
    /// (DPLPMTUD, up to 1452 bytes).
    ///
    /// Default on: bulk transfers need about a fifth fewer packets. A migration keeps
    /// its 1.5 RTT: quinn's first probe on a path the peer just moved to is paid for by
    /// the mover's padding after its migration ping (see DirectConnection's
    /// `MIGRATION_PADDING_LEN`).
    pub mtu_discovery: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(4),
            idle_timeout: Duration::from_secs(15),
            dial_stagger: Duration::from_millis(250),
            dial_timeout: Duration::from_secs(10),
            accept_timeout: Duration::from_secs(5),
            max_frame_len: tether_protocol::MAX_FRAME_LEN,
            stream_receive_window: 2 * 1024 * 1024,
            connection_receive_window: 4 * 1024 * 1024,
            send_window: 8 * 1024 * 1024,
            max_pending_accepts: 64,
            max_pending_accepts_per_source: 8,
            rng_seed: None,
            mtu_discovery: true,
        }
    }
}

impl TransportConfig {
    /// A configuration for deterministic tests: the defaults with quinn's RNG seeded.
    pub fn seeded(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_be_bytes());
        Self {
            rng_seed: Some(bytes),
            ..Self::default()
        }
    }

    /// Checks the values that quinn or the framing would otherwise reject later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(ConfigError::KeepAliveNotBelowIdleTimeout);
        }
        IdleTimeout::try_from(self.idle_timeout).map_err(|_| ConfigError::IdleTimeoutTooLong)?;
        if self.max_frame_len == 0 || u32::try_from(self.max_frame_len).is_err() {
            return Err(ConfigError::BadMaxFrameLen(self.max_frame_len));
        }
        if self.max_pending_accepts == 0 || self.max_pending_accepts_per_source == 0 {
            return Err(ConfigError::NoPendingAccepts);
        }
        if self.dial_timeout.is_zero() || self.accept_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(())
    }

    /// quinn's transport parameters for one side of our links.
    ///
    /// `accept_streams` is how many bidirectional streams the peer may open towards us:
    /// 1 on the accepting side (the dialler opens the frame stream), 0 on the dialling
    /// side. Unidirectional streams are the rollover streams (at most
    /// [`MAX_ROLLOVER_STREAMS`] open at once); QUIC datagrams are never used. A peer
    /// that opens more streams is held back by QUIC flow control, not by luck.
    ///
    /// MTU discovery follows [`TransportConfig::mtu_discovery`] (quinn's defaults).
    pub(crate) fn quinn_transport(
        &self,
        accept_streams: u32,
    ) -> Result<Arc<quinn::TransportConfig>, ConfigError> {
        self.validate()?;
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| ConfigError::IdleTimeoutTooLong)?;
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.connection_receive_window))
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(VarInt::from_u32(accept_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(MAX_ROLLOVER_STREAMS))
            .datagram_receive_buffer_size(None)
            .mtu_discovery_config(self.mtu_discovery.then(quinn::MtuDiscoveryConfig::default));
        Ok(Arc::new(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TransportConfig::default().validate().unwrap();
        TransportConfig::seeded(7).validate().unwrap();
    }

    #[test]
    fn keep_alive_must_be_below_idle_timeout() {
        let c = TransportConfig {
            keep_alive: Duration::from_secs(20),
            ..TransportConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::KeepAliveNotBelowIdleTimeout)
        ));
    }

    #[test]
    fn frame_len_must_fit_the_prefix() {
        let c = TransportConfig {
            max_frame_len: 0,
            ..TransportConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::BadMaxFrameLen(0))));
    }
}
