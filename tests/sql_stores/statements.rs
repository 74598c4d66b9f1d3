//! The SQL statements a request costs, counted from sqlx's own statement log (events of the
//! target `sqlx::query`, which carry the statement): a global subscriber keeps every statement
//! of the run, and a test takes those that name its own table.

use std::{
    fmt,
    sync::{Mutex, Once},
};

use axum::http::StatusCode;
use serde_json::json;
use tower_sessions_controller::stores::sqlx;
use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

use crate::{app, on_both, Db, Gate, Pool, Visitor};

/// Every statement sqlx logged in this run, not yet taken.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Every event logged at `ERROR` in this run, from any test.
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The events logged at `ERROR` so far in this run (by any test: for failure messages).
pub fn errors() -> Vec<String> {
    ERRORS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone()
}

struct Capture;

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let errors = *event.metadata().level() == tracing::Level::ERROR;
        if event.metadata().target() != "sqlx::query" && !errors {
            return;
        }
        let mut text = String::new();
        event.record(&mut Fields(&mut text));
        let log = if errors { &ERRORS } else { &LOG };
        log.lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(text);
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

/// Installs the capture, once per run, before the first statement.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A test binary of its own: nobody else sets the global subscriber.
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture));
    });
}

/// The statements on `db`'s table logged since the last call, after `pool` ran everything it
/// was given: with one connection, SQLite's worker thread logs each statement before it takes
/// the next command, so a statement of our own through it comes back after all the earlier ones
/// are logged.
async fn take(db: &Db, pool: &Pool) -> Vec<String> {
    match pool {
        Pool::Postgres(pool) => sqlx::query("select 1").execute(pool).await.map(drop),
        Pool::Sqlite(pool) => sqlx::query("select 1").execute(pool).await.map(drop),
    }
    .expect("the marker statement");
    let mut log = LOG.lock().unwrap_or_else(|poison| poison.into_inner());
    let (ours, others): (Vec<String>, Vec<String>) = std::mem::take(&mut *log)
        .into_iter()
        .partition(|statement| statement.contains(&db.table));
    *log = others;
    ours
}

/// A write of a stored session is a `select` and an `update`; a read, a `select`; an
/// anonymous read, nothing; a new visitor's first write, one `insert`.
async fn statements_per_request(db: Db) {
    let pool = db.pool_of(1).await;
    let store = db.store_on(pool.clone()).await;
    let router = app(store, &Gate::default().into());
    take(&db, &pool).await;

    let mut visitor = Visitor::default();
    visitor
        .ok(&router, axum::http::Method::POST, "/ns/cart/a/1")
        .await;
    let first = take(&db, &pool).await;
    assert_eq!(first.len(), 1, "a new visitor's first write: {first:#?}");
    assert!(first[0].contains("insert into"), "{first:#?}");

    let reply = visitor.post(&router, "/ns/cart/b/2").await;
    assert_eq!(reply.json(), json!({ "a": "1", "b": "2" }));
    let write = take(&db, &pool).await;
    assert_eq!(write.len(), 2, "a write: {write:#?}");
    assert!(write[0].contains("select data"), "{write:#?}");
    assert!(write[1].contains("update"), "{write:#?}");

    let reply = visitor.get(&router, "/ns/cart").await;
    assert_eq!(reply.json(), json!({ "a": "1", "b": "2" }));
    let read = take(&db, &pool).await;
    assert_eq!(read.len(), 1, "a read: {read:#?}");
    assert!(read[0].contains("select data"), "{read:#?}");

    let mut anonymous = Visitor::default();
    let reply = anonymous.get(&router, "/ns/cart").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    assert_eq!(
        take(&db, &pool).await,
        Vec::<String>::new(),
        "an anonymous read"
    );
}

on_both!(statements_per_request);
