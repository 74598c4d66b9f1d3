//! One namespace open in a request: its data in memory, the rules applied to it, and its loan to
//! a [`Keyed`](crate::Keyed).
//!
//! The first opening of a namespace in a request loads it from the session and applies what
//! opening does (the expiry rules); every controller for the same key then shares this one
//! [`Entry`]. Runtime controllers change its map in place. A `Keyed<T>` borrows it: the entry
//! **lends** its data to the `Keyed` (moving the map into `T` when nothing else needs it, which
//! saves a copy of every key and string) and **takes back** the value when the `Keyed` is
//! dropped. A value taken back is turned into a map again only when a runtime controller or the
//! flush needs one. When the response is produced, the flush takes the entry's [`Change`]: what
//! to write into the session, and the operations behind it for a merge.

use std::{
    any::Any,
    mem,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tower_sessions::session::Id;

use crate::{
    budget::{self, Size},
    error::Error,
    expiry::{self, ExpiryPolicy, Write},
    merge::Ops,
    stored::{self, Deadline, KeyDeadline, Stored},
};

/// One namespace opened in a request, shared by every controller for its key.
pub(crate) struct Entry {
    namespace: String,
    /// The session's id when the namespace was loaded: a namespace loaded from a session that
    /// the handler then flushed (logged out) must not be written into its successor.
    loaded_from: Option<Id>,
    slot: Mutex<Slot>,
}

/// What a write must fit in: the namespace's budget in bytes, and how deep its values may nest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) budget: usize,
    pub(crate) max_depth: usize,
}

/// What an entry holds, behind its lock.
struct Slot {
    /// The namespace as the request sees it: the user's keys, the deadline and the keys'
    /// lifetimes. While a typed value stands for the namespace, the map holds what the namespace
    /// was before that value (empty if it went with a loan).
    contents: Stored,
    /// Where the namespace's data is: see [`Form`].
    form: Form,
    /// The limits a `Keyed` write must fit in; checked when the flush serializes it.
    typed_limits: Option<Limits>,
    /// A typed value that could not be turned back into a map when a runtime controller needed
    /// it: the flush fails with this error instead of writing anything.
    failure: Option<Error>,
    /// The serialized size of the map in bytes, once an insert has needed it.
    size: Option<Size>,
    /// An opening in this request has applied the policy's effect of opening.
    opened: bool,
    /// The last write was under an [`ExpiryPolicy::At`] that had passed: nothing is stored.
    written_past_deadline: bool,
    /// The session held something under the key when it was loaded, so emptying the namespace
    /// must reach the session.
    in_session: bool,
    /// The namespace differs from what the session holds: the flush writes (or removes) it.
    changed: bool,
    /// This request's operations, for a merge with concurrent requests.
    ops: Ops,
    /// The keys the request touches are kept in `ops`: not when no merging store can be
    /// underneath, as nothing would read them.
    journaled: bool,
}

/// The lending lifecycle of a namespace's data.
enum Form {
    /// The map is the namespace.
    Map,
    /// A `Keyed` holds the namespace now. `written`: what it was lent holds a write the map does
    /// not.
    Lent { written: bool, base: Base },
    /// A `Keyed` gave back a value that stands for the namespace.
    Typed {
        value: Box<dyn TypedContent>,
        written: bool,
        base: Base,
    },
    /// The map went with a loan that gave back nothing standing for the namespace: it must be
    /// read again from the session before use.
    MapLent,
}

/// What a namespace held when it was lent, which a typed write is compared with for a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// A map its type read; `lent`: the map went with the loan (the session still holds it as
    /// loaded).
    Map { lent: bool },
    /// Nothing: a write is compared with its type's default.
    Empty,
    /// Data its type could not read (`lent` as for `Map`): a write replaces it.
    Unreadable { lent: bool },
}

impl Base {
    fn lent(self) -> bool {
        matches!(
            self,
            Self::Map { lent: true } | Self::Unreadable { lent: true }
        )
    }

    fn reloaded(self) -> Self {
        match self {
            Self::Map { .. } => Self::Map { lent: false },
            Self::Unreadable { .. } => Self::Unreadable { lent: false },
            Self::Empty => Self::Empty,
        }
    }
}

/// Whether an entry's map must be read again from the session, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapNeed {
    No,
    /// For a merge, which diffs a typed write against it.
    IfMerging,
    /// Always: nothing else stands for the namespace.
    Yes,
}

/// What the flush does with one namespace.
#[derive(Debug, PartialEq)]
pub(crate) enum Change {
    Write(Value),
    Remove,
    Nothing,
}

/// What a namespace lends a `Keyed`: the value, whether it stands for the stored namespace (so
/// it can be taken back unwritten), and the namespace's deadline.
pub(crate) struct Loan<T> {
    pub(crate) value: T,
    pub(crate) stands: bool,
    pub(crate) deadline: Deadline,
}

/// What a `Keyed` gives back.
pub(crate) struct Return<T> {
    pub(crate) value: T,
    /// The value stands for the stored namespace.
    pub(crate) stands: bool,
    /// It was purged at some point: the namespace starts afresh.
    pub(crate) purged: bool,
    /// Its write, and the limits the write must fit in.
    pub(crate) write: Option<(Write, Limits)>,
}

