//! `tether bench handshake`: what establishing a session costs.
//!
//! - **Round trips to Ready**, in virtual time: a fresh pair of whole nodes (the real
//!   actors, quinn and Noise) on the simulated network at 40 ms RTT, from the first
//!   packet between the two devices to both sides Ready (as the baseline row of the
//!   migration benchmark, without messages): a QUIC handshake, the Noise handshake,
//!   and the confirmation of the new PeerSecret by a frame each way.
//! - **CPU per side**: the Noise `IKpsk2` handshake of `tether-crypto` driven directly
//!   in a loop on one thread, as DirectConnection drives it (`KeyRing::initiate`,
//!   `Handshake::respond` and `KeyRing::accept`, `KeyRing::confirm`), each side's steps
//!   timed on the thread's CPU clock.
//! - **Handshakes per second per core**: one core doing both sides of every handshake
//!   (1 s / the two sides' CPU), and one core answering only (a responder's share).

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use tether::cluster::{run_simulation, ClusterBuilder};
use tether_crypto::{Handshake, KeyRing, RelationshipKey, StaticKeypair};
use tether_transport::sim::LinkConditions;

use super::BenchError;

/// Round-trip time of the simulated path.
const RTT: Duration = Duration::from_millis(40);
/// Step of virtual time between two looks at the cluster (tokio's timer granularity).
const POLL: Duration = Duration::from_millis(1);
/// A seed that is not Ready by then counts as failed.
const TIMEOUT: Duration = Duration::from_secs(30);
/// First seed of the simulated pairs (the migration benchmark's first seed).
const FIRST_SEED: u64 = 1000;

/// Everything `tether bench handshake` measured.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeReport {
    /// Round trips to Ready of fresh pairs, in virtual time.
    pub virtual_time: VirtualTime,
    /// CPU time of the Noise handshake per side.
    pub cpu: Cpu,
}

/// Fresh pairs on the simulated network.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualTime {
    /// Path RTT, ms.
    pub rtt_ms: u64,
    /// Pairs run (seeds).
    pub pairs: u64,
    /// Pairs that were not Ready within 30 s of virtual time.
    pub failed: u64,
    /// From the first packet between the devices to both Ready: median, in RTTs.
    pub rtts_p50: f64,
    /// The same, the slowest pair.
    pub rtts_max: f64,
    /// From start (Presence spreads first connects by 5 ms per peer, up to 5 ms here) to both Ready:
    /// median, ms.
    pub from_start_ms_p50: f64,
}

/// The Noise handshake on one thread.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// Handshakes timed.
    pub handshakes: usize,
    /// How each side's time was read.
    pub clock: &'static str,
    /// Initiator (message 1, then reading message 2): µs per handshake.
    pub initiator_us: f64,
    /// Responder (reading message 1, writing message 2): µs per handshake.
    pub responder_us: f64,
    /// Complete handshakes (both sides) one core does per second.
    pub handshakes_per_s_per_core: f64,
    /// Handshakes one core answers per second (the responder's side alone).
    pub responses_per_s_per_core: f64,
}

impl HandshakeReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let v = &self.virtual_time;
        let c = &self.cpu;
        format!(
            "handshake to Ready, virtual time, {} fresh pairs at {} ms RTT ({} failed)\n\
             \x20 from the first packet: {:.2} RTT median, {:.2} RTT max\n\
             \x20 from start (the first connect's spread included): {:.0} ms median\n\n\
             Noise IKpsk2 handshake, {} on one thread ({})\n\
             \x20 initiator   {:>8.1} us per handshake\n\
             \x20 responder   {:>8.1} us per handshake\n\
             \x20 per core    {:>8.0} handshakes/s (both sides), {:.0} responses/s\n",
            v.pairs,
            v.rtt_ms,
            v.failed,
            v.rtts_p50,
            v.rtts_max,
            v.from_start_ms_p50,
            c.handshakes,
            c.clock,
            c.initiator_us,
            c.responder_us,
            c.handshakes_per_s_per_core,
            c.responses_per_s_per_core,
        )
    }
}

/// Times `count` handshakes on the CPU and runs `seeds` fresh pairs in virtual time.
pub fn run(count: usize, seeds: u64) -> Result<HandshakeReport, BenchError> {
    let cpu = cpu(count)?;
    let mut from_dial = Vec::new();
    let mut from_start = Vec::new();
    let mut failed = 0;
    for seed in FIRST_SEED..FIRST_SEED + seeds {
        match run_simulation(|| fresh_pair(seed)) {
            Some((start, dial)) => {
                from_start.push(start);
                from_dial.push(dial);
            }
            None => failed += 1,
        }
    }
    let rtts = |d: &Duration| d.as_secs_f64() / RTT.as_secs_f64();
    let mut dial_rtts: Vec<f64> = from_dial.iter().map(rtts).collect();
    dial_rtts.sort_by(f64::total_cmp);
    from_start.sort();
    Ok(HandshakeReport {
        virtual_time: VirtualTime {
            rtt_ms: RTT.as_millis() as u64,
            pairs: seeds,
            failed,
            rtts_p50: super::round2(median(&dial_rtts).unwrap_or(f64::NAN)),
            rtts_max: super::round2(dial_rtts.last().copied().unwrap_or(f64::NAN)),
            from_start_ms_p50: median(&from_start)
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(f64::NAN),
        },
        cpu,
    })
}

fn median<T: Copy>(sorted: &[T]) -> Option<T> {
    sorted.get(sorted.len() / 2).copied()
}

