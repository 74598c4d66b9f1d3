//! No lost updates between overlapping requests: a store wrapper that merges each save into the
//! latest stored record instead of overwriting it.
//!
//! See [`MergingStore`] for what a save does.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};
use tokio::sync::OwnedMutexGuard;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use crate::state::{lock, Ops, Stored};

/// The top-level session key under which [`MergingStore`] keeps a record's versions.
pub(crate) const VERSIONS_KEY: &str = "tower_sessions_controller.versions";
/// The top-level session key under which the flush leaves the request's operations for the save.
/// It never reaches the store.
pub(crate) const OPS_KEY: &str = "tower_sessions_controller.ops";

/// How long a store lock lives if its holder dies before releasing it.
const STORE_LOCK_TTL: Duration = Duration::seconds(10);
/// How long a save waits for another instance's store lock before it fails.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The key of a lock record naming the instance that took it.
const LOCK_OWNER_KEY: &str = "tower_sessions_controller.lock_owner";
/// Turns a session id into the id of its lock record.
const STORE_LOCK_MASK: i128 = 0x7473_635f_6d65_7267_655f_6c6f_636b_2121;

/// A `SessionStore` wrapper that merges concurrent saves of one session, so that no request's
/// namespace changes are lost to another's.
///
/// Wrap the store given to `SessionManagerLayer`; nothing else changes. The README states the
/// guarantee and its limits.
///
/// tower-sessions loads a visitor's whole record when a request first needs it and saves the
/// whole record when the response goes out, so of two overlapping requests on one session, the
/// later save silently undoes the earlier one. [`MergingStore`] wraps any `SessionStore` and
/// changes what a save means:
///
/// - It stamps every record it loads with **versions**: a counter of the record's saves, and for
///   each top-level key of the session the counter value of the save that last changed it.
/// - The layer's flush leaves the request's **operations** on each namespace it changed (a purge,
///   which user keys were set or removed, whether it wrote or counted a request against the
///   namespace's hops) in the record. A key's lifetime travels with the key.
/// - On save, under a per-session lock, it re-reads the latest record and rebuilds it: each
///   namespace this request changed gets exactly this request's operations applied on top of its
///   latest stored form; every other key keeps its latest stored value unless this request
///   changed it through `Session` directly and nobody else changed it meanwhile (the versions
///   tell).
///
/// A request that changed nothing saves nothing, so it costs nothing extra; a request that
/// changed something costs one extra load. The per-session lock is in-process; with
/// [`MergingStore::with_store_lock`] it is also taken through the store itself, for several app
/// instances sharing one store.
///
/// # Example
///
/// ```
/// use axum::Router;
/// use tower_sessions::{MemoryStore, SessionManagerLayer};
/// use tower_sessions_controller::{MergingStore, SessionControllerLayer};
///
/// let store = MergingStore::new(MemoryStore::default());
/// let app: Router = Router::new()
///     .layer(SessionControllerLayer::new())
///     .layer(SessionManagerLayer::new(store));
/// ```
#[derive(Clone)]
pub struct MergingStore<S> {
    inner: S,
    locks: Arc<Mutex<HashMap<Id, Arc<tokio::sync::Mutex<()>>>>>,
    store_lock: bool,
    /// Marks the store locks this instance takes, so it can tell one it left behind.
    owner: Value,
}

