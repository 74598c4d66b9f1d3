//! The embedded store: session records in the process's memory.

use std::{
    collections::{hash_map::Entry, HashMap},
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use super::CompareAndSet;
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
use super::{Batches, Replaced, ToStore};
use crate::merge;

/// Session records in the process's memory, merged atomically: overlapping requests of one
/// visitor lose nothing from the first line of an app.
///
/// What tower-sessions' `MemoryStore` is, with the merge of [`stores`](crate::stores): a save
/// applies its request's namespace operations to the latest record under the store's lock, in one
/// step, so it never tries twice and never waits for a batch (the stores of a server compare and
/// set; this one has the records at hand). A save whose request loaded the version still stored
/// copies only the values that request changed.
/// Records live as long as the process (or until they expire); several app instances each have
/// their own. Clones share one set of records.
///
/// # Example
///
/// ```
/// use axum::Router;
/// use tower::ServiceBuilder;
/// use tower_sessions::SessionManagerLayer;
/// use tower_sessions_controller::{stores::MemoryStore, SessionControllerLayer};
///
/// let app: Router = Router::new().layer(
///     ServiceBuilder::new()
///         .layer(SessionManagerLayer::new(MemoryStore::default()))
///         .layer(SessionControllerLayer::new()),
/// );
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<HashMap<Id, Version>>>,
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    batches: Batches,
}

/// One stored record, and how many times it was written.
struct Version {
    record: Record,
    number: u64,
    /// The request whose flush's save wrote this version as the request's session held it (not
    /// merged), if one did and the session manager's save that follows has not come yet: that save
    /// compares its record with this one.
    flushed: Option<u64>,
}

impl Version {
    fn new(record: Record, flushed: Option<u64>) -> Self {
        let mut version = Self {
            record,
            number: 0,
            flushed,
        };
        version.room();
        version
    }

    /// This version's record becomes the next one, written by the flush's save of `flushed` if
    /// that is what wrote it.
    fn written(&mut self, flushed: Option<u64>) {
        self.number = self.number.wrapping_add(1);
        self.flushed = flushed;
        self.room();
    }

    /// Readies this version to be changed: if a flush's save wrote it and the session manager's
    /// save of that request has not come yet, what the flush stored is noted for it (its whole
    /// digest and its versions: it then merges what changed since the flush, as with the other
    /// stores).
    fn changing(&mut self) {
        if let Some(request) = self.flushed.take() {
            merge::saved_by(&self.record, request, None);
        }
    }

    /// Gives the record's map room for the keys a request adds to its copies: the load's mark
    /// (see `mark_loaded`) and a namespace its flush creates. A copy of a map has its room, and
    /// one that grows rehashes every key.
    fn room(&mut self) {
        self.record.data.reserve(2);
    }
}

impl MemoryStore {
    fn records(&self) -> MutexGuard<'_, HashMap<Id, Version>> {
        // Every change to the map is one statement: a poisoned lock holds nothing half-done.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the records that have expired. Expired records are never loaded, and each is
    /// removed when its id is next asked for; this frees the memory of the others (call it now
    /// and then, for example from a task with `tokio::time::interval`).
    ///
    /// ```
    /// use tower_sessions_controller::stores::MemoryStore;
    ///
    /// let store = MemoryStore::default();
    /// store.delete_expired();
    /// ```
    pub fn delete_expired(&self) {
        let now = OffsetDateTime::now_utc();
        self.records()
            .retain(|_, stored| stored.record.expiry_date > now);
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.records().len())
            .finish()
    }
}

