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
//! - **Direct → relay.** A direct path that is lost (liveness) leaves as before. One
//!   that still answers but looks worse than when it was taken (a heartbeat unanswered
//!   within its interval among the last [`QUALITY_WINDOW`], or a smoothed round trip
//!   [`FALLBACK_SLOWER_MS`] above the best it showed) is compared with the relay: one
//!   liveness ping goes over the relay too (at most one per
//!   [`RELAY_PROBE_MIN_INTERVAL`]), and when it answers, a direct path whose every one
//!   of its last [`RECENT_RTT_SAMPLES`] heartbeat round trips exceeds the relay's by
//!   more than [`FALLBACK_SLOWER_MS`], that missed [`FALLBACK_MISSED`] of its last
//!   heartbeats, or that loses [`FALLBACK_LOSS_PERCENT`] of its packets while the
//!   relay's link loses less than half as much (QUIC's counts, sampled by the transport
//!   driver as frames arrive, [`LossMeter`]), gives the session to the relay (no
//!   handshake: a path change like any other). No direct path is taken for
//!   [`FALLBACK_HOLD`] after that: not by traffic on another of the peer's links, nor by
//!   a transport-only connect (only a migration or a handshake takes the first path that
//!   answers). A healthy direct path costs the relay nothing.
//! - **Hysteresis.** Up to the direct path within [`DIRECT_SLOWER_TOLERANCE_MS`] of the
//!   relay, back to the relay only beyond [`FALLBACK_SLOWER_MS`] (or with losses), and
//!   a hold-down after falling back: no round-trip wobble moves a session back and forth.
//! - **Probes back off.** While on the relay every candidate is dialled on binding it,
//!   then after [`Limits::direct_probe_interval`](crate::Limits), doubling with each
//!   round up to [`MAX_PROBE_DOUBLINGS`] times; news of the peer's addresses (a new
//!   `Candidates` frame, a migration ping) or binding the relay again start over. A
//!   peer behind a NAT no hole crosses costs a round of dials every 80 s, not every 5 s.

use crate::core::DirectConnection;
use crate::state::{DeclinedDirect, Fallback, Via};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tether_protocol::{DeviceId, LinkId, PathKind, SessionFrame};

/// How much longer than the relay's a direct path's round trip may be and still be
/// taken over it (iroh switches between paths only for 10 ms or more, for the same
/// reason: measurement noise must not decide).
pub const DIRECT_SLOWER_TOLERANCE_MS: u64 = 10;

/// Times the probe interval doubles while the session stays on the relay with no
/// news: with the default 5 s interval, rounds come at most 80 s apart.
pub const MAX_PROBE_DOUBLINGS: u32 = 4;

/// How much slower than the relay a direct path in use must become before the session
/// falls back to the relay: five times the tolerance to take it, so a path that was
/// just taken is not given up again for the same noise.
pub const FALLBACK_SLOWER_MS: u64 = 50;

/// Heartbeat round trips of the bound direct path whose smallest is compared with the
/// relay's before falling back: a path is slower only when all of its last four
/// answers (8 s at the default interval) were, so one answer that a lost packet
/// delayed (QUIC's retransmission adds a probe timeout, several times the round trip
/// on a lossy path) does not move the session. Losses count as missed heartbeats.
pub const RECENT_RTT_SAMPLES: usize = 4;

/// Share of what it sends (per cent of bytes) a direct path must lose before it looks
/// worse, and is given up for a relay link that loses less than half as much: at 10 %
/// QUIC's throughput has collapsed and every loss costs a probe timeout, while the one
/// or two per cent of a busy WiFi does not move a session.
pub const FALLBACK_LOSS_PERCENT: u8 = 10;

/// Most times [`FALLBACK_HOLD`] doubles for a session that keeps falling back: a route
/// that stays bad is tried again every 8 minutes at most, not every half minute.
pub const MAX_HOLD_DOUBLINGS: u32 = 4;

