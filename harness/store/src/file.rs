//! What every store file shares: redb opened with its integrity check (a damaged file
//! is an error at open, never a panic later), one committed write transaction per call,
//! and the path that names the file in every error.

use redb::Database;
use std::path::{Path, PathBuf};

/// An open store file.
pub(crate) struct StoreFile {
    pub(crate) db: Database,
    pub(crate) path: PathBuf,
}

impl StoreFile {
    /// Opens the file at `path`, creating it if it does not exist (its folder must).
    pub(crate) fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Runs `f` in one write transaction and commits it (durable when this returns).
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        let txn = self.db.begin_write()?;
        let value = f(&txn)?;
        txn.commit()?;
        Ok(value)
    }
}

impl std::fmt::Debug for StoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
