//! Store faults: what a request answers, and what stays stored, when the session store fails or
//! is slow. The store under test is `MemoryStore` or the local Redis
//! (`tower-sessions-redis-store`), behind [`FaultStore`](fault_store::FaultStore), which fails or
//! delays `load`, `create`, `save` or `delete` on a schedule; each runs bare, behind
//! `MergingStore`, and behind `MergingStore::with_store_lock()`.
//!
//! What this file proves, on both stores and all three stacks:
//!
//! - **Every single store call a request makes, faulted in turn** (`every_store_call_*`): each
//!   request kind (read, write of two namespaces, removal, purge, a typed `Keyed` write, a new
//!   visitor's first write, a logout through `Session::flush`) is run once without faults to learn its store calls, then once per
//!   call and per fault: the call fails before reaching the store, fails after doing its work (a
//!   timeout after the write), or is delayed. A failure answers `500` with no store message in
//!   the body and no cookie, and is logged at `ERROR`; a delay changes nothing. Afterwards the
//!   stored records are exactly the old ones (a failure before the store) or either the old or
//!   the new ones (a failure after the store did its work): never a mix, never a namespace half
//!   written, never a second record. The next request on the session succeeds.
//! - **A store that fails every call**: requests that need it answer `500`; requests that do not
//!   (a route without session, an anonymous visitor reading a namespace) answer as the handler
//!   does.
//! - **Every third save fails** (`every_third_save_*`): of a visitor's writes, exactly those
//!   whose save failed answer `500` and are missing from the store.
//! - **Random faults on a sequence of requests** (`random_faults_*`): after each request, the
//!   stored namespaces equal a model that applies exactly the requests answered `200`. Also on
//!   the crate's own `stores::MemoryStore` and `stores::RedisStore`, which merge by themselves
//!   (no `MergingStore` above them).
//! - **No lost updates under faults** (`overlapping_requests_*`): overlapping requests on one
//!   session behind `MergingStore`, with random delays on every store call and random failures
//!   of loads, saves and lock `create`s. Every request answered `200` has both of its changes
//!   (an insert in one namespace and a removal in another) in the final record; every request
//!   answered `500` has neither. The same load without `MergingStore` loses about two thirds of
//!   them, so the harness does overlap requests.
//!
//! The store lock of `MergingStore::with_store_lock()`: a failed release does not fail a request
//! whose save was stored, and a lock left behind (a failed release, or a `create` that stored the
//! lock and reported an error) is cleared by the instance's next save of the session. A
//! limitation of the Redis store is kept as an `#[ignore]`d test that fails today: a write whose record vanishes between the request's load and
//! its save answers `200` and is lost (`a_write_answered_200_is_stored_*_on_redis`, `#[ignore]`d;
//! the same test passes on memory). The crate's own `stores::RedisStore` does not have it
//! (`tests/redis_store/faults.rs`).
//!
//! Redis is `REDIS_URL` (default `redis://127.0.0.1:6379`); without it the Redis tests print
//! `SKIPPED ...` and pass, unless `REQUIRE_SERVICES=1`. Every Redis record a test wrote is
//! deleted at its end, and nothing else on that server is touched.
//!
//! `faults/redis_restart.rs`: Redis stopped and started again under a running app, on a
//! `redis-server` the test starts for itself.

#[path = "faults/fault_store.rs"]
mod fault_store;
#[path = "faults/redis_restart.rs"]
mod redis_restart;
#[path = "support/redis_server.rs"]
mod redis_server;
#[path = "support/services.rs"]
mod services;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration as StdDuration,
};

use axum::{
    extract::Path,
    http::{Method, StatusCode},
    routing::{delete, get, post},
    Json, Router,
};
use futures::{stream, FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::Duration;
use tower_sessions::{
    session::{Expiry, Id, Record},
    MemoryStore, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{
    stores, Error, Keyed, ManualClock, MergingStore, Namespace, SessionControllerLayer,
    SessionControllers, STAMP_KEY,
};
use tower_sessions_redis_store::{
    fred::prelude::{ClientLike, Pool},
    RedisStore,
};

use fault_store::{Fault, FaultStore, Jitter, Op, Pick, SECRET};
use services::PoolKind;
use support::{
    routes::{ns_put, ns_read},
    send, Logs, Reply, Visitor, START,
};

/// The body of a `500` for a store failure while a namespace loads.
const STORE_UNAVAILABLE: &str = "session store unavailable";
/// How long a `Fault::Delay` waits.
const DELAY: StdDuration = StdDuration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Basket {
    items: Vec<String>,
}

impl Namespace for Basket {
    const KEY: &'static str = "basket";
}

/// DELETE /ns/{ns}/{key}
async fn ns_remove(
    Path((ns, key)): Path<(String, String)>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.remove(&key);
    Ok(Json(Value::Object(namespace.data())))
}

/// DELETE /ns/{ns}
async fn ns_purge(
    Path(ns): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.purge();
    Ok(Json(Value::Object(namespace.data())))
}

/// POST /pair/{key}/{value}: the same key and value into two namespaces, `cart` and `wizard`.
async fn pair(
    Path((key, value)): Path<(String, String)>,
    controllers: SessionControllers,
) -> Result<&'static str, Error> {
    controllers.open("cart").await?.insert(&key, &value)?;
    controllers.open("wizard").await?.insert(&key, &value)?;
    Ok("paired")
}

/// POST /basket/{item}: a typed write.
async fn basket_add(Path(item): Path<String>, mut basket: Keyed<Basket>) -> Json<Value> {
    basket.items.push(item);
    Json(json!(basket.items))
}

/// POST /logout: `Session::flush`, the store's `delete`; a store failure is the handler's `500`.
async fn logout(session: tower_sessions::Session) -> Result<&'static str, StatusCode> {
    session
        .flush()
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok("logged out")
}

