//! The rebuild of a record: what a save stores when it is merged into the latest stored record.

use std::{collections::HashMap, fmt};

use serde::{
    ser::{SerializeMap, SerializeStruct},
    Serialize, Serializer,
};
use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions::session::Record;

use super::flushed::AtFlush;
use super::journal::{self, Journal, Ops, SessionLimits, JOURNAL_KEY, LOADED_KEY, VERSIONS_KEY};
use super::{digest, versions::Versions};
use crate::{
    budget, expiry,
    stored::{Stored, StoredRef},
};

/// Why a save is refused: nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The session was in the store when the request loaded it, and is gone now: deleted (a
    /// logout), its id cycled away, expired or evicted. Writing it back would undo that.
    Ended,
    /// A namespace merged with what other requests stored meanwhile is larger than the budget of
    /// the write that changed it.
    OverBudget {
        namespace: String,
        size: usize,
        budget: usize,
    },
    /// The session would hold more than its limits allow (bytes of data, or top-level keys), and
    /// this request added to it.
    SessionFull {
        /// The bytes its data would take as stored.
        size: usize,
        /// The top-level keys it would hold.
        namespaces: usize,
        limits: SessionLimits,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ended => f.write_str("the session ended while the request ran"),
            Self::OverBudget {
                namespace,
                size,
                budget,
            } => write!(
                f,
                "namespace {} merged with concurrent changes would be {size} bytes, over its \
                 budget of {budget} bytes",
                crate::error::Shown(namespace)
            ),
            Self::SessionFull {
                size,
                namespaces,
                limits,
            } => write!(
                f,
                "the session would hold {namespaces} namespaces in {size} bytes, over its limits \
                 of {} namespaces and {} bytes",
                limits.namespaces, limits.budget
            ),
        }
    }
}

/// Whether a top-level key holds session data, not the merge's bookkeeping.
pub(super) fn is_data(key: &str) -> bool {
    key != JOURNAL_KEY && key != VERSIONS_KEY && key != LOADED_KEY
}

/// The record to store for `ours` (what this request would save) when the store still holds what
/// the request loaded: ours as it is, its bookkeeping replaced by the digests of its values.
pub(crate) fn as_stored(ours: &Record) -> Record {
    Unmerged::of(ours).into_record()
}

/// What a merging store's first try stores for `ours` when the store still holds what the request
/// loaded ([`as_stored`]), without copying it: ours' data, borrowed, with the versions of its
/// values in place of its bookkeeping. It serializes as that `Record` does, so a store that keeps
/// records as bytes encodes it straight from the session; a store that keeps `Record`s takes
/// [`Unmerged::into_record`].
pub(crate) struct Unmerged<'a> {
    ours: &'a Record,
    /// What is stored of ours' data besides the data: its versions, stored under
    /// [`VERSIONS_KEY`], and its digest as a whole, for the note of the save.
    at_flush: AtFlush,
}

impl<'a> Unmerged<'a> {
    /// The record to store for `ours`.
    fn of(ours: &'a Record) -> Self {
        Self {
            ours,
            at_flush: AtFlush::of(data_of(ours)),
        }
    }

    /// What [`saved`](super::saved) notes when this record is the one stored, without digesting
    /// the session again.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn at_flush(&self) -> AtFlush {
        self.at_flush.clone()
    }

    /// The session the record is stored under.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn id(&self) -> tower_sessions::session::Id {
        self.ours.id
    }

    /// When the record expires.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn expiry_date(&self) -> OffsetDateTime {
        self.ours.expiry_date
    }

    /// The record, owned: ours' data copied.
    pub(crate) fn into_record(self) -> Record {
        let mut data: HashMap<String, Value> = data_of(self.ours)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        data.insert(
            VERSIONS_KEY.to_owned(),
            Value::String(self.at_flush.versions),
        );
        Record {
            id: self.ours.id,
            data,
            expiry_date: self.ours.expiry_date,
        }
    }

    /// Makes `stored` this record, copying only the values that differ from it: `stored` is what
    /// the store holds, the version the request loaded, so most of its values are ours already (a
    /// request changes a namespace or two). Gives the same record as [`Unmerged::into_record`],
    /// whatever `stored` held.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn patch(self, stored: &mut Record) {
        copy_changes(self.ours, stored, |_, _| {});
        stored.data.insert(
            VERSIONS_KEY.to_owned(),
            Value::String(self.at_flush.versions),
        );
    }
}

impl fmt::Debug for Unmerged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unmerged")
            .field("id", &self.ours.id)
            .finish_non_exhaustive()
    }
}

