//! The session store `SESSION_STORE` names: memory, Redis, PostgreSQL or SQLite.
//!
//! Each is a merging store of the crate (`stores::MemoryStore`, `stores::RedisStore`,
//! `stores::PostgresStore`, `stores::SqliteStore`). Redis, PostgreSQL and SQLite are the
//! example's cargo features `redis`, `postgres` and `sqlite`, which turn on the crate's feature
//! of the same name. A store whose driver this build left out fails at start-up, with the command that
//! builds it.

use std::env;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use std::str::FromStr;
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
use std::time::Duration as StdDuration;

#[cfg(feature = "redis")]
use fred::prelude::{
    ClientLike, Config, ConnectionConfig, PerformanceConfig, Pool, ReconnectPolicy,
};
#[cfg(not(all(feature = "redis", feature = "postgres", feature = "sqlite")))]
use tower_sessions::MemoryStore;
#[cfg(feature = "redis")]
use tower_sessions_controller::stores::RedisStore;
#[cfg(feature = "sqlite")]
use tower_sessions_controller::stores::{
    sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions},
    SqliteStore,
};
#[cfg(feature = "postgres")]
use tower_sessions_controller::stores::{
    sqlx::{
        postgres::{PgConnectOptions, PgPoolOptions},
        ConnectOptions, Connection,
    },
    PostgresStore,
};

/// How long start-up waits for a store's server before giving up.
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
const STORE_TIMEOUT: StdDuration = StdDuration::from_secs(5);

/// The session store `SESSION_STORE` names (nothing connected yet).
pub enum StoreChoice {
    Memory,
    Redis(String),
    Postgres(String),
    Sqlite(String),
}

impl StoreChoice {
    /// `SESSION_STORE` from the environment: `memory` when unset.
    pub fn from_env() -> Result<Self, String> {
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
pub fn redact(url: &str) -> String {
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

/// The start-up error for `url`, whose store's driver (the cargo feature `feature`) this build
/// left out.
#[cfg(not(all(feature = "redis", feature = "postgres", feature = "sqlite")))]
fn left_out(url: &str, feature: &str) -> String {
    format!(
        "SESSION_STORE={:?} needs the example's `{feature}` feature, left out of this build: \
         run `cargo run --example shopping_cart --features {feature}`",
        redact(url)
    )
}

/// Without the `redis` feature: always the error naming it. (`MemoryStore` only stands for the
/// store type that `main` serves; none is made.)
#[cfg(not(feature = "redis"))]
pub async fn redis_store(url: &str) -> Result<MemoryStore, String> {
    Err(left_out(url, "redis"))
}

/// Without the `postgres` feature: always the error naming it.
#[cfg(not(feature = "postgres"))]
pub async fn postgres_store(url: &str) -> Result<MemoryStore, String> {
    Err(left_out(url, "postgres"))
}

/// Without the `sqlite` feature: always the error naming it.
#[cfg(not(feature = "sqlite"))]
pub async fn sqlite_store(url: &str) -> Result<MemoryStore, String> {
    Err(left_out(url, "sqlite"))
}

/// A Redis store; fails unless the server answers.
#[cfg(feature = "redis")]
pub async fn redis_store(url: &str) -> Result<RedisStore<Pool>, String> {
    let cannot =
        |err: &dyn std::fmt::Display| format!("cannot use the Redis at {}: {err}", redact(url));
    let config = Config::from_url(url).map_err(|err| cannot(&err))?;
    // Without a reconnect policy and a command timeout, a pool whose Redis restarts waits
    // forever on every command after the first failure; with them, requests fail fast while
    // Redis is down and succeed again once it is back.
    let timeout = StdDuration::from_millis(500);
    let pool = Pool::new(
        config,
        Some(PerformanceConfig {
            default_command_timeout: timeout,
            ..PerformanceConfig::default()
        }),
        Some(ConnectionConfig {
            connection_timeout: timeout,
            internal_command_timeout: timeout,
            max_command_attempts: 1,
            ..ConnectionConfig::default()
        }),
        Some(ReconnectPolicy::new_constant(0, 100)),
        4,
    )
    .map_err(|err| cannot(&err))?;
    match tokio::time::timeout(STORE_TIMEOUT, pool.init()).await {
        Ok(Ok(_connection)) => Ok(RedisStore::new(pool)),
        Ok(Err(err)) => Err(cannot(&err)),
        Err(_) => Err(cannot(&format!("no answer within {STORE_TIMEOUT:?}"))),
    }
}

/// A PostgreSQL store, its table (`tower_sessions.session`) created if missing.
#[cfg(feature = "postgres")]
pub async fn postgres_store(url: &str) -> Result<PostgresStore, String> {
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
#[cfg(feature = "sqlite")]
pub async fn sqlite_store(url: &str) -> Result<SqliteStore, String> {
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
