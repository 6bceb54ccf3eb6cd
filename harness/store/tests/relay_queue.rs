//! The relay queue store contract, run against both backends (memory and redb), then
//! what only a file can do wrong: damage, a newer format, a second opener, churn.

// A panic in a test is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use tether_protocol::DeviceId;
use tether_rcs::{MemoryRelayQueueStore, QueueChange, RelayQueueStore, StoredEnvelope};
use tether_store::{RedbRelayQueueStore, RelayQueueDbError};

/// A backend under test: `open` gives a handle on the same contents each time (a
/// reopened file, or a clone of the shared memory store). The previous handle is
/// dropped first, as a restarted relay's would be.
trait Backend {
    type Store: RelayQueueStore;
    fn open(&self) -> Self::Store;
}

struct Memory(MemoryRelayQueueStore);

impl Backend for Memory {
    type Store = MemoryRelayQueueStore;
    fn open(&self) -> Self::Store {
        self.0.clone()
    }
}

struct Redb(tempfile::TempDir);

impl Redb {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn file(&self) -> PathBuf {
        self.0.path().join("queue.redb")
    }
}

impl Backend for Redb {
    type Store = RedbRelayQueueStore;
    fn open(&self) -> Self::Store {
        RedbRelayQueueStore::open(&self.file()).unwrap()
    }
}

fn envelope(id: u64, to: u8, expires_at_unix_ms: u64) -> StoredEnvelope {
    StoredEnvelope {
        id,
        to: DeviceId([to; 32]),
        from: DeviceId([0xf0; 32]),
        expires_at_unix_ms,
        envelope: vec![id as u8; 10 + id as usize],
    }
}

fn ids(store: &mut impl RelayQueueStore) -> Vec<u64> {
    store
        .load()
        .unwrap()
        .envelopes
        .iter()
        .map(|e| e.id)
        .collect()
}

fn stores_and_loads_in_id_order(backend: impl Backend) {
    let mut store = backend.open();
    let empty = store.load().unwrap();
    assert!(empty.envelopes.is_empty());
    assert_eq!(empty.undecodable, 0);
    let (a, b, c) = (
        envelope(3, 1, 5_000),
        envelope(1, 2, 6_000),
        envelope(2, 1, 7_000),
    );
    store
        .apply(&[
            QueueChange::Put(a.clone()),
            QueueChange::Put(b.clone()),
            QueueChange::Put(c.clone()),
        ])
        .unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.envelopes, vec![b, c, a]);
    assert_eq!(loaded.next_envelope_id, 4);
}

fn removes_acknowledged_ones_and_ignores_unknown_ids(backend: impl Backend) {
    let mut store = backend.open();
    store
        .apply(&[
            QueueChange::Put(envelope(1, 1, 5_000)),
            QueueChange::Put(envelope(2, 1, 5_000)),
        ])
        .unwrap();
    store
        .apply(&[
            QueueChange::Remove { id: 1 },
            QueueChange::Remove { id: 99 },
        ])
        .unwrap();
    assert_eq!(ids(&mut store), vec![2]);
    // A put and its removal in one batch leave nothing, and the id stays used.
    store
        .apply(&[
            QueueChange::Put(envelope(3, 2, 5_000)),
            QueueChange::Remove { id: 3 },
        ])
        .unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.envelopes.len(), 1);
    assert_eq!(loaded.next_envelope_id, 4);
    // Removing everything keeps the id counter.
    store.apply(&[QueueChange::Remove { id: 2 }]).unwrap();
    let loaded = store.load().unwrap();
    assert!(loaded.envelopes.is_empty());
    assert_eq!(loaded.next_envelope_id, 4);
}

fn expires_what_is_due_and_nothing_else(backend: impl Backend) {
    let mut store = backend.open();
    store
        .apply(&[
            QueueChange::Put(envelope(1, 1, 1_000)),
            QueueChange::Put(envelope(2, 2, 2_000)),
            QueueChange::Put(envelope(3, 1, 3_000)),
        ])
        .unwrap();
    assert_eq!(store.expire(999).unwrap(), 0);
    // Due at its expiry, inclusive.
    assert_eq!(store.expire(2_000).unwrap(), 2);
    assert_eq!(ids(&mut store), vec![3]);
    // A replaced envelope expires by its new expiry only.
    store
        .apply(&[QueueChange::Put(envelope(3, 1, 9_000))])
        .unwrap();
    assert_eq!(store.expire(3_000).unwrap(), 0);
    assert_eq!(store.expire(9_000).unwrap(), 1);
    assert!(store.load().unwrap().envelopes.is_empty());
}

fn survives_a_reopen(backend: impl Backend) {
    {
        let mut store = backend.open();
        store
            .apply(&[
                QueueChange::Put(envelope(1, 1, 5_000)),
                QueueChange::Put(envelope(2, 2, 5_000)),
            ])
            .unwrap();
        store.apply(&[QueueChange::Remove { id: 1 }]).unwrap();
    }
    let mut store = backend.open();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.envelopes, vec![envelope(2, 2, 5_000)]);
    assert_eq!(loaded.next_envelope_id, 3);
    // The expiry index came back too.
    assert_eq!(store.expire(5_000).unwrap(), 1);
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(super::Memory(Default::default())); })*
        }
        mod redb_file {
            $(#[test] fn $name() { super::$name(super::Redb::new()); })*
        }
    };
}

