//! The per-peer session state machine that Presence owns, and its legal transitions.
//!
//! ```text
//!   Connecting ─▶ Handshaking ─▶ Ready ◀──────────────▶ Degraded
//!                                  │  ▲                    │
//!                                  │  └── Ready ◀──┐       ▼
//!                                  └─▶ ReconnectingInbound  ReconnectingOutbound
//!   any live state ─▶ Evicted ─▶ Recovering ─▶ Ready        (both ─▶ Ready)
//!   any state ─▶ Closed ─▶ Connecting
//! ```
//!
//! | from | to |
//! |---|---|
//! | Connecting | Handshaking, Ready (a transport-only connect of a known session), Evicted, Closed |
//! | Handshaking | Ready, Connecting (retry on another candidate), Evicted, Closed |
//! | Ready | Degraded, ReconnectingInbound, Evicted, Closed |
//! | Degraded | Ready, ReconnectingOutbound, ReconnectingInbound, Evicted, Closed |
//! | ReconnectingOutbound | Ready, Evicted, Closed |
//! | ReconnectingInbound | Ready, ReconnectingOutbound, Evicted, Closed |
//! | Evicted | Recovering, Closed |
//! | Recovering | Ready, Evicted, Closed |
//! | Closed | Connecting |
//!
//! Staying in the same state is not a transition (a second network change during a
//! migration keeps ReconnectingOutbound and restarts its pings; it is not a new state).
//! ReconnectingOutbound never goes to ReconnectingInbound: the device that moved already
//! refuses handshakes, and an inbound signal only tells it where the peer is now.
//! Only Handshaking and Recovering run a handshake (see [`SessionStatus::allows_handshake`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a session with one peer stands. See the module docs for the transition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SessionStatus {
    /// Looking for a transport path to the peer; no session keys yet.
    Connecting,
    /// A Noise handshake is running (PeerSessionEstablishment only).
    Handshaking,
    /// Keys committed, a path bound, data flows.
    Ready,
    /// Liveness is in doubt (missed heartbeats or a local network change was seen).
    Degraded,
    /// This device changed networks: firing migration pings, never handshaking.
    ReconnectingOutbound,
    /// The peer signalled that it moved: reconnecting the transport only.
    ReconnectingInbound,
    /// The session was dropped (migration window expired, peer reset, policy).
    Evicted,
    /// Re-establishing after an eviction: a full handshake with a new epoch.
    Recovering,
    /// Torn down on purpose; nothing more is sent.
    Closed,
}

impl SessionStatus {
    /// Every state, in declaration order (for tables and exhaustive tests).
    pub const ALL: [SessionStatus; 9] = [
        SessionStatus::Connecting,
        SessionStatus::Handshaking,
        SessionStatus::Ready,
        SessionStatus::Degraded,
        SessionStatus::ReconnectingOutbound,
        SessionStatus::ReconnectingInbound,
        SessionStatus::Evicted,
        SessionStatus::Recovering,
        SessionStatus::Closed,
    ];

    /// Whether moving from `self` to `to` is a legal transition (see the module table).
    pub fn can_transition_to(self, to: SessionStatus) -> bool {
        use SessionStatus::*;
        matches!(
            (self, to),
            (Connecting, Handshaking | Ready | Evicted | Closed)
                | (Handshaking, Ready | Connecting | Evicted | Closed)
                | (Ready, Degraded | ReconnectingInbound | Evicted | Closed)
                | (
                    Degraded,
                    Ready | ReconnectingOutbound | ReconnectingInbound | Evicted | Closed
                )
                | (ReconnectingOutbound, Ready | Evicted | Closed)
                | (
                    ReconnectingInbound,
                    Ready | ReconnectingOutbound | Evicted | Closed
                )
                | (Evicted, Recovering | Closed)
                | (Recovering, Ready | Evicted | Closed)
                | (Closed, Connecting)
        )
    }

    /// Whether a handshake may run in this state. Migration states return false: a
    /// handshake during a migration is the bug this system exists to prevent.
    pub fn allows_handshake(self) -> bool {
        matches!(self, SessionStatus::Handshaking | SessionStatus::Recovering)
    }

