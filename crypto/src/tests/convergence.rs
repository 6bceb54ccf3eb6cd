//! THE property: whatever the network does to crossing handshakes and frames (loss,
//! duplication, reordering), once it delivers again both devices end with the same
//! committed PeerSecret, and nothing one side committed was unknown to the other.
//!
//! Two devices start with a committed generation. A random schedule then acts on a
//! multiset of in-flight messages: either device initiates (to establish, or to rekey
//! the live session: a rekey at any point, crossing the other side's or not), gives
//! its pending initiation up (a migration began: the rekey is abandoned), a message (chosen at
//! random, so delivery order is arbitrary) is delivered, dropped or duplicated, a
//! device sends a data frame under its best sendable generation, a device restarts
//! (its ring is replaced by an empty one: at any point, mid-handshake included, with
//! its old messages still in flight), or an attacker replays any message ever sent.
//! Devices behave as the direct-connection orchestrator will: answer message 1, send a
//! frame right after `confirm`, send a frame back after committing, and keep
//! initiating while nothing is committed (a restarted device reconnecting). Then a
//! quiescence phase delivers everything and lets both send until nothing changes.
//!
//! Checked after every step: commitment only moves up (per incarnation), a side
//! commits only a generation the other side sealed under, and a restarted device
//! never holds a generation of its earlier incarnations (no old keys resumed). At
//! the end: one committed generation and PeerSecret on both sides.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::Index;
use rand_chacha::ChaCha8Rng;

use crate::handshake::{HandshakeError, HandshakePurpose};
use crate::keyring::{GenerationId, KeyRing, RingError};
use crate::keys::StaticKeypair;
use crate::replay::ReplayError;
use crate::session::{OpenError, Sealed};
use crate::test_support::{committed_rings, pair, respond};

/// Initiations allowed per device and case: keeps the candidate table below
/// MAX_CANDIDATES, so the property tested is the commit rule, not eviction.
const MAX_INITIATIONS: u32 = 8;

/// Rounds of the quiescence phase; convergence needs at most a few (a restarted
/// device may need one handshake more when its survivor sends under keys the old
/// process took with it).
const MAX_QUIET_ROUNDS: usize = 12;

#[derive(Debug, Clone, Copy)]
enum Action {
    Initiate(usize),
    Rekey(usize),
    Abandon(usize),
    DeliverOldest,
    Deliver(Index),
    Drop(Index),
    Duplicate(Index),
    Send(usize),
    Tick(u16),
    Restart(usize),
    Replay(Index),
}

fn action() -> impl Strategy<Value = Action> {
    let side = 0..2_usize;
    prop_oneof![
        2 => side.clone().prop_map(Action::Initiate),
        2 => side.clone().prop_map(Action::Rekey),
        1 => side.clone().prop_map(Action::Abandon),
        3 => Just(Action::DeliverOldest),
        6 => any::<Index>().prop_map(Action::Deliver),
        2 => any::<Index>().prop_map(Action::Drop),
        2 => any::<Index>().prop_map(Action::Duplicate),
        3 => side.clone().prop_map(Action::Send),
        1 => any::<u16>().prop_map(Action::Tick),
        1 => side.prop_map(Action::Restart),
        1 => any::<Index>().prop_map(Action::Replay),
    ]
}

#[derive(Debug, Clone)]
enum Payload {
    Message1(Vec<u8>),
    Message2(Vec<u8>),
    /// A frame and the generation its sender sealed it under.
    Frame(Sealed, GenerationId),
}

#[derive(Debug, Clone)]
struct InFlight {
    to: usize,
    payload: Payload,
}

struct Device {
    keys: StaticKeypair,
    ring: KeyRing,
    initiations: u32,
    /// Every generation this device ever held (any slot).
    ever_held: BTreeSet<GenerationId>,
    /// Every generation this device ever sealed a frame under.
    sealed_under: BTreeSet<GenerationId>,
    /// Frames this device opened: (generation, nonce).
    opened: BTreeSet<(GenerationId, u64)>,
    /// Best committed generation seen so far in this incarnation (commitment only
    /// moves up).
    high_water: Option<GenerationId>,
    /// Every generation earlier incarnations held: never held again.
    lost: BTreeSet<GenerationId>,
    restarts: u32,
}

