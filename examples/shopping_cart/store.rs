//! The session store `SESSION_STORE` names: memory, Redis, PostgreSQL or SQLite.

use std::{env, str::FromStr, time::Duration as StdDuration};

use tower_sessions_redis_store::{
    fred::prelude::{
        ClientLike, Config, ConnectionConfig, PerformanceConfig, Pool, ReconnectPolicy,
    },
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

/// How long start-up waits for a store's server before giving up.
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

/// A Redis store; fails unless the server answers.
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
