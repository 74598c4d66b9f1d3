//! Saves made by the flush: under a merging store, the layer's flush saves the session itself,
//! so that it learns the outcome (a session that ended meanwhile answers `409` with a message,
//! not the session manager's bare `500`), and the session manager's own save afterwards costs
//! nothing.
//!
//! The flush leaves the request's journal under the `request` number of its load, which the load's
//! mark in the session holds, and calls `Session::save`. The store merges as usual and notes the
//! outcome here, under the session's id and that number: saved ([`AtFlush`]), or refused. The
//! flush reads a refusal back. When the session manager then saves the same session, still
//! holding the number, the store finds the outcome and compares the record with what it noted:
//! unchanged (the usual case), it stores nothing; changed (a middleware between the two layers
//! wrote to the session after the flush), it merges what changed since the flush. (The embedded
//! store compares with the record it stored instead, and notes only when another save overwrites
//! it first.)
//!
//! A save notes two things, not a digest per key: the digest of the record's data as a whole (one
//! number, what the session manager's save compares with), and the versions stored with it (one
//! string, what the merge of a record changed since the flush starts from). A map of each key's
//! digest would cost a session two allocations per key to make, and as many to drop, at every
//! write. Two different data that share the whole digest (one pair in some 2^64) would make a
//! change after the flush count as none, as a collision of one key's digest would.
use std::{
    sync::{Mutex, MutexGuard, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use serde_json::Value;
use tower_sessions::session::{Id, Record};

use super::{
    digest,
    rebuild::Refusal,
    versions::{self, Versions},
    ByNumber,
};

/// What a store noted of one flush's save.
enum Outcome {
    Saved(AtFlush),
    Refused(Refusal),
}

/// What a flush's save stored of its record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AtFlush {
    /// The digest of the data as a whole: of an object of the same keys and values
    /// ([`digest::of_entries`]).
    pub(super) data: u64,
    /// The versions of the data, as stored (see `versions`).
    pub(super) versions: String,
}

impl AtFlush {
    /// What is noted of a save of `data`.
    pub(crate) fn of<'a>(data: impl Iterator<Item = (&'a String, &'a Value)>) -> Self {
        Self::of_digests(&versions::sorted_digests(data))
    }

    /// What is noted of a save of the data whose digests are `digests`, sorted by key
    /// ([`versions::sorted_digests`]).
    pub(super) fn of_digests(digests: &[(&String, u64)]) -> Self {
        Self {
            data: digest::of_entries(digests.iter().map(|(key, digest)| (key.as_str(), *digest))),
            versions: Versions::text_of(digests),
        }
    }
}

/// Whether `data` is what a save noted as `at_flush` stored (but for a collision of digests).
pub(super) fn unchanged<'a>(
    data: impl Iterator<Item = (&'a String, &'a Value)>,
    at_flush: &AtFlush,
) -> bool {
    digest::of_entries(data.map(|(key, value)| (key.as_str(), digest::of(value)))) == at_flush.data
}

/// How long a noted outcome waits for its reader: a flush reads a refusal at once, and the session
/// manager saves right after the flush; an outcome older than this was never going to be read.
const KEPT: Duration = Duration::from_secs(60);

/// The outcomes noted and not yet read, by session id and request number, with when they were.
type Noted = ByNumber<(Id, u64), (Instant, Outcome)>;

fn noted() -> MutexGuard<'static, Noted> {
    static NOTED: OnceLock<Mutex<Noted>> = OnceLock::new();
    // Each change is one statement: a poisoned lock holds nothing half-done.
    NOTED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn note(id: Id, request: u64, outcome: Outcome) {
    let mut noted = noted();
    if noted.len() >= 1024 {
        let now = Instant::now();
        noted.retain(|_, (at, _)| now.duration_since(*at) < KEPT);
    }
    noted.insert((id, request), (Instant::now(), outcome));
}

/// For the store: the flush's save of `request` stored `at_flush`.
pub(super) fn note_saved(id: Id, request: u64, at_flush: AtFlush) {
    note(id, request, Outcome::Saved(at_flush));
}

/// For the store: the flush's save of `request` was refused.
pub(super) fn note_refused(id: Id, request: u64, refusal: Refusal) {
    note(id, request, Outcome::Refused(refusal));
}

/// For the flush: why its save of `request` was refused, if it was.
pub(crate) fn take_refusal(id: Id, request: u64) -> Option<Refusal> {
    let mut noted = noted();
    match noted.remove(&(id, request)) {
        Some((_, Outcome::Refused(refusal))) => Some(refusal),
        Some(saved) => {
            noted.insert((id, request), saved);
            None
        }
        None => None,
    }
}

/// For the store, at the session manager's save of a record the flush saved: what the flush's
/// save stored, if it was noted.
pub(super) fn take_saved(record: &Record, request: u64) -> Option<AtFlush> {
    match noted().remove(&(record.id, request)) {
        Some((_, Outcome::Saved(at_flush))) => Some(at_flush),
        _ => None,
    }
}