struct World {
    devices: [Device; 2],
    in_flight: Vec<InFlight>,
    /// Every message ever sent, for the attacker to replay.
    history: Vec<InFlight>,
    now_ms: u64,
    rng: ChaCha8Rng,
}

fn held(ring: &KeyRing) -> Vec<GenerationId> {
    let s = ring.snapshot();
    s.committed
        .iter()
        .chain(s.previous.iter())
        .chain(s.candidates.iter())
        .map(|g| g.id)
        .collect()
}

impl World {
    fn new(seed: u64) -> Self {
        let mut p = pair(seed);
        let (alice, bob) = committed_rings(&mut p);
        let device = |keys: StaticKeypair, ring: KeyRing| Device {
            ever_held: held(&ring).into_iter().collect(),
            sealed_under: ring.committed().into_iter().collect(),
            high_water: ring.committed(),
            keys,
            ring,
            initiations: 0,
            opened: BTreeSet::new(),
            lost: BTreeSet::new(),
            restarts: 0,
        };
        Self {
            devices: [device(p.alice, alice), device(p.bob, bob)],
            in_flight: Vec::new(),
            history: Vec::new(),
            now_ms: 10_000,
            rng: p.rng,
        }
    }

    fn post(&mut self, message: InFlight) {
        self.history.push(message.clone());
        self.in_flight.push(message);
    }

    /// Sends a data frame under the best sendable generation; a device that has none
    /// (restarted, no handshake confirmed yet) sends nothing.
    fn send(&mut self, from: usize) -> Result<(), TestCaseError> {
        let device = &mut self.devices[from];
        let Some(generation) = device.ring.best_sendable_generation() else {
            prop_assert!(device.ring.committed().is_none());
            return Ok(());
        };
        let Ok(sealed) = device.ring.seal(b"data") else {
            return Err(TestCaseError::fail(
                "a device with a sendable generation cannot seal",
            ));
        };
        device.sealed_under.insert(generation);
        self.post(InFlight {
            to: 1 - from,
            payload: Payload::Frame(sealed, generation),
        });
        Ok(())
    }

    fn initiate(&mut self, side: usize) -> Result<(), TestCaseError> {
        self.initiate_for(side, HandshakePurpose::Establish)
    }

    fn initiate_for(
        &mut self,
        side: usize,
        purpose: HandshakePurpose,
    ) -> Result<(), TestCaseError> {
        let device = &mut self.devices[side];
        let message1 = device
            .ring
            .initiate_for(purpose, &device.keys, self.now_ms, &mut self.rng)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        self.post(InFlight {
            to: 1 - side,
            payload: Payload::Message1(message1),
        });
        Ok(())
    }

    /// The device's process restarts: keys and pairing stay, the ring starts empty.
    /// Its messages in flight stay in flight.
    fn restart(&mut self, side: usize) {
        let device = &mut self.devices[side];
        let lost = std::mem::take(&mut device.ever_held);
        device.lost.extend(lost);
        device.ring = KeyRing::new(*device.ring.peer(), device.ring.peer_params().rk);
        device.high_water = None;
        device.restarts += 1;
    }

