//! The machine's servers for the tests that use them: where they are (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`; `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! how a test connects to Redis, and what a test does when a server cannot be reached: prints
//! `SKIPPED <test>: ...` and passes, or fails under `REQUIRE_SERVICES=1`.
//!
//! Included with `#[path]` by the files that use a server (`faults.rs`, `soak.rs`,
//! `stores/main.rs`), not by `mod.rs`, so that the other tests do not link the Redis client.
#![allow(dead_code)]

use std::{env, fmt, time::Duration};

use tower_sessions_redis_store::{
    fred::{
        prelude::{ClientLike, Config, Pool},
        types::config::{ConnectionConfig, PerformanceConfig, ReconnectPolicy},
    },
    RedisStore,
};

/// How long a test waits for a server to answer before calling it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn redis_url() -> String {
    env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn database_url() -> String {
    env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn services_required() -> bool {
    env::var("REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

/// Something `test` needs is missing (`why` says what): a failure under `REQUIRE_SERVICES=1`,
/// otherwise a skip that says so.
pub fn missing(test: &str, why: &str) {
    if services_required() {
        panic!("{test}: {why} (REQUIRE_SERVICES=1: a missing service fails the test)");
    }
    eprintln!("SKIPPED {test}: {why} (set REQUIRE_SERVICES=1 to make this a failure)");
}

/// The server `service` at `url` cannot be reached: a failure under `REQUIRE_SERVICES=1`,
/// otherwise a skip that says so.
pub fn unreachable(test: &str, service: &str, url: &str, err: &dyn fmt::Display) {
    missing(
        test,
        &format!("{service} at {} cannot be reached: {err}", redact(url)),
    );
}

/// `url` with its password, if any, replaced by `***`: the URLs are printed.
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

/// How the Redis pool is built.
#[derive(Debug, Clone, Copy)]
pub enum PoolKind {
    /// As `tests/stores/` and the example build it: fred's defaults, no reconnect policy.
    Plain,
    /// As a service that must outlive a Redis restart builds it: reconnect every 100 ms for ever,
    /// and give up on a command after `command_timeout` instead of queueing it until Redis is
    /// back.
    Resilient { command_timeout: Duration },
}

/// A Redis store on a pool of its own, on the Redis at `url`, or why not.
pub async fn connect_redis(url: &str, kind: PoolKind) -> Result<(RedisStore<Pool>, Pool), String> {
    let config = Config::from_url(url).map_err(|err| err.to_string())?;
    let pool = match kind {
        PoolKind::Plain => Pool::new(config, None, None, None, 4),
        PoolKind::Resilient { command_timeout } => Pool::new(
            config,
            Some(PerformanceConfig {
                default_command_timeout: command_timeout,
                ..PerformanceConfig::default()
            }),
            Some(ConnectionConfig {
                connection_timeout: command_timeout,
                internal_command_timeout: command_timeout,
                max_command_attempts: 1,
                ..ConnectionConfig::default()
            }),
            Some(ReconnectPolicy::new_constant(0, 100)),
            4,
        ),
    }
    .map_err(|err| err.to_string())?;
    match tokio::time::timeout(CONNECT_TIMEOUT, pool.init()).await {
        Ok(Ok(_connection)) => Ok((RedisStore::new(pool.clone()), pool)),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// A Redis store at `REDIS_URL` for `test`, or `None` after reporting the skip.
pub async fn redis(test: &str, kind: PoolKind) -> Option<(RedisStore<Pool>, Pool)> {
    let url = redis_url();
    match connect_redis(&url, kind).await {
        Ok(connected) => Some(connected),
        Err(err) => {
            unreachable(test, "Redis", &url, &err);
            None
        }
    }
}
