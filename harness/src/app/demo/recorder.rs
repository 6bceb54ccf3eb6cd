//! The bookkeeping behind a scenario report: each side's session snapshot ([`Snap`]),
//! the [`Recorder`] that turns snapshots and marks into the report and its checks, and
//! the readings of the node event logs (when both sides were Ready again, what each
//! side reported, what the application received).

use super::{short, show, show_status, BeforeAfter, Check, ScenarioReport, Sides};
use crate::app::metrics::{millis, path_name};
use crate::hub::NodeEvent;
use crate::node::PeerStatus;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tether_protocol::{DeviceId, PathKind, SessionStatus};

/// What one side reports about its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Snap {
    pub(super) handshakes: u64,
    pub(super) epoch: Option<u64>,
    pub(super) peer_secret: Option<String>,
    pub(super) session_keys: Option<String>,
    pub(super) path: Option<PathKind>,
    pub(super) remote: Option<SocketAddr>,
    pub(super) rtt_ms: Option<u64>,
    pub(super) status: Option<SessionStatus>,
}

impl Snap {
    pub(super) fn of(status: Option<PeerStatus>) -> Self {
        match status {
            None => Self::default(),
            Some(s) => Self {
                handshakes: s.handshakes,
                epoch: s.epoch,
                peer_secret: s.peer_secret.map(|f| f.to_hex()),
                session_keys: s.session_keys.map(|f| f.to_hex()),
                path: s.path,
                remote: s.remote,
                rtt_ms: s.rtt_ms,
                status: s.status,
            },
        }
    }
}

/// Builds a report and its checks.
pub(super) struct Recorder {
    pub(super) report: ScenarioReport,
    marks: Vec<(u64, String)>,
}

impl Recorder {
    pub(super) fn new(
        scenario: &str,
        description: &str,
        network: &str,
        conditions: String,
        seed: u64,
    ) -> Self {
        Self {
            report: ScenarioReport {
                scenario: scenario.into(),
                description: description.into(),
                passed: false,
                network: network.into(),
                conditions,
                seed,
                handshakes_before: Sides::default(),
                handshakes_after: Sides::default(),
                epoch_before: None,
                epoch_after: None,
                fingerprint_a: BeforeAfter::default(),
                fingerprint_b: BeforeAfter::default(),
                migration_ms: None,
                establish_ms: None,
                recovery_ms: None,
                migration_reported_ms: None,
                rtt_ms: None,
                messages_sent: 0,
                messages_delivered: 0,
                duplicates: 0,
                path_after: None,
                checks: Vec::new(),
                wall_ms: 0,
                timeline: String::new(),
            },
            marks: Vec::new(),
        }
    }

    pub(super) fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.report.checks.push(Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        });
    }

    pub(super) fn mark(&mut self, at: Duration, text: impl Into<String>) {
        self.marks.push((millis(at), text.into()));
    }

    pub(super) fn before(&mut self, a: &Snap, b: &Snap) {
        self.report.handshakes_before = Sides {
            a: a.handshakes,
            b: b.handshakes,
        };
        self.report.epoch_before = a.epoch;
        self.report.fingerprint_a.before = a.peer_secret.clone();
        self.report.fingerprint_b.before = b.peer_secret.clone();
    }

    pub(super) fn after(&mut self, a: &Snap, b: &Snap) {
        self.report.handshakes_after = Sides {
            a: a.handshakes,
            b: b.handshakes,
        };
        self.report.epoch_after = a.epoch;
        self.report.fingerprint_a.after = a.peer_secret.clone();
        self.report.fingerprint_b.after = b.peer_secret.clone();
        self.report.rtt_ms = a.rtt_ms;
        self.report.path_after = a.path.map(|p| path_name(p).to_string());
    }

    /// The checks every scenario ends with: both Ready, one shared session.
    pub(super) fn check_same_session(&mut self, a: &Snap, b: &Snap) {
        self.check(
            "both sides Ready",
            a.status == Some(SessionStatus::Ready) && b.status == Some(SessionStatus::Ready),
            format!("A: {}, B: {}", show_status(a.status), show_status(b.status)),
        );
        self.check(
            "same PeerSecret and session keys on both sides",
            a.peer_secret.is_some()
                && a.peer_secret == b.peer_secret
                && a.session_keys == b.session_keys
                && a.epoch == b.epoch,
            format!(
                "PeerSecret A {} / B {}, epoch A {} / B {}",
                short(&a.peer_secret),
                short(&b.peer_secret),
                show(a.epoch),
                show(b.epoch)
            ),
        );
    }

    /// Invariants 1 and 2: no handshake, same epoch and PeerSecret as before.
    pub(super) fn check_no_handshake(&mut self, before: (&Snap, &Snap), after: (&Snap, &Snap)) {
        self.check(
            "no handshake during the migration",
            before.0.handshakes == after.0.handshakes && before.1.handshakes == after.1.handshakes,
            format!(
                "A {} -> {}, B {} -> {}",
                before.0.handshakes, after.0.handshakes, before.1.handshakes, after.1.handshakes
            ),
        );
        self.check(
            "same epoch, PeerSecret and session keys as before",
            before.0.epoch == after.0.epoch
                && before.0.peer_secret == after.0.peer_secret
                && before.0.session_keys == after.0.session_keys
                && before.1.peer_secret == after.1.peer_secret,
            format!(
                "epoch {} -> {}, PeerSecret {} -> {}",
                show(before.0.epoch),
                show(after.0.epoch),
                short(&before.0.peer_secret),
                short(&after.0.peer_secret)
            ),
        );
    }

    /// Invariant 5: every message exactly once, in order, each way.
    pub(super) fn check_messages(&mut self, sent: [&[Vec<u8>]; 2], received: [&[Vec<u8>]; 2]) {
        let mut delivered = 0;
        let mut duplicates = 0;
        let mut exact = true;
        let mut wrong = Vec::new();
        for ((expected, got), direction) in sent.iter().zip(received.iter()).zip(["A->B", "B->A"]) {
            let unique: BTreeSet<&Vec<u8>> = got.iter().collect();
            duplicates += got.len() - unique.len();
            delivered += expected.iter().filter(|m| unique.contains(m)).count();
            if got != expected {
                exact = false;
                // What arrived, by the message's suffix ("a3"), to show the fault.
                let order: Vec<String> = got
                    .iter()
                    .take(40)
                    .map(|m| {
                        let text = String::from_utf8_lossy(m);
                        text.rsplit(' ').next().unwrap_or_default().to_string()
                    })
                    .collect();
                wrong.push(format!("{direction} got {}", order.join(" ")));
            }
        }
        let total = sent[0].len() + sent[1].len();
        self.report.messages_sent = total as u64;
        self.report.messages_delivered = delivered as u64;
        self.report.duplicates = duplicates as u64;
        self.check(
            "every message delivered exactly once, in order",
            exact,
            if wrong.is_empty() {
                format!("{delivered}/{total} delivered, {duplicates} duplicates")
            } else {
                format!(
                    "{delivered}/{total} delivered, {duplicates} duplicates; {}",
                    wrong.join("; ")
                )
            },
        );
    }

    pub(super) fn finish(mut self, timeline: &str, wall: Duration) -> ScenarioReport {
        self.report.passed =
            !self.report.checks.is_empty() && self.report.checks.iter().all(|c| c.passed);
        self.report.timeline = merge_timeline(timeline, &self.marks);
        self.report.wall_ms = millis(wall);
        self.report
    }
}

