//! The bookkeeping of the merge: the journal of a request's operations on its namespaces, which
//! the flush hands to the save, the load's mark, and the top-level session keys of the
//! bookkeeping, among them the key under which [`MergingStore`](super::MergingStore) keeps a
//! record's versions (their form is `versions`'s). Read and written here only.
//!
//! The journal itself never enters the session: the flush leaves it in this process, under the
//! number of the request's load, which the load's mark in the session already holds (a load draws
//! a number of its own, and a request loads its session once), so the save finds it (the save
//! runs in the same process, inside the flush's own `Session::save`). So a write costs no
//! serialization of its journal and writes no key of its own into the session, and the session
//! manager's save that follows finds the same number and learns from `flushed` that the flush
//! saved it.
//!
//! A stored record is untrusted input: what it carries under these keys never acts as an
//! instruction. A load through a merging store replaces any stored mark with this process's load
//! mark; the flush leaves a journal only in a session that carries that mark, so an app whose
//! store is not merging never writes bookkeeping, whatever the record it loaded holds. A load's
//! number names a journal only while the flush that left it is saving.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
};

use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    Session,
};

use super::ByNumber;

/// The top-level session key under which [`MergingStore`](super::MergingStore) keeps a record's
/// versions.
pub(super) const VERSIONS_KEY: &str = "tower_sessions_controller.versions";
/// The top-level session key under which earlier builds left a flush's request number in the
/// session (it now travels in the load's mark). Bookkeeping all the same: never data, and dropped
/// from a record at load.
pub(super) const JOURNAL_KEY: &str = "tower_sessions_controller.ops";
/// The top-level session key under which a load through a merging store of this process leaves
/// this process's load mark, which says that the session was in the store when the request began
/// and that a merging store is underneath; after the mark, a space and the load's number, which
/// names the request's journal at its save; after those, a space and what a store that saves by
/// compare-and-set saw at the load (its token), for the save. It never reaches the store. One key,
/// written once per load: a load is what most requests do.
pub(super) const LOADED_KEY: &str = "tower_sessions_controller.loaded";

/// The beginning of the top-level keys this crate keeps for itself: a namespace may not be opened
/// under one.
pub(crate) const RESERVED_PREFIX: &str = "tower_sessions_controller.";

/// The mark a load through a merging store of this process leaves in a record (under
/// [`LOADED_KEY`]): random per process, so no stored record carries it.
fn load_mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| Id::default().to_string())
}

/// Whether a [`MergingStore`](super::MergingStore) is underneath `session`: `Some`, with the
/// number of the load, when its record was loaded through one of this process.
///
/// Until a load of this process has drawn a number, no record carries this process's mark, so the
/// answer is `None` without a lookup in the session: an app whose store is not merging pays
/// nothing for the question.
///
/// # Errors
///
/// A store failure, if the session had to be loaded.
pub(crate) async fn is_underneath(
    session: &Session,
) -> Result<Option<u64>, tower_sessions::session::Error> {
    if !any_marked() {
        return Ok(None);
    }
    let loaded = session.get_value(LOADED_KEY).await?;
    Ok(loaded
        .as_ref()
        .and_then(Value::as_str)
        .and_then(after_mark)
        .map(|loaded| loaded.number))
}

/// Whether `record` was loaded through a merging store of this process: the session was in the
/// store when the request began.
pub(super) fn is_loaded(record: &Record) -> bool {
    loaded(record).is_some()
}

/// What a load through a merging store of this process left in a record (see [`mark_loaded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loaded<'a> {
    /// The load's number: it names the request's journal at its save.
    pub(crate) number: u64,
    /// The token of a store that saves by compare-and-set, if there is one.
    pub(crate) seen: Option<&'a str>,
}

/// What a load through a merging store of this process left in `record`, if one did.
pub(crate) fn loaded(record: &Record) -> Option<Loaded<'_>> {
    after_mark(record.data.get(LOADED_KEY)?.as_str()?)
}

