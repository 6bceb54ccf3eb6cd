//! A device's channels in a redb file ([`RedbChannelStore`]): the messages `send`
//! accepted and the peer has not acknowledged, and where each receiving channel stands,
//! so that a stopped, killed or powered-off node loses and repeats nothing.
//!
//! # Layout
//! | table | key | value |
//! |---|---|---|
//! | `channel_messages` | (peer id: 32 bytes, channel, sequence number) | payload |
//! | `channel_outbound` | (peer id, channel) | (incarnation, next sequence number, acknowledged below) |
//! | `channel_inbound` | (peer id, channel) | (sender incarnation known: 0 or 1, sender incarnation, next expected) |
//! | `channel_meta` | `"format"` | u64 |
//!
//! A row whose peer id is not 32 bytes does not decode: it is counted, skipped and
//! removed at load; the rest loads.
//!
//! # Durability
//! Each [`ChannelStore::apply`] is one write transaction committed to disk before it
//! returns (redb's default durability); the node's journal writer gives it every entry
//! queued since the last commit, so concurrent sends share one. The file is opened with
//! redb's integrity check, and redb's file lock makes a second node on the same file
//! fail to start with a clear error.
//!
//! # Size
//! The store holds what DirectConnection holds: at most its `max_queued` unacknowledged
//! messages per peer, and one row per channel in each direction.

use crate::file::StoreFile;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use tether_protocol::{
    ChannelId, ChannelStore, ChannelStoreError, DeviceId, JournalEntry, RestoredChannels,
    RestoredInbound, RestoredOutbound,
};

type ChannelKey<'a> = (&'a [u8], u32);

const MESSAGES: TableDefinition<(&[u8], u32, u64), &[u8]> =
    TableDefinition::new("channel_messages");
const OUTBOUND: TableDefinition<ChannelKey, (u64, u64, u64)> =
    TableDefinition::new("channel_outbound");
const INBOUND: TableDefinition<ChannelKey, (u64, u64, u64)> =
    TableDefinition::new("channel_inbound");
const META: TableDefinition<&str, u64> = TableDefinition::new("channel_meta");

/// Meta key of the layout version of the tables above.
const FORMAT_KEY: &str = "format";

/// The layout written by this version. A file with another one was written by a
/// different Tether: refused at open rather than misread.
pub const CHANNELS_FORMAT: u64 = 1;

/// Why the channel store could not be opened. Each renders as one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ChannelDbError {
    /// The file could not be opened as a redb database: unreadable, damaged, not a
    /// redb file, or locked by another process.
    #[error("cannot open channel store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::DatabaseError,
    },
    /// The file was written with a layout this version does not read.
    #[error("channel store {path} has format {found}, this node reads format {CHANNELS_FORMAT}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The format found in the file.
        found: u64,
    },
    /// A read or a commit failed.
    #[error("channel store {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
}

/// A device's channels in a redb file. See the module docs.
#[derive(Debug)]
pub struct RedbChannelStore {
    file: StoreFile,
}