/// GET /plain: a route that never touches the session.
async fn plain() -> &'static str {
    "plain"
}

/// The namespace request `i` of the overlap tests inserts into, and the one it removes from.
fn overlap_namespaces(i: usize) -> (String, String) {
    (format!("ns{}", i % 4), format!("ns{}", (i + 1) % 4))
}

/// POST /seed/{n}: key `r{i}` into namespace `ns{(i + 1) % 4}` for every `i < n`.
async fn seed_many(
    Path(n): Path<usize>,
    controllers: SessionControllers,
) -> Result<&'static str, Error> {
    for i in 0..n {
        let (_, from) = overlap_namespaces(i);
        controllers.open(&from).await?.insert(&format!("r{i}"), i)?;
    }
    Ok("seeded")
}

/// POST /overlap/{i}: inserts `a{i}` into one namespace and removes `r{i}` from another.
async fn overlap(
    Path(i): Path<usize>,
    controllers: SessionControllers,
) -> Result<&'static str, Error> {
    let (into, from) = overlap_namespaces(i);
    controllers.open(&into).await?.insert(&format!("a{i}"), i)?;
    controllers.open(&from).await?.remove(&format!("r{i}"));
    Ok("done")
}

fn routes() -> Router {
    Router::new()
        .route("/ns/{ns}", get(ns_read).delete(ns_purge))
        .route("/ns/{ns}/{key}", delete(ns_remove))
        .route("/ns/{ns}/{key}/{value}", post(ns_put))
        .route("/pair/{key}/{value}", post(pair))
        .route("/basket/{item}", post(basket_add))
        .route("/plain", get(plain))
        .route("/logout", post(logout))
        .route("/seed/{n}", post(seed_many))
        .route("/overlap/{i}", post(overlap))
}

// ---------------------------------------------------------------------------------------------
// Apps and visitors
// ---------------------------------------------------------------------------------------------

/// What sits between `SessionManagerLayer` and the fault-injecting store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Bare,
    Merging,
    MergingLock,
}

const STACKS: [Stack; 3] = [Stack::Bare, Stack::Merging, Stack::MergingLock];

fn session_layer<S: SessionStore + Clone>(store: S) -> SessionManagerLayer<S> {
    // Records expire an hour after their last save, so a killed run leaves little in Redis.
    SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(Duration::hours(1)))
}

/// The routes behind the controller layer (on `clock`) and a session manager on `store` through
/// `stack`.
fn app<B: SessionStore + Clone>(
    store: &FaultStore<B>,
    stack: Stack,
    clock: &ManualClock,
) -> Router {
    let routes = routes().layer(SessionControllerLayer::new().with_clock(clock.clone()));
    match stack {
        Stack::Bare => routes.layer(session_layer(store.clone())),
        Stack::Merging => routes.layer(session_layer(MergingStore::new(store.clone()))),
        Stack::MergingLock => routes.layer(session_layer(
            MergingStore::new(store.clone()).with_store_lock(),
        )),
    }
}

/// The data of every non-empty record the store holds among the ids written through `store`,
/// sorted: the whole stored state a test made (a `MergingStore` lock record holds no data).
async fn stored_records<B: SessionStore + Clone>(store: &FaultStore<B>) -> Vec<Value> {
    let mut records = Vec::new();
    for id in store.ids() {
        let record = store.inner.load(&id).await.expect("a load without faults");
        if let Some(record) = record.filter(|record| !is_lock(record)) {
            let data: Map<String, Value> = record.data.into_iter().collect();
            records.push(Value::Object(data));
        }
    }
    records.sort_by_key(Value::to_string);
    records
}

/// Whether `record` is a lock record of `MergingStore::with_store_lock` (it holds only the name of
/// the instance that took it), or an empty one.
fn is_lock(record: &Record) -> bool {
    record
        .data
        .keys()
        .all(|key| key == "tower_sessions_controller.lock_owner")
}

/// Lock records (`MergingStore::with_store_lock`) among the ids written through `store`.
async fn lock_records<B: SessionStore + Clone>(store: &FaultStore<B>) -> usize {
    let mut locks = 0;
    for id in store.ids() {
        let record = store.inner.load(&id).await.expect("a load without faults");
        if record.is_some_and(|record| is_lock(&record)) {
            locks += 1;
        }
    }
    locks
}

/// What the fault store's errors carry (connection details, a password): never in a body.
const INJECTED_WORDS: [&str; 4] = [SECRET, "hunter2", "injected", "10.0.0.7"];

/// Checks a `500` caused by an injected fault: see [`assert_store_failure`].
fn assert_clear_failure(reply: &Reply, what: &str) {
    assert_store_failure(reply, what, &INJECTED_WORDS);
}

/// Checks a `500` caused by the store: a body that says so or nothing (tower-sessions answers a
/// failed save with an empty `500`), none of the store's own `words`, and no cookie.
fn assert_store_failure(reply: &Reply, what: &str, words: &[&str]) {
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{what}: {reply:?}"
    );
    assert!(
        reply.body == STORE_UNAVAILABLE || reply.body.is_empty(),
        "{what}: unexpected body {:?}",
        reply.body
    );
    assert_no_leak(reply, what, words);
    assert_eq!(
        reply.set_cookie, None,
        "{what}: a failed request set a cookie"
    );
}