impl<S> MergingStore<S> {
    /// Wraps `inner`. Saves of one session are merged one at a time within this process.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            locks: Arc::default(),
            store_lock: false,
            owner: Value::from(Id::default().to_string()),
        }
    }

    /// Also takes each session's merge lock through the store itself, so that several app
    /// instances sharing the store merge one at a time: the lock is a record under an id derived
    /// from the session's, made with the store's `create` and removed with `delete`. It costs two
    /// store round trips per save.
    ///
    /// A lock whose release failed does not block the session: the next save in the same instance
    /// clears it (the lock record names the instance that took it), and for other instances it
    /// expires after 10 seconds. Stores that keep expired records until a cleanup task removes
    /// them (`MemoryStore`, the SQL stores) count an expired lock as taken: run the store's
    /// cleanup task (`continuously_delete_expired`) where several instances share one.
    ///
    /// This needs a store whose `create` is atomic (it either stores the record under the given
    /// id, or finds the id taken and picks another): Redis (`tower-sessions-redis-store`, through
    /// `SET NX`) and `MemoryStore` are; the SQL stores of `tower-sessions-sqlx-store` check and
    /// then insert, which two instances can interleave, so on them the lock is only best effort.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_sessions::MemoryStore;
    /// use tower_sessions_controller::MergingStore;
    ///
    /// let store = MergingStore::new(MemoryStore::default()).with_store_lock();
    /// # let _ = store;
    /// ```
    pub fn with_store_lock(mut self) -> Self {
        self.store_lock = true;
        self
    }

    /// The wrapped store.
    ///
    /// ```
    /// use tower_sessions::MemoryStore;
    /// use tower_sessions_controller::MergingStore;
    ///
    /// let store = MergingStore::new(MemoryStore::default());
    /// let _memory: &MemoryStore = store.inner();
    /// ```
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for MergingStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergingStore")
            .field("inner", &self.inner)
            .field("store_lock", &self.store_lock)
            .finish_non_exhaustive()
    }
}

impl<S: SessionStore> MergingStore<S> {
    /// Takes the session's in-process lock, and its store lock if configured.
    async fn lock(&self, id: Id) -> session_store::Result<SaveLock<'_, S>> {
        let mutex = Arc::clone(lock(&self.locks).entry(id).or_default());
        let guard = mutex.lock_owned().await;
        let mut held = SaveLock {
            store: self,
            id,
            guard: Some(guard),
            store_locked: false,
        };
        if self.store_lock {
            self.acquire_store_lock(id).await?;
            held.store_locked = true;
        }
        Ok(held)
    }

    async fn acquire_store_lock(&self, id: Id) -> session_store::Result<()> {
        let lock_id = Id(id.0 ^ STORE_LOCK_MASK);
        let deadline = tokio::time::Instant::now() + STORE_LOCK_WAIT;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let mut record = Record {
                id: lock_id,
                data: HashMap::from([(LOCK_OWNER_KEY.to_owned(), self.owner.clone())]),
                expiry_date: OffsetDateTime::now_utc() + STORE_LOCK_TTL,
            };
            self.inner.create(&mut record).await?;
            if record.id == lock_id {
                return Ok(());
            }
            // Taken: `create` stored the record under a fresh id instead. Remove it.
            self.inner.delete(&record.id).await?;
            // Ours: this instance holds the session's in-process lock, so no save of ours is under
            // way, and the lock is one whose release failed. Another instance's lock is never
            // touched: it is released, or expires.
            let holder = self.inner.load(&lock_id).await?;
            let left_behind =
                holder.is_some_and(|holder| holder.data.get(LOCK_OWNER_KEY) == Some(&self.owner));
            if left_behind {
                tracing::warn!(session = %id, "clearing a store lock left behind");
                self.inner.delete(&lock_id).await?;
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(session = %id, "timed out waiting for the session's store lock");
                return Err(session_store::Error::Backend(
                    "timed out waiting for another instance's merge of this session".into(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
    }

    /// Releases the store lock, if held. A failure is logged: the lock expires by itself.
    async fn release(&self, held: &mut SaveLock<'_, S>) {
        if !std::mem::take(&mut held.store_locked) {
            return;
        }
        if let Err(err) = self.inner.delete(&Id(held.id.0 ^ STORE_LOCK_MASK)).await {
            tracing::warn!(
                session = %held.id,
                error = %err,
                "could not release the session's store lock; it expires by itself, and the next \
                 save clears it"
            );
        }
    }
}

/// A session's merge lock, held while one save merges. The in-process part is released on drop.
struct SaveLock<'a, S> {
    store: &'a MergingStore<S>,
    id: Id,
    guard: Option<OwnedMutexGuard<()>>,
    store_locked: bool,
}

impl<S> Drop for SaveLock<'_, S> {
    fn drop(&mut self) {
        if self.store_locked {
            tracing::warn!(
                session = %self.id,
                "a session's store lock was not released; it expires by itself"
            );
        }
        drop(self.guard.take());
        let mut locks = lock(&self.store.locks);
        // Only the map holds it now: nobody waits for this session.
        if locks
            .get(&self.id)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.id);
        }
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for MergingStore<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A new session, or one whose id was just cycled: nobody else can have saved it.
        record.data.remove(OPS_KEY);
        record
            .data
            .entry(VERSIONS_KEY.to_owned())
            .or_insert_with(|| Versions::default().to_value());
        self.inner.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let mut held = self.lock(record.id).await?;
        let result = async {
            let latest = self.inner.load(&record.id).await?;
            self.inner.save(&merge(record, latest)).await
        }
        .await;
        // The save's outcome is the request's: a lock that outlives it only delays the next save.
        self.release(&mut held).await;
        result
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let mut record = self.inner.load(id).await?;
        if let Some(record) = &mut record {
            // The mark that makes the flush leave its operations, and this load's versions.
            record
                .data
                .entry(VERSIONS_KEY.to_owned())
                .or_insert_with(|| Versions::default().to_value());
        }
        Ok(record)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.inner.delete(id).await
    }
}

