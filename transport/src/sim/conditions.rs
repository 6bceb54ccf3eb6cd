//! Link conditions of the simulated network: what a path between two hosts does to the
//! packets that cross it.

use std::time::Duration;

/// The smallest IP MTU the simulation allows: IPv6's minimum link MTU. It leaves 1232
/// bytes of UDP payload over IPv6 (1252 over IPv4), above QUIC's 1200-byte minimum.
pub const MIN_MTU: usize = 1280;

/// IPv4 + UDP header bytes: an IPv4 packet of `mtu` bytes carries `mtu - 28` of payload.
pub(crate) const IPV4_UDP_OVERHEAD: usize = 28;
/// IPv6 + UDP header bytes.
pub(crate) const IPV6_UDP_OVERHEAD: usize = 48;

/// What a path does to packets, per direction. Applied between two hosts (the default,
/// or an override for a pair).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConditions {
    /// One-way base delay. Default 10 ms: a short wide-area path.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per packet; packets can overtake
    /// each other when it exceeds their spacing. Default 0.
    pub jitter: Duration,
    /// Probability that a packet is lost, 0..=1. Default 0.
    pub loss: f64,
    /// Probability that a packet is delivered twice, 0..=1. Default 0.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_delay` so later ones overtake
    /// it, 0..=1. Default 0.
    pub reorder: f64,
    /// Extra delay of a reordered packet. Default 20 ms: twice the default latency, so
    /// a reordered packet arrives after several of its successors.
    pub reorder_delay: Duration,
    /// Bottleneck bandwidth in bits per second; 0 means unlimited. Default 0 so tests
    /// that do not care about bandwidth cost nothing to schedule.
    pub bandwidth_bps: u64,
    /// IP MTU in bytes; larger datagrams are dropped (as with the DF bit set), which is
    /// what QUIC's path MTU discovery expects. Default 1500 (Ethernet); values below
    /// [`MIN_MTU`] are raised to it.
    pub mtu: usize,
    /// Longest a packet may wait in the bottleneck queue before it is tail-dropped.
    /// Default 200 ms: a typical router buffer; only matters with a bandwidth limit.
    pub max_queue_delay: Duration,
}

impl Default for LinkConditions {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
            bandwidth_bps: 0,
            mtu: 1500,
            max_queue_delay: Duration::from_millis(200),
        }
    }
}

impl LinkConditions {
    /// The same conditions with probabilities clamped into 0..=1 (NaN becomes 0) and the
    /// MTU raised to [`MIN_MTU`], so no setting can make the simulation misbehave.
    pub(crate) fn sanitized(&self) -> Self {
        let p = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        Self {
            loss: p(self.loss),
            duplicate: p(self.duplicate),
            reorder: p(self.reorder),
            mtu: self.mtu.max(MIN_MTU),
            ..self.clone()
        }
    }

    /// Largest UDP payload that fits the MTU for a destination of this family.
    pub(crate) fn max_payload(&self, ipv6: bool) -> usize {
        let overhead = if ipv6 {
            IPV6_UDP_OVERHEAD
        } else {
            IPV4_UDP_OVERHEAD
        };
        self.mtu.saturating_sub(overhead)
    }

    /// Time to serialise `len` bytes onto the bottleneck.
    pub(crate) fn transmit_time(&self, len: usize) -> Duration {
        if self.bandwidth_bps == 0 {
            return Duration::ZERO;
        }
        let bits = u128::try_from(len).unwrap_or(u128::MAX) * 8;
        let nanos = bits * 1_000_000_000 / u128::from(self.bandwidth_bps);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_clamps() {
        let c = LinkConditions {
            loss: f64::NAN,
            duplicate: 3.0,
            reorder: -1.0,
            mtu: 100,
            ..LinkConditions::default()
        }
        .sanitized();
        assert_eq!(
            (c.loss, c.duplicate, c.reorder, c.mtu),
            (0.0, 1.0, 0.0, MIN_MTU)
        );
        assert!(c.max_payload(true) >= 1200);
    }

    #[test]
    fn transmit_time_follows_bandwidth() {
        let c = LinkConditions {
            bandwidth_bps: 8_000_000,
            ..LinkConditions::default()
        };
        assert_eq!(c.transmit_time(1000), Duration::from_millis(1));
        assert_eq!(
            LinkConditions::default().transmit_time(1000),
            Duration::ZERO
        );
    }
}
