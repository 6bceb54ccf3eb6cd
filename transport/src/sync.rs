//! Small synchronisation helpers shared by the crate's modules.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its
/// data consistent between statements, and a panic in one test thread must not
/// cascade into unrelated panics.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
