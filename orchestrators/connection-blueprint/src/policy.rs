//! The ordering policy as a pure function.
//!
//! Candidates are sorted by tier, then by measured RTT, then by recency:
//!
//! | tier | what |
//! |---|---|
//! | 0 | the peer's newest announcement (migration ping or ack, or rendezvous hint), in the order it gave |
//! | 1 | addresses the peer announced recently (authenticated migration ping or ack) |
//! | 2 | the address the session last worked on |
//! | 3 | addresses from a recent rendezvous hint |
//! | 4 | configured addresses |
//! | 5 | announced or hinted addresses that went stale |
//! | 6 | anything that failed [`FAILURES_TO_DEMOTE`] times in a row since it last worked |
//!
//! The relay is always appended last, so a blueprint is never empty.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::{Candidate, CandidateSource, Endpoint, MAX_DIRECT_CANDIDATES};

/// Consecutive failures after which an address sinks below every other: three misses
/// separate a dead address from one lost packet.
pub const FAILURES_TO_DEMOTE: u32 = 3;

/// What is known of one address of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecord {
    /// The address.
    pub addr: SocketAddr,
    /// How it became known (the most trusted source seen wins).
    pub source: CandidateSource,
    /// When it was last learned or confirmed.
    pub learned_at: Instant,
    /// Smoothed RTT in milliseconds, if it ever answered.
    pub srtt_ms: Option<u64>,
    /// Consecutive failures since it last answered.
    pub failures: u32,
    /// Position in the peer's newest announcement, if it is in it (tier 0).
    pub announced_rank: Option<usize>,
}

fn tier(record: &AddressRecord, now: Instant, fresh_for: Duration) -> u8 {
    if record.announced_rank.is_some() {
        return 0;
    }
    if record.failures >= FAILURES_TO_DEMOTE {
        return 6;
    }
    let fresh = now.saturating_duration_since(record.learned_at) <= fresh_for;
    match (record.source, fresh) {
        (CandidateSource::LearnedFromPeer, true) => 1,
        (CandidateSource::LastKnownGood, _) => 2,
        (CandidateSource::Rendezvous, true) => 3,
        (CandidateSource::Configured, _) => 4,
        (CandidateSource::LearnedFromPeer | CandidateSource::Rendezvous, false) => 5,
        // A relay record never reaches here: the relay is not an address.
        (CandidateSource::Relay, _) => 6,
    }
}