    fn deliver(&mut self, index: usize) -> Result<(), TestCaseError> {
        let InFlight { to, payload } = self.in_flight.remove(index);
        match payload {
            Payload::Message1(message1) => {
                let device = &mut self.devices[to];
                match respond(&device.keys, &mut device.ring, &message1, &mut self.rng) {
                    Ok(message2) => self.post(InFlight {
                        to: 1 - to,
                        payload: Payload::Message2(message2),
                    }),
                    // A stale epoch is raised now, never refused: only replays are.
                    Err(RingError::Handshake(HandshakeError::ReplayedInitiation { .. })) => {}
                    Err(other) => {
                        return Err(TestCaseError::fail(format!("message 1 refused: {other}")))
                    }
                }
            }
            Payload::Message2(message2) => {
                match self.devices[to].ring.confirm(&message2) {
                    // The caller sends under the new keys right away.
                    Ok(_) => self.send(to)?,
                    // Superseded by a retry (other ephemeral keys), already confirmed,
                    // or made moot by a commit.
                    Err(
                        RingError::NoPendingInitiation
                        | RingError::Handshake(HandshakeError::Authentication),
                    ) => {}
                    Err(other) => {
                        return Err(TestCaseError::fail(format!("message 2 refused: {other}")))
                    }
                }
            }
            Payload::Frame(sealed, generation) => {
                let device = &mut self.devices[to];
                let holds = held(&device.ring).contains(&generation);
                let seen = device.opened.contains(&(generation, sealed.nonce));
                match device.ring.open(&sealed) {
                    Ok(opened) => {
                        prop_assert!(holds && !seen, "opened a frame it should not: {sealed:?}");
                        prop_assert_eq!(opened.generation, generation);
                        prop_assert_eq!(&opened.plaintext, b"data");
                        device.opened.insert((generation, sealed.nonce));
                        if opened.newly_committed {
                            // The caller answers a commit so the peer commits too.
                            self.send(to)?;
                        }
                    }
                    Err(RingError::Open(OpenError::Replay(ReplayError::Duplicate(_)))) => {
                        prop_assert!(seen, "fresh frame taken for a duplicate");
                    }
                    Err(error) => {
                        prop_assert!(
                            !holds,
                            "frame under a held generation refused: {error}, {sealed:?}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, action: Action) -> Result<(), TestCaseError> {
        self.now_ms += 1;
        match action {
            Action::Initiate(side) if self.devices[side].initiations < MAX_INITIATIONS => {
                self.devices[side].initiations += 1;
                self.initiate(side)?;
            }
            // The orchestrator rekeys only a live session.
            Action::Rekey(side)
                if self.devices[side].initiations < MAX_INITIATIONS
                    && self.devices[side].ring.committed().is_some() =>
            {
                self.devices[side].initiations += 1;
                self.initiate_for(side, HandshakePurpose::Rekey)?;
            }
            Action::Abandon(side) => {
                self.devices[side].ring.abandon_initiation();
            }
            Action::DeliverOldest if !self.in_flight.is_empty() => self.deliver(0)?,
            Action::Deliver(index) if !self.in_flight.is_empty() => {
                self.deliver(index.index(self.in_flight.len()))?;
            }
            Action::Drop(index) if !self.in_flight.is_empty() => {
                self.in_flight.remove(index.index(self.in_flight.len()));
            }
            Action::Duplicate(index) if !self.in_flight.is_empty() => {
                let copy = self.in_flight[index.index(self.in_flight.len())].clone();
                self.in_flight.push(copy);
            }
            Action::Send(side) => self.send(side)?,
            Action::Tick(ms) => self.now_ms += u64::from(ms),
            Action::Restart(side) => self.restart(side),
            Action::Replay(index) if !self.history.is_empty() => {
                let copy = self.history[index.index(self.history.len())].clone();
                self.in_flight.push(copy);
            }
            _ => {}
        }
        self.check_invariants()
    }

    /// Checked after every step.
    fn check_invariants(&mut self) -> Result<(), TestCaseError> {
        for side in 0..2 {
            let committed = self.devices[side].ring.committed();
            for id in held(&self.devices[side].ring) {
                // A restarted device never resumes the keys of an earlier incarnation.
                prop_assert!(
                    !self.devices[side].lost.contains(&id),
                    "a restarted device holds old keys: {id:?}"
                );
                self.devices[side].ever_held.insert(id);
            }
            // Commitment never moves down the order.
            prop_assert!(committed >= self.devices[side].high_water);
            self.devices[side].high_water = committed;
            // A side commits only what the other side sealed under (so held).
            if let Some(id) = committed {
                let other = &self.devices[1 - side];
                // (A late frame from a process that has since restarted still counts.)
                prop_assert!(other.sealed_under.contains(&id));
                prop_assert!(other.ever_held.contains(&id) || other.lost.contains(&id));
            }
        }
        Ok(())
    }

    fn deliver_all(&mut self) -> Result<(), TestCaseError> {
        let mut budget = 10_000;
        while !self.in_flight.is_empty() {
            budget -= 1;
            prop_assert!(budget > 0, "delivery does not terminate");
            self.deliver(0)?;
            self.check_invariants()?;
        }
        Ok(())
    }

    fn commit_state(&self) -> [(Option<GenerationId>, Option<GenerationId>); 2] {
        [0, 1].map(|side| {
            let ring = &self.devices[side].ring;
            (ring.committed(), ring.best_sendable_generation())
        })
    }

    fn quiesce(&mut self) -> Result<(), TestCaseError> {
        self.deliver_all()?;
        for _ in 0..MAX_QUIET_ROUNDS {
            let before = self.commit_state();
            for side in 0..2 {
                // The orchestrator keeps connecting while nothing is committed.
                if self.devices[side].ring.committed().is_none() {
                    self.initiate(side)?;
                }
                self.send(side)?;
            }
            self.deliver_all()?;
            let after = self.commit_state();
            if after == before {
                if after[0].0 == after[1].0 {
                    return Ok(());
                }
                // Each side's frames fail to open at the other: the session's heartbeats
                // fail, Presence evicts it and recovers with a handshake (the
                // orchestrator's answer to keys that went out of step).
                self.initiate(0)?;
            }
        }
        Err(TestCaseError::fail(
            "no fixpoint after the quiescence rounds",
        ))
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn concurrent_handshakes_converge_on_one_committed_peer_secret(
        seed in any::<u64>(),
        actions in proptest::collection::vec(action(), 0..64),
    ) {
        let mut world = World::new(seed);
        for action in actions {
            world.step(action)?;
        }
        world.quiesce()?;

        let [a, b] = &mut world.devices;
        prop_assert!(a.ring.committed().is_some());
        // A device that restarted is in session under keys of its last incarnation only.
        prop_assert!(a.ring.committed().is_some_and(|id| !a.lost.contains(&id)));
        prop_assert!(b.ring.committed().is_some_and(|id| !b.lost.contains(&id)));
        prop_assert_eq!(a.ring.committed(), b.ring.committed());
        prop_assert_eq!(a.ring.committed_fingerprint(), b.ring.committed_fingerprint());
        prop_assert_eq!(a.ring.session_fingerprint(), b.ring.session_fingerprint());
        prop_assert_eq!(a.ring.committed_epoch(), b.ring.committed_epoch());
        // At the fixpoint each side sends under the committed generation...
        prop_assert_eq!(a.ring.best_sendable_generation(), a.ring.committed());
        prop_assert_eq!(b.ring.best_sendable_generation(), b.ring.committed());
        // ...and frames flow both ways without moving commitment.
        let to_b = a.ring.seal(b"after").unwrap();
        let opened = b.ring.open(&to_b).unwrap();
        prop_assert!(!opened.newly_committed);
        let to_a = b.ring.seal(b"after").unwrap();
        let opened = a.ring.open(&to_a).unwrap();
        prop_assert!(!opened.newly_committed);
        // Migration signals verify against the committed PeerSecret on both sides.
        let tag = a.ring.migration_tag(&[7; 16], 1, b"endpoints").unwrap();
        let resolved = b.ring.resolve_migration_tag(&[7; 16], 1, b"endpoints", &tag);
        prop_assert_eq!(resolved.map(|m| m.generation), b.ring.committed());
    }
}
