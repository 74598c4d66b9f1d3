//! What the benchmarks share: the stored namespaces, the handlers of every contender doing the
//! same logical work, and the apps they run in. See BENCHMARKS.md.
//!
//! Every contender keeps a namespace in the seed's layout: a JSON object of the user's keys plus
//! `_timeout_datestamp`, seconds since the Unix epoch. The benchmarked namespace, under [`KEY`],
//! is `{"counter": 7, "items": {"item00000": "xxxx…", …}, "_timeout_datestamp": …}`; its
//! serialized size is set by the number of items.

// Each bench binary uses part of this module.
#![allow(dead_code)]

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::Body,
    extract::State,
    http::{header, Request, StatusCode},
    routing::{get, post},
    Router,
};
use axum_session::{SessionConfig, SessionLayer, SessionNullPool, SessionStore};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};
use tower::{ServiceBuilder, ServiceExt};
use tower_sessions::{MemoryStore, Session, SessionManagerLayer};
use tower_sessions_controller::{
    Error, Keyed, ManualClock, MergingStore, Namespace, SessionControllerLayer, SessionControllers,
    STAMP_KEY,
};

/// The key of the benchmarked namespace.
pub const KEY: &str = "bench";
/// The counter the seed stores; a read returns it.
pub const SEED_COUNTER: u64 = 7;
/// The namespace's expiry: the crate's default, five minutes.
pub const EXPIRY: Duration = Duration::minutes(5);

/// The benchmarked namespace as a typed [`Namespace`], for [`Keyed`].
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Bench {
    pub counter: u64,
    pub items: BTreeMap<String, String>,
}

impl Namespace for Bench {
    const KEY: &'static str = KEY;
}

/// The same namespace typed by hand for tower-sessions' `Session::get` / `Session::insert`: the
/// user keeps the stamp as a field of their own.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct StampedBench {
    pub counter: u64,
    pub items: BTreeMap<String, String>,
    #[serde(
        rename = "_timeout_datestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stamp: Option<f64>,
}

/// Who answers the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// A bare axum handler, no session layer: the floor.
    Floor,
    /// tower-sessions' `Session`, the namespace handled by hand as a `serde_json` map.
    Raw,
    /// tower-sessions' `Session::get::<T>` / `insert`, the namespace handled by hand as a struct:
    /// the typed baseline for `Keyed`.
    RawTyped,
    /// This crate's `SessionControllers` / `SessionController`.
    Controllers,
    /// This crate's `Keyed<Bench>`.
    Keyed,
    /// `Controllers` with the store wrapped in this crate's `MergingStore`.
    ControllersMerging,
    /// `Keyed` with the store wrapped in this crate's `MergingStore`.
    KeyedMerging,
    /// axum_session's `Session<SessionNullPool>`, the namespace handled by hand.
    AxumSession,
}

impl Contender {
    pub const SESSIONS: [Contender; 7] = [
        Contender::Raw,
        Contender::RawTyped,
        Contender::Controllers,
        Contender::Keyed,
        Contender::ControllersMerging,
        Contender::KeyedMerging,
        Contender::AxumSession,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Floor => "bare_axum",
            Contender::Raw => "raw_tower_sessions",
            Contender::RawTyped => "raw_typed",
            Contender::Controllers => "controllers",
            Contender::Keyed => "keyed",
            Contender::ControllersMerging => "controllers_merging",
            Contender::KeyedMerging => "keyed_merging",
            Contender::AxumSession => "axum_session",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Contender::Floor]
            .into_iter()
            .chain(Contender::SESSIONS)
            .find(|c| c.name() == name)
    }
}

/// A stamp as stored: seconds since the Unix epoch, a float.
pub fn seconds(at: OffsetDateTime) -> f64 {
    at.unix_timestamp() as f64 + f64::from(at.nanosecond()) / 1e9
}

/// The benchmarked namespace's fields, `bytes` long once serialized with a stamp (a little more
/// when `bytes` is below the size of an empty one).
pub fn bench_fields(bytes: usize) -> Bench {
    let mut bench = Bench {
        counter: SEED_COUNTER,
        items: BTreeMap::new(),
    };
    let stamp = seconds(OffsetDateTime::now_utc());
    let size = |bench: &Bench| stored(bench, stamp).to_string().len();
    let filler = "x".repeat(40);
    // Each item is `"item00000":"xxxx…"` and a comma: 55 bytes.
    let empty = size(&bench);
    let items = bytes.saturating_sub(empty).div_ceil(55);
    for i in 0..items {
        bench.items.insert(format!("item{i:05}"), filler.clone());
    }
    // The last item overshoots by less than its own length: trim the last values.
    let mut over = size(&bench).saturating_sub(bytes);
    for (_, value) in bench.items.iter_mut().rev() {
        let cut = over.min(value.len());
        value.truncate(value.len() - cut);
        over -= cut;
        if over == 0 {
            break;
        }
    }
    bench
}