/// Fallbacks further apart than this start the hold at [`FALLBACK_HOLD`] again.
pub const HOLD_RESET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Bytes a path must have sent between two samples before their loss counts: about
/// fifty full packets; a share of a few packets (an idle path's keep-alives) says
/// nothing.
pub const LOSS_SAMPLE_MIN_BYTES: u64 = 64 * 1024;

/// How long a measured loss share stays the path's: a path whose traffic stopped is
/// not judged on what it lost long ago (the quality window's span).
pub const LOSS_SAMPLE_MAX_AGE: Duration = Duration::from_secs(30);

/// Heartbeats of the bound direct path remembered for its losses (16 at the default
/// 2 s interval: the last half minute).
pub const QUALITY_WINDOW: u32 = 16;

// `DirectQuality::missed` holds one bit per heartbeat of the window.
const _: () = assert!(QUALITY_WINDOW == u16::BITS);

/// Heartbeats unanswered within their interval, among the last [`QUALITY_WINDOW`], that
/// make a direct path worse than a relay that answers. Three in a row already mean the
/// path is dead (liveness); two scattered ones mean a path that stalls for seconds.
pub const FALLBACK_MISSED: u32 = 2;

/// Least time between two relay pings sent to compare a direct path that looks worse:
/// a struggling path costs the relay one round trip per peer every 10 s at most.
pub const RELAY_PROBE_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// After falling back to the relay, how long direct paths are not taken (their
/// challenges answer quickly even when their heartbeats do not): half a minute, the
/// span of [`QUALITY_WINDOW`] heartbeats.
pub const FALLBACK_HOLD: Duration = Duration::from_secs(30);

/// The bit that marks a ping id as a relay comparison's (the operator's pings use the
/// top bit; heartbeat ids count up from 1 and never reach either).
const RELAY_PROBE_ID_BIT: u64 = 1 << 62;

/// Whether a ping id is a relay comparison's.
pub(crate) fn is_relay_probe(id: u64) -> bool {
    id & RELAY_PROBE_ID_BIT != 0 && !crate::operator_ping::is_operator_ping(id)
}

/// One link's losses from QUIC's cumulative byte counts, sampled now and then: the
/// share lost since the previous judged sample, once at least
/// [`LOSS_SAMPLE_MIN_BYTES`] were sent in between. Bytes, not packets: the ack-only
/// packets a receiving side sends are many, small and never declared lost.
#[derive(Debug, Clone, Default)]
pub struct LossMeter {
    /// The link and its counts (sent, lost) at the last judged sample.
    base: Option<(LinkId, u64, u64)>,
    /// The share lost (per cent) over the last judged span, and when it was judged.
    recent: Option<(u8, Instant)>,
}

impl LossMeter {
    /// QUIC's counts of `link` now. A sample of another link (or counts that went
    /// back) starts the meter over on that link.
    pub fn sample(&mut self, now: Instant, link: LinkId, sent: u64, lost: u64) {
        let Some((base_link, base_sent, base_lost)) = self.base else {
            self.base = Some((link, sent, lost));
            return;
        };
        if base_link != link || sent < base_sent || lost < base_lost {
            *self = Self::default();
            self.base = Some((link, sent, lost));
            return;
        }
        let sent_since = sent - base_sent;
        if sent_since < LOSS_SAMPLE_MIN_BYTES {
            return;
        }
        let lost_since = (lost - base_lost).min(sent_since);
        // At most 100: the conversion cannot fail.
        let percent = u8::try_from(lost_since * 100 / sent_since).unwrap_or(100);
        self.recent = Some((percent, now));
        self.base = Some((link, sent, lost));
    }

    /// The share of bytes lost (per cent) over the last judged span, if it is recent.
    pub fn loss_percent(&self, now: Instant) -> Option<u8> {
        self.recent
            .filter(|(_, at)| now.saturating_duration_since(*at) <= LOSS_SAMPLE_MAX_AGE)
            .map(|(percent, _)| percent)
    }
}

