//! The rendezvous table: membership, TTL, bounds, ciphertext only.

use super::Keys;
use crate::table::{
    RendezvousTable, RendezvousTableConfig, DEFAULT_MAX_IDS_PER_DEVICE, JOIN_SEAT_TTL,
    MAX_PENDING_PUSHES,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::{open_hint, seal_hint, RendezvousId};
use tether_protocol::{DeviceId, RendezvousMessage, ServerRefusal};

const ID: [u8; 32] = [0x11; 32];

struct Table {
    table: RendezvousTable,
    t0: Instant,
}

impl Table {
    fn new(tune: impl FnOnce(&mut RendezvousTableConfig)) -> Self {
        let mut config = RendezvousTableConfig::default();
        tune(&mut config);
        let t0 = Instant::now();
        Self {
            table: RendezvousTable::new(config, t0),
            t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn publish(
        &mut self,
        ms: u64,
        device: u8,
        id: [u8; 32],
        ttl_ms: u64,
        hint: &[u8],
    ) -> Option<RendezvousMessage> {
        let now = self.at(ms);
        self.table.handle(
            now,
            DeviceId([device; 32]),
            RendezvousMessage::Publish {
                rendezvous_id: id,
                ttl_ms,
                hint: hint.to_vec(),
            },
        )
    }

    fn lookup(&mut self, ms: u64, device: u8, id: [u8; 32]) -> Option<RendezvousMessage> {
        let now = self.at(ms);
        self.table.handle(
            now,
            DeviceId([device; 32]),
            RendezvousMessage::Lookup { rendezvous_id: id },
        )
    }

    /// The hints a lookup returns, as plain byte vectors.
    fn hints(&mut self, ms: u64, device: u8, id: [u8; 32]) -> Vec<Vec<u8>> {
        match self.lookup(ms, device, id) {
            Some(RendezvousMessage::Hints {
                rendezvous_id,
                hints,
            }) => {
                assert_eq!(rendezvous_id, id);
                hints.into_iter().map(|h| h.into_vec()).collect()
            }
            other => panic!("expected hints, got {other:?}"),
        }
    }
}

fn refused(reason: ServerRefusal) -> Option<RendezvousMessage> {
    Some(RendezvousMessage::Refused { reason })
}

#[test]
fn the_first_two_publishers_are_members_and_a_third_is_refused() {
    let mut t = Table::new(|_| {});
    assert_eq!(t.publish(0, 1, ID, 60_000, b"hint of 1"), None);
    assert_eq!(t.publish(0, 1, ID, 60_000, b"hint of 1 again"), None);
    assert_eq!(t.publish(0, 2, ID, 60_000, b"hint of 2"), None);
    assert_eq!(
        t.publish(0, 3, ID, 60_000, b"intruder"),
        refused(ServerRefusal::NotYours)
    );
    assert_eq!(
        t.table.members(&ID),
        vec![DeviceId([1; 32]), DeviceId([2; 32])]
    );
    // A non-member cannot read; members read both latest hints, newest last.
    assert_eq!(t.lookup(1, 3, ID), refused(ServerRefusal::NotYours));
    let expected = vec![b"hint of 1 again".to_vec(), b"hint of 2".to_vec()];
    assert_eq!(t.hints(1, 1, ID), expected);
    assert_eq!(t.hints(1, 2, ID), expected);
    // Member 1 publishes again: now its hint is the newest.
    t.publish(2, 1, ID, 60_000, b"hint of 1, moved");
    assert_eq!(
        t.hints(3, 2, ID),
        vec![b"hint of 2".to_vec(), b"hint of 1, moved".to_vec()]
    );
    let c = t.table.counters();
    assert_eq!((c.published, c.refused_not_yours), (4, 2));
}

/// The pushes waiting, as (member byte, hint bytes).
fn pushes(t: &mut Table) -> Vec<(u8, Vec<Vec<u8>>)> {
    std::iter::from_fn(|| t.table.poll_push())
        .map(|(member, message)| match message {
            RendezvousMessage::Hints {
                rendezvous_id,
                hints,
            } => {
                assert_eq!(rendezvous_id, ID);
                (
                    member.0[0],
                    hints.into_iter().map(|h| h.into_vec()).collect(),
                )
            }
            other => panic!("expected hints, got {other:?}"),
        })
        .collect()
}

#[test]
fn a_new_hint_is_pushed_to_the_other_member_only() {
    let mut t = Table::new(|_| {});
    t.publish(0, 1, ID, 60_000, b"hint of 1");
    assert!(pushes(&mut t).is_empty(), "no other member yet");
    t.publish(1, 2, ID, 60_000, b"hint of 2");
    assert_eq!(pushes(&mut t), vec![(1, vec![b"hint of 2".to_vec()])]);
    t.publish(2, 1, ID, 60_000, b"hint of 1, moved");
    assert_eq!(
        pushes(&mut t),
        vec![(2, vec![b"hint of 1, moved".to_vec()])]
    );
    // Refused publishes push nothing.
    t.publish(3, 3, ID, 60_000, b"intruder");
    assert!(pushes(&mut t).is_empty());
    assert_eq!(t.table.counters().pushed, 2);
}

#[test]
fn pushes_nobody_takes_are_bounded() {
    let mut t = Table::new(|_| {});
    t.publish(0, 1, ID, 60_000, b"first");
    let extra = 10;
    for i in 0..MAX_PENDING_PUSHES + extra {
        t.publish(1, 2, ID, 60_000, format!("hint {i}").as_bytes());
    }
    let waiting = pushes(&mut t);
    assert_eq!(waiting.len(), MAX_PENDING_PUSHES);
    // The oldest were dropped: the newest is still there.
    let newest = format!("hint {}", MAX_PENDING_PUSHES + extra - 1).into_bytes();
    assert_eq!(waiting.last(), Some(&(1, vec![newest])));
    assert_eq!(t.table.counters().pushes_dropped, extra as u64);
}

#[test]
fn an_unknown_id_has_no_hints_and_asking_joins_nothing() {
    let mut t = Table::new(|_| {});
    assert!(t.hints(0, 3, ID).is_empty());
    assert_eq!(t.table.ids(), 0);
    assert!(t.table.members(&ID).is_empty());
}

#[test]
fn hints_expire_after_their_ttl_capped_by_the_max() {
    let mut t = Table::new(|c| c.max_ttl = Duration::from_secs(10));
    t.publish(0, 1, ID, 5_000, b"short");
    t.publish(0, 2, ID, u64::MAX, b"capped");
    assert_eq!(t.table.poll_timeout(), Some(t.at(5_000)));
    assert_eq!(t.hints(4_999, 1, ID).len(), 2);
    assert_eq!(t.hints(5_000, 1, ID), vec![b"capped".to_vec()]);
    // Member 1's hint expired but it keeps its seat while the id lives.
    assert_eq!(
        t.publish(6_000, 3, ID, 1_000, b"x"),
        refused(ServerRefusal::NotYours)
    );
    t.table.handle_timeout(t.at(10_000));
    assert_eq!(
        t.table.ids(),
        0,
        "the id is forgotten once every hint expired"
    );
    assert_eq!(t.table.poll_timeout(), None);
    assert_eq!(t.table.counters().expired, 2);
    // And it starts afresh with whoever publishes next.
    assert_eq!(t.publish(11_000, 3, ID, 1_000, b"new"), None);
    assert_eq!(t.table.members(&ID), vec![DeviceId([3; 32])]);
}

#[test]
fn a_zero_ttl_stores_nothing_lasting() {
    let mut t = Table::new(|_| {});
    assert_eq!(t.publish(0, 1, ID, 0, b"gone"), None);
    assert!(t.hints(0, 1, ID).is_empty());
    assert_eq!(t.table.ids(), 0);
}

#[test]
fn oversized_hints_are_refused() {
    let mut t = Table::new(|c| c.max_hint_len = 8);
    assert_eq!(t.publish(0, 1, ID, 1_000, &[0; 8]), None);
    assert_eq!(
        t.publish(0, 1, ID, 1_000, &[0; 9]),
        refused(ServerRefusal::TooLarge)
    );
    assert_eq!(
        t.hints(0, 1, ID),
        vec![vec![0; 8]],
        "the previous hint stays"
    );
    assert_eq!(t.table.counters().refused_too_large, 1);
}

#[test]
fn a_full_table_refuses_new_ids_until_one_expires() {
    let mut t = Table::new(|c| c.max_ids = 2);
    t.publish(0, 1, [1; 32], 1_000, b"a");
    t.publish(0, 1, [2; 32], 5_000, b"b");
    assert_eq!(
        t.publish(0, 1, [3; 32], 1_000, b"c"),
        refused(ServerRefusal::QuotaExceeded)
    );
    // Existing ids keep working while full.
    assert_eq!(t.publish(0, 2, [2; 32], 5_000, b"b2"), None);
    // Once the first id expires there is room again.
    assert_eq!(t.publish(1_000, 1, [3; 32], 1_000, b"c"), None);
    assert_eq!(t.table.ids(), 2);
    assert_eq!(t.table.counters().refused_quota, 1);
}

#[test]
fn the_table_stores_exactly_the_published_ciphertext_and_needs_no_key() {
    let mut keys = Keys::new();
    let sender = *keys.device(1).public();
    let endpoints = crate::encode_endpoints(&["198.51.100.7:4433".parse().unwrap()]);
    let sealed = seal_hint(&keys.rk, &sender, &endpoints, 1_000, 60_000, &mut keys.rng).unwrap();
    let id = RendezvousId::from_rk(&keys.rk).0;
    // The table is built from sizes and times only: it has no key to open anything with.
    let mut t = Table::new(|_| {});
    let device = keys.id(1);
    let now = t.at(0);
    let answer = t.table.handle(
        now,
        device,
        RendezvousMessage::Publish {
            rendezvous_id: id,
            ttl_ms: 60_000,
            hint: sealed.clone(),
        },
    );
    assert_eq!(answer, None);
    let answer = t
        .table
        .handle(now, device, RendezvousMessage::Lookup { rendezvous_id: id });
    let Some(RendezvousMessage::Hints { hints, .. }) = answer else {
        panic!("expected hints");
    };
    assert_eq!(hints.len(), 1);
    assert_eq!(hints[0].as_ref(), sealed.as_slice(), "byte for byte");
    // What it stored is ciphertext: the endpoint bytes do not appear, the RK opens it.
    assert!(!sealed.windows(endpoints.len()).any(|w| w == endpoints));
    assert_eq!(
        open_hint(&keys.rk, &hints[0], 2_000).unwrap().endpoints,
        endpoints
    );
}

#[test]
fn server_only_messages_from_a_device_are_counted() {
    let mut t = Table::new(|_| {});
    let now = t.at(0);
    let answer = t.table.handle(
        now,
        DeviceId([1; 32]),
        RendezvousMessage::Refused {
            reason: ServerRefusal::BadProof,
        },
    );
    assert_eq!(answer, None);
    let answer = t.table.handle(
        now,
        DeviceId([1; 32]),
        RendezvousMessage::Hints {
            rendezvous_id: ID,
            hints: vec![],
        },
    );
    assert_eq!(answer, None);
    let answer = t.table.handle(
        now,
        DeviceId([1; 32]),
        RendezvousMessage::PeerSeen {
            rendezvous_id: ID,
            addr: seen_at(1, 1),
        },
    );
    assert_eq!(answer, None);
    assert_eq!(t.table.counters().bad_requests, 3);
    assert_eq!(t.table.ids(), 0);
    assert!(t.table.poll_push().is_none());
}

/// Device `device`'s reflexive address on its `network`-th network.
fn seen_at(device: u8, network: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, network, device], 40_000))
}

