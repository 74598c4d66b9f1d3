//! The crate's own session stores: each applies a request's namespace operations to the latest
//! stored record in one atomic step, so overlapping requests lose nothing, across any number of
//! app instances, with no lock record and no polling.
//!
//! They save by **compare-and-set**. A load remembers which version of the record it read (a
//! token, kept in the record's bookkeeping while the request runs). A save then asks the store to
//! replace exactly that version: when nobody else saved meanwhile, which is almost always, that is
//! the one round trip tower-sessions' own stores spend on a save. When somebody did, the store
//! answers with the latest record instead of writing, the save merges its request's operations
//! into it (as [`MergingStore`](crate::MergingStore) does) and tries again; after a bounded number
//! of tries it fails with a clear error. Within one process, the saves of one session take turns,
//! so a save only ever competes with other instances' saves. A session that is gone when its
//! request saves (a logout, an id cycled at login, an expiry) is never written back.
//!
//! - [`MemoryStore`]: in the process, the default; no feature needed.
//! - [`RedisStore`] (feature `redis`): in Redis, on a fred client (a pool, a client, a Redis
//!   Cluster), with the records of tower-sessions-redis-store.
//! - [`PostgresStore`] (feature `postgres`): in a PostgreSQL table, the one of
//!   tower-sessions-sqlx-store's `PostgresStore`.
//! - [`SqliteStore`] (feature `sqlite`): in a SQLite table, the one of
//!   tower-sessions-sqlx-store's `SqliteStore`.
//!
//! Each compares what the load read: Redis in a Lua script, the SQL stores with `update ... where
//! data = <the bytes the load read>`; so none needs a key or a column beyond those of
//! tower-sessions' own store crates, and an app switches to them keeping its sessions
//! ([`RedisStore`], [`PostgresStore`] and [`SqliteStore`] tell more).

#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
mod encoded;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(feature = "postgres")]
pub use sql::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sql::SqliteStore;
/// The sqlx this crate's SQL stores are built on (0.8), for their pools:
/// `stores::sqlx::PgPool`, `stores::sqlx::SqlitePool`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sqlx;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use async_trait::async_trait;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store;

use crate::merge;

/// How many times a save tries to replace the record before it gives up: each failed try means
/// another request of the same session saved in between (in another instance: within one, saves
/// of a session take turns). Generous, as a try is cheap and fails only to another save that
/// succeeded.
const MAX_ATTEMPTS: usize = 32;

/// What a store that saves by compare-and-set provides; [`load`], [`save`] and [`create`] make a
/// `SessionStore` of it.
#[async_trait]
pub(crate) trait CompareAndSet: Send + Sync {
    /// The record stored under `id`, if any (and not expired), with a token naming this version
    /// of it.
    async fn fetch(&self, id: &Id) -> session_store::Result<Option<(Record, String)>>;

    /// Replaces the record stored under `record.id` with `record` if the store still holds the
    /// version `seen` names; with `seen` `None`, whatever it holds, or nothing. Otherwise writes
    /// nothing and returns what the store holds now. The record is the store's to keep: a store
    /// in memory keeps it without a copy.
    async fn replace(&self, record: Record, seen: Option<&str>) -> session_store::Result<Replaced>;

    /// Stores `record` under its id if no record is stored under it; `false` if one is.
    async fn insert(&self, record: &Record) -> session_store::Result<bool>;
}

/// What [`CompareAndSet::replace`] did.
pub(crate) enum Replaced {
    /// The record is stored.
    Done,
    /// Another save came first: nothing was written; this is the latest record and its token,
    /// or `None` if none is stored any more.
    Changed(Option<(Record, String)>),
}

/// A load: the record, marked for the flush and the save with what the store saw.
pub(crate) async fn load<S: CompareAndSet>(
    store: &S,
    id: &Id,
) -> session_store::Result<Option<Record>> {
    Ok(store.fetch(id).await?.map(|(mut record, seen)| {
        merge::mark_loaded(&mut record, Some(seen));
        record
    }))
}