impl MemoryStore {
    /// Stores `ours`, a request's session, under the lock: the compare-and-set of the other
    /// stores and its merge in one step, so a save never tries twice and never waits for a batch.
    /// When the store still holds the version the request loaded, ours is patched in (only what
    /// it changed is copied, and only that is digested); otherwise its operations are merged into
    /// the latest record. `seen`: the version the request loaded, if it loaded one from this store;
    /// `flushing`: the request and its journal, when this is a flush's save.
    fn store(
        &self,
        ours: &Record,
        seen: Option<&str>,
        flushing: Option<(u64, &merge::Journal)>,
    ) -> Result<(), merge::Refusal> {
        let (flushing, journal) = flushing.unzip();
        let mut records = self.records();
        match live(&mut records, &ours.id) {
            Some(stored) if seen.is_none_or(|seen| seen.parse() == Ok(stored.number)) => {
                stored.changing();
                merge::patch(ours, journal, &mut stored.record)?;
                stored.written(flushing);
            }
            // Never stored, or not loaded from this store: ours as it is.
            None if seen.is_none() => {
                let record = merge::checked_unmerged(ours)?.into_record();
                records.insert(record.id, Version::new(record, flushing));
            }
            // Another save came first, or the session ended (then the merge refuses).
            latest => {
                let latest = latest.map(|stored| stored.record.clone());
                let merged = merge::merge(ours, latest)?;
                // The version stored is not ours: the session manager's save that follows a
                // flush's finds what ours held in the note, as with the other stores.
                match records.get_mut(&merged.id) {
                    Some(stored) => {
                        stored.changing();
                        stored.record = merged;
                        stored.written(None);
                    }
                    None => {
                        records.insert(merged.id, Version::new(merged, None));
                    }
                }
                drop(records);
                if let Some(request) = flushing {
                    merge::saved_by(ours, request, None);
                }
            }
        }
        Ok(())
    }

    /// The session manager's save of `ours` after the flush's save of `request`, when the store
    /// holds what that save stored (nobody wrote since): nothing to store if ours holds the same
    /// data, the usual case; otherwise a layer between the flush and the session manager changed
    /// the session, and exactly that is patched in. `None` when somebody wrote since (or the
    /// session is gone): then the save merges as any other.
    fn after_flush(&self, ours: &Record, request: u64) -> Option<Result<(), merge::Refusal>> {
        let mut records = self.records();
        // Expired or not: either way, the flush's save stored what there was to store.
        let stored = records
            .get_mut(&ours.id)
            .filter(|stored| stored.flushed == Some(request))?;
        stored.flushed = None;
        if merge::same_data(ours, &stored.record) {
            return Some(Ok(()));
        }
        // The flush is done: its journal, and the session's limits it carries, are gone.
        Some(merge::patch(ours, None, &mut stored.record).map(|()| stored.written(None)))
    }
}

/// The stored record under `id` that has not expired, if any; an expired one is removed.
fn live<'a>(records: &'a mut HashMap<Id, Version>, id: &Id) -> Option<&'a mut Version> {
    match records.entry(*id) {
        Entry::Occupied(stored) if stored.get().record.expiry_date > OffsetDateTime::now_utc() => {
            Some(stored.into_mut())
        }
        Entry::Occupied(expired) => {
            expired.remove();
            None
        }
        Entry::Vacant(_) => None,
    }
}

/// Loads and creates go through the compare-and-set of [`stores`](super); saves merge under the
/// lock instead ([`MemoryStore::store`]). With a store of a server built, this store also
/// replaces as they do, for the tests of their saves.
impl CompareAndSet for MemoryStore {
    async fn fetch(&self, id: &Id) -> session_store::Result<Option<(Record, String)>> {
        let mut records = self.records();
        Ok(live(&mut records, id).map(|stored| (stored.record.clone(), stored.number.to_string())))
    }

    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    async fn replace(
        &self,
        record: ToStore<'_>,
        seen: Option<&str>,
        keep: bool,
    ) -> session_store::Result<Replaced> {
        let mut records = self.records();
        let current = live(&mut records, &record.id());
        let stored = match (current, seen) {
            (Some(stored), Some(seen)) if seen.parse() != Ok(stored.number) => {
                let latest = (stored.record.clone(), stored.number.to_string());
                return Ok(Replaced::Changed(Some(latest)));
            }
            (None, Some(_)) => return Ok(Replaced::Changed(None)),
            (Some(stored), _) => {
                stored.changing();
                match record {
                    // The request's own session over the version it loaded: only what it
                    // changed is copied.
                    ToStore::Unmerged(record) => record.patch(&mut stored.record),
                    ToStore::Merged(record) => stored.record = record,
                }
                stored.written(None);
                stored
            }
            (None, None) => {
                let record = record.into_record();
                records
                    .entry(record.id)
                    .or_insert(Version::new(record, None))
            }
        };
        let kept = keep.then(|| (stored.record.clone(), stored.number.to_string()));
        Ok(Replaced::Done(kept))
    }

