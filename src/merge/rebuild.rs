//! The rebuild of a record: what a save stores when it is merged into the latest stored record.

use std::{collections::HashMap, fmt};

use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions::session::Record;

use super::journal::{Journal, Ops, Versions, JOURNAL_KEY, VERSIONS_KEY};
use crate::{budget, expiry, stored::Stored};

/// Why a save is refused: nothing of it is stored.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
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
        }
    }
}

/// Whether a top-level key holds session data, not the merge's bookkeeping.
fn is_data(key: &str) -> bool {
    key != JOURNAL_KEY && key != VERSIONS_KEY
}

/// The record to store: `ours` (what this request would save) merged into `latest` (what the
/// store holds now).
///
/// # Errors
///
/// A [`Refusal`].
pub(super) fn merge(ours: &Record, latest: Option<Record>) -> Result<Record, Refusal> {
    let journal = Journal::read(ours);
    let base = ours.data.get(VERSIONS_KEY).map(Versions::read);
    let Some(mut latest) = latest else {
        if base.as_ref().is_some_and(Versions::is_loaded) {
            return Err(Refusal::Ended);
        }
        // Never loaded through a merge, or cleared by `Session::clear`: ours is the whole truth.
        let mut data: HashMap<String, Value> = ours
            .data
            .iter()
            .filter(|(key, _)| is_data(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        data.insert(VERSIONS_KEY.to_owned(), Versions::default().to_value());
        return Ok(Record {
            id: ours.id,
            data,
            expiry_date: ours.expiry_date,
        });
    };
    latest.data.remove(JOURNAL_KEY);
    let theirs_versions = latest
        .data
        .remove(VERSIONS_KEY)
        .as_ref()
        .map(Versions::read)
        .unwrap_or_default();
    let mut versions = Versions::after(theirs_versions.counter);
    // One key's merged value, and whether it differs from theirs. Only what wins is copied from
    // ours; the latest record is already owned.
    let resolve = |key: &str, theirs: Option<Value>, own: Option<&Value>| {
        let namespace_ops = journal
            .as_ref()
            .and_then(|journal| Some((journal.ops(key)?, journal.now()?)));
        Ok(match (namespace_ops, &base) {
            (Some((ops, now)), _) => {
                let value = apply(key, ops, theirs.clone(), own.cloned(), now)?;
                let changed = value != theirs;
                (value, changed)
            }
            // Someone else changed it since this request loaded it: theirs stands.
            (None, Some(base)) if base.of(key) != theirs_versions.of(key) => (theirs, false),
            // Nobody else changed it: ours is the latest plus whatever this request (or a
            // middleware) changed through `Session` directly. Without versions in ours
            // (`Session::clear` dropped them), ours is the whole truth.
            (None, _) => match (theirs, own) {
                (Some(theirs), Some(own)) if theirs == *own => (Some(theirs), false),
                (None, None) => (None, false),
                (_, own) => (own.cloned(), true),
            },
        })
    };
    let mut data = HashMap::with_capacity(ours.data.len().max(latest.data.len()) + 1);
    let mut keep = |key: String, (value, changed): (Option<Value>, bool)| {
        let Some(value) = value else {
            return;
        };
        let version = if changed {
            versions.counter
        } else {
            theirs_versions.of(&key)
        };
        versions.keys.insert(key.clone(), version);
        data.insert(key, value);
    };
    for (key, own) in ours.data.iter().filter(|(key, _)| is_data(key)) {
        let theirs = latest.data.remove(key);
        keep(key.clone(), resolve(key, theirs, Some(own))?);
    }
    // The keys ours does not hold: removed by this request, or added by someone else.
    for (key, theirs) in latest.data {
        let merged = resolve(&key, Some(theirs), None)?;
        keep(key, merged);
    }
    data.insert(VERSIONS_KEY.to_owned(), versions.to_value());
    Ok(Record {
        id: ours.id,
        data,
        expiry_date: ours.expiry_date,
    })
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
    own: Option<Value>,
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
    let mut own = match own.map(Stored::decode) {
        Some(Ok(own)) => own,
        _ => Stored::default(),
    };
    for key in &ops.touched {
        match own.map.remove(key) {
            Some(value) => merged.map.insert(key.clone(), value),
            None => merged.map.remove(key),
        };
        match own.lifetimes.remove(key) {
            Some(deadline) => merged.lifetimes.insert(key.clone(), deadline),
            None => merged.lifetimes.remove(key),
        };
    }
    if ops.typed && !merged.map.is_empty() {
        // A typed value is never stored in part: the fields the request left alone come from
        // the latest namespace, or from the request's own value where the latest has none
        // (another request purged it meanwhile, or it expired).
        for (key, value) in own.map {
            merged.map.entry(key).or_insert(value);
        }
    }
    if (ops.wrote || ops.counted) && own_present {
        // A write moves the deadline as this request's policy says, as without a merge; so does
        // counting a request against the namespace's hops.
        merged.deadline = own.deadline;
    }
    let merged = merged.encode();
    if let (Some(budget), Some(Value::Object(map))) = (ops.budget, &merged) {
        let size = budget::exact(map).low;
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
    use crate::stored::encode_stamp as stamp;
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
        let mut journal = Journal::new(NOW);
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
        serde_json::to_value(journal).unwrap()
    }

    fn versions(counter: u64, keys: &[(&str, u64)]) -> Value {
        let mut versions = Versions::after(counter.wrapping_sub(1));
        versions.keys = keys.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        versions.to_value()
    }

    #[test]
    fn a_namespace_expired_by_the_requests_clock_is_replaced_not_merged_into() {
        let ours = record(json!({
            "cart": { "new": 1, "_timeout_datestamp": stamp(NOW + Duration::minutes(5)) },
            JOURNAL_KEY: journal(&[("cart", false, &["new"])]),
            VERSIONS_KEY: versions(1, &[("cart", 1)]),
        }));
        let latest = record(json!({
            "cart": { "old": 1, "_timeout_datestamp": stamp(NOW) },
            VERSIONS_KEY: versions(1, &[("cart", 1)]),
        }));
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
        let ours = record(json!({
            "cart": { "a": 1, "_timeout_datestamp": stamp(own) },
            JOURNAL_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(1, &[("cart", 1)]),
        }));
        let latest = record(json!({
            "cart": { "b": 1, "_timeout_datestamp": stamp(NOW + Duration::minutes(9)) },
            VERSIONS_KEY: versions(2, &[("cart", 2)]),
        }));
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
        let ours = record(json!({
            "cart": { "b": 1, "_timeout_datestamp": stamp(stored) },
            JOURNAL_KEY: {
                "now": NOW.unix_timestamp(), "now_nanos": 0,
                "namespaces": { "cart": { "purged": false, "touched": ["a"], "wrote": false } },
            },
            VERSIONS_KEY: versions(1, &[("cart", 1)]),
        }));
        let latest = record(json!({
            "cart": { "a": 1, "b": 1, "_timeout_datestamp": stamp(stored) },
            VERSIONS_KEY: versions(1, &[("cart", 1)]),
        }));
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
            VERSIONS_KEY: versions(3, &[("user", 2)]),
        }));
        let latest = record(json!({
            "user": "anonymous",
            "other": 1,
            VERSIONS_KEY: versions(4, &[("user", 2), ("other", 4)]),
        }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["user"], "ada");
        assert_eq!(merged.data["other"], 1);
        let versions = Versions::read(&merged.data[VERSIONS_KEY]);
        assert_eq!(versions.counter, 5);
        assert_eq!(versions.of("user"), 5);
        assert_eq!(versions.of("other"), 4);
    }

    #[test]
    fn a_key_someone_else_changed_keeps_their_value() {
        let ours = record(json!({
            "user": "stale",
            VERSIONS_KEY: versions(3, &[("user", 2)]),
        }));
        let latest = record(json!({
            "user": "fresh",
            VERSIONS_KEY: versions(4, &[("user", 4)]),
        }));
        assert_eq!(merge(&ours, Some(latest)).unwrap().data["user"], "fresh");
    }

    #[test]
    fn a_key_this_request_left_alone_keeps_its_latest_value() {
        let ours = record(json!({
            "cart": { "a": 1 },
            "user": "as loaded",
            JOURNAL_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(1, &[("user", 1)]),
        }));
        let latest = record(json!({ "user": "newer", VERSIONS_KEY: versions(2, &[("user", 2)]) }));
        assert_eq!(merge(&ours, Some(latest)).unwrap().data["user"], "newer");
    }

    #[test]
    fn a_cleared_session_saves_as_it_is() {
        let ours = record(json!({ "after_clear": 1 }));
        let latest = record(json!({ "cart": { "a": 1 }, VERSIONS_KEY: versions(2, &[]) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data.get("cart"), None);
        assert_eq!(merged.data["after_clear"], 1);
    }

    #[test]
    fn a_record_gone_from_the_store_is_saved_without_operations() {
        let ours = record(json!({
            "cart": { "a": 1 },
            JOURNAL_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(1, &[]),
        }));
        let merged = merge(&ours, None).unwrap();
        assert_eq!(merged.data["cart"]["a"], 1);
        assert!(!merged.data.contains_key(JOURNAL_KEY));
    }

    #[test]
    fn unreadable_operations_leave_every_namespace_to_the_version_rule() {
        let ours = record(json!({
            "cart": { "a": 1 },
            JOURNAL_KEY: "garbage",
            VERSIONS_KEY: versions(1, &[("cart", 1)]),
        }));
        let latest =
            record(json!({ "cart": { "b": 1 }, VERSIONS_KEY: versions(2, &[("cart", 2)]) }));
        assert_eq!(
            merge(&ours, Some(latest)).unwrap().data["cart"],
            json!({ "b": 1 })
        );
    }

    #[test]
    fn a_counter_at_its_end_starts_again_instead_of_overflowing() {
        let ours = record(json!({ "user": "ada", VERSIONS_KEY: versions(u64::MAX, &[]) }));
        let latest = record(json!({ "user": "bob", VERSIONS_KEY: versions(u64::MAX, &[]) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(Versions::read(&merged.data[VERSIONS_KEY]).counter, 1);
    }

    /// Versions as a load through a `MergingStore` of this process leaves them.
    fn loaded_versions(counter: u64, keys: &[(&str, u64)]) -> Value {
        let mut record = record(json!({ VERSIONS_KEY: versions(counter, keys) }));
        super::super::journal::mark_loaded(&mut record);
        record.data.remove(VERSIONS_KEY).unwrap()
    }

    #[test]
    fn a_loaded_session_gone_from_the_store_is_never_written_back() {
        let ours = record(json!({
            "cart": { "a": 1 },
            JOURNAL_KEY: journal(&[("cart", false, &["a"])]),
            VERSIONS_KEY: loaded_versions(1, &[]),
        }));
        assert_eq!(merge(&ours, None).unwrap_err(), Refusal::Ended);
    }

    #[test]
    fn a_loaded_session_still_in_the_store_is_stored_without_its_load_mark() {
        let ours = record(json!({ "user": "ada", VERSIONS_KEY: loaded_versions(1, &[]) }));
        let latest = record(json!({ "user": "ada", VERSIONS_KEY: versions(1, &[]) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data[VERSIONS_KEY].get("loaded"), None);
    }

    #[test]
    fn a_typed_write_racing_a_purge_stores_its_whole_value() {
        let mut ops = Journal::new(NOW);
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
            JOURNAL_KEY: serde_json::to_value(ops).unwrap(),
            VERSIONS_KEY: loaded_versions(1, &[("wizard", 1)]),
        }));
        // Another request purged the namespace meanwhile.
        let latest = record(json!({ "other": 1, VERSIONS_KEY: versions(2, &[("other", 2)]) }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["wizard"]["step"], 7);
        assert_eq!(merged.data["wizard"]["address"], "x");
    }

    #[test]
    fn a_typed_write_merges_field_by_field_into_a_stored_value() {
        let mut ops = Journal::new(NOW);
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
            JOURNAL_KEY: serde_json::to_value(ops).unwrap(),
            VERSIONS_KEY: loaded_versions(1, &[]),
        }));
        let latest = record(json!({
            "pair": { "a": 1, "b": null },
            VERSIONS_KEY: versions(2, &[("pair", 2)]),
        }));
        let merged = merge(&ours, Some(latest)).unwrap();
        assert_eq!(merged.data["pair"], json!({ "a": 1, "b": 2 }));
    }

    #[test]
    fn a_merge_that_would_cross_the_writes_budget_is_refused() {
        let mut ops = Journal::new(NOW);
        ops.record(
            "cart".to_owned(),
            Ops {
                touched: ["mine".to_owned()].into(),
                wrote: true,
                budget: Some(30),
                ..Ops::default()
            },
        );
        let ours = record(json!({
            "cart": { "mine": "0123456789" },
            JOURNAL_KEY: serde_json::to_value(ops).unwrap(),
            VERSIONS_KEY: loaded_versions(1, &[]),
        }));
        let latest = record(json!({
            "cart": { "theirs": "0123456789" },
            VERSIONS_KEY: versions(2, &[("cart", 2)]),
        }));
        assert!(matches!(
            merge(&ours, Some(latest)),
            Err(Refusal::OverBudget { budget: 30, .. })
        ));
    }
}
