//! The sans-IO core: per-peer address records, and the candidate order compiled from
//! them and pushed to DirectConnection whenever it changes.

use crate::policy::{order_candidates, AddressRecord, FAILURES_TO_DEMOTE};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    BlueprintCompiled, Candidate, CandidateSource, DeviceId, Endpoint, PathKind, PathMeasured,
    PeerAnnounced, SessionReady,
};

/// Weight of a new RTT sample in the smoothed RTT, as TCP's SRTT (RFC 6298: 1/8).
const SRTT_NEW_SAMPLE_EIGHTHS: u64 = 1;

/// Addresses remembered per peer. Old announcements beyond this are forgotten first;
/// 32 is several networks' worth of dual-stack addresses.
const MAX_RECORDS_PER_PEER: usize = 32;

/// Settings of the ordering policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long an address announced by the peer or read from a hint keeps its rank.
    pub fresh_for: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Five minutes: longer than any migration window, shorter than a DHCP lease.
            fresh_for: Duration::from_secs(300),
        }
    }
}

/// What the core is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A paired peer and the addresses its config lists.
    AddPeer {
        /// The peer.
        peer: DeviceId,
        /// Configured addresses.
        configured: Vec<SocketAddr>,
    },
    /// The peer said where it is (its newest announcement ranks first).
    Announced(PeerAnnounced),
    /// A path answered (or not).
    Measured(PathMeasured),
    /// A session became ready on a path.
    Ready(SessionReady),
}

/// What the core asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A peer's new candidate order, for DirectConnection.
    Compiled(BlueprintCompiled),
}

/// What the core knows of one peer.
#[derive(Debug, Default)]
struct PeerRecords {
    records: Vec<AddressRecord>,
    /// The order last sent (sent again only when it changes).
    compiled: Vec<Candidate>,
    /// When a fresh announced or hinted address goes stale, which may change the order.
    next_staleness: Option<Instant>,
}

/// The ConnectionBlueprint core. See the crate docs.
#[derive(Debug)]
pub struct ConnectionBlueprint {
    config: Config,
    peers: BTreeMap<DeviceId, PeerRecords>,
    /// Every peer's `next_staleness`, by instant: the next deadline and the peers due
    /// are found without a walk over every peer (a node with thousands of peers feeds
    /// this core a measurement per heartbeat).
    staleness: BTreeSet<(Instant, DeviceId)>,
    outputs: VecDeque<Output>,
}

impl ConnectionBlueprint {
    /// A core with no peers yet.
    pub fn new(config: Config, _now: Instant) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            staleness: BTreeSet::new(),
            outputs: VecDeque::new(),
        }
    }
}

impl SansIoCore for ConnectionBlueprint {
    type Input = Input;
    type Output = Output;

    /// Feeds one input; the peer's order is sent if it changed.
    fn handle(&mut self, now: Instant, input: Input) {
        let peer = match input {
            Input::AddPeer { peer, configured } => {
                let records = &mut self.peers.entry(peer).or_default().records;
                for addr in configured {
                    upsert(records, addr, CandidateSource::Configured, now);
                }
                peer
            }
            Input::Announced(announced) => {
                let records = &mut self.peers.entry(announced.peer).or_default().records;
                for record in records.iter_mut() {
                    record.announced_rank = None;
                }
                for (rank, addr) in announced.endpoints.iter().enumerate() {
                    let record = upsert(records, *addr, announced.source, now);
                    record.announced_rank = Some(rank);
                }
                trim(records);
                announced.peer
            }
            Input::Measured(measured) => {
                if !self.measured(now, &measured) {
                    return;
                }
                measured.peer
            }
            Input::Ready(ready) => {
                let (PathKind::Direct, Some(remote)) = (ready.path, ready.remote) else {
                    return;
                };
                let records = &mut self.peers.entry(ready.peer).or_default().records;
                for record in records.iter_mut() {
                    if record.source == CandidateSource::LastKnownGood {
                        record.source = CandidateSource::LearnedFromPeer;
                    }
                }
                let record = upsert(records, remote, CandidateSource::LastKnownGood, now);
                record.failures = 0;
                ready.peer
            }
        };
        self.compile(now, peer);
    }

    /// Recompiles the peers whose fresh addresses went stale.
    fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<DeviceId> = self
            .staleness
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        for peer in due {
            self.compile(now, peer);
        }
    }

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the next fresh address goes stale.
    fn poll_timeout(&self) -> Option<Instant> {
        self.staleness.first().map(|(at, _)| *at)
    }
}

