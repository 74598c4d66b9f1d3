//! Saves made by the flush: under a merging store, the layer's flush saves the session itself,
//! so that it learns the outcome (a session that ended meanwhile answers `409` with a message,
//! not the session manager's bare `500`), and the session manager's own save afterwards costs
//! nothing.
//!
//! The flush leaves the request's journal under the `request` number of its load, which the load's
//! mark in the session holds, and calls `Session::save`. The store merges as usual and notes the
//! outcome here, under the session's id and that number: saved (with the digest of every key of
//! the record it was given), or refused. The flush reads a refusal back. When the session manager
//! then saves the same session, still holding the number, the store finds the outcome and
//! compares the record with the digests it noted: unchanged (the usual case), it stores nothing;
//! changed (a middleware between the two layers wrote to the session after the flush), it merges
//! what changed. (The embedded store compares with the record it stored instead, and notes
//! digests only when another save overwrites it first.)

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use serde_json::Value;
use tower_sessions::session::{Id, Record};

use super::{digest, rebuild::Refusal, ByNumber};

/// What a store noted of one flush's save.
enum Outcome {
    Saved(Arc<BTreeMap<String, u64>>),
    Refused(Refusal),
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

/// The digest of every key of `data`.
pub(super) fn digests<'a>(
    data: impl Iterator<Item = (&'a String, &'a Value)>,
) -> BTreeMap<String, u64> {
    data.map(|(key, value)| (key.clone(), digest::of(value)))
        .collect()
}

/// For the store: the flush's save of `request` stored the record whose keys have `digests`.
pub(super) fn note_saved(id: Id, request: u64, digests: Arc<BTreeMap<String, u64>>) {
    note(id, request, Outcome::Saved(digests));
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

/// For the store, at the session manager's save of a record the flush saved: the digests of
/// every key as the flush saved them, if they were noted.
pub(super) fn take_saved(record: &Record, request: u64) -> Option<Arc<BTreeMap<String, u64>>> {
    match noted().remove(&(record.id, request)) {
        Some((_, Outcome::Saved(digests))) => Some(digests),
        _ => None,
    }
}