/// A merged save: one compare-and-set when nobody else saved since the load, a merge and another
/// try for each save that came first.
///
/// Saves of one session in this process take turns (the compare-and-set still decides): a save
/// then competes only with other instances' saves, never with a crowd of its own instance's,
/// which could otherwise keep coming first until it gives up.
pub(crate) async fn save<S: CompareAndSet>(
    store: &S,
    record: &Record,
) -> session_store::Result<()> {
    let merge::Prepared::Save(ours) = merge::prepare(record) else {
        return Ok(());
    };
    let _turn = Turn::take(ours.id).await;
    let mut seen = merge::seen(&ours);
    let mut next = merge::unmerged(&ours).map_err(|refusal| merge::refused(&ours, refusal))?;
    for _ in 0..MAX_ATTEMPTS {
        match store.replace(next, seen.as_deref()).await? {
            Replaced::Done => {
                merge::saved(&ours);
                return Ok(());
            }
            Replaced::Changed(latest) => {
                let (latest, token) =
                    latest.map_or((None, None), |(record, token)| (Some(record), Some(token)));
                next = merge::merge(&ours, latest)
                    .map_err(|refusal| merge::refused(&ours, refusal))?;
                seen = token;
            }
        }
    }
    tracing::error!(
        session = %ours.id,
        attempts = MAX_ATTEMPTS,
        "gave up saving the session: other requests of it kept saving first"
    );
    Err(session_store::Error::Backend(
        "too many concurrent saves of this session".into(),
    ))
}

/// A session's turn to save in this process, held while one save runs; released on drop.
struct Turn {
    id: Id,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// The turn of each session a save of this process holds or waits for.
fn turns() -> MutexGuard<'static, HashMap<Id, Arc<tokio::sync::Mutex<()>>>> {
    static TURNS: OnceLock<Mutex<HashMap<Id, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    TURNS
        .get_or_init(Mutex::default)
        .lock()
        // Every change to the map is one statement: a poisoned lock holds nothing half-done.
        .unwrap_or_else(PoisonError::into_inner)
}

impl Turn {
    async fn take(id: Id) -> Self {
        let mutex = Arc::clone(turns().entry(id).or_default());
        let guard = Arc::clone(&mutex).lock_owned().await;
        Self {
            id,
            mutex,
            guard: Some(guard),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = turns();
        // Nobody else holds or waits for it: the map's and ours are the only references.
        if Arc::strong_count(&self.mutex) == 2 {
            turns.remove(&self.id);
        }
    }
}

/// A new session (or one whose id was just cycled): stored under a fresh id if its id is taken.
pub(crate) async fn create<S: CompareAndSet>(
    store: &S,
    record: &mut Record,
) -> session_store::Result<()> {
    let mut stored = merge::as_stored(record);
    while !store.insert(&stored).await? {
        stored.id = Id::default();
    }
    record.id = stored.id;
    merge::saved(record);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use time::{Duration, OffsetDateTime};
    use tower_sessions::SessionStore;

    use super::*;

    /// The crate's `MemoryStore`, counting the calls its save and load make, and able to let
    /// another save in just before each of them.
    #[derive(Default)]
    struct Counted {
        store: MemoryStore,
        fetches: AtomicUsize,
        replaces: AtomicUsize,
        /// Before this many replaces, another request's save lands first.
        interleave: AtomicUsize,
    }

    #[async_trait]
    impl CompareAndSet for Counted {
        async fn fetch(&self, id: &Id) -> session_store::Result<Option<(Record, String)>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.store.fetch(id).await
        }

        async fn replace(
            &self,
            record: Record,
            seen: Option<&str>,
        ) -> session_store::Result<Replaced> {
            self.replaces.fetch_add(1, Ordering::SeqCst);
            let others = self.interleave.load(Ordering::SeqCst);
            if others > 0 {
                self.interleave.store(others - 1, Ordering::SeqCst);
                let (mut other, token) = self.store.fetch(&record.id).await?.expect("stored");
                other.data.insert(format!("other{others}"), json!(others));
                self.store.replace(other, Some(&token)).await?;
            }
            self.store.replace(record, seen).await
        }

        async fn insert(&self, record: &Record) -> session_store::Result<bool> {
            self.store.insert(record).await
        }
    }

    fn record(data: serde_json::Value) -> Record {
        Record {
            id: Id::default(),
            data: data
                .as_object()
                .expect("an object")
                .clone()
                .into_iter()
                .collect(),
            expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
        }
    }

