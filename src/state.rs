//! The state of one request, shared by the layer and the extractors.
//!
//! The layer creates a [`RequestState`] when a request comes in and puts it in the request's
//! extensions. Opening a namespace loads it from the session once and keeps it here as an
//! [`Entry`]; every controller for the same key in the request shares that entry, so they see one
//! state. When the response is produced, the layer calls [`RequestState::finish`], and if some
//! entry changed, [`RequestState::flush`], which writes each changed entry back into the session
//! in one step.

use std::{
    any::Any,
    collections::{BTreeMap, BTreeSet},
    mem,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
};

use serde_json::{Map, Value};
use time::OffsetDateTime;
use tower_sessions::{session::Id, Session};

use crate::{
    budget::{self, Size},
    expiry::{self, Deadline, ExpiryPolicy, KeyDeadline},
    merge::{self, RequestOps},
    Error, Namespace,
};

/// The entry for `key` among `entries`.
fn find(entries: &[Arc<Entry>], key: &str) -> Option<Arc<Entry>> {
    entries.iter().find(|entry| entry.key == key).cloned()
}

/// Locks a mutex, carrying on after a panic elsewhere: the data behind these locks is always
/// left consistent between statements, so a poisoned lock holds nothing half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request's namespaces, its "now", its default budget, and whether its response has been
/// produced.
pub(crate) struct RequestState {
    pub(crate) session: Option<Session>,
    pub(crate) now: OffsetDateTime,
    pub(crate) budget: usize,
    flushed: AtomicBool,
    /// The namespaces opened so far. A request opens one or two, so a list beats a hash map.
    entries: Mutex<Vec<Arc<Entry>>>,
    /// Whether a [`MergingStore`](crate::MergingStore) is underneath (it marks the records it
    /// loads), learnt by [`is_merging`](Self::is_merging) when first needed.
    merging: OnceLock<bool>,
}

/// One namespace opened in a request.
pub(crate) struct Entry {
    pub(crate) key: String,
    /// The session's id when the namespace was loaded: a namespace loaded from a session that
    /// the handler then flushed (logged out) must not be written into its successor.
    loaded_from: Option<Id>,
    slot: Mutex<Slot>,
}

/// What a namespace holds in memory during a request.
pub(crate) struct Slot {
    /// The user's keys (the bookkeeping lives in the fields below), as runtime controllers use
    /// them. While `typed` is set, it holds what the namespace was before the `Keyed` changed it.
    map: Map<String, Value>,
    /// A typed namespace handed back by a [`Keyed`](crate::Keyed), serialized only when a runtime
    /// controller or the flush needs it.
    typed: Option<Box<dyn TypedContent>>,
    /// `typed` holds a write that `map` does not.
    typed_written: bool,
    /// The budget a `Keyed` write must fit in; checked when the flush serializes it.
    typed_budget: Option<usize>,
    /// A [`Keyed`](crate::Keyed) holds the data right now.
    pub(crate) checked_out: bool,
    /// [`check_out`](Self::check_out) moved `map` into a `Keyed`'s value: `map` is empty, and
    /// the session still holds the namespace as loaded (see
    /// [`RequestState::restore_lent`]).
    lent: bool,
    /// The stamp, and the requests left for a namespace counted in requests (after this one,
    /// when it is 0).
    pub(crate) deadline: Deadline,
    /// The lifetimes of single keys.
    lifetimes: BTreeMap<String, KeyDeadline>,
    /// The serialized size of `map` in bytes, once an insert has needed it.
    size: Option<Size>,
    /// An opening in this request has applied the policy's effect of opening.
    accessed: bool,
    /// The last write was under an [`ExpiryPolicy::At`] that had passed: nothing is stored.
    written_past_deadline: bool,
    /// Something was stored under the key when it was loaded, so emptying the namespace must
    /// reach the session.
    stored: bool,
    /// The namespace differs from what is stored: the flush writes it (or removes it).
    dirty: bool,
    /// This request's operations, for a merge with concurrent requests
    /// ([`MergingStore`](crate::MergingStore)): what remains is applied to the latest stored
    /// namespace instead of overwriting it.
    ops: Ops,
}

