//! The simulated scenarios: whole nodes on the simulated network under virtual time
//! (see [`crate::cluster`]), one scenario per [`Scenario`], each ending with the
//! invariant checks of its report.

use super::recorder::{both_ready_again, delivered, messages, reported, Recorder, Snap};
use super::{short, show, DemoOptions, Scenario, ScenarioReport, A, B, BURST};
use crate::app::metrics::{millis, path_name};
use crate::cluster::{run_simulation, ClusterBuilder, SimCluster};
use crate::hub::NodeEvent;
use std::time::Duration;
use tether_protocol::{PathKind, SessionStatus};
use tether_transport::sim::LinkConditions;

fn conditions_text(opts: &DemoOptions) -> String {
    format!(
        "{} ms RTT, {}% loss, virtual clock",
        opts.rtt_ms,
        opts.loss * 100.0
    )
}

/// Plays one simulated scenario.
pub fn play(scenario: Scenario, opts: &DemoOptions) -> ScenarioReport {
    let started = std::time::Instant::now();
    let opts = opts.clone();
    let (recorder, timeline) = run_simulation(|| async move { simulate(scenario, &opts).await });
    recorder.finish(&timeline, started.elapsed())
}

async fn snaps(cluster: &SimCluster) -> (Snap, Snap) {
    (
        Snap::of(cluster.peer_status(A, B).await),
        Snap::of(cluster.peer_status(B, A).await),
    )
}

async fn send_burst(
    cluster: &SimCluster,
    tag: &str,
    range: std::ops::Range<usize>,
) -> Result<(), String> {
    let (a, b) = (cluster.id(A), cluster.id(B));
    for i in range {
        cluster
            .node(A)
            .send(b, format!("{tag} a{i}").into_bytes())
            .await
            .map_err(|e| format!("A send: {e}"))?;
        cluster
            .node(B)
            .send(a, format!("{tag} b{i}").into_bytes())
            .await
            .map_err(|e| format!("B send: {e}"))?;
    }
    Ok(())
}

