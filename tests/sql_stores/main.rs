//! The crate's SQL stores, `stores::PostgresStore` and `stores::SqliteStore`, each test once per
//! database (`on_both!`):
//!
//! - `compat`: sessions written by tower-sessions-sqlx-store's stores read by ours, and the other
//!   way round, on the same table.
//! - `instances`: two app instances (two pools on one table): overlapping writes lose nothing; a
//!   logout or an id cycled while a slow write runs is never undone.
//! - `statements`: the SQL statements a write, a read and an anonymous read cost, counted from
//!   sqlx's own statement log.
//! - `expiry`: an expired row is never loaded nor written back; `delete_expired` removes only
//!   expired rows; a record that cannot be decoded reads as a new session.
//! - `faults`: store failures (`faults/fault_store.rs`) and a database gone.
//!
//! PostgreSQL is `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`); a test that
//! cannot reach it prints `SKIPPED ...` and passes, unless `REQUIRE_SERVICES=1`. Every test
//! makes a table of its own in the `public` schema (dropped at the end), or a SQLite file of its
//! own under the temp dir (removed at the end).

mod compat;
mod expiry;
mod faults;
mod instances;
mod statements;

#[path = "../faults/fault_store.rs"]
mod fault_store;
#[path = "../support/services.rs"]
mod services;
#[path = "../support/mod.rs"]
mod support;

