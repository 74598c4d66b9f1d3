//! `stores::RedisStore` against Redis: the records of tower-sessions-redis-store both ways
//! (`compat`), two app instances on one Redis with overlapping writes, logouts and id cycles
//! racing them (`instances`), the exact Redis commands a request costs (`round_trips`, on a
//! `redis-server` of the test's own), a Redis Cluster of three shards of the test's own
//! (`cluster`), the fault schedules of `tests/faults.rs` (`faults`), and the races and round
//! trips again on a Valkey server of the test's own, whose `SET ... IFEQ` replaces the script
//! (`native`). The behaviour suite runs on the store in `tests/stores/` (`atomic_redis`).
//!
//! The shared Redis is `REDIS_URL` (default `redis://127.0.0.1:6379`); the servers of the tests'
//! own need `redis-server` and `redis-cli` on the `PATH`, and Valkey 8.1 or later
//! (`redis_server::valkey_program`: `VALKEY_SERVER`, else the one `.ci/run` fetched, else
//! `valkey-server` on the `PATH`). A test that cannot reach what it needs prints
//! `SKIPPED <test>: ...` and passes, unless `REQUIRE_SERVICES=1`. On the shared Redis the tests write only sessions under random ids, and
//! delete every one they wrote at the end (the counting store remembers them); nothing else there
//! is read, changed or reconfigured.

mod cluster;
mod compat;
mod faults;
mod instances;
mod native;
mod round_trips;
mod servers;

#[path = "../faults/fault_store.rs"]
mod fault_store;
#[path = "../support/redis_server.rs"]
mod redis_server;
#[path = "../support/services.rs"]
mod services;
#[path = "../support/mod.rs"]
mod support;

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc};

use axum::{
    extract::Path,
    http::StatusCode,
    routing::{get, post},
    Extension, Json, Router,
};
use fred::prelude::{ClientLike, Config, Pool};
use futures::FutureExt;
use serde_json::Value;
use time::Duration;
use tokio::sync::Notify;
use tower::ServiceBuilder;
use tower_sessions::{session::Expiry, Session, SessionManagerLayer, SessionStore};
use tower_sessions_controller::{
    stores::RedisStore, Error, ManualClock, SessionControllerLayer, SessionControllers,
};

use support::routes::{ns_put, ns_read};
pub use support::{send, CountingStore, Reply, Visitor, START};

/// The store under test, on a pool.
pub type Store = RedisStore<Pool>;

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/// Where a gated request stops until the test lets it go on: it says when it got there
/// (`entered`) and waits for `release`.
#[derive(Clone, Default)]
pub struct Gate {
    pub entered: Arc<Notify>,
    pub release: Arc<Notify>,
}

impl Gate {
    async fn pass(&self) {
        self.entered.notify_one();
        self.release.notified().await;
    }
}

/// POST /gated/{ns}/{key}/{value}: as `ns_put`, stopping at the gate after the write (the
/// session is loaded; the save comes after the gate).
async fn gated_put(
    Path((ns, key, value)): Path<(String, String, String)>,
    Extension(gate): Extension<Gate>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(&ns).await?;
    controller.insert(&key, value)?;
    gate.pass().await;
    Ok(Json(Value::Object(controller.data())))
}

/// POST /gated_direct/{key}/{value}: as `support::routes::direct`, stopping at the gate after the write.
async fn gated_direct(
    Path((key, value)): Path<(String, String)>,
    Extension(gate): Extension<Gate>,
    session: Session,
) -> StatusCode {
    let written = support::routes::write_direct(&session, &key, value).await;
    if written == StatusCode::OK {
        gate.pass().await;
    }
    written
}

