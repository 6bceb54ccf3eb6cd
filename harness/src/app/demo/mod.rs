//! `tether demo`: a relay server and two devices in one process, playing the
//! SessionMigration scenarios and checking the design's invariants on each.
//!
//! The simulated scenarios run whole nodes (the real actors, quinn and Noise) on the
//! simulated network under virtual time (see [`crate::cluster`]), with a realistic
//! path (40 ms RTT and 1% loss by default), so a run takes seconds of real time and
//! is the same for the same seed. `--real` plays the single-side move over real UDP
//! sockets on loopback, rebinding one device from 127.0.0.1 to 127.0.0.2.
//!
//! Every scenario records, before and after: the handshake counts of both sides, the
//! epoch, both sides' PeerSecret fingerprints; and the migration time (from the
//! network change to both sides Ready, read from the event log), the RTT, and whether
//! every message sent while it happened arrived exactly once and in order.
//!
//! - this module: the scenarios, the options, the report types and their rendering
//!   (timeline block, one-line verdict, summary table);
//! - `recorder`: the [`ScenarioReport`] bookkeeping: snapshots, checks, event-log readings;
//! - `simulated`: the scenarios on the simulated network ([`play`]);
//! - `real`: `--real`, the single-side move over real loopback sockets ([`play_real`]).

use serde::Serialize;
use std::fmt::Write as _;
use tether_protocol::SessionStatus;

mod real;
mod recorder;
mod simulated;

pub use real::{play_real, RealDemoError};
pub use simulated::play;

const A: usize = 0;
const B: usize = 1;

/// Messages each side sends just before the network change (in flight during it), and
/// again just after (queued while the path is down).
const BURST: usize = 5;

/// The default seed: the demo is the same on every run unless `--seed` changes it.
pub const DEFAULT_SEED: u64 = 7;

/// The demo's scenarios, in the order they are played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Two devices find each other and hand-shake once.
    Establish,
    /// One device changes networks; the other stays.
    SingleSideMove,
    /// One device moves into a network where direct UDP to the peer is blocked: the
    /// session continues over the relay.
    DirectBlockedRelay,
    /// Both devices change networks at the same moment and find each other again.
    BothMove,
    /// A device is cut off for longer than the migration window: both sides evict,
    /// then recover with a new handshake, losing no message.
    WindowExpiry,
}

impl Scenario {
    /// Every scenario, in play order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Establish,
        Scenario::SingleSideMove,
        Scenario::DirectBlockedRelay,
        Scenario::BothMove,
        Scenario::WindowExpiry,
    ];

    /// The name `--scenario` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Establish => "establish",
            Scenario::SingleSideMove => "single-side-move",
            Scenario::DirectBlockedRelay => "direct-blocked-relay",
            Scenario::BothMove => "both-move",
            Scenario::WindowExpiry => "window-expiry",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Establish => "A and B find each other and run one handshake",
            Scenario::SingleSideMove => "A changes networks while messages flow; B stays",
            Scenario::DirectBlockedRelay => {
                "A changes networks into one that blocks direct UDP to B: the relay carries the session"
            }
            Scenario::BothMove => "A and B change networks at the same moment",
            Scenario::WindowExpiry => {
                "A is cut off longer than the 8 s migration window: both evict, then recover with a new handshake"
            }
        }
    }
}

/// How to play the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seed of the simulation (keys, loss, jitter).
    pub seed: u64,
    /// Round-trip time of the simulated path.
    pub rtt_ms: u64,
    /// Packet loss of the simulated path, 0..1.
    pub loss: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            seed: DEFAULT_SEED,
            rtt_ms: 40,
            loss: 0.01,
        }
    }
}

/// A value on each side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sides {
    /// Device A.
    pub a: u64,
    /// Device B.
    pub b: u64,
}

/// A fingerprint before and after the scenario's change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BeforeAfter {
    /// Before.
    pub before: Option<String>,
    /// After.
    pub after: Option<String>,
}

/// One checked property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The values behind the verdict.
    pub detail: String,
}

/// The outcome of one scenario (one JSON object with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// What it plays.
    pub description: String,
    /// Whether every check held.
    pub passed: bool,
    /// `simulated` or `loopback`.
    pub network: String,
    /// Path conditions.
    pub conditions: String,
    /// Seed.
    pub seed: u64,
    /// Handshake counts before the change (A's count with B, B's with A).
    pub handshakes_before: Sides,
    /// Handshake counts after.
    pub handshakes_after: Sides,
    /// Committed epoch before (A's view; B's is checked equal).
    pub epoch_before: Option<u64>,
    /// Committed epoch after.
    pub epoch_after: Option<u64>,
    /// A's PeerSecret fingerprint before and after.
    pub fingerprint_a: BeforeAfter,
    /// B's PeerSecret fingerprint before and after.
    pub fingerprint_b: BeforeAfter,
    /// From the change to both sides Ready, from the event log (none for establish).
    pub migration_ms: Option<u64>,
    /// From start to both sides Ready (establish only).
    pub establish_ms: Option<u64>,
    /// From the network healing to both sides Ready (window expiry only).
    pub recovery_ms: Option<u64>,
    /// Each side's own measure of its migration (Presence's MigrationCompleted).
    pub migration_reported_ms: Option<Sides>,
    /// Smoothed RTT after (A's view).
    pub rtt_ms: Option<u64>,
    /// Messages sent, both directions.
    pub messages_sent: u64,
    /// Distinct messages delivered, both directions.
    pub messages_delivered: u64,
    /// Messages the application received more than once.
    pub duplicates: u64,
    /// `direct` or `relay`, after (A's view).
    pub path_after: Option<String>,
    /// Every checked property.
    pub checks: Vec<Check>,
    /// Real time the scenario took to play.
    pub wall_ms: u64,
    /// The phase timeline (text output only).
    #[serde(skip)]
    pub timeline: String,
}

