//! Failure episodes: one log line when a kind of failure starts and one when it has
//! stopped, not one per retry.
//!
//! The node counts what it refuses (handshakes from unknown devices, rate-limited or
//! replayed initiations, the relay's rate limiting); [`Episodes`] watches those
//! counters. A counter that grows after a quiet time starts an episode: one WARN with
//! the reason. The episode ends after [`EPISODE_QUIET`] without growth: one INFO with
//! how many there were.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a kind of failure must stay quiet before its episode ends (and a new one
/// warns again).
pub const EPISODE_QUIET: Duration = Duration::from_secs(60);

/// The kinds of failure watched, each with the counter's name in the status report's
/// `rejected` (or the relay client's) counters and what a WARN says about it.
pub const WATCHED: [(&str, &str); 5] = [
    (
        "handshake_unknown_device",
        "refusing handshakes from an unknown device: an initiation names no pair of this device's [[peers]] (a device not paired with this one, or one whose relationship key differs)",
    ),
    (
        "handshake_rate_limited",
        "refusing handshake initiations beyond the rate limit of their session (a flood, or a peer retrying far too fast)",
    ),
    (
        "handshake_replayed_initiation",
        "refusing replayed handshake initiations (an old initiation sent again, by the network or by someone else)",
    ),
    (
        "handshake_refused",
        "refusing handshake messages that do not verify (a relationship key that differs between the two configs?)",
    ),
    (
        "relay_refused_rate_limited",
        "the relay is rate limiting this device's requests",
    ),
];

#[derive(Debug)]
struct Episode {
    count: u64,
    /// When the counter last grew, while an episode is on.
    active: Option<Instant>,
    /// The count when the episode started.
    at_start: u64,
}

/// The failure episodes of one node.
#[derive(Debug, Default)]
pub struct Episodes {
    kinds: BTreeMap<&'static str, Episode>,
}

/// What an observation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpisodeChange {
    /// A kind of failure started: warn once.
    Started {
        /// The counter.
        kind: &'static str,
        /// What it means.
        reason: &'static str,
    },
    /// A kind of failure stopped.
    Ended {
        /// The counter.
        kind: &'static str,
        /// How many there were in the episode.
        count: u64,
    },
}

impl Episodes {
    /// Takes the current value of each watched counter (`value(kind)`) at `now`.
    pub fn observe(&mut self, now: Instant, value: impl Fn(&str) -> u64) -> Vec<EpisodeChange> {
        let mut changes = Vec::new();
        for (kind, reason) in WATCHED {
            let count = value(kind);
            let episode = self.kinds.entry(kind).or_insert(Episode {
                // Whatever was counted before the first look started no episode.
                count,
                active: None,
                at_start: count,
            });
            if count > episode.count {
                if episode.active.is_none() {
                    episode.at_start = episode.count;
                    changes.push(EpisodeChange::Started { kind, reason });
                }
                episode.active = Some(now);
            } else if episode
                .active
                .is_some_and(|last| now.saturating_duration_since(last) >= EPISODE_QUIET)
            {
                episode.active = None;
                changes.push(EpisodeChange::Ended {
                    kind,
                    count: count - episode.at_start,
                });
            }
            episode.count = count;
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_warns_when_it_starts_and_again_only_after_a_quiet_time() {
        let t0 = Instant::now();
        let mut episodes = Episodes::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let unknown = |n: u64| move |kind: &str| u64::from(kind == "handshake_unknown_device") * n;
        // Counted before the first look: no episode.
        assert_eq!(episodes.observe(at(0), unknown(3)), vec![]);
        let started = episodes.observe(at(1), unknown(4));
        assert!(matches!(
            started[..],
            [EpisodeChange::Started {
                kind: "handshake_unknown_device",
                ..
            }]
        ));
        // Every retry: nothing more.
        for s in 2..30 {
            assert_eq!(episodes.observe(at(s), unknown(4 + s)), vec![]);
        }
        // Quiet for a minute: the episode ends, with its count.
        assert_eq!(episodes.observe(at(60), unknown(33)), vec![]);
        assert_eq!(
            episodes.observe(at(89), unknown(33)),
            vec![EpisodeChange::Ended {
                kind: "handshake_unknown_device",
                count: 30
            }]
        );
        // It starts again: warned again.
        assert_eq!(episodes.observe(at(90), unknown(34)).len(), 1);
    }
}
