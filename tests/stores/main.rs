//! The crate against real session stores: one behaviour suite (`suite.rs`) run once per store by
//! `behaviour_suite!`, two app instances sharing one Redis or one PostgreSQL (`instances.rs`),
//! and a stress harness of overlapping requests on one session (`stress.rs`).
//!
//! Stores: tower-sessions' `MemoryStore`; the crate's own `stores::MemoryStore`,
//! `stores::RedisStore`, `PostgresStore` and `SqliteStore` (`atomic_sql.rs`); Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`); PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); SQLite in a file under the system's temp dir; and
//! `CachingSessionStore` (Moka in front of Redis).
//!
//! A test whose server cannot be reached prints `SKIPPED <test>: ...` with the URL and the error
//! and passes; with `REQUIRE_SERVICES=1` it fails instead.
//!
//! Runs do not interfere, and the servers are left as they were: every PostgreSQL test migrates a
//! table of its own (dropped at the end), every SQLite test a file of its own (removed at the
//! end), and every Redis record a test wrote (sessions, whose ids are random, and
//! `MergingStore`'s locks) is deleted at the end by the ids the counting store saw written.

mod atomic_sql;
mod instances;
mod stress;
mod suite;

use std::{
    env,
    future::Future,
    panic::AssertUnwindSafe,
    path::PathBuf,
    pin::Pin,
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::Path,
    http::StatusCode,
    routing::{delete, get, post},
    Json, Router,
};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower_sessions::{
    session::{Expiry, Record},
    CachingSessionStore, MemoryStore, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{
    Error, Keyed, ManualClock, MergingStore, Namespace, SessionControllerLayer, SessionControllers,
};
use tower_sessions_moka_store::MokaStore;
use tower_sessions_redis_store::{
    fred::prelude::{ClientLike, Pool},
    RedisStore,
};
use tower_sessions_sqlx_store::{
    sqlx::{
        postgres::{PgConnectOptions, PgPoolOptions},
        sqlite::{SqliteConnectOptions, SqlitePoolOptions},
        ConnectOptions, Connection, PgPool, SqlitePool,
    },
    PostgresStore, SqliteStore,
};

use services::CONNECT_TIMEOUT;

// ---------------------------------------------------------------------------------------------
// The one place where an instance's session manager is built
// ---------------------------------------------------------------------------------------------

/// The `SessionManagerLayer` of every app instance in these tests, the stress baseline's
/// included: wrap `store` here to change the store of all of them at once.
///
/// Sessions expire after an hour without a save, so a run killed before its clean-up leaves
/// nothing in Redis for long.
pub fn session_layer<S: SessionStore + Clone>(store: S) -> SessionManagerLayer<S> {
    SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(Duration::hours(1)))
}

/// One app instance: `routes` behind its own `SessionControllerLayer` (on its own
/// `ManualClock`, at [`START`]) and its own session manager on `store`.
pub struct Instance {
    pub router: Router,
    pub clock: ManualClock,
}

impl Instance {
    pub fn new<S: SessionStore + Clone>(routes: Router, store: S) -> Self {
        let clock = ManualClock::new(START);
        let router = routes
            .layer(SessionControllerLayer::new().with_clock(clock.clone()))
            .layer(session_layer(store));
        Self { router, clock }
    }

    /// As [`Instance::new`], with [`write_late`] between the session manager and the controller
    /// layer.
    pub fn with_a_late_write<S: SessionStore + Clone>(routes: Router, store: S) -> Self {
        let clock = ManualClock::new(START);
        let router = routes
            .layer(SessionControllerLayer::new().with_clock(clock.clone()))
            .layer(axum::middleware::from_fn(write_late))
            .layer(session_layer(store));
        Self { router, clock }
    }
}

/// A layer between the session manager and the controller layer that writes to the session
/// after the response is produced, so after the controller layer's flush (as a flash-message
/// layer would): the request's path under `late`.
async fn write_late(
    session: tower_sessions::Session,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    session
        .insert_value("late", json!(path))
        .await
        .expect("a session write after the flush");
    response
}

// ---------------------------------------------------------------------------------------------
// The routes of the behaviour suite
// ---------------------------------------------------------------------------------------------

/// A typed namespace.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cart {
    pub items: Vec<String>,
}

