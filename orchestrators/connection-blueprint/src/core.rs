//! The sans-IO core: per-peer address records and blueprint compilation.

use crate::policy::{order_candidates, AddressRecord, FAILURES_TO_DEMOTE};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_protocol::shell::SansIoCore;
use tether_protocol::{
    BlueprintCompiled, CandidateSource, DeviceId, Endpoint, PathKind, PathMeasured,
    PeerEndpointHint, RecompileBlueprint, SessionReady,
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
    /// Compile a blueprint now.
    Recompile(RecompileBlueprint),
    /// A path answered (or not).
    Measured(PathMeasured),
    /// The peer's endpoints from a rendezvous hint.
    Hint(PeerEndpointHint),
    /// A session became ready on a path.
    Ready(SessionReady),
}

/// What the core asks to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A compiled blueprint for Presence.
    Compiled(BlueprintCompiled),
}

/// The ConnectionBlueprint core. See the crate docs.
#[derive(Debug)]
pub struct ConnectionBlueprint {
    config: Config,
    peers: BTreeMap<DeviceId, Vec<AddressRecord>>,
    outputs: VecDeque<Output>,
}

impl ConnectionBlueprint {
    /// A core with no peers yet.
    pub fn new(config: Config, _now: Instant) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }
}

impl SansIoCore for ConnectionBlueprint {
    type Input = Input;
    type Output = Output;

    /// Feeds one input.
    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::AddPeer { peer, configured } => {
                let records = self.peers.entry(peer).or_default();
                for addr in configured {
                    upsert(records, addr, CandidateSource::Configured, now);
                }
            }
            Input::Recompile(request) => self.compile(now, request),
            Input::Measured(measured) => self.measured(now, measured),
            Input::Hint(hint) => {
                let records = self.peers.entry(hint.peer).or_default();
                for addr in hint.endpoints {
                    upsert(records, addr, CandidateSource::Rendezvous, now);
                }
                trim(records);
            }
            Input::Ready(ready) => {
                if let (PathKind::Direct, Some(remote)) = (ready.path, ready.remote) {
                    let records = self.peers.entry(ready.peer).or_default();
                    for record in records.iter_mut() {
                        if record.source == CandidateSource::LastKnownGood {
                            record.source = CandidateSource::LearnedFromPeer;
                        }
                    }
                    let record = upsert(records, remote, CandidateSource::LastKnownGood, now);
                    record.failures = 0;
                }
            }
        }
    }

    /// The core sets no timers; spurious calls are harmless.
    fn handle_timeout(&mut self, _now: Instant) {}

    /// Next output to deliver.
    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The core never needs waking.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

impl ConnectionBlueprint {
    fn compile(&mut self, now: Instant, request: RecompileBlueprint) {
        let records = self.peers.entry(request.peer).or_default();
        for record in records.iter_mut() {
            record.announced_rank = None;
        }
        for (rank, addr) in request.peer_endpoints_first.iter().enumerate() {
            let record = upsert(records, *addr, CandidateSource::LearnedFromPeer, now);
            record.announced_rank = Some(rank);
        }
        trim(records);
        let candidates = order_candidates(records, now, self.config.fresh_for);
        for record in records.iter_mut() {
            record.announced_rank = None;
        }
        self.outputs.push_back(Output::Compiled(BlueprintCompiled {
            request: request.request,
            peer: request.peer,
            candidates,
        }));
    }

    fn measured(&mut self, now: Instant, measured: PathMeasured) {
        let Endpoint::Direct(addr) = measured.endpoint else {
            return;
        };
        let Some(records) = self.peers.get_mut(&measured.peer) else {
            return;
        };
        let Some(record) = records.iter_mut().find(|r| r.addr == addr) else {
            return;
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
        format!("compiled {} -> {}", compiled.request, parts.join(" "))
    }

    /// The trace of a peer through establishment, a migration signal and a hint.
    #[test]
    fn transition_trace() {
        let t0 = Instant::now();
        let mut core = ConnectionBlueprint::new(Config::default(), t0);
        let mut trace = Vec::new();
        let mut step = |core: &mut ConnectionBlueprint, at: u64, label: &str, input: Input| {
            core.handle(t0 + Duration::from_millis(at), input);
            trace.push(format!("{at:>6}ms {label}"));
            while let Some(out) = core.poll_output() {
                trace.push(format!("        {}", line(&out)));
            }
        };
        step(
            &mut core,
            0,
            "add peer with two configured addresses",
            Input::AddPeer {
                peer: peer(),
                configured: vec![addr("192.0.2.1:4433"), addr("192.0.2.2:4433")],
            },
        );
        step(
            &mut core,
            1,
            "recompile for establishment",
            Input::Recompile(RecompileBlueprint {
                request: RequestId(1),
                peer: peer(),
                peer_endpoints_first: vec![],
            }),
        );
        step(
            &mut core,
            40,
            "session ready on 192.0.2.2",
            Input::Ready(SessionReady {
                request: Some(RequestId(1)),
                peer: peer(),
                session: SessionId::from_random_bytes([0; 16]),
                epoch: tether_protocol::Epoch(1),
                path: PathKind::Direct,
                remote: Some(addr("192.0.2.2:4433")),
                after_handshake: true,
            }),
        );
        step(
            &mut core,
            50,
            "recompile",
            Input::Recompile(RecompileBlueprint {
                request: RequestId(2),
                peer: peer(),
                peer_endpoints_first: vec![],
            }),
        );
        step(
            &mut core,
            9000,
            "migration signal: peer now at 198.51.100.7",
            Input::Recompile(RecompileBlueprint {
                request: RequestId(3),
                peer: peer(),
                peer_endpoints_first: vec![addr("198.51.100.7:4433")],
            }),
        );
        step(
            &mut core,
            9100,
            "rendezvous hint 203.0.113.9, old address failed 3 times",
            Input::Hint(PeerEndpointHint {
                request: None,
                peer: peer(),
                endpoints: vec![addr("203.0.113.9:4433")],
                issued_at_ms: 0,
            }),
        );
        for _ in 0..3 {
            core.handle(
                t0 + Duration::from_millis(9100),
                Input::Measured(PathMeasured {
                    peer: peer(),
                    endpoint: Endpoint::Direct(addr("192.0.2.2:4433")),
                    rtt_ms: None,
                    srtt_ms: None,
                }),
            );
        }
        step(
            &mut core,
            9200,
            "recompile",
            Input::Recompile(RecompileBlueprint {
                request: RequestId(4),
                peer: peer(),
                peer_endpoints_first: vec![],
            }),
        );
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
                Input::Hint(PeerEndpointHint {
                    request: None,
                    peer: peer(),
                    endpoints: vec![SocketAddr::from(([10, 0, 0, 1], i))],
                    issued_at_ms: 0,
                }),
            );
        }
        assert_eq!(core.peers[&peer()].len(), MAX_RECORDS_PER_PEER);
        // The newest survive.
        assert!(core.peers[&peer()].iter().any(|r| r.addr.port() == 99));
        assert!(!core.peers[&peer()].iter().any(|r| r.addr.port() == 0));
    }
}
