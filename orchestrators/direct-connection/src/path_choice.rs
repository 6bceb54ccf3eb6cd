//! Which path a session on the relay takes, by measured quality, and how often it looks
//! for a direct one.
//!
//! - **Relay → direct.** A direct link that answers its path challenge while the session
//!   runs over the relay (no connect or migration in progress) is taken unless its
//!   round trip (the challenge's) exceeds the relay's smoothed round trip by more than
//!   [`DIRECT_SLOWER_TOLERANCE_MS`]: a direct path spares the relay and usually wins,
//!   but one clearly slower than the relay is left unused (and recorded for `status`,
//!   [`DeclinedDirect`](crate::state::DeclinedDirect)); traffic arriving on that link
//!   does not move the session either. During a connect or a migration
//!   the first path that answers is taken, as before: recovering fast comes first.
//! - **Direct → relay** happens only when the direct path is lost (liveness), never on
//!   a round-trip comparison: the relay's round trip is not measured while the session
//!   is direct, so a comparison would use a stale figure. Together with the tolerance
//!   this is the hysteresis: no round-trip change alone moves a session back and forth.
//! - **Probes back off.** While on the relay every candidate is dialled on binding it,
//!   then after [`Limits::direct_probe_interval`](crate::Limits), doubling with each
//!   round up to [`MAX_PROBE_DOUBLINGS`] times; news of the peer's addresses (a new
//!   `Candidates` frame, a migration ping) or binding the relay again start over. A
//!   peer behind a NAT no hole crosses costs a round of dials every 80 s, not every 5 s.

use crate::core::DirectConnection;
use crate::state::{DeclinedDirect, Via};
use std::time::{Duration, Instant};
use tether_protocol::{DeviceId, LinkId};

/// How much longer than the relay's a direct path's round trip may be and still be
/// taken over it (iroh switches between paths only for 10 ms or more, for the same
/// reason: measurement noise must not decide).
pub const DIRECT_SLOWER_TOLERANCE_MS: u64 = 10;

/// Times the probe interval doubles while the session stays on the relay with no
/// news: with the default 5 s interval, rounds come at most 80 s apart.
pub const MAX_PROBE_DOUBLINGS: u32 = 4;

impl DirectConnection {
    /// Whether the direct `link` that answered in `direct_rtt_ms` replaces the relay for
    /// `device`; a path left unused is recorded.
    pub(crate) fn direct_beats_relay(
        &mut self,
        device: DeviceId,
        link: LinkId,
        direct_rtt_ms: u64,
    ) -> bool {
        let Some(peer) = self.peers.get_mut(&device) else {
            return false;
        };
        let Some(relay_rtt_ms) = peer.relay_rtt_ms else {
            return true;
        };
        if direct_rtt_ms <= relay_rtt_ms.saturating_add(DIRECT_SLOWER_TOLERANCE_MS) {
            return true;
        }
        peer.direct_declined = Some(DeclinedDirect {
            direct_rtt_ms,
            relay_rtt_ms,
        });
        peer.declined_link = Some(link);
        self.counters.direct_paths_declined += 1;
        tracing::debug!(
            peer = %device,
            direct_rtt_ms,
            relay_rtt_ms,
            "direct path slower than the relay: staying on the relay"
        );
        false
    }

    /// When the next round of dials is due while on the relay, counting this one.
    pub(crate) fn next_probe_at(&mut self, now: Instant, device: DeviceId) -> Instant {
        let base = self.limits.direct_probe_interval;
        let Some(peer) = self.peers.get_mut(&device) else {
            return now + base;
        };
        let doublings = peer.probe_rounds.min(MAX_PROBE_DOUBLINGS);
        peer.probe_rounds = peer.probe_rounds.saturating_add(1);
        now + base.saturating_mul(1 << doublings)
    }

    /// Whether traffic on `link` must not move `device`'s session off the relay: the
    /// link was left unused for being slower, and no connect or migration waits on a
    /// path.
    pub(crate) fn declined(&self, device: DeviceId, link: LinkId) -> bool {
        self.peers.get(&device).is_some_and(|p| {
            p.bound == Some(Via::Relay)
                && p.declined_link == Some(link)
                && p.connect.is_none()
                && p.migration.is_none()
        })
    }

    /// News of the peer's addresses, or the relay bound afresh: probes start over at
    /// the base interval.
    pub(crate) fn probes_start_over(&mut self, device: DeviceId) {
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.probe_rounds = 0;
        }
    }

    /// A liveness ping answered over the relay: the relay's round trip.
    pub(crate) fn relay_rtt_sample(&mut self, device: DeviceId, sample: Duration) {
        if let Some(peer) = self.peers.get_mut(&device) {
            let sample = u64::try_from(sample.as_millis()).unwrap_or(u64::MAX);
            peer.relay_rtt_ms = Some(
                peer.relay_rtt_ms
                    .map_or(sample, |srtt| (srtt * 7 + sample) / 8),
            );
        }
    }
}