impl Namespace for Cart {
    const KEY: &'static str = "cart";
}

fn report(data: Value, expires_at: Option<OffsetDateTime>) -> Json<Value> {
    Json(json!({ "data": data, "expires_at": expires_at.map(nanos) }))
}

/// GET /ns/{ns}: what the namespace holds, and its stamp.
async fn ns_read(
    Path(ns): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let controller = controllers.open(&ns).await?;
    Ok(report(
        Value::Object(controller.data()),
        controller.expires_at(),
    ))
}

/// POST /ns/{ns}/{key}/{value}: the value is JSON if it parses, else a string.
async fn ns_put(
    Path((ns, key, value)): Path<(String, String, String)>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
    let mut controller = controllers.open(&ns).await?;
    controller.insert(&key, value)?;
    Ok(report(
        Value::Object(controller.data()),
        controller.expires_at(),
    ))
}

/// DELETE /ns/{ns}/{key}
async fn ns_remove(
    Path((ns, key)): Path<(String, String)>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(&ns).await?;
    controller.remove(&key);
    Ok(report(
        Value::Object(controller.data()),
        controller.expires_at(),
    ))
}

/// DELETE /ns/{ns}
async fn ns_purge(
    Path(ns): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(&ns).await?;
    controller.purge();
    Ok(report(
        Value::Object(controller.data()),
        controller.expires_at(),
    ))
}

/// GET /cart
async fn cart_read(cart: Keyed<Cart>) -> Json<Value> {
    report(json!(cart.items), cart.expires_at())
}

/// POST /cart/{item}
async fn cart_add(Path(item): Path<String>, mut cart: Keyed<Cart>) -> Json<Value> {
    cart.items.push(item);
    report(json!(cart.items), cart.expires_at())
}

/// DELETE /cart
async fn cart_purge(mut cart: Keyed<Cart>) -> Json<Value> {
    cart.purge();
    report(json!(cart.items), cart.expires_at())
}

/// The routes the behaviour suite and the instance tests drive.
pub fn routes() -> Router {
    Router::new()
        .route("/ns/{ns}", get(ns_read).delete(ns_purge))
        .route("/ns/{ns}/{key}", delete(ns_remove))
        .route("/ns/{ns}/{key}/{value}", post(ns_put))
        .route("/cart", get(cart_read).delete(cart_purge))
        .route("/cart/{item}", post(cart_add))
}

// ---------------------------------------------------------------------------------------------
// What the tests share with the others: the visitor, the counting store, the services
// ---------------------------------------------------------------------------------------------

#[path = "../support/services.rs"]
mod services;
#[path = "../support/mod.rs"]
mod support;

pub use services::{database_url, redis_url};
pub use support::{
    assert_stamp, nanos, seconds, send, stored_stamp, user_keys, Calls, CountingStore, Reply,
    Visitor, START,
};

/// What the routes of these tests report.
pub trait Reported {
    /// The `data` a route reported, after checking the request succeeded.
    fn data(&self) -> Value;
    /// The stamp a route reported, `None` for `null`.
    fn expires_at(&self) -> Option<OffsetDateTime>;
}

impl Reported for Reply {
    fn data(&self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        self.json()["data"].clone()
    }

    fn expires_at(&self) -> Option<OffsetDateTime> {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        let nanos = self.json()["expires_at"].as_i64()?;
        Some(OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).expect("in range"))
    }
}

// ---------------------------------------------------------------------------------------------
// The stored record, read and written straight through the store
// ---------------------------------------------------------------------------------------------

/// The visitor's whole stored record.
pub async fn record<S: SessionStore>(store: &S, visitor: &Visitor) -> Option<Record> {
    let id = visitor.session_id()?;
    store.load(&id).await.expect("store load")
}

/// The stored value of one namespace of the visitor's session.
pub async fn stored<S: SessionStore>(store: &S, visitor: &Visitor, ns: &str) -> Option<Value> {
    record(store, visitor).await?.data.get(ns).cloned()
}

/// Replaces one key of the visitor's stored record, as another writer of the store would: load
/// the record, change `data`, save.
pub async fn store_raw<S: SessionStore>(store: &S, visitor: &Visitor, ns: &str, value: Value) {
    let mut record = record(store, visitor)
        .await
        .expect("a stored record to tamper with");
    record.data.insert(ns.to_owned(), value);
    store.save(&record).await.expect("store save");
}

