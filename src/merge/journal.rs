//! The bookkeeping of the merge: the journal of a request's operations on its namespaces, which
//! the flush leaves in the session for the save, and the record's versions, which
//! [`MergingStore`](super::MergingStore) keeps in the stored record. Both live under top-level
//! session keys of their own, read and written here only.
//!
//! A stored record is untrusted input: what it carries under these keys never acts as an
//! instruction. A load through `MergingStore` drops any stored journal and marks the versions
//! with this process's load mark; the flush leaves a journal only in a session whose versions
//! carry that mark, so an app whose store is not merging never writes bookkeeping, whatever the
//! record it loaded holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::OnceLock,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    Session,
};

/// The top-level session key under which [`MergingStore`](super::MergingStore) keeps a record's
/// versions.
pub(super) const VERSIONS_KEY: &str = "tower_sessions_controller.versions";
/// The top-level session key under which the flush leaves the request's journal for the save.
/// It never reaches the store.
pub(super) const JOURNAL_KEY: &str = "tower_sessions_controller.ops";

/// The beginning of the top-level keys this crate keeps for itself: a namespace may not be opened
/// under one.
pub(crate) const RESERVED_PREFIX: &str = "tower_sessions_controller.";

/// The mark a load through a `MergingStore` of this process leaves in a record's versions: random
/// per process, so no stored record carries it.
fn load_mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| Id::default().to_string())
}

/// Whether a [`MergingStore`](super::MergingStore) is underneath `session`: its record was loaded
/// through one of this process.
///
/// # Errors
///
/// A store failure, if the session had to be loaded.
pub(crate) async fn is_underneath(
    session: &Session,
) -> Result<bool, tower_sessions::session::Error> {
    let versions = session.get_value(VERSIONS_KEY).await?;
    Ok(versions
        .as_ref()
        .and_then(|versions| versions.get("loaded"))
        .and_then(Value::as_str)
        == Some(load_mark()))
}

/// Readies a record loaded from the store for a request: a stored journal is dropped (a journal
/// is applied only by the save of the request that wrote it), and the versions get this
/// process's load mark.
pub(super) fn mark_loaded(record: &mut Record) {
    record.data.remove(JOURNAL_KEY);
    let mark = Value::from(load_mark());
    match record.data.get_mut(VERSIONS_KEY) {
        Some(Value::Object(versions)) => {
            versions.insert("loaded".to_owned(), mark);
        }
        _ => {
            let versions = Versions {
                loaded: Some(load_mark().to_owned()),
                ..Versions::default()
            };
            record
                .data
                .insert(VERSIONS_KEY.to_owned(), versions.to_value());
        }
    }
}

/// Readies a record for the store as it is, without a merge (a new session, or one whose id was
/// just cycled): no journal, and versions without a load mark.
pub(super) fn unmark(record: &mut Record) {
    record.data.remove(JOURNAL_KEY);
    match record.data.get_mut(VERSIONS_KEY) {
        Some(Value::Object(versions)) => {
            versions.remove("loaded");
        }
        _ => {
            record
                .data
                .insert(VERSIONS_KEY.to_owned(), Versions::default().to_value());
        }
    }
}

/// The operations a request made on one namespace: whether it purged it, which user keys it set
/// or removed since (their final values and lifetimes are in the namespace the flush writes),
/// whether it wrote (so its stamp stands), and whether it counted a request against the
/// namespace's hops (so its count stands). A typed write also says so (its value must never be
/// stored in part), and a write gives the budget the merged namespace must fit in.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Ops {
    pub(crate) purged: bool,
    pub(crate) touched: BTreeSet<String>,
    pub(crate) wrote: bool,
    pub(crate) counted: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) typed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) budget: Option<usize>,
}

/// What one request did to the namespaces it changed, and the instant it judged expiry by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Journal {
    /// The request's now: whole seconds since the Unix epoch, and the nanoseconds past them.
    #[serde(rename = "now")]
    seconds: i64,
    #[serde(rename = "now_nanos")]
    nanos: u32,
    namespaces: BTreeMap<String, Ops>,
}

