//! The state of one request, shared by the layer and the extractors.
//!
//! The layer creates a [`RequestState`] when a request comes in and puts it in the request's
//! extensions. Opening a namespace loads it from the session once and keeps it here as an
//! [`Entry`]; every controller for the same key in the request shares that entry, so they see one
//! state. When the response is produced, the layer calls [`RequestState::flush`], which writes
//! each changed entry back into the session in one step.

use std::{
    any::Any,
    collections::{BTreeSet, HashMap},
    mem,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};
use tower_sessions::{session::Id, Session};

use crate::{
    expiry,
    merge::{self, RequestOps},
    Error, Namespace,
};

/// Locks a mutex, carrying on after a panic elsewhere: the data behind these locks is always
/// left consistent between statements, so a poisoned lock holds nothing half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request's namespaces, its "now", and whether its response has been produced.
pub(crate) struct RequestState {
    pub(crate) session: Option<Session>,
    pub(crate) now: OffsetDateTime,
    flushed: AtomicBool,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
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
    /// The user's keys (the stamp lives in `stamp`), as runtime controllers use them. While
    /// `typed` is set, it holds what the namespace was before the `Keyed` changed it.
    map: Map<String, Value>,
    /// A typed namespace handed back by a [`Keyed`](crate::Keyed), serialized only when a runtime
    /// controller or the flush needs it.
    typed: Option<Box<dyn TypedContent>>,
    /// `typed` holds a write that `map` does not.
    typed_written: bool,
    /// A [`Keyed`](crate::Keyed) holds the data right now.
    pub(crate) checked_out: bool,
    pub(crate) stamp: Option<OffsetDateTime>,
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
/// or removed since (their final values are in the namespace the flush writes), and whether it
/// wrote (so its stamp stands).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ops {
    pub(crate) purged: bool,
    pub(crate) touched: BTreeSet<String>,
    pub(crate) wrote: bool,
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

/// What the flush does with one namespace.
enum Change {
    Write(Value),
    Remove,
    Nothing,
}

impl RequestState {
    pub(crate) fn new(session: Option<Session>, now: OffsetDateTime) -> Self {
        Self {
            session,
            now,
            flushed: AtomicBool::new(false),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The namespace under `key`, loaded from the session on first use in this request.
    ///
    /// # Errors
    ///
    /// [`Error::MissingSessionManager`] without a session, [`Error::Store`] if loading fails.
    pub(crate) async fn entry(&self, key: &str) -> Result<Arc<Entry>, Error> {
        self.warn_if_flushed(key, "opened");
        if let Some(entry) = lock(&self.entries).get(key) {
            return Ok(Arc::clone(entry));
        }
        let session = self.session.as_ref().ok_or(Error::MissingSessionManager)?;
        let stored = session.get_value(key).await.map_err(Error::Store)?;
        let loaded_from = session.id();
        let slot = Slot::load(key, stored, self.now);
        // Another task of this request may have loaded it meanwhile: the first one in wins, so
        // both controllers share one entry.
        let mut entries = lock(&self.entries);
        let entry = entries
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Entry::new(key, loaded_from, slot)));
        Ok(Arc::clone(entry))
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

    /// Writes every changed namespace back into the session. Under a
    /// [`MergingStore`](crate::MergingStore), also leaves the request's operations for it.
    ///
    /// # Errors
    ///
    /// A typed namespace that does not serialize to an object, or a store failure.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        self.flushed.store(true, Ordering::Release);
        let entries = mem::take(&mut *lock(&self.entries));
        let Some(session) = &self.session else {
            // Nothing can be opened without a session.
            return Ok(());
        };
        let mut ops = RequestOps::new(self.now);
        // Whether a `MergingStore` is underneath (it marks the records it loads): asked once.
        let mut merging = None;
        for (key, entry) in entries {
            if !entry.lock().is_dirty() {
                continue;
            }
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
            let track = match merging {
                Some(merging) => merging,
                None => {
                    let found = session.get_value(merge::VERSIONS_KEY).await;
                    *merging.insert(found.map_err(Error::Store)?.is_some())
                }
            };
            // The map's reference was moved here; any other one is a controller still alive.
            let detached = Arc::strong_count(&entry) > 1;
            if detached {
                tracing::warn!(
                    namespace = key,
                    "a controller for this namespace is still alive when the response is \
                     produced; changes made through it from now on are not saved"
                );
            }
            let (change, namespace_ops) = entry.lock().take_change(&key, detached, track)?;
            match change {
                Change::Write(value) => {
                    session
                        .insert_value(&key, value)
                        .await
                        .map_err(Error::Store)?;
                }
                Change::Remove => {
                    session.remove_value(&key).await.map_err(Error::Store)?;
                }
                Change::Nothing => continue,
            }
            ops.record(key, namespace_ops);
        }
        // Only a modified session is saved; an unmodified one (changes that cancelled out)
        // needs no operations, and writing them would cause the save.
        if merging == Some(true) && !ops.is_empty() && session.is_modified() {
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
    /// The in-memory namespace for a stored value, after the expiry rule and the corrupt-data
    /// fallback.
    fn load(namespace: &str, stored: Option<Value>, now: OffsetDateTime) -> Self {
        let mut slot = Self {
            map: Map::new(),
            typed: None,
            typed_written: false,
            checked_out: false,
            stamp: None,
            stored: stored.is_some(),
            dirty: false,
            ops: Ops::default(),
        };
        let Some(stored) = stored else {
            return slot;
        };
        match decode(stored) {
            Ok((_, stamp)) if expiry::is_dropped_on_open(stamp, now) => {
                tracing::debug!(namespace, "namespace expired; dropping it");
                slot.dirty = true;
            }
            Ok((map, stamp)) => {
                slot.map = map;
                slot.stamp = stamp;
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

    /// The user's keys, converting a typed namespace back into a map if a `Keyed` left one.
    pub(crate) fn map(&mut self, namespace: &str) -> &mut Map<String, Value> {
        if let Err(err) = self.materialize(namespace, true) {
            tracing::error!(namespace, error = %err, "typed namespace read as empty");
            self.map = Map::new();
        }
        &mut self.map
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Turns a typed namespace into `map`, recording what a `Keyed` write changed if `track`.
    fn materialize(&mut self, namespace: &str, track: bool) -> Result<(), Error> {
        let Some(typed) = self.typed.take() else {
            return Ok(());
        };
        let map = match typed.to_value() {
            Ok(Value::Object(map)) if map.contains_key(expiry::STAMP_KEY) => {
                return Err(Error::ReservedKey {
                    key: expiry::STAMP_KEY.to_owned(),
                })
            }
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
        if mem::take(&mut self.typed_written) && track {
            let old = &self.map;
            let changed = old
                .keys()
                .chain(map.keys())
                .filter(|k| old.get(*k) != map.get(*k));
            self.ops.touched.extend(changed.cloned());
        }
        self.map = map;
        Ok(())
    }

    /// Stores `value` under `key` and slides the stamp to `now + expiry`.
    pub(crate) fn insert(
        &mut self,
        namespace: &str,
        key: String,
        value: Value,
        now: OffsetDateTime,
        expiry: Duration,
    ) {
        self.map(namespace).insert(key.clone(), value);
        self.ops.touched.insert(key);
        self.ops.wrote = true;
        self.stamp = Some(expiry::stamp_after_write(now, expiry));
        self.dirty = true;
    }

    /// Removes `key`; removing the last key removes the stamp too.
    pub(crate) fn remove(&mut self, namespace: &str, key: &str) -> Option<Value> {
        let map = self.map(namespace);
        let removed = map.remove(key)?;
        if map.is_empty() {
            self.stamp = None;
        }
        self.ops.touched.insert(key.to_owned());
        self.dirty = true;
        Some(removed)
    }

    /// Empties the namespace; the flush removes it from the session.
    pub(crate) fn purge(&mut self) {
        self.map = Map::new();
        self.typed = None;
        self.typed_written = false;
        self.stamp = None;
        self.dirty = true;
        self.ops = Ops {
            purged: true,
            ..Ops::default()
        };
    }

    /// Hands a typed namespace to a `Keyed<T>`: `T::default()` for an empty or unreadable one.
    /// The flag says whether the value stands for the namespace (so it can be handed back).
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
                let map = self.map(T::KEY);
                if map.is_empty() {
                    return (T::default(), false);
                }
                match T::deserialize(&*map) {
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

    /// Takes a typed namespace back from a `Keyed<T>`; `stamp` is set if it was written.
    pub(crate) fn check_in<T: Namespace>(&mut self, value: T, stamp: Option<OffsetDateTime>) {
        self.checked_out = false;
        self.typed = Some(Box::new(value));
        if let Some(stamp) = stamp {
            self.stamp = Some(stamp);
            self.typed_written = true;
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
        let map = if keep {
            self.map.clone()
        } else {
            mem::take(&mut self.map)
        };
        self.dirty = false;
        let change = match encode(map, self.stamp) {
            Some(value) => Change::Write(value),
            None if self.stored => Change::Remove,
            None => Change::Nothing,
        };
        Ok((change, mem::take(&mut self.ops)))
    }
}

/// Splits a stored namespace into the user's keys and the stamp.
pub(crate) fn decode(
    stored: Value,
) -> Result<(Map<String, Value>, Option<OffsetDateTime>), &'static str> {
    let Value::Object(mut map) = stored else {
        return Err("the namespace is not a JSON object");
    };
    let stamp = match map.remove(expiry::STAMP_KEY) {
        Some(stamp) => Some(expiry::decode(&stamp)?),
        None => None,
    };
    Ok((map, stamp))
}

/// The stored form of a namespace, or `None` for an empty one (which is not stored at all).
pub(crate) fn encode(mut map: Map<String, Value>, stamp: Option<OffsetDateTime>) -> Option<Value> {
    if map.is_empty() {
        return None;
    }
    if let Some(stamp) = stamp {
        map.insert(expiry::STAMP_KEY.to_owned(), expiry::encode(stamp));
    }
    Some(Value::Object(map))
}