    #[tokio::test]
    async fn an_uncontended_save_is_one_compare_and_set_after_one_load() {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let mut loaded = load(&store, &new.id).await.unwrap().expect("stored");
        loaded.data.insert("user".into(), json!("bob"));
        save(&store, &loaded).await.unwrap();

        assert_eq!(store.fetches.load(Ordering::SeqCst), 1);
        assert_eq!(store.replaces.load(Ordering::SeqCst), 1);
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert_eq!(stored.data["user"], "bob");
    }

    #[tokio::test]
    async fn a_save_that_another_came_before_merges_and_tries_again() {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let mut loaded = load(&store, &new.id).await.unwrap().expect("stored");
        loaded.data.insert("user".into(), json!("bob"));
        store.interleave.store(3, Ordering::SeqCst);
        save(&store, &loaded).await.unwrap();

        assert_eq!(store.replaces.load(Ordering::SeqCst), 4);
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert_eq!(stored.data["user"], "bob");
        for other in 1..=3 {
            assert_eq!(
                stored.data[&format!("other{other}")],
                other,
                "{:?}",
                stored.data
            );
        }
    }

    #[tokio::test]
    async fn a_save_that_keeps_losing_gives_up_with_an_error() {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let loaded = load(&store, &new.id).await.unwrap().expect("stored");
        store.interleave.store(usize::MAX, Ordering::SeqCst);
        let err = save(&store, &loaded).await.unwrap_err();
        assert!(
            err.to_string().contains("too many concurrent saves"),
            "{err}"
        );
        assert_eq!(store.replaces.load(Ordering::SeqCst), MAX_ATTEMPTS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_saves_in_one_process_take_turns_and_all_land() {
        let store = Arc::new(Counted::default());
        let mut new = record(json!({}));
        create(&*store, &mut new).await.unwrap();
        let loaded: Vec<Record> = loads(&store, new.id, 32).await;
        let saves = loaded.into_iter().enumerate().map(|(n, mut record)| {
            let store = Arc::clone(&store);
            record.data.insert(format!("key{n}"), json!(n));
            tokio::spawn(async move { save(&*store, &record).await })
        });
        for handle in saves.collect::<Vec<_>>() {
            handle.await.unwrap().unwrap();
        }

        // Each save lost at most once: to the one before it in its turn.
        assert!(store.replaces.load(Ordering::SeqCst) <= 2 * 32);
        assert!(!turns().contains_key(&new.id), "the turn is released");
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        for n in 0..32 {
            assert_eq!(stored.data[&format!("key{n}")], n, "{:?}", stored.data);
        }
    }

    /// `count` loads of the record under `id`, one after the other.
    async fn loads(store: &Counted, id: Id, count: usize) -> Vec<Record> {
        let mut loaded = Vec::with_capacity(count);
        for _ in 0..count {
            loaded.push(load(store, &id).await.unwrap().expect("stored"));
        }
        loaded
    }

    #[tokio::test]
    async fn a_loaded_session_gone_when_it_saves_is_not_written_back() {
        let store = MemoryStore::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let loaded = load(&store, &new.id).await.unwrap().expect("stored");
        store.delete(&new.id).await.unwrap();

        let err = save(&store, &loaded).await.unwrap_err();
        assert!(err.to_string().contains("ended"), "{err}");
        assert!(store.load(&new.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_expired_record_is_neither_loaded_nor_written_back() {
        let store = MemoryStore::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let mut loaded = load(&store, &new.id).await.unwrap().expect("stored");
        // Expire it in the store.
        let (mut stored, token) = store.fetch(&new.id).await.unwrap().unwrap();
        stored.expiry_date = OffsetDateTime::now_utc() - Duration::seconds(1);
        assert!(matches!(
            store.replace(stored, Some(&token)).await.unwrap(),
            Replaced::Done
        ));

        assert!(store.load(&new.id).await.unwrap().is_none());
        loaded.data.insert("late".into(), json!(1));
        assert!(save(&store, &loaded).await.is_err());
    }

    #[tokio::test]
    async fn create_never_overwrites_a_stored_session() {
        let store = MemoryStore::default();
        let mut first = record(json!({ "user": "ada" }));
        create(&store, &mut first).await.unwrap();
        let mut second = record(json!({ "user": "eve" }));
        second.id = first.id;
        create(&store, &mut second).await.unwrap();

        assert_ne!(second.id, first.id);
        let stored = store.load(&first.id).await.unwrap().unwrap();
        assert_eq!(stored.data["user"], "ada");
    }
}