/// Merges action marks into a timeline of `{:>7}ms text` lines (marks first at a tie).
fn merge_timeline(timeline: &str, marks: &[(u64, String)]) -> String {
    let mut lines: Vec<(u64, u8, usize, String)> = Vec::new();
    for (i, line) in timeline.lines().enumerate() {
        let ms = line
            .trim_start()
            .split("ms")
            .next()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        lines.push((ms, 1, i, line.to_string()));
    }
    for (i, (ms, text)) in marks.iter().enumerate() {
        lines.push((*ms, 0, i, format!("{ms:>7}ms ▶ {text}")));
    }
    lines.sort();
    lines
        .into_iter()
        .map(|(_, _, _, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

/// First time at or after `since` when both sides are Ready after at least one of
/// them left Ready, from the two event logs; relative to `since`.
pub(super) fn both_ready_again(
    logs: [&[(Duration, NodeEvent)]; 2],
    peers: [DeviceId; 2],
    since: Duration,
) -> Option<Duration> {
    let mut events: Vec<(Duration, usize, usize, SessionStatus)> = Vec::new();
    let mut state = [None, None];
    for side in 0..2 {
        for (order, (at, event)) in logs[side].iter().enumerate() {
            if let NodeEvent::Status { peer, to, .. } = event {
                if *peer != peers[side] {
                    continue;
                }
                if *at < since {
                    state[side] = Some(*to);
                } else {
                    events.push((*at, side, order, *to));
                }
            }
        }
    }
    events.sort_by_key(|(at, side, order, _)| (*at, *side, *order));
    let mut left = false;
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        while i < events.len() && events[i].0 == at {
            state[events[i].1] = Some(events[i].3);
            if events[i].3 != SessionStatus::Ready {
                left = true;
            }
            i += 1;
        }
        if left && state == [Some(SessionStatus::Ready); 2] {
            return Some(at.saturating_sub(since));
        }
    }
    None
}

/// Each side's MigrationCompleted duration after `since` (the last one).
pub(super) fn reported(logs: [&[(Duration, NodeEvent)]; 2], since: Duration) -> Option<Sides> {
    let last = |log: &[(Duration, NodeEvent)]| {
        log.iter().rev().find_map(|(at, e)| match e {
            NodeEvent::MigrationCompleted { duration, .. } if *at >= since => {
                Some(millis(*duration))
            }
            _ => None,
        })
    };
    Some(Sides {
        a: last(logs[0])?,
        b: last(logs[1])?,
    })
}

pub(super) fn delivered(log: &[(Duration, NodeEvent)], from: DeviceId, tag: &str) -> Vec<Vec<u8>> {
    log.iter()
        .filter_map(|(_, e)| match e {
            NodeEvent::Delivered { peer, payload, .. }
                if *peer == from && payload.starts_with(tag.as_bytes()) =>
            {
                Some(payload.clone())
            }
            _ => None,
        })
        .collect()
}

pub(super) fn messages(tag: &str, side: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range
        .map(|i| format!("{tag} {side}{i}").into_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_merge_into_the_timeline_in_time_order() {
        let timeline =
            "      0ms A: B Ready -> Degraded\n     45ms B: A Ready -> ReconnectingInbound";
        let merged = merge_timeline(timeline, &[(0, "A moves".into()), (100, "heal".into())]);
        let lines: Vec<&str> = merged.lines().collect();
        assert_eq!(lines[0], "      0ms ▶ A moves");
        assert!(lines[1].ends_with("Degraded"));
        assert!(lines[3].ends_with("heal"));
    }
}