/// The values a namespace can be lent as: a [`Namespace`](crate::Namespace) type.
pub(crate) trait Lendable:
    Serialize + DeserializeOwned + Default + Send + Sync + 'static
{
}

impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> Lendable for T {}

/// A typed value with its type erased, so the flush can serialize it.
trait TypedContent: Send + Sync {
    fn to_value(&self) -> Result<Value, serde_json::Error>;
    /// The type's default, serialized: what a first write is compared with.
    fn default_value(&self) -> Result<Value, serde_json::Error>;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Lendable> TypedContent for T {
    fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn default_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(T::default())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl Entry {
    /// The namespace `namespace` of a session with id `loaded_from`, as a request at `now` finds
    /// what the session held (`stored`): after the expiry rules, and the fallback for corrupt
    /// data (read as empty, logged).
    pub(crate) fn load(
        namespace: &str,
        loaded_from: Option<Id>,
        stored: Option<Value>,
        now: OffsetDateTime,
        journaled: bool,
    ) -> Self {
        let mut slot = Slot {
            contents: Stored::default(),
            form: Form::Map,
            typed_limits: None,
            failure: None,
            size: None,
            opened: false,
            written_past_deadline: false,
            in_session: stored.is_some(),
            changed: false,
            ops: Ops::default(),
            journaled,
        };
        if let Some(stored) = stored {
            if let Some((contents, changed, ops)) = Self::open_stored(namespace, stored, now) {
                slot.contents = contents;
                slot.changed = changed;
                slot.ops = ops;
            }
        }
        Self {
            namespace: namespace.to_owned(),
            loaded_from,
            slot: Mutex::new(slot),
        }
    }

    /// A stored namespace as opening at `now` leaves it, whether that changed it, and the
    /// operations that change amounts to; `None` if it cannot be read.
    fn open_stored(
        namespace: &str,
        stored: Value,
        now: OffsetDateTime,
    ) -> Option<(Stored, bool, Ops)> {
        let mut contents = match Stored::decode(stored) {
            Ok(contents) => contents,
            Err(reason) => {
                tracing::warn!(
                    namespace,
                    reason,
                    "corrupt namespace in the session: treating it as empty; the next write \
                     replaces it"
                );
                return None;
            }
        };
        let opening = expiry::open(&mut contents, now);
        let changed = opening.changed();
        if opening.ended {
            tracing::debug!(namespace, "namespace expired; dropping it");
        } else if !opening.expired_keys.is_empty() {
            tracing::debug!(namespace, keys = ?opening.expired_keys, "keys expired; dropping them");
        }
        let mut ops = Ops {
            counted: opening.counted,
            ..Ops::default()
        };
        ops.touched.extend(opening.expired_keys);
        ops.touched.extend(opening.counted_keys);
        Some((contents, changed, ops))
    }

    /// The namespace's key in the session.
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The id of the session the namespace was loaded from.
    pub(crate) fn loaded_from(&self) -> Option<Id> {
        self.loaded_from
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot is consistent between statements, so a poisoned lock holds nothing half-done.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether controllers other than the caller's hold this entry (the request's registry
    /// holds one reference, the caller another).
    pub(crate) fn is_shared(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 2
    }

    /// Opening by a runtime controller under `policy`.
    ///
    /// # Errors
    ///
    /// [`Error::NamespaceInUse`] while a `Keyed` holds the namespace.
    pub(crate) fn open(&self, policy: ExpiryPolicy, now: OffsetDateTime) -> Result<(), Error> {
        let mut slot = self.lock();
        self.open_slot(&mut slot, policy, now, false)
    }

    /// Opening by a `Keyed<T>` under `policy`: lends the namespace as a `T`. `shared` says
    /// whether another controller holds the entry.
    ///
    /// # Errors
    ///
    /// [`Error::NamespaceInUse`] while another controller or `Keyed` holds the namespace.
    pub(crate) fn open_lent<T: Lendable>(
        &self,
        policy: ExpiryPolicy,
        now: OffsetDateTime,
        shared: bool,
    ) -> Result<Loan<T>, Error> {
        let mut slot = self.lock();
        self.open_slot(&mut slot, policy, now, shared)?;
        let (value, stands) = self.lend(&mut slot);
        Ok(Loan {
            value,
            stands,
            deadline: slot.contents.deadline,
        })
    }

    /// The one opening rule of both controllers: refused while held elsewhere; the policy's
    /// effect of opening applies once per request.
    fn open_slot(
        &self,
        slot: &mut Slot,
        policy: ExpiryPolicy,
        now: OffsetDateTime,
        shared: bool,
    ) -> Result<(), Error> {
        if shared || matches!(slot.form, Form::Lent { .. }) {
            return Err(Error::NamespaceInUse {
                namespace: self.namespace.clone(),
            });
        }
        if !mem::replace(&mut slot.opened, true) {
            let holds_data = !self.map(slot).is_empty();
            if let Some(write) = policy.on_open(holds_data, slot.contents.deadline, now) {
                slot.apply_write(write);
            }
        }
        Ok(())
    }

    /// Runs `f` on the user's keys.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Map<String, Value>) -> R) -> R {
        let mut slot = self.lock();
        f(self.map(&mut slot))
    }

    /// The namespace's deadline.
    pub(crate) fn deadline(&self) -> Deadline {
        self.lock().contents.deadline
    }

    /// Stores `value` under `key`, with its own `lifetime` if given, and applies `policy`'s write.
    ///
    /// # Errors
    ///
    /// [`Error::OverBudget`] if the namespace as stored would be larger than `budget` bytes;
    /// then nothing changes.
    pub(crate) fn insert(
        &self,
        key: String,
        value: Value,
        lifetime: Option<KeyDeadline>,
        now: OffsetDateTime,
        policy: ExpiryPolicy,
        budget: usize,
    ) -> Result<(), Error> {
        let mut slot = self.lock();
        let slot = &mut *slot;
        self.map(slot);
        let write = policy.write(slot.contents.deadline, now);
        let contents = &slot.contents;
        let extra = |exact| {
            let lifetimes = lifetimes_with(&contents.lifetimes, &key, lifetime);
            budget::bookkeeping(
                write.deadline,
                lifetimes,
                |held| held == key || contents.map.contains_key(held),
                exact,
            )
        };
        let size = self.fit(
            &contents.map,
            &mut slot.size,
            &key,
            budget,
            extra,
            |size, map| budget::with_entry(size, map, &key, &value),
        )?;
        if let Some(lifetime) = lifetime {
            slot.contents.lifetimes.insert(key.clone(), lifetime);
        }
        slot.touch(&key);
        slot.contents.map.insert(key, value);
        slot.size = Some(size);
        slot.ops.budget = Some(budget);
        slot.apply_write(write);
        Ok(())
    }

    /// Gives `key` its own lifetime, whether or not it holds a value yet: set before the value,
    /// it applies to the value inserted later in the request.
    ///
    /// # Errors
    ///
    /// [`Error::OverBudget`] if the namespace as stored would be larger than `budget` bytes;
    /// then nothing changes.
    pub(crate) fn set_lifetime(
        &self,
        key: &str,
        deadline: KeyDeadline,
        budget: usize,
    ) -> Result<(), Error> {
        let mut slot = self.lock();
        let slot = &mut *slot;
        if self.map(slot).contains_key(key) {
            // Only the lifetime of a key that holds a value is stored.
            let contents = &slot.contents;
            let extra = |exact| {
                let lifetimes = lifetimes_with(&contents.lifetimes, key, Some(deadline));
                budget::bookkeeping(
                    contents.deadline,
                    lifetimes,
                    |held| contents.map.contains_key(held),
                    exact,
                )
            };
            let size = self.fit(
                &contents.map,
                &mut slot.size,
                key,
                budget,
                extra,
                |size, _| size,
            )?;
            slot.size = Some(size);
            slot.ops.budget = Some(budget);
        }
        slot.contents.lifetimes.insert(key.to_owned(), deadline);
        slot.touch(key);
        slot.changed = true;
        Ok(())
    }

    /// The size of the user data in `map` after a change to `key` (`after`, from the size
    /// measured so far and the map before the change), if it and the bookkeeping (`extra`, exact
    /// or bounded) fit in `budget`. The bounds decide when they can; near the budget the map and
    /// the bookkeeping are counted exactly. `measured` keeps the size of the map before the change
    /// (the caller stores the changed one once the change is made).
    ///
    /// # Errors
    ///
    /// [`Error::OverBudget`] if the namespace would be larger than `budget` bytes.
    fn fit(
        &self,
        map: &Map<String, Value>,
        measured: &mut Option<Size>,
        key: &str,
        budget: usize,
        extra: impl Fn(bool) -> Size,
        after: impl Fn(Size, &Map<String, Value>) -> Size,
    ) -> Result<Size, Error> {
        let mut size = measured.unwrap_or_else(|| budget::bounds(map));
        let mut changed = after(size, map);
        let mut extra_size = extra(false);
        if changed.high.saturating_add(extra_size.high) > budget {
            if !size.is_exact() {
                size = budget::exact(map);
                changed = after(size, map);
            }
            if !extra_size.is_exact() {
                extra_size = extra(true);
            }
        }
        *measured = Some(size);
        let total = changed.low.saturating_add(extra_size.low);
        if total > budget {
            return Err(Error::OverBudget {
                namespace: self.namespace.clone(),
                key: Some(key.to_owned()),
                size: total,
                limit: budget,
            });
        }
        Ok(changed)
    }

    /// Removes `key` and its lifetime; removing the last key removes the deadline too.
    pub(crate) fn remove(&self, key: &str) -> Option<Value> {
        let mut slot = self.lock();
        let removed = self.map(&mut slot).remove(key)?;
        if slot.contents.map.is_empty() {
            slot.contents.deadline = Deadline::default();
        }
        slot.contents.lifetimes.remove(key);
        slot.size = None;
        slot.touch(key);
        slot.changed = true;
        Some(removed)
    }

    /// Empties the namespace; the flush removes it from the session.
    pub(crate) fn purge(&self) {
        self.lock().purge();
    }

    /// Lends the namespace as a `T`: the value of a `T` given back earlier, or the map read as a
    /// `T`, or `T::default()` for an empty or unreadable namespace (then it does not stand for the
    /// namespace).
    ///
    /// The map goes with the loan (moved into `T`) unless the namespace is to be written back
    /// anyway (it slid on access, or keys expired): a failed read must not lose what the flush
    /// writes.
    fn lend<T: Lendable>(&self, slot: &mut Slot) -> (T, bool) {
        match mem::replace(&mut slot.form, Form::Map) {
            Form::Typed {
                value,
                written,
                base,
            } if value.as_any().is::<T>() => {
                slot.form = Form::Lent { written, base };
                return match value.into_any().downcast::<T>() {
                    Ok(value) => (*value, true),
                    Err(_) => (T::default(), false),
                };
            }
            other => slot.form = other,
        }
        // Another type with the same key left a value: go through the map.
        self.map(slot);
        if slot.contents.map.is_empty() {
            slot.form = Form::Lent {
                written: false,
                base: Base::Empty,
            };
            return (T::default(), false);
        }
        let lent = !slot.changed;
        let read = if lent {
            slot.size = None;
            serde_json::from_value(Value::Object(mem::take(&mut slot.contents.map)))
        } else {
            T::deserialize(&slot.contents.map)
        };
        let (value, base) = match read {
            Ok(value) => (Some(value), Base::Map { lent }),
            Err(err) => {
                tracing::warn!(
                    namespace = self.namespace,
                    error = %err,
                    "stored namespace does not deserialize into its type: treating it as \
                     empty; the next write replaces it"
                );
                (None, Base::Unreadable { lent })
            }
        };
        slot.form = Form::Lent {
            written: false,
            base,
        };
        match value {
            Some(value) => (value, true),
            None => (T::default(), false),
        }
    }

    /// Takes back what a `Keyed` was lent.
    pub(crate) fn take_back<T: Lendable>(&self, returned: Return<T>) {
        let mut slot = self.lock();
        let (mut written, mut base) = match slot.form {
            Form::Lent { written, base } => (written, base),
            _ => (false, Base::Empty),
        };
        if returned.purged {
            slot.purge();
            (written, base) = (false, Base::Empty);
        }
        slot.form = if let Some((write, limits)) = returned.write {
            slot.apply_write(write);
            slot.typed_limits = Some(limits);
            slot.ops.typed = true;
            slot.ops.budget = Some(limits.budget);
            Form::Typed {
                value: Box::new(returned.value),
                written: true,
                base,
            }
        } else if returned.stands && !returned.purged {
            // Unchanged: keep the value so a later `Keyed<T>` need not deserialize again.
            Form::Typed {
                value: Box::new(returned.value),
                written,
                base,
            }
        } else if base.lent() {
            Form::MapLent
        } else {
            Form::Map
        };
    }

    /// Whether the map that went with a loan is needed back.
    pub(crate) fn map_need(&self) -> MapNeed {
        match self.lock().form {
            Form::MapLent => MapNeed::Yes,
            Form::Typed {
                written: true,
                base: Base::Map { lent: true },
                ..
            } => MapNeed::IfMerging,
            _ => MapNeed::No,
        }
    }

    /// Gives the entry back the map that went with a loan, read again from the session
    /// (`stored`) as opening read it at `now`.
    pub(crate) fn reload_map(&self, stored: Option<Value>, now: OffsetDateTime) {
        let map = stored
            .and_then(|stored| Self::open_stored(&self.namespace, stored, now))
            .map(|(contents, _, _)| contents.map)
            .unwrap_or_default();
        let mut slot = self.lock();
        slot.form = match mem::replace(&mut slot.form, Form::Map) {
            Form::Typed {
                value,
                written,
                base,
            } => Form::Typed {
                value,
                written,
                base: base.reloaded(),
            },
            Form::Lent { written, base } => Form::Lent {
                written,
                base: base.reloaded(),
            },
            Form::Map | Form::MapLent => Form::Map,
        };
        slot.contents.map = map;
        slot.size = None;
    }

    /// Whether the flush has something to do.
    pub(crate) fn is_changed(&self) -> bool {
        self.lock().changed
    }

    /// What the flush must do, and the operations behind it, recorded if `track`. Takes the data
    /// unless a controller still holds the entry (`keep`).
    ///
    /// # Errors
    ///
    /// A typed value that does not serialize to an object, holds a reserved key, nests too deep,
    /// or is over its budget.
    pub(crate) fn take_change(&self, keep: bool, track: bool) -> Result<(Change, Ops), Error> {
        let mut slot = self.lock();
        if !slot.changed || matches!(slot.form, Form::Lent { .. }) {
            // (A `Keyed` moved past the response: the flush has warned about it.)
            return Ok((Change::Nothing, Ops::default()));
        }
        if let Some(failure) = slot.failure.take() {
            return Err(failure);
        }
        self.settle(&mut slot, track)?;
        let slot = &mut *slot;
        let limits = slot.typed_limits.take();
        if let Some(limits) = limits {
            if let Some(key) = slot
                .contents
                .map
                .iter()
                .find(|(_, value)| budget::is_deeper_than(value, limits.max_depth))
                .map(|(key, _)| key.clone())
            {
                return Err(Error::TooDeep {
                    namespace: self.namespace.clone(),
                    key: Some(key),
                    limit: limits.max_depth,
                });
            }
        }
        if expiry::end_request(&mut slot.contents, slot.written_past_deadline) {
            slot.ops.purged = true;
        }
        let stored = Stored {
            map: if keep {
                slot.contents.map.clone()
            } else {
                mem::take(&mut slot.contents.map)
            },
            deadline: slot.contents.deadline,
            lifetimes: slot.contents.lifetimes.clone(),
        };
        let change = match stored.encode() {
            Some(value) => Change::Write(value),
            None if slot.in_session => Change::Remove,
            None => Change::Nothing,
        };
        if let (Some(limits), Change::Write(Value::Object(map))) = (limits, &change) {
            // The bounds settle most writes; only near the budget is every byte counted.
            let size = budget::len_against(map, limits.budget);
            if size > limits.budget {
                return Err(Error::OverBudget {
                    namespace: self.namespace.clone(),
                    key: None,
                    size,
                    limit: limits.budget,
                });
            }
        }
        slot.changed = false;
        Ok((change, mem::take(&mut slot.ops)))
    }

    /// The user's keys, turning a typed value back into a map if one stands for the namespace.
    /// A typed value that cannot be turned into a map leaves the map as it was, and fails the
    /// flush.
    fn map<'s>(&self, slot: &'s mut Slot) -> &'s mut Map<String, Value> {
        if let Err(err) = self.settle(slot, true) {
            tracing::error!(
                namespace = self.namespace,
                error = %err,
                "a typed namespace cannot be read as a map: the response fails when it is produced"
            );
            slot.failure = Some(err);
        }
        &mut slot.contents.map
    }