fn assert_no_leak(reply: &Reply, what: &str, words: &[&str]) {
    for word in words {
        assert!(
            !reply.body.contains(word),
            "{what}: the body leaks the store's message: {:?}",
            reply.body
        );
    }
}

/// Checks the fault was logged at `ERROR`, with the store's message (the details go to the log).
fn assert_logged(logs: &Logs, what: &str) {
    assert!(
        logs.lines_at("ERROR")
            .iter()
            .any(|line| line.contains("injected fault")),
        "{what}: the store failure is not logged at ERROR:\n{}",
        logs.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Running on a backend, with clean-up
// ---------------------------------------------------------------------------------------------

/// Every fault store a test made, for the clean-up of what they wrote.
#[derive(Clone)]
struct Made<B>(Arc<Mutex<Vec<FaultStore<B>>>>);

impl<B> Default for Made<B> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<B: SessionStore + Clone> Made<B> {
    fn track(&self, store: &FaultStore<B>) {
        self.0.lock().expect("stores").push(store.clone());
    }

    async fn clean_up(&self) {
        let stores = self.0.lock().expect("stores").clone();
        for store in stores {
            for id in store.ids() {
                if let Err(err) = store.inner.delete(&id).await {
                    eprintln!("clean-up: deleting session {id} failed: {err}");
                }
            }
        }
    }
}

/// A backend: makes fault stores over one memory store each, or over the shared Redis.
#[derive(Clone)]
struct Backend<B> {
    name: &'static str,
    make: Arc<dyn Fn() -> B + Send + Sync>,
    made: Made<B>,
}

impl<B: SessionStore + Clone> Backend<B> {
    fn store(&self) -> FaultStore<B> {
        let store = FaultStore::new((self.make)());
        self.made.track(&store);
        store
    }
}

fn memory() -> Backend<MemoryStore> {
    Backend {
        name: "memory",
        make: Arc::new(MemoryStore::default),
        made: Made::default(),
    }
}

/// Runs `body` on the Redis backend, then deletes everything it stored, even if `body` panics.
/// Skips (or fails under `REQUIRE_SERVICES=1`) without Redis.
async fn on_redis<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce(Backend<RedisStore<Pool>>) -> Fut,
    Fut: Future<Output = ()>,
{
    on_redis_as(test, "redis", RedisStore::new, body).await;
}

/// [`on_redis`] with the stores `store` makes of the shared Redis's pool.
async fn on_redis_as<B, F, Fut>(
    test: &'static str,
    name: &'static str,
    store: fn(Pool) -> B,
    body: F,
) where
    B: SessionStore + Clone,
    F: FnOnce(Backend<B>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some((_, pool)) = services::redis(test, PoolKind::Plain).await else {
        return;
    };
    let shared = pool.clone();
    let backend = Backend {
        name,
        make: Arc::new(move || store(shared.clone())),
        made: Made::default(),
    };
    let made = backend.made.clone();
    let outcome = AssertUnwindSafe(body(backend)).catch_unwind().await;
    made.clean_up().await;
    let _ = pool.quit().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------------
// Every store call of every request kind, faulted in turn
// ---------------------------------------------------------------------------------------------

/// A request kind of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    WriteTwo,
    Remove,
    Purge,
    Typed,
    /// A visitor without a session writes: the store's `create`.
    FirstWrite,
    /// A visitor without a session reads: no store call.
    AnonymousRead,
    /// A route that never touches the session.
    Plain,
    /// `Session::flush`: the store's `delete`.
    Logout,
}

const KINDS: [Kind; 9] = [
    Kind::Read,
    Kind::WriteTwo,
    Kind::Remove,
    Kind::Purge,
    Kind::Typed,
    Kind::FirstWrite,
    Kind::AnonymousRead,
    Kind::Plain,
    Kind::Logout,
];

impl Kind {
    fn request(self) -> (Method, &'static str) {
        match self {
            Kind::Read | Kind::AnonymousRead => (Method::GET, "/ns/cart"),
            Kind::WriteTwo => (Method::POST, "/pair/b/2"),
            Kind::Remove => (Method::DELETE, "/ns/cart/a"),
            Kind::Purge => (Method::DELETE, "/ns/wizard"),
            Kind::Typed => (Method::POST, "/basket/pear"),
            Kind::FirstWrite => (Method::POST, "/ns/cart/a/1"),
            Kind::Plain => (Method::GET, "/plain"),
            Kind::Logout => (Method::POST, "/logout"),
        }
    }

    fn seeded(self) -> bool {
        !matches!(self, Kind::FirstWrite | Kind::AnonymousRead)
    }
}

/// A fresh app on a fresh fault store, its visitor seeded (for a seeded kind) with `cart`
/// `{a, z}`, `wizard` `{step}` and a `basket`; the clock then moves a minute so that the request's
/// writes stamp differently from the seed's.
async fn prepared<B: SessionStore + Clone>(
    backend: &Backend<B>,
    stack: Stack,
    kind: Kind,
) -> (FaultStore<B>, Router, Visitor) {
    let store = backend.store();
    let clock = ManualClock::new(START);
    let router = app(&store, stack, &clock);
    let mut visitor = Visitor::default();
    if kind.seeded() {
        for uri in [
            "/ns/cart/a/1",
            "/ns/cart/z/9",
            "/ns/wizard/step/1",
            "/basket/apple",
        ] {
            visitor.ok(&router, Method::POST, uri).await;
        }
    }
    clock.advance(Duration::minutes(1));
    store.take_log();
    (store, router, visitor)
}

/// What a fault-free request did.
struct Baseline {
    calls: Vec<Op>,
    status: StatusCode,
    body: String,
    old: Vec<Value>,
    new: Vec<Value>,
}

async fn baseline<B: SessionStore + Clone>(
    backend: &Backend<B>,
    stack: Stack,
    kind: Kind,
) -> Baseline {
    let (store, router, mut visitor) = prepared(backend, stack, kind).await;
    let old = stored_records(&store).await;
    let (method, uri) = kind.request();
    let reply = visitor.send(&router, method, uri).await;
    let calls = store.take_log();
    Baseline {
        calls,
        status: reply.status,
        body: reply.body,
        old,
        new: stored_records(&store).await,
    }
}

/// The store calls each kind makes on each stack: what the table faults. A request that changes
/// nothing makes no save; `MergingStore` adds a load of the latest record to a save, and its
/// store lock a `create` and a `delete` around them.
fn expected_calls(stack: Stack, kind: Kind) -> Vec<Op> {
    use Op::*;
    let save = match stack {
        Stack::Bare => vec![Load, Save],
        Stack::Merging => vec![Load, Load, Save],
        Stack::MergingLock => vec![Load, Create, Load, Save, Delete],
    };
    match kind {
        Kind::Read => vec![Load],
        Kind::WriteTwo | Kind::Remove | Kind::Purge | Kind::Typed => save,
        Kind::FirstWrite => vec![Create],
        Kind::Logout => vec![Delete],
        Kind::AnonymousRead | Kind::Plain => vec![],
    }
}

/// Whether the case fails the release of `MergingStore::with_store_lock`'s lock (its `delete`,
/// after the save): the save is stored, so the request succeeds, and the next save clears a lock
/// left behind.
fn is_lock_release(stack: Stack, kind: Kind, op: Op) -> bool {
    stack == Stack::MergingLock
        && op == Op::Delete
        && matches!(
            kind,
            Kind::WriteTwo | Kind::Remove | Kind::Purge | Kind::Typed
        )
}

/// Counts of the cases run.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    by_fault: BTreeMap<&'static str, usize>,
}

/// Runs the whole table on `backend`.
async fn every_store_call<B: SessionStore + Clone>(backend: Backend<B>) -> Tally {
    let mut tally = Tally::default();
    for stack in STACKS {
        for kind in KINDS {
            let base = baseline(&backend, stack, kind).await;
            let label = format!("{} {stack:?} {kind:?}", backend.name);
            assert_eq!(
                base.calls,
                expected_calls(stack, kind),
                "{label}: store calls"
            );
            assert_eq!(base.status, StatusCode::OK, "{label}: {}", base.body);
            if kind != Kind::Read && !base.calls.is_empty() {
                assert_ne!(base.old, base.new, "{label}: the request changed nothing");
            }

            // Each call, faulted in turn.
            for (at, op) in base.calls.iter().copied().enumerate() {
                let nth = base.calls[..=at].iter().filter(|o| **o == op).count() as u64;
                for fault in [Fault::Fail, Fault::FailAfter, Fault::Delay(DELAY)] {
                    let what = format!("{label}: {fault:?} on {op:?} #{nth} (call {})", at + 1);
                    single_fault(&backend, stack, kind, op, nth, fault, &base, &what).await;
                    tally.cases += 1;
                    *tally
                        .by_fault
                        .entry(match fault {
                            Fault::Fail => "fail",
                            Fault::FailAfter => "fail after",
                            Fault::Delay(_) => "delay",
                        })
                        .or_default() += 1;
                }
            }

            // Every call fails.
            let what = format!("{label}: every call fails");
            let (store, router, mut visitor) = prepared(&backend, stack, kind).await;
            let (logs, _guard) = Logs::capture();
            store.fail_everything();
            let (method, uri) = kind.request();
            let reply = visitor.send(&router, method, uri).await;
            store.heal();
            if base.calls.is_empty() {
                // The store was not needed: the handler's own response.
                assert_eq!(
                    (reply.status, reply.body.as_str()),
                    (base.status, base.body.as_str()),
                    "{what}"
                );
                assert_eq!(store.injected(), 0, "{what}: the store was called");
            } else {
                assert_clear_failure(&reply, &what);
                assert_logged(&logs, &what);
            }
            assert_eq!(stored_records(&store).await, base.old, "{what}: records");
            tally.cases += 1;
            *tally.by_fault.entry("every call fails").or_default() += 1;
        }
    }
    tally
}

/// One case: `fault` on the `nth` call of `op` in `kind`'s request.
#[allow(clippy::too_many_arguments)]
async fn single_fault<B: SessionStore + Clone>(
    backend: &Backend<B>,
    stack: Stack,
    kind: Kind,
    op: Op,
    nth: u64,
    fault: Fault,
    base: &Baseline,
    what: &str,
) {
    let (store, router, mut visitor) = prepared(backend, stack, kind).await;
    let (logs, _guard) = Logs::capture();
    assert_eq!(stored_records(&store).await, base.old, "{what}: seed");
    store.set(op, Pick::Calls(vec![nth]), fault);
    let (method, uri) = kind.request();
    let reply = visitor.send(&router, method, uri).await;
    store.heal();
    let after = stored_records(&store).await;

    match fault {
        Fault::Delay(_) => {
            assert_eq!(store.injected(), 0, "{what}");
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (base.status, base.body.as_str()),
                "{what}: a slow store changed the response"
            );
            assert_eq!(after, base.new, "{what}: a slow store changed the records");
        }
        Fault::Fail | Fault::FailAfter if is_lock_release(stack, kind, op) => {
            assert_eq!(store.injected(), 1, "{what}: the fault was not reached");
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (base.status, base.body.as_str()),
                "{what}: the save was stored, so the request succeeds"
            );
            assert_eq!(after, base.new, "{what}: the save is stored");
            if fault == Fault::Fail {
                assert!(
                    logs.text()
                        .contains("could not release the session's store lock"),
                    "{what}: {}",
                    logs.text()
                );
            }
        }
        Fault::Fail | Fault::FailAfter => {
            assert_eq!(store.injected(), 1, "{what}: the fault was not reached");
            assert_clear_failure(&reply, what);
            assert_logged(&logs, what);
            if fault == Fault::Fail {
                assert_eq!(
                    after, base.old,
                    "{what}: a failed request changed the records"
                );
            } else {
                assert!(
                    after == base.old || after == base.new,
                    "{what}: the records are neither the old nor the new ones\nold: {:?}\nnew: \
                     {:?}\nnow: {after:?}",
                    base.old,
                    base.new
                );
            }
        }
    }
    // The next request on the session succeeds: nothing was left locked or half done.
    let reply = visitor
        .send(&router, Method::POST, "/ns/recovery/ok/1")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{what}: next request: {reply:?}"
    );
    let records = stored_records(&store).await;
    assert!(
        records
            .iter()
            .any(|record| record["recovery"]["ok"] == json!("1")),
        "{what}: the next request's write is not stored: {records:?}"
    );
    if stack == Stack::MergingLock {
        assert_eq!(lock_records(&store).await, 0, "{what}: a lock stays behind");
    }
}

