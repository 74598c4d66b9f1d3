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
//! of tries it fails with a clear error. Through one store (and its clones), the saves of one
//! session go in batches: the saves that wait while one is under way are merged in order and
//! stored together, with one compare-and-set, so a save only ever competes with other instances'
//! saves (a waiting save hands its batch only what the merge reads of its session: the keys it
//! changed, not a copy of the whole). ([`MemoryStore`] holds its records itself: a save merges
//! into the latest one under its lock, with no second try and no batch.) A session that is gone
//! when its request saves (a logout, an id cycled at login, an expiry) is never written back.
//!
//! - [`MemoryStore`]: in the process, the default; no feature needed.
//! - [`RedisStore`] (feature `redis`): in Redis, on a fred client (a pool, a client, a Redis
//!   Cluster), with the records of tower-sessions-redis-store.
//! - [`PostgresStore`] (feature `postgres`): in a PostgreSQL table, the one of
//!   tower-sessions-sqlx-store's `PostgresStore`.
//! - [`SqliteStore`] (feature `sqlite`): in a SQLite table, the one of
//!   tower-sessions-sqlx-store's `SqliteStore`.
//!
//! Each compares what the load read: Redis with `SET ... IFEQ` (Valkey 8.1 and later, Redis 8.4
//! and later) or else a Lua script, the SQL stores with `update ... where
//! data = <the bytes the load read>`; so none needs a key or a column beyond those of
//! tower-sessions' own store crates, and an app switches to them keeping its sessions
//! ([`RedisStore`], [`PostgresStore`] and [`SqliteStore`] tell more).
// Without their features the stores are not built: their links go to the documentation built
// with every feature.
#![cfg_attr(
    not(feature = "redis"),
    doc = "\n\n[`RedisStore`]: https://docs.rs/tower-sessions-controller/latest/tower_sessions_controller/stores/struct.RedisStore.html"
)]
#![cfg_attr(
    not(feature = "postgres"),
    doc = "\n\n[`PostgresStore`]: https://docs.rs/tower-sessions-controller/latest/tower_sessions_controller/stores/struct.PostgresStore.html"
)]
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "\n\n[`SqliteStore`]: https://docs.rs/tower-sessions-controller/latest/tower_sessions_controller/stores/struct.SqliteStore.html"
)]

#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
mod batches;
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
mod encoded;
pub(crate) mod held;
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

use std::future::Future;

use tower_sessions::session::{Id, Record};
use tower_sessions::session_store;

use crate::merge;
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(crate) use batches::{save, Batches, Replaced, ToStore};

/// What a store that saves by compare-and-set provides; [`load`], `save` (in `batches`) and
/// [`create`] make a `SessionStore` of it. [`MemoryStore`] saves under its own lock and needs only
/// the load and the create.
///
/// Its methods are `async fn`s in the trait, not through `async_trait`: their futures are not
/// boxed at each call (a load allocates and fills one box less; a save boxes its batch where it
/// runs, see `batches::save`); a store implements them with `async fn`, and the compiler checks
/// that each future is `Send`.
pub(crate) trait CompareAndSet: Send + Sync {
    /// The record stored under `id`, if any (and not expired), with a token naming this version
    /// of it.
    fn fetch(
        &self,
        id: &Id,
    ) -> impl Future<Output = session_store::Result<Option<(Record, String)>>> + Send;

    /// Replaces the record stored under `record.id()` with `record` if the store still holds the
    /// version `seen` names; with `seen` `None`, whatever it holds, or nothing. Otherwise writes
    /// nothing and returns what the store holds now. A merged record is the store's to keep: a
    /// store in memory keeps it without a copy; a store of bytes encodes either kind without one.
    /// With `keep`, a replace that is done gives back the record now stored and its token
    /// (another save of the session is waiting to merge into it).
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    fn replace(
        &self,
        record: ToStore<'_>,
        seen: Option<&str>,
        keep: bool,
    ) -> impl Future<Output = session_store::Result<Replaced>> + Send;

    /// Stores `record` under its id if no record is stored under it; `false` if one is.
    fn insert(&self, record: &Record) -> impl Future<Output = session_store::Result<bool>> + Send;

    /// The saves this store (and its clones) is storing or waiting for, by session.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    fn batches(&self) -> &Batches;
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
    merge::saved(record, None);
    Ok(())
}