impl ConnectionBlueprint {
    fn compile(&mut self, now: Instant, peer: DeviceId) {
        let fresh_for = self.config.fresh_for;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        // An address is fresh while `now - learned_at <= fresh_for`: it goes stale just
        // after that.
        if let Some(old) = state.next_staleness.take() {
            self.staleness.remove(&(old, peer));
        }
        state.next_staleness = state
            .records
            .iter()
            .filter(|r| {
                matches!(
                    r.source,
                    CandidateSource::LearnedFromPeer | CandidateSource::Rendezvous
                )
            })
            .map(|r| r.learned_at + fresh_for + Duration::from_millis(1))
            .filter(|at| *at > now)
            .min();
        if let Some(at) = state.next_staleness {
            self.staleness.insert((at, peer));
        }
        let candidates = order_candidates(&state.records, now, fresh_for);
        if candidates != state.compiled {
            state.compiled.clone_from(&candidates);
            self.outputs
                .push_back(Output::Compiled(BlueprintCompiled { peer, candidates }));
        }
    }

    /// Records a measurement; false when it concerns no known address.
    fn measured(&mut self, now: Instant, measured: &PathMeasured) -> bool {
        let Endpoint::Direct(addr) = measured.endpoint else {
            return false;
        };
        let Some(state) = self.peers.get_mut(&measured.peer) else {
            return false;
        };
        let Some(record) = state.records.iter_mut().find(|r| r.addr == addr) else {
            return false;
        };
        match measured.rtt_ms {
            Some(sample) => {
                record.failures = 0;
                record.learned_at = now;
                record.srtt_ms = Some(match record.srtt_ms {
                    None => sample,
                    Some(srtt) => {
                        (srtt * (8 - SRTT_NEW_SAMPLE_EIGHTHS) + sample * SRTT_NEW_SAMPLE_EIGHTHS)
                            / 8
                    }
                });
            }
            None => record.failures = record.failures.saturating_add(1).min(FAILURES_TO_DEMOTE),
        }
        true
    }
}

/// Inserts or refreshes a record; a more trusted source replaces a less trusted one.
fn upsert(
    records: &mut Vec<AddressRecord>,
    addr: SocketAddr,
    source: CandidateSource,
    now: Instant,
) -> &mut AddressRecord {
    let index = match records.iter().position(|r| r.addr == addr) {
        Some(index) => {
            let record = &mut records[index];
            record.learned_at = record.learned_at.max(now);
            if trust(source) > trust(record.source) {
                record.source = source;
            }
            index
        }
        None => {
            records.push(AddressRecord {
                addr,
                source,
                learned_at: now,
                srtt_ms: None,
                failures: 0,
                announced_rank: None,
            });
            records.len() - 1
        }
    };
    &mut records[index]
}

/// How much a source is trusted when the same address is learned twice.
fn trust(source: CandidateSource) -> u8 {
    match source {
        CandidateSource::Relay => 0,
        CandidateSource::Configured => 1,
        CandidateSource::Rendezvous => 2,
        CandidateSource::LearnedFromPeer => 3,
        CandidateSource::LastKnownGood => 4,
    }
}

