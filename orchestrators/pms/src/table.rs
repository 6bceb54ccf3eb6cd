//! The rendezvous server's table ([`RendezvousTable`]), sans-IO: sealed endpoint hints
//! filed under rendezvous ids. The harness runs it behind the same QUIC endpoint as the
//! relay queue and hands it requests from connections the relay server has
//! authenticated (`RelayQueueServer::authenticated_device`).
//!
//! # Rules
//! - `Publish { rendezvous_id, ttl_ms, hint }`: the first two distinct devices that
//!   publish under an id become its members; a third device is refused (`NotYours`). A
//!   member's latest hint replaces its previous one and expires after `ttl_ms` (capped by
//!   [`RendezvousTableConfig::max_ttl`]). Hints longer than
//!   [`RendezvousTableConfig::max_hint_len`] are refused (`TooLarge`). A successful
//!   publish has no answer (the wire has no acknowledgement for it).
//! - A stored publish is also pushed to the id's other member ([`RendezvousTable::poll_push`]:
//!   `Hints` with the new hint alone), so a connected peer learns a new address within a
//!   one-way trip of the server instead of at its next lookup: both sides can then dial
//!   each other at about the same moment, which is what opens two NATs' filters.
//! - Where the server sees each device's authenticated connection (its reflexive
//!   address) is given to the table by the relay server ([`RendezvousTable::seen`]).
//!   When a member connects, or joins an id whose other member is connected, each of
//!   the two is pushed `PeerSeen` with the other's address; when a member's connection
//!   moves, the other member is pushed its new address. So two connected members learn
//!   each other's reflexive address within a one-way trip of the server from the moment
//!   the server could know it, without waiting for each other's hint (which needs the
//!   device to learn its reflexive address from the server first, then publish: one
//!   round trip more). Only a device's own authenticated connection is observed, and
//!   only the other member of an id it published under is told. At most
//!   [`RendezvousTableConfig::max_seen`] devices are kept; beyond, a new device is not
//!   recorded (counted), and its pair falls back to its hints.
//! - A device may also join its ids as it authenticates ([`RendezvousTable::join`]:
//!   the ids it sent sealed with its proof), under the same rules as a publish's first
//!   one (`NotYours`, the quotas), counted rather than answered. A seat taken that way
//!   without a hint lasts [`JOIN_SEAT_TTL`] unless the device publishes. With the
//!   pair's id known before the device's `Welcome`, two devices connecting at about the
//!   same time are introduced right after it, a round trip before their first publishes
//!   would have done it.
//! - `Lookup { rendezvous_id }` by a member → `Hints` with the members' unexpired hints,
//!   newest last (the asker's own included: it ignores it). By a non-member → `NotYours`.
//!   An unknown id → empty `Hints` (nothing to tell, and nothing learned by asking).
//! - When every hint under an id has expired, the id is forgotten, members included: the
//!   next publisher starts it afresh.
//! - At most [`RendezvousTableConfig::max_ids`] ids are kept. When full, expired ids are
//!   pruned first; if none is, a publish under a new id is refused (`QuotaExceeded`).
//!   Refusing rather than evicting the oldest is deliberate: with eviction, anyone able
//!   to authenticate could flush every pair's hints by publishing under random ids; with
//!   refusal, existing pairs keep working and only new ids wait for expiries.
//! - One device may be a member of at most [`RendezvousTableConfig::max_ids_per_device`]
//!   ids; a publish that would make it a member of one more is refused
//!   (`QuotaExceeded`). A device publishes one id per paired peer, so this is far above
//!   what a device needs, and one identity can no longer fill the table and lock new
//!   pairs out (on an open relay it takes `max_ids / max_ids_per_device` identities; on
//!   a relay with an allowlist only admitted devices publish at all).
//!
//! The table only stores and returns the bytes it was given; it holds no key and could
//! not open a hint if it wanted to (invariant 7).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_crypto::hints::MAX_SEALED_HINT_LEN;
use tether_protocol::{DeviceId, RendezvousMessage, ServerRefusal};
use tracing::debug;

/// A rendezvous id's bytes.
type Id = [u8; 32];

/// Members of one id: the two devices of a pair.
const MEMBERS_PER_ID: usize = 2;

