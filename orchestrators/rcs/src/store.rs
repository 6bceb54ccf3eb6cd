//! The relay queue's persistence: what [`RelayQueueServer`](crate::RelayQueueServer)
//! asks to be kept so that a relay restart loses no envelope before its TTL, the
//! [`RelayQueueStore`] trait a backend implements, and [`MemoryRelayQueueStore`], the
//! backend of the simulator and of unit tests. The on-disk backend (redb) lives in the
//! `tether-store` crate; a distributed one can implement the same trait.
//!
//! # Who decides what
//! The server core owns every decision: what is stored, for how long, what is over a
//! bound, what has expired. It reports each decision as a [`QueueChange`]
//! ([`RelayQueueServer::poll_change`](crate::RelayQueueServer::poll_change)); the
//! shell applies the changes of a batch of inputs (at most
//! [`MAX_INPUTS_PER_COMMIT`](crate::server::MAX_INPUTS_PER_COMMIT)) in one
//! [`RelayQueueStore::apply`] (one durable commit), then tells the core
//! ([`RelayQueueServer::committed`](crate::RelayQueueServer::committed)), which holds
//! back everything those inputs produced until then, so an `Enqueued` answer always
//! follows a durable write. At start the shell hands what
//! [`RelayQueueStore::load`] returns to
//! [`RelayQueueServer::restore`](crate::RelayQueueServer::restore), which applies the
//! current bounds and TTL cap again and reports what it drops as changes too.
//!
//! # Time
//! Expiries are stored as Unix milliseconds: an `Instant` means nothing after a
//! restart. The core converts with the `unix_ms_at_start` of its config (read by the
//! shell once, like a node's handshake clock); it reads no clock itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tether_protocol::DeviceId;

/// One envelope as the relay queue keeps it across restarts: the queue's routing fields
/// and the opaque bytes, never anything from inside the envelope (invariant 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The server-assigned id (it grows, so the order of ids is the queue's order).
    pub id: u64,
    /// The recipient device, whose queue holds it.
    pub to: DeviceId,
    /// The sender device, charged for it in the per-sender quota.
    pub from: DeviceId,
    /// When it expires, in Unix milliseconds.
    pub expires_at_unix_ms: u64,
    /// The sealed envelope, opaque to the relay.
    pub envelope: Vec<u8>,
}

/// One decision of the server core that the store must reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueChange {
    /// An envelope was accepted: keep it until a `Remove` or its expiry.
    Put(StoredEnvelope),
    /// An envelope left the queue (acknowledged, expired, or over a bound at restore).
    /// Removing an id the store does not hold is harmless.
    Remove {
        /// The envelope's id.
        id: u64,
    },
}

/// What a store held when the relay started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedQueue {
    /// Every stored envelope, all recipients, in id order (oldest first per recipient).
    pub envelopes: Vec<StoredEnvelope>,
    /// The lowest id never handed out: ids are not reused across restarts, so an
    /// acknowledgement from before a restart can never remove a newer envelope.
    pub next_envelope_id: u64,
    /// Records that could not be decoded and were skipped (and dropped from the store).
    pub undecodable: u64,
}

/// A store operation that failed: the backend's error, kept as the source.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RelayStoreError {
    /// What the backend reported.
    #[from]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where the relay queue is kept across restarts. See the module docs for who decides
/// what: a store only applies the server core's changes and hands them back at start.
pub trait RelayQueueStore {
    /// Everything stored, for the server to take over at start.
    fn load(&mut self) -> Result<LoadedQueue, RelayStoreError>;

    /// Applies `changes` in order, atomically and durably: after `Ok`, a restart loads
    /// all of them; after `Err`, none or all of them (never a part).
    fn apply(&mut self, changes: &[QueueChange]) -> Result<(), RelayStoreError>;

    /// Removes every envelope that expires at or before `now_unix_ms` and returns how
    /// many. The shell calls it once before [`load`](Self::load), so a relay that was
    /// down for a day does not read a day of expired envelopes into memory.
    fn expire(&mut self, now_unix_ms: u64) -> Result<u64, RelayStoreError>;

    /// Whether an [`apply`](Self::apply) waits for a disk: the relay shell then
    /// commits on a thread of its own, so that its connections are served meanwhile
    /// and the inputs that arrive during a commit share the next one. A store in
    /// memory commits at once, in the shell's own thread.
    fn commits_to_disk(&self) -> bool {
        false
    }
}

/// A [`RelayQueueStore`] in memory: the simulator's and the unit tests' backend. Clones
/// share their contents, so a simulated relay restarted with a clone finds what the
/// previous one stored (as it would find a file on disk).
#[derive(Debug, Clone, Default)]
pub struct MemoryRelayQueueStore {
    inner: Arc<Mutex<MemoryQueue>>,
}

#[derive(Debug, Default)]
struct MemoryQueue {
    envelopes: BTreeMap<u64, StoredEnvelope>,
    next_envelope_id: u64,
}

impl MemoryRelayQueueStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Envelopes held, for tests of the bounds.
    pub fn len(&self) -> usize {
        self.lock().envelopes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, MemoryQueue> {
        // A panic while holding the lock leaves a map that is still consistent: every
        // operation below is a single insert or remove.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RelayQueueStore for MemoryRelayQueueStore {
    fn load(&mut self) -> Result<LoadedQueue, RelayStoreError> {
        let queue = self.lock();
        Ok(LoadedQueue {
            envelopes: queue.envelopes.values().cloned().collect(),
            next_envelope_id: queue.next_envelope_id,
            undecodable: 0,
        })
    }

    fn apply(&mut self, changes: &[QueueChange]) -> Result<(), RelayStoreError> {
        let mut queue = self.lock();
        for change in changes {
            match change {
                QueueChange::Put(stored) => {
                    queue.next_envelope_id =
                        queue.next_envelope_id.max(stored.id.saturating_add(1));
                    queue.envelopes.insert(stored.id, stored.clone());
                }
                QueueChange::Remove { id } => {
                    queue.envelopes.remove(id);
                }
            }
        }
        Ok(())
    }

    fn expire(&mut self, now_unix_ms: u64) -> Result<u64, RelayStoreError> {
        let mut queue = self.lock();
        let before = queue.envelopes.len();
        queue
            .envelopes
            .retain(|_, stored| stored.expires_at_unix_ms > now_unix_ms);
        Ok((before - queue.envelopes.len()) as u64)
    }
}
