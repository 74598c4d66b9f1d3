//! What a save that waits for another's batch hands that batch: its record as the merge reads it,
//! and no more.
//!
//! A save of a server's store that finds another save of its session under way waits, and the
//! next batch merges its record with the others' (see `stores::batches`). The save's record is
//! borrowed from tower-sessions for the length of the save, so the batch needs a record of its
//! own; a copy of the whole session for every waiting save was the largest single cost of a burst
//! of overlapping writes (the session grows with every write that lands). The merge reads far
//! less of it ([`merge`](super::merge)):
//!
//! - of a namespace the request changed (its journal names it), only the keys the request set or
//!   removed, and the namespace's bookkeeping (deadline, hops, the keys' lifetimes) whole, so that
//!   it reads as the whole namespace reads, or fails to; the whole namespace when the request
//!   wrote it as one typed value (none of it is stored in part);
//! - of any other key, its value only if the request changed it: a key whose value is the one the
//!   request loaded (its versions tell) takes the latest stored value, exactly as a key the record
//!   does not hold and its versions do not name. Such keys are left out, and their digests with
//!   them;
//! - the bookkeeping (versions, load mark) as it is.
//!
//! The journal travels along: the flush takes it back when its request ends, and a save whose
//! request is dropped after a batch took it is stored all the same, with its operations. (One
//! dropped while it still waits in the queue is withdrawn from it, as tower-sessions saves
//! nothing for a dropped request.) A record that no load of this process marked (a session the
//! request did not load) is kept whole: a merge with no stored record to merge into stores it as
//! it is. A reduced record is never stored as it is: a batch that would store its first member
//! unmerged fetches the latest record first when that member waited.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Map, Value};
use tower_sessions::session::Record;

use super::{
    flushed::AtFlush,
    journal::{self, Journal, Ops, VERSIONS_KEY},
    rebuild::{data_of, is_data, merge_by, Refusal},
    versions::{sorted_digests, Versions},
};
use crate::stored::{is_reserved, HOPS_KEY, LIFETIMES_KEY, STAMP_KEY};

/// A save's record as the merge reads it (see the module's docs), with the request's journal and
/// what the save notes for the session manager's save once stored.
pub(crate) struct Reduced {
    record: Record,
    journal: Option<Arc<Journal>>,
    /// What the flush's save stored, for the note: made from the whole record, as
    /// [`saved`](super::saved) would make it. `None` when the save is not a flush's.
    at_flush: Option<AtFlush>,
}

impl Reduced {
    /// `ours` reduced to what its merge reads.
    pub(crate) fn of(ours: &Record) -> Self {
        let journal = Journal::read(ours);
        if !journal::is_loaded(ours) {
            return Self {
                record: ours.clone(),
                at_flush: journal.as_ref().map(|_| AtFlush::of(data_of(ours))),
                journal,
            };
        }
        // A flush's save is one whose journal is left: note it as `saved` does.
        let digests = sorted_digests(data_of(ours));
        let at_flush = journal.as_ref().map(|_| AtFlush::of_digests(&digests));
        let loaded = ours.data.get(VERSIONS_KEY).map(Versions::read);
        let mut data = HashMap::with_capacity(ours.data.len());
        let mut dropped: Vec<&str> = Vec::new();
        for (key, digest) in &digests {
            let Some(own) = ours.data.get(*key) else {
                continue;
            };
            let kept = match journal.as_deref().and_then(|journal| journal.ops(key)) {
                Some(ops) => namespace(own, ops),
                None if loaded
                    .as_ref()
                    .is_some_and(|loaded| !loaded.differs(key, Some(*digest))) =>
                {
                    dropped.push(key.as_str());
                    continue;
                }
                None => own.clone(),
            };
            data.insert((*key).clone(), kept);
        }
        for (key, value) in ours.data.iter().filter(|(key, _)| !is_data(key)) {
            data.insert(key.clone(), value.clone());
        }
        // Keys are left out only where the versions hold digests: they are written without
        // theirs. (`digests` is sorted, and so is `dropped`.)
        if let Some(versions) = loaded
            .filter(|_| !dropped.is_empty())
            .and_then(|loaded| loaded.value_without(|key| dropped.binary_search(&key).is_ok()))
        {
            data.insert(VERSIONS_KEY.to_owned(), versions);
        }
        Self {
            record: Record {
                id: ours.id,
                data,
                expiry_date: ours.expiry_date,
            },
            journal,
            at_flush,
        }
    }