/// The stored form of `bench` with `stamp` (seconds since the epoch).
pub fn stored(bench: &Bench, stamp: f64) -> Value {
    let Ok(Value::Object(mut map)) = serde_json::to_value(bench) else {
        unreachable!("Bench serializes to an object")
    };
    map.insert(STAMP_KEY.to_owned(), Value::from(stamp));
    Value::Object(map)
}

/// What a seeded session holds: the benchmarked namespace and `others` namespaces of
/// `other_bytes` each, all in the seed's layout.
pub struct Seed {
    pub namespaces: Vec<(String, Value)>,
    /// The benchmarked namespace as typed fields, for the memory bench's typed writes.
    pub bench: Bench,
}

impl Seed {
    /// `bytes` for the benchmarked namespace, stamped at `stamp`; the others expire in a day.
    pub fn new(bytes: usize, stamp: OffsetDateTime, others: usize, other_bytes: usize) -> Self {
        let bench = bench_fields(bytes);
        let alive = seconds(OffsetDateTime::now_utc() + Duration::days(1));
        let other = stored(&bench_fields(other_bytes), alive);
        let mut namespaces = vec![(KEY.to_owned(), stored(&bench, seconds(stamp)))];
        namespaces.extend((0..others).map(|i| (format!("other_{i:02}"), other.clone())));
        Self { namespaces, bench }
    }
}

type Shared = State<Arc<Seed>>;
type AxSession = axum_session::Session<SessionNullPool>;

fn internal<E>(_: E) -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

/// The expiry rule by hand: a stamp at or before `now` has passed.
fn stamp_passed(ns: &Map<String, Value>, now: OffsetDateTime) -> bool {
    ns.get(STAMP_KEY)
        .and_then(Value::as_f64)
        .is_some_and(|stamp| stamp <= seconds(now))
}

fn counter(ns: &Map<String, Value>) -> u64 {
    ns.get("counter").and_then(Value::as_u64).unwrap_or(0)
}

/// A write by hand: the stamp slides to now plus the expiry.
fn slide(ns: &mut Map<String, Value>, now: OffsetDateTime) {
    ns.insert(STAMP_KEY.to_owned(), Value::from(seconds(now + EXPIRY)));
}

// ---- raw tower-sessions: what a user writes today ----

/// Gets the namespace and applies the expiry rule: an expired one is removed.
async fn raw_open(
    session: &Session,
    now: OffsetDateTime,
) -> Result<Map<String, Value>, StatusCode> {
    match session.get_value(KEY).await.map_err(internal)? {
        Some(Value::Object(ns)) if stamp_passed(&ns, now) => {
            session.remove_value(KEY).await.map_err(internal)?;
            Ok(Map::new())
        }
        Some(Value::Object(ns)) => Ok(ns),
        _ => Ok(Map::new()),
    }
}

async fn raw_read(session: Session) -> Result<String, StatusCode> {
    let ns = raw_open(&session, OffsetDateTime::now_utc()).await?;
    Ok(counter(&ns).to_string())
}

async fn raw_change(session: Session) -> Result<String, StatusCode> {
    let now = OffsetDateTime::now_utc();
    let mut ns = raw_open(&session, now).await?;
    let next = counter(&ns) + 1;
    ns.insert("counter".to_owned(), Value::from(next));
    slide(&mut ns, now);
    session
        .insert_value(KEY, Value::Object(ns))
        .await
        .map_err(internal)?;
    Ok(next.to_string())
}

async fn raw_write(State(seed): Shared, session: Session) -> Result<String, StatusCode> {
    let now = OffsetDateTime::now_utc();
    let mut ns = raw_open(&session, now).await?;
    ns.insert("counter".to_owned(), Value::from(seed.bench.counter));
    ns.insert(
        "items".to_owned(),
        serde_json::to_value(&seed.bench.items).map_err(internal)?,
    );
    slide(&mut ns, now);
    session
        .insert_value(KEY, Value::Object(ns))
        .await
        .map_err(internal)?;
    Ok(String::new())
}