/// What the heartbeats say about the bound direct path since it was bound.
#[derive(Debug, Clone, Default)]
pub struct DirectQuality {
    /// The last [`QUALITY_WINDOW`] heartbeats, newest in bit 0: set when unanswered
    /// within the interval.
    missed: u16,
    /// The smallest heartbeat round trip seen on the path, ms.
    best_rtt_ms: Option<u64>,
    /// The last [`RECENT_RTT_SAMPLES`] heartbeat round trips, ms, oldest first.
    recent_rtt_ms: VecDeque<u64>,
    /// The path's losses, from QUIC's counts.
    pub(crate) loss: LossMeter,
    /// The relay ping sent to compare, and when.
    relay_probe: Option<(u64, Instant)>,
    /// When the last relay ping to compare left.
    relay_probed_at: Option<Instant>,
    /// Id counter of relay pings.
    next_probe: u64,
}

impl DirectQuality {
    /// Heartbeats unanswered within their interval among the last [`QUALITY_WINDOW`].
    pub fn missed(&self) -> u32 {
        self.missed.count_ones()
    }

    fn record_heartbeat(&mut self, missed: bool) {
        self.missed = (self.missed << 1) | u16::from(missed);
    }

    fn record_rtt(&mut self, rtt_ms: u64) {
        self.best_rtt_ms = Some(self.best_rtt_ms.map_or(rtt_ms, |best| best.min(rtt_ms)));
        if self.recent_rtt_ms.len() == RECENT_RTT_SAMPLES {
            self.recent_rtt_ms.pop_front();
        }
        self.recent_rtt_ms.push_back(rtt_ms);
    }

    /// The smallest of the last [`RECENT_RTT_SAMPLES`] heartbeat round trips: what the
    /// path gives when no packet is lost.
    fn recent_min_rtt_ms(&self) -> Option<u64> {
        self.recent_rtt_ms.iter().copied().min()
    }
}

/// Whether a fallback's hold keeps direct paths off `peer`'s session now: only while the
/// session is Ready on a relay that is connected and answers. A relay that went away,
/// or a session that is not Ready, takes the first path that answers again.
fn holds_off_direct(relay_connected: bool, peer: &crate::state::PeerState, now: Instant) -> bool {
    relay_connected
        && peer.bound == Some(Via::Relay)
        && peer.reported.is_some()
        && !peer.heartbeat.reported_dead
        && peer.fallback.as_ref().is_some_and(|f| now < f.held_until)
}

/// The hold of a fallback at `now` after `last`, and how many came in a row before it:
/// [`FALLBACK_HOLD`], doubled for each fallback within [`HOLD_RESET_AFTER`] of the one
/// before, at most [`MAX_HOLD_DOUBLINGS`] times.
fn next_hold(last: Option<&Fallback>, now: Instant) -> (Duration, u32) {
    let in_a_row = match last {
        Some(last) if now.saturating_duration_since(last.at) < HOLD_RESET_AFTER => {
            last.in_a_row.saturating_add(1)
        }
        _ => 0,
    };
    let hold = FALLBACK_HOLD.saturating_mul(1 << in_a_row.min(MAX_HOLD_DOUBLINGS));
    (hold, in_a_row)
}