    /// The reduced record: what names the session and the request (the id, the load mark), for
    /// a refusal's log and note.
    pub(crate) fn record(&self) -> &Record {
        &self.record
    }

    /// The save merged into `latest`, as [`merge_data`](super::merge_data) merges the whole
    /// record.
    ///
    /// # Errors
    ///
    /// A [`Refusal`].
    pub(crate) fn merge_data(&self, latest: Option<Record>) -> Result<Record, Refusal> {
        merge_by(&self.record, self.journal.as_deref(), latest)
    }

    /// Notes the save's success for the session manager's save that follows, as
    /// [`saved`](super::saved) does for a whole record.
    pub(crate) fn saved(&self) {
        if let (Some(request), Some(at_flush)) =
            (journal::flushing(&self.record), self.at_flush.as_ref())
        {
            super::saved_by(&self.record, request, Some(at_flush.clone()));
        }
    }
}

/// What the merge reads of `own`, a namespace the request changed with `ops`: its bookkeeping, whole
/// (so a namespace that cannot be read still cannot), and the keys the request touched; all of it
/// when the request wrote a typed value.
fn namespace(own: &Value, ops: &Ops) -> Value {
    let Value::Object(map) = own else {
        return own.clone();
    };
    if ops.typed {
        return own.clone();
    }
    let reserved = [STAMP_KEY, HOPS_KEY, LIFETIMES_KEY].into_iter();
    let touched = ops
        .touched
        .iter()
        .map(String::as_str)
        .filter(|key| !is_reserved(key));
    reserved
        .chain(touched)
        .filter_map(|key| Some((key.to_owned(), map.get(key)?.clone())))
        .collect::<Map<String, Value>>()
        .into()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::{collection, option, prelude::*};
    use serde_json::json;
    use time::{macros::datetime, Duration, OffsetDateTime};
    use tower_sessions::session::Id;

    use super::*;
    use crate::{
        merge::{
            journal::{mark_loaded, SessionLimits, LOADED_KEY},
            merge, versioned,
        },
        stored::encode_stamp,
    };

    const NOW: OffsetDateTime = datetime!(2026-11-29 12:00 UTC);
    const TOP: [&str; 4] = ["a", "b", "c", "d"];
    const USER: [&str; 4] = ["k0", "k1", "k2", "k3"];

    fn stamp(minutes: i64) -> Value {
        encode_stamp(NOW + Duration::minutes(minutes))
    }

    /// A namespace as stored: a few user keys, perhaps a stamp, hops and keys' lifetimes, now and
    /// then an unreadable stamp; or a value that is no namespace at all.
    fn value() -> impl Strategy<Value = Value> {
        let user = collection::btree_map(proptest::sample::select(&USER[..]), 0..3i64, 0..4);
        let namespace = (
            user,
            option::of(-3..3i64),
            option::of(0..3u32),
            collection::btree_map(
                proptest::sample::select(&USER[..]),
                (any::<bool>(), -3..3i64),
                0..3,
            ),
            0..12u8,
        )
            .prop_map(|(user, stamp_at, hops, lifetimes, odd)| {
                let mut map: Map<String, Value> = user
                    .into_iter()
                    .map(|(key, n)| (key.to_owned(), json!(n)))
                    .collect();
                if let Some(at) = stamp_at {
                    map.insert(STAMP_KEY.to_owned(), stamp(at));
                }
                if let Some(hops) = hops {
                    map.insert(HOPS_KEY.to_owned(), json!(hops));
                }
                if !lifetimes.is_empty() {
                    let lifetimes: Map<String, Value> = lifetimes
                        .into_iter()
                        .map(|(key, (until, n))| {
                            let lifetime = if until {
                                json!({ "until": stamp(n) })
                            } else {
                                json!({ "hops": n.max(0) })
                            };
                            (key.to_owned(), lifetime)
                        })
                        .collect();
                    map.insert(LIFETIMES_KEY.to_owned(), Value::Object(lifetimes));
                }
                if odd == 0 {
                    map.insert(STAMP_KEY.to_owned(), json!("unreadable"));
                }
                Value::Object(map)
            });
        prop_oneof![6 => namespace, 1 => (0..3i64).prop_map(|n| json!(n))]
    }

    fn data() -> impl Strategy<Value = BTreeMap<&'static str, Value>> {
        collection::btree_map(proptest::sample::select(&TOP[..]), value(), 0..4)
    }

    /// `loaded` as a request left it: each key kept, changed or removed, and others added.
    fn changed(
        loaded: BTreeMap<&'static str, Value>,
    ) -> impl Strategy<Value = BTreeMap<&'static str, Value>> {
        (collection::vec(0..3u8, TOP.len()), data()).prop_map(move |(fates, added)| {
            let mut ours = BTreeMap::new();
            for (n, key) in TOP.iter().enumerate() {
                match (fates[n], loaded.get(key), added.get(key)) {
                    (0, Some(value), _) => {
                        ours.insert(*key, value.clone());
                    }
                    (1, _, Some(value)) => {
                        ours.insert(*key, value.clone());
                    }
                    _ => {}
                }
            }
            ours
        })
    }

    fn ops() -> impl Strategy<Value = Ops> {
        (
            any::<bool>(),
            collection::btree_set(proptest::sample::select(&USER[..]), 0..3),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            option::of(prop_oneof![Just(12usize), Just(60), Just(4096)]),
        )
            .prop_map(|(purged, touched, wrote, counted, typed, budget)| Ops {
                purged,
                touched: touched
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<BTreeSet<_>>(),
                wrote,
                counted,
                typed,
                budget,
            })
    }

    /// The versions a record carries: those of what it loaded, none, some of another record's,
    /// or unreadable.
    fn versions_of(
        loaded: &BTreeMap<&'static str, Value>,
        other: &BTreeMap<&'static str, Value>,
        form: u8,
    ) -> Option<Value> {
        let of = |data: &BTreeMap<&'static str, Value>| {
            let data: Vec<(String, Value)> = data
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect();
            Value::String(Versions::text_of(&sorted_digests(
                data.iter().map(|(k, v)| (k, v)),
            )))
        };
        match form {
            0 => None,
            1 => Some(of(other)),
            2 => Some(json!("unreadable")),
            _ => Some(of(loaded)),
        }
    }

    fn record(data: &BTreeMap<&'static str, Value>) -> Record {
        Record {
            id: Id(7),
            data: data
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
            expiry_date: NOW + Duration::days(1),
        }
    }

    /// A request's record, its save's journal left, and what the store holds by its save.
    fn case() -> impl Strategy<Value = (Record, Option<Record>)> {
        (
            data(),
            data(),
            0..6u8,
            0..6u8,
            0..4u8,
            collection::btree_map(proptest::sample::select(&TOP[..]), ops(), 0..4),
            option::of((0..200usize, 0..4usize)),
        )
            .prop_flat_map(
                |(loaded, other, versions, latest_versions, marked, journal, limits)| {
                    (changed(loaded.clone()), option::of(changed(loaded.clone()))).prop_map(
                        move |(ours, latest)| {
                            let mut ours_record = record(&ours);
                            if let Some(versions) = versions_of(&loaded, &other, versions) {
                                ours_record.data.insert(VERSIONS_KEY.to_owned(), versions);
                            }
                            match marked {
                                // Loaded, with the flush's journal left for the save.
                                0 | 1 => {
                                    let mut left = Journal::new(NOW, journal::next_load());
                                    if let Some((budget, namespaces)) = limits {
                                        left = left.limited(SessionLimits { budget, namespaces });
                                    }
                                    for (key, ops) in &journal {
                                        left.record((*key).to_owned(), ops.clone());
                                    }
                                    ours_record
                                        .data
                                        .insert(LOADED_KEY.to_owned(), left.left_for_good());
                                }
                                // Loaded, no journal (a save not made by a flush).
                                2 => mark_loaded(&mut ours_record, None),
                                // Not loaded by this process.
                                _ => {}
                            }
                            let latest = latest.map(|latest| {
                                let mut latest_record = record(&latest);
                                if let Some(versions) =
                                    versions_of(&latest, &other, latest_versions)
                                {
                                    latest_record.data.insert(VERSIONS_KEY.to_owned(), versions);
                                }
                                latest_record
                            });
                            (ours_record, latest)
                        },
                    )
                },
            )
    }

    /// A merge's outcome, comparable. Of several namespaces over their budgets, the merge names
    /// the first it meets in the record's keys, whose order is the hash map's: a refusal for a
    /// budget is compared as such, whichever namespace it names.
    fn outcome(merged: Result<Record, Refusal>) -> Result<BTreeMap<String, Value>, String> {
        merged
            .map(|record| record.data.into_iter().collect())
            .map_err(|refusal| match refusal {
                Refusal::OverBudget { .. } => "over a budget".to_owned(),
                refusal => refusal.to_string(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn a_reduced_record_merges_into_any_latest_as_the_whole_record_does((ours, latest) in case()) {
            let reduced = Reduced::of(&ours);
            prop_assert!(reduced.record().data.len() <= ours.data.len());
            prop_assert_eq!(
                outcome(reduced.merge_data(latest.clone()).map(versioned)),
                outcome(merge(&ours, latest)),
                "reduced to {:?}", reduced.record().data
            );
        }
    }

    #[test]
    fn a_reduced_record_holds_only_the_touched_keys_of_its_namespace_and_no_unchanged_key() {
        let cart: Map<String, Value> = (0..50)
            .map(|n| (format!("item{n}"), json!(n)))
            .chain([(STAMP_KEY.to_owned(), stamp(5))])
            .collect();
        let loaded = json!({ "cart": cart, "user": "ada", "theme": "dark" });
        let mut ours = record(&BTreeMap::new());
        ours.data = loaded.as_object().unwrap().clone().into_iter().collect();
        ours.data.insert(
            VERSIONS_KEY.to_owned(),
            Value::String(Versions::text_of(&sorted_digests(data_of(&ours)))),
        );
        ours.data.insert("theme".to_owned(), json!("light"));
        ours.data.get_mut("cart").unwrap()["item7"] = json!("seven");
        let mut journal = Journal::new(NOW, journal::next_load());
        journal.record(
            "cart".to_owned(),
            Ops {
                touched: ["item7".to_owned()].into(),
                wrote: true,
                ..Ops::default()
            },
        );
        ours.data
            .insert(LOADED_KEY.to_owned(), journal.left_for_good());

        let reduced = Reduced::of(&ours);
        let data = &reduced.record().data;
        assert_eq!(
            data["cart"],
            json!({ "item7": "seven", STAMP_KEY: stamp(5) }),
            "the namespace's touched key and bookkeeping"
        );
        assert_eq!(data["theme"], "light", "changed through the session");
        assert!(!data.contains_key("user"), "unchanged: {data:?}");
        let versions = Versions::read(&data[VERSIONS_KEY]);
        assert!(versions.lacked("user") && !versions.lacked("theme") && !versions.lacked("cart"));
        assert_eq!(data[LOADED_KEY], ours.data[LOADED_KEY]);
    }

    #[test]
    fn a_record_no_load_of_this_process_marked_is_kept_whole() {
        let mut ours = record(&BTreeMap::from([("user", json!("ada"))]));
        ours.data.insert(
            VERSIONS_KEY.to_owned(),
            Value::String(Versions::text_of(&sorted_digests(data_of(&ours)))),
        );
        assert_eq!(Reduced::of(&ours).record().data, ours.data);
        // Merged into nothing, it is stored as it is: whole.
        assert_eq!(
            outcome(Reduced::of(&ours).merge_data(None).map(versioned)),
            outcome(merge(&ours, None))
        );
    }
}