/// `value` is this process's load mark, a space and a load's number, then perhaps a space and a
/// token.
fn after_mark(value: &str) -> Option<Loaded<'_>> {
    let rest = value.strip_prefix(load_mark())?.strip_prefix(' ')?;
    let (digits, seen) = match rest.split_once(' ') {
        Some((digits, seen)) => (digits, Some(seen)),
        None => (rest, None),
    };
    if digits.is_empty() {
        return None;
    }
    // Decimal digits only (no sign), and no more than a `u64` holds.
    let mut number = 0u64;
    for digit in digits.bytes() {
        let digit = digit.checked_sub(b'0').filter(|digit| *digit < 10)?;
        number = number.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(Loaded { number, seen })
}

/// Readies a record loaded from the store for a request: stored bookkeeping under the journal key
/// is dropped, and the record gets this process's load mark, with a number of its own for this
/// load and `seen`: what a store that saves by compare-and-set needs to know the record again.
/// The versions are left as stored.
pub(crate) fn mark_loaded(record: &mut Record, seen: Option<String>) {
    record.data.remove(JOURNAL_KEY);
    // Room for the mark and a namespace the flush creates: a map that grows rehashes every key.
    record.data.reserve(2);
    let mark = load_mark();
    let number = next_load();
    let seen = seen.as_deref().unwrap_or_default();
    let mut loaded = String::with_capacity(mark.len() + 22 + seen.len());
    loaded.push_str(mark);
    loaded.push(' ');
    push_decimal(&mut loaded, number);
    if !seen.is_empty() {
        loaded.push(' ');
        loaded.push_str(seen);
    }
    record
        .data
        .insert(LOADED_KEY.to_owned(), Value::String(loaded));
}

/// Appends `number` in decimal digits to `text` (what `write!` does, without the formatting
/// machinery: this runs at every load).
pub(super) fn push_decimal(text: &mut String, mut number: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // Below 10: one digit.
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    text.extend(digits[start..].iter().copied().map(char::from));
}

/// The number the first load of this process draws.
const FIRST_LOAD: u64 = 1;

/// The number the next load draws.
static LOADS: AtomicU64 = AtomicU64::new(FIRST_LOAD);

/// Whether a load of this process has marked a record (see [`mark_loaded`]): until one has, no
/// merging store is underneath any session of the process.
pub(crate) fn any_marked() -> bool {
    LOADS.load(Ordering::Relaxed) != FIRST_LOAD
}

/// A number for a load: each load of this process draws its own.
pub(super) fn next_load() -> u64 {
    LOADS.fetch_add(1, Ordering::Relaxed)
}

/// What the store saw when it loaded `record` (see [`mark_loaded`]), if a load through a
/// merging store of this process marked it.
#[cfg(any(test, feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) fn seen(record: &Record) -> Option<&str> {
    loaded(record)?.seen
}

/// The operations a request made on one namespace: whether it purged it, which user keys it set
/// or removed since (their final values and lifetimes are in the namespace the flush writes),
/// whether it wrote (so its stamp stands), and whether it counted a request against the
/// namespace's hops (so its count stands). A typed write also says so (its value must never be
/// stored in part), and a write gives the budget the merged namespace must fit in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ops {
    pub(crate) purged: bool,
    pub(crate) touched: BTreeSet<String>,
    pub(crate) wrote: bool,
    pub(crate) counted: bool,
    pub(crate) typed: bool,
    pub(crate) budget: Option<usize>,
}

/// The limits of a whole session, set on the layer: how many bytes its data may take as stored
/// (JSON, every top-level key and value but the merge's bookkeeping) and how many top-level keys
/// (namespaces, and keys written through `Session` directly) it may hold. A merging store checks
/// them on the record it is about to store, where the whole session is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionLimits {
    pub(crate) budget: usize,
    pub(crate) namespaces: usize,
}

/// What one request did to the namespaces it changed, and the instant it judged expiry by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Journal {
    /// The request's now.
    now: OffsetDateTime,
    namespaces: BTreeMap<String, Ops>,
    /// The number of the request's load, naming the request: the session holds it (in the load's
    /// mark), the save finds the journal by it, and `flushed` notes the outcome under it.
    request: u64,
    /// The session's limits, for the save to check.
    limits: Option<SessionLimits>,
}