// ---------------------------------------------------------------------------------------------
// Connecting to the servers
// ---------------------------------------------------------------------------------------------

/// A name no other test, and no other run, uses: `<prefix>_<pid>_<time>_<counter>`.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() % 1_000_000_000);
    format!(
        "{prefix}_{}_{millis}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Redis store on a pool of its own, built with fred's defaults.
pub async fn connect_redis() -> Result<(RedisStore<Pool>, Pool), String> {
    services::connect_redis(&redis_url(), services::PoolKind::Plain).await
}

/// A PostgreSQL store on a pool of its own, on `table` (in the `public` schema), migrated.
pub async fn connect_postgres(table: &str) -> Result<(PostgresStore, PgPool), String> {
    let options = PgConnectOptions::from_str(&database_url()).map_err(|err| err.to_string())?;
    // One attempt first: a pool retries until its timeout and then reports only the timeout.
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
        }
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|err| err.to_string())?;
    let store = PostgresStore::new(pool.clone())
        .with_schema_name("public")?
        .with_table_name(table)?;
    store.migrate().await.map_err(|err| err.to_string())?;
    Ok((store, pool))
}

// ---------------------------------------------------------------------------------------------
// Fixtures: a store for one test, and its clean-up
// ---------------------------------------------------------------------------------------------

/// What to remove when the test is over.
enum Teardown {
    Nothing,
    /// Deletes the records written beneath the store under test (a `MergingStore`'s locks).
    Records(Pin<Box<dyn Future<Output = ()>>>),
    Redis(Pool),
    /// Drops the table if `drop_table`, then closes the pool.
    Postgres {
        pool: PgPool,
        table: String,
        drop_table: bool,
    },
    Sqlite {
        pool: SqlitePool,
        path: PathBuf,
    },
}

/// The store one test runs on.
pub struct Fixture<S> {
    pub store: CountingStore<S>,
    teardowns: Vec<Teardown>,
}

impl<S: SessionStore + Clone> Fixture<S> {
    fn new(store: S, teardown: Teardown) -> Self {
        Self {
            store: CountingStore::new(store),
            teardowns: vec![teardown],
        }
    }

    /// Deletes every session the test wrote, then drops its table or file and closes its
    /// clients.
    async fn teardown(self) {
        self.store.delete_written().await;
        for teardown in self.teardowns {
            teardown.run().await;
        }
    }
}

impl Teardown {
    async fn run(self) {
        match self {
            Self::Nothing => {}
            Self::Records(delete) => delete.await,
            Self::Redis(pool) => {
                let _ = pool.quit().await;
            }
            Self::Postgres {
                pool,
                table,
                drop_table,
            } => {
                if drop_table {
                    let drop = format!(r#"drop table if exists "public"."{table}""#);
                    if let Err(err) = tower_sessions_sqlx_store::sqlx::query(&drop)
                        .execute(&pool)
                        .await
                    {
                        eprintln!("clean-up: dropping table {table} failed: {err}");
                    }
                }
                pool.close().await;
            }
            Self::Sqlite { pool, path } => {
                pool.close().await;
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    match std::fs::remove_file(&file) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                        Err(err) => eprintln!("clean-up: removing {file:?} failed: {err}"),
                    }
                }
            }
        }
    }
}

pub async fn memory(_test: &'static str) -> Option<Fixture<MemoryStore>> {
    Some(Fixture::new(MemoryStore::default(), Teardown::Nothing))
}

/// The crate's own in-process store, which merges by compare-and-set.
pub async fn atomic_memory(
    _test: &'static str,
) -> Option<Fixture<tower_sessions_controller::stores::MemoryStore>> {
    Some(Fixture::new(
        tower_sessions_controller::stores::MemoryStore::default(),
        Teardown::Nothing,
    ))
}

pub async fn redis(test: &'static str) -> Option<Fixture<RedisStore<Pool>>> {
    match connect_redis().await {
        Ok((store, pool)) => Some(Fixture::new(store, Teardown::Redis(pool))),
        Err(err) => {
            services::unreachable(test, "Redis", &redis_url(), &err);
            None
        }
    }
}