both_backends!(
    stores_and_loads_in_id_order,
    removes_acknowledged_ones_and_ignores_unknown_ids,
    expires_what_is_due_and_nothing_else,
    survives_a_reopen,
);

#[test]
fn an_undecodable_record_is_counted_skipped_and_removed() {
    let backend = Redb::new();
    {
        let mut store = backend.open();
        store
            .apply(&[
                QueueChange::Put(envelope(1, 1, 5_000)),
                QueueChange::Put(envelope(2, 1, 5_000)),
            ])
            .unwrap();
    }
    {
        // Damage one record (as a bug or a newer version could leave it).
        let db = redb::Database::create(backend.file()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<u64, &[u8]> =
                redb::TableDefinition::new("relay_queue_envelopes");
            let mut table = txn.open_table(table).unwrap();
            table.insert(1, &[0xff, 1, 2][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let mut store = backend.open();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.undecodable, 1);
    assert_eq!(loaded.envelopes, vec![envelope(2, 1, 5_000)]);
    // Removed, so counted once.
    assert_eq!(store.load().unwrap().undecodable, 0);
    assert_eq!(store.expire(5_000).unwrap(), 1);
}

fn open_error(path: &std::path::Path) -> RelayQueueDbError {
    RedbRelayQueueStore::open(path).expect_err("the open must fail")
}

#[test]
fn a_damaged_or_foreign_file_is_an_error_at_open_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // Not a database at all.
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a; 64 * 1024]).unwrap();
    let error = open_error(&garbage);
    assert!(matches!(error, RelayQueueDbError::Open { .. }), "{error}");
    assert!(error.to_string().contains("garbage.redb"), "{error}");
    // A real store, cut short.
    let cut = dir.path().join("cut.redb");
    {
        let mut store = RedbRelayQueueStore::open(&cut).unwrap();
        let batch: Vec<QueueChange> = (1..200)
            .map(|id| QueueChange::Put(envelope(id, 1, 5_000)))
            .collect();
        store.apply(&batch).unwrap();
    }
    let len = std::fs::metadata(&cut).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let error = open_error(&cut);
    assert!(error.to_string().contains("cut.redb"), "{error}");
    // Bytes flipped in the middle of a real store.
    let flipped = dir.path().join("flipped.redb");
    {
        let mut store = RedbRelayQueueStore::open(&flipped).unwrap();
        let batch: Vec<QueueChange> = (1..200)
            .map(|id| QueueChange::Put(envelope(id, 1, 5_000)))
            .collect();
        store.apply(&batch).unwrap();
    }
    let mut bytes = std::fs::read(&flipped).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 4096] {
        *byte ^= 0xa5;
    }
    std::fs::write(&flipped, bytes).unwrap();
    let error = open_error(&flipped);
    assert!(error.to_string().contains("flipped.redb"), "{error}");
    // A folder that does not exist.
    let error = open_error(&dir.path().join("missing/queue.redb"));
    assert!(matches!(error, RelayQueueDbError::Open { .. }), "{error}");
}

#[test]
fn a_file_of_a_newer_format_is_refused() {
    let backend = Redb::new();
    drop(backend.open());
    {
        let db = redb::Database::create(backend.file()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> =
                redb::TableDefinition::new("relay_queue_meta");
            txn.open_table(meta).unwrap().insert("format", 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let error = open_error(&backend.file());
    assert!(
        matches!(error, RelayQueueDbError::UnknownFormat { found: 2, .. }),
        "{error}"
    );
}

#[test]
fn a_file_held_by_another_store_is_refused() {
    let backend = Redb::new();
    let _first = backend.open();
    let error = open_error(&backend.file());
    assert!(matches!(error, RelayQueueDbError::Open { .. }), "{error}");
}

/// Envelopes come and go for much longer than the queue is ever full: the file stays
/// the size of the largest queue it held, it does not grow with the traffic.
#[test]
fn the_file_does_not_grow_with_churn() {
    let backend = Redb::new();
    let mut store = backend.open();
    let mut next = 1;
    let mut round = |store: &mut RedbRelayQueueStore| {
        let puts: Vec<QueueChange> = (next..next + 200)
            .map(|id| {
                let mut e = envelope(id, (id % 4) as u8, 5_000);
                e.envelope = vec![7; 1024];
                QueueChange::Put(e)
            })
            .collect();
        store.apply(&puts).unwrap();
        let removes: Vec<QueueChange> = (next..next + 200)
            .map(|id| QueueChange::Remove { id })
            .collect();
        store.apply(&removes).unwrap();
        next += 200;
    };
    for _ in 0..3 {
        round(&mut store);
    }
    let after_warm_up = std::fs::metadata(backend.file()).unwrap().len();
    for _ in 0..50 {
        round(&mut store);
    }
    let after_churn = std::fs::metadata(backend.file()).unwrap().len();
    assert!(store.is_empty().unwrap());
    assert!(
        after_churn <= after_warm_up * 2,
        "{after_warm_up} bytes after 600 envelopes, {after_churn} after 10 600"
    );
}