    /// Turns a typed value that stands for the namespace into the map, recording what its write
    /// changed if `track`.
    fn settle(&self, slot: &mut Slot, track: bool) -> Result<(), Error> {
        if !matches!(slot.form, Form::Typed { .. }) {
            return Ok(());
        }
        let (value, written, base) = match mem::replace(&mut slot.form, Form::Map) {
            Form::Typed {
                value,
                written,
                base,
            } => (value, written, base),
            other => {
                slot.form = other;
                return Ok(());
            }
        };
        let serialize = |result: Result<Value, serde_json::Error>| match result {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::NotAnObject {
                namespace: self.namespace.clone(),
            }),
            Err(source) => Err(Error::Serialize {
                namespace: self.namespace.clone(),
                key: None,
                source,
            }),
        };
        let map = serialize(value.to_value())?;
        if let Some(key) = map.keys().find(|key| stored::is_reserved(key)) {
            return Err(Error::ReservedKey { key: key.clone() });
        }
        if written && track {
            // What the write changed, against what the namespace held when it was lent.
            let default;
            let old = match base {
                Base::Map { .. } => &slot.contents.map,
                Base::Empty => {
                    default = serialize(value.default_value())?;
                    &default
                }
                Base::Unreadable { .. } => {
                    slot.ops.purged = true;
                    &Map::new()
                }
            };
            let changed = old
                .keys()
                .chain(map.keys())
                .filter(|k| old.get(*k) != map.get(*k));
            slot.ops.touched.extend(changed.cloned());
        }
        slot.contents.map = map;
        slot.size = None;
        Ok(())
    }
}