impl RedbChannelStore {
    /// Opens the store at `path`, creating the file if it does not exist (its folder
    /// must). A damaged file, a file that is not a redb database, a file of another
    /// format or a file another process holds is an error, never a panic.
    pub fn open(path: &Path) -> Result<Self, ChannelDbError> {
        let file = StoreFile::open(path).map_err(|source| ChannelDbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let store = Self { file };
        let found = store.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(FORMAT_KEY)?.map(|v| v.value());
            if found.is_none() {
                meta.insert(FORMAT_KEY, CHANNELS_FORMAT)?;
            }
            txn.open_table(MESSAGES)?;
            txn.open_table(OUTBOUND)?;
            txn.open_table(INBOUND)?;
            Ok(found)
        })?;
        match found {
            Some(found) if found != CHANNELS_FORMAT => Err(ChannelDbError::UnknownFormat {
                path: store.file.path.clone(),
                found,
            }),
            _ => Ok(store),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Runs `f` in one write transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, ChannelDbError> {
        self.file.write(f).map_err(|source| ChannelDbError::Db {
            path: self.file.path.clone(),
            source,
        })
    }
}

fn store_error(error: ChannelDbError) -> ChannelStoreError {
    ChannelStoreError(error.to_string())
}

fn peer_id(bytes: &[u8]) -> Option<DeviceId> {
    <[u8; 32]>::try_from(bytes).ok().map(DeviceId)
}

fn apply_entry(txn: &redb::WriteTransaction, entry: &JournalEntry) -> Result<(), redb::Error> {
    let mut messages = txn.open_table(MESSAGES)?;
    let mut outbound = txn.open_table(OUTBOUND)?;
    let mut inbound = txn.open_table(INBOUND)?;
    match entry {
        JournalEntry::Accepted {
            peer,
            channel,
            incarnation,
            seq,
            payload,
        } => {
            let key = (&peer.0[..], channel.0);
            let kept = outbound.get(key)?.map(|v| v.value());
            let (next_seq, acked_below) = match kept {
                Some((kept_incarnation, next_seq, acked_below))
                    if kept_incarnation == *incarnation =>
                {
                    (next_seq, acked_below)
                }
                Some(_) => {
                    // A new run of the channel replaces the old one.
                    remove_messages(&mut messages, peer, *channel, u64::MAX)?;
                    (0, 0)
                }
                None => (0, 0),
            };
            if *seq >= next_seq {
                messages.insert((&peer.0[..], channel.0, *seq), payload.as_slice())?;
                outbound.insert(key, (*incarnation, seq + 1, acked_below))?;
            }
        }
        JournalEntry::Acknowledged {
            peer,
            channel,
            below,
        } => {
            let key = (&peer.0[..], channel.0);
            let kept = outbound.get(key)?.map(|v| v.value());
            if let Some((incarnation, next_seq, acked_below)) = kept {
                remove_messages(&mut messages, peer, *channel, *below)?;
                outbound.insert(key, (incarnation, next_seq, acked_below.max(*below)))?;
            }
        }
        JournalEntry::Received {
            peer,
            channel,
            sender_incarnation,
            next_expected,
        } => {
            let known = u64::from(sender_incarnation.is_some());
            inbound.insert(
                (&peer.0[..], channel.0),
                (known, sender_incarnation.unwrap_or(0), *next_expected),
            )?;
        }
    }
    Ok(())
}

/// Removes the channel's messages below `below`.
fn remove_messages(
    messages: &mut redb::Table<(&[u8], u32, u64), &[u8]>,
    peer: &DeviceId,
    channel: ChannelId,
    below: u64,
) -> Result<(), redb::Error> {
    let start = (&peer.0[..], channel.0, 0);
    let end = (&peer.0[..], channel.0, below);
    let seqs: Vec<u64> = messages
        .range(start..end)?
        .map(|row| row.map(|(key, _)| key.value().2))
        .collect::<Result<_, _>>()?;
    for seq in seqs {
        messages.remove((&peer.0[..], channel.0, seq))?;
    }
    Ok(())
}

impl ChannelStore for RedbChannelStore {
    fn load(&self) -> Result<RestoredChannels, ChannelStoreError> {
        let path = self.file.path.clone();
        let run = || -> Result<RestoredChannels, redb::Error> {
            let txn = self.file.db.begin_read()?;
            let messages = txn.open_table(MESSAGES)?;
            let outbound = txn.open_table(OUTBOUND)?;
            let inbound = txn.open_table(INBOUND)?;
            let mut restored = RestoredChannels::default();
            let mut undecodable = 0_u64;
            for row in outbound.iter()? {
                let (key, value) = row?;
                let (peer_bytes, channel) = key.value();
                let Some(peer) = peer_id(peer_bytes) else {
                    undecodable += 1;
                    continue;
                };
                let (incarnation, next_seq, acked_below) = value.value();
                let mut kept = RestoredOutbound::new(peer, ChannelId(channel), incarnation);
                kept.next_seq = next_seq;
                kept.acked_below = acked_below;
                for message in messages
                    .range((peer_bytes, channel, acked_below)..(peer_bytes, channel, next_seq))?
                {
                    let (key, payload) = message?;
                    kept.unacked.push((key.value().2, payload.value().to_vec()));
                }
                restored.outbound.push(kept);
            }
            for row in inbound.iter()? {
                let (key, value) = row?;
                let (peer_bytes, channel) = key.value();
                let Some(peer) = peer_id(peer_bytes) else {
                    undecodable += 1;
                    continue;
                };
                let (known, sender_incarnation, next_expected) = value.value();
                restored.inbound.push(RestoredInbound {
                    peer,
                    channel: ChannelId(channel),
                    sender_incarnation: (known == 1).then_some(sender_incarnation),
                    next_expected,
                });
            }
            if undecodable > 0 {
                tracing::warn!(path = %path.display(), rows = undecodable,
                    "channel store: undecodable rows skipped");
            }
            Ok(restored)
        };
        run().map_err(|source| {
            store_error(ChannelDbError::Db {
                path: self.file.path.clone(),
                source,
            })
        })
    }