/// The operations a request made on one namespace: whether it purged it, which user keys it set
/// or removed since (their final values and lifetimes are in the namespace the flush writes),
/// whether it wrote (so its stamp stands), and whether it counted a request against the
/// namespace's hops (so its count stands).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ops {
    pub(crate) purged: bool,
    pub(crate) touched: BTreeSet<String>,
    pub(crate) wrote: bool,
    pub(crate) counted: bool,
}

/// What a [`Keyed`](crate::Keyed) write leaves for the flush.
pub(crate) struct TypedWrite {
    pub(crate) deadline: Deadline,
    pub(crate) budget: usize,
    /// Written under an [`ExpiryPolicy::At`] that had passed: nothing is stored.
    pub(crate) past_deadline: bool,
}

/// A [`Namespace`] value with its type erased, so the flush can serialize it.
pub(crate) trait TypedContent: Send + Sync {
    fn to_value(&self) -> Result<Value, serde_json::Error>;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Namespace> TypedContent for T {
    fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Whether [`RequestState::restore_lent`] must read a namespace's map again.
enum LentMap {
    NotNeeded,
    NeededIfMerging,
    Needed,
}

/// What the flush does with one namespace.
enum Change {
    Write(Value),
    Remove,
    Nothing,
}

impl RequestState {
    pub(crate) fn new(session: Option<Session>, now: OffsetDateTime, budget: usize) -> Self {
        Self {
            session,
            now,
            budget,
            flushed: AtomicBool::new(false),
            entries: Mutex::new(Vec::new()),
            merging: OnceLock::new(),
        }
    }

    /// The namespace under `key`, loaded from the session on first use in this request.
    ///
    /// # Errors
    ///
    /// [`Error::MissingSessionManager`] without a session, [`Error::Store`] if loading fails.
    pub(crate) async fn entry(&self, key: &str) -> Result<Arc<Entry>, Error> {
        self.warn_if_flushed(key, "opened");
        let found = find(&lock(&self.entries), key);
        if let Some(entry) = found {
            self.restore_lent(&entry).await?;
            return Ok(entry);
        }
        let session = self.session.as_ref().ok_or(Error::MissingSessionManager)?;
        // Boxed: tower-sessions' load future is some 300 bytes, and unboxed it would sit in every
        // handler future that opens a namespace (see BENCHMARKS.md).
        let stored = Box::pin(session.get_value(key)).await;
        let stored = stored.map_err(Error::Store)?;
        let loaded_from = session.id();
        let slot = Slot::load(key, stored, self.now);
        // Another task of this request may have loaded it meanwhile: the first one in wins, so
        // both controllers share one entry.
        let mut entries = lock(&self.entries);
        if let Some(entry) = find(&entries, key) {
            return Ok(entry);
        }
        let entry = Arc::new(Entry::new(key, loaded_from, slot));
        entries.push(Arc::clone(&entry));
        Ok(entry)
    }

    /// Whether a [`MergingStore`](crate::MergingStore) is underneath: it marks the records it
    /// loads. Learnt once per request, and only by a write's flush (and the rare
    /// [`restore_lent`](Self::restore_lent)), so a read does not pay the lookup.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the session had to be loaded and the store failed.
    pub(crate) async fn is_merging(&self) -> Result<bool, Error> {
        if let Some(merging) = self.merging.get() {
            return Ok(*merging);
        }
        let Some(session) = &self.session else {
            return Ok(false);
        };
        let versions = session.get_value(merge::VERSIONS_KEY).await;
        let merging = versions.map_err(Error::Store)?.is_some();
        Ok(*self.merging.get_or_init(|| merging))
    }

    /// Gives `entry` back the map that a `Keyed` took from it (see [`Slot::check_out`]) when
    /// something needs it: a merge diffs a typed write against it, and a controller opened after
    /// a `Keyed` that could not read the namespace must see what is stored. The map is read
    /// again from the session, which still holds the namespace as it was loaded (a `Keyed` only
    /// takes the map of a namespace that opening left unchanged).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the session had to be loaded and the store failed.
    pub(crate) async fn restore_lent(&self, entry: &Entry) -> Result<(), Error> {
        let needed = entry.lock().lent_map_needed();
        match needed {
            LentMap::NotNeeded => return Ok(()),
            // Boxed, as the load in `entry` is: this runs inside handler futures.
            LentMap::NeededIfMerging if !Box::pin(self.is_merging()).await? => return Ok(()),
            LentMap::NeededIfMerging | LentMap::Needed => {}
        }
        let Some(session) = &self.session else {
            return Ok(());
        };
        let stored = Box::pin(session.get_value(&entry.key)).await;
        let map = Slot::load(&entry.key, stored.map_err(Error::Store)?, self.now).map;
        entry.lock().give_back(map);
        Ok(())
    }

    /// Logs a change made after the flush, which will not be saved.
    pub(crate) fn warn_if_flushed(&self, namespace: &str, what: &str) {
        if self.flushed.load(Ordering::Acquire) {
            tracing::warn!(
                namespace,
                "namespace {what} after the response was produced: this is not saved to the \
                 session (was a controller moved into a spawned task?)"
            );
        }
    }

    /// Marks the response as produced and returns the namespaces that changed, for
    /// [`flush`](Self::flush); the others are let go. Without changes, there is nothing to
    /// flush.
    pub(crate) fn finish(&self) -> Vec<Arc<Entry>> {
        self.flushed.store(true, Ordering::Release);
        let mut entries = mem::take(&mut *lock(&self.entries));
        entries.retain(|entry| entry.lock().is_dirty());
        entries
    }

    /// Writes the namespaces that [`finish`](Self::finish) returned back into the session. Under
    /// a [`MergingStore`](crate::MergingStore), also leaves the request's operations for it.
    ///
    /// # Errors
    ///
    /// A typed namespace that does not serialize to an object, or a store failure.
    pub(crate) async fn flush(&self, changed: Vec<Arc<Entry>>) -> Result<(), Error> {
        let Some(session) = &self.session else {
            // Nothing can be opened without a session.
            return Ok(());
        };
        let mut ops = RequestOps::new(self.now);
        let merging = self.is_merging().await?;
        for entry in changed {
            let key = &entry.key;
            if entry.loaded_from.is_some() && session.id().is_none() && session.is_empty().await {
                // `Session::flush` ran after this namespace was loaded: it belonged to the old
                // session. (`Session::cycle_id` also clears the id, but keeps the data.)
                tracing::warn!(
                    namespace = key,
                    "the session was flushed after this namespace was opened: its changes are \
                     dropped; open it again after the flush to write to the new session"
                );
                continue;
            }
            // The map's reference was moved here; any other one is a controller still alive.
            let detached = Arc::strong_count(&entry) > 1;
            if detached {
                tracing::warn!(
                    namespace = key,
                    "a controller for this namespace is still alive when the response is \
                     produced; changes made through it from now on are not saved"
                );
            }
            if merging {
                self.restore_lent(&entry).await?;
            }
            let (change, namespace_ops) = entry.lock().take_change(key, detached, merging)?;
            match change {
                Change::Write(value) => {
                    session
                        .insert_value(key, value)
                        .await
                        .map_err(Error::Store)?;
                }
                Change::Remove => {
                    session.remove_value(key).await.map_err(Error::Store)?;
                }
                Change::Nothing => continue,
            }
            if merging {
                ops.record(key.clone(), namespace_ops);
            }
        }
        // Only a modified session is saved; an unmodified one (changes that cancelled out)
        // needs no operations, and writing them would cause the save.
        if merging && !ops.is_empty() && session.is_modified() {
            session
                .insert_value(merge::OPS_KEY, ops.to_value())
                .await
                .map_err(Error::Store)?;
        }
        Ok(())
    }
}

impl Entry {
    fn new(key: &str, loaded_from: Option<Id>, slot: Slot) -> Self {
        Self {
            key: key.to_owned(),
            loaded_from,
            slot: Mutex::new(slot),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Slot> {
        lock(&self.slot)
    }

    /// Whether controllers other than the caller's hold this entry (the request's map holds one
    /// reference, the caller another).
    pub(crate) fn is_shared(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 2
    }
}

impl Slot {
    /// The in-memory namespace for a stored value, after the expiry rules (the namespace's and
    /// its keys') and the corrupt-data fallback. Opening counts as one request against every
    /// count of hops in the namespace.
    fn load(namespace: &str, stored: Option<Value>, now: OffsetDateTime) -> Self {
        let mut slot = Self {
            map: Map::new(),
            typed: None,
            typed_written: false,
            typed_budget: None,
            checked_out: false,
            lent: false,
            deadline: Deadline::default(),
            lifetimes: BTreeMap::new(),
            size: None,
            accessed: false,
            written_past_deadline: false,
            stored: stored.is_some(),
            dirty: false,
            ops: Ops::default(),
        };
        let Some(stored) = stored else {
            return slot;
        };
        match Stored::decode(stored) {
            Ok(stored) if stored.is_dropped_on_open(now) => {
                tracing::debug!(namespace, "namespace expired; dropping it");
                slot.dirty = true;
            }
            Ok(mut stored) => {
                let over = stored.drop_expired_keys(now);
                if !over.is_empty() {
                    tracing::debug!(namespace, keys = ?over, "keys expired; dropping them");
                    slot.dirty = true;
                    slot.ops.touched.extend(over);
                }
                if let Some(hops) = &mut stored.deadline.hops {
                    // Not dropped, so at least one request was left: this one.
                    *hops = hops.saturating_sub(1);
                    slot.dirty = true;
                    slot.ops.counted = true;
                }
                for (key, deadline) in &mut stored.lifetimes {
                    if let KeyDeadline::Hops(hops) = deadline {
                        *hops = hops.saturating_sub(1);
                        slot.dirty = true;
                        slot.ops.touched.insert(key.clone());
                    }
                }
                slot.deadline = stored.deadline;
                slot.map = stored.map;
                slot.lifetimes = stored.lifetimes;
            }
            Err(reason) => {
                tracing::warn!(
                    namespace,
                    reason,
                    "corrupt namespace in the session: treating it as empty; the next write \
                     replaces it"
                );
            }
        }
        slot
    }

    /// Applies what opening does under `policy`, once per request: a namespace that slides on
    /// access gets a new stamp if it holds anything.
    pub(crate) fn access(&mut self, namespace: &str, policy: ExpiryPolicy, now: OffsetDateTime) {
        if mem::replace(&mut self.accessed, true) {
            return;
        }
        if let ExpiryPolicy::SlidingOnAccess(expiry) = policy {
            if !self.map(namespace).is_empty() {
                self.deadline = Deadline {
                    stamp: Some(expiry::stamp_after_write(now, expiry)),
                    hops: None,
                };
                self.ops.wrote = true;
                self.dirty = true;
            }
        }
    }

    /// The user's keys, converting a typed namespace back into a map if a `Keyed` left one.
    pub(crate) fn map(&mut self, namespace: &str) -> &mut Map<String, Value> {
        if let Err(err) = self.materialize(namespace, true) {
            tracing::error!(namespace, error = %err, "typed namespace read as empty");
            self.map = Map::new();
            self.lent = false;
        }
        &mut self.map
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether the map a `Keyed` took is needed back: always if no value stands for the
    /// namespace (a `Keyed` could not read it), for a merge's diff if a `Keyed` wrote it.
    fn lent_map_needed(&self) -> LentMap {
        if !self.lent || self.checked_out {
            LentMap::NotNeeded
        } else if self.typed.is_none() {
            LentMap::Needed
        } else if self.typed_written {
            LentMap::NeededIfMerging
        } else {
            LentMap::NotNeeded
        }
    }

    /// The map a `Keyed` took, read again from the session.
    fn give_back(&mut self, map: Map<String, Value>) {
        self.map = map;
        self.size = None;
        self.lent = false;
    }

    /// Turns a typed namespace into `map`, recording what a `Keyed` write changed if `track`.
    fn materialize(&mut self, namespace: &str, track: bool) -> Result<(), Error> {
        let Some(typed) = self.typed.take() else {
            return Ok(());
        };
        let map = match typed.to_value() {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(Error::NotAnObject {
                    namespace: namespace.to_owned(),
                })
            }
            Err(source) => {
                return Err(Error::Serialize {
                    namespace: namespace.to_owned(),
                    key: None,
                    source,
                })
            }
        };
        if let Some(key) = map.keys().find(|key| expiry::is_reserved(key)) {
            return Err(Error::ReservedKey { key: key.clone() });
        }
        if mem::take(&mut self.typed_written) && track {
            let old = &self.map;
            let changed = old
                .keys()
                .chain(map.keys())
                .filter(|k| old.get(*k) != map.get(*k));
            self.ops.touched.extend(changed.cloned());
        }
        self.map = map;
        self.lent = false;
        self.size = None;
        Ok(())
    }

    /// Stores `value` under `key` and moves the deadline as `policy` says a write does.
    ///
    /// # Errors
    ///
    /// [`Error::OverBudget`] if the namespace would serialize to more than `budget` bytes; then
    /// nothing changes.
    pub(crate) fn insert(
        &mut self,
        namespace: &str,
        key: String,
        value: Value,
        now: OffsetDateTime,
        policy: ExpiryPolicy,
        limit: usize,
    ) -> Result<(), Error> {
        self.map(namespace);
        let mut size = self.size.unwrap_or_else(|| budget::bounds(&self.map));
        let mut after = budget::with_entry(size, &self.map, &key, &value);
        if after.high > limit && !size.is_exact() {
            // Close to the budget: the bounds cannot tell, so count.
            size = budget::exact(&self.map);
            after = budget::with_entry(size, &self.map, &key, &value);
        }
        self.size = Some(size);
        if after.low > limit {
            return Err(Error::OverBudget {
                namespace: namespace.to_owned(),
                key: Some(key),
                size: after.low,
                limit,
            });
        }
        self.map.insert(key.clone(), value);
        self.size = Some(after);
        self.ops.touched.insert(key);
        self.write(policy, now);
        Ok(())
    }

    /// A write: the deadline moves as `policy` says.
    fn write(&mut self, policy: ExpiryPolicy, now: OffsetDateTime) {
        self.deadline = policy.on_write(self.deadline.stamp, now);
        self.written_past_deadline = policy.is_past(self.deadline, now);
        self.ops.wrote = true;
        self.dirty = true;
    }

    /// Gives `key` its own lifetime, whether or not it holds a value yet: set before the value,
    /// it applies to the value inserted later in the request.
    pub(crate) fn set_lifetime(&mut self, key: &str, deadline: KeyDeadline) {
        self.lifetimes.insert(key.to_owned(), deadline);
        self.ops.touched.insert(key.to_owned());
        self.dirty = true;
    }

    /// Removes `key` and its lifetime; removing the last key removes the deadline too.
    pub(crate) fn remove(&mut self, namespace: &str, key: &str) -> Option<Value> {
        let map = self.map(namespace);
        let removed = map.remove(key)?;
        if map.is_empty() {
            self.deadline = Deadline::default();
        }
        self.lifetimes.remove(key);
        self.size = None;
        self.ops.touched.insert(key.to_owned());
        self.dirty = true;
        Some(removed)
    }

    /// Empties the namespace; the flush removes it from the session.
    pub(crate) fn purge(&mut self) {
        self.map = Map::new();
        self.lent = false;
        self.typed = None;
        self.typed_written = false;
        self.typed_budget = None;
        self.deadline = Deadline::default();
        self.lifetimes.clear();
        self.size = None;
        self.dirty = true;
        self.ops = Ops {
            purged: true,
            ..Ops::default()
        };
    }

    /// Hands a typed namespace to a `Keyed<T>`: `T::default()` for an empty or unreadable one.
    /// The flag says whether the value stands for the namespace (so it can be handed back).
    ///
    /// The map is moved into `T`, which saves copying every key and string, unless the
    /// namespace is to be written back anyway; [`RequestState::restore_lent`] gets it back from
    /// the session if it is needed later in the request.
    pub(crate) fn check_out<T: Namespace>(&mut self) -> (T, bool) {
        self.checked_out = true;
        match self.typed.take() {
            Some(typed) if typed.as_any().is::<T>() => match typed.into_any().downcast::<T>() {
                Ok(value) => (*value, true),
                Err(_) => (T::default(), false),
            },
            // Another type with the same key left it: go through JSON.
            other => {
                self.typed = other;
                if self.map(T::KEY).is_empty() {
                    return (T::default(), false);
                }
                // A dirty namespace (slid on access, keys expired) is written back even if `T`
                // does not read it, so it must not lose its map to a failed read.
                let read = if self.dirty {
                    T::deserialize(&self.map)
                } else {
                    self.size = None;
                    self.lent = true;
                    serde_json::from_value(Value::Object(mem::take(&mut self.map)))
                };
                match read {
                    Ok(value) => (value, true),
                    Err(err) => {
                        tracing::warn!(
                            namespace = T::KEY,
                            error = %err,
                            "stored namespace does not deserialize into its type: treating it as \
                             empty; the next write replaces it"
                        );
                        (T::default(), false)
                    }
                }
            }
        }
    }

    /// Takes a typed namespace back from a `Keyed<T>`; `written` is its deadline and budget if
    /// it was written.
    pub(crate) fn check_in<T: Namespace>(&mut self, value: T, written: Option<TypedWrite>) {
        self.checked_out = false;
        self.typed = Some(Box::new(value));
        if let Some(TypedWrite {
            deadline,
            budget,
            past_deadline,
        }) = written
        {
            self.deadline = deadline;
            self.written_past_deadline = past_deadline;
            self.typed_written = true;
            self.typed_budget = Some(budget);
            self.ops.wrote = true;
            self.dirty = true;
        }
    }

    /// What the flush must do, and the operations behind it if `track`. Takes the data unless a
    /// controller still holds the entry (`keep`).
    fn take_change(
        &mut self,
        namespace: &str,
        keep: bool,
        track: bool,
    ) -> Result<(Change, Ops), Error> {
        if !self.dirty || self.checked_out {
            // (A `Keyed` moved past the response: the flush has warned about it.)
            return Ok((Change::Nothing, Ops::default()));
        }
        self.materialize(namespace, track)?;
        if let Some(limit) = self.typed_budget.take() {
            if budget::bounds(&self.map).high > limit {
                let size = budget::exact(&self.map).low;
                if size > limit {
                    return Err(Error::OverBudget {
                        namespace: namespace.to_owned(),
                        key: None,
                        size,
                        limit,
                    });
                }
            }
        }
        // Keys in their last request go now (they are among the touched keys already).
        let last: Vec<String> = self
            .lifetimes
            .iter()
            .filter(|(_, deadline)| **deadline == KeyDeadline::Hops(0))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &last {
            self.lifetimes.remove(key);
            self.map.remove(key);
        }
        // A namespace in its last request, or written under a deadline that has passed, ends.
        if self.deadline.hops == Some(0) || self.written_past_deadline {
            self.map.clear();
            self.ops.purged = true;
        }
        let stored = Stored {
            map: if keep {
                self.map.clone()
            } else {
                mem::take(&mut self.map)
            },
            deadline: self.deadline,
            lifetimes: self.lifetimes.clone(),
        };
        self.dirty = false;
        let change = match stored.encode() {
            Some(value) => Change::Write(value),
            None if self.stored => Change::Remove,
            None => Change::Nothing,
        };
        Ok((change, mem::take(&mut self.ops)))
    }
}

/// A namespace in its stored form: the user's keys, and the bookkeeping under the reserved keys.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) map: Map<String, Value>,
    pub(crate) deadline: Deadline,
    pub(crate) lifetimes: BTreeMap<String, KeyDeadline>,
}

impl Stored {
    /// Splits a stored namespace, or says why it cannot be read.
    pub(crate) fn decode(stored: Value) -> Result<Self, &'static str> {
        let Value::Object(mut map) = stored else {
            return Err("the namespace is not a JSON object");
        };
        let stamp = match map.remove(expiry::STAMP_KEY) {
            Some(stamp) => Some(expiry::decode(&stamp)?),
            None => None,
        };
        let hops = match map.remove(expiry::HOPS_KEY) {
            Some(hops) => Some(expiry::decode_hops(&hops)?),
            None => None,
        };
        let mut lifetimes: BTreeMap<String, KeyDeadline> = match map.remove(expiry::LIFETIMES_KEY) {
            None => BTreeMap::new(),
            Some(Value::Object(lifetimes)) => lifetimes
                .iter()
                .map(|(key, deadline)| Ok((key.clone(), KeyDeadline::decode(deadline)?)))
                .collect::<Result<_, &'static str>>()?,
            Some(_) => return Err("the keys' lifetimes are not a JSON object"),
        };
        // A lifetime for a key the namespace does not hold means nothing (this crate never
        // stores one): it must not end, or outlive, a value inserted later.
        lifetimes.retain(|key, _| map.contains_key(key));
        Ok(Self {
            map,
            deadline: Deadline { stamp, hops },
            lifetimes,
        })
    }

    /// The stored form, or `None` for an empty namespace (which is not stored at all). Only the
    /// lifetimes of keys that hold a value are kept.
    pub(crate) fn encode(self) -> Option<Value> {
        let Self {
            mut map,
            deadline,
            lifetimes,
        } = self;
        if map.is_empty() {
            return None;
        }
        let lifetimes: Map<String, Value> = lifetimes
            .into_iter()
            .filter(|(key, _)| map.contains_key(key))
            .map(|(key, deadline)| (key, deadline.encode()))
            .collect();
        if !lifetimes.is_empty() {
            map.insert(expiry::LIFETIMES_KEY.to_owned(), Value::Object(lifetimes));
        }
        if let Some(hops) = deadline.hops {
            map.insert(expiry::HOPS_KEY.to_owned(), Value::from(hops));
        }
        if let Some(stamp) = deadline.stamp {
            map.insert(expiry::STAMP_KEY.to_owned(), expiry::encode(stamp));
        }
        Some(Value::Object(map))
    }

    /// Whether a request at `now` finds the namespace gone: its stamp has passed, or it has no
    /// requests left.
    pub(crate) fn is_dropped_on_open(&self, now: OffsetDateTime) -> bool {
        expiry::is_dropped_on_open(self.deadline.stamp, now) || self.deadline.hops == Some(0)
    }

    /// Removes the keys whose lifetime is over for a request at `now`, and returns them.
    pub(crate) fn drop_expired_keys(&mut self, now: OffsetDateTime) -> Vec<String> {
        let over: Vec<String> = self
            .lifetimes
            .iter()
            .filter(|(_, deadline)| deadline.is_over(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &over {
            self.lifetimes.remove(key);
            self.map.remove(key);
        }
        if !over.is_empty() && self.map.is_empty() {
            // Its last key is gone, and the namespace with it.
            self.deadline = Deadline::default();
        }
        over
    }
}