/// The journals that flushes of this process left for their saves, by request number.
fn left() -> MutexGuard<'static, ByNumber<u64, Arc<Journal>>> {
    static LEFT: OnceLock<Mutex<ByNumber<u64, Arc<Journal>>>> = OnceLock::new();
    LEFT.get_or_init(Mutex::default)
        .lock()
        // Every change to the map is one statement: a poisoned lock holds nothing half-done.
        .unwrap_or_else(PoisonError::into_inner)
}

/// A journal left for the save, taken back when dropped: after the flush's save, whatever its
/// outcome, or when the flush itself is dropped (its response was abandoned).
#[must_use = "the journal is taken back when this is dropped"]
pub(crate) struct Left {
    request: u64,
}

impl Drop for Left {
    fn drop(&mut self) {
        left().remove(&self.request);
    }
}

/// The number of the request whose journal `record` names (its load's), if it names one.
pub(super) fn request_of(record: &Record) -> Option<u64> {
    Some(loaded(record)?.number)
}

/// The number of the request whose journal `record` names, while the flush that left it is
/// saving: the save to note the outcome of, for the flush and the session manager's save after it.
pub(crate) fn flushing(record: &Record) -> Option<u64> {
    let request = request_of(record)?;
    left().contains_key(&request).then_some(request)
}

/// The journal a flush left under `request`, while that flush is saving.
pub(crate) fn left_by(request: u64) -> Option<Arc<Journal>> {
    left().get(&request).cloned()
}

/// Replaces the versions `record` carries (`versions`, as stored): what a save compares the
/// record with to tell what its request changed.
pub(super) fn set_versions(record: &mut Record, versions: String) {
    record
        .data
        .insert(VERSIONS_KEY.to_owned(), Value::String(versions));
}

impl Journal {
    /// The journal of the request whose now is `now` and whose load's number is `request`.
    pub(crate) fn new(now: OffsetDateTime, request: u64) -> Self {
        Self {
            now,
            namespaces: BTreeMap::new(),
            request,
            limits: None,
        }
    }

