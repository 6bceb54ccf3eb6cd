//! Per-session bookkeeping fed by node events: session start and stop, handshakes,
//! migrations, and time on each kind of path.

use super::SessionMetrics;
use crate::hub::NodeEvent;
use std::collections::BTreeMap;
use std::time::Instant;
use tether_protocol::{DeviceId, PathKind, SessionStatus};

/// Whether the session is up (data can flow) in this state.
fn is_up(status: SessionStatus) -> bool {
    matches!(status, SessionStatus::Ready | SessionStatus::Degraded)
}

/// Per-peer bookkeeping fed by node events and periodic samples.
#[derive(Debug, Default)]
pub struct SessionTracker {
    peers: BTreeMap<DeviceId, Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    metrics: SessionMetrics,
    status: Option<SessionStatus>,
    path: Option<PathKind>,
    /// When time on the current path was last accounted.
    since: Option<Instant>,
    /// When the session last moved to the current kind of path (Unix ms).
    path_since_unix_ms: Option<u64>,
}

/// What a status event meant for the session's lifecycle, for logs. Migrations have
/// events of their own (Presence's), so they are not derived here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Nothing notable.
    None,
    /// The session became established.
    Started,
    /// The session was evicted or closed.
    Stopped,
}

impl SessionTracker {
    /// Applies one event observed at `now` (monotonic) / `unix_ms` (wall clock).
    pub fn observe(&mut self, event: &NodeEvent, now: Instant, unix_ms: u64) -> Lifecycle {
        match event {
            NodeEvent::Status { peer, from, to } => {
                let t = self.peers.entry(*peer).or_default();
                t.account(now);
                t.status = Some(*to);
                let from = *from;
                let was_established = matches!(
                    from,
                    Some(
                        SessionStatus::Ready
                            | SessionStatus::Degraded
                            | SessionStatus::ReconnectingOutbound
                            | SessionStatus::ReconnectingInbound
                    )
                );
                match to {
                    SessionStatus::Ready if !was_established => {
                        t.metrics.sessions_started += 1;
                        t.metrics.started_at_unix_ms = Some(unix_ms);
                        Lifecycle::Started
                    }
                    SessionStatus::Evicted => {
                        t.metrics.sessions_evicted += 1;
                        t.metrics.stopped_at_unix_ms = Some(unix_ms);
                        Lifecycle::Stopped
                    }
                    SessionStatus::Closed => {
                        t.metrics.sessions_closed += 1;
                        t.metrics.stopped_at_unix_ms = Some(unix_ms);
                        Lifecycle::Stopped
                    }
                    _ => Lifecycle::None,
                }
            }
            NodeEvent::Ready(ready) => {
                let t = self.peers.entry(ready.peer).or_default();
                t.account(now);
                if t.path != Some(ready.path) {
                    t.path_since_unix_ms = Some(unix_ms);
                }
                t.path = Some(ready.path);
                if ready.after_handshake {
                    t.metrics.handshakes_completed += 1;
                }
                Lifecycle::None
            }
            NodeEvent::MigrationStarted { peer, .. } => {
                self.peers
                    .entry(*peer)
                    .or_default()
                    .metrics
                    .migrations_started += 1;
                Lifecycle::None
            }
            NodeEvent::MigrationFailed { peer, .. } => {
                self.peers
                    .entry(*peer)
                    .or_default()
                    .metrics
                    .migrations_failed += 1;
                Lifecycle::None
            }
            NodeEvent::MigrationCompleted { peer, duration, .. } => {
                let t = self.peers.entry(*peer).or_default();
                t.metrics.migrations_completed += 1;
                t.metrics
                    .migration_duration
                    .observe(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
                Lifecycle::None
            }
            NodeEvent::Delivered { .. } | NodeEvent::Acknowledged { .. } => Lifecycle::None,
        }
    }

    /// Accounts time up to `now` so a report is current, and takes the path from a
    /// status poll (the same path the last path event gave, unless one is in flight).
    pub fn sample(&mut self, peer: DeviceId, path: Option<PathKind>, now: Instant) {
        let t = self.peers.entry(peer).or_default();
        t.account(now);
        if path.is_some() {
            t.path = path;
        }
    }

    /// When the session with `peer` last moved to the kind of path it is on (Unix ms).
    pub fn path_since(&self, peer: DeviceId) -> Option<u64> {
        self.peers.get(&peer).and_then(|t| t.path_since_unix_ms)
    }

    /// The metrics of `peer` as of `now`.
    pub fn metrics(&mut self, peer: DeviceId, now: Instant) -> SessionMetrics {
        let t = self.peers.entry(peer).or_default();
        t.account(now);
        t.metrics.clone()
    }
}

impl Tracked {
    fn account(&mut self, now: Instant) {
        if let (Some(since), Some(status), Some(path)) = (self.since, self.status, self.path) {
            if is_up(status) {
                let ms = u64::try_from(now.saturating_duration_since(since).as_millis())
                    .unwrap_or(u64::MAX);
                match path {
                    PathKind::Direct => self.metrics.direct_ms += ms,
                    PathKind::Relay => self.metrics.relay_ms += ms,
                }
            }
        }
        self.since = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn migrations_are_counted_from_presence_events_not_from_status_changes() {
        let peer = DeviceId([7; 32]);
        let now = Instant::now();
        let mut tracker = SessionTracker::default();
        let status = |from, to| NodeEvent::Status {
            peer,
            from: Some(from),
            to,
        };
        // Status changes alone are no migration.
        tracker.observe(
            &status(SessionStatus::Ready, SessionStatus::ReconnectingOutbound),
            now,
            0,
        );
        tracker.observe(
            &status(SessionStatus::ReconnectingOutbound, SessionStatus::Evicted),
            now,
            0,
        );
        let metrics = |t: &SessionTracker| t.peers[&peer].metrics.clone();
        assert_eq!(metrics(&tracker).migrations_started, 0);
        assert_eq!(metrics(&tracker).migrations_failed, 0);
        assert_eq!(metrics(&tracker).sessions_evicted, 1);

        let started = NodeEvent::MigrationStarted {
            peer,
            outbound: true,
        };
        tracker.observe(&started, now, 0);
        tracker.observe(
            &NodeEvent::MigrationFailed {
                peer,
                outbound: true,
                duration: Duration::from_secs(30),
            },
            now,
            0,
        );
        tracker.observe(&started, now, 0);
        tracker.observe(
            &NodeEvent::MigrationCompleted {
                peer,
                outbound: true,
                duration: Duration::from_millis(60),
            },
            now,
            0,
        );
        let m = metrics(&tracker);
        assert_eq!(
            (
                m.migrations_started,
                m.migrations_failed,
                m.migrations_completed
            ),
            (2, 1, 1)
        );
    }
}