/// One fresh pair: (start to both Ready, first packet between them to both Ready).
async fn fresh_pair(seed: u64) -> Option<(Duration, Duration)> {
    let mut cluster = ClusterBuilder::new(seed, 2)
        .pair(0, 1)
        .conditions(LinkConditions {
            latency: RTT / 2,
            ..LinkConditions::default()
        })
        .start()
        .await;
    // The packet log counts from the network's creation, the cluster's start.
    cluster.net.enable_packet_log();
    let t0 = cluster.elapsed();
    loop {
        cluster.collect_events();
        if cluster.both_ready(0, 1) {
            break;
        }
        if cluster.elapsed() - t0 >= TIMEOUT {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
    let total = cluster.elapsed() - t0;
    let (a, b) = (cluster.devices[0].ip, cluster.devices[1].ip);
    let first = cluster.net.packet_log().into_iter().find(|p| {
        let (from, to) = (p.from.ip(), p.to.ip());
        (from, to) == (a, b) || (from, to) == (b, a)
    })?;
    Some((total, total.saturating_sub(first.at.saturating_sub(t0))))
}

/// This thread's CPU time, or the wall clock where there is none.
fn thread_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn failed(step: &'static str) -> impl Fn(String) -> BenchError {
    move |e| BenchError::Setup(format!("handshake {step}: {e}"))
}

/// Runs one handshake from `a_ring` (device `a`) to `b_ring` (device `b`), as
/// DirectConnection does; returns the initiator's and the responder's time on this
/// thread's CPU clock.
fn handshake(
    (a, a_ring): (&StaticKeypair, &mut KeyRing),
    (b, b_ring): (&StaticKeypair, &mut KeyRing),
    rng: &mut ChaCha20Rng,
) -> Result<(Duration, Duration), BenchError> {
    let t0 = thread_time();
    let message1 = a_ring
        .initiate(a, tether::unix_ms(), rng)
        .map_err(|e| failed("message 1")(e.to_string()))?;
    let t1 = thread_time();
    let responded = Handshake::respond(
        b,
        &message1,
        |peer| (peer == b_ring.peer()).then(|| b_ring.peer_params()),
        rng,
    )
    .map_err(|e| failed("response")(e.to_string()))?;
    let message2 = b_ring
        .accept(responded)
        .map_err(|e| failed("message 2")(e.to_string()))?;
    let t2 = thread_time();
    a_ring
        .confirm(&message2)
        .map_err(|e| failed("confirm")(e.to_string()))?;
    let t3 = thread_time();
    Ok(((t1 - t0) + (t3 - t2), t2 - t1))
}

/// Times `count` handshakes between two fresh rings each.
fn cpu(count: usize) -> Result<Cpu, BenchError> {
    let mut rng = ChaCha20Rng::from_entropy();
    let a = StaticKeypair::generate(&mut rng);
    let b = StaticKeypair::generate(&mut rng);
    let rk = RelationshipKey::generate(&mut rng);
    let (mut initiator, mut responder) = (Duration::ZERO, Duration::ZERO);
    // One untimed round first: page faults and cold caches are not the handshake's.
    for round in 0..=count {
        let mut a_ring = KeyRing::new(*b.public(), rk.clone());
        let mut b_ring = KeyRing::new(*a.public(), rk.clone());
        let (i, r) = handshake((&a, &mut a_ring), (&b, &mut b_ring), &mut rng)?;
        if round > 0 {
            initiator += i;
            responder += r;
        }
    }
    let per = |total: Duration| total.as_secs_f64() * 1e6 / count as f64;
    let (initiator_us, responder_us) = (per(initiator), per(responder));
    Ok(Cpu {
        handshakes: count,
        clock: "thread CPU time",
        initiator_us: super::round2(initiator_us),
        responder_us: super::round2(responder_us),
        handshakes_per_s_per_core: (1e6 / (initiator_us + responder_us).max(1e-9)).round(),
        responses_per_s_per_core: (1e6 / responder_us.max(1e-9)).round(),
    })
}

/// Two rings keyed by one handshake, each having committed the generation (a frame
/// each way), ready to seal and open.
pub(super) fn paired_rings() -> Result<(KeyRing, KeyRing), BenchError> {
    let mut rng = ChaCha20Rng::from_entropy();
    let a = StaticKeypair::generate(&mut rng);
    let b = StaticKeypair::generate(&mut rng);
    let rk = RelationshipKey::generate(&mut rng);
    let mut a_ring = KeyRing::new(*b.public(), rk.clone());
    let mut b_ring = KeyRing::new(*a.public(), rk);
    handshake((&a, &mut a_ring), (&b, &mut b_ring), &mut rng)?;
    let step = |e: tether_crypto::RingError| failed("commit")(e.to_string());
    let frame = a_ring.seal(b"commit").map_err(step)?;
    b_ring.open(&frame).map_err(step)?;
    let frame = b_ring.seal(b"commit").map_err(step)?;
    a_ring.open(&frame).map_err(step)?;
    Ok((a_ring, b_ring))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_handshakes_are_timed() {
        let cpu = cpu(3).unwrap();
        assert!(cpu.initiator_us > 0.0 && cpu.responder_us > 0.0);
    }

    #[test]
    fn a_fresh_pair_is_ready_in_a_few_round_trips() {
        let (start, dial) = run_simulation(|| fresh_pair(FIRST_SEED)).unwrap();
        assert!(dial <= start);
        assert!(dial > RTT, "{dial:?}");
    }
}