/// The `PeerSeen` pushes waiting, as (member byte, id, address); other pushes skipped.
fn seen_pushes(t: &mut Table) -> Vec<(u8, [u8; 32], SocketAddr)> {
    std::iter::from_fn(|| t.table.poll_push())
        .filter_map(|(member, message)| match message {
            RendezvousMessage::PeerSeen {
                rendezvous_id,
                addr,
            } => Some((member.0[0], rendezvous_id, addr)),
            _ => None,
        })
        .collect()
}

#[test]
fn where_a_member_is_seen_goes_to_the_other_connected_member_only() {
    let mut t = Table::new(|_| {});
    let other_id = id_of(7);
    t.publish(0, 1, ID, 60_000, b"hint of 1");
    t.publish(0, 2, ID, 60_000, b"hint of 2");
    t.publish(0, 3, other_id, 60_000, b"hint of 3");
    seen_pushes(&mut t);
    let see = |t: &mut Table, device: u8, addr: Option<SocketAddr>| {
        t.table.seen(DeviceId([device; 32]), addr)
    };
    // The first member connects: its partner is not connected, nobody to tell.
    see(&mut t, 1, Some(seen_at(1, 1)));
    assert_eq!(seen_pushes(&mut t), vec![]);
    // The second connects: each learns where the other is, at once.
    see(&mut t, 2, Some(seen_at(2, 1)));
    assert_eq!(
        seen_pushes(&mut t),
        vec![(1, ID, seen_at(2, 1)), (2, ID, seen_at(1, 1))]
    );
    // The same address again (a reconnect from the same place): nothing new.
    see(&mut t, 2, Some(seen_at(2, 1)));
    assert_eq!(seen_pushes(&mut t), vec![]);
    // The second moves: only its partner is told.
    see(&mut t, 2, Some(seen_at(2, 2)));
    assert_eq!(seen_pushes(&mut t), vec![(1, ID, seen_at(2, 2))]);
    // A device of another pair connects: nobody here hears of it, nor it of them.
    see(&mut t, 3, Some(seen_at(3, 1)));
    assert_eq!(seen_pushes(&mut t), vec![]);
    // The first disconnects: a move of its partner goes to nobody.
    see(&mut t, 1, None);
    see(&mut t, 2, Some(seen_at(2, 3)));
    assert_eq!(seen_pushes(&mut t), vec![]);
    assert_eq!(t.table.seen_devices(), 2);
    assert_eq!(t.table.counters().seen_pushed, 3);
}

