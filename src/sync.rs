//! Locking without poisoning.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: the gateway's mutexes guard plain data
/// (maps, counters, small records) that a panicking holder leaves
/// consistent, and one panicked task must not take the process down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