    fn apply(&mut self, entries: &[JournalEntry]) -> Result<(), ChannelStoreError> {
        self.write(|txn| {
            for entry in entries {
                apply_entry(txn, entry)?;
            }
            Ok(())
        })
        .map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn accepted(peer: DeviceId, seq: u64, incarnation: u64) -> JournalEntry {
        JournalEntry::Accepted {
            peer,
            channel: ChannelId(1),
            incarnation,
            seq,
            payload: format!("m{seq}").into_bytes(),
        }
    }

    /// Every store gives back what the in-memory reference gives back.
    fn journal() -> Vec<JournalEntry> {
        let mut entries = Vec::new();
        for seq in 0..6 {
            entries.push(accepted(peer(1), seq, 7));
        }
        entries.push(JournalEntry::Acknowledged {
            peer: peer(1),
            channel: ChannelId(1),
            below: 4,
        });
        entries.push(JournalEntry::Acknowledged {
            peer: peer(1),
            channel: ChannelId(1),
            below: 2,
        });
        entries.push(accepted(peer(2), 0, 3));
        entries.push(accepted(peer(2), 0, 4));
        entries.push(JournalEntry::Received {
            peer: peer(1),
            channel: ChannelId(5),
            sender_incarnation: Some(11),
            next_expected: 9,
        });
        entries.push(JournalEntry::Received {
            peer: peer(2),
            channel: ChannelId(5),
            sender_incarnation: None,
            next_expected: 0,
        });
        entries
    }

    fn sorted(mut restored: RestoredChannels) -> RestoredChannels {
        restored.outbound.sort_by_key(|o| (o.peer.0, o.channel.0));
        restored.inbound.sort_by_key(|i| (i.peer.0, i.channel.0));
        restored
    }

    #[test]
    fn the_file_gives_back_what_the_journal_says_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channels.redb");
        let mut reference = RestoredChannels::default();
        {
            let mut store = RedbChannelStore::open(&path).unwrap();
            let entries = journal();
            // In two commits, as the writer would.
            store.apply(&entries[..5]).unwrap();
            store.apply(&entries[5..]).unwrap();
            ChannelStore::apply(&mut reference, &entries).unwrap();
        }
        let reopened = RedbChannelStore::open(&path).unwrap();
        let loaded = reopened.load().unwrap();
        assert_eq!(sorted(loaded.clone()), sorted(reference));
        let first = &sorted(loaded).outbound[0];
        assert_eq!(
            first.unacked,
            vec![(4, b"m4".to_vec()), (5, b"m5".to_vec())]
        );
        assert_eq!(first.acked_below, 4);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_a_one_line_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channels.redb");
        std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
        let error = RedbChannelStore::open(&path).unwrap_err().to_string();
        assert!(error.contains("channels.redb"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn acknowledged_messages_leave_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channels.redb");
        let mut store = RedbChannelStore::open(&path).unwrap();
        for round in 0..50u64 {
            let entries: Vec<JournalEntry> = (0..20)
                .map(|i| accepted(peer(1), round * 20 + i, 7))
                .chain(std::iter::once(JournalEntry::Acknowledged {
                    peer: peer(1),
                    channel: ChannelId(1),
                    below: (round + 1) * 20,
                }))
                .collect();
            store.apply(&entries).unwrap();
        }
        let loaded = store.load().unwrap();
        assert!(loaded.outbound[0].unacked.is_empty());
        let txn = store.file.db.begin_read().unwrap();
        use redb::ReadableTableMetadata;
        assert_eq!(txn.open_table(MESSAGES).unwrap().len().unwrap(), 0);
    }
}