    /// The journal, with the session's limits for the save to check.
    pub(crate) fn limited(mut self, limits: SessionLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The namespaces the request changed, with its operations on each.
    pub(super) fn namespaces(&self) -> impl Iterator<Item = (&String, &Ops)> {
        self.namespaces.iter()
    }

    /// The number naming the request.
    pub(crate) fn request(&self) -> u64 {
        self.request
    }

    pub(crate) fn record(&mut self, namespace: String, ops: Ops) {
        self.namespaces.insert(namespace, ops);
    }

    /// Whether the request changed no namespace.
    pub(crate) fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Leaves the journal for the save of the session: in this process, under the request's
    /// number (its load's, which the session holds). The journal is taken back when the returned
    /// guard is dropped.
    pub(crate) fn left(self) -> Left {
        Left {
            request: self.leave(),
        }
    }

    /// The journal `record` names, while the flush that left it is saving.
    pub(super) fn read(record: &Record) -> Option<Arc<Self>> {
        left_by(request_of(record)?)
    }

    /// The session's limits, for the save to check.
    pub(super) fn limits(&self) -> Option<SessionLimits> {
        self.limits
    }

    /// The request's now.
    pub(super) fn now(&self) -> OffsetDateTime {
        self.now
    }

    /// Puts the journal where the save finds it, and returns its request's number.
    fn leave(self) -> u64 {
        let request = self.request;
        left().insert(request, Arc::new(self));
        request
    }

    /// Leaves the journal for a save until the process ends, and returns what the session
    /// holds for it (a load mark naming it): for tests of the save that build its record by hand.
    #[cfg(test)]
    pub(crate) fn left_for_good(self) -> Value {
        Value::from(format!("{} {}", load_mark(), self.leave()))
    }

    /// The operations on `namespace`, if the request changed it.
    pub(super) fn ops(&self, namespace: &str) -> Option<&Ops> {
        self.namespaces.get(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn record_naming(loaded: Value) -> Record {
        Record {
            id: Id(1),
            data: [(LOADED_KEY.to_owned(), loaded)].into(),
            expiry_date: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_loads_number_is_written_in_decimal_and_read_back() {
        for number in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut text = "x ".to_owned();
            push_decimal(&mut text, number);
            assert_eq!(text, format!("x {number}"));
            let loaded = format!("{} {}", load_mark(), &text[2..]);
            assert_eq!(
                after_mark(&loaded).map(|loaded| loaded.number),
                Some(number)
            );
        }
    }

    #[test]
    fn a_journal_left_for_the_save_is_found_by_its_loads_number_until_taken_back() {
        let now = datetime!(2026-11-25 12:00:00.5 UTC);
        let mut record = record_naming(json!("stored"));
        mark_loaded(&mut record, Some("t".to_owned()));
        let load = request_of(&record).expect("a load's number");
        let mut journal = Journal::new(now, load);
        journal.record(
            "cart".to_owned(),
            Ops {
                touched: ["a".to_owned()].into(),
                wrote: true,
                ..Ops::default()
            },
        );
        assert_eq!(Journal::read(&record), None, "not left yet");
        let left = journal.clone().left();

        assert_eq!(Journal::read(&record).as_deref(), Some(&journal));
        assert_eq!(seen(&record), Some("t"), "the token, after the number");
        assert_eq!(request_of(&record), Some(journal.request()));
        drop(left);
        assert_eq!(Journal::read(&record), None, "taken back");
    }

    #[test]
    fn a_number_no_flush_left_names_no_journal() {
        let now = datetime!(2026-11-25 12:00 UTC);
        let left = Journal::new(now, next_load()).left();
        let guessed = left.request ^ 1;
        let mark = load_mark();
        for stored in [
            json!(format!("{mark} {guessed}")),
            json!(format!("guess {}", left.request)),
            json!(left.request),
            json!("garbage"),
            json!({ "request": left.request }),
        ] {
            assert_eq!(
                Journal::read(&record_naming(stored.clone())),
                None,
                "{stored}"
            );
        }
        let named = record_naming(json!(format!("{mark} {}", left.request)));
        assert!(Journal::read(&named).is_some(), "the load that left it");
    }

    #[test]
    fn a_stored_load_mark_is_not_this_processes() {
        let mut record = Record {
            id: Id(1),
            data: [(LOADED_KEY.to_owned(), json!("guess t"))].into(),
            expiry_date: OffsetDateTime::UNIX_EPOCH,
        };
        assert!(!is_loaded(&record));
        assert_eq!(seen(&record), None);
        mark_loaded(&mut record, Some("t2".to_owned()));
        assert!(is_loaded(&record));
        assert_eq!(seen(&record), Some("t2"));
        let first = request_of(&record);
        mark_loaded(&mut record, None);
        assert_eq!(seen(&record), None, "a load without a token leaves none");
        assert!(is_loaded(&record));
        assert!(
            request_of(&record) > first,
            "each load draws a number of its own"
        );
    }

    #[test]
    fn only_this_processes_mark_and_a_number_name_a_load() {
        let mark = load_mark();
        let loaded = |number, seen| Some(Loaded { number, seen });
        assert_eq!(after_mark(&format!("{mark} 7")), loaded(7, None));
        assert_eq!(after_mark(&format!("{mark} 7 t")), loaded(7, Some("t")));
        assert_eq!(after_mark(&format!("{mark} 7 @3")), loaded(7, Some("@3")));
        assert_eq!(after_mark(&format!("{mark} 7  ")), loaded(7, Some(" ")));
        for other in [
            mark.to_owned(),
            format!("{mark} t"),
            format!("{mark} +7"),
            format!("{mark} -7"),
            format!("{mark}  7"),
            format!("{mark} 7t"),
            format!("{mark} 99999999999999999999"),
            format!("{mark}7"),
            format!("x{mark} 7"),
            String::new(),
            "t".to_owned(),
        ] {
            assert_eq!(after_mark(&other), None, "{other:?}");
        }
    }
}
