//! Redis restarted under a running app: while it is down, every request that needs the store
//! answers a clear `500` (no panic, no store message in the body, the failure logged at
//! `ERROR`) within a bounded time, and requests that do not need it answer as usual; once it is
//! back, the same app, store and pool serve requests again, with no process restart. Four
//! background visitors keep writing and reading through the whole restart: every request of
//! theirs answers `200` before the stop and once the app serves again, a clear `500` while Redis
//! is down, and one or the other in between.
//!
//! The test leaves the machine's Redis alone: it starts a `redis-server` of its own on a free
//! port, with its own temporary directory and no persistence (`--save "" --appendonly no`),
//! stops that instance in the middle of the run (`SHUTDOWN NOSAVE` sent to its port), starts it
//! again on the same port, and always stops it and removes its directory at the end, also when
//! the test fails (a guard does it on drop). On Linux the instance also dies with the test's
//! thread, so a killed test run leaves no server behind. The instance keeps nothing on disk, so
//! sessions are lost with the restart: the test checks failures and recovery, not persistence.
//!
//! The pool is built as a service that must outlive a Redis restart builds it
//! (`PoolKind::Resilient`: fred reconnects every 100 ms, and a command gives up after 500 ms
//! instead of waiting for the reconnection). A pool built with fred's defaults (no reconnect
//! policy, no command timeout), as `tests/stores/` and the example build it, does not come back:
//! after the restart, seen here, its first command fails with "Connection closed" and every
//! later one waits for ever, so requests hang instead of failing, even once Redis is back.
//!
//! The app is the fault tests' own (`crate::app` on `Stack::MergingLock`, its fault store
//! injecting nothing: Redis itself goes away), and the test runs beside them in their binary: the
//! server it stops is its own, so no other test sees Redis go down.
//!
//! Without a `redis-server` on the `PATH` the test prints `SKIPPED ...` and passes, unless
//! `REQUIRE_SERVICES=1`.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration as StdDuration, Instant},
};

use axum::{
    http::{Method, StatusCode},
    Router,
};
use futures::FutureExt;
use serde_json::json;
use tower_sessions_controller::ManualClock;
use tower_sessions_redis_store::{
    fred::prelude::{ClientLike, Pool},
    RedisStore,
};

use crate::{
    app,
    fault_store::FaultStore,
    redis_server::{ping, OwnRedis},
    services::{self, PoolKind},
    support::{Logs, Reply, Visitor, START},
    Stack,
};

/// How long a command waits on the resilient pool.
const COMMAND_TIMEOUT: StdDuration = StdDuration::from_millis(500);
/// The longest a request may take while Redis is down.
const ANSWER_WITHIN: StdDuration = StdDuration::from_secs(5);
/// The longest the app may take to serve again after Redis is back.
const RECOVER_WITHIN: StdDuration = StdDuration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

/// The reply, and how long it took.
async fn timed(
    visitor: &mut Visitor,
    app: &Router,
    method: Method,
    uri: &str,
) -> (Reply, StdDuration) {
    let started = Instant::now();
    let reply = visitor.send(app, method, uri).await;
    (reply, started.elapsed())
}

/// What must never reach a response body: the store's own words, its port among them.
const STORE_WORDS: [&str; 6] = [
    "127.0.0.1",
    "refused",
    "Redis",
    "IO Error",
    "Connection",
    "Canceled",
];

fn assert_clear_failure(reply: &Reply, took: StdDuration, what: &str, port: u16) {
    let port = port.to_string();
    let words: Vec<&str> = STORE_WORDS.into_iter().chain([port.as_str()]).collect();
    crate::assert_store_failure(reply, what, &words);
    assert!(took < ANSWER_WITHIN, "{what}: took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Background load through the restart
// ---------------------------------------------------------------------------------------------

/// Where the restart was when a background request started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    /// Redis up, before the stop.
    Up,
    /// The stop is under way: a request may still succeed, or fail.
    Stopping,
    /// Redis down: every request that needs the store fails.
    Down,
    /// Redis started again, the app not yet seen serving: success or failure.
    Back,
    /// The app served a request after the restart: everything succeeds.
    Serving,
    Stop,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Up,
        Phase::Stopping,
        Phase::Down,
        Phase::Back,
        Phase::Serving,
        Phase::Stop,
    ];
}