pub async fn postgres(test: &'static str) -> Option<Fixture<PostgresStore>> {
    let table = unique_name("tsc_test");
    match connect_postgres(&table).await {
        Ok((store, pool)) => Some(Fixture::new(
            store,
            Teardown::Postgres {
                pool,
                table,
                drop_table: true,
            },
        )),
        Err(err) => {
            services::unreachable(test, "PostgreSQL", &database_url(), &err);
            None
        }
    }
}

pub async fn sqlite(_test: &'static str) -> Option<Fixture<SqliteStore>> {
    let path = env::temp_dir().join(format!("{}.db", unique_name("tsc_test")));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap_or_else(|err| panic!("cannot open SQLite at {}: {err}", path.display()));
    let store = SqliteStore::new(pool.clone());
    store
        .migrate()
        .await
        .unwrap_or_else(|err| panic!("cannot migrate SQLite at {}: {err}", path.display()));
    Some(Fixture::new(store, Teardown::Sqlite { pool, path }))
}

/// The crate's own Redis store, which merges by compare-and-set.
pub async fn atomic_redis(
    test: &'static str,
) -> Option<Fixture<tower_sessions_controller::stores::RedisStore<Pool>>> {
    match connect_redis().await {
        Ok((_, pool)) => Some(Fixture::new(
            tower_sessions_controller::stores::RedisStore::new(pool.clone()),
            Teardown::Redis(pool),
        )),
        Err(err) => {
            services::unreachable(test, "Redis", &redis_url(), &err);
            None
        }
    }
}

/// Moka in front of Redis.
pub async fn cached_redis(
    test: &'static str,
) -> Option<Fixture<CachingSessionStore<MokaStore, RedisStore<Pool>>>> {
    match connect_redis().await {
        Ok((store, pool)) => Some(Fixture::new(
            CachingSessionStore::new(MokaStore::new(Some(1_000)), store),
            Teardown::Redis(pool),
        )),
        Err(err) => {
            services::unreachable(test, "Redis", &redis_url(), &err);
            None
        }
    }
}

/// The same stores behind `MergingStore` (with its store lock), as a multi-instance deployment
/// runs them: the behaviour must not change.
pub async fn merging_memory(
    test: &'static str,
) -> Option<Fixture<MergingStore<CountingStore<MemoryStore>>>> {
    merging(memory(test).await)
}

pub async fn merging_redis(
    test: &'static str,
) -> Option<Fixture<MergingStore<CountingStore<RedisStore<Pool>>>>> {
    merging(redis(test).await)
}

pub async fn merging_postgres(
    test: &'static str,
) -> Option<Fixture<MergingStore<CountingStore<PostgresStore>>>> {
    merging(postgres(test).await)
}

pub async fn merging_sqlite(
    test: &'static str,
) -> Option<Fixture<MergingStore<CountingStore<SqliteStore>>>> {
    merging(sqlite(test).await)
}

/// The merge writes records of its own (its store locks) through the fixture's store, which
/// remembers them: the clean-up deletes them too, even a lock whose release failed.
fn merging<S: SessionStore + Clone + 'static>(
    fixture: Option<Fixture<S>>,
) -> Option<Fixture<MergingStore<CountingStore<S>>>> {
    let mut fixture = fixture?;
    let beneath = fixture.store.clone();
    fixture.teardowns.insert(
        0,
        Teardown::Records(Box::pin(async move { beneath.delete_written().await })),
    );
    Some(Fixture {
        store: CountingStore::new(MergingStore::new(fixture.store).with_store_lock()),
        teardowns: fixture.teardowns,
    })
}

/// Two clients of one Redis: two pools.
pub async fn redis_pair(
    test: &'static str,
) -> Option<(Fixture<RedisStore<Pool>>, CountingStore<RedisStore<Pool>>)> {
    let mut first = redis(test).await?;
    match connect_redis().await {
        Ok((store, pool)) => {
            first.teardowns.push(Teardown::Redis(pool));
            let second = first.store.sharing(store);
            Some((first, second))
        }
        Err(err) => panic!("{test}: a second Redis client failed after the first connected: {err}"),
    }
}

