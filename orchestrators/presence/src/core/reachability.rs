//! Reachability: how a peer that cannot be reached is retried (capped exponential
//! backoff with jitter), what makes the next attempt run at once, and the log lines that
//! say when a peer stopped or started being reachable.

use super::{Presence, Purpose};
use std::time::{Duration, Instant};
use tether_protocol::{ConnectFailed, DeviceId, SessionStatus};

/// Backoff exponents beyond this change nothing: 2^16 × any sane base is past any cap.
const MAX_BACKOFF_EXPONENT: u32 = 16;

/// Why an attempt runs at once instead of after its backoff, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryReason {
    /// This device's network changed: the old attempts used the old network.
    NetworkChanged,
    /// The application sent a message the session cannot carry yet.
    SendWaiting,
    /// The rendezvous brought addresses the peer announced since the last attempt.
    PeerAnnounced,
}

impl RetryReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::NetworkChanged => "the network changed",
            Self::SendWaiting => "a message is waiting",
            Self::PeerAnnounced => "the peer announced new addresses",
        }
    }
}

impl Presence {
    /// The wait before attempt `attempts + 1`: `connect_retry_base` doubled per failed
    /// attempt up to `connect_retry_max`, of which the second half is random ("equal
    /// jitter"), so many devices that lost the same peer do not retry in step.
    pub(super) fn backoff(&mut self, attempts: u32) -> Duration {
        let exponent = attempts.min(MAX_BACKOFF_EXPONENT);
        let delay = self
            .config
            .connect_retry_base
            .saturating_mul(1u32 << exponent)
            .min(self.config.connect_retry_max);
        delay / 2 + self.jitter(delay / 2)
    }

    /// A connect found no path: the next one runs after the backoff. The first failure
    /// in a row logs that the peer is unreachable; the next ones log at debug level.
    pub(super) fn connect_failed(&mut self, now: Instant, failed: ConnectFailed) {
        let Some(peer) = self.peers.get_mut(&failed.peer) else {
            return;
        };
        if peer.status == Some(SessionStatus::Ready) {
            return;
        }
        peer.connecting = false;
        peer.attempts = peer.attempts.saturating_add(1);
        let attempts = peer.attempts;
        let status = peer.status;
        let purpose = if status.is_some_and(SessionStatus::is_migrating)
            || status == Some(SessionStatus::Degraded)
        {
            Purpose::TransportOnly
        } else {
            Purpose::Connect
        };
        if status == Some(SessionStatus::Handshaking) {
            self.set_status(failed.peer, SessionStatus::Connecting);
        }
        if status == Some(SessionStatus::ReconnectingOutbound) {
            // The pings keep going; no connect is ours to retry.
            return;
        }
        let delay = self.backoff(attempts);
        self.schedule(failed.peer, now + delay, purpose);
        let Some(peer) = self.peers.get_mut(&failed.peer) else {
            return;
        };
        match peer.unreachable_since {
            None => {
                peer.unreachable_since = Some(now);
                tracing::info!(
                    peer = %failed.peer,
                    reason = %failed.reason,
                    next_try_in = ?delay,
                    "peer unreachable"
                );
            }
            Some(since) => tracing::debug!(
                peer = %failed.peer,
                reason = %failed.reason,
                unreachable_for = ?now.saturating_duration_since(since),
                attempts,
                next_try_in = ?delay,
                "peer still unreachable"
            ),
        }
    }

    /// Something says the peer may be reachable now: the backoff starts over, and a
    /// connect that is waiting for it runs at once (one in flight goes on).
    pub(super) fn retry_now(&mut self, now: Instant, id: DeviceId, reason: RetryReason) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let waiting = matches!(
            peer.status,
            Some(
                SessionStatus::Connecting
                    | SessionStatus::Handshaking
                    | SessionStatus::Evicted
                    | SessionStatus::Recovering
            )
        );
        if !waiting {
            return;
        }
        peer.attempts = 0;
        if peer.connecting {
            return;
        }
        if let Some(since) = peer.unreachable_since {
            tracing::info!(
                peer = %id,
                unreachable_for = ?now.saturating_duration_since(since),
                "retrying an unreachable peer now: {}",
                reason.as_str()
            );
        }
        self.schedule(id, now, Purpose::Connect);
    }

    /// The session is Ready: a peer that was unreachable is logged as reachable again.
    pub(super) fn reachable_again(&mut self, now: Instant, id: DeviceId) {
        let Some(since) = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.unreachable_since.take())
        else {
            return;
        };
        tracing::info!(
            peer = %id,
            unreachable_for = ?now.saturating_duration_since(since),
            "peer reachable again"
        );
    }
}