/// The keys' lifetimes once `key` gets `lifetime` (if it does).
fn lifetimes_with<'a>(
    lifetimes: &'a std::collections::BTreeMap<String, KeyDeadline>,
    key: &'a str,
    lifetime: Option<KeyDeadline>,
) -> impl Iterator<Item = (&'a str, KeyDeadline)> {
    let replaced = lifetime.is_some();
    lifetimes
        .iter()
        .filter(move |(held, _)| !(replaced && held.as_str() == key))
        .map(|(held, deadline)| (held.as_str(), *deadline))
        .chain(lifetime.map(|lifetime| (key, lifetime)))
}

impl Slot {
    /// Notes that the request touched `key`, if a merge may read it.
    fn touch(&mut self, key: &str) {
        if self.journaled {
            self.ops.touched.insert(key.to_owned());
        }
    }

    /// A write: the deadline moves as the write says.
    fn apply_write(&mut self, write: Write) {
        self.contents.deadline = write.deadline;
        self.written_past_deadline = write.past_deadline;
        self.ops.wrote = true;
        self.changed = true;
    }

    fn purge(&mut self) {
        self.contents = Stored::default();
        self.form = Form::Map;
        self.typed_limits = None;
        self.failure = None;
        self.size = None;
        self.changed = true;
        self.ops = Ops {
            purged: true,
            ..Ops::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use serde::Deserialize;
    use serde_json::json;
    use time::{macros::datetime, Duration};

    use super::*;
    use crate::{
        stored::{encode_stamp, STAMP_KEY},
        Lifetime,
    };

    const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);
    const POLICY: ExpiryPolicy = ExpiryPolicy::SlidingOnWrite(Duration::minutes(5));
    const UNLIMITED: Limits = Limits {
        budget: usize::MAX,
        max_depth: usize::MAX,
    };

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Cart {
        items: Vec<String>,
    }

    fn entry(stored: Option<Value>) -> Arc<Entry> {
        Arc::new(Entry::load("cart", Some(Id(1)), stored, NOW, true))
    }

    fn alive(map: Value) -> Value {
        let mut map = map;
        map[STAMP_KEY] = encode_stamp(NOW + Duration::minutes(1));
        map
    }

    fn written(value: &Change) -> &Value {
        match value {
            Change::Write(value) => value,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn a_corrupt_namespace_reads_as_empty_and_changes_nothing() {
        let entry = entry(Some(json!([1, 2])));
        assert!(entry.read(Map::is_empty));
        assert!(!entry.is_changed());
    }

    #[test]
    fn an_expired_namespace_reads_as_empty_and_the_flush_removes_it() {
        let entry = entry(Some(json!({ "a": 1, STAMP_KEY: encode_stamp(NOW) })));
        assert!(entry.read(Map::is_empty));
        assert_eq!(entry.take_change(false, false).unwrap().0, Change::Remove);
    }

    #[test]
    fn an_insert_over_the_budget_changes_nothing() {
        let entry = entry(None);
        let err = entry
            .insert("a".into(), json!("far too long"), None, NOW, POLICY, 8)
            .unwrap_err();
        assert!(matches!(err, Error::OverBudget { limit: 8, .. }));
        assert!(!entry.is_changed());
        assert!(entry.read(Map::is_empty));
    }

    #[test]
    fn an_insert_slides_the_stamp_and_is_written_with_its_operation() {
        let entry = entry(Some(alive(json!({ "a": 1 }))));
        entry
            .insert("b".into(), json!(2), None, NOW, POLICY, usize::MAX)
            .unwrap();
        let (change, ops) = entry.take_change(false, true).unwrap();
        let stamp = stored::stamp_after(NOW, Duration::minutes(5));
        assert_eq!(
            *written(&change),
            json!({ "a": 1, "b": 2, STAMP_KEY: encode_stamp(stamp) })
        );
        assert!(ops.wrote && ops.touched.contains("b") && !ops.purged);
    }

    #[test]
    fn removing_the_last_key_removes_the_namespace() {
        let entry = entry(Some(alive(json!({ "a": 1 }))));
        assert_eq!(entry.remove("a"), Some(json!(1)));
        assert_eq!(entry.remove("a"), None);
        assert_eq!(entry.deadline(), Deadline::default());
        assert_eq!(entry.take_change(false, false).unwrap().0, Change::Remove);
    }

    #[test]
    fn a_purge_of_a_namespace_never_stored_writes_nothing() {
        let entry = entry(None);
        entry.purge();
        let (change, ops) = entry.take_change(false, true).unwrap();
        assert_eq!(change, Change::Nothing);
        assert!(ops.purged);
    }

    #[test]
    fn a_namespace_in_its_last_request_ends_at_the_flush() {
        let entry = entry(Some(json!({ "a": 1, stored::HOPS_KEY: 1 })));
        assert!(
            entry.read(|map| map.contains_key("a")),
            "readable this request"
        );
        let (change, ops) = entry.take_change(false, true).unwrap();
        assert_eq!(change, Change::Remove);
        assert!(ops.purged && ops.counted);
    }

    #[test]
    fn sliding_on_access_writes_once_when_opened() {
        let entry = entry(Some(alive(json!({ "a": 1 }))));
        let policy = ExpiryPolicy::SlidingOnAccess(Duration::minutes(9));
        entry.open(policy, NOW).unwrap();
        assert!(entry.is_changed());
        let stamp = entry.deadline().stamp;
        entry.open(policy, NOW + Duration::seconds(1)).unwrap();
        assert_eq!(entry.deadline().stamp, stamp, "once per request");
    }

    #[test]
    fn an_unchanged_namespace_lends_its_map_and_needs_it_back_only_if_unread() {
        let entry = entry(Some(alive(json!({ "items": ["a"] }))));
        let loan = entry.open_lent::<Cart>(POLICY, NOW, false).unwrap();
        assert!(loan.stands);
        assert_eq!(loan.value.items, ["a"]);
        assert!(matches!(
            entry.open(POLICY, NOW),
            Err(Error::NamespaceInUse { .. })
        ));
        entry.take_back(Return {
            value: loan.value,
            stands: true,
            purged: false,
            write: None,
        });
        assert_eq!(entry.map_need(), MapNeed::No);
        assert_eq!(entry.read(|map| map["items"].clone()), json!(["a"]));
    }

    #[test]
    fn a_map_lent_to_a_type_that_cannot_read_it_is_needed_back() {
        let entry = entry(Some(alive(json!({ "items": "not a list" }))));
        let loan = entry.open_lent::<Cart>(POLICY, NOW, false).unwrap();
        assert!(!loan.stands);
        entry.take_back(Return {
            value: loan.value,
            stands: false,
            purged: false,
            write: None,
        });
        assert_eq!(entry.map_need(), MapNeed::Yes);
        entry.reload_map(Some(alive(json!({ "items": "not a list" }))), NOW);
        assert_eq!(entry.map_need(), MapNeed::No);
        assert_eq!(entry.read(|map| map["items"].clone()), json!("not a list"));
    }

    #[test]
    fn a_changed_namespace_keeps_its_map_when_its_type_cannot_read_it() {
        let entry = entry(Some(alive(json!({ "items": 3 }))));
        let policy = ExpiryPolicy::SlidingOnAccess(Duration::minutes(1));
        let loan = entry.open_lent::<Cart>(policy, NOW, false).unwrap();
        assert!(!loan.stands);
        entry.take_back(Return {
            value: loan.value,
            stands: false,
            purged: false,
            write: None,
        });
        assert_eq!(entry.map_need(), MapNeed::No);
        let (change, _) = entry.take_change(false, false).unwrap();
        assert_eq!(written(&change)["items"], 3);
    }

    #[test]
    fn a_typed_write_is_diffed_against_the_map_it_replaces() {
        let entry = entry(Some(alive(json!({ "items": ["a"], "note": "x" }))));
        let mut loan = entry.open_lent::<Cart>(POLICY, NOW, false).unwrap();
        loan.value.items.push("b".into());
        entry.take_back(Return {
            value: loan.value,
            stands: true,
            purged: false,
            write: Some((POLICY.write(loan.deadline, NOW), UNLIMITED)),
        });
        assert_eq!(entry.map_need(), MapNeed::IfMerging);
        entry.reload_map(Some(alive(json!({ "items": ["a"], "note": "x" }))), NOW);
        let (change, ops) = entry.take_change(false, true).unwrap();
        assert_eq!(written(&change)["items"], json!(["a", "b"]));
        assert!(ops.touched.contains("items") && ops.touched.contains("note"));
    }

    #[test]
    fn a_typed_value_holding_a_reserved_key_fails_the_flush() {
        #[derive(Default, Serialize, Deserialize)]
        struct Sneaky {
            #[serde(rename = "_timeout_hops")]
            hops: u32,
        }
        let entry = entry(None);
        let loan = entry.open_lent::<Sneaky>(POLICY, NOW, false).unwrap();
        entry.take_back(Return {
            value: loan.value,
            stands: false,
            purged: false,
            write: Some((POLICY.write(loan.deadline, NOW), UNLIMITED)),
        });
        assert!(matches!(
            entry.take_change(false, true),
            Err(Error::ReservedKey { .. })
        ));
    }

    #[test]
    fn a_typed_write_over_its_budget_fails_the_flush() {
        let entry = entry(None);
        let mut loan = entry.open_lent::<Cart>(POLICY, NOW, false).unwrap();
        loan.value.items.push("a long item name".into());
        entry.take_back(Return {
            value: loan.value,
            stands: true,
            purged: false,
            write: Some((
                POLICY.write(loan.deadline, NOW),
                Limits {
                    budget: 10,
                    ..UNLIMITED
                },
            )),
        });
        assert!(matches!(
            entry.take_change(false, true),
            Err(Error::OverBudget { limit: 10, .. })
        ));
    }

    #[test]
    fn a_namespace_held_by_another_controller_is_not_lent() {
        let registry = entry(None);
        let caller = Arc::clone(&registry);
        assert!(!caller.is_shared());
        let other = Arc::clone(&registry);
        assert!(matches!(
            caller.open_lent::<Cart>(POLICY, NOW, caller.is_shared()),
            Err(Error::NamespaceInUse { .. })
        ));
        drop(other);
    }

    #[test]
    fn a_key_lifetime_in_requests_counts_down_when_opened() {
        let entry = entry(Some(alive(json!({
            "a": 1, stored::LIFETIMES_KEY: { "a": { "hops": 2 } },
        }))));
        entry
            .set_lifetime(
                "b",
                Lifetime::Hops(NonZeroU32::MIN).deadline(NOW),
                usize::MAX,
            )
            .unwrap();
        let (change, ops) = entry.take_change(false, true).unwrap();
        assert_eq!(
            written(&change)[stored::LIFETIMES_KEY]["a"],
            json!({ "hops": 1 })
        );
        assert!(ops.touched.contains("a"));
    }

    fn stored_len(change: &Change) -> usize {
        serde_json::to_string(written(change)).unwrap().len()
    }

    #[test]
    fn the_budget_counts_the_namespace_as_stored_bookkeeping_included() {
        let probe = entry(None);
        probe
            .insert("a".into(), json!(1), None, NOW, POLICY, usize::MAX)
            .unwrap();
        let exact = stored_len(&probe.take_change(false, false).unwrap().0);
        assert!(exact > r#"{"a":1}"#.len(), "the stamp counts");

        let fits = entry(None);
        fits.insert("a".into(), json!(1), None, NOW, POLICY, exact)
            .unwrap();
        let over = entry(None);
        let err = over
            .insert("a".into(), json!(1), None, NOW, POLICY, exact - 1)
            .unwrap_err();
        assert!(matches!(err, Error::OverBudget { size, .. } if size == exact));
    }

    #[test]
    fn a_lifetime_that_would_cross_the_budget_is_refused_and_changes_nothing() {
        let entry = entry(None);
        entry
            .insert("a".into(), json!(1), None, NOW, POLICY, usize::MAX)
            .unwrap();
        let before = entry.lock().size.map(|size| size.low);
        let flash = Lifetime::Hops(NonZeroU32::MIN).deadline(NOW);
        assert!(matches!(
            entry.set_lifetime("a", flash, 40),
            Err(Error::OverBudget { .. })
        ));
        assert!(entry.lock().contents.lifetimes.is_empty());
        assert_eq!(entry.lock().size.map(|size| size.low), before);
        let (change, _) = entry.take_change(false, false).unwrap();
        assert!(written(&change).get(stored::LIFETIMES_KEY).is_none());
    }

    #[test]
    fn an_insert_with_a_lifetime_is_measured_with_it() {
        let flash = Lifetime::Hops(NonZeroU32::MIN).deadline(NOW);
        let probe = entry(None);
        probe
            .insert("a".into(), json!(1), Some(flash), NOW, POLICY, usize::MAX)
            .unwrap();
        let exact = stored_len(&probe.take_change(false, false).unwrap().0);
        let over = entry(None);
        assert!(over
            .insert("a".into(), json!(1), Some(flash), NOW, POLICY, exact - 1)
            .is_err());
        assert!(over.read(Map::is_empty));
        assert!(over.lock().contents.lifetimes.is_empty());
    }

    #[test]
    fn a_first_typed_write_touches_only_the_fields_it_changed_from_the_default() {
        #[derive(Default, Serialize, Deserialize)]
        struct Pair {
            a: Option<u32>,
            b: Option<u32>,
        }
        let entry = entry(None);
        let mut loan = entry.open_lent::<Pair>(POLICY, NOW, false).unwrap();
        assert!(!loan.stands);
        loan.value.a = Some(1);
        entry.take_back(Return {
            value: loan.value,
            stands: false,
            purged: false,
            write: Some((POLICY.write(loan.deadline, NOW), UNLIMITED)),
        });
        let (change, ops) = entry.take_change(false, true).unwrap();
        assert_eq!(written(&change)["b"], Value::Null);
        assert_eq!(ops.touched.iter().collect::<Vec<_>>(), ["a"]);
        assert!(ops.typed && !ops.purged);
    }

    #[test]
    fn a_typed_write_over_unreadable_data_replaces_it() {
        let entry = entry(Some(alive(json!({ "items": 3, "stray": 1 }))));
        let mut loan = entry.open_lent::<Cart>(POLICY, NOW, false).unwrap();
        loan.value.items.push("a".into());
        entry.take_back(Return {
            value: loan.value,
            stands: false,
            purged: false,
            write: Some((POLICY.write(loan.deadline, NOW), UNLIMITED)),
        });
        let (change, ops) = entry.take_change(false, true).unwrap();
        assert_eq!(written(&change).get("stray"), None);
        assert!(ops.purged && ops.typed);
    }

    #[test]
    fn a_typed_value_too_deep_fails_the_flush() {
        #[derive(Default, Serialize, Deserialize)]
        struct Nested {
            deep: Vec<Vec<Vec<u8>>>,
        }
        let entry = entry(None);
        let mut loan = entry.open_lent::<Nested>(POLICY, NOW, false).unwrap();
        loan.value.deep = vec![vec![vec![1]]];
        entry.take_back(Return {
            value: loan.value,
            stands: false,
            purged: false,
            write: Some((
                POLICY.write(loan.deadline, NOW),
                Limits {
                    max_depth: 2,
                    ..UNLIMITED
                },
            )),
        });
        assert!(matches!(
            entry.take_change(false, true),
            Err(Error::TooDeep { limit: 2, .. })
        ));
    }

    #[test]
    fn a_typed_value_a_runtime_controller_cannot_read_fails_the_flush_and_keeps_the_stored_map() {
        #[derive(Default, Serialize, Deserialize)]
        struct Sneaky {
            #[serde(rename = "_timeout_datestamp")]
            stamp: u32,
        }
        let entry = entry(Some(alive(json!({ "kept": 1 }))));
        let loan = entry.open_lent::<Sneaky>(POLICY, NOW, false).unwrap();
        entry.take_back(Return {
            value: loan.value,
            stands: false,
            purged: false,
            write: Some((POLICY.write(loan.deadline, NOW), UNLIMITED)),
        });
        entry.reload_map(Some(alive(json!({ "kept": 1 }))), NOW);
        entry.open(POLICY, NOW).unwrap();
        assert!(entry.read(|map| map.contains_key("kept")));
        assert!(matches!(
            entry.take_change(false, false),
            Err(Error::ReservedKey { .. })
        ));
    }
}