/// Forgets the oldest non-configured records beyond the cap.
fn trim(records: &mut Vec<AddressRecord>) {
    while records.len() > MAX_RECORDS_PER_PEER {
        let oldest = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.source != CandidateSource::Configured)
            .min_by_key(|(_, r)| r.learned_at)
            .map(|(index, _)| index);
        match oldest {
            Some(index) => {
                records.remove(index);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::{Candidate, RequestId, SessionId};

    fn peer() -> DeviceId {
        DeviceId([1; 32])
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn line(out: &Output) -> String {
        let Output::Compiled(compiled) = out;
        let parts: Vec<String> = compiled
            .candidates
            .iter()
            .map(|Candidate { endpoint, source }| match endpoint {
                Endpoint::Direct(addr) => format!("{addr}({source:?})"),
                Endpoint::Relay => "relay".into(),
            })
            .collect();
        format!("compiled -> {}", parts.join(" "))
    }

    fn announced(endpoints: &[&str], source: CandidateSource) -> Input {
        Input::Announced(PeerAnnounced {
            peer: peer(),
            endpoints: endpoints.iter().map(|a| addr(a)).collect(),
            source,
        })
    }

    fn failed(at: &str) -> Input {
        Input::Measured(PathMeasured {
            peer: peer(),
            endpoint: Endpoint::Direct(addr(at)),
            rtt_ms: None,
            srtt_ms: None,
        })
    }

    /// The trace of a peer through establishment, a migration signal, a hint, failures
    /// and its announcement going stale. An input that leaves the order as it was sends
    /// nothing.
    #[test]
    fn transition_trace() {
        let t0 = Instant::now();
        let mut core = ConnectionBlueprint::new(Config::default(), t0);
        let mut trace = Vec::new();
        let mut step =
            |core: &mut ConnectionBlueprint, at: u64, label: &str, input: Option<Input>| {
                let now = t0 + Duration::from_millis(at);
                match input {
                    Some(input) => core.handle(now, input),
                    None => core.handle_timeout(now),
                }
                trace.push(format!("{at:>6}ms {label}"));
                while let Some(out) = core.poll_output() {
                    trace.push(format!("        {}", line(&out)));
                }
            };
        step(
            &mut core,
            0,
            "add peer with two configured addresses",
            Some(Input::AddPeer {
                peer: peer(),
                configured: vec![addr("192.0.2.1:4433"), addr("192.0.2.2:4433")],
            }),
        );
        step(
            &mut core,
            40,
            "session ready on 192.0.2.2",
            Some(Input::Ready(SessionReady {
                request: Some(RequestId(1)),
                peer: peer(),
                session: SessionId::from_random_bytes([0; 16]),
                epoch: tether_protocol::Epoch(1),
                path: PathKind::Direct,
                remote: Some(addr("192.0.2.2:4433")),
                after_handshake: true,
                rekey: false,
            })),
        );
        step(
            &mut core,
            50,
            "session ready on 192.0.2.2 again (no change)",
            Some(Input::Ready(SessionReady {
                request: None,
                peer: peer(),
                session: SessionId::from_random_bytes([0; 16]),
                epoch: tether_protocol::Epoch(1),
                path: PathKind::Direct,
                remote: Some(addr("192.0.2.2:4433")),
                after_handshake: false,
                rekey: false,
            })),
        );
        step(
            &mut core,
            9000,
            "migration signal: peer now at 198.51.100.7",
            Some(announced(
                &["198.51.100.7:4433"],
                CandidateSource::LearnedFromPeer,
            )),
        );
        step(
            &mut core,
            9100,
            "rendezvous hint 203.0.113.9",
            Some(announced(
                &["203.0.113.9:4433"],
                CandidateSource::Rendezvous,
            )),
        );
        for _ in 0..2 {
            core.handle(t0 + Duration::from_millis(9150), failed("192.0.2.2:4433"));
        }
        step(
            &mut core,
            9200,
            "old address failed a third time",
            Some(failed("192.0.2.2:4433")),
        );
        let stale = 9100 + Config::default().fresh_for.as_millis() as u64 + 1;
        assert_eq!(
            core.poll_timeout(),
            Some(t0 + Duration::from_millis(9000 + 300_000 + 1))
        );
        step(&mut core, 309_001, "the migration signal goes stale", None);
        step(&mut core, stale, "the hint goes stale", None);
        assert_eq!(core.poll_timeout(), None);
        insta::assert_snapshot!(trace.join("\n"));
    }

    #[test]
    fn measurements_of_unknown_peers_or_addresses_are_ignored() {
        let t0 = Instant::now();
        let mut core = ConnectionBlueprint::new(Config::default(), t0);
        core.handle(
            t0,
            Input::Measured(PathMeasured {
                peer: peer(),
                endpoint: Endpoint::Direct(addr("10.0.0.1:1")),
                rtt_ms: Some(5),
                srtt_ms: Some(5),
            }),
        );
        assert!(core.poll_output().is_none());
        assert!(core.peers.is_empty());
    }

    #[test]
    fn records_per_peer_are_bounded() {
        let t0 = Instant::now();
        let mut core = ConnectionBlueprint::new(Config::default(), t0);
        for i in 0..100u16 {
            core.handle(
                t0 + Duration::from_millis(u64::from(i)),
                Input::Announced(PeerAnnounced {
                    peer: peer(),
                    endpoints: vec![SocketAddr::from(([10, 0, 0, 1], i))],
                    source: CandidateSource::Rendezvous,
                }),
            );
        }
        let records = &core.peers[&peer()].records;
        assert_eq!(records.len(), MAX_RECORDS_PER_PEER);
        // The newest survive.
        assert!(records.iter().any(|r| r.addr.port() == 99));
        assert!(!records.iter().any(|r| r.addr.port() == 0));
    }
}