#[test]
fn joining_an_id_whose_other_member_is_connected_introduces_both() {
    let mut t = Table::new(|_| {});
    t.table.seen(DeviceId([1; 32]), Some(seen_at(1, 1)));
    t.table.seen(DeviceId([2; 32]), Some(seen_at(2, 1)));
    t.publish(0, 1, ID, 60_000, b"hint of 1");
    assert_eq!(seen_pushes(&mut t), vec![], "no other member yet");
    t.publish(1, 2, ID, 60_000, b"hint of 2");
    assert_eq!(
        seen_pushes(&mut t),
        vec![(1, ID, seen_at(2, 1)), (2, ID, seen_at(1, 1))]
    );
    // A member publishing again is no news.
    t.publish(2, 2, ID, 60_000, b"hint of 2 again");
    assert_eq!(seen_pushes(&mut t), vec![]);
    // A device refused membership learns nothing.
    t.table.seen(DeviceId([3; 32]), Some(seen_at(3, 1)));
    t.publish(3, 3, ID, 60_000, b"intruder");
    assert_eq!(seen_pushes(&mut t), vec![]);
}

#[test]
fn devices_seen_are_bounded_and_a_departure_frees_room() {
    let mut t = Table::new(|c| c.max_seen = 2);
    t.publish(0, 1, ID, 60_000, b"hint of 1");
    t.publish(0, 3, ID, 60_000, b"hint of 3");
    t.table.seen(DeviceId([1; 32]), Some(seen_at(1, 1)));
    t.table.seen(DeviceId([2; 32]), Some(seen_at(2, 1)));
    // Full: a third device is not recorded (counted), and nobody is told of it.
    t.table.seen(DeviceId([3; 32]), Some(seen_at(3, 1)));
    assert_eq!(t.table.seen_devices(), 2);
    assert_eq!(t.table.counters().seen_dropped, 1);
    assert_eq!(seen_pushes(&mut t), vec![]);
    // A device already kept may still move.
    t.table.seen(DeviceId([2; 32]), Some(seen_at(2, 2)));
    assert_eq!(t.table.seen_devices(), 2);
    t.table.seen(DeviceId([2; 32]), None);
    t.table.seen(DeviceId([3; 32]), Some(seen_at(3, 1)));
    assert_eq!(t.table.seen_devices(), 2);
    assert_eq!(
        seen_pushes(&mut t),
        vec![(1, ID, seen_at(3, 1)), (3, ID, seen_at(1, 1))]
    );
}