use std::{
    env,
    future::Future,
    panic::AssertUnwindSafe,
    path::PathBuf,
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use axum::{
    extract::{Extension, Path},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use futures::FutureExt;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;
use tower_sessions::{
    session::{Expiry, Id, Record},
    session_store, Session, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{
    stores::{
        sqlx::{
            self,
            postgres::{PgConnectOptions, PgPoolOptions},
            sqlite::{SqliteConnectOptions, SqlitePoolOptions},
            ConnectOptions, Connection, PgPool, SqlitePool,
        },
        PostgresStore, SqliteStore,
    },
    Error, SessionControllerLayer, SessionControllers,
};

use support::routes::{ns_put, ns_read};
pub use support::{Logs, Reply, Visitor};

// ---------------------------------------------------------------------------------------------
// The databases
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A pool of either database.
#[derive(Clone, Debug)]
pub enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Pool {
    async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// One test's table: in the test PostgreSQL (schema `public`) or in a SQLite file of its own.
/// Every store and pool made here is closed, and the table dropped or the file removed, by
/// [`run`].
#[derive(Clone)]
pub struct Db {
    pub backend: Backend,
    /// The table's name, unique to the test (also in SQLite, so that statements are told apart).
    pub table: String,
    path: PathBuf,
    /// The pool of the raw statements of the tests.
    admin: Pool,
    pools: Arc<Mutex<Vec<Pool>>>,
}

/// A name no other test, and no other run, uses.
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

async fn pg_pool(connections: u32) -> Result<PgPool, String> {
    let url = services::database_url();
    let options = PgConnectOptions::from_str(&url).map_err(|err| err.to_string())?;
    // One attempt first: a pool retries until its timeout and then reports only the timeout.
    match tokio::time::timeout(services::CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
        }
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err(format!("no answer within {:?}", services::CONNECT_TIMEOUT)),
    }
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(services::CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|err| err.to_string())
}

async fn sqlite_pool(path: &PathBuf, connections: u32) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .unwrap_or_else(|err| panic!("cannot open SQLite at {}: {err}", path.display()))
}

impl Db {
    /// A fresh table for `test`, migrated by the crate's store; `None` (reported) if PostgreSQL
    /// cannot be reached.
    async fn open(backend: Backend, test: &str) -> Option<Self> {
        statements::install();
        let table = unique_name("tsc_sql");
        let path = env::temp_dir().join(format!("{table}.db"));
        let admin = match backend {
            Backend::Postgres => match pg_pool(2).await {
                Ok(pool) => Pool::Postgres(pool),
                Err(err) => {
                    services::unreachable(test, "PostgreSQL", &services::database_url(), &err);
                    return None;
                }
            },
            Backend::Sqlite => Pool::Sqlite(sqlite_pool(&path, 2).await),
        };
        let db = Self {
            backend,
            table,
            path,
            admin: admin.clone(),
            pools: Arc::new(Mutex::new(vec![admin])),
        };
        Some(db)
    }

    /// A pool of its own on the database, of up to `connections` connections.
    pub async fn pool_of(&self, connections: u32) -> Pool {
        let pool = match self.backend {
            Backend::Postgres => Pool::Postgres(pg_pool(connections).await.expect("a second pool")),
            Backend::Sqlite => Pool::Sqlite(sqlite_pool(&self.path, connections).await),
        };
        self.pools.lock().expect("pools").push(pool.clone());
        pool
    }

    async fn pool(&self) -> Pool {
        self.pool_of(8).await
    }

    /// The crate's store on a pool of its own (an app instance), the table migrated.
    pub async fn store(&self) -> Store {
        self.store_on(self.pool().await).await
    }

    /// The crate's store on `pool`, the table migrated.
    pub async fn store_on(&self, pool: Pool) -> Store {
        let store = match pool {
            Pool::Postgres(pool) => Store::Postgres(
                PostgresStore::new(pool)
                    .with_schema_name("public")
                    .and_then(|store| store.with_table_name(&self.table))
                    .expect("valid names"),
            ),
            Pool::Sqlite(pool) => Store::Sqlite(
                SqliteStore::new(pool)
                    .with_table_name(&self.table)
                    .expect("a valid name"),
            ),
        };
        store.migrate().await;
        store
    }

    /// tower-sessions-sqlx-store's store of the database on a pool of its own, on the table,
    /// migrated by its own `migrate`.
    pub async fn legacy(&self) -> Legacy {
        match self.pool().await {
            Pool::Postgres(pool) => {
                let store = tower_sessions_sqlx_store::PostgresStore::new(pool)
                    .with_schema_name("public")
                    .and_then(|store| store.with_table_name(&self.table))
                    .expect("valid names");
                store.migrate().await.expect("sqlx-store migrate");
                Legacy::Postgres(store)
            }
            Pool::Sqlite(pool) => {
                let store = tower_sessions_sqlx_store::SqliteStore::new(pool)
                    .with_table_name(&self.table)
                    .expect("a valid name");
                store.migrate().await.expect("sqlx-store migrate");
                Legacy::Sqlite(store)
            }
        }
    }

    fn qualified(&self) -> String {
        match self.backend {
            Backend::Postgres => format!(r#""public"."{}""#, self.table),
            Backend::Sqlite => format!(r#""{}""#, self.table),
        }
    }

    /// Sets the expiry date of the row of `id` to an hour ago.
    pub async fn expire(&self, id: &Id) {
        let past = OffsetDateTime::now_utc() - Duration::hours(1);
        let sql = format!(
            "update {} set expiry_date = $1 where id = $2",
            self.qualified()
        );
        let changed = match &self.admin {
            Pool::Postgres(pool) => sqlx::query(&sql)
                .bind(past)
                .bind(id.to_string())
                .execute(pool)
                .await
                .expect("expire")
                .rows_affected(),
            Pool::Sqlite(pool) => sqlx::query(&sql)
                .bind(past)
                .bind(id.to_string())
                .execute(pool)
                .await
                .expect("expire")
                .rows_affected(),
        };
        assert_eq!(changed, 1, "a row to expire under {id}");
    }

    /// Replaces the `data` of the row of `id` with `bytes`.
    pub async fn set_data(&self, id: &Id, bytes: &[u8]) {
        let sql = format!("update {} set data = $1 where id = $2", self.qualified());
        match &self.admin {
            Pool::Postgres(pool) => sqlx::query(&sql)
                .bind(bytes)
                .bind(id.to_string())
                .execute(pool)
                .await
                .map(drop),
            Pool::Sqlite(pool) => sqlx::query(&sql)
                .bind(bytes)
                .bind(id.to_string())
                .execute(pool)
                .await
                .map(drop),
        }
        .expect("set data");
    }

    /// The `data` bytes of the row of `id`, expired or not.
    pub async fn data(&self, id: &Id) -> Option<Vec<u8>> {
        let sql = format!("select data from {} where id = $1", self.qualified());
        match &self.admin {
            Pool::Postgres(pool) => sqlx::query_scalar(&sql)
                .bind(id.to_string())
                .fetch_optional(pool)
                .await
                .expect("select data"),
            Pool::Sqlite(pool) => sqlx::query_scalar(&sql)
                .bind(id.to_string())
                .fetch_optional(pool)
                .await
                .expect("select data"),
        }
    }

    /// The ids of every row, expired or not, sorted.
    pub async fn ids(&self) -> Vec<String> {
        let sql = format!("select id from {} order by id", self.qualified());
        match &self.admin {
            Pool::Postgres(pool) => sqlx::query_scalar(&sql).fetch_all(pool).await,
            Pool::Sqlite(pool) => sqlx::query_scalar(&sql).fetch_all(pool).await,
        }
        .expect("select ids")
    }

    /// The record stored under `id`, expired or not, decoded as both stores encode it.
    pub async fn record(&self, id: &Id) -> Option<Record> {
        let bytes = self.data(id).await?;
        Some(rmp_decode(&bytes))
    }

    async fn teardown(self) {
        let pools = std::mem::take(&mut *self.pools.lock().expect("pools"));
        if let Pool::Postgres(pool) = &self.admin {
            let drop = format!("drop table if exists {}", self.qualified());
            if let Err(err) = sqlx::query(&drop).execute(pool).await {
                eprintln!("clean-up: dropping table {} failed: {err}", self.table);
            }
        }
        for pool in pools {
            pool.close().await;
        }
        if self.backend == Backend::Sqlite {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut file = self.path.clone().into_os_string();
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

/// A record as both stores store it: MessagePack.
fn rmp_decode(bytes: &[u8]) -> Record {
    rmp_serde::from_slice(bytes).expect("a stored record decodes")
}

/// Runs `body` on a fresh table of `backend`, then cleans up, even if `body` panics.
pub async fn run<B, F>(backend: Backend, test: &'static str, body: B)
where
    B: FnOnce(Db) -> F,
    F: Future<Output = ()>,
{
    let Some(db) = Db::open(backend, test).await else {
        return;
    };
    let outcome = AssertUnwindSafe(body(db.clone())).catch_unwind().await;
    db.teardown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per body and per database: modules `postgres` and `sqlite` of the
/// calling module.
macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    crate::run(
                        crate::Backend::Postgres,
                        concat!(module_path!(), "::", stringify!($test)),
                        super::$test,
                    )
                    .await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    crate::run(
                        crate::Backend::Sqlite,
                        concat!(module_path!(), "::", stringify!($test)),
                        super::$test,
                    )
                    .await;
                }
            )*
        }
    };
}
pub(crate) use on_both;

// ---------------------------------------------------------------------------------------------
// The stores, either database
// ---------------------------------------------------------------------------------------------

/// The crate's store of either database.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

impl Store {
    async fn migrate(&self) {
        match self {
            Self::Postgres(store) => store.migrate().await,
            Self::Sqlite(store) => store.migrate().await,
        }
        .expect("migrate");
    }

    pub async fn delete_expired(&self) -> session_store::Result<()> {
        match self {
            Self::Postgres(store) => store.delete_expired().await,
            Self::Sqlite(store) => store.delete_expired().await,
        }
    }
}

#[async_trait]
impl SessionStore for Store {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        match self {
            Self::Postgres(store) => store.create(record).await,
            Self::Sqlite(store) => store.create(record).await,
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        match self {
            Self::Postgres(store) => store.save(record).await,
            Self::Sqlite(store) => store.save(record).await,
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self {
            Self::Postgres(store) => store.load(id).await,
            Self::Sqlite(store) => store.load(id).await,
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        match self {
            Self::Postgres(store) => store.delete(id).await,
            Self::Sqlite(store) => store.delete(id).await,
        }
    }
}

/// tower-sessions-sqlx-store's store of either database.
#[derive(Clone, Debug)]
pub enum Legacy {
    Postgres(tower_sessions_sqlx_store::PostgresStore),
    Sqlite(tower_sessions_sqlx_store::SqliteStore),
}

#[async_trait]
impl SessionStore for Legacy {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        match self {
            Self::Postgres(store) => store.create(record).await,
            Self::Sqlite(store) => store.create(record).await,
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        match self {
            Self::Postgres(store) => store.save(record).await,
            Self::Sqlite(store) => store.save(record).await,
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self {
            Self::Postgres(store) => store.load(id).await,
            Self::Sqlite(store) => store.load(id).await,
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        match self {
            Self::Postgres(store) => store.delete(id).await,
            Self::Sqlite(store) => store.delete(id).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

/// Holds a slow request between its load and its response: it says `loaded`, then waits for
/// `go`.
#[derive(Default)]
pub struct Gate {
    pub loaded: Notify,
    pub go: Notify,
}

impl Gate {
    /// Waits for the slow request to have loaded its session (at most ten seconds).
    pub async fn wait_loaded(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.loaded.notified())
            .await
            .expect("the slow request loaded its session");
    }
}

/// POST /slow/{ns}/{key}/{value}: a write that waits at the gate after its load.
async fn slow_put(
    Path((ns, key, value)): Path<(String, String, String)>,
    Extension(gate): Extension<Arc<Gate>>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.insert(&key, value)?;
    gate.loaded.notify_one();
    gate.go.notified().await;
    Ok(Json(Value::Object(namespace.data())))
}

/// POST /slow_direct/{key}/{value}: a write through `Session` itself (as
/// `support::routes::direct`) that waits at the gate after its load.
async fn slow_direct(
    Path((key, value)): Path<(String, String)>,
    Extension(gate): Extension<Arc<Gate>>,
    session: Session,
) -> StatusCode {
    let written = support::routes::write_direct(&session, &key, value).await;
    if written == StatusCode::OK {
        gate.loaded.notify_one();
        gate.go.notified().await;
    }
    written
}

/// One app instance on `store`, with `gate` for its slow routes.
pub fn app<S: SessionStore + Clone>(store: S, gate: &Arc<Gate>) -> Router {
    Router::new()
        .route("/ns/{ns}", get(ns_read))
        .route("/ns/{ns}/{key}/{value}", post(ns_put))
        .route("/slow/{ns}/{key}/{value}", post(slow_put))
        .route("/direct/{key}/{value}", post(support::routes::direct))
        .route("/slow_direct/{key}/{value}", post(slow_direct))
        .route("/logout", post(support::routes::flush))
        .route("/cycle", post(support::routes::cycle_id))
        .layer(Extension(Arc::clone(gate)))
        .layer(SessionControllerLayer::new())
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(Duration::hours(1))),
        )
}

/// The user keys of a namespace as the route reports them, or as stored (without the stamp).
pub fn keys(namespace: &Value) -> Vec<String> {
    let mut keys: Vec<String> = namespace
        .as_object()
        .map(|object| {
            object
                .keys()
                .filter(|key| {
                    *key != tower_sessions_controller::STAMP_KEY
                        && !key.starts_with("tower_sessions_controller")
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// The id in a cookie pair `id=...`.
pub fn id_of(visitor: &Visitor) -> Id {
    visitor.session_id().expect("a session cookie")
}
