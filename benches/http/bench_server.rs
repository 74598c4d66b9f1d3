//! The target of the loopback HTTP load test (`benches/http/run.sh`, BENCHMARKS.md "Loopback
//! HTTP"): not a user example — see `examples/shopping_cart/` for that.
//!
//! ```text
//! CONTENDER=controllers PORT=3000 cargo run --release --example bench_server
//! curl -s -c jar -b jar -X POST http://127.0.0.1:3000/cart/add   # 1
//! curl -s -c jar -b jar http://127.0.0.1:3000/cart               # 1
//! ```
//!
//! One server, one contender, chosen by `CONTENDER`; it listens on `127.0.0.1:$PORT` (3000 by
//! default) and serves two routes that do the same cart work for every contender:
//!
//! - `POST /cart/add`: opens the `shopping_cart` namespace of the visitor's session (dropping it
//!   if its stamp has passed), adds one `apple` to its `items` (item → quantity), which slides
//!   the stamp to now + 5 minutes, and answers the new quantity. The session is saved.
//! - `GET /cart`: opens the namespace the same way and answers the quantity of `apple` (0 if
//!   none). Nothing is saved.
//!
//! The namespace is kept in the seed's layout: `{"items": {"apple": N}, "_timeout_datestamp":
//! seconds since the Unix epoch}`, the same layout as in `benches/support/mod.rs`, whose
//! `change_one_key` and `read_only` workloads these two routes mirror.
//!
//! | `CONTENDER` | the handlers |
//! |---|---|
//! | `bare` | no session layer; constant answers (the floor) |
//! | `raw` | tower-sessions' `Session`: `get_value`, the expiry rule by hand, `insert_value` |
//! | `controllers` | this crate's `SessionControllers::open`, `get` (read), `update` (add) |
//! | `embedded` | `controllers` on this crate's own `stores::MemoryStore` (merged by compare-and-set): the README's recommended setup |
//! | `keyed` | this crate's `Keyed<Cart>` extractor |
//! | `axum_session` | axum_session's `Session<SessionNullPool>`, the rule by hand, `set` |
//! | `raw_redis` | `raw` on tower-sessions-redis-store |
//! | `redis` | `controllers` on this crate's `stores::RedisStore` |
//!
//! Sessions live in memory (tower-sessions' `MemoryStore` unless said otherwise; axum_session's
//! memory cache), except for the two Redis contenders: they keep them in the Redis at `REDIS_URL`
//! (`redis://127.0.0.1:6379` by default), through a fred pool of 4 connections, and let them
//! expire 10 minutes after their last request.
//!
//! `POST /fill` (every contender but `bare`) stores 10 other namespaces of 1 KiB in the visitor's
//! session, which the cart routes never touch: run.sh's `SESSIONS=large`.
//! Cookies are sent without `Secure`, since the load test speaks plain HTTP.

use std::{collections::BTreeMap, env, net::SocketAddr, process::ExitCode};

use axum::{
    http::StatusCode,
    routing::{get, post},
    Router,
};
use axum_session::{SessionConfig, SessionLayer, SessionNullPool, SessionStore};
use fred::prelude::{ClientLike, Config, Pool};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};
use tower::ServiceBuilder;
use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer};
use tower_sessions_controller::{
    stores, Error, Keyed, Namespace, SessionControllerLayer, SessionControllers, STAMP_KEY,
};

/// The namespace's key in the session.
const KEY: &str = "shopping_cart";
/// The item every `POST /cart/add` adds.
const ITEM: &str = "apple";
/// The namespace's expiry: the seed's default (300 s), also this crate's.
const EXPIRY: Duration = Duration::minutes(5);

/// The cart as a typed namespace, for `Keyed<Cart>`.
#[derive(Default, Serialize, Deserialize)]
struct Cart {
    items: BTreeMap<String, u64>,
}

impl Namespace for Cart {
    const KEY: &'static str = KEY;
    const EXPIRY: Duration = EXPIRY;
}

fn internal<E>(_: E) -> StatusCode {
    StatusCode::INTERNAL_SERVER_ERROR
}

// ---- by hand, on a `serde_json` map: raw tower-sessions and axum_session ----