async fn simulate(scenario: Scenario, opts: &DemoOptions) -> (Recorder, String) {
    let mut rec = Recorder::new(
        scenario.name(),
        scenario.describe(),
        "simulated",
        conditions_text(opts),
        opts.seed,
    );
    let conditions = LinkConditions {
        latency: Duration::from_millis(opts.rtt_ms / 2),
        loss: opts.loss,
        ..LinkConditions::default()
    };
    let mut builder = ClusterBuilder::new(opts.seed, 2)
        .pair(A, B)
        .conditions(conditions);
    if scenario == Scenario::WindowExpiry {
        builder = builder.presence(tether_presence::Config {
            migration_window: Duration::from_secs(8),
            ..tether_presence::Config::default()
        });
    }
    let mut cluster = builder.start().await;
    let tag = scenario.name();
    let (ida, idb) = (cluster.id(A), cluster.id(B));

    if scenario == Scenario::Establish {
        rec.mark(
            Duration::ZERO,
            "relay, A and B start; A and B are paired and know each other's address",
        );
    }
    let ready = cluster
        .run_until(Duration::from_secs(30), |c| c.both_ready(A, B))
        .await;
    if !ready {
        rec.check(
            "A and B establish a session",
            false,
            "not Ready within 30 s",
        );
        let timeline = cluster.timeline(&[A, B], Duration::ZERO);
        return (rec, timeline);
    }
    if scenario == Scenario::Establish {
        let ready_at = both_ready_again(
            [&cluster.devices[A].log, &cluster.devices[B].log],
            [idb, ida],
            Duration::ZERO,
        );
        rec.report.establish_ms = ready_at.map(millis);
        // Crossing handshakes settle on one generation.
        cluster.run_for(Duration::from_secs(3)).await;
        let at = cluster.elapsed();
        rec.mark(at, format!("A and B each send {} messages", 2 * BURST));
        if let Err(e) = send_burst(&cluster, tag, 0..2 * BURST).await {
            rec.check("send accepted", false, e);
        }
        let count = 2 * BURST;
        cluster
            .run_until(Duration::from_secs(20), |c| {
                delivered(&c.devices[B].log, ida, tag).len() >= count
                    && delivered(&c.devices[A].log, idb, tag).len() >= count
            })
            .await;
        cluster.run_for(Duration::from_secs(1)).await;
        let (a, b) = snaps(&cluster).await;
        rec.before(&Snap::default(), &Snap::default());
        rec.after(&a, &b);
        rec.check_same_session(&a, &b);
        rec.check(
            "one handshake generation committed",
            a.handshakes >= 1 && b.handshakes >= 1 && a.epoch.is_some(),
            format!(
                "handshakes A {} / B {}, epoch {}",
                a.handshakes,
                b.handshakes,
                show(a.epoch)
            ),
        );
        check_all_messages(&mut rec, &cluster, tag, count);
        rec.check(
            "direct path",
            a.path == Some(PathKind::Direct),
            format!("A's path: {}", a.path.map_or("-", path_name)),
        );
        let timeline = cluster.timeline(&[A, B], Duration::ZERO);
        return (rec, timeline);
    }

    // Every other scenario starts from an established, settled session.
    cluster.run_for(Duration::from_secs(3)).await;
    let (a0, b0) = snaps(&cluster).await;
    rec.before(&a0, &b0);
    let since = cluster.elapsed();
    rec.mark(
        Duration::ZERO,
        format!(
            "A and B are Ready: epoch {}, {} handshake(s) each, PeerSecret {}",
            show(a0.epoch),
            a0.handshakes,
            short(&a0.peer_secret)
        ),
    );
    rec.mark(
        Duration::ZERO,
        format!("A and B each send {BURST} messages"),
    );
    let mut sent_ok = send_burst(&cluster, tag, 0..BURST).await;
    let old_a = cluster.devices[A].ip;
    let old_b = cluster.devices[B].ip;
    match scenario {
        Scenario::SingleSideMove => {
            let moved = cluster.change_address(A).await;
            rec.mark(
                Duration::ZERO,
                format!("A changes networks: {old_a} -> {}", cluster.devices[A].ip),
            );
            if let Err(e) = moved {
                rec.check("A rebinds", false, e);
            }
        }
        Scenario::DirectBlockedRelay => {
            cluster.block_direct(A, B);
            let moved = cluster.change_address(A).await;
            rec.mark(
                Duration::ZERO,
                format!(
                    "A changes networks: {old_a} -> {}; the new network blocks direct UDP to B",
                    cluster.devices[A].ip
                ),
            );
            if let Err(e) = moved {
                rec.check("A rebinds", false, e);
            }
        }
        Scenario::BothMove => {
            let moved_a = cluster.change_address(A).await;
            let moved_b = cluster.change_address(B).await;
            rec.mark(
                Duration::ZERO,
                format!(
                    "A changes networks ({old_a} -> {}) and so does B ({old_b} -> {})",
                    cluster.devices[A].ip, cluster.devices[B].ip
                ),
            );
            if let Err(e) = moved_a.and(moved_b) {
                rec.check("A and B rebind", false, e);
            }
        }
        Scenario::WindowExpiry => {
            cluster.partition(A, B);
            cluster.partition_relay(A);
            let moved = cluster.change_address(A).await;
            rec.mark(
                Duration::ZERO,
                format!(
                    "A changes networks ({old_a} -> {}) into one that reaches neither B nor the relay",
                    cluster.devices[A].ip
                ),
            );
            if let Err(e) = moved {
                rec.check("A rebinds", false, e);
            }
        }
        Scenario::Establish => {}
    }
    rec.mark(
        Duration::ZERO,
        format!("A and B each send {BURST} more messages"),
    );
    sent_ok = sent_ok.and(send_burst(&cluster, tag, BURST..2 * BURST).await);
    if let Err(e) = sent_ok {
        rec.check("send accepted", false, e);
    }
    let count = 2 * BURST;
    let all_delivered = move |c: &SimCluster| {
        delivered(&c.devices[B].log, ida, tag).len() >= count
            && delivered(&c.devices[A].log, idb, tag).len() >= count
    };

    let mut heal_at = None;
    if scenario == Scenario::WindowExpiry {
        let evicted = cluster
            .run_until(Duration::from_secs(30), |c| {
                c.devices[A].log.iter().any(|(at, e)| {
                    *at >= since
                        && matches!(
                            e,
                            NodeEvent::Status {
                                to: SessionStatus::Evicted,
                                ..
                            }
                        )
                })
            })
            .await;
        rec.check(
            "the migration window expires and A evicts the session",
            evicted,
            if evicted {
                "evicted"
            } else {
                "no eviction within 30 s"
            },
        );
        let at = cluster.elapsed();
        cluster.net.heal_all();
        rec.mark(
            at - since,
            "the network heals: A reaches B and the relay again",
        );
        heal_at = Some(at);
    }
    let recovered = cluster
        .run_until(Duration::from_secs(40), |c| {
            all_delivered(c)
                && c.both_ready(A, B)
                && both_ready_again([&c.devices[A].log, &c.devices[B].log], [idb, ida], since)
                    .is_some()
        })
        .await;
    if !recovered {
        rec.check(
            "both sides Ready again with every message",
            false,
            "not within 40 s",
        );
    }
    let logs = [&cluster.devices[A].log[..], &cluster.devices[B].log[..]];
    rec.report.migration_ms = both_ready_again(logs, [idb, ida], since).map(millis);
    rec.report.migration_reported_ms = reported(logs, since);
    if let Some(heal) = heal_at {
        rec.report.recovery_ms = both_ready_again(logs, [idb, ida], heal).map(millis);
    }
    if scenario == Scenario::BothMove {
        // The relay may carry the session first; the direct path takes over.
        for _ in 0..20 {
            if cluster.peer_status(A, B).await.and_then(|s| s.path) == Some(PathKind::Direct) {
                break;
            }
            cluster.run_for(Duration::from_millis(500)).await;
        }
    }
    // Anything duplicated would arrive now.
    cluster.run_for(Duration::from_secs(2)).await;
    let (a1, b1) = snaps(&cluster).await;
    rec.after(&a1, &b1);
    rec.check_same_session(&a1, &b1);
    match scenario {
        Scenario::WindowExpiry => {
            rec.check(
                "recovery is a new handshake: new epoch and PeerSecret",
                a1.epoch > a0.epoch && a1.peer_secret != a0.peer_secret,
                format!(
                    "epoch {} -> {}, PeerSecret {} -> {}",
                    show(a0.epoch),
                    show(a1.epoch),
                    short(&a0.peer_secret),
                    short(&a1.peer_secret)
                ),
            );
        }
        _ => rec.check_no_handshake((&a0, &b0), (&a1, &b1)),
    }
    check_all_messages(&mut rec, &cluster, tag, count);
    let (want, why) = match scenario {
        Scenario::DirectBlockedRelay => (PathKind::Relay, "relay path (direct UDP is blocked)"),
        _ => (PathKind::Direct, "direct path"),
    };
    rec.check(
        why,
        a1.path == Some(want),
        format!("A's path: {}", a1.path.map_or("-", path_name)),
    );
    if scenario == Scenario::SingleSideMove {
        let ip = cluster.devices[A].ip;
        rec.check(
            "B reaches A at its new address",
            b1.remote.map(|r| r.ip()) == Some(ip),
            format!(
                "B sends to {}",
                b1.remote.map_or("-".into(), |r| r.to_string())
            ),
        );
    }
    let timeline = cluster.timeline(&[A, B], since);
    (rec, timeline)
}

fn check_all_messages(rec: &mut Recorder, cluster: &SimCluster, tag: &str, count: usize) {
    let (ida, idb) = (cluster.id(A), cluster.id(B));
    let from_a = messages(tag, "a", 0..count);
    let from_b = messages(tag, "b", 0..count);
    let at_b = delivered(&cluster.devices[B].log, ida, tag);
    let at_a = delivered(&cluster.devices[A].log, idb, tag);
    rec.check_messages([&from_a, &from_b], [&at_b, &at_a]);
}