    async fn insert(&self, record: &Record) -> session_store::Result<bool> {
        let mut records = self.records();
        if live(&mut records, &record.id).is_some() {
            return Ok(false);
        }
        records.insert(record.id, Version::new(record.clone(), None));
        Ok(true)
    }

    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    fn batches(&self) -> &Batches {
        &self.batches
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        super::create(self, record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        // Read once: the load's number, and the version it saw.
        let loaded = merge::loaded(record);
        let seen = loaded.and_then(|loaded| loaded.seen);
        let request = loaded.map(|loaded| loaded.number);
        let stored = match request.map(|request| (request, merge::left_by(request))) {
            // The flush's own save, with the journal its flush left.
            Some((request, Some(journal))) => self.store(record, seen, Some((request, &journal))),
            // A save without a journal: the session manager's save after a flush's (then
            // `after_flush` answers it), or of a request that wrote through `Session` alone.
            Some((request, None)) => match self.after_flush(record, request) {
                Some(done) => done,
                None => match merge::prepare(record) {
                    merge::Prepared::Save(ours) => self.store(&ours, seen, None),
                    merge::Prepared::Nothing => Ok(()),
                },
            },
            None => self.store(record, seen, None),
        };
        // Logged and noted with the lock released.
        stored.map_err(|refusal| merge::refused(record, refusal))
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        super::load(self, id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.records().remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::Duration;

    use super::*;

    fn stored(store: &MemoryStore, id: &Id) -> Option<Record> {
        store.records().get(id).map(|stored| stored.record.clone())
    }

    /// A new session, stored, and loaded twice (two overlapping requests).
    async fn stored_and_loaded_twice(store: &MemoryStore) -> (Record, Record) {
        let mut new = Record {
            id: Id::default(),
            data: [("a".to_owned(), json!(1)), ("b".to_owned(), json!(1))].into(),
            expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
        };
        store.create(&mut new).await.unwrap();
        let first = store.load(&new.id).await.unwrap().expect("stored");
        let second = store.load(&new.id).await.unwrap().expect("stored");
        (first, second)
    }

    #[tokio::test]
    async fn a_save_after_another_keeps_both_changes() {
        let store = MemoryStore::default();
        let (mut first, mut second) = stored_and_loaded_twice(&store).await;
        first.data.insert("a".to_owned(), json!(2));
        second.data.insert("b".to_owned(), json!(2));

        store.save(&first).await.unwrap();
        store.save(&second).await.unwrap();

        let record = stored(&store, &first.id).expect("stored");
        assert_eq!(record.data["a"], 2, "{:?}", record.data);
        assert_eq!(record.data["b"], 2, "{:?}", record.data);
    }

    #[tokio::test]
    async fn a_loaded_session_that_expired_before_its_save_is_not_written_back() {
        let store = MemoryStore::default();
        let (mut first, _) = stored_and_loaded_twice(&store).await;
        let past = OffsetDateTime::now_utc() - Duration::seconds(1);
        store
            .records()
            .get_mut(&first.id)
            .expect("stored")
            .record
            .expiry_date = past;
        first.data.insert("a".to_owned(), json!(2));

        assert!(store.save(&first).await.is_err());
        assert!(stored(&store, &first.id).is_none());
    }

    #[tokio::test]
    async fn a_loaded_session_deleted_before_its_save_is_not_written_back() {
        let store = MemoryStore::default();
        let (mut first, _) = stored_and_loaded_twice(&store).await;
        store.delete(&first.id).await.unwrap();
        first.data.insert("a".to_owned(), json!(2));

        assert!(store.save(&first).await.is_err());
        assert!(stored(&store, &first.id).is_none());
    }
}