/// Serialized exactly as `Record`'s derived `Serialize` would serialize [`Unmerged::into_record`].
impl Serialize for Unmerged<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The record's data: ours' keys that are data, then the versions.
        struct Data<'b>(&'b Unmerged<'b>);

        impl Serialize for Data<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let Unmerged { ours, at_flush } = self.0;
                let mut map = serializer.serialize_map(Some(data_of(ours).count() + 1))?;
                for (key, value) in data_of(ours) {
                    map.serialize_entry(key, value)?;
                }
                map.serialize_entry(VERSIONS_KEY, &at_flush.versions)?;
                map.end()
            }
        }

        let mut record = serializer.serialize_struct("Record", 3)?;
        record.serialize_field("id", &self.ours.id)?;
        record.serialize_field("data", &Data(self))?;
        record.serialize_field("expiry_date", &self.ours.expiry_date)?;
        record.end()
    }
}

/// A merging store's first try when it holds the version the request loaded at hand, `stored`
/// (as [`MemoryStore`](crate::stores::MemoryStore) does): checks `ours` against the session's
/// limits its `journal` carries, as [`checked_unmerged`] does, then makes `stored` the record to
/// store, as [`Unmerged::patch`] does, in place: only the values that differ are copied, and only
/// they are digested.
///
/// A value the request left as it loaded it keeps the digest stored with it: `stored` must carry
/// the versions of its own data, as every record a merging store writes does (then a request that
/// changed one namespace digests that one alone). Versions that are not in the form this build
/// stores (see `versions`; the earlier map form included), or that end up with more or fewer
/// digests than the data has keys, are made again from every value.
///
/// # Errors
///
/// [`Refusal::SessionFull`].
pub(crate) fn patch(
    ours: &Record,
    journal: Option<&Journal>,
    stored: &mut Record,
) -> Result<(), Refusal> {
    check_session(ours, journal, &ours.data)?;
    // The usual write changes one namespace: one digest, and no allocation for none.
    let mut changed: Vec<(&String, u64)> = Vec::new();
    let (held, dropped) = copy_changes(ours, stored, |key, value| {
        changed.push((key, digest::of(value)));
    });
    let kept = |key: &str| ours.data.contains_key(key) && is_data(key);
    let keep: Option<&dyn Fn(&str) -> bool> = dropped.then_some(&kept);
    let updated = stored
        .data
        .get_mut(VERSIONS_KEY)
        .is_some_and(|versions| Versions::patch_value(versions, keep, &changed, held));
    if !updated {
        stored.data.insert(
            VERSIONS_KEY.to_owned(),
            Versions::value_of_data(data_of(ours)),
        );
    }
    Ok(())
}

/// The common part of a patch of `stored` into the record to store for `ours`: copies each value of
/// ours' data that differs from the one `stored` holds (and gives it to `changed`), drops what ours
/// does not hold, but the versions, and takes ours' id and expiry. Returns how many keys ours' data
/// has, and whether any key was dropped.
fn copy_changes<'a>(
    ours: &'a Record,
    stored: &mut Record,
    mut changed: impl FnMut(&'a String, &'a Value),
) -> (usize, bool) {
    let mut held = 0;
    for (key, value) in data_of(ours) {
        held += 1;
        match stored.data.get_mut(key) {
            Some(old) if old == value => continue,
            Some(old) => old.clone_from(value),
            None => {
                stored.data.insert(key.clone(), value.clone());
            }
        }
        changed(key, value);
    }
    // `stored` holds every key of ours' data, and its versions if it had them: anything more is
    // to drop, which is rare.
    let versions = usize::from(stored.data.contains_key(VERSIONS_KEY));
    let dropped = stored.data.len() != held + versions;
    if dropped {
        stored
            .data
            .retain(|key, _| key == VERSIONS_KEY || is_data(key) && ours.data.contains_key(key));
    }
    stored.id = ours.id;
    stored.expiry_date = ours.expiry_date;
    (held, dropped)
}

/// The session data of `record`: its keys without the merge's bookkeeping.
pub(super) fn data_of(record: &Record) -> impl Iterator<Item = (&String, &Value)> {
    record.data.iter().filter(|(key, _)| is_data(key))
}

/// The record to store for `ours` when the store still holds what the request loaded
/// ([`Unmerged`]), checked against the session's limits: a merging store's first try.
///
/// # Errors
///
/// [`Refusal::SessionFull`].
fn unmerged(ours: &Record) -> Result<Record, Refusal> {
    checked_unmerged(ours).map(Unmerged::into_record)
}

/// [`unmerged`], not copied.
///
/// # Errors
///
/// [`Refusal::SessionFull`].
pub(crate) fn checked_unmerged(ours: &Record) -> Result<Unmerged<'_>, Refusal> {
    // The data stored is ours'.
    check_session(ours, Journal::read(ours).as_deref(), &ours.data)?;
    Ok(Unmerged::of(ours))
}