#[derive(Clone, Default)]
struct Clock(Arc<AtomicU8>);

impl Clock {
    fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }

    fn get(&self) -> Phase {
        Phase::ALL[usize::from(self.0.load(Ordering::SeqCst))]
    }
}

/// One background request.
#[derive(Debug)]
struct Seen {
    /// The phase when it started.
    phase: Phase,
    /// The phase when it was answered.
    until: Phase,
    uri: String,
    reply: Reply,
    took: StdDuration,
}

/// A visitor sending a write or a read every 10 ms until the phase is `Stop`.
async fn background(app: Router, phase: Clock, n: usize) -> Vec<Seen> {
    let mut visitor = Visitor::default();
    let mut seen = Vec::new();
    for i in 1.. {
        let at = phase.get();
        if at == Phase::Stop {
            break;
        }
        let (method, uri) = if i % 2 == 1 {
            (Method::POST, format!("/ns/load/v{n}/{i}"))
        } else {
            (Method::GET, "/ns/load".to_owned())
        };
        let (reply, took) = timed(&mut visitor, &app, method, &uri).await;
        seen.push(Seen {
            phase: at,
            until: phase.get(),
            uri,
            reply,
            took,
        });
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    seen
}

/// Checks what the background visitors saw, phase by phase (a request that started in one
/// phase and was answered in another, such as one in flight when Redis stopped, may succeed or
/// fail clearly); returns the counts per starting phase.
fn check_background(seen: &[Seen], port: u16) -> Vec<(Phase, usize, usize)> {
    for s in seen {
        let what = format!("background {} from {:?} to {:?}", s.uri, s.phase, s.until);
        let phase = if s.phase == s.until {
            s.phase
        } else {
            Phase::Stopping
        };
        match phase {
            Phase::Up | Phase::Serving => {
                assert_eq!(s.reply.status, StatusCode::OK, "{what}: {:?}", s.reply);
            }
            Phase::Down => assert_clear_failure(&s.reply, s.took, &what, port),
            Phase::Stopping | Phase::Back | Phase::Stop => {
                if s.reply.status != StatusCode::OK {
                    assert_clear_failure(&s.reply, s.took, &what, port);
                }
            }
        }
    }
    let counts: Vec<(Phase, usize, usize)> = Phase::ALL[..5]
        .iter()
        .map(|phase| {
            let at: Vec<&Seen> = seen.iter().filter(|s| s.phase == *phase).collect();
            let ok = at
                .iter()
                .filter(|s| s.reply.status == StatusCode::OK)
                .count();
            (*phase, ok, at.len() - ok)
        })
        .collect();
    for phase in [Phase::Up, Phase::Down, Phase::Serving] {
        assert!(
            counts
                .iter()
                .any(|(p, ok, failed)| *p == phase && ok + failed > 0),
            "no background request while {phase:?}: {counts:?}"
        );
    }
    counts
}

/// One app through the stop and start of `redis`. Returns the longest answer while Redis was
/// down and how long the app took to serve again.
async fn through_a_restart(
    redis: &mut OwnRedis,
    store: RedisStore<Pool>,
) -> (StdDuration, StdDuration) {
    // The crate's layers as a multi-instance deployment runs them; the fault store injects
    // nothing here: Redis itself goes away.
    let app = app(
        &FaultStore::new(store),
        Stack::MergingLock,
        &ManualClock::new(START),
    );
    let label = "resilient pool";
    let phase = Clock::default();
    let loaders: Vec<_> = (0..4)
        .map(|n| tokio::spawn(background(app.clone(), phase.clone(), n)))
        .collect();
    let mut visitor = Visitor::default();
    let reply = visitor.post(&app, "/ns/cart/a/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{label}: before: {reply:?}");
    let reply = visitor.get(&app, "/ns/cart").await;
    assert_eq!(reply.json(), json!({"a": "1"}), "{label}: before");

    tokio::time::sleep(StdDuration::from_millis(100)).await;
    phase.set(Phase::Stopping);
    redis.stop();
    phase.set(Phase::Down);
    let (logs, log_guard) = Logs::capture();
    let mut slowest = StdDuration::ZERO;
    for (method, uri, anonymous) in [
        (Method::GET, "/ns/cart", false),
        (Method::POST, "/ns/cart/b/2", false),
        (Method::POST, "/ns/cart/a/1", true),
    ] {
        let what = format!("{label}: Redis down: {method} {uri} (anonymous: {anonymous})");
        let (reply, took) = if anonymous {
            timed(&mut Visitor::default(), &app, method, uri).await
        } else {
            timed(&mut visitor, &app, method, uri).await
        };
        assert_clear_failure(&reply, took, &what, redis.port);
        slowest = slowest.max(took);
    }
    // Requests that do not need the store answer as usual.
    let (reply, took) = timed(&mut Visitor::default(), &app, Method::GET, "/plain").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "plain")
    );
    assert!(took < StdDuration::from_millis(500), "/plain took {took:?}");
    let reply = Visitor::default().get(&app, "/ns/cart").await;
    assert_eq!((reply.status, reply.json()), (StatusCode::OK, json!({})));
    let errors = logs.lines_at("ERROR");
    assert!(
        errors
            .iter()
            .any(|line| line.contains("session store") || line.contains("failed to save session")),
        "{label}: the failures are not logged at ERROR:\n{}",
        logs.text()
    );
    drop(log_guard);

    redis.restart(false);
    phase.set(Phase::Back);
    let started = Instant::now();
    // The same app, store and pool: the first request that succeeds after the restart.
    let mut newcomer = Visitor::default();
    loop {
        let reply = newcomer.post(&app, "/ns/cart/c/3").await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
        assert!(
            started.elapsed() < RECOVER_WITHIN,
            "{label}: still failing {:?} after Redis is back: {reply:?}",
            started.elapsed()
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let recovered = started.elapsed();
    phase.set(Phase::Serving);
    let reply = newcomer.get(&app, "/ns/cart").await;
    assert_eq!(reply.json(), json!({"c": "3"}), "{label}: after");

    // The old visitor's session went with Redis' memory: it starts afresh, and writes again.
    let reply = visitor.get(&app, "/ns/cart").await;
    assert_eq!(
        (reply.status, reply.json()),
        (StatusCode::OK, json!({})),
        "{label}"
    );
    let reply = visitor.post(&app, "/ns/cart/d/4").await;
    assert_eq!(reply.status, StatusCode::OK, "{label}: after: {reply:?}");
    let reply = visitor.get(&app, "/ns/cart").await;
    assert_eq!(reply.json(), json!({"d": "4"}), "{label}: after");

    tokio::time::sleep(StdDuration::from_millis(300)).await;
    phase.set(Phase::Stop);
    let mut seen = Vec::new();
    for loader in loaders {
        seen.extend(loader.await.expect("a background visitor panicked"));
    }
    let counts = check_background(&seen, redis.port);
    eprintln!("background requests (phase, 200, 500): {counts:?}");
    (slowest, recovered)
}

#[tokio::test]
async fn requests_fail_clearly_while_redis_is_down_and_succeed_after_it_restarts() {
    const TEST: &str =
        "faults::redis_restart::requests_fail_clearly_while_redis_is_down_and_succeed_after_it_restarts";
    let mut redis = match OwnRedis::start(false) {
        Ok(redis) => redis,
        Err(why) => return services::missing(TEST, &why),
    };
    let kind = PoolKind::Resilient {
        command_timeout: COMMAND_TIMEOUT,
    };
    let (store, pool) = services::connect_redis(&redis.url(), kind)
        .await
        .unwrap_or_else(|err| panic!("{TEST}: the test's own Redis cannot be reached: {err}"));
    let outcome = AssertUnwindSafe(through_a_restart(&mut redis, store))
        .catch_unwind()
        .await;
    let _ = tokio::time::timeout(StdDuration::from_secs(2), pool.quit()).await;
    // The test's Redis is stopped and its directory removed, whatever happened.
    let (port, dir) = (redis.port, redis.dir.clone());
    drop(redis);
    match outcome {
        Ok((slowest, recovered)) => eprintln!(
            "slowest answer while Redis was down: {slowest:?}; serving again {recovered:?} after \
             it was back"
        ),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    assert!(!ping(port), "the test's Redis still answers");
    assert!(!dir.exists(), "the test's Redis left {dir:?}");
}