#[test]
fn a_connect_queues_at_most_the_push_bound() {
    // With the default quota a device's connect fits the bound: two pushes per id.
    const { assert!(2 * DEFAULT_MAX_IDS_PER_DEVICE <= MAX_PENDING_PUSHES) };
    let ids = MAX_PENDING_PUSHES; // twice the pushes the bound holds
    let mut t = Table::new(|c| c.max_ids_per_device = ids);
    for n in 0..ids {
        let id = id_of(n as u32);
        t.publish(0, 1, id, 60_000, b"hint of 1");
        let partner = DeviceId([2; 32]);
        let _ = t.table.handle(
            t.at(0),
            partner,
            RendezvousMessage::Publish {
                rendezvous_id: id,
                ttl_ms: 60_000,
                hint: b"hint of 2".to_vec(),
            },
        );
    }
    while t.table.poll_push().is_some() {}
    t.table.seen(DeviceId([2; 32]), Some(seen_at(2, 1)));
    let before = t.table.counters().pushes_dropped;
    t.table.seen(DeviceId([1; 32]), Some(seen_at(1, 1)));
    let waiting = seen_pushes(&mut t);
    assert_eq!(waiting.len(), MAX_PENDING_PUSHES);
    assert_eq!(
        t.table.counters().pushes_dropped - before,
        (2 * ids - MAX_PENDING_PUSHES) as u64
    );
    // The oldest went: the last id's pair of pushes is still there.
    let last = id_of(ids as u32 - 1);
    assert_eq!(
        waiting[waiting.len() - 2..],
        [(2, last, seen_at(1, 1)), (1, last, seen_at(2, 1))]
    );
}

