//! A shopping cart kept in the visitor's session, served over HTTP.
//!
//! ```text
//! cargo run --example shopping_cart            # http://127.0.0.1:3000, PORT=8080 to change
//! SESSION_STORE=redis://127.0.0.1:6379 cargo run --example shopping_cart  # README: "Stores"
//!
//! curl -s -c jar -b jar -X POST 'http://127.0.0.1:3000/cart/apple?quantity=2'
//! curl -s -c jar -b jar http://127.0.0.1:3000/cart
//! curl -s -c jar -b jar -X DELETE http://127.0.0.1:3000/cart/apple
//! curl -s -c jar -b jar -X DELETE http://127.0.0.1:3000/cart
//! curl -s -c jar -b jar -X POST http://127.0.0.1:3000/viewed/pear
//! ```
//!
//! The cart is a typed namespace ([`Keyed<Cart>`]); "recently viewed" uses the runtime API
//! ([`SessionControllers::open_with_expiry`]) with a shorter expiry. Both live in one session,
//! each under its own key with its own stamp.
//!
//! `SESSION_STORE` picks the session store: `memory` (the default: sessions last as long as the
//! process), `redis://…`, `postgres://…` (or `postgresql://…`) or `sqlite://…` (the file is
//! created if missing). The store crates are dev-dependencies of this repository, not
//! dependencies of the library.

use std::{
    collections::BTreeMap, env, net::SocketAddr, num::NonZeroU32, process::ExitCode, str::FromStr,
    time::Duration as StdDuration,
};

use axum::{
    extract::{Path, Query},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower_sessions::{MemoryStore, SessionManagerLayer, SessionStore};
use tower_sessions_controller::{
    Error, Keyed, MergingStore, Namespace, SessionControllerLayer, SessionControllers,
};
use tower_sessions_redis_store::{
    fred::prelude::{ClientLike, Config, Pool},
    RedisStore,
};
use tower_sessions_sqlx_store::{
    sqlx::{
        postgres::{PgConnectOptions, PgPoolOptions},
        sqlite::{SqliteConnectOptions, SqlitePoolOptions},
        ConnectOptions, Connection,
    },
    PostgresStore, SqliteStore,
};
use tracing_subscriber::EnvFilter;

const DEFAULT_PORT: u16 = 3000;

/// The cart: item name → quantity. A `BTreeMap` so the listing comes out in a stable order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cart {
    items: BTreeMap<String, u32>,
}

impl Namespace for Cart {
    const KEY: &'static str = "shopping_cart";
    // A cart is worth keeping longer than the five-minute default.
    const EXPIRY: Duration = Duration::minutes(30);
}

/// The runtime-keyed namespace: a key chosen at run time, as in django-spire.
const VIEWED: &str = "recently_viewed";
/// Browsing history goes stale quickly; the cart does not.
const VIEWED_EXPIRY: Duration = Duration::minutes(2);
const VIEWED_MAX: usize = 5;

#[derive(Deserialize)]
struct AddParams {
    /// Defaults to 1; `NonZeroU32` makes `quantity=0` a 400 instead of an empty line in the cart.
    quantity: Option<NonZeroU32>,
}

/// GET /cart
async fn list(cart: Keyed<Cart>) -> Json<Value> {
    Json(cart_json(&cart))
}

/// POST /cart/{item}?quantity=N
// `Path` and `Query` come first: bad input is rejected before the session is loaded.
async fn add(
    Path(item): Path<String>,
    Query(params): Query<AddParams>,
    mut cart: Keyed<Cart>,
) -> Json<Value> {
    let quantity = params.quantity.map_or(1, NonZeroU32::get);
    let count = cart.items.entry(item.clone()).or_default();
    *count = count.saturating_add(quantity);
    tracing::info!(%item, quantity, "added to the cart");
    Json(cart_json(&cart))
}

/// DELETE /cart/{item}
async fn remove(
    Path(item): Path<String>,
    mut cart: Keyed<Cart>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    // Look through `Deref` first: any mutable access is a write and would slide the stamp.
    if !cart.items.contains_key(&item) {
        let error = json!({ "error": format!("{item:?} is not in the cart") });
        return Err((StatusCode::NOT_FOUND, Json(error)));
    }
    cart.items.remove(&item);
    if cart.items.is_empty() {
        // Otherwise the session would keep `{"items": {}}` and its stamp for nothing.
        cart.purge();
    }
    tracing::info!(%item, "removed from the cart");
    Ok(Json(cart_json(&cart)))
}