impl Journal {
    pub(crate) fn new(now: OffsetDateTime) -> Self {
        Self {
            seconds: now.unix_timestamp(),
            nanos: now.nanosecond(),
            namespaces: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, namespace: String, ops: Ops) {
        self.namespaces.insert(namespace, ops);
    }

    /// Leaves the journal in `session` for the save. Only a modified session is saved; an
    /// unmodified one (changes that cancelled out) needs no journal, and writing one would
    /// cause the save.
    ///
    /// # Errors
    ///
    /// A store failure, if the session had to be loaded.
    pub(crate) async fn leave_in(
        self,
        session: &Session,
    ) -> Result<(), tower_sessions::session::Error> {
        if self.namespaces.is_empty() || !session.is_modified() {
            return Ok(());
        }
        // Serializing maps of strings and booleans cannot fail.
        let value = serde_json::to_value(&self).unwrap_or(Value::Null);
        session.insert_value(JOURNAL_KEY, value).await?;
        Ok(())
    }

    /// The journal a record carries, if it is readable: one whose instant is out of the
    /// calendar is not.
    pub(super) fn read(record: &Record) -> Option<Self> {
        let journal = Self::deserialize(record.data.get(JOURNAL_KEY)?).ok()?;
        journal.now()?;
        Some(journal)
    }

    /// The request's now, if it is in the calendar.
    pub(super) fn now(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.seconds)
            .ok()?
            .replace_nanosecond(self.nanos)
            .ok()
    }

    /// The operations on `namespace`, if the request changed it.
    pub(super) fn ops(&self, namespace: &str) -> Option<&Ops> {
        self.namespaces.get(namespace)
    }
}

/// A record's versions: how many merged saves it has had, and which save last changed each key.
/// In memory, a record loaded through a `MergingStore` also carries the load mark.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Versions {
    pub(super) counter: u64,
    pub(super) keys: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded: Option<String>,
}

impl Versions {
    /// Reads versions; unreadable ones count as none, and are logged.
    pub(super) fn read(value: &Value) -> Self {
        Self::deserialize(value).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "unreadable versions in a session record: counting from zero");
            Self::default()
        })
    }

    /// The versions of a save that follows `counter`: no key changed yet. A counter at its end is
    /// corrupt: counting starts again, which at worst lets a direct write of this request win
    /// over one it did not see.
    pub(super) fn after(counter: u64) -> Self {
        Self {
            counter: counter.checked_add(1).unwrap_or(1),
            ..Self::default()
        }
    }

    /// Whether the record was loaded through a `MergingStore` of this process: the session was
    /// in the store when the request began.
    pub(super) fn is_loaded(&self) -> bool {
        self.loaded.as_deref() == Some(load_mark())
    }

    pub(super) fn to_value(&self) -> Value {
        // Serializing a map of strings to numbers cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The save that last changed `key`: 0 if none did.
    pub(super) fn of(&self, key: &str) -> u64 {
        self.keys.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn a_journal_round_trips_through_its_stored_form() {
        let now = datetime!(2026-11-25 12:00:00.5 UTC);
        let mut journal = Journal::new(now);
        journal.record(
            "cart".to_owned(),
            Ops {
                purged: true,
                touched: ["a".to_owned(), "b".to_owned()].into(),
                wrote: true,
                counted: false,
                typed: true,
                budget: Some(300),
            },
        );
        let value = serde_json::to_value(&journal).unwrap();
        assert_eq!(value["now"], now.unix_timestamp());
        assert_eq!(value["now_nanos"], 500_000_000);
        let record = Record {
            id: tower_sessions::session::Id(1),
            data: [(JOURNAL_KEY.to_owned(), value)].into(),
            expiry_date: now,
        };
        let read = Journal::read(&record).expect("readable");
        assert_eq!(read, journal);
        assert_eq!(read.now(), Some(now));
    }

    #[test]
    fn a_journal_with_an_instant_out_of_the_calendar_is_unreadable() {
        for bad in [
            json!({ "now": i64::MAX, "now_nanos": 0, "namespaces": {} }),
            json!({ "now": 0, "now_nanos": 4_000_000_000u64, "namespaces": {} }),
            json!({ "now": 0, "now_nanos": -1, "namespaces": {} }),
            json!("garbage"),
        ] {
            let record = Record {
                id: tower_sessions::session::Id(1),
                data: [(JOURNAL_KEY.to_owned(), bad.clone())].into(),
                expiry_date: OffsetDateTime::UNIX_EPOCH,
            };
            assert_eq!(Journal::read(&record), None, "{bad} was read");
        }
    }

    #[test]
    fn unreadable_versions_count_as_none() {
        assert_eq!(
            Versions::read(&json!({ "counter": "x" })),
            Versions::default()
        );
        let read = Versions::read(&json!({ "counter": 3, "keys": { "cart": 2 } }));
        assert_eq!((read.counter, read.of("cart"), read.of("other")), (3, 2, 0));
    }
}
