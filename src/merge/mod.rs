//! No lost updates between overlapping requests: a store wrapper that merges each save into the
//! latest stored record instead of overwriting it.
//!
//! [`MergingStore`] is the store wrapper; the locks that make a session's saves one at a time are
//! in `lock`, the journal of a request's operations and the load's mark in `journal`, the
//! record's versions (the digest of each key as stored) in `versions` and `digest`, the rebuild
//! of a record from a save and the latest stored record in `rebuild`, what a save that waits for
//! another's batch hands it in `reduced`, and the flush's own save in `flushed`. The flush
//! reaches this module only through [`is_underneath`], [`Journal`], [`Ops`] and
//! [`take_refusal`]; the crate's own stores through [`prepare`], [`merge`] (and `Reduced`) and
//! the outcomes they note.

mod digest;
mod flushed;
mod journal;
mod lock;
mod rebuild;
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
mod reduced;
mod versions;

use std::{
    borrow::Cow,
    fmt,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
};

use async_trait::async_trait;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

pub(crate) use flushed::{take_refusal, AtFlush};
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) use journal::seen;
pub(crate) use journal::{
    any_marked, is_underneath, left_by, loaded, mark_loaded, Journal, Left, Ops, SessionLimits,
    RESERVED_PREFIX,
};
use lock::SaveLocks;
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) use rebuild::Unmerged;
pub(crate) use rebuild::{as_stored, checked_unmerged, merge, patch, Refusal};
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) use rebuild::{merge_data, versioned};
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) use reduced::Reduced;

/// A map keyed by numbers this process drew itself (request numbers, held loads; a session id
/// beside one): hashed with a multiply rather than SipHash, which is for maps whose keys others
/// choose. Nobody outside the process picks these keys, so none can crowd one bucket.
pub(crate) type ByNumber<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<NumberHasher>>;

/// The hasher of [`ByNumber`]: each word in, multiplied by an odd constant; the high bits, which
/// the table uses, mix all the bits of the key.
#[derive(Default)]
pub(crate) struct NumberHasher(u64);

impl Hasher for NumberHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(29) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

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
/// - Every record it stores carries **versions**: a digest of each top-level key's value as
///   stored. A record it loads also gets this process's load mark, in memory only.
/// - The layer's flush hands the save the request's **operations** on each namespace it changed
///   (a purge, which user keys were set or removed, whether it wrote or counted a request against
///   the namespace's hops), in this process. A key's lifetime travels with the key.
/// - On save, under a per-session lock, it re-reads the latest record and rebuilds it: each
///   namespace this request changed gets exactly this request's operations applied on top of its
///   latest stored form; every other key keeps its latest stored value unless this request
///   changed it through `Session` directly and nobody else changed it meanwhile (the versions
///   tell).
/// - A session that was in the store when the request loaded it and is gone when it saves (a
///   logout, an id cycled at login, an expiry) is never written back: the save is refused, and
///   the request answers `409 Conflict` ([`Error::SessionEnded`](crate::Error::SessionEnded)).
///   So is a save whose merged namespace would cross the budget of the write that changed it
///   (`500`).
///
/// The record is untrusted input: a journal or load mark found in a stored record is dropped when
/// it is loaded, so only a request's own operations are ever applied.
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
    inner: Arc<S>,
    locks: SaveLocks,
}