/// What one request did, as the flush leaves it for the save.
#[derive(Debug)]
pub(crate) struct RequestOps {
    now: OffsetDateTime,
    namespaces: BTreeMap<String, Ops>,
}

impl RequestOps {
    pub(crate) fn new(now: OffsetDateTime) -> Self {
        Self {
            now,
            namespaces: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, namespace: String, ops: Ops) {
        self.namespaces.insert(namespace, ops);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    pub(crate) fn to_value(&self) -> Value {
        let namespaces: Map<String, Value> = self
            .namespaces
            .iter()
            .map(|(key, ops)| {
                (
                    key.clone(),
                    json!({
                        "purged": ops.purged,
                        "touched": ops.touched,
                        "wrote": ops.wrote,
                        "counted": ops.counted,
                    }),
                )
            })
            .collect();
        json!({
            "now": self.now.unix_timestamp(),
            "now_nanos": self.now.nanosecond(),
            "namespaces": namespaces,
        })
    }

    fn from_value(value: &Value) -> Option<Self> {
        let now = OffsetDateTime::from_unix_timestamp(value["now"].as_i64()?).ok()?
            + Duration::nanoseconds(value["now_nanos"].as_i64()?);
        let namespaces = value["namespaces"]
            .as_object()?
            .iter()
            .map(|(key, ops)| {
                let touched = ops["touched"]
                    .as_array()
                    .map(|keys| {
                        keys.iter()
                            .filter_map(|k| k.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let purged = ops["purged"].as_bool().unwrap_or(false);
                let wrote = ops["wrote"].as_bool().unwrap_or(false);
                let counted = ops["counted"].as_bool().unwrap_or(false);
                (
                    key.clone(),
                    Ops {
                        purged,
                        touched,
                        wrote,
                        counted,
                    },
                )
            })
            .collect();
        Some(Self { now, namespaces })
    }
}

/// A record's versions: how many merged saves it has had, and which save last changed each key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Versions {
    counter: u64,
    keys: BTreeMap<String, u64>,
}

impl Versions {
    fn from_value(value: &Value) -> Self {
        Self {
            counter: value["counter"].as_u64().unwrap_or(0),
            keys: value["keys"]
                .as_object()
                .map(|keys| {
                    keys.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn to_value(&self) -> Value {
        json!({ "counter": self.counter, "keys": self.keys })
    }

    fn of(&self, key: &str) -> u64 {
        self.keys.get(key).copied().unwrap_or(0)
    }
}

/// The record to store: `ours` (what this request would save) merged into `latest` (what the
/// store holds now).
pub(crate) fn merge(ours: &Record, latest: Option<Record>) -> Record {
    let is_data = |key: &String| key != OPS_KEY && key != VERSIONS_KEY;
    let ops = ours.data.get(OPS_KEY).and_then(RequestOps::from_value);
    let base = ours.data.get(VERSIONS_KEY).map(Versions::from_value);
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
    latest.data.remove(OPS_KEY);
    let theirs_versions = latest
        .data
        .remove(VERSIONS_KEY)
        .as_ref()
        .map(Versions::from_value)
        .unwrap_or_default();
    let mut versions = Versions {
        counter: theirs_versions.counter + 1,
        keys: BTreeMap::new(),
    };
    // One key's merged value, and whether it differs from theirs. Only what wins is copied from
    // ours; the latest record is already owned.
    let resolve = |key: &str, theirs: Option<Value>, own: Option<&Value>| {
        let namespace_ops = ops
            .as_ref()
            .and_then(|ops| Some((ops.namespaces.get(key)?, ops.now)));
        match (namespace_ops, &base) {
            (Some((namespace, now)), _) => {
                let value = apply(namespace, theirs.clone(), own.cloned(), now);
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
        Some(Ok(mut theirs)) if !theirs.is_dropped_on_open(now) => {
            theirs.drop_expired_keys(now);
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
    use crate::expiry;
    use time::macros::datetime;

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

    fn stamp(at: OffsetDateTime) -> Value {
        expiry::encode(at)
    }

    fn ops(namespaces: &[(&str, bool, &[&str])]) -> Value {
        let mut ops = RequestOps::new(NOW);
        for (key, purged, touched) in namespaces {
            ops.record(
                (*key).to_owned(),
                Ops {
                    purged: *purged,
                    wrote: !touched.is_empty(),
                    counted: false,
                    touched: touched.iter().map(|k| (*k).to_owned()).collect(),
                },
            );
        }
        ops.to_value()
    }

    fn versions(counter: u64, keys: &[(&str, u64)]) -> Value {
        Versions {
            counter,
            keys: keys.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
        .to_value()
    }

    #[test]
    fn operations_round_trip_through_their_stored_form() {
        let value = ops(&[("cart", true, &["a", "b"])]);
        let read = RequestOps::from_value(&value).expect("readable");
        assert_eq!(read.now, NOW);
        assert_eq!(read.namespaces["cart"].touched.len(), 2);
        assert!(read.namespaces["cart"].purged);
        assert!(read.namespaces["cart"].wrote);
    }

    #[test]
    fn a_namespace_expired_by_the_requests_clock_is_replaced_not_merged_into() {
        let ours = record(json!({
            "cart": { "new": 1, "_timeout_datestamp": stamp(NOW + Duration::minutes(5)) },
            OPS_KEY: ops(&[("cart", false, &["new"])]),
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
            OPS_KEY: ops(&[("cart", false, &["a"])]),
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
            OPS_KEY: {
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
        let versions = Versions::from_value(&merged.data[VERSIONS_KEY]);
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
            OPS_KEY: ops(&[("cart", false, &["a"])]),
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
            OPS_KEY: ops(&[("cart", false, &["a"])]),
            VERSIONS_KEY: versions(1, &[]),
        }));
        let merged = merge(&ours, None);
        assert_eq!(merged.data["cart"]["a"], 1);
        assert!(!merged.data.contains_key(OPS_KEY));
    }

    #[test]
    fn unreadable_operations_leave_every_namespace_to_the_version_rule() {
        let ours = record(json!({
            "cart": { "a": 1 },
            OPS_KEY: "garbage",
            VERSIONS_KEY: versions(1, &[("cart", 1)]),
        }));
        let latest =
            record(json!({ "cart": { "b": 1 }, VERSIONS_KEY: versions(2, &[("cart", 2)]) }));
        assert_eq!(merge(&ours, Some(latest)).data["cart"], json!({ "b": 1 }));
    }
}
