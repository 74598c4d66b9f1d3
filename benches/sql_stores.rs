//! PostgreSQL and SQLite: the SQL statements a request costs, and what becomes of overlapping
//! writes of one session through two app instances, for three stores:
//!
//! - `raw`: tower-sessions-sqlx-store's store, as tower-sessions uses it;
//! - `merging+lock`: the same behind `MergingStore::with_store_lock()`;
//! - `atomic`: this crate's `stores::PostgresStore` / `stores::SqliteStore`.
//!
//! Statements are counted from sqlx's own statement log (events of the target `sqlx::query`),
//! every statement the store sent, transaction control included. The overlapping writes: a
//! session is made, then `WRITES` writes of distinct keys to it, alternating between two app
//! instances (each its own pool, store and layers), `IN_FLIGHT` at a time; a key is lost when its
//! write answered `200` and the key is not in the stored session afterwards.
//!
//! `cargo bench --bench sql_stores` (PostgreSQL at `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`: a table of its own in `public`, dropped at the end;
//! SQLite in files of its own under the temp dir, removed at the end). `ROUNDS=n` repeats the
//! overlapping writes (default 3).

use std::{
    env, fmt,
    path::{Path as FsPath, PathBuf},
    sync::Mutex,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::Path,
    http::{header, Method, Request, StatusCode},
    routing::{get, post},
    Json, Router,
};
use futures::{stream, StreamExt};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tower_sessions::{session::Expiry, SessionManagerLayer, SessionStore};
use tower_sessions_controller::{
    stores::{
        sqlx::{
            self,
            postgres::PgPoolOptions,
            sqlite::{SqliteConnectOptions, SqlitePoolOptions},
            PgPool, SqlitePool,
        },
        PostgresStore, SqliteStore,
    },
    Error, MergingStore, SessionControllerLayer, SessionControllers,
};
use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

const WRITES: usize = 240;
const IN_FLIGHT: usize = 16;

// ---------------------------------------------------------------------------------------------
// Statements, from sqlx's log
// ---------------------------------------------------------------------------------------------

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            let mut text = String::new();
            event.record(&mut Fields(&mut text));
            LOG.lock().unwrap_or_else(|p| p.into_inner()).push(text);
        }
    }
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!("{}={value} ", field.name()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Pool {
    /// Runs a marker statement and returns the statements logged since the last call, the
    /// markers left out. The pools measured have one connection: SQLite's worker logs each
    /// statement before it takes the next, so the marker comes back after they are all logged.
    async fn take(&self) -> Vec<String> {
        let marker = "select 'tsc_bench_marker'";
        match self {
            Pool::Postgres(pool) => sqlx::query(marker).execute(pool).await.map(drop),
            Pool::Sqlite(pool) => sqlx::query(marker).execute(pool).await.map(drop),
        }
        .expect("the marker statement");
        std::mem::take(&mut *LOG.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .filter(|statement| !statement.contains("tsc_bench_marker"))
            .collect()
    }

    async fn close(&self) {
        match self {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

async fn ns_read(
    Path(ns): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    Ok(Json(Value::Object(controllers.open(&ns).await?.data())))
}

async fn ns_put(
    Path((ns, key, value)): Path<(String, String, String)>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.insert(&key, value)?;
    Ok(Json(Value::Object(namespace.data())))
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/ns/{ns}", get(ns_read))
        .route("/ns/{ns}/{key}/{value}", post(ns_put))
        .layer(SessionControllerLayer::new())
        .layer(
            SessionManagerLayer::new(store)
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(time::Duration::hours(1))),
        )
}

/// One request; the status and the `id=...` cookie it set, if any.
async fn send(
    router: &Router,
    cookie: Option<&str>,
    method: Method,
    uri: &str,
) -> (StatusCode, Option<String>) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::to_owned);
    let _ = response.into_body().collect().await;
    (status, cookie)
}

// ---------------------------------------------------------------------------------------------
// The stores
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contender {
    Raw,
    MergingLock,
    Atomic,
}

impl Contender {
    const ALL: [Contender; 3] = [Contender::Raw, Contender::MergingLock, Contender::Atomic];

    fn name(self) -> &'static str {
        match self {
            Contender::Raw => "raw tower-sessions-sqlx-store",
            Contender::MergingLock => "MergingStore + with_store_lock",
            Contender::Atomic => "stores::PostgresStore / SqliteStore",
        }
    }
}

/// A database: where its pools connect, and the table.
struct Db {
    postgres: bool,
    url: String,
    path: PathBuf,
    table: String,
}

impl Db {
    async fn pool(&self, connections: u32) -> Pool {
        if self.postgres {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(connections)
                    .connect(&self.url)
                    .await
                    .unwrap_or_else(|err| panic!("PostgreSQL: {err}")),
            )
        } else {
            Pool::Sqlite(sqlite(&self.path, connections).await)
        }
    }
}

