//! The relay queue in a redb file ([`RedbRelayQueueStore`]).
//!
//! # Layout
//! | table | key | value |
//! |---|---|---|
//! | `relay_queue_envelopes` | envelope id (u64) | one record (below) |
//! | `relay_queue_expiries` | (expiry in Unix ms, envelope id) | () |
//! | `relay_queue_meta` | `"format"`, `"next_envelope_id"` | u64 |
//!
//! A record is `[version = 1][to: 32 bytes][from: 32 bytes][expiry: u64 big endian]
//! [envelope bytes]`: routing ids and opaque bytes, nothing from inside an envelope. A
//! record that does not decode (wrong version, too short) is counted, skipped and
//! removed at load; the rest of the queue loads.
//!
//! # Durability
//! Each [`RelayQueueStore::apply`] is one write transaction with redb's default
//! durability (committed to disk before it returns): the relay shell applies the
//! changes of every input waiting when it wakes up (up to
//! [`MAX_INPUTS_PER_COMMIT`](tether_rcs::server::MAX_INPUTS_PER_COMMIT)) in one call, so
//! a burst of enqueues from many devices shares one commit. It says its commits wait
//! for the disk ([`RelayQueueStore::commits_to_disk`]), so the relay runs them on a
//! thread of its own and keeps serving its connections meanwhile.
//! The file is opened with redb's integrity check, so a damaged file is reported as an
//! error at start instead of being trusted. redb takes a lock on the file: a second
//! relay on the same file fails to start with a clear error.
//!
//! # Size
//! The store holds exactly what the server core holds, which its bounds cap (per
//! recipient, per sender, in total); pages freed by removals are reused by redb, so the
//! file does not grow with churn beyond the largest queue it held.

use crate::file::StoreFile;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use tether_protocol::DeviceId;
use tether_rcs::{LoadedQueue, QueueChange, RelayQueueStore, RelayStoreError, StoredEnvelope};
use tracing::warn;

const ENVELOPES: TableDefinition<u64, &[u8]> = TableDefinition::new("relay_queue_envelopes");
const EXPIRIES: TableDefinition<(u64, u64), ()> = TableDefinition::new("relay_queue_expiries");
const META: TableDefinition<&str, u64> = TableDefinition::new("relay_queue_meta");

/// Meta key of the layout version of the tables above.
const FORMAT_KEY: &str = "format";
/// Meta key of the lowest envelope id never handed out.
const NEXT_ID_KEY: &str = "next_envelope_id";

/// The layout written by this version. A file with a higher one was written by a newer
/// Tether: refused at open rather than misread.
pub const FORMAT: u64 = 1;

/// Version byte of a record.
const RECORD_VERSION: u8 = 1;
/// Bytes of a record before the envelope: version, two device ids, the expiry.
const RECORD_HEADER: usize = 1 + 32 + 32 + 8;

/// Why the relay queue store could not be opened or used. Each renders as one line
/// naming the file.
#[derive(Debug, thiserror::Error)]
pub enum RelayQueueDbError {
    /// The file could not be opened as a redb database: unreadable, damaged, not a
    /// redb file, or locked by another process.
    #[error("cannot open relay queue store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::DatabaseError,
    },
    /// The file was written by a newer Tether with a layout this one does not know.
    #[error("relay queue store {path} has format {found}, this relay reads format {FORMAT}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The format found in the file.
        found: u64,
    },
    /// A read or a commit failed.
    #[error("relay queue store {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
}

/// The relay queue in a redb file. See the module docs.
#[derive(Debug)]
pub struct RedbRelayQueueStore {
    file: StoreFile,
}

impl RedbRelayQueueStore {
    /// Opens the store at `path`, creating the file if it does not exist (its folder
    /// must). A damaged file, a file that is not a redb database, a file of a newer
    /// format or a file another process holds is an error, never a panic.
    pub fn open(path: &Path) -> Result<Self, RelayQueueDbError> {
        let file = StoreFile::open(path).map_err(|source| RelayQueueDbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let store = Self { file };
        store.init()?;
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Creates the tables of a new file and checks the format of an existing one.
    fn init(&self) -> Result<(), RelayQueueDbError> {
        let found = self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(FORMAT_KEY)?.map(|v| v.value());
            if found.is_none() {
                meta.insert(FORMAT_KEY, FORMAT)?;
            }
            txn.open_table(ENVELOPES)?;
            txn.open_table(EXPIRIES)?;
            Ok(found)
        })?;
        match found {
            Some(found) if found != FORMAT => Err(RelayQueueDbError::UnknownFormat {
                path: self.file.path.clone(),
                found,
            }),
            _ => Ok(()),
        }
    }