/// Orders a peer's known addresses into a blueprint: at most
/// [`MAX_DIRECT_CANDIDATES`] direct candidates, best first, then the relay.
/// `fresh_for` is how long an announced or hinted address keeps its rank.
pub fn order_candidates(
    records: &[AddressRecord],
    now: Instant,
    fresh_for: Duration,
) -> Vec<Candidate> {
    let mut sorted: Vec<&AddressRecord> = records.iter().collect();
    sorted.sort_by_key(|record| {
        (
            tier(record, now, fresh_for),
            record.announced_rank.unwrap_or(usize::MAX),
            // Unknown RTT sorts after every measured one.
            record.srtt_ms.unwrap_or(u64::MAX),
            // More recent first.
            std::cmp::Reverse(record.learned_at),
            record.addr,
        )
    });
    sorted
        .into_iter()
        .take(MAX_DIRECT_CANDIDATES)
        .map(|record| Candidate {
            endpoint: Endpoint::Direct(record.addr),
            source: record.source,
        })
        .chain(std::iter::once(Candidate {
            endpoint: Endpoint::Relay,
            source: CandidateSource::Relay,
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_secs(300);

    fn record(addr: &str, source: CandidateSource, learned_at: Instant) -> AddressRecord {
        AddressRecord {
            addr: addr.parse().unwrap(),
            source,
            learned_at,
            srtt_ms: None,
            failures: 0,
            announced_rank: None,
        }
    }

    fn render(candidates: &[Candidate]) -> Vec<String> {
        candidates
            .iter()
            .map(|c| match c.endpoint {
                Endpoint::Direct(addr) => format!("{addr} {:?}", c.source),
                Endpoint::Relay => "relay".to_string(),
            })
            .collect()
    }

    #[test]
    fn relay_is_always_last_and_never_missing() {
        let now = Instant::now();
        assert_eq!(render(&order_candidates(&[], now, FRESH)), ["relay"]);
        let many: Vec<AddressRecord> = (0..20)
            .map(|i| record(&format!("10.0.0.{i}:1"), CandidateSource::Configured, now))
            .collect();
        let out = order_candidates(&many, now, FRESH);
        assert_eq!(out.len(), MAX_DIRECT_CANDIDATES + 1);
        assert_eq!(out.last().unwrap().endpoint, Endpoint::Relay);
    }

    #[test]
    fn tiers_order_sources() {
        let now = Instant::now() + Duration::from_secs(1000);
        let records = vec![
            record("10.0.0.4:1", CandidateSource::Configured, now),
            record("10.0.0.3:1", CandidateSource::Rendezvous, now),
            record("10.0.0.2:1", CandidateSource::LastKnownGood, now),
            record("10.0.0.1:1", CandidateSource::LearnedFromPeer, now),
            // Learned long ago: stale, below configured.
            record(
                "10.0.0.5:1",
                CandidateSource::LearnedFromPeer,
                now - Duration::from_secs(900),
            ),
        ];
        insta::assert_debug_snapshot!(render(&order_candidates(&records, now, FRESH)));
    }

    #[test]
    fn announced_addresses_go_first_in_announced_order() {
        let now = Instant::now();
        let mut a = record("10.0.0.9:1", CandidateSource::LearnedFromPeer, now);
        a.announced_rank = Some(1);
        let mut b = record("10.0.0.8:1", CandidateSource::LearnedFromPeer, now);
        b.announced_rank = Some(0);
        let good = record("10.0.0.1:1", CandidateSource::LastKnownGood, now);
        let out = render(&order_candidates(&[good, a, b], now, FRESH));
        assert_eq!(
            out,
            [
                "10.0.0.8:1 LearnedFromPeer",
                "10.0.0.9:1 LearnedFromPeer",
                "10.0.0.1:1 LastKnownGood",
                "relay"
            ]
        );
    }

    #[test]
    fn faster_measured_path_wins_within_a_tier() {
        let now = Instant::now();
        let mut slow = record("10.0.0.1:1", CandidateSource::Configured, now);
        slow.srtt_ms = Some(200);
        let mut fast = record("10.0.0.2:1", CandidateSource::Configured, now);
        fast.srtt_ms = Some(20);
        let unknown = record("10.0.0.3:1", CandidateSource::Configured, now);
        let out = render(&order_candidates(&[unknown, slow, fast], now, FRESH));
        assert_eq!(out[0], "10.0.0.2:1 Configured");
        assert_eq!(out[1], "10.0.0.1:1 Configured");
        assert_eq!(out[2], "10.0.0.3:1 Configured");
    }

    #[test]
    fn repeated_failures_demote_below_everything() {
        let now = Instant::now();
        let mut dead = record("10.0.0.1:1", CandidateSource::LastKnownGood, now);
        dead.failures = FAILURES_TO_DEMOTE;
        let configured = record("10.0.0.2:1", CandidateSource::Configured, now);
        let out = render(&order_candidates(&[dead, configured], now, FRESH));
        assert_eq!(out[0], "10.0.0.2:1 Configured");
        assert_eq!(out[1], "10.0.0.1:1 LastKnownGood");
    }

    #[test]
    fn ordering_is_deterministic_for_ties() {
        let now = Instant::now();
        let a = record("10.0.0.2:1", CandidateSource::Configured, now);
        let b = record("10.0.0.1:1", CandidateSource::Configured, now);
        let one = order_candidates(&[a.clone(), b.clone()], now, FRESH);
        let two = order_candidates(&[b, a], now, FRESH);
        assert_eq!(one, two);
    }
}