fn show(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn show_status(s: Option<SessionStatus>) -> String {
    s.map_or("-".into(), |s| s.to_string())
}

fn short(fp: &Option<String>) -> String {
    fp.as_deref()
        .map_or("-".into(), |f| f.chars().take(8).collect())
}

/// A scenario's readable block: title, timeline, checks and the one-line verdict.
pub fn render(report: &ScenarioReport, index: usize, total: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "━━ {}/{} {} ━━ {}",
        index + 1,
        total,
        report.scenario,
        report.description
    );
    let _ = writeln!(
        out,
        "   network: {} ({}), seed {}",
        report.network, report.conditions, report.seed
    );
    for line in report.timeline.lines() {
        let _ = writeln!(out, "{line}");
    }
    for check in &report.checks {
        let _ = writeln!(
            out,
            "   {} {} ({})",
            if check.passed { "✓" } else { "✗" },
            check.name,
            check.detail
        );
    }
    let _ = writeln!(out, "{}", verdict(report));
    out
}

/// The one-line verdict of a scenario.
pub fn verdict(r: &ScenarioReport) -> String {
    let word = if r.passed { "PASS" } else { "FAIL" };
    let fp = |f: &BeforeAfter| short(&f.after);
    let mut parts = Vec::new();
    if let Some(ms) = r.establish_ms {
        parts.push(format!("Ready in {ms} ms"));
    }
    if let Some(ms) = r.migration_ms {
        match r.rtt_ms {
            Some(rtt) if rtt > 0 => parts.push(format!(
                "both Ready {ms} ms after the change ({:.1} RTT)",
                ms as f64 / rtt as f64
            )),
            _ => parts.push(format!("both Ready {ms} ms after the change")),
        }
    }
    if let Some(ms) = r.recovery_ms {
        parts.push(format!("recovered {ms} ms after the network healed"));
    }
    let hs_same = r.handshakes_before == r.handshakes_after;
    if r.scenario != "establish" {
        parts.push(if hs_same {
            "no handshake".to_string()
        } else {
            format!(
                "handshakes A {}→{}, B {}→{}",
                r.handshakes_before.a,
                r.handshakes_after.a,
                r.handshakes_before.b,
                r.handshakes_after.b
            )
        });
    }
    let fp_same = r.fingerprint_a.before == r.fingerprint_a.after;
    if r.scenario == "establish" || !fp_same {
        parts.push(format!("PeerSecret {} on both sides", fp(&r.fingerprint_a)));
    } else {
        parts.push(format!("PeerSecret {} unchanged", fp(&r.fingerprint_a)));
    }
    let in_order = r
        .checks
        .iter()
        .find(|c| c.name.starts_with("every message"))
        .is_some_and(|c| c.passed);
    parts.push(if in_order {
        format!(
            "{}/{} messages exactly once, in order",
            r.messages_delivered, r.messages_sent
        )
    } else {
        format!(
            "{}/{} messages delivered, {} DUPLICATES or out of order",
            r.messages_delivered, r.messages_sent, r.duplicates
        )
    });
    if let Some(path) = &r.path_after {
        parts.push(format!("{path} path"));
    }
    format!("{word} {}: {}", r.scenario, parts.join(", "))
}

/// The summary table of a run.
pub fn summary(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<6} {:>9} {:>13} {:>7} {:<20} {:>7} {:>4} {:<6}",
        "scenario",
        "result",
        "ready ms",
        "handshakes",
        "epoch",
        "PeerSecret A=B",
        "msgs",
        "dup",
        "path"
    );
    for r in reports {
        let ms = r
            .migration_ms
            .or(r.establish_ms)
            .map_or("-".to_string(), |v| v.to_string());
        let hs = format!(
            "{}/{}→{}/{}",
            r.handshakes_before.a,
            r.handshakes_before.b,
            r.handshakes_after.a,
            r.handshakes_after.b
        );
        let epoch = format!("{}→{}", show(r.epoch_before), show(r.epoch_after));
        let same = r.fingerprint_a.after == r.fingerprint_b.after;
        let fp = format!(
            "{}→{}{}",
            short(&r.fingerprint_a.before),
            short(&r.fingerprint_a.after),
            if same { "" } else { " ≠" }
        );
        let _ = writeln!(
            out,
            "{:<22} {:<6} {:>9} {:>13} {:>7} {:<20} {:>7} {:>4} {:<6}",
            r.scenario,
            if r.passed { "PASS" } else { "FAIL" },
            ms,
            hs,
            epoch,
            fp,
            format!("{}/{}", r.messages_delivered, r.messages_sent),
            r.duplicates,
            r.path_after.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(
        out,
        "ready ms: from the start (establish) or the network change to both sides Ready; handshakes A/B before→after"
    );
    let passed = reports.iter().filter(|r| r.passed).count();
    let _ = writeln!(out, "{passed}/{} scenarios passed", reports.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
        }
    }
}
