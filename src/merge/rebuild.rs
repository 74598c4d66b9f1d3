//! The rebuild of a record: what a save stores when it is merged into the latest stored record.

use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions::session::Record;

use super::journal::{Journal, Ops, Versions, JOURNAL_KEY, VERSIONS_KEY};
use crate::{expiry, stored::Stored};

/// Whether a top-level key holds session data, not the merge's bookkeeping.
fn is_data(key: &str) -> bool {
    key != JOURNAL_KEY && key != VERSIONS_KEY
}

/// The record to store: `ours` (what this request would save) merged into `latest` (what the
/// store holds now).
pub(super) fn merge(ours: &Record, latest: Option<Record>) -> Record {
    let journal = Journal::read(ours);
    let base = ours.data.get(VERSIONS_KEY).map(Versions::read);
    let Some(mut latest) = latest else {
        // Gone from the store meanwhile (deleted, or expired): save ours as it is.
        let mut data: HashMap<String, Value> = ours
            .data
            .iter()
            .filter(|(key, _)| is_data(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        data.insert(VERSIONS_KEY.to_owned(), Versions::default().to_value());
        return Record {
            id: ours.id,
            data,
            expiry_date: ours.expiry_date,
        };
    };
    latest.data.remove(JOURNAL_KEY);
    let theirs_versions = latest
        .data
        .remove(VERSIONS_KEY)
        .as_ref()
        .map(Versions::read)
        .unwrap_or_default();
    let mut versions = Versions {
        // A counter at its end is corrupt: counting starts again, which at worst lets a direct
        // write of this request win over one it did not see.
        counter: theirs_versions.counter.checked_add(1).unwrap_or(1),
        keys: Default::default(),
    };
    // One key's merged value, and whether it differs from theirs. Only what wins is copied from
    // ours; the latest record is already owned.
    let resolve = |key: &str, theirs: Option<Value>, own: Option<&Value>| {
        let namespace_ops = journal
            .as_ref()
            .and_then(|journal| Some((journal.ops(key)?, journal.now()?)));
        match (namespace_ops, &base) {
            (Some((ops, now)), _) => {
                let value = apply(ops, theirs.clone(), own.cloned(), now);
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
        }
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
        keep(key.clone(), resolve(key, theirs, Some(own)));
    }
    // The keys ours does not hold: removed by this request, or added by someone else.
    for (key, theirs) in latest.data {
        let merged = resolve(&key, Some(theirs), None);
        keep(key, merged);
    }
    data.insert(VERSIONS_KEY.to_owned(), versions.to_value());
    Record {
        id: ours.id,
        data,
        expiry_date: ours.expiry_date,
    }
}

/// One namespace's operations applied to its latest stored form. `own` is the namespace as this
/// request flushed it: it holds the final values and lifetimes of the keys it set.
fn apply(
    ops: &Ops,
    theirs: Option<Value>,
    own: Option<Value>,
    now: OffsetDateTime,
) -> Option<Value> {
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
    if (ops.wrote || ops.counted) && own_present {
        // A write moves the deadline as this request's policy says, as without a merge; so does
        // counting a request against the namespace's hops.
        merged.deadline = own.deadline;
    }
    merged.encode()
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
                },
            );
        }
        serde_json::to_value(journal).unwrap()
    }

    fn versions(counter: u64, keys: &[(&str, u64)]) -> Value {
        Versions {
            counter,
            keys: keys.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
        .to_value()
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
        let merged = merge(&ours, Some(latest));
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
        let merged = merge(&ours, Some(latest));
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
        let merged = merge(&ours, Some(latest));
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
        let merged = merge(&ours, Some(latest));
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
        assert_eq!(merge(&ours, Some(latest)).data["user"], "fresh");
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
        assert_eq!(merge(&ours, Some(latest)).data["user"], "newer");
    }

    #[test]
    fn a_cleared_session_saves_as_it_is() {
        let ours = record(json!({ "after_clear": 1 }));
        let latest = record(json!({ "cart": { "a": 1 }, VERSIONS_KEY: versions(2, &[]) }));
        let merged = merge(&ours, Some(latest));
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
        let merged = merge(&ours, None);
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
        assert_eq!(merge(&ours, Some(latest)).data["cart"], json!({ "b": 1 }));
    }

    #[test]
    fn a_counter_at_its_end_starts_again_instead_of_overflowing() {
        let ours = record(json!({ "user": "ada", VERSIONS_KEY: versions(u64::MAX, &[]) }));
        let latest = record(json!({ "user": "bob", VERSIONS_KEY: versions(u64::MAX, &[]) }));
        let merged = merge(&ours, Some(latest));
        assert_eq!(Versions::read(&merged.data[VERSIONS_KEY]).counter, 1);
    }
}