/// DELETE /cart
async fn purge(mut cart: Keyed<Cart>) -> Json<Value> {
    cart.purge();
    tracing::info!("cart purged");
    Json(cart_json(&cart))
}

/// GET /viewed
async fn list_viewed(controllers: SessionControllers) -> Result<Json<Value>, Error> {
    let viewed = controllers.open_with_expiry(VIEWED, VIEWED_EXPIRY).await?;
    let items: Vec<String> = viewed.get("items")?.unwrap_or_default();
    Ok(Json(
        json!({ "items": items, "expires_in_seconds": seconds_left(viewed.expires_at()) }),
    ))
}

/// POST /viewed/{item}: the item moves to the front of the last few viewed.
async fn view_item(
    Path(item): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    // Opening drops the history if its stamp has passed, so `get` then sees nothing.
    let mut viewed = controllers.open_with_expiry(VIEWED, VIEWED_EXPIRY).await?;
    let mut items: Vec<String> = viewed.get("items")?.unwrap_or_default();
    items.retain(|seen| *seen != item);
    items.insert(0, item);
    items.truncate(VIEWED_MAX);
    viewed.insert("items", &items)?;
    Ok(Json(
        json!({ "items": items, "expires_in_seconds": seconds_left(viewed.expires_at()) }),
    ))
}

fn cart_json(cart: &Keyed<Cart>) -> Value {
    json!({ "items": cart.items, "expires_in_seconds": seconds_left(cart.expires_at()) })
}

/// The time left before the stamp, for display; `null` when nothing is stored.
fn seconds_left(stamp: Option<OffsetDateTime>) -> Option<i64> {
    stamp.map(|at| (at - OffsetDateTime::now_utc()).whole_seconds())
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/cart", get(list).delete(purge))
        .route("/cart/{item}", post(add).delete(remove))
        .route("/viewed", get(list_viewed))
        .route("/viewed/{item}", post(view_item))
        // The controller layer must run inside the session manager, so it is added first.
        .layer(SessionControllerLayer::new())
        // Browsers drop `Secure` cookies set over plain http://127.0.0.1, and the cart would
        // forget every request. Production serves HTTPS and keeps the default,
        // `with_secure(true)`, so the session cookie never travels in clear text.
        //
        // `MergingStore` keeps two overlapping requests (two tabs adding to the cart) from
        // undoing each other's changes. Several instances sharing Redis would also call
        // `.with_store_lock()`.
        .layer(SessionManagerLayer::new(MergingStore::new(store)).with_secure(false))
}

/// How long start-up waits for a store's server before giving up.
const STORE_TIMEOUT: StdDuration = StdDuration::from_secs(5);

/// The session store `SESSION_STORE` names (nothing connected yet).
enum StoreChoice {
    Memory,
    Redis(String),
    Postgres(String),
    Sqlite(String),
}

impl StoreChoice {
    /// `SESSION_STORE` from the environment: `memory` when unset.
    fn from_env() -> Result<Self, String> {
        let raw = match env::var("SESSION_STORE") {
            Err(env::VarError::NotPresent) => return Ok(Self::Memory),
            Err(env::VarError::NotUnicode(raw)) => {
                return Err(format!("SESSION_STORE={raw:?} is not valid UTF-8"))
            }
            Ok(raw) => raw.trim().to_owned(),
        };
        if raw == "memory" {
            Ok(Self::Memory)
        } else if raw.starts_with("redis://") {
            Ok(Self::Redis(raw))
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Ok(Self::Postgres(raw))
        } else if raw.starts_with("sqlite:") {
            Ok(Self::Sqlite(raw))
        } else {
            Err(format!(
                "SESSION_STORE={:?} is not a session store: use memory (the default), \
                 redis://HOST:PORT, postgres://USER@HOST:PORT/DATABASE or sqlite://FILE",
                redact(&raw)
            ))
        }
    }
}