impl DirectConnection {
    /// Whether the direct `link` that answered in `direct_rtt_ms` replaces the relay for
    /// `device`; a path left unused is recorded.
    pub(crate) fn direct_beats_relay(
        &mut self,
        now: Instant,
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
        let held = holds_off_direct(self.relay_connected, peer, now);
        if !held && direct_rtt_ms <= relay_rtt_ms.saturating_add(DIRECT_SLOWER_TOLERANCE_MS) {
            return true;
        }
        if held {
            // The fallback's record (and the link it left) stays: it says why no direct
            // path is taken.
            self.counters.direct_paths_declined += 1;
            return false;
        }
        peer.direct_declined = Some(Box::new(DeclinedDirect {
            direct_rtt_ms,
            relay_rtt_ms,
            fell_back_with_missed: None,
            fell_back_with_loss: None,
            retry_after_s: None,
        }));
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
    /// link was left unused for being slower, or the session fell back from a direct
    /// path less than [`FALLBACK_HOLD`] ago (the peer's other links share that path's
    /// route: its standby link, the one it dialled), and no connect or migration waits
    /// on a path.
    pub(crate) fn declined(&self, now: Instant, device: DeviceId, link: LinkId) -> bool {
        let waits = self.waits_on_a_path(now, device);
        self.peers.get(&device).is_some_and(|p| {
            let held = holds_off_direct(self.relay_connected, p, now);
            p.bound == Some(Via::Relay) && (p.declined_link == Some(link) || held) && !waits
        })
    }

    /// Whether a connect or a migration waits on a path, so that the first path that
    /// answers is taken (recovering comes first). A transport-only connect of a session
    /// that fell back to the relay less than [`FALLBACK_HOLD`] ago does not count: the
    /// session works on the relay, and Presence's direct attempt must not take back
    /// the path it just left.
    pub(crate) fn waits_on_a_path(&self, now: Instant, device: DeviceId) -> bool {
        self.peers.get(&device).is_some_and(|p| {
            let held = holds_off_direct(self.relay_connected, p, now);
            let connect_waits = p
                .connect
                .as_ref()
                .is_some_and(|c| c.permit.is_some() || !held);
            connect_waits || p.migration.is_some()
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

    /// A heartbeat on the bound path went out; `missed` when the previous one was not
    /// answered within the interval. On a direct path that looks worse than when it was
    /// taken, a ping over the relay goes too, to compare.
    pub(crate) fn direct_heartbeat(&mut self, now: Instant, device: DeviceId, missed: bool) {
        let relay_connected = self.relay_connected;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if !matches!(peer.bound, Some(Via::Link(_))) {
            return;
        }
        let quality = &mut peer.direct_quality;
        quality.record_heartbeat(missed);
        let slower = match (peer.heartbeat.srtt_ms, quality.best_rtt_ms) {
            (Some(srtt), Some(best)) => srtt > best.saturating_add(FALLBACK_SLOWER_MS),
            _ => false,
        };
        let lossy = quality
            .loss
            .loss_percent(now)
            .is_some_and(|percent| percent >= FALLBACK_LOSS_PERCENT);
        let looks_worse = quality.missed() > 0 || slower || lossy;
        let due = quality
            .relay_probed_at
            .is_none_or(|at| now >= at + RELAY_PROBE_MIN_INTERVAL);
        let settled = peer.connect.is_none() && peer.migration.is_none();
        if !(looks_worse && due && settled && relay_connected) {
            return;
        }
        quality.next_probe += 1;
        let id = RELAY_PROBE_ID_BIT | quality.next_probe;
        quality.relay_probe = Some((id, now));
        quality.relay_probed_at = Some(now);
        self.send_frame(device, Via::Relay, &SessionFrame::Ping { id });
    }

    /// QUIC's byte counts of a link (`TransportEvent::PathSampled`): the relay's
    /// link, or the direct link a session is bound to; others are ignored.
    pub(crate) fn path_sampled(
        &mut self,
        now: Instant,
        link: LinkId,
        path: PathKind,
        sent: u64,
        lost: u64,
    ) -> Option<DeviceId> {
        if path == PathKind::Relay {
            self.relay_loss.sample(now, link, sent, lost);
            self.relay_sampled(now);
            return None;
        }
        let device = self.links.get(link)?.peer?;
        let peer = self.peers.get_mut(&device)?;
        if peer.bound != Some(Via::Link(link)) {
            return None;
        }
        peer.direct_quality.loss.sample(now, link, sent, lost);
        Some(device)
    }

    /// The relay link's losses were judged: sessions that left a lossy direct path for
    /// the relay on trust, and find it lossy as well (at least half the direct path's
    /// share), may take a direct path again at once.
    fn relay_sampled(&mut self, now: Instant) {
        let Some(relay) = self.relay_loss.loss_percent(now) else {
            return;
        };
        for (device, peer) in &mut self.peers {
            let Some(fallback) = peer.fallback.as_deref_mut() else {
                continue;
            };
            let Some(direct) = fallback.on_trust else {
                continue;
            };
            if peer.bound != Some(Via::Relay) || now >= fallback.held_until {
                continue;
            }
            fallback.on_trust = None;
            if relay.saturating_mul(2) >= direct {
                tracing::info!(
                    peer = %device,
                    direct_loss = direct,
                    relay_loss = relay,
                    "the relay loses as much as the direct path did: a direct path may be taken again"
                );
                fallback.held_until = now;
                peer.declined_link = None;
            }
        }
    }

    /// A heartbeat on the bound direct path was answered in `rtt_ms`.
    pub(crate) fn direct_rtt_sample(&mut self, device: DeviceId, rtt_ms: u64) {
        if let Some(peer) = self.peers.get_mut(&device) {
            if matches!(peer.bound, Some(Via::Link(_))) {
                peer.direct_quality.record_rtt(rtt_ms);
            }
        }
    }

    /// The relay answered the ping that compares it with the bound direct path: the
    /// session falls back to the relay if the direct path is clearly worse.
    pub(crate) fn relay_probe_answered(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        id: u64,
    ) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some((outstanding, sent_at)) = peer.direct_quality.relay_probe else {
            return;
        };
        if outstanding != id || via != Via::Relay {
            return;
        }
        peer.direct_quality.relay_probe = None;
        self.relay_rtt_sample(device, now.saturating_duration_since(sent_at));
        let Some(peer) = self.peers.get(&device) else {
            return;
        };
        let (Some(Via::Link(link)), Some(relay_rtt_ms)) = (peer.bound, peer.relay_rtt_ms) else {
            return;
        };
        if peer.connect.is_some() || peer.migration.is_some() {
            return;
        }
        let direct_rtt_ms = peer
            .direct_quality
            .recent_min_rtt_ms()
            .or(peer.heartbeat.srtt_ms)
            .unwrap_or(0);
        let missed = peer.direct_quality.missed();
        let slower = direct_rtt_ms > relay_rtt_ms.saturating_add(FALLBACK_SLOWER_MS);
        let direct_loss = peer.direct_quality.loss.loss_percent(now);
        let relay_loss = self.relay_loss.loss_percent(now);
        // A relay link too idle to be judged is taken on trust; its losses are known
        // within a few seconds of carrying the session, and a relay that turns out
        // as lossy lifts the hold (`relay_sampled`).
        let lossier = direct_loss.is_some_and(|direct| {
            direct >= FALLBACK_LOSS_PERCENT && relay_loss.is_none_or(|relay| relay * 2 < direct)
        });
        if !slower && missed < FALLBACK_MISSED && !lossier {
            return;
        }
        tracing::info!(
            peer = %device,
            direct_rtt_ms,
            relay_rtt_ms,
            missed_heartbeats = missed,
            ?direct_loss,
            ?relay_loss,
            "direct path worse than the relay: the session moves to the relay"
        );
        self.counters.direct_fallbacks += 1;
        self.bind(now, device, Via::Relay);
        if let Some(peer) = self.peers.get_mut(&device) {
            let (hold, in_a_row) = next_hold(peer.fallback.as_deref(), now);
            peer.direct_declined = Some(Box::new(DeclinedDirect {
                direct_rtt_ms,
                relay_rtt_ms,
                fell_back_with_missed: Some(missed),
                fell_back_with_loss: direct_loss.map(|direct| (direct, relay_loss)),
                retry_after_s: Some(hold.as_secs()),
            }));
            peer.declined_link = Some(link);
            peer.fallback = Some(Box::new(Fallback {
                at: now,
                held_until: now + hold,
                in_a_row,
                // Left for losses the relay's own are not known against yet.
                on_trust: direct_loss.filter(|_| lossier && relay_loss.is_none()),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quality_window_counts_only_the_last_heartbeats() {
        let mut quality = DirectQuality::default();
        quality.record_heartbeat(true);
        quality.record_heartbeat(true);
        assert_eq!(quality.missed(), 2);
        for _ in 0..QUALITY_WINDOW - 2 {
            quality.record_heartbeat(false);
        }
        assert_eq!(quality.missed(), 2, "both still in the window");
        quality.record_heartbeat(false);
        assert_eq!(quality.missed(), 1, "the oldest left the window");
        quality.record_heartbeat(false);
        assert_eq!(quality.missed(), 0);
    }

    #[test]
    fn the_hold_doubles_for_fallbacks_in_a_row_up_to_its_bound_and_starts_over_later() {
        let t0 = Instant::now();
        let mut last: Option<Fallback> = None;
        let mut holds = Vec::new();
        let mut now = t0;
        for _ in 0..7 {
            let (hold, in_a_row) = next_hold(last.as_ref(), now);
            holds.push(hold.as_secs());
            last = Some(Fallback {
                at: now,
                held_until: now + hold,
                in_a_row,
                on_trust: None,
            });
            // The next fallback comes as soon as the hold ends.
            now += hold;
        }
        assert_eq!(holds, vec![30, 60, 120, 240, 480, 480, 480]);
        // A fallback long after the last one starts over.
        let (hold, in_a_row) = next_hold(last.as_ref(), now + HOLD_RESET_AFTER);
        assert_eq!((hold, in_a_row), (FALLBACK_HOLD, 0));
    }

    #[test]
    fn the_recent_round_trip_is_the_smallest_of_the_last_few() {
        let mut quality = DirectQuality::default();
        assert_eq!(quality.recent_min_rtt_ms(), None);
        for rtt in [40, 900, 45, 50] {
            quality.record_rtt(rtt);
        }
        assert_eq!(quality.recent_min_rtt_ms(), Some(40), "one delayed answer");
        for _ in 0..RECENT_RTT_SAMPLES {
            quality.record_rtt(300);
        }
        assert_eq!(quality.recent_min_rtt_ms(), Some(300), "slower every time");
        assert_eq!(quality.best_rtt_ms, Some(40));
    }

    #[test]
    fn the_loss_meter_judges_spans_of_enough_bytes_and_forgets_old_ones() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (link, other) = (LinkId(1), LinkId(2));
        let kib = |n: u64| n * 1024;
        let mut meter = LossMeter::default();
        meter.sample(at(0), link, kib(100), kib(1));
        assert_eq!(meter.loss_percent(at(0)), None, "a base, no span yet");
        // Too few bytes since: not judged, and the base stays.
        meter.sample(at(5), link, kib(120), kib(10));
        assert_eq!(meter.loss_percent(at(5)), None);
        meter.sample(at(10), link, kib(300), kib(41));
        assert_eq!(meter.loss_percent(at(10)), Some(20), "40 of 200 KiB");
        meter.sample(at(15), link, kib(400), kib(42));
        assert_eq!(meter.loss_percent(at(15)), Some(1));
        let judged_at = 15;
        let age = LOSS_SAMPLE_MAX_AGE.as_secs();
        assert_eq!(meter.loss_percent(at(judged_at + age)), Some(1));
        assert_eq!(meter.loss_percent(at(judged_at + age + 1)), None, "too old");
        // Another link, or counts that went back: start over.
        meter.sample(at(20), other, kib(1_000), kib(500));
        assert_eq!(meter.loss_percent(at(20)), None);
        meter.sample(at(25), other, kib(10), 0);
        meter.sample(at(30), other, kib(100), kib(90));
        assert_eq!(meter.loss_percent(at(30)), Some(100), "90 of 90 KiB");
    }

    #[test]
    fn relay_probe_ids_are_told_from_heartbeats_and_operator_pings() {
        assert!(is_relay_probe(RELAY_PROBE_ID_BIT | 1));
        assert!(!is_relay_probe(1));
        assert!(!is_relay_probe(1 << 63));
        assert!(!is_relay_probe((1 << 63) | RELAY_PROBE_ID_BIT));
    }
}