impl<S> MergingStore<S> {
    /// Wraps `inner`. Saves of one session are merged one at a time within this process.
    pub fn new(inner: S) -> Self {
        Self {
            inner: Arc::new(inner),
            locks: SaveLocks::new(),
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
        self.locks.store_lock = true;
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
            .field("store_lock", &self.locks.store_lock)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for MergingStore<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A new session, or one whose id was just cycled: nobody else can have saved it.
        let mut stored = rebuild::as_stored(record);
        self.inner.create(&mut stored).await?;
        record.id = stored.id;
        saved(record, None);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let Prepared::Save(ours) = prepare(record) else {
            return Ok(());
        };
        let mut held = self.locks.acquire(&self.inner, ours.id).await?;
        let result = async {
            let latest = self.inner.load(&ours.id).await?;
            let merged =
                rebuild::merge(&ours, latest).map_err(|refusal| refused(&ours, refusal))?;
            self.inner.save(&merged).await
        }
        .await;
        // The save's outcome is the request's: a lock that outlives it only delays the next save.
        held.release().await;
        if result.is_ok() {
            saved(&ours, None);
        }
        result
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let mut record = self.inner.load(id).await?;
        if let Some(record) = &mut record {
            // This load's versions, with the mark that makes the flush leave its journal.
            mark_loaded(record, None);
        }
        Ok(record)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.inner.delete(id).await
    }
}

/// What a merging store's save of a record must do.
pub(crate) enum Prepared<'a> {
    /// Nothing: the flush saved this record, and nothing changed since.
    Nothing,
    /// Merge and store this record.
    Save(Cow<'a, Record>),
}

/// The first step of every merging store's save (see `flushed`): the session manager's save after
/// the flush's own is nothing when the record did not change since, and otherwise merges only
/// what changed since.
pub(crate) fn prepare(ours: &Record) -> Prepared<'_> {
    // The flush's own save finds nothing noted yet; the session manager's save after it finds
    // what the flush's save noted under the same request number.
    let Some(request) = journal::request_of(ours) else {
        return Prepared::Save(Cow::Borrowed(ours));
    };
    let Some(at_flush) = flushed::take_saved(ours, request) else {
        return Prepared::Save(Cow::Borrowed(ours));
    };
    // One number for the whole data: the usual answer is "unchanged".
    if flushed::unchanged(rebuild::data_of(ours), &at_flush) {
        return Prepared::Nothing;
    }
    let mut ours = ours.clone();
    journal::set_versions(&mut ours, at_flush.versions);
    Prepared::Save(Cow::Owned(ours))
}

/// The last step of a merging store's successful save of `ours` (under its final id): a flush's
/// save notes what it stored, for the session manager's save that follows. `at_flush` is that
/// when the store already has it (it stored ours as it is, [`Unmerged::at_flush`]).
pub(crate) fn saved(ours: &Record, at_flush: Option<AtFlush>) {
    if let Some(request) = journal::flushing(ours) {
        saved_by(ours, request, at_flush);
    }
}

/// [`saved`], where the store knows that `ours` is what the flush's save of `request` stored.
pub(crate) fn saved_by(ours: &Record, request: u64, at_flush: Option<AtFlush>) {
    let at_flush = at_flush.unwrap_or_else(|| AtFlush::of(rebuild::data_of(ours)));
    flushed::note_saved(ours.id, request, at_flush);
}

/// Whether `stored` holds the data of `ours`, key for key and value for value (its bookkeeping
/// aside): what a store that has its record at hand compares, cheaper than digests.
pub(crate) fn same_data(ours: &Record, stored: &Record) -> bool {
    rebuild::data_of(ours).count() == rebuild::data_of(stored).count()
        && rebuild::data_of(ours).all(|(key, value)| stored.data.get(key) == Some(value))
}

/// Whether `record` carries the versions of its own data, as every record a merging store writes
/// does.
#[cfg(test)]
pub(crate) fn holds_its_versions(record: &Record) -> bool {
    let versions = versions::Versions::value_of_data(rebuild::data_of(record));
    record.data.get(journal::VERSIONS_KEY) == Some(&versions)
}

/// The store error a refused save of `ours` answers with, logged with the session it names; a
/// flush's save also notes the refusal, for the flush to answer with.
pub(crate) fn refused(ours: &Record, refusal: Refusal) -> session_store::Error {
    tracing::warn!(session = %ours.id, "{refusal}: nothing of this request is saved");
    let error = session_store::Error::Backend(refusal.to_string());
    if let Some(request) = journal::flushing(ours) {
        flushed::note_refused(ours.id, request, refusal);
    }
    error
}