/// Default cap on a hint's TTL: one hour. A hint older than that describes a network
/// the device has likely left; devices refresh theirs well before.
pub const DEFAULT_MAX_HINT_TTL: Duration = Duration::from_secs(60 * 60);

/// Default number of ids kept: 100 000 pairs at two hints of at most ~1.1 KiB each
/// bound the table to a few hundred MiB in the worst case.
pub const DEFAULT_MAX_IDS: usize = 100_000;

/// Default number of ids one device may be a member of: a device publishes one id per
/// paired peer, and 64 peers is far more than a person's devices pair with; it takes
/// 1 563 identities to fill the table.
pub const DEFAULT_MAX_IDS_PER_DEVICE: usize = 64;

/// Pushes waiting for the shell to take them. The shell drains them after every request
/// and every [`RendezvousTable::seen`]: a publish leaves at most two waiting, and a
/// device connecting with the default [`DEFAULT_MAX_IDS_PER_DEVICE`] ids at most two
/// per id (its partners' addresses for it, its address for each partner). The bound
/// only keeps a shell that forgets from growing the table (the oldest push is dropped
/// and counted).
pub const MAX_PENDING_PUSHES: usize = 2 * DEFAULT_MAX_IDS_PER_DEVICE;

/// How long a seat taken by [`RendezvousTable::join`] lasts without a hint: a device
/// publishes within a round trip of its `Welcome`, so a minute covers a slow link, and
/// the seat of a device that never publishes is given back soon.
pub const JOIN_SEAT_TTL: Duration = Duration::from_secs(60);

/// Default number of devices whose observed address is kept: every member of a full
/// table connected at once (two per id), a few MiB.
pub const DEFAULT_MAX_SEEN: usize = MEMBERS_PER_ID * DEFAULT_MAX_IDS;

/// Settings of the rendezvous table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousTableConfig {
    /// Cap on a publisher's TTL.
    pub max_ttl: Duration,
    /// Largest hint stored, in bytes.
    pub max_hint_len: usize,
    /// Most rendezvous ids kept at once.
    pub max_ids: usize,
    /// Most ids one device may be a member of at once.
    pub max_ids_per_device: usize,
    /// Most devices whose observed address is kept at once.
    pub max_seen: usize,
}

impl Default for RendezvousTableConfig {
    fn default() -> Self {
        Self {
            max_ttl: DEFAULT_MAX_HINT_TTL,
            // The largest hint a Tether device can seal; anything longer is not one.
            max_hint_len: MAX_SEALED_HINT_LEN,
            max_ids: DEFAULT_MAX_IDS,
            max_ids_per_device: DEFAULT_MAX_IDS_PER_DEVICE,
            max_seen: DEFAULT_MAX_SEEN,
        }
    }
}

/// What the table counted. Refusals are peer-caused: counted, answered, never raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounters {
    /// Hints stored (replacements included).
    pub published: u64,
    /// Lookups answered with hints (possibly none).
    pub lookups: u64,
    /// Hints dropped at expiry.
    pub expired: u64,
    /// Publishes or lookups by a device that is not a member of the id.
    pub refused_not_yours: u64,
    /// Hints over the size bound.
    pub refused_too_large: u64,
    /// Publishes under a new id while the table was full.
    pub refused_quota: u64,
    /// Publishes that would have made a device a member of more than
    /// `max_ids_per_device` ids.
    pub refused_device_quota: u64,
    /// Messages only the server sends (`Hints`, `Refused`), received from a device.
    pub bad_requests: u64,
    /// New hints pushed to the other member.
    pub pushed: u64,
    /// Pushes dropped because [`MAX_PENDING_PUSHES`] were waiting.
    pub pushes_dropped: u64,
    /// Observed addresses pushed to the other member (`PeerSeen`).
    pub seen_pushed: u64,
    /// Devices not recorded because [`RendezvousTableConfig::max_seen`] were kept.
    pub seen_dropped: u64,
    /// Ids a device joined as it authenticated ([`RendezvousTable::join`]), seats it
    /// already held included (every reconnect counts them again).
    pub joined: u64,
    /// Joins refused (another pair's id, or a quota), counted by reason as publishes
    /// are, and here in total.
    pub joins_refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredHint {
    bytes: Vec<u8>,
    expires_at: Instant,
    /// Global publish order: larger is newer.
    sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    device: DeviceId,
    /// None once expired (the member keeps its seat while the id lives).
    hint: Option<StoredHint>,
    /// Until when a seat taken by [`RendezvousTable::join`] holds the id without a hint.
    joined_until: Option<Instant>,
}