/// Two clients of one PostgreSQL table: two pools.
pub async fn postgres_pair(
    test: &'static str,
) -> Option<(Fixture<PostgresStore>, CountingStore<PostgresStore>)> {
    let table = unique_name("tsc_test");
    let (first_store, first_pool) = match connect_postgres(&table).await {
        Ok(connected) => connected,
        Err(err) => {
            services::unreachable(test, "PostgreSQL", &database_url(), &err);
            return None;
        }
    };
    let mut first = Fixture::new(
        first_store,
        Teardown::Postgres {
            pool: first_pool,
            table: table.clone(),
            drop_table: true,
        },
    );
    match connect_postgres(&table).await {
        Ok((store, pool)) => {
            // Close the second pool before the first drops the table.
            first.teardowns.insert(
                0,
                Teardown::Postgres {
                    pool,
                    table,
                    drop_table: false,
                },
            );
            let second = first.store.sharing(store);
            Some((first, second))
        }
        Err(err) => {
            first.teardown().await;
            panic!("{test}: a second PostgreSQL pool failed after the first connected: {err}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a test body on a fixture
// ---------------------------------------------------------------------------------------------

/// Runs `body` on the store `connect` gives for `test`, then cleans up, even if `body` panics.
/// A `None` from `connect` (a skip, already reported) ends the test there.
pub async fn run<S, C, CF, B, BF>(test: &'static str, connect: C, body: B)
where
    S: SessionStore + Clone,
    C: FnOnce(&'static str) -> CF,
    CF: Future<Output = Option<Fixture<S>>>,
    B: FnOnce(CountingStore<S>) -> BF,
    BF: Future<Output = ()>,
{
    let Some(fixture) = connect(test).await else {
        return;
    };
    let outcome = AssertUnwindSafe(body(fixture.store.clone()))
        .catch_unwind()
        .await;
    fixture.teardown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// As [`run`], for a body that takes two clients of one backend.
pub async fn run_pair<S, C, CF, B, BF>(test: &'static str, connect: C, body: B)
where
    S: SessionStore + Clone,
    C: FnOnce(&'static str) -> CF,
    CF: Future<Output = Option<(Fixture<S>, CountingStore<S>)>>,
    B: FnOnce(CountingStore<S>, CountingStore<S>) -> BF,
    BF: Future<Output = ()>,
{
    let Some((fixture, second)) = connect(test).await else {
        return;
    };
    let outcome = AssertUnwindSafe(body(fixture.store.clone(), second))
        .catch_unwind()
        .await;
    fixture.teardown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------------
// The behaviour suite, once per store
// ---------------------------------------------------------------------------------------------

/// A module `$store` holding one `#[tokio::test]` per body of `suite`, each on the store that
/// `$connect` gives. The list of bodies is written once, here.
macro_rules! behaviour_suite {
    ($store:ident, $connect:path) => {
        behaviour_suite!(@module $store, $connect, [
            write_then_read_back,
            typed_round_trip,
            stamp_slides_on_write_not_on_read,
            expired_namespace_dropped_on_open,
            write_after_expiry_persists,
            removing_last_key_removes_namespace,
            purge_removes_namespace,
            read_only_request_saves_nothing,
            write_after_the_flush_is_stored,
            visitors_are_isolated,
            corrupt_namespace_reads_as_empty,
        ]);
    };
    (@module $store:ident, $connect:path, [$($test:ident),* $(,)?]) => {
        mod $store {
            $(
                #[tokio::test]
                async fn $test() {
                    crate::run(
                        concat!(stringify!($store), "::", stringify!($test)),
                        $connect,
                        crate::suite::$test,
                    )
                    .await;
                }
            )*
        }
    };
}

behaviour_suite!(memory, crate::memory);
behaviour_suite!(atomic_memory, crate::atomic_memory);
behaviour_suite!(redis, crate::redis);
behaviour_suite!(atomic_redis, crate::atomic_redis);
behaviour_suite!(postgres, crate::postgres);
behaviour_suite!(sqlite, crate::sqlite);
behaviour_suite!(atomic_postgres, crate::atomic_sql::atomic_postgres);
behaviour_suite!(atomic_sqlite, crate::atomic_sql::atomic_sqlite);
behaviour_suite!(cached_redis, crate::cached_redis);
behaviour_suite!(merging_memory, crate::merging_memory);
behaviour_suite!(merging_redis, crate::merging_redis);
behaviour_suite!(merging_postgres, crate::merging_postgres);
behaviour_suite!(merging_sqlite, crate::merging_sqlite);