/// A stamp as stored: seconds since the Unix epoch, a float.
fn seconds(at: OffsetDateTime) -> f64 {
    at.unix_timestamp() as f64 + f64::from(at.nanosecond()) / 1e9
}

/// The expiry rule: a stamp at or before `now` has passed.
fn stamp_passed(ns: &Map<String, Value>, now: OffsetDateTime) -> bool {
    ns.get(STAMP_KEY)
        .and_then(Value::as_f64)
        .is_some_and(|stamp| stamp <= seconds(now))
}

/// The quantity of [`ITEM`] in the namespace.
fn quantity(ns: &Map<String, Value>) -> u64 {
    ns.get("items")
        .and_then(|items| items.get(ITEM))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Adds one [`ITEM`] and slides the stamp; returns the new quantity.
fn add_one(ns: &mut Map<String, Value>, now: OffsetDateTime) -> u64 {
    let next = quantity(ns) + 1;
    let items = ns
        .entry("items")
        .or_insert_with(|| Value::Object(Map::new()));
    if !items.is_object() {
        *items = Value::Object(Map::new());
    }
    if let Value::Object(items) = items {
        items.insert(ITEM.to_owned(), Value::from(next));
    }
    ns.insert(STAMP_KEY.to_owned(), Value::from(seconds(now + EXPIRY)));
    next
}

// ---- raw tower-sessions ----

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
    Ok(quantity(&ns).to_string())
}

async fn raw_add(session: Session) -> Result<String, StatusCode> {
    let now = OffsetDateTime::now_utc();
    let mut ns = raw_open(&session, now).await?;
    let next = add_one(&mut ns, now);
    session
        .insert_value(KEY, Value::Object(ns))
        .await
        .map_err(internal)?;
    Ok(next.to_string())
}

/// The other namespaces `POST /fill` stores: 10 of about 1 KiB, each in the seed's layout, with
/// a stamp a day ahead.
fn others() -> impl Iterator<Item = (String, Value)> {
    let stamp = seconds(OffsetDateTime::now_utc() + Duration::days(1));
    (0..10).map(move |n| {
        let mut ns = Map::new();
        ns.insert("notes".to_owned(), Value::from("x".repeat(1000)));
        ns.insert(STAMP_KEY.to_owned(), Value::from(stamp));
        (format!("other{n}"), Value::Object(ns))
    })
}

async fn raw_fill(session: Session) -> Result<&'static str, StatusCode> {
    for (key, ns) in others() {
        session.insert_value(&key, ns).await.map_err(internal)?;
    }
    Ok("ok")
}

// ---- this crate ----

async fn controllers_read(controllers: SessionControllers) -> Result<String, Error> {
    let cart = controllers.open(KEY).await?;
    let items = cart.get::<BTreeMap<String, u64>>("items")?;
    Ok(items
        .and_then(|items| items.get(ITEM).copied())
        .unwrap_or(0)
        .to_string())
}

async fn controllers_add(controllers: SessionControllers) -> Result<String, Error> {
    let mut cart = controllers.open(KEY).await?;
    let next = cart.update("items", |items: &mut BTreeMap<String, u64>| {
        let quantity = items.entry(ITEM.to_owned()).or_default();
        *quantity += 1;
        *quantity
    })?;
    Ok(next.to_string())
}

async fn keyed_read(cart: Keyed<Cart>) -> String {
    cart.items.get(ITEM).copied().unwrap_or(0).to_string()
}

async fn keyed_add(mut cart: Keyed<Cart>) -> String {
    let quantity = cart.items.entry(ITEM.to_owned()).or_default();
    *quantity += 1;
    quantity.to_string()
}

// ---- axum_session: the namespace by hand, as with raw tower-sessions ----

type AxSession = axum_session::Session<SessionNullPool>;

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
    quantity(&axs_open(&session, OffsetDateTime::now_utc())).to_string()
}

async fn axs_fill(session: AxSession) -> &'static str {
    for (key, ns) in others() {
        session.set(&key, ns);
    }
    "ok"
}

async fn axs_add(session: AxSession) -> String {
    let now = OffsetDateTime::now_utc();
    let mut ns = axs_open(&session, now);
    let next = add_one(&mut ns, now);
    session.set(KEY, &ns);
    next.to_string()
}