/// `url` with its password, if any, replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A Redis store; fails unless the server answers.
async fn redis_store(url: &str) -> Result<RedisStore<Pool>, String> {
    let cannot =
        |err: &dyn std::fmt::Display| format!("cannot use the Redis at {}: {err}", redact(url));
    let config = Config::from_url(url).map_err(|err| cannot(&err))?;
    let pool = Pool::new(config, None, None, None, 4).map_err(|err| cannot(&err))?;
    match tokio::time::timeout(STORE_TIMEOUT, pool.init()).await {
        Ok(Ok(_connection)) => Ok(RedisStore::new(pool)),
        Ok(Err(err)) => Err(cannot(&err)),
        Err(_) => Err(cannot(&format!("no answer within {STORE_TIMEOUT:?}"))),
    }
}

/// A PostgreSQL store, its table (`tower_sessions.session`) created if missing.
async fn postgres_store(url: &str) -> Result<PostgresStore, String> {
    let cannot = |err: &dyn std::fmt::Display| {
        format!("cannot use the PostgreSQL at {}: {err}", redact(url))
    };
    let options = PgConnectOptions::from_str(url).map_err(|err| cannot(&err))?;
    // One attempt first, for its error: a pool retries until its timeout and reports only that.
    match tokio::time::timeout(STORE_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
        }
        Ok(Err(err)) => return Err(cannot(&err)),
        Err(_) => return Err(cannot(&format!("no answer within {STORE_TIMEOUT:?}"))),
    }
    let pool = PgPoolOptions::new()
        .acquire_timeout(STORE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|err| cannot(&err))?;
    let store = PostgresStore::new(pool);
    store.migrate().await.map_err(|err| cannot(&err))?;
    Ok(store)
}

/// A SQLite store in the file `url` names, created if missing, with its table.
async fn sqlite_store(url: &str) -> Result<SqliteStore, String> {
    let cannot = |err: &dyn std::fmt::Display| format!("cannot use the SQLite at {url}: {err}");
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|err| cannot(&err))?
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .acquire_timeout(STORE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|err| cannot(&err))?;
    let store = SqliteStore::new(pool);
    store.migrate().await.map_err(|err| cannot(&err))?;
    Ok(store)
}

/// `PORT` from the environment, or the default.
fn port() -> Result<u16, String> {
    match env::var("PORT") {
        Err(env::VarError::NotPresent) => Ok(DEFAULT_PORT),
        Err(env::VarError::NotUnicode(raw)) => Err(format!("PORT={raw:?} is not a port number")),
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|err| format!("PORT={raw:?} is not a port number (0 to 65535): {err}")),
    }
}

async fn run() -> Result<(), String> {
    let store = StoreChoice::from_env()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port()?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    // PORT=0 lets the system choose: print the address actually bound.
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;

    match store {
        StoreChoice::Memory => {
            println!("session store: memory (sessions last as long as the process)");
            serve(listener, addr, MemoryStore::default()).await
        }
        StoreChoice::Redis(url) => {
            let store = redis_store(&url).await?;
            println!("session store: Redis at {}", redact(&url));
            serve(listener, addr, store).await
        }
        StoreChoice::Postgres(url) => {
            let store = postgres_store(&url).await?;
            println!(
                "session store: PostgreSQL at {} (table tower_sessions.session)",
                redact(&url)
            );
            serve(listener, addr, store).await
        }
        StoreChoice::Sqlite(url) => {
            let store = sqlite_store(&url).await?;
            println!("session store: SQLite at {url} (table tower_sessions)");
            serve(listener, addr, store).await
        }
    }
}

/// Serves the cart on `listener` with sessions in `store`, until Ctrl-C.
async fn serve<S: SessionStore + Clone>(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    store: S,
) -> Result<(), String> {
    println!("shopping cart listening on http://{addr} (Ctrl-C to stop)");
    axum::serve(listener, app(store))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|err| format!("server error: {err}"))
}

/// Resolves on Ctrl-C; in-flight requests then finish (and save their sessions) before exit.
async fn shutdown_signal() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        // Resolving here would stop the server at once: keep serving, stop by other means.
        tracing::error!(error = %err, "cannot listen for Ctrl-C; stop the server another way");
        std::future::pending::<()>().await;
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    // RUST_LOG overrides; by default, show the crate's warnings about corrupt or unsaved data
    // and its debug lines (such as an expired namespace being dropped).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_sessions_controller=debug"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