/// How many cases the table runs: three faults per store call, and one "every call fails", for
/// each stack and kind.
fn table_size() -> usize {
    STACKS
        .iter()
        .flat_map(|stack| {
            KINDS
                .iter()
                .map(|kind| 3 * expected_calls(*stack, *kind).len() + 1)
        })
        .sum()
}

#[tokio::test]
async fn every_store_call_faulted_in_turn_on_memory() {
    let tally = every_store_call(memory()).await;
    eprintln!("faults on memory: {tally:#?}");
    assert_eq!(tally.cases, table_size(), "{tally:?}");
}

#[tokio::test]
async fn every_store_call_faulted_in_turn_on_redis() {
    on_redis(
        "faults::every_store_call_faulted_in_turn_on_redis",
        |backend| async move {
            let tally = every_store_call(backend).await;
            eprintln!("faults on redis: {tally:#?}");
            assert_eq!(tally.cases, table_size(), "{tally:?}");
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The store lock of `MergingStore::with_store_lock()` when its release or creation fails
// ---------------------------------------------------------------------------------------------

/// A seeded visitor of a fresh `MergingStore::with_store_lock()` app on memory.
async fn locked_app() -> (FaultStore<MemoryStore>, Router, Visitor) {
    prepared(&memory(), Stack::MergingLock, Kind::WriteTwo).await
}

/// When the save is stored but the release of the store lock (`delete`) fails, the request
/// succeeds: a request answered `500` must leave none of its changes, and this one's are stored.
#[tokio::test]
async fn a_failed_lock_release_does_not_fail_a_request_whose_save_was_stored() {
    let (logs, _guard) = Logs::capture();
    let (store, router, mut visitor) = locked_app().await;
    store.set(Op::Delete, Pick::Calls(vec![1]), Fault::Fail);

    let reply = visitor.send(&router, Method::POST, "/ns/cart/b/2").await;
    store.heal();

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let records = stored_records(&store).await;
    assert!(
        records
            .iter()
            .any(|record| record["cart"]["b"] == json!("2")),
        "{records:?}"
    );
    assert_eq!(lock_records(&store).await, 1, "the lock is left behind");
    assert!(logs
        .text()
        .contains("could not release the session's store lock"));
}

/// A store lock left behind (its release failed, or its `create` stored it but reported an
/// error) does not block the session: the next save in the same instance clears it at once,
/// instead of waiting out the lock's 10 s (on `MemoryStore`, whose `create` does not look at
/// expiry, it used to block for good).
#[tokio::test]
async fn a_lock_left_behind_is_cleared_by_the_next_save() {
    for fault in [(Op::Delete, Fault::Fail), (Op::Create, Fault::FailAfter)] {
        let (store, router, mut visitor) = locked_app().await;
        store.set(fault.0, Pick::Calls(vec![1]), fault.1);
        visitor.send(&router, Method::POST, "/ns/cart/b/2").await;
        store.heal();
        assert_eq!(
            lock_records(&store).await,
            1,
            "{fault:?}: a lock left behind"
        );

        let started = std::time::Instant::now();
        let next = visitor.send(&router, Method::POST, "/ns/cart/c/3").await;

        assert_eq!(next.status, StatusCode::OK, "{fault:?}: {next:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{fault:?}: the next save waited {:?}",
            started.elapsed()
        );
        assert_eq!(lock_records(&store).await, 0, "{fault:?}: cleared");
    }
}

/// Another instance's lock is never cleared by this one: a second `MergingStore` over the same
/// memory store waits for it, and fails clearly when it does not go away (on `MemoryStore` an
/// expired record stays until deleted).
#[tokio::test]
async fn another_instances_lock_is_waited_for_never_cleared() {
    let (logs, _guard) = Logs::capture();
    let backend = MemoryStore::default();
    let first = MergingStore::new(backend.clone()).with_store_lock();
    let second = MergingStore::new(backend.clone()).with_store_lock();
    let mut record = Record {
        id: Id::default(),
        data: HashMap::from([("a".to_owned(), json!(1))]),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    first.create(&mut record).await.unwrap();
    // Another instance's lock, left behind as if its release had failed.
    let lock_id = Id(record.id.0 ^ 0x7473_635f_6d65_7267_655f_6c6f_636b_2121);
    let mut lock = Record {
        id: lock_id,
        data: HashMap::from([(
            "tower_sessions_controller.lock_owner".to_owned(),
            json!("another instance"),
        )]),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    backend.create(&mut lock).await.unwrap();
    record.data.insert("a".to_owned(), json!(2));

    let saved = second.save(&record).await;

    assert!(saved.is_err(), "saved past another instance's lock");
    assert!(
        logs.text()
            .contains("timed out waiting for the session's store lock"),
        "{}",
        logs.text()
    );
    assert!(
        backend.load(&lock_id).await.unwrap().is_some(),
        "the lock stays"
    );
    assert_eq!(
        backend.load(&record.id).await.unwrap().unwrap().data["a"],
        json!(1)
    );
}

// ---------------------------------------------------------------------------------------------
// A fault on a fixed schedule
// ---------------------------------------------------------------------------------------------

/// 30 writes of one visitor, each of its own key, while every third save fails: on every stack
/// each write makes one save, so writes 3, 6, ... answer `500` and only the others are stored.
async fn every_third_save<B: SessionStore + Clone>(backend: &Backend<B>) {
    for stack in STACKS {
        let (store, router, mut visitor) = prepared(backend, stack, Kind::WriteTwo).await;
        store.set(Op::Save, Pick::EveryNth(3), Fault::Fail);
        for i in 1..=30 {
            let reply = visitor
                .send(&router, Method::POST, &format!("/ns/log/k{i}/{i}"))
                .await;
            let what = format!("{} {stack:?}: write {i}", backend.name);
            if i % 3 == 0 {
                assert_clear_failure(&reply, &what);
            } else {
                assert_eq!(reply.status, StatusCode::OK, "{what}: {reply:?}");
            }
        }
        store.heal();
        let stored = stored_namespaces(&store, &visitor).await;
        let keys: Vec<String> = stored["log"].keys().cloned().collect();
        let expected: BTreeSet<String> = (1..=30)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("k{i}"))
            .collect();
        assert_eq!(
            keys.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "{} {stack:?}",
            backend.name
        );
        assert_eq!(store.injected(), 10, "{} {stack:?}", backend.name);
    }
}

#[tokio::test]
async fn every_third_save_failing_loses_exactly_those_writes_on_memory() {
    every_third_save(&memory()).await;
}

#[tokio::test]
async fn every_third_save_failing_loses_exactly_those_writes_on_redis() {
    on_redis(
        "faults::every_third_save_failing_loses_exactly_those_writes_on_redis",
        |backend| async move { every_third_save(&backend).await },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Random faults on a sequence of requests, against a model
// ---------------------------------------------------------------------------------------------

type Model = BTreeMap<String, BTreeMap<String, Value>>;

/// The user keys of every namespace of the visitor's stored record.
async fn stored_namespaces<B: SessionStore + Clone>(
    store: &FaultStore<B>,
    visitor: &Visitor,
) -> Model {
    let Some(id) = visitor.session_id() else {
        return Model::new();
    };
    let Some(record) = store.inner.load(&id).await.expect("a load without faults") else {
        return Model::new();
    };
    record
        .data
        .into_iter()
        // The merge's bookkeeping (a load through the crate's stores also marks the record).
        .filter(|(key, _)| !key.starts_with("tower_sessions_controller."))
        .map(|(key, namespace)| {
            let Value::Object(mut keys) = namespace else {
                panic!("namespace {key} is not an object: {namespace}")
            };
            assert!(
                keys.remove(STAMP_KEY).is_some_and(|stamp| stamp.is_f64()),
                "namespace {key} has no stamp"
            );
            (key, keys.into_iter().collect())
        })
        .collect()
}

/// 120 requests of one visitor (writes, removals, purges and reads over 3 namespaces and 4
/// keys) with seeded random failures of a fifth of the loads, creates and saves. After every
/// request the stored namespaces equal the model of the requests answered `200`, and every
/// response answered `200` shows the namespace as the model has it.
async fn random_faults<B: SessionStore + Clone>(backend: &Backend<B>, stack: Stack, seed: u64) {
    let store = backend.store();
    let clock = ManualClock::new(START);
    let router = app(&store, stack, &clock);
    for (i, op) in [Op::Load, Op::Create, Op::Save].into_iter().enumerate() {
        let seed = seed ^ (i as u64) << 32;
        store.set(
            op,
            Pick::Random {
                seed,
                per_mille: 200,
            },
            Fault::Fail,
        );
    }
    let mut visitor = Visitor::default();
    let mut model = Model::new();
    let (mut ok, mut failed) = (0, 0);
    for step in 0..120u64 {
        let roll = fault_store::mix(seed.wrapping_mul(31) ^ step);
        let ns = format!("ns{}", roll % 3);
        let key = format!("k{}", (roll >> 8) % 4);
        let (method, uri) = match (roll >> 16) % 10 {
            0..=4 => (Method::POST, format!("/ns/{ns}/{key}/v{step}")),
            5..=6 => (Method::DELETE, format!("/ns/{ns}/{key}")),
            7 => (Method::DELETE, format!("/ns/{ns}")),
            _ => (Method::GET, format!("/ns/{ns}")),
        };
        let what = format!(
            "{} {stack:?} seed {seed} step {step}: {method} {uri}",
            backend.name
        );
        let reply = visitor.send(&router, method.clone(), &uri).await;
        if reply.status == StatusCode::OK {
            ok += 1;
            let namespace = model.entry(ns.clone()).or_default();
            match (method, (roll >> 16) % 10) {
                (Method::POST, _) => {
                    namespace.insert(key, json!(format!("v{step}")));
                }
                (Method::DELETE, 5..=6) => {
                    namespace.remove(&key);
                }
                (Method::DELETE, _) => namespace.clear(),
                _ => {}
            }
            let expected = Value::Object(namespace.clone().into_iter().collect());
            if namespace.is_empty() {
                model.remove(&ns);
            }
            assert_eq!(reply.json(), expected, "{what}: the response");
        } else {
            failed += 1;
            assert_clear_failure(&reply, &what);
        }
        assert_eq!(
            stored_namespaces(&store, &visitor).await,
            model,
            "{what}: stored namespaces after a {}",
            reply.status
        );
    }
    assert!(ok > 30 && failed > 5, "{ok} answered 200, {failed} failed");
}

#[tokio::test]
async fn random_faults_on_a_sequence_leave_exactly_the_successful_requests_on_memory() {
    let backend = memory();
    for stack in STACKS {
        for seed in [1, 2, 3] {
            random_faults(&backend, stack, seed).await;
        }
    }
}

#[tokio::test]
async fn random_faults_on_a_sequence_leave_exactly_the_successful_requests_on_redis() {
    on_redis(
        "faults::random_faults_on_a_sequence_leave_exactly_the_successful_requests_on_redis",
        |backend| async move {
            for stack in STACKS {
                random_faults(&backend, stack, 7).await;
            }
        },
    )
    .await;
}

#[tokio::test]
async fn random_faults_on_a_sequence_leave_exactly_the_successful_requests_on_the_crates_memory_store(
) {
    let backend = Backend {
        name: "stores::MemoryStore",
        make: Arc::new(stores::MemoryStore::default),
        made: Made::default(),
    };
    for seed in [1, 2, 3] {
        random_faults(&backend, Stack::Bare, seed).await;
    }
}

#[tokio::test]
async fn random_faults_on_a_sequence_leave_exactly_the_successful_requests_on_the_crates_redis_store(
) {
    on_redis_as(
        "faults::random_faults_on_a_sequence_leave_exactly_the_successful_requests_on_the_crates_redis_store",
        "stores::RedisStore",
        stores::RedisStore::new,
        |backend| async move {
            for seed in [7, 8] {
                random_faults(&backend, Stack::Bare, seed).await;
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// No lost updates, with delays and failures
// ---------------------------------------------------------------------------------------------

/// Overlapping requests.
const OVERLAP_REQUESTS: usize = 96;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;

/// `OVERLAP_REQUESTS` requests on one session, `IN_FLIGHT` at a time, through `stack`; every
/// store call waits a random 0 to 4 ms, and some loads, saves and lock `create`s fail. Request
/// `i` inserts `a{i}` into one namespace and removes `r{i}` from another. Returns the requests
/// whose changes are not as their status says (a `200` without both, a `500` with either).
async fn overlapping<B: SessionStore + Clone>(
    backend: &Backend<B>,
    stack: Stack,
    seed: u64,
) -> BTreeSet<String> {
    let store = backend.store();
    let clock = ManualClock::new(START);
    let router = app(&store, stack, &clock);
    let mut visitor = Visitor::default();
    visitor
        .ok(&router, Method::POST, &format!("/seed/{OVERLAP_REQUESTS}"))
        .await;
    let cookie = visitor.cookie.clone().expect("the seed gives a cookie");

    for (i, op) in Op::ALL.into_iter().enumerate() {
        let seed = seed ^ (i as u64) << 40;
        store.jitter(op, Jitter { seed, max_ms: 4 });
    }
    store.set(
        Op::Load,
        Pick::Random {
            seed,
            per_mille: 100,
        },
        Fault::Fail,
    );
    store.set(
        Op::Save,
        Pick::Random {
            seed: seed + 1,
            per_mille: 150,
        },
        Fault::Fail,
    );
    store.set(
        Op::Create,
        Pick::Random {
            seed: seed + 2,
            per_mille: 100,
        },
        Fault::Fail,
    );

    let statuses: HashMap<usize, StatusCode> = stream::iter(0..OVERLAP_REQUESTS)
        .map(|i| {
            let (router, cookie) = (&router, cookie.as_str());
            async move {
                let reply =
                    send(router, Some(cookie), Method::POST, &format!("/overlap/{i}")).await;
                assert_no_leak(&reply, "overlap", &INJECTED_WORDS);
                (i, reply.status)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    store.heal();

    let stored = stored_namespaces(&store, &visitor).await;
    let has = |ns: &str, key: String| stored.get(ns).is_some_and(|keys| keys.contains_key(&key));
    let (mut ok, mut failed) = (0, 0);
    let mut wrong = BTreeSet::new();
    for (i, status) in &statuses {
        let (into, from) = overlap_namespaces(*i);
        let inserted = has(&into, format!("a{i}"));
        let removed = !has(&from, format!("r{i}"));
        match *status {
            StatusCode::OK => {
                ok += 1;
                if !(inserted && removed) {
                    wrong.insert(format!(
                        "{i} answered 200: inserted {inserted}, removed {removed}"
                    ));
                }
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                failed += 1;
                if inserted || removed {
                    wrong.insert(format!(
                        "{i} answered 500: inserted {inserted}, removed {removed}"
                    ));
                }
            }
            other => panic!("request {i} answered {other}"),
        }
    }
    eprintln!(
        "overlap {} {stack:?} seed {seed}: {ok} answered 200, {failed} answered 500, {} faults \
         injected; {} requests not as answered",
        backend.name,
        store.injected(),
        wrong.len()
    );
    assert!(
        ok > 0 && failed > 0,
        "{ok} answered 200, {failed} answered 500"
    );
    wrong
}

/// `overlapping`, which must find every request as answered.
async fn no_lost_update<B: SessionStore + Clone>(backend: &Backend<B>, stack: Stack, seed: u64) {
    let wrong = overlapping(backend, stack, seed).await;
    assert!(
        wrong.is_empty(),
        "{} {stack:?} seed {seed}: {} of {OVERLAP_REQUESTS} requests are not as answered: \
         {wrong:#?}",
        backend.name,
        wrong.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_requests_with_faults_and_delays_lose_no_update_on_memory() {
    let backend = memory();
    for stack in [Stack::Merging, Stack::MergingLock] {
        for seed in [11, 12] {
            no_lost_update(&backend, stack, seed).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_requests_with_faults_and_delays_lose_no_update_on_redis() {
    on_redis(
        "faults::overlapping_requests_with_faults_and_delays_lose_no_update_on_redis",
        |backend| async move {
            for stack in [Stack::Merging, Stack::MergingLock] {
                no_lost_update(&backend, stack, 21).await;
            }
        },
    )
    .await;
}

/// The same load without `MergingStore` loses updates: the harness does overlap requests, so
/// its finding nothing lost behind `MergingStore` means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_requests_without_merging_store_lose_updates() {
    let wrong = overlapping(&memory(), Stack::Bare, 11).await;
    assert!(
        wrong.len() > OVERLAP_REQUESTS / 4,
        "only {} requests lost changes without MergingStore: {wrong:#?}",
        wrong.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A record that vanishes between the load and the save
// ---------------------------------------------------------------------------------------------

/// A visitor's write whose record is deleted from the store (evicted, expired, lost with a Redis
/// restart) after the request loaded it and before it saved: returns the answer, and whether
/// the write is stored afterwards.
async fn write_across_a_vanishing_record<B: SessionStore + Clone>(
    backend: &Backend<B>,
    stack: Stack,
) -> (StatusCode, bool) {
    let (store, router, mut visitor) = prepared(backend, stack, Kind::WriteTwo).await;
    let id = visitor.session_id().expect("a session");
    // The save waits 200 ms; the record goes 50 ms into the wait.
    store.set(
        Op::Save,
        Pick::Calls(vec![1]),
        Fault::Delay(StdDuration::from_millis(200)),
    );
    let vanish = async {
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        store.inner.delete(&id).await.expect("delete");
    };
    let (reply, ()) = tokio::join!(visitor.send(&router, Method::POST, "/ns/cart/b/2"), vanish);
    let stored = store
        .inner
        .load(&id)
        .await
        .expect("load")
        .is_some_and(|record| record.data.get("cart").is_some_and(|cart| cart["b"] == "2"));
    (reply.status, stored)
}

/// On `MemoryStore` a save re-creates a record that vanished meanwhile: the `200` is true.
#[tokio::test]
async fn a_write_answered_200_is_stored_even_if_the_record_vanished_meanwhile_on_memory() {
    for stack in STACKS {
        let outcome = write_across_a_vanishing_record(&memory(), stack).await;
        assert_eq!(outcome, (StatusCode::OK, true), "{stack:?}");
    }
}

/// LIMITATION (tower-sessions-redis-store 0.16, not this crate's code): its `save` is `SET XX`,
/// which stores nothing when the key is gone, and reports success. So a write whose record
/// vanished between the request's load and its save (a Redis restart, an eviction) answers `200`
/// and is lost; `MergingStore`, which saves the request's record as it is when the latest one is
/// gone (src/merge.rs, `merge`: "Gone from the store meanwhile"), goes through the same `save`.
/// The crate's own `stores::RedisStore` does not have this limitation: such a write answers
/// `409` and stores nothing (`tests/redis_store/faults.rs`).
#[tokio::test]
#[ignore = "LIMITATION: on Redis, a write answered 200 is lost if its record vanished between \
            load and save (tower-sessions-redis-store's save is SET XX)"]
async fn a_write_answered_200_is_stored_even_if_the_record_vanished_meanwhile_on_redis() {
    on_redis(
        "faults::a_write_answered_200_is_stored_even_if_the_record_vanished_meanwhile_on_redis",
        |backend| async move {
            let mut outcomes = Vec::new();
            for stack in STACKS {
                let outcome = write_across_a_vanishing_record(&backend, stack).await;
                outcomes.push((stack, outcome));
            }
            assert!(
                outcomes
                    .iter()
                    .all(|(_, outcome)| *outcome == (StatusCode::OK, true)),
                "(stack, (answer, stored)): {outcomes:?}"
            );
        },
    )
    .await;
}