impl Member {
    /// Whether the member still holds its id (a hint, or a joined seat).
    fn holds(&self) -> bool {
        self.hint.is_some() || self.joined_until.is_some()
    }
}

/// The rendezvous table. See the module docs.
#[derive(Debug)]
pub struct RendezvousTable {
    config: RendezvousTableConfig,
    entries: BTreeMap<Id, Vec<Member>>,
    /// Ids each device is a member of (devices with none are absent).
    per_device: BTreeMap<DeviceId, BTreeSet<Id>>,
    /// Where the server sees each connected device (see [`RendezvousTable::seen`]).
    seen: BTreeMap<DeviceId, SocketAddr>,
    /// (expiry, id, member), earliest first.
    expiries: BTreeSet<(Instant, Id, DeviceId)>,
    next_sequence: u64,
    /// New hints for the other member of their id, oldest first.
    pushes: VecDeque<(DeviceId, RendezvousMessage)>,
    counters: TableCounters,
}

impl RendezvousTable {
    /// An empty table.
    pub fn new(config: RendezvousTableConfig, _now: Instant) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            per_device: BTreeMap::new(),
            seen: BTreeMap::new(),
            expiries: BTreeSet::new(),
            next_sequence: 1,
            pushes: VecDeque::new(),
            counters: TableCounters::default(),
        }
    }

    /// What the table counted so far.
    pub fn counters(&self) -> TableCounters {
        self.counters
    }

    /// Rendezvous ids currently known.
    pub fn ids(&self) -> usize {
        self.entries.len()
    }

    /// Rendezvous ids `device` is a member of now.
    pub fn ids_of(&self, device: &DeviceId) -> usize {
        self.per_device.get(device).map_or(0, BTreeSet::len)
    }

    /// The members of an id, in the order they joined.
    pub fn members(&self, rendezvous_id: &[u8; 32]) -> Vec<DeviceId> {
        self.entries
            .get(rendezvous_id)
            .map(|members| members.iter().map(|m| m.device).collect())
            .unwrap_or_default()
    }

    /// Answers one request from an authenticated device: `None` when there is nothing to
    /// answer (a stored publish, or a server-only message sent by a device).
    pub fn handle(
        &mut self,
        now: Instant,
        device: DeviceId,
        message: RendezvousMessage,
    ) -> Option<RendezvousMessage> {
        self.prune(now);
        match message {
            RendezvousMessage::Publish {
                rendezvous_id,
                ttl_ms,
                hint,
            } => self
                .publish(now, device, rendezvous_id, ttl_ms, hint)
                .err()
                .map(|reason| RendezvousMessage::Refused { reason }),
            RendezvousMessage::Lookup { rendezvous_id } => Some(self.lookup(device, rendezvous_id)),
            RendezvousMessage::Hints { .. }
            | RendezvousMessage::Refused { .. }
            | RendezvousMessage::PeerSeen { .. } => {
                debug!(%device, "rendezvous table: server-only message from a device");
                self.counters.bad_requests += 1;
                None
            }
        }
    }

    /// A message for a member that did not ask: (the member, `Hints` with the other
    /// member's new hint, or `PeerSeen` with where the other member is seen). The
    /// shell sends it on the member's connection if it has one, and drops it otherwise
    /// (the member's next lookup finds the hint anyway).
    pub fn poll_push(&mut self) -> Option<(DeviceId, RendezvousMessage)> {
        self.pushes.pop_front()
    }

    /// Where the server sees `device`'s authenticated connection now: `Some` when it
    /// authenticated or its connection moved, `None` when it ended. The relay server
    /// calls it for a device's own connection only (not a rendezvous-only one). A new
    /// or changed address is pushed (`PeerSeen`) to the other member of every id the
    /// device is a member of, if that member is connected; on connect the device is
    /// pushed each such member's address too.
    pub fn seen(&mut self, device: DeviceId, addr: Option<SocketAddr>) {
        let Some(addr) = addr else {
            self.seen.remove(&device);
            return;
        };
        let full = self.seen.len() >= self.config.max_seen;
        let connected = match self.seen.get(&device) {
            Some(known) if *known == addr => return,
            Some(_) => false,
            None if full => {
                self.counters.seen_dropped += 1;
                return;
            }
            None => true,
        };
        self.seen.insert(device, addr);
        let ids: Vec<Id> = self
            .per_device
            .get(&device)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.introduce(id, device, connected);
        }
    }

    /// Tells the other member of `id` where `device` is seen, and with `both`, tells
    /// `device` where the other member is seen; only members the server sees now.
    fn introduce(&mut self, id: Id, device: DeviceId, both: bool) {
        let Some(addr) = self.seen.get(&device).copied() else {
            return;
        };
        let others: Vec<DeviceId> = self
            .entries
            .get(&id)
            .map(|members| {
                members
                    .iter()
                    .map(|m| m.device)
                    .filter(|d| *d != device)
                    .collect()
            })
            .unwrap_or_default();
        for other in others {
            let Some(other_addr) = self.seen.get(&other).copied() else {
                continue;
            };
            let told = [(other, addr), (device, other_addr)];
            for (to, addr) in told.into_iter().take(if both { 2 } else { 1 }) {
                queue_push(
                    &mut self.pushes,
                    &mut self.counters,
                    to,
                    RendezvousMessage::PeerSeen {
                        rendezvous_id: id,
                        addr,
                    },
                );
                self.counters.seen_pushed += 1;
            }
        }
    }

    /// Devices whose observed address the table keeps now.
    pub fn seen_devices(&self) -> usize {
        self.seen.len()
    }

    /// Drops expired hints, and ids left without any. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.prune(now);
    }

    /// When the next hint expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _, _)| *at)
    }

    fn refuse<T>(&mut self, reason: ServerRefusal) -> Result<T, ServerRefusal> {
        match reason {
            ServerRefusal::NotYours => self.counters.refused_not_yours += 1,
            ServerRefusal::TooLarge => self.counters.refused_too_large += 1,
            ServerRefusal::QuotaExceeded => self.counters.refused_quota += 1,
            _ => {}
        }
        Err(reason)
    }

    fn publish(
        &mut self,
        now: Instant,
        device: DeviceId,
        id: Id,
        ttl_ms: u64,
        hint: Vec<u8>,
    ) -> Result<(), ServerRefusal> {
        if hint.len() > self.config.max_hint_len {
            return self.refuse(ServerRefusal::TooLarge);
        }
        let (index, joined) = self.seat(device, id)?;
        let members = self.entries.entry(id).or_default();
        // A hint holds the seat from now on; the join's own expiry goes (it may share
        // its key with an old hint's, so it is not left to find its own way out).
        if let Some(until) = members[index].joined_until.take() {
            self.expiries.remove(&(until, id, device));
        }
        let expires_at = now + Duration::from_millis(ttl_ms).min(self.config.max_ttl);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        for other in members.iter().filter(|m| m.device != device) {
            queue_push(
                &mut self.pushes,
                &mut self.counters,
                other.device,
                RendezvousMessage::Hints {
                    rendezvous_id: id,
                    // `.into()` builds the wire's byte-buffer type from the bytes, unchanged.
                    hints: vec![hint.clone().into()],
                },
            );
            self.counters.pushed += 1;
        }
        let previous = members[index].hint.replace(StoredHint {
            bytes: hint,
            expires_at,
            sequence,
        });
        if let Some(previous) = previous {
            self.expiries.remove(&(previous.expires_at, id, device));
        }
        self.expiries.insert((expires_at, id, device));
        self.counters.published += 1;
        if joined {
            self.introduce(id, device, true);
        }
        // A zero TTL stores nothing lasting: the hint is gone at once.
        self.prune(now);
        Ok(())
    }

    /// `device`'s seat under `id` (its index among the members), taken now if it had
    /// none (`true`), under the membership rules and quotas.
    fn seat(&mut self, device: DeviceId, id: Id) -> Result<(usize, bool), ServerRefusal> {
        let members = self.entries.get(&id);
        let member = members.is_some_and(|m| m.iter().any(|m| m.device == device));
        if !member {
            if members.is_some_and(|m| m.len() >= MEMBERS_PER_ID) {
                return self.refuse(ServerRefusal::NotYours);
            }
            if self.ids_of(&device) >= self.config.max_ids_per_device {
                self.counters.refused_device_quota += 1;
                return Err(ServerRefusal::QuotaExceeded);
            }
            if members.is_none() && self.entries.len() >= self.config.max_ids {
                return self.refuse(ServerRefusal::QuotaExceeded);
            }
        }
        let members = self.entries.entry(id).or_default();
        Ok(match members.iter().position(|m| m.device == device) {
            Some(index) => (index, false),
            None => {
                members.push(Member {
                    device,
                    hint: None,
                    joined_until: None,
                });
                self.per_device.entry(device).or_default().insert(id);
                (members.len() - 1, true)
            }
        })
    }

    /// Seats an authenticating device under the rendezvous ids it sent sealed with its
    /// proof, before [`seen`](Self::seen) reports its address (which then introduces it
    /// to each connected partner). A device already seen (a new connection from the
    /// same address replaced its last one) is introduced under each id it was not
    /// seated under before, here. A seat without a hint lasts [`JOIN_SEAT_TTL`]; a
    /// refused id is counted and skipped.
    pub fn join(&mut self, now: Instant, device: DeviceId, ids: &[Id]) {
        self.prune(now);
        for &id in ids {
            match self.seat(device, id) {
                Ok((index, newly)) => {
                    self.counters.joined += 1;
                    if newly && self.seen.contains_key(&device) {
                        self.introduce(id, device, true);
                    }
                    let member = &mut self.entries.entry(id).or_default()[index];
                    if member.hint.is_some() {
                        continue;
                    }
                    let until = now + JOIN_SEAT_TTL;
                    if let Some(previous) = member.joined_until.replace(until) {
                        self.expiries.remove(&(previous, id, device));
                    }
                    self.expiries.insert((until, id, device));
                }
                Err(reason) => {
                    debug!(%device, ?reason, "rendezvous table: join refused");
                    self.counters.joins_refused += 1;
                }
            }
        }
    }

    fn lookup(&mut self, device: DeviceId, id: Id) -> RendezvousMessage {
        let Some(members) = self.entries.get(&id) else {
            self.counters.lookups += 1;
            return RendezvousMessage::Hints {
                rendezvous_id: id,
                hints: Vec::new(),
            };
        };
        if !members.iter().any(|m| m.device == device) {
            self.counters.refused_not_yours += 1;
            return RendezvousMessage::Refused {
                reason: ServerRefusal::NotYours,
            };
        }
        let mut hints: Vec<&StoredHint> = members.iter().filter_map(|m| m.hint.as_ref()).collect();
        hints.sort_by_key(|h| h.sequence);
        // `.into()` builds the wire's byte-buffer type from the stored bytes, unchanged.
        let hints = hints.into_iter().map(|h| h.bytes.clone().into()).collect();
        self.counters.lookups += 1;
        RendezvousMessage::Hints {
            rendezvous_id: id,
            hints,
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(at, id, device)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.remove(&(at, id, device));
            let Some(members) = self.entries.get_mut(&id) else {
                continue;
            };
            if let Some(member) = members.iter_mut().find(|m| m.device == device) {
                if member.hint.as_ref().is_some_and(|h| h.expires_at == at) {
                    member.hint = None;
                    self.counters.expired += 1;
                }
                if member.joined_until == Some(at) {
                    member.joined_until = None;
                }
            }
            if !members.iter().any(Member::holds) {
                if let Some(gone) = self.entries.remove(&id) {
                    for member in gone {
                        if let Some(ids) = self.per_device.get_mut(&member.device) {
                            ids.remove(&id);
                            if ids.is_empty() {
                                self.per_device.remove(&member.device);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Queues a push, dropping the oldest waiting (counted) at [`MAX_PENDING_PUSHES`].
fn queue_push(
    pushes: &mut VecDeque<(DeviceId, RendezvousMessage)>,
    counters: &mut TableCounters,
    to: DeviceId,
    message: RendezvousMessage,
) {
    if pushes.len() >= MAX_PENDING_PUSHES {
        pushes.pop_front();
        counters.pushes_dropped += 1;
    }
    pushes.push_back((to, message));
}