/// Stores every namespace of the seed (the tower-sessions contenders' setup route).
async fn ts_seed(State(seed): Shared, session: Session) -> Result<String, StatusCode> {
    for (key, value) in &seed.namespaces {
        session
            .insert_value(key, value.clone())
            .await
            .map_err(internal)?;
    }
    Ok(String::new())
}

// ---- raw tower-sessions, typed: `Session::get::<T>` and `Session::insert` ----

/// Gets the namespace as a struct and applies the expiry rule: an expired one is removed.
async fn typed_open(session: &Session, now: OffsetDateTime) -> Result<StampedBench, StatusCode> {
    match session.get::<StampedBench>(KEY).await.map_err(internal)? {
        Some(ns) if ns.stamp.is_some_and(|stamp| stamp <= seconds(now)) => {
            session.remove_value(KEY).await.map_err(internal)?;
            Ok(StampedBench::default())
        }
        Some(ns) => Ok(ns),
        None => Ok(StampedBench::default()),
    }
}

async fn typed_read(session: Session) -> Result<String, StatusCode> {
    let ns = typed_open(&session, OffsetDateTime::now_utc()).await?;
    Ok(ns.counter.to_string())
}

async fn typed_change(session: Session) -> Result<String, StatusCode> {
    let now = OffsetDateTime::now_utc();
    let mut ns = typed_open(&session, now).await?;
    ns.counter += 1;
    ns.stamp = Some(seconds(now + EXPIRY));
    session.insert(KEY, &ns).await.map_err(internal)?;
    Ok(ns.counter.to_string())
}

async fn typed_write(State(seed): Shared, session: Session) -> Result<String, StatusCode> {
    let now = OffsetDateTime::now_utc();
    let mut ns = typed_open(&session, now).await?;
    ns.counter = seed.bench.counter;
    ns.items = seed.bench.items.clone();
    ns.stamp = Some(seconds(now + EXPIRY));
    session.insert(KEY, &ns).await.map_err(internal)?;
    Ok(String::new())
}

// ---- this crate ----

async fn controllers_read(controllers: SessionControllers) -> Result<String, Error> {
    let ns = controllers.open(KEY).await?;
    Ok(ns.get::<u64>("counter")?.unwrap_or(0).to_string())
}

async fn controllers_change(controllers: SessionControllers) -> Result<String, Error> {
    let mut ns = controllers.open(KEY).await?;
    let next = ns.update("counter", |counter: &mut u64| {
        *counter += 1;
        *counter
    })?;
    Ok(next.to_string())
}

async fn controllers_write(
    State(seed): Shared,
    controllers: SessionControllers,
) -> Result<String, Error> {
    let mut ns = controllers.open(KEY).await?;
    ns.insert("counter", seed.bench.counter)?;
    ns.insert("items", &seed.bench.items)?;
    Ok(String::new())
}

async fn keyed_read(ns: Keyed<Bench>) -> String {
    ns.counter.to_string()
}

async fn keyed_change(mut ns: Keyed<Bench>) -> String {
    ns.counter += 1;
    ns.counter.to_string()
}

async fn keyed_write(State(seed): Shared, mut ns: Keyed<Bench>) -> String {
    *ns = seed.bench.clone();
    String::new()
}

// ---- axum_session: the namespace by hand, as with raw tower-sessions ----

fn axs_open(session: &AxSession, now: OffsetDateTime) -> Map<String, Value> {
    match session.get::<Map<String, Value>>(KEY) {
        Some(ns) if stamp_passed(&ns, now) => {
            session.remove(KEY);
            Map::new()
        }
        Some(ns) => ns,
        None => Map::new(),
    }
}

async fn axs_read(session: AxSession) -> String {
    let ns = axs_open(&session, OffsetDateTime::now_utc());
    counter(&ns).to_string()
}

async fn axs_change(session: AxSession) -> String {
    let now = OffsetDateTime::now_utc();
    let mut ns = axs_open(&session, now);
    let next = counter(&ns) + 1;
    ns.insert("counter".to_owned(), Value::from(next));
    slide(&mut ns, now);
    session.set(KEY, &ns);
    next.to_string()
}

async fn axs_write(State(seed): Shared, session: AxSession) -> String {
    let now = OffsetDateTime::now_utc();
    let mut ns = axs_open(&session, now);
    ns.insert("counter".to_owned(), Value::from(seed.bench.counter));
    ns.insert(
        "items".to_owned(),
        serde_json::to_value(&seed.bench.items).unwrap_or_default(),
    );
    slide(&mut ns, now);
    session.set(KEY, &ns);
    String::new()
}