/// POST /logout: `Session::flush`.
async fn logout(session: Session) -> StatusCode {
    match session.flush().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// POST /gated_logout: loads the session, stops at the gate, then `Session::flush`.
async fn gated_logout(session: Session, Extension(gate): Extension<Gate>) -> StatusCode {
    if session.get_value("anything").await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    gate.pass().await;
    logout(session).await
}

/// POST /cycle: `Session::cycle_id`, as a login does.
async fn cycle(session: Session) -> StatusCode {
    match session.cycle_id().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The routes of these tests, with `gate` for the gated ones.
pub fn routes(gate: Gate) -> Router {
    Router::new()
        .route("/ns/{ns}", get(ns_read))
        .route("/ns/{ns}/{key}/{value}", post(ns_put))
        .route("/gated/{ns}/{key}/{value}", post(gated_put))
        .route("/direct/{key}/{value}", post(support::routes::direct))
        .route("/gated_direct/{key}/{value}", post(gated_direct))
        .route("/logout", post(logout))
        .route("/gated_logout", post(gated_logout))
        .route("/cycle", post(cycle))
        .layer(Extension(gate))
}

/// One app instance on `store`: `routes` behind its own controller layer (on its own clock) and
/// session manager, applied with one `ServiceBuilder` as the README shows.
pub fn app<S: SessionStore + Clone>(routes: Router, store: S) -> Router {
    routes.layer(
        ServiceBuilder::new()
            .layer(
                SessionManagerLayer::new(store)
                    .with_secure(false)
                    .with_expiry(Expiry::OnInactivity(Duration::hours(1))),
            )
            .layer(SessionControllerLayer::new().with_clock(ManualClock::new(START))),
    )
}

// ---------------------------------------------------------------------------------------------
// The shared Redis
// ---------------------------------------------------------------------------------------------

/// A connected pool on the Redis at `url`, or why not.
pub async fn connect(url: &str) -> Result<Pool, String> {
    let config = Config::from_url(url).map_err(|err| err.to_string())?;
    let pool = Pool::new(config, None, None, None, 4).map_err(|err| err.to_string())?;
    match tokio::time::timeout(services::CONNECT_TIMEOUT, pool.init()).await {
        Ok(Ok(_)) => Ok(pool),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {:?}", services::CONNECT_TIMEOUT)),
    }
}

/// Two clients (pools) of the shared Redis, as two app instances have: the store under test on
/// each, counting into one set of written ids.
pub struct Shared {
    pub a: CountingStore<Store>,
    pub b: CountingStore<Store>,
    pub pools: Vec<Pool>,
}

/// Runs `body` on two clients of the shared Redis, then deletes every session written through
/// them (and through any store `body` made with `sharing`), even if `body` panics.
pub async fn on_redis<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce(Shared) -> Fut,
    Fut: Future<Output = ()>,
{
    on_server(test, "Redis", &services::redis_url(), body).await;
}

/// Runs `body` as [`on_redis`] does, on a Valkey server of the test's own (one with a
/// compare-and-set of its own, `SET ... IFEQ`), stopped at the end.
pub async fn on_valkey<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce(Shared) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(valkey) = servers::own_valkey(test) else {
        return;
    };
    on_server(test, "Valkey", &valkey.url(), body).await;
}

/// Runs `body` on two clients of the server `service` at `url`, then deletes every session
/// written through them, even if `body` panics.
async fn on_server<F, Fut>(test: &'static str, service: &str, url: &str, body: F)
where
    F: FnOnce(Shared) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut pools = Vec::new();
    for _ in 0..2 {
        match connect(url).await {
            Ok(pool) => pools.push(pool),
            Err(err) => {
                services::unreachable(test, service, url, &err);
                return;
            }
        }
    }
    let a = CountingStore::new(RedisStore::new(pools[0].clone()));
    let b = a.sharing(RedisStore::new(pools[1].clone()));
    let cleanup = a.clone();
    let shared = Shared {
        a,
        b,
        pools: pools.clone(),
    };
    let outcome = AssertUnwindSafe(body(shared)).catch_unwind().await;
    cleanup.delete_written().await;
    for pool in pools {
        let _ = pool.quit().await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Whether Redis holds a key for the session `id` (read straight, not through a store).
pub async fn exists(pool: &Pool, id: &str) -> bool {
    use fred::interfaces::KeysInterface;
    let count: i64 = pool.exists(id).await.expect("EXISTS");
    count == 1
}

/// The user keys (those not starting with `_`) of namespace `ns` in the record stored under `id`, through `store`.
pub async fn stored_keys<S: SessionStore>(
    store: &S,
    id: &tower_sessions::session::Id,
    ns: &str,
) -> Vec<String> {
    let Some(record) = store.load(id).await.expect("load") else {
        return Vec::new();
    };
    let Some(Value::Object(namespace)) = record.data.get(ns) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = namespace
        .keys()
        .filter(|key| !key.starts_with('_'))
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// The top-level value `key` of the record stored under `id`, through `store`.
pub async fn stored_value<S: SessionStore>(
    store: &S,
    id: &tower_sessions::session::Id,
    key: &str,
) -> Option<Value> {
    let record = store.load(id).await.expect("load")?;
    record.data.get(key).cloned()
}

/// Checks `reply` is the `409` of a session that ended while the request ran.
pub fn assert_session_ended(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::CONFLICT, "{what}: {reply:?}");
    assert!(
        reply.body.contains("the session ended"),
        "{what}: {}",
        reply.body
    );
}