/// A rendezvous id made of a number.
fn id_of(n: u32) -> [u8; 32] {
    let mut id = [0xAA; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id
}

#[test]
fn one_device_cannot_fill_the_table_and_a_new_pair_still_publishes() {
    let mut t = Table::new(|c| c.max_ids = 1_000);
    assert_eq!(
        RendezvousTableConfig::default().max_ids_per_device,
        64,
        "the documented default"
    );
    // Device 9 publishes under as many fresh ids as the whole table holds.
    let mut stored = 0;
    for n in 0..1_000 {
        match t.publish(0, 9, id_of(n), 600_000, b"junk") {
            None => stored += 1,
            refusal => assert_eq!(refusal, refused(ServerRefusal::QuotaExceeded)),
        }
    }
    assert_eq!(stored, 64);
    assert_eq!(t.table.ids(), 64);
    assert_eq!(t.table.ids_of(&DeviceId([9; 32])), 64);
    assert_eq!(t.table.counters().refused_device_quota, 1_000 - 64);
    // A new pair publishes and finds each other.
    assert_eq!(t.publish(1, 1, ID, 600_000, b"from 1"), None);
    assert_eq!(t.publish(1, 2, ID, 600_000, b"from 2"), None);
    assert_eq!(
        t.hints(2, 1, ID),
        vec![b"from 1".to_vec(), b"from 2".to_vec()]
    );
    // Device 9 may still refresh the ids it holds.
    assert_eq!(t.publish(3, 9, id_of(0), 600_000, b"again"), None);
}

#[test]
fn a_devices_quota_counts_memberships_and_frees_when_ids_expire() {
    let mut t = Table::new(|c| c.max_ids_per_device = 2);
    // Device 1 joins two ids (one it starts, one another device started).
    assert_eq!(t.publish(0, 2, id_of(1), 600_000, b"2"), None);
    assert_eq!(t.publish(0, 1, id_of(1), 1_000, b"1"), None);
    assert_eq!(t.publish(0, 1, id_of(2), 1_000, b"1"), None);
    assert_eq!(
        t.publish(0, 1, id_of(3), 1_000, b"1"),
        refused(ServerRefusal::QuotaExceeded)
    );
    // Its hint under id 2 expires: the id goes, and its seat with it.
    assert_eq!(t.publish(1_000, 1, id_of(3), 1_000, b"1"), None);
    assert_eq!(t.table.ids_of(&DeviceId([1; 32])), 2);
    // Under id 1 it keeps its seat while device 2's hint lives.
    assert_eq!(
        t.table.members(&id_of(1)),
        vec![DeviceId([2; 32]), DeviceId([1; 32])]
    );
}

/// `device` authenticates with `ids` sealed in its proof, from `addr`: the shell's
/// order (join, then seen).
fn join_and_see(t: &mut Table, ms: u64, device: u8, ids: &[[u8; 32]], addr: SocketAddr) {
    let now = t.at(ms);
    t.table.join(now, DeviceId([device; 32]), ids);
    t.table.seen(DeviceId([device; 32]), Some(addr));
}

#[test]
fn two_devices_joining_as_they_authenticate_are_introduced_before_either_publishes() {
    let mut t = Table::new(|_| {});
    join_and_see(&mut t, 0, 1, &[ID], seen_at(1, 1));
    assert_eq!(seen_pushes(&mut t), vec![], "its partner is not connected");
    join_and_see(&mut t, 5, 2, &[ID], seen_at(2, 1));
    assert_eq!(
        seen_pushes(&mut t),
        vec![(1, ID, seen_at(2, 1)), (2, ID, seen_at(1, 1))]
    );
    assert_eq!(t.table.members(&ID).len(), 2);
    // Their first publishes then change nothing about who is introduced.
    t.publish(10, 1, ID, 60_000, b"hint of 1");
    t.publish(10, 2, ID, 60_000, b"hint of 2");
    assert_eq!(seen_pushes(&mut t), vec![]);
    assert_eq!(t.table.counters().joined, 2);
}

#[test]
fn a_joined_seat_without_a_hint_is_given_back_after_its_ttl_and_a_hint_keeps_it() {
    let ttl = JOIN_SEAT_TTL.as_millis() as u64;
    let mut t = Table::new(|_| {});
    let other = id_of(9);
    t.table.join(t.at(0), DeviceId([1; 32]), &[ID, other]);
    assert_eq!(t.table.ids(), 2);
    // Device 1 publishes under one id only, with a TTL beyond the seat's.
    t.publish(1_000, 1, other, 2 * ttl, b"hint of 1");
    t.table.handle_timeout(t.at(ttl));
    assert_eq!(t.table.ids(), 1, "the seat without a hint went");
    assert_eq!(t.table.members(&ID), vec![]);
    assert_eq!(t.table.members(&other), vec![DeviceId([1; 32])]);
    assert_eq!(t.hints(ttl + 1, 1, other), vec![b"hint of 1".to_vec()]);
    // A third device may now take the id a join held.
    assert_eq!(t.publish(ttl + 2, 3, ID, 60_000, b"hint of 3"), None);
}

#[test]
fn joins_follow_the_membership_rules_and_quotas_and_are_counted() {
    let mut t = Table::new(|c| c.max_ids_per_device = 2);
    t.publish(0, 1, ID, 60_000, b"hint of 1");
    t.publish(0, 2, ID, 60_000, b"hint of 2");
    // A third device cannot join a full pair, and is told nothing of it.
    join_and_see(&mut t, 1, 3, &[ID], seen_at(3, 1));
    assert_eq!(t.table.members(&ID).len(), 2);
    assert_eq!(t.table.counters().joins_refused, 1);
    // One device cannot join beyond its quota.
    let ids: Vec<[u8; 32]> = (0..4).map(id_of).collect();
    t.table.join(t.at(2), DeviceId([4; 32]), &ids);
    assert_eq!(t.table.ids_of(&DeviceId([4; 32])), 2);
    assert_eq!(t.table.counters().joins_refused, 3);
    assert_eq!(t.table.counters().joined, 2);
}

#[test]
fn a_hint_takes_over_a_joined_seat_and_the_id_goes_with_the_hint() {
    let mut t = Table::new(|_| {});
    t.table.join(t.at(0), DeviceId([1; 32]), &[ID]);
    // The hint expires long before the seat would have: the id goes with it.
    t.publish(1_000, 1, ID, 10_000, b"hint of 1");
    t.table.handle_timeout(t.at(11_001));
    assert_eq!(t.table.ids(), 0);
    assert_eq!(t.table.ids_of(&DeviceId([1; 32])), 0);
}

#[test]
fn a_new_connection_from_the_same_address_is_introduced_under_ids_it_joins() {
    let mut t = Table::new(|_| {});
    // Device 1 is connected, seated under nothing yet; device 2 joins the pair's id.
    t.table.seen(DeviceId([1; 32]), Some(seen_at(1, 1)));
    join_and_see(&mut t, 0, 2, &[ID], seen_at(2, 1));
    assert_eq!(seen_pushes(&mut t), vec![]);
    // Device 1's next connection, from the same address, carries the id.
    join_and_see(&mut t, 5, 1, &[ID], seen_at(1, 1));
    assert_eq!(
        seen_pushes(&mut t),
        vec![(2, ID, seen_at(1, 1)), (1, ID, seen_at(2, 1))]
    );
}