/// A connected pool of 4 on `REDIS_URL`.
async fn redis_pool() -> Pool {
    let url = env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let pool = Pool::new(
        Config::from_url(&url).expect("REDIS_URL"),
        None,
        None,
        None,
        4,
    )
    .expect("a Redis pool");
    pool.init().await.expect("Redis at REDIS_URL");
    pool
}

/// The app of `contender`, or `None` if there is no such contender.
async fn app(contender: &str) -> Option<Router> {
    let store = || SessionManagerLayer::new(MemoryStore::default()).with_secure(false);
    Some(match contender {
        "bare" => Router::new()
            .route("/cart", get(|| async { "0" }))
            .route("/cart/add", post(|| async { "1" })),
        "raw" => Router::new()
            .route("/cart", get(raw_read))
            .route("/cart/add", post(raw_add))
            .route("/fill", post(raw_fill))
            .layer(store()),
        "raw_redis" => Router::new()
            .route("/cart", get(raw_read))
            .route("/cart/add", post(raw_add))
            .route("/fill", post(raw_fill))
            .layer(in_redis(SessionManagerLayer::new(
                tower_sessions_redis_store::RedisStore::new(redis_pool().await),
            ))),
        "redis" => Router::new()
            .route("/cart", get(controllers_read))
            .route("/cart/add", post(controllers_add))
            .route("/fill", post(raw_fill))
            .layer(
                ServiceBuilder::new()
                    .layer(in_redis(SessionManagerLayer::new(stores::RedisStore::new(
                        redis_pool().await,
                    ))))
                    .layer(SessionControllerLayer::new()),
            ),
        "controllers" => Router::new()
            .route("/cart", get(controllers_read))
            .route("/cart/add", post(controllers_add))
            .route("/fill", post(raw_fill))
            .layer(
                ServiceBuilder::new()
                    .layer(store())
                    .layer(SessionControllerLayer::new()),
            ),
        "embedded" => Router::new()
            .route("/cart", get(controllers_read))
            .route("/cart/add", post(controllers_add))
            .route("/fill", post(raw_fill))
            .layer(
                ServiceBuilder::new()
                    .layer(
                        SessionManagerLayer::new(stores::MemoryStore::default()).with_secure(false),
                    )
                    .layer(SessionControllerLayer::new()),
            ),
        "keyed" => Router::new()
            .route("/cart", get(keyed_read))
            .route("/cart/add", post(keyed_add))
            .route("/fill", post(raw_fill))
            .layer(
                ServiceBuilder::new()
                    .layer(store())
                    .layer(SessionControllerLayer::new()),
            ),
        "axum_session" => {
            let config = SessionConfig::default().with_secure(false);
            let store = SessionStore::<SessionNullPool>::new(None, config)
                .await
                .expect("axum_session's null store");
            Router::new()
                .route("/cart", get(axs_read))
                .route("/cart/add", post(axs_add))
                .route("/fill", post(axs_fill))
                .layer(SessionLayer::new(store))
        }
        _ => return None,
    })
}

/// The session layer of a Redis contender: sessions expire 10 minutes after their last request.
fn in_redis<S: tower_sessions::SessionStore + Clone>(
    layer: SessionManagerLayer<S>,
) -> SessionManagerLayer<S> {
    layer
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(Duration::minutes(10)))
}

#[tokio::main]
async fn main() -> ExitCode {
    let contender = env::var("CONTENDER").unwrap_or_else(|_| "controllers".to_owned());
    let Some(app) = app(&contender).await else {
        eprintln!(
            "CONTENDER={contender:?}: expected bare, raw, controllers, embedded, keyed, \
             axum_session, raw_redis or redis"
        );
        return ExitCode::FAILURE;
    };
    let port = match env::var("PORT").map(|port| port.parse::<u16>()) {
        Err(_) => 3000,
        Ok(Ok(port)) => port,
        Ok(Err(_)) => {
            eprintln!("PORT is not a port number");
            return ExitCode::FAILURE;
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("bench_server: {contender} on http://{addr}");
    if let Err(error) = axum::serve(listener, app).await {
        eprintln!("server error: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