/// Checks `next`, the data of the record a save of `ours` is about to store, against the
/// session's limits that `ours`'s journal carries. Cheap when the session is well inside them: a
/// count of its keys and a walk of its values (not of their bytes).
///
/// A session over a limit is refused only a request that adds to it: one that creates a
/// namespace when there are too many, or sets a key when there are too many bytes. A request
/// that removes or purges is stored, so a full session can always be emptied.
///
/// # Errors
///
/// [`Refusal::SessionFull`].
fn check_session(
    ours: &Record,
    journal: Option<&Journal>,
    next: &HashMap<String, Value>,
) -> Result<(), Refusal> {
    let Some(journal) = journal else {
        return Ok(());
    };
    let Some(limits) = journal.limits() else {
        return Ok(());
    };
    let data = || next.iter().filter(|(key, _)| is_data(key));
    let namespaces = data().count();
    let mut size = budget::entries(data(), false);
    if size.high > limits.budget {
        size = budget::entries(data(), true);
    }
    let (too_many, too_large) = (namespaces > limits.namespaces, size.low > limits.budget);
    if !too_many && !too_large {
        return Ok(());
    }
    let loaded = ours.data.get(VERSIONS_KEY).map(Versions::read);
    let adds = journal.namespaces().any(|(namespace, ops)| {
        let Some(own) = next.get(namespace) else {
            return false;
        };
        let created = loaded
            .as_ref()
            .is_some_and(|loaded| loaded.lacked(namespace));
        let sets = || {
            ops.typed && ops.wrote
                || Stored::decode(own.clone())
                    .is_ok_and(|own| ops.touched.iter().any(|key| own.map.contains_key(key)))
        };
        (too_many && created) || (too_large && sets())
    });
    if !adds {
        return Ok(());
    }
    if !size.is_exact() {
        size = budget::entries(data(), true);
    }
    Err(Refusal::SessionFull {
        size: size.low,
        namespaces,
        limits,
    })
}

/// The record to store: `ours` (what this request would save) merged into `latest` (what the
/// store holds now, if anything).
///
/// Each namespace this request changed gets exactly the request's operations applied on top of
/// its latest form. Every other key keeps its latest value, unless the request changed it
/// through `Session` directly (its value differs from the one it loaded, as the loaded digests
/// tell); then the request's value stands.
///
/// # Errors
///
/// A [`Refusal`].
pub(crate) fn merge(ours: &Record, latest: Option<Record>) -> Result<Record, Refusal> {
    merge_by(ours, Journal::read(ours).as_deref(), latest).map(versioned)
}

/// [`merge`], but for the versions of the record: a batch merges its saves one into the next, and
/// only the record it stores needs them ([`versioned`]). (A record that a save stores as it is,
/// when there is nothing to merge into, has them already.)
///
/// # Errors
///
/// A [`Refusal`].
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) fn merge_data(ours: &Record, latest: Option<Record>) -> Result<Record, Refusal> {
    merge_by(ours, Journal::read(ours).as_deref(), latest)
}

/// `record`, a merge's, with its versions: the digest of each of its values.
pub(crate) fn versioned(mut record: Record) -> Record {
    if !record.data.contains_key(VERSIONS_KEY) {
        let versions = Versions::value_of_data(data_of(&record));
        record.data.insert(VERSIONS_KEY.to_owned(), versions);
    }
    record
}

/// [`merge_data`], with the request's journal given rather than looked up by the number `ours`
/// carries: a save that waited for another's batch took its journal along
/// ([`Reduced`](super::Reduced)), which then outlives the request.
///
/// # Errors
///
/// A [`Refusal`].
pub(super) fn merge_by(
    ours: &Record,
    journal: Option<&Journal>,
    latest: Option<Record>,
) -> Result<Record, Refusal> {
    // `None` when `Session::clear` dropped them: ours is then the whole truth.
    let loaded = ours.data.get(VERSIONS_KEY).map(Versions::read);
    let Some(mut latest) = latest else {
        if journal::is_loaded(ours) {
            return Err(Refusal::Ended);
        }
        return unmerged(ours);
    };
    latest.data.remove(JOURNAL_KEY);
    latest.data.remove(VERSIONS_KEY);
    latest.data.remove(LOADED_KEY);
    let resolve = |key: &str, theirs: Option<Value>, own: Option<&Value>| {
        let namespace_ops = journal.and_then(|journal| Some((journal.ops(key)?, journal.now())));
        Ok(match namespace_ops {
            Some((ops, now)) => apply(key, ops, theirs, own, now)?,
            None if loaded
                .as_ref()
                .is_none_or(|loaded| loaded.changed(key, own)) =>
            {
                own.cloned()
            }
            None => theirs,
        })
    };
    let mut data = HashMap::with_capacity(ours.data.len().max(latest.data.len()) + 1);
    for (key, own) in ours.data.iter().filter(|(key, _)| is_data(key)) {
        let theirs = latest.data.remove(key);
        if let Some(value) = resolve(key, theirs, Some(own))? {
            data.insert(key.clone(), value);
        }
    }
    // The keys ours does not hold: removed by this request, or added by someone else.
    for (key, theirs) in latest.data {
        if let Some(value) = resolve(&key, Some(theirs), None)? {
            data.insert(key, value);
        }
    }
    let next = Record {
        id: ours.id,
        data,
        expiry_date: ours.expiry_date,
    };
    check_session(ours, journal, &next.data)?;
    Ok(next)
}