async fn sqlite(path: &FsPath, connections: u32) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .unwrap_or_else(|err| panic!("SQLite: {err}"))
}

/// Runs `body` with an app of `contender` on `pool`, the table migrated.
macro_rules! with_app {
    ($db:expr, $contender:expr, $pool:expr, |$router:ident, $store:ident| $body:expr) => {{
        let table = &$db.table;
        match ($pool.clone(), $contender) {
            (Pool::Postgres(pool), Contender::Atomic) => {
                let $store = PostgresStore::new(pool)
                    .with_schema_name("public")
                    .and_then(|s| s.with_table_name(table))
                    .expect("names");
                $store.migrate().await.expect("migrate");
                let $router = app($store.clone());
                $body
            }
            (Pool::Sqlite(pool), Contender::Atomic) => {
                let $store = SqliteStore::new(pool).with_table_name(table).expect("name");
                $store.migrate().await.expect("migrate");
                let $router = app($store.clone());
                $body
            }
            (Pool::Postgres(pool), contender) => {
                let $store = tower_sessions_sqlx_store::PostgresStore::new(pool)
                    .with_schema_name("public")
                    .and_then(|s| s.with_table_name(table))
                    .expect("names");
                $store.migrate().await.expect("migrate");
                let $router = if contender == Contender::Raw {
                    app($store.clone())
                } else {
                    app(MergingStore::new($store.clone()).with_store_lock())
                };
                $body
            }
            (Pool::Sqlite(pool), contender) => {
                let $store = tower_sessions_sqlx_store::SqliteStore::new(pool)
                    .with_table_name(table)
                    .expect("name");
                $store.migrate().await.expect("migrate");
                let $router = if contender == Contender::Raw {
                    app($store.clone())
                } else {
                    app(MergingStore::new($store.clone()).with_store_lock())
                };
                $body
            }
        }
    }};
}

/// Statements of a first write, a write, a read and an anonymous read.
async fn statements(db: &Db, contender: Contender) -> [usize; 4] {
    let pool = db.pool(1).await;
    let counts = with_app!(db, contender, pool, |router, _store| {
        pool.take().await;
        let (status, cookie) = send(&router, None, Method::POST, "/ns/cart/a/1").await;
        assert_eq!(status, StatusCode::OK);
        let cookie = cookie.expect("a cookie");
        let first = pool.take().await.len();
        let (status, _) = send(&router, Some(&cookie), Method::POST, "/ns/cart/b/2").await;
        assert_eq!(status, StatusCode::OK);
        let write = pool.take().await.len();
        let (status, _) = send(&router, Some(&cookie), Method::GET, "/ns/cart").await;
        assert_eq!(status, StatusCode::OK);
        let read = pool.take().await.len();
        let (status, _) = send(&router, None, Method::GET, "/ns/cart").await;
        assert_eq!(status, StatusCode::OK);
        let anonymous = pool.take().await.len();
        [first, write, read, anonymous]
    });
    pool.close().await;
    counts
}