async fn axs_seed(State(seed): Shared, session: AxSession) -> String {
    for (key, value) in &seed.namespaces {
        session.set(key, value);
    }
    String::new()
}

/// The app of `contender`: `/seed` stores the seed, `/read` reads the counter, `/change`
/// increments it, `/write` stores the seed's benchmarked namespace in a fresh session. `clock`
/// is this crate's clock (the system clock when `None`). Must be called inside a Tokio runtime
/// (axum_session's layer spawns its sweeper).
pub async fn app(contender: Contender, seed: Arc<Seed>, clock: Option<ManualClock>) -> Router {
    let store = || SessionManagerLayer::new(MemoryStore::default());
    let merging = || SessionManagerLayer::new(MergingStore::new(MemoryStore::default()));
    let controller_layer = || match &clock {
        Some(clock) => SessionControllerLayer::new().with_clock(clock.clone()),
        None => SessionControllerLayer::new(),
    };
    match contender {
        Contender::Floor => Router::new().route("/read", get(|| async { "0" })),
        Contender::Raw => Router::new()
            .route("/seed", post(ts_seed))
            .route("/read", get(raw_read))
            .route("/change", post(raw_change))
            .route("/write", post(raw_write))
            .with_state(seed)
            .layer(store()),
        Contender::RawTyped => Router::new()
            .route("/seed", post(ts_seed))
            .route("/read", get(typed_read))
            .route("/change", post(typed_change))
            .route("/write", post(typed_write))
            .with_state(seed)
            .layer(store()),
        Contender::Controllers => Router::new()
            .route("/seed", post(ts_seed))
            .route("/read", get(controllers_read))
            .route("/change", post(controllers_change))
            .route("/write", post(controllers_write))
            .with_state(seed)
            .layer(
                ServiceBuilder::new()
                    .layer(store())
                    .layer(controller_layer()),
            ),
        Contender::Keyed => Router::new()
            .route("/seed", post(ts_seed))
            .route("/read", get(keyed_read))
            .route("/change", post(keyed_change))
            .route("/write", post(keyed_write))
            .with_state(seed)
            .layer(
                ServiceBuilder::new()
                    .layer(store())
                    .layer(controller_layer()),
            ),
        Contender::ControllersMerging => Router::new()
            .route("/seed", post(ts_seed))
            .route("/read", get(controllers_read))
            .route("/change", post(controllers_change))
            .route("/write", post(controllers_write))
            .with_state(seed)
            .layer(
                ServiceBuilder::new()
                    .layer(merging())
                    .layer(controller_layer()),
            ),
        Contender::KeyedMerging => Router::new()
            .route("/seed", post(ts_seed))
            .route("/read", get(keyed_read))
            .route("/change", post(keyed_change))
            .route("/write", post(keyed_write))
            .with_state(seed)
            .layer(
                ServiceBuilder::new()
                    .layer(merging())
                    .layer(controller_layer()),
            ),
        Contender::AxumSession => {
            let store = SessionStore::<SessionNullPool>::new(None, SessionConfig::default())
                .await
                .expect("axum_session's null store");
            Router::new()
                .route("/seed", post(axs_seed))
                .route("/read", get(axs_read))
                .route("/change", post(axs_change))
                .route("/write", post(axs_write))
                .with_state(seed)
                .layer(SessionLayer::new(store))
        }
    }
}

/// A request to `path` (`GET /read`, `POST` otherwise) carrying `cookie` if there is one.
pub fn request(path: &str, cookie: Option<&str>) -> Request<Body> {
    let method = if path == "/read" { "GET" } else { "POST" };
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::empty()).expect("a valid request")
}

/// One full request through `app`: the response's status, the cookies it sets (as a `Cookie`
/// header value, empty if none) and its body.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String, String) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let cookies = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next())
        .filter(|pair| pair.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
        .collect::<Vec<_>>()
        .join("; ");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body")
        .to_bytes();
    (status, cookies, String::from_utf8_lossy(&body).into_owned())
}

/// Only the body: the benchmarks' loop, which must not spend time on headers.
pub async fn body(app: &Router, request: Request<Body>) -> axum::body::Bytes {
    let response = app.clone().oneshot(request).await.expect("infallible");
    response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body")
        .to_bytes()
}