/// One namespace's operations applied to its latest stored form. `own` is the namespace as this
/// request flushed it: it holds the final values and lifetimes of the keys it set.
///
/// # Errors
///
/// [`Refusal::OverBudget`] if the result is larger than the write's budget.
fn apply(
    namespace: &str,
    ops: &Ops,
    theirs: Option<Value>,
    own: Option<&Value>,
    now: OffsetDateTime,
) -> Result<Option<Value>, Refusal> {
    let mut merged = match theirs.map(Stored::decode) {
        // The expiry rules, judged as the request judged them.
        Some(Ok(mut theirs)) => {
            expiry::drop_ended(&mut theirs, now);
            theirs
        }
        _ => Stored::default(),
    };
    if ops.purged {
        merged = Stored::default();
    }
    let own_present = own.is_some();
    // Read in place: only the keys the request touched are copied out of it.
    let own = own.and_then(|own| StoredRef::read(own).ok());
    for key in &ops.touched {
        match own.as_ref().and_then(|own| own.get(key)) {
            Some(value) => merged.map.insert(key.clone(), value.clone()),
            None => merged.map.remove(key),
        };
        match own.as_ref().and_then(|own| own.lifetimes.get(key)) {
            Some(deadline) => merged.lifetimes.insert(key.clone(), *deadline),
            None => merged.lifetimes.remove(key),
        };
    }
    if ops.typed && !merged.map.is_empty() {
        // A typed value is never stored in part: the fields the request left alone come from
        // the latest namespace, or from the request's own value where the latest has none
        // (another request purged it meanwhile, or it expired).
        for (key, value) in own.iter().flat_map(StoredRef::user_values) {
            if !merged.map.contains_key(key) {
                merged.map.insert(key.clone(), value.clone());
            }
        }
    }
    if (ops.wrote || ops.counted) && own_present {
        // A write moves the deadline as this request's policy says, as without a merge; so does
        // counting a request against the namespace's hops.
        merged.deadline = own.map(|own| own.deadline).unwrap_or_default();
    }
    let merged = merged.encode();
    if let (Some(budget), Some(Value::Object(map))) = (ops.budget, &merged) {
        // The bounds settle most merges, as they settle most writes; only near the budget is
        // every byte counted.
        let size = budget::len_against(map, budget);
        if size > budget {
            return Err(Refusal::OverBudget {
                namespace: namespace.to_owned(),
                size,
                budget,
            });
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        merge::{flushed, journal::mark_loaded},
        stored::encode_stamp as stamp,
    };
    use serde_json::json;
    use time::{macros::datetime, Duration};
    use tower_sessions::session::Id;

    const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

    fn record(data: Value) -> Record {
        let Value::Object(map) = data else {
            panic!("test records are objects")
        };
        Record {
            id: Id(7),
            data: map.into_iter().collect(),
            expiry_date: NOW + Duration::days(1),
        }
    }

    fn journal(namespaces: &[(&str, bool, &[&str])]) -> Value {
        let mut journal = Journal::new(NOW, journal::next_load());
        for (key, purged, touched) in namespaces {
            journal.record(
                (*key).to_owned(),
                Ops {
                    purged: *purged,
                    wrote: !touched.is_empty(),
                    counted: false,
                    touched: touched.iter().map(|k| (*k).to_owned()).collect(),
                    ..Ops::default()
                },
            );
        }
        journal.left_for_good()
    }

    /// The versions of a record stored holding `data`.
    fn versions(data: Value) -> Value {
        let Value::Object(map) = data else {
            panic!("test data are objects")
        };
        Versions::of(map.iter()).to_value()
    }

    /// The load mark of this process, as a load through a merging store leaves it.
    fn mark() -> Value {
        let mut record = record(json!({}));
        mark_loaded(&mut record, None);
        record.data.remove(LOADED_KEY).unwrap()
    }

    #[test]
    fn a_namespace_expired_by_the_requests_clock_is_replaced_not_merged_into() {
        let old = json!({ "old": 1, "_timeout_datestamp": stamp(NOW) });
        let ours = record(json!({
            "cart": { "new": 1, "_timeout_datestamp": stamp(NOW + Duration::minutes(5)) },
            LOADED_KEY: journal(&[("cart", false, &["new"])]),
            VERSIONS_KEY: versions(json!({ "cart": old })),
        }));
        let latest = record(json!({ "cart": old, VERSIONS_KEY: versions(json!({ "cart": old })) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["cart"]["new"], 1);
        assert!(
            merged.data["cart"].get("old").is_none(),
            "{:?}",
            merged.data
        );
    }

    #[test]
    fn a_write_sets_its_own_stamp_over_the_stored_one() {
        let own = NOW + Duration::minutes(1);
        let theirs = json!({ "b": 1, "_timeout_datestamp": stamp(NOW + Duration::minutes(9)) });
        let ours = record(json!({
            "cart": { "a": 1, "_timeout_datestamp": stamp(own) },
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({})),
        }));
        let latest =
            record(json!({ "cart": theirs, VERSIONS_KEY: versions(json!({ "cart": theirs })) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["cart"]["_timeout_datestamp"], stamp(own));
        assert_eq!(
            (
                merged.data["cart"]["a"].clone(),
                merged.data["cart"]["b"].clone()
            ),
            (json!(1), json!(1))
        );
    }

    #[test]
    fn a_removal_keeps_the_stored_stamp() {
        let stored = NOW + Duration::minutes(9);
        let cart = json!({ "a": 1, "b": 1, "_timeout_datestamp": stamp(stored) });
        let ours = record(json!({
            "cart": { "b": 1, "_timeout_datestamp": stamp(stored) },
            JOURNAL_KEY: {
                "now": NOW.unix_timestamp(), "now_nanos": 0,
                "namespaces": { "cart": { "purged": false, "touched": ["a"], "wrote": false } },
            },
            LOADED_KEY: mark(), VERSIONS_KEY: versions(json!({ "cart": cart })),
        }));
        let latest =
            record(json!({ "cart": cart, VERSIONS_KEY: versions(json!({ "cart": cart })) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(
            merged.data["cart"],
            json!({ "b": 1, "_timeout_datestamp": stamp(stored) })
        );
    }

    #[test]
    fn a_key_nobody_else_changed_keeps_this_requests_direct_write() {
        let ours = record(json!({
            "user": "ada",
            LOADED_KEY: mark(), VERSIONS_KEY: versions(json!({ "user": "anonymous" })),
        }));
        let latest = record(json!({
            "user": "anonymous",
            "other": 1,
            VERSIONS_KEY: versions(json!({ "user": "anonymous", "other": 1 })),
        }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["user"], "ada");
        assert_eq!(merged.data["other"], 1);
        let stored = Versions::read(&merged.data[VERSIONS_KEY]);
        assert!(
            !stored.changed("user", Some(&json!("ada"))),
            "its digest is the new value's"
        );
    }

    #[test]
    fn a_key_someone_else_changed_keeps_their_value() {
        let ours = record(json!({
            "user": "stale",
            LOADED_KEY: mark(), VERSIONS_KEY: versions(json!({ "user": "stale" })),
        }));
        let latest = record(json!({
            "user": "fresh",
            VERSIONS_KEY: versions(json!({ "user": "fresh" })),
        }));
        assert_eq!(merge(&ours, Some(latest)).unwrap().data["user"], "fresh");
    }

    #[test]
    fn a_key_this_request_removed_directly_stays_removed() {
        let ours =
            record(json!({ LOADED_KEY: mark(), VERSIONS_KEY: versions(json!({ "user": "ada" })) }));
        let latest = record(json!({ "user": "ada", "other": 1 }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data.get("user"), None);
        assert_eq!(merged.data["other"], 1, "added by someone else");
    }

    #[test]
    fn a_key_this_request_left_alone_keeps_its_latest_value() {
        let ours = record(json!({
            "cart": { "a": 1 },
            "user": "as loaded",
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({ "user": "as loaded" })),
        }));
        let latest =
            record(json!({ "user": "newer", VERSIONS_KEY: versions(json!({ "user": "newer" })) }));
        assert_eq!(merge(&ours, Some(latest)).unwrap().data["user"], "newer");
    }

    #[test]
    fn a_cleared_session_saves_as_it_is() {
        let ours = record(json!({ "after_clear": 1 }));
        let latest = record(
            json!({ "cart": { "a": 1 }, VERSIONS_KEY: versions(json!({ "cart": { "a": 1 } })) }),
        );
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data.get("cart"), None);
        assert_eq!(merged.data["after_clear"], 1);
    }

    #[test]
    fn a_record_stored_without_digests_counts_every_key_as_changed_by_the_saving_request() {
        let mut ours = record(json!({ "user": "ada" }));
        mark_loaded(&mut ours, None);
        let latest = record(json!({ "user": "bob" }));
        assert_eq!(merge(&ours, Some(latest)).unwrap().data["user"], "ada");
    }

    #[test]
    fn a_record_never_loaded_and_gone_from_the_store_is_saved_without_operations() {
        let ours = record(json!({
            "cart": { "a": 1 },
            JOURNAL_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({})),
        }));
        let merged = merge(&ours, None).unwrap();
        assert_eq!(merged.data["cart"]["a"], 1);
        assert!(!merged.data.contains_key(JOURNAL_KEY));
    }

    #[test]
    fn unreadable_operations_leave_every_namespace_to_the_digest_rule() {
        let ours = record(json!({
            "cart": { "a": 1 },
            JOURNAL_KEY: "garbage",
            LOADED_KEY: mark(), VERSIONS_KEY: versions(json!({ "cart": { "a": 1 } })),
        }));
        let latest = record(
            json!({ "cart": { "b": 1 }, VERSIONS_KEY: versions(json!({ "cart": { "b": 1 } })) }),
        );
        assert_eq!(
            merge(&ours, Some(latest)).unwrap().data["cart"],
            json!({ "b": 1 })
        );
    }

    #[test]
    fn the_unmerged_record_serializes_as_the_record_it_stores() {
        let ours = record(json!({
            "cart": { "a": 1, "lifetimes": { "a": 5 } }, "user": "ada",
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({ "user": "ada" })),
        }));
        let unmerged = Unmerged::of(&ours);
        let serialized = serde_json::to_value(&unmerged).unwrap();
        let stored = unmerged.into_record();
        assert_eq!(serialized, serde_json::to_value(&stored).unwrap());
        assert_eq!(stored.data.len(), 3, "cart, user and the versions");
        assert!(!Versions::read(&stored.data[VERSIONS_KEY]).changed("user", Some(&json!("ada"))));
        assert!(Versions::read(&stored.data[VERSIONS_KEY]).changed("user", Some(&json!("bob"))));
        assert_eq!(
            stored.data[VERSIONS_KEY],
            Versions::of(data_of(&ours)).to_value(),
            "the digests of the data, without the bookkeeping"
        );
    }

    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    #[test]
    fn what_the_note_of_an_unmerged_save_takes_is_what_it_stores() {
        let ours = record(json!({
            "cart": { "a": 1 }, "user": "ada",
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
        }));
        let unmerged = Unmerged::of(&ours);
        let at_flush = unmerged.at_flush();
        let stored = unmerged.into_record();
        assert_eq!(at_flush, AtFlush::of(data_of(&stored)));
        assert_eq!(
            Value::String(at_flush.versions.clone()),
            stored.data[VERSIONS_KEY]
        );
        assert!(flushed::unchanged(data_of(&ours), &at_flush));
        let mut changed = ours.clone();
        changed.data.insert("user".to_owned(), json!("bob"));
        assert!(!flushed::unchanged(data_of(&changed), &at_flush));
        let mut added = ours.clone();
        added.data.insert("theme".to_owned(), json!(null));
        assert!(!flushed::unchanged(data_of(&added), &at_flush));
        let mut dropped = ours;
        dropped.data.remove("user");
        assert!(!flushed::unchanged(data_of(&dropped), &at_flush));
    }

    #[test]
    fn patching_what_the_store_holds_gives_the_record_to_store() {
        let ours = record(json!({
            "cart": { "a": 2 }, "user": "ada", "new": [1],
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({ "user": "ada" })),
        }));
        let held = [
            // What the request loaded: the cart changed, a key added, one removed.
            json!({ "cart": { "a": 1 }, "user": "ada", "gone": 1, VERSIONS_KEY: { "digests": {} } }),
            // Anything at all, bookkeeping included.
            json!({ JOURNAL_KEY: 1, LOADED_KEY: "x", "user": "bob" }),
            json!({}),
            // Versions to update in place: one digest more, others wrong; or versions that are
            // not versions at all.
            json!({
                "cart": { "a": 1 }, "user": "ada", "new": [1],
                VERSIONS_KEY: { "digests": { "cart": 1, "user": 2, "new": 3, "gone": 4 } },
            }),
            json!({ "user": "ada", VERSIONS_KEY: { "digests": 5 } }),
            json!({ "cart": 1, "x": 2, VERSIONS_KEY: { "digests": {}, "more": 1 } }),
            json!({ "cart": 1, "x": 2, "y": 3, VERSIONS_KEY: [] }),
            // What the request would store itself: nothing to change.
            Value::Object(Unmerged::of(&ours).into_record().data.into_iter().collect()),
        ];
        for held in held {
            let mut stored = record(held.clone());
            stored.expiry_date = OffsetDateTime::UNIX_EPOCH;
            Unmerged::of(&ours).patch(&mut stored);
            assert_eq!(stored, Unmerged::of(&ours).into_record(), "{held}");
        }
    }

    #[test]
    fn patching_with_the_digests_stored_gives_the_record_of_a_first_try() {
        let ours = record(json!({
            "cart": { "a": 2 }, "user": "ada", "new": [1],
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({ "user": "ada" })),
        }));
        // What the store holds, each as a merging store stored it (with the versions of its own
        // data): ours as it is, a changed cart, a key ours removed, a key ours added.
        let held = [
            json!({ "cart": { "a": 2 }, "user": "ada", "new": [1] }),
            json!({ "cart": { "a": 1 }, "user": "ada", "new": [1] }),
            json!({ "cart": { "a": 2 }, "user": "ada", "new": [1], "gone": 1 }),
            json!({ "cart": { "a": 2 }, "user": "bob" }),
            json!({}),
        ];
        let expected = Unmerged::of(&ours).into_record();
        for held in held {
            let mut stored = as_stored(&record(held.clone()));
            stored.expiry_date = OffsetDateTime::UNIX_EPOCH;
            patch(&ours, Journal::read(&ours).as_deref(), &mut stored).unwrap();
            assert_eq!(stored, expected, "{held}");
        }
        // Versions that are not those of the stored data are made again.
        for versions in [
            json!({ "digests": { "cart": 1 } }),
            json!({ "digests": { "cart": 1, "user": 2, "new": 3, "gone": 4 } }),
            json!({ "digests": {}, "more": 1 }),
            json!([]),
            // As this release stores them: a key fewer, a key more, unreadable.
            versions(json!({ "cart": { "a": 1 }, "user": "ada" })),
            versions(json!({ "cart": { "a": 1 }, "user": "ada", "new": [1], "gone": 1 })),
            json!("1;cart"),
        ] {
            let mut stored = record(json!({ "cart": { "a": 1 }, "user": "ada", "new": [1] }));
            stored
                .data
                .insert(VERSIONS_KEY.to_owned(), versions.clone());
            patch(&ours, Journal::read(&ours).as_deref(), &mut stored).unwrap();
            assert_eq!(stored.data, expected.data, "{versions}");
        }
        // The digests of unchanged values come from the store: a wrong one stored stays.
        let mut stored = as_stored(&record(json!({ "cart": { "a": 2 }, "user": "ada" })));
        let wrong = versions(json!({ "cart": { "a": 2 }, "new": [1], "user": "bob" }));
        stored.data.insert(VERSIONS_KEY.to_owned(), wrong);
        patch(&ours, Journal::read(&ours).as_deref(), &mut stored).unwrap();
        let patched = Versions::read(&stored.data[VERSIONS_KEY]);
        assert!(!patched.changed("user", Some(&json!("bob"))));
        assert!(patched.changed("user", Some(&json!("ada"))));
    }

    #[test]
    fn as_stored_keeps_the_data_and_stores_its_digests_without_marks() {
        let ours = record(json!({
            "cart": { "a": 1 },
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({})),
        }));
        let stored = as_stored(&ours);
        assert_eq!(stored.data["cart"], json!({ "a": 1 }));
        assert!(!stored.data.contains_key(JOURNAL_KEY));
        assert!(!stored.data.contains_key(LOADED_KEY));
        assert!(
            !Versions::read(&stored.data[VERSIONS_KEY]).changed("cart", Some(&json!({ "a": 1 })))
        );
    }

    #[test]
    fn a_loaded_session_gone_from_the_store_is_never_written_back() {
        let ours = record(json!({
            "cart": { "a": 1 },
            LOADED_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(json!({})),
        }));
        assert_eq!(merge(&ours, None).unwrap_err(), Refusal::Ended);
    }

    #[test]
    fn a_loaded_session_still_in_the_store_is_stored_without_its_load_mark() {
        let ours = record(
            json!({ "user": "ada", LOADED_KEY: mark(), VERSIONS_KEY: versions(json!({ "user": "ada" })) }),
        );
        let latest =
            record(json!({ "user": "ada", VERSIONS_KEY: versions(json!({ "user": "ada" })) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert!(!merged.data.contains_key(LOADED_KEY));
    }

    #[test]
    fn a_typed_write_racing_a_purge_stores_its_whole_value() {
        let mut ops = Journal::new(NOW, journal::next_load());
        ops.record(
            "wizard".to_owned(),
            Ops {
                touched: ["step".to_owned()].into(),
                wrote: true,
                typed: true,
                ..Ops::default()
            },
        );
        let ours = record(json!({
            "wizard": { "step": 7, "address": "x", "_timeout_datestamp": stamp(NOW + Duration::minutes(5)) },
            LOADED_KEY: ops.left_for_good(),
            VERSIONS_KEY: versions(json!({})),
        }));
        // Another request purged the namespace meanwhile.
        let latest = record(json!({ "other": 1, VERSIONS_KEY: versions(json!({ "other": 1 })) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["wizard"]["step"], 7);
        assert_eq!(merged.data["wizard"]["address"], "x");
    }

    #[test]
    fn a_typed_write_merges_field_by_field_into_a_stored_value() {
        let mut ops = Journal::new(NOW, journal::next_load());
        ops.record(
            "pair".to_owned(),
            Ops {
                touched: ["b".to_owned()].into(),
                wrote: true,
                typed: true,
                ..Ops::default()
            },
        );
        let ours = record(json!({
            "pair": { "a": null, "b": 2 },
            LOADED_KEY: ops.left_for_good(),
            VERSIONS_KEY: versions(json!({})),
        }));
        let latest = record(json!({
            "pair": { "a": 1, "b": null },
            VERSIONS_KEY: versions(json!({ "pair": { "a": 1, "b": null } })),
        }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["pair"], json!({ "a": 1, "b": 2 }));
    }

    #[test]
    fn a_merge_that_would_cross_the_writes_budget_is_refused() {
        // `{"mine":"0123456789","theirs":"0123456789"}`: 43 bytes, counted exactly (the bounds
        // allow each string six times its length).
        let merged_with_budget = |budget: usize| {
            let mut ops = Journal::new(NOW, journal::next_load());
            ops.record(
                "cart".to_owned(),
                Ops {
                    touched: ["mine".to_owned()].into(),
                    wrote: true,
                    budget: Some(budget),
                    ..Ops::default()
                },
            );
            let ours = record(json!({
                "cart": { "mine": "0123456789" },
                LOADED_KEY: ops.left_for_good(),
                VERSIONS_KEY: versions(json!({})),
            }));
            let latest = record(json!({
                "cart": { "theirs": "0123456789" },
                VERSIONS_KEY: versions(json!({ "cart": { "theirs": "0123456789" } })),
            }));
            merge(&ours, Some(latest))
        };
        assert!(matches!(
            merged_with_budget(42),
            Err(Refusal::OverBudget {
                size: 43,
                budget: 42,
                ..
            })
        ));
        let merged = merged_with_budget(43).expect("exactly at the budget");
        assert_eq!(
            merged.data["cart"],
            json!({ "mine": "0123456789", "theirs": "0123456789" })
        );
    }

    /// A journal of writes (`touched` keys set or removed) to `namespaces`, with session limits.
    fn limited(namespaces: &[(&str, &[&str])], limits: SessionLimits) -> Value {
        let mut journal = Journal::new(NOW, journal::next_load()).limited(limits);
        for (key, touched) in namespaces {
            journal.record(
                (*key).to_owned(),
                Ops {
                    touched: touched.iter().map(|k| (*k).to_owned()).collect(),
                    wrote: true,
                    ..Ops::default()
                },
            );
        }
        journal.left_for_good()
    }

    const TWO_NAMESPACES: SessionLimits = SessionLimits {
        budget: 1 << 20,
        namespaces: 2,
    };

    #[test]
    fn a_request_that_creates_a_namespace_past_the_sessions_limit_is_refused() {
        let stored = json!({ "a": { "x": 1 }, "b": { "x": 1 } });
        let ours = record(json!({
            "a": { "x": 1 }, "b": { "x": 1 }, "c": { "x": 1 },
            LOADED_KEY: limited(&[("c", &["x"])], TWO_NAMESPACES),
            VERSIONS_KEY: versions(stored.clone()),
        }));
        let latest =
            record(json!({ "a": { "x": 1 }, "b": { "x": 1 }, VERSIONS_KEY: versions(stored) }));
        assert_eq!(
            merge(&ours, Some(latest.clone())).unwrap_err(),
            Refusal::SessionFull {
                size: 37,
                namespaces: 3,
                limits: TWO_NAMESPACES,
            }
        );
        // The same on the first try of a compare-and-set, without a merge.
        assert!(unmerged(&ours).is_err());

        // Writing to a namespace the session holds is not refused.
        let mut write = ours.clone();
        write.data.remove("c");
        write.data.insert("b".to_owned(), json!({ "x": 2 }));
        write.data.insert(
            LOADED_KEY.to_owned(),
            limited(&[("b", &["x"])], TWO_NAMESPACES),
        );
        assert!(merge(&write, Some(latest)).is_ok());
    }

    #[test]
    fn a_session_over_its_budget_refuses_sets_and_stores_removals() {
        let limits = SessionLimits {
            budget: 40,
            namespaces: 128,
        };
        let stored = json!({ "a": { "x": "0123456789", "y": "0123456789" } });
        let set = record(json!({
            "a": { "x": "0123456789", "y": "0123456789", "z": 1 },
            LOADED_KEY: limited(&[("a", &["z"])], limits),
            VERSIONS_KEY: versions(stored.clone()),
        }));
        let latest = record(json!({ "a": stored["a"], VERSIONS_KEY: versions(stored.clone()) }));
        assert!(matches!(
            merge(&set, Some(latest.clone())),
            Err(Refusal::SessionFull { size: 47, .. })
        ));

        // Still over the budget, but smaller: a removal is stored.
        let remove = record(json!({
            "a": { "x": "0123456789", "y": "0123456789" },
            "other": "a long value that another request stored",
            LOADED_KEY: limited(&[("a", &["gone"])], limits),
            VERSIONS_KEY: versions(stored),
        }));
        assert!(merge(&remove, Some(latest)).is_ok());
    }

    #[test]
    fn a_journal_without_limits_is_not_checked() {
        let stored = json!({ "a": { "x": 1 }, "b": { "x": 1 } });
        let ours = record(json!({
            "a": { "x": 1 }, "b": { "x": 1 }, "c": { "x": 1 },
            LOADED_KEY: journal(&[("c", false, &["x"])]),
            VERSIONS_KEY: versions(stored.clone()),
        }));
        let latest =
            record(json!({ "a": { "x": 1 }, "b": { "x": 1 }, VERSIONS_KEY: versions(stored) }));
        assert_eq!(
            merge(&ours, Some(latest)).unwrap().data["c"],
            json!({ "x": 1 })
        );
    }
}