    /// Runs `f` in one write transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, RelayQueueDbError> {
        self.file.write(f).map_err(|source| self.db_error(source))
    }

    fn db_error(&self, source: redb::Error) -> RelayQueueDbError {
        RelayQueueDbError::Db {
            path: self.file.path.clone(),
            source,
        }
    }

    /// Envelopes held now (for tests and status).
    pub fn len(&self) -> Result<u64, RelayQueueDbError> {
        let run = || -> Result<u64, redb::Error> {
            let txn = self.file.db.begin_read()?;
            Ok(txn.open_table(ENVELOPES)?.len()?)
        };
        run().map_err(|source| self.db_error(source))
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> Result<bool, RelayQueueDbError> {
        Ok(self.len()? == 0)
    }

    fn load_all(&self) -> Result<LoadedQueue, RelayQueueDbError> {
        let path = self.file.path.clone();
        self.write(|txn| {
            let mut envelopes_table = txn.open_table(ENVELOPES)?;
            let mut expiries = txn.open_table(EXPIRIES)?;
            let meta = txn.open_table(META)?;
            let mut envelopes = Vec::new();
            let mut bad = Vec::new();
            for entry in envelopes_table.iter()? {
                let (id, record) = entry?;
                match decode(id.value(), record.value()) {
                    Some(stored) => envelopes.push(stored),
                    None => bad.push(id.value()),
                }
            }
            for id in &bad {
                envelopes_table.remove(*id)?;
            }
            if !bad.is_empty() {
                warn!(path = %path.display(), records = bad.len(),
                    "relay queue store: undecodable records skipped and removed");
                // Expiry entries of the removed records, found by their ids.
                let ids: std::collections::BTreeSet<u64> = bad.iter().copied().collect();
                expiries.retain(|(_, id), ()| !ids.contains(&id))?;
            }
            let next_envelope_id = meta.get(NEXT_ID_KEY)?.map_or(0, |v| v.value());
            Ok(LoadedQueue {
                envelopes,
                next_envelope_id,
                undecodable: bad.len() as u64,
            })
        })
    }

    fn apply_all(&self, changes: &[QueueChange]) -> Result<(), RelayQueueDbError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut envelopes = txn.open_table(ENVELOPES)?;
            let mut expiries = txn.open_table(EXPIRIES)?;
            let mut meta = txn.open_table(META)?;
            let mut next_id = meta.get(NEXT_ID_KEY)?.map_or(0, |v| v.value());
            for change in changes {
                match change {
                    QueueChange::Put(stored) => {
                        let old = envelopes.insert(stored.id, encode(stored).as_slice())?;
                        if let Some(old) = old.and_then(|old| decode(stored.id, old.value())) {
                            expiries.remove((old.expires_at_unix_ms, old.id))?;
                        }
                        expiries.insert((stored.expires_at_unix_ms, stored.id), ())?;
                        next_id = next_id.max(stored.id.saturating_add(1));
                    }
                    QueueChange::Remove { id } => {
                        let old = envelopes.remove(*id)?;
                        if let Some(old) = old.and_then(|old| decode(*id, old.value())) {
                            expiries.remove((old.expires_at_unix_ms, *id))?;
                        }
                    }
                }
            }
            meta.insert(NEXT_ID_KEY, next_id)?;
            Ok(())
        })
    }

    fn expire_until(&self, now_unix_ms: u64) -> Result<u64, RelayQueueDbError> {
        self.write(|txn| {
            let mut envelopes = txn.open_table(ENVELOPES)?;
            let mut expiries = txn.open_table(EXPIRIES)?;
            let mut removed = 0;
            let due: Vec<(u64, u64)> = expiries
                .range(..=(now_unix_ms, u64::MAX))?
                .map(|entry| entry.map(|(key, _)| key.value()))
                .collect::<Result<_, _>>()?;
            for (at, id) in due {
                expiries.remove((at, id))?;
                if envelopes.remove(id)?.is_some() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }
}

impl RelayQueueStore for RedbRelayQueueStore {
    fn load(&mut self) -> Result<LoadedQueue, RelayStoreError> {
        self.load_all().map_err(boxed)
    }

    fn apply(&mut self, changes: &[QueueChange]) -> Result<(), RelayStoreError> {
        self.apply_all(changes).map_err(boxed)
    }

    fn commits_to_disk(&self) -> bool {
        true
    }

    fn expire(&mut self, now_unix_ms: u64) -> Result<u64, RelayStoreError> {
        self.expire_until(now_unix_ms).map_err(boxed)
    }
}

fn boxed(error: RelayQueueDbError) -> RelayStoreError {
    RelayStoreError {
        source: Box::new(error),
    }
}

fn encode(stored: &StoredEnvelope) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER + stored.envelope.len());
    record.push(RECORD_VERSION);
    record.extend_from_slice(&stored.to.0);
    record.extend_from_slice(&stored.from.0);
    record.extend_from_slice(&stored.expires_at_unix_ms.to_be_bytes());
    record.extend_from_slice(&stored.envelope);
    record
}

/// The record of envelope `id`, or None if it does not decode.
fn decode(id: u64, record: &[u8]) -> Option<StoredEnvelope> {
    let (&version, rest) = record.split_first()?;
    if version != RECORD_VERSION || rest.len() < RECORD_HEADER - 1 {
        return None;
    }
    let (to, rest) = rest.split_at(32);
    let (from, rest) = rest.split_at(32);
    let (expiry, envelope) = rest.split_at(8);
    Some(StoredEnvelope {
        id,
        to: DeviceId(to.try_into().ok()?),
        from: DeviceId(from.try_into().ok()?),
        expires_at_unix_ms: u64::from_be_bytes(expiry.try_into().ok()?),
        envelope: envelope.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_or_unknown_ones_do_not_decode() {
        let stored = StoredEnvelope {
            id: 7,
            to: DeviceId([1; 32]),
            from: DeviceId([2; 32]),
            expires_at_unix_ms: 1_700_000_000_123,
            envelope: vec![9; 5],
        };
        let record = encode(&stored);
        assert_eq!(record.len(), RECORD_HEADER + 5);
        assert_eq!(decode(7, &record), Some(stored));
        assert_eq!(decode(7, &record[..RECORD_HEADER - 1]), None);
        assert_eq!(decode(7, &[]), None);
        let mut newer = record.clone();
        newer[0] = 2;
        assert_eq!(decode(7, &newer), None);
        // An empty envelope is a valid record.
        assert!(decode(7, &record[..RECORD_HEADER]).is_some());
    }
}