/// The overlapping writes: (answered 200, answered otherwise, keys lost, wall time in ms,
/// statements per write).
async fn overlapping(db: &Db, contender: Contender) -> (usize, usize, usize, f64, f64) {
    let (pool_a, pool_b) = (db.pool(8).await, db.pool(8).await);
    let outcome = with_app!(db, contender, pool_a, |a, store| {
        with_app!(db, contender, pool_b, |b, _other| {
            let (status, cookie) = send(&a, None, Method::POST, "/ns/seed/k/v").await;
            assert_eq!(status, StatusCode::OK);
            let cookie = cookie.expect("a cookie");
            LOG.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let started = Instant::now();
            let replies: Vec<(usize, StatusCode)> = stream::iter(0..WRITES)
                .map(|i| {
                    let router = if i % 2 == 0 { a.clone() } else { b.clone() };
                    let cookie = cookie.clone();
                    async move {
                        let uri = format!("/ns/n{}/k{i}/{i}", i % 4);
                        (i, send(&router, Some(&cookie), Method::POST, &uri).await.0)
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            let wall = started.elapsed().as_secs_f64() * 1000.0;
            let sent = LOG.lock().unwrap_or_else(|p| p.into_inner()).len();
            let id = cookie
                .strip_prefix("id=")
                .and_then(|id| id.parse().ok())
                .expect("an id");
            let record = store.load(&id).await.expect("load").expect("the session");
            let ok: Vec<usize> = replies
                .iter()
                .filter(|(_, status)| *status == StatusCode::OK)
                .map(|(i, _)| *i)
                .collect();
            let lost = ok
                .iter()
                .filter(|i| {
                    record
                        .data
                        .get(&format!("n{}", *i % 4))
                        .and_then(|namespace| namespace.get(format!("k{i}")))
                        .is_none()
                })
                .count();
            (
                ok.len(),
                WRITES - ok.len(),
                lost,
                wall,
                sent as f64 / WRITES as f64,
            )
        })
    });
    pool_a.close().await;
    pool_b.close().await;
    outcome
}

fn unique(prefix: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() % 1_000_000_000);
    format!("{prefix}_{}_{millis}", std::process::id())
}

/// Drops the table (PostgreSQL) or removes the file (SQLite).
async fn clean(db: &Db) {
    if db.postgres {
        let pool = db.pool(1).await;
        if let Pool::Postgres(pool) = &pool {
            let drop = format!(r#"drop table if exists "public"."{}""#, db.table);
            if let Err(err) = sqlx::query(&drop).execute(pool).await {
                eprintln!("dropping {} failed: {err}", db.table);
            }
        }
        pool.close().await;
    } else {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = db.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture));
    let rounds: usize = env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let url = env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());

    println!("| database | store | first write | write | read | anonymous read |");
    println!("|---|---|---|---|---|---|");
    let mut runs = Vec::new();
    for postgres in [true, false] {
        let database = if postgres { "PostgreSQL" } else { "SQLite" };
        for contender in Contender::ALL {
            let table = unique("tsc_bench");
            let db = Db {
                postgres,
                url: url.clone(),
                path: env::temp_dir().join(format!("{table}.db")),
                table,
            };
            let [first, write, read, anonymous] = statements(&db, contender).await;
            println!(
                "| {database} | {} | {first} | {write} | {read} | {anonymous} |",
                contender.name()
            );
            clean(&db).await;
            for round in 0..rounds {
                let table = unique(&format!("tsc_bench_{round}"));
                let db = Db {
                    postgres,
                    url: url.clone(),
                    path: env::temp_dir().join(format!("{table}.db")),
                    table,
                };
                let outcome = overlapping(&db, contender).await;
                clean(&db).await;
                runs.push((database, contender, round, outcome));
            }
        }
    }
    println!();
    println!(
        "{WRITES} overlapping writes of distinct keys to one session, two instances, \
         {IN_FLIGHT} in flight:"
    );
    println!();
    println!("| database | store | round | answered 200 | answered an error | keys lost | wall time (ms) | statements per write |");
    println!("|---|---|---|---|---|---|---|---|");
    for (database, contender, round, (ok, failed, lost, wall, per_write)) in runs {
        println!(
            "| {database} | {} | {} | {ok} | {failed} | {lost} | {wall:.0} | {per_write:.2} |",
            contender.name(),
            round + 1
        );
    }
}