    /// Whether a PresenceConnect may be issued for the peer in this state.
    /// ReconnectingOutbound blocks it; ReconnectingInbound lets a transport-only connect
    /// through even though the session is established.
    pub fn allows_presence_connect(self) -> bool {
        !matches!(
            self,
            SessionStatus::ReconnectingOutbound | SessionStatus::Closed
        )
    }

    /// Whether a rekey (a handshake that replaces the keys of a live session) may start
    /// or be answered in this state: only in Ready, so never during a migration (nor
    /// while degraded, evicted, recovering or closed).
    pub fn allows_rekey(self) -> bool {
        self == SessionStatus::Ready
    }

    /// Whether the session is in one of the two migration states.
    pub fn is_migrating(self) -> bool {
        matches!(
            self,
            SessionStatus::ReconnectingOutbound | SessionStatus::ReconnectingInbound
        )
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A transition that the table forbids, reported instead of silently applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal session transition {from} -> {to}")]
pub struct IllegalTransition {
    /// State the session was in.
    pub from: SessionStatus,
    /// State that was asked for.
    pub to: SessionStatus,
}

impl SessionStatus {
    /// Returns `to` if the transition is legal, or the typed error naming both ends.
    pub fn transition(self, to: SessionStatus) -> Result<SessionStatus, IllegalTransition> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table as a matrix, so any change to it shows up in review.
    #[test]
    fn transition_table_snapshot() {
        let mut out = String::new();
        for from in SessionStatus::ALL {
            let targets: Vec<String> = SessionStatus::ALL
                .iter()
                .filter(|to| from.can_transition_to(**to))
                .map(|to| to.to_string())
                .collect();
            out.push_str(&format!("{from} -> {}\n", targets.join(", ")));
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn migration_states_never_allow_a_handshake() {
        assert!(!SessionStatus::ReconnectingOutbound.allows_handshake());
        assert!(!SessionStatus::ReconnectingInbound.allows_handshake());
        assert!(!SessionStatus::Ready.allows_handshake());
        assert!(SessionStatus::Recovering.allows_handshake());
    }

    #[test]
    fn only_ready_allows_a_rekey() {
        for status in SessionStatus::ALL {
            assert_eq!(
                status.allows_rekey(),
                status == SessionStatus::Ready,
                "{status}"
            );
            assert!(
                !(status.is_migrating() && status.allows_rekey()),
                "{status}"
            );
        }
    }

    #[test]
    fn outbound_blocks_presence_connect_inbound_lets_it_through() {
        assert!(!SessionStatus::ReconnectingOutbound.allows_presence_connect());
        assert!(SessionStatus::ReconnectingInbound.allows_presence_connect());
        assert!(SessionStatus::Ready.allows_presence_connect());
    }

    #[test]
    fn self_transitions_are_not_transitions() {
        for status in SessionStatus::ALL {
            assert!(!status.can_transition_to(status), "{status}");
        }
    }

    #[test]
    fn every_state_can_reach_ready_and_closed() {
        // Nothing is a trap: from every state there is a path to Ready and to Closed.
        for start in SessionStatus::ALL {
            for goal in [SessionStatus::Ready, SessionStatus::Closed] {
                let mut seen = vec![start];
                let mut frontier = vec![start];
                while let Some(state) = frontier.pop() {
                    for next in SessionStatus::ALL {
                        if state.can_transition_to(next) && !seen.contains(&next) {
                            seen.push(next);
                            frontier.push(next);
                        }
                    }
                }
                assert!(seen.contains(&goal), "{start} cannot reach {goal}");
            }
        }
    }

    #[test]
    fn illegal_transition_is_a_typed_error() {
        let err = SessionStatus::Closed
            .transition(SessionStatus::Ready)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal session transition Closed -> Ready"
        );
        assert_eq!(
            SessionStatus::Ready.transition(SessionStatus::Degraded),
            Ok(SessionStatus::Degraded)
        );
    }
}
