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
}

/// What a status event meant for the session's lifecycle, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Nothing notable.
    None,
    /// The session became established.
    Started,
    /// A migration began.
    MigrationStarted,
    /// A migration failed: the window expired.
    MigrationFailed,
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
                    SessionStatus::Ready => Lifecycle::None,
                    SessionStatus::ReconnectingOutbound | SessionStatus::ReconnectingInbound
                        if !from.is_some_and(SessionStatus::is_migrating) =>
                    {
                        t.metrics.migrations_started += 1;
                        Lifecycle::MigrationStarted
                    }
                    SessionStatus::Evicted => {
                        t.metrics.sessions_evicted += 1;
                        t.metrics.stopped_at_unix_ms = Some(unix_ms);
                        if from.is_some_and(SessionStatus::is_migrating) {
                            t.metrics.migrations_failed += 1;
                            Lifecycle::MigrationFailed
                        } else {
                            Lifecycle::Stopped
                        }
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
                t.path = Some(ready.path);
                if ready.after_handshake {
                    t.metrics.handshakes_completed += 1;
                }
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
            NodeEvent::Delivered { .. } => Lifecycle::None,
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
