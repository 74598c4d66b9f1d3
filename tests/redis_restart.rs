//! Redis restarted under a running app: while it is down, every request that needs the store
//! answers a clear `500` (no panic, no store message in the body, the failure logged at
//! `ERROR`) within a bounded time, and requests that do not need it answer as usual; once it is
//! back, the same app, store and pool serve requests again, with no process restart. Four
//! background visitors keep writing and reading through the whole restart: every request of
//! theirs answers `200` before the stop and once the app serves again, a clear `500` while Redis
//! is down, and one or the other in between.
//!
//! The test stops the machine's Redis (`redis-cli -h 127.0.0.1 -p 6379 shutdown nosave`) and
//! starts it again with the machine's own command (`redis-server --daemonize yes ...`); a guard
//! starts it again on drop, so a failing test leaves Redis running. It is the only test of this
//! binary, so nothing else here uses Redis while it is down; the downtime is a few seconds. Redis
//! keeps nothing on disk, so sessions are lost with the restart: the test checks failures and
//! recovery, not persistence.
//!
//! The pool is built as a service that must outlive a Redis restart builds it
//! (`PoolKind::Resilient`: fred reconnects every 100 ms, and a command gives up after 500 ms
//! instead of waiting for the reconnection). A pool built with fred's defaults (no reconnect
//! policy, no command timeout), as `tests/stores/` and the example build it, does not come back:
//! after the restart, seen here, its first command fails with "Connection closed" and every
//! later one waits for ever, so requests hang instead of failing, even once Redis is back.
//!
//! Without Redis at 127.0.0.1:6379 the test prints `SKIPPED ...` and passes, unless
//! `REQUIRE_SERVICES=1`; with `REDIS_URL` set to another server it is skipped (it can only
//! restart the machine's own Redis).

#[path = "faults/fault_store.rs"]
mod fault_store;
#[path = "faults/services.rs"]
mod services;
mod support;

use std::{
    panic::AssertUnwindSafe,
    process::Command,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration as StdDuration, Instant},
};

use axum::{
    extract::Path,
    http::{Method, StatusCode},
    routing::{get, post},
    Json, Router,
};
use futures::FutureExt;
use serde_json::{json, Value};
use time::Duration;
use tower_sessions::{session::Expiry, SessionManagerLayer, SessionStore};
use tower_sessions_controller::{
    Error, ManualClock, MergingStore, SessionControllerLayer, SessionControllers,
};
use tower_sessions_redis_store::{
    fred::prelude::{ClientLike, Pool},
    RedisStore,
};

use fault_store::FaultStore;
use services::PoolKind;
use support::{send, Logs, Reply, START};

const HOST: &str = "127.0.0.1";
const PORT: &str = "6379";
/// The machine's command that starts Redis (quoted for `sh`; the quotes are removed when it is
/// run directly).
const START_COMMAND: [&str; 16] = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    PORT,
    "--save",
    "''",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
];
/// How long a command waits on the resilient pool.
const COMMAND_TIMEOUT: StdDuration = StdDuration::from_millis(500);
/// The longest a request may take while Redis is down.
const ANSWER_WITHIN: StdDuration = StdDuration::from_secs(5);
/// The longest the app may take to serve again after Redis is back.
const RECOVER_WITHIN: StdDuration = StdDuration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Stopping and starting the machine's Redis
// ---------------------------------------------------------------------------------------------

fn ping() -> bool {
    Command::new("redis-cli")
        .args(["-h", HOST, "-p", PORT, "ping"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
}

fn wait_for(up: bool, within: StdDuration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ping() == up {
            return true;
        }
        std::thread::sleep(StdDuration::from_millis(50));
    }
    ping() == up
}

/// Starts Redis again when dropped if it is not answering, whatever happened in between.
struct RedisGuard {
    /// While this file exists, the safety net of the current stop is armed.
    armed: std::path::PathBuf,
}

impl RedisGuard {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        Self {
            armed: std::env::temp_dir()
                .join(format!("redis_restart_net_{}_{nanos}", std::process::id())),
        }
    }

    fn stop(&self) {
        // A safety net outside this process: if this process has not started Redis again within
        // 20 s (it was killed, say), the net starts it. Starting Redis disarms it, so a net never
        // starts Redis during a later run's stop.
        std::fs::write(&self.armed, b"armed").expect("arm the safety net");
        let armed = self.armed.display();
        let net = format!(
            "sleep 20; if [ -e '{armed}' ]; then rm -f '{armed}'; redis-cli -h {HOST} -p {PORT} \
             ping >/dev/null 2>&1 || {}; fi",
            START_COMMAND.join(" ")
        );
        // `setsid --fork` returns at once, leaving the net running on its own.
        Command::new("setsid")
            .args(["--fork", "sh", "-c", &net])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the safety net starts");
        let out = Command::new("redis-cli")
            .args(["-h", HOST, "-p", PORT, "shutdown", "nosave"])
            .output()
            .expect("redis-cli runs");
        assert!(
            wait_for(false, StdDuration::from_secs(5)),
            "Redis still answers after shutdown: {out:?}"
        );
    }

    fn start(&self) {
        let _ = std::fs::remove_file(&self.armed);
        let out = Command::new(START_COMMAND[0])
            .args(START_COMMAND[1..].iter().map(|arg| arg.trim_matches('\'')))
            .output()
            .expect("redis-server runs");
        assert!(
            wait_for(true, StdDuration::from_secs(10)),
            "Redis does not answer after start: {out:?}"
        );
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.armed);
        if !ping() {
            eprintln!("redis_restart: starting Redis again");
            if let Err(panic) = std::panic::catch_unwind(|| self.start()) {
                eprintln!("redis_restart: Redis did not start again: {panic:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

/// GET /ns/{ns}
async fn ns_read(
    Path(ns): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    Ok(Json(Value::Object(controllers.open(&ns).await?.data())))
}

/// POST /ns/{ns}/{key}/{value}
async fn ns_put(
    Path((ns, key, value)): Path<(String, String, String)>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.insert(&key, value)?;
    Ok(Json(Value::Object(namespace.data())))
}

fn app(store: &FaultStore<RedisStore<Pool>>) -> Router {
    Router::new()
        .route("/ns/{ns}", get(ns_read))
        .route("/ns/{ns}/{key}/{value}", post(ns_put))
        .route("/plain", get(|| async { "plain" }))
        .layer(SessionControllerLayer::new().with_clock(ManualClock::new(START)))
        .layer(
            SessionManagerLayer::new(MergingStore::new(store.clone()).with_store_lock())
                .with_secure(false)
                .with_expiry(Expiry::OnInactivity(Duration::hours(1))),
        )
}

/// A visitor of one app: sends with its cookie, keeps the one it is given.
struct Visitor<'a> {
    app: &'a Router,
    cookie: Option<String>,
}

impl<'a> Visitor<'a> {
    fn new(app: &'a Router) -> Self {
        Self { app, cookie: None }
    }

    /// The reply, and how long it took.
    async fn send(&mut self, method: Method, uri: &str) -> (Reply, StdDuration) {
        let started = Instant::now();
        let reply = send(self.app, self.cookie.as_deref(), method, uri).await;
        if let Some(set_cookie) = &reply.set_cookie {
            self.cookie = Some(set_cookie.split(';').next().unwrap_or_default().to_owned());
        }
        (reply, started.elapsed())
    }
}

/// What must never reach a response body: the store's own words.
const STORE_WORDS: [&str; 7] = [
    "6379",
    "127.0.0.1",
    "refused",
    "Redis",
    "IO Error",
    "Connection",
    "Canceled",
];

fn assert_clear_failure(reply: &Reply, took: StdDuration, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{what}: {reply:?}"
    );
    assert!(
        reply.body == "session store unavailable" || reply.body.is_empty(),
        "{what}: body {:?}",
        reply.body
    );
    for word in STORE_WORDS {
        assert!(!reply.body.contains(word), "{what}: body {:?}", reply.body);
    }
    assert_eq!(
        reply.set_cookie, None,
        "{what}: a failed request set a cookie"
    );
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
    let mut cookie: Option<String> = None;
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
        let started = Instant::now();
        let reply = send(&app, cookie.as_deref(), method, &uri).await;
        if let Some(set_cookie) = &reply.set_cookie {
            cookie = Some(set_cookie.split(';').next().unwrap_or_default().to_owned());
        }
        seen.push(Seen {
            phase: at,
            until: phase.get(),
            uri,
            reply,
            took: started.elapsed(),
        });
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    seen
}

/// Checks what the background visitors saw, phase by phase (a request that started in one
/// phase and was answered in another, such as one in flight when Redis stopped, may succeed or
/// fail clearly); returns the counts per starting phase.
fn check_background(seen: &[Seen]) -> Vec<(Phase, usize, usize)> {
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
            Phase::Down => assert_clear_failure(&s.reply, s.took, &what),
            Phase::Stopping | Phase::Back | Phase::Stop => {
                if s.reply.status != StatusCode::OK {
                    assert_clear_failure(&s.reply, s.took, &what);
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

/// One app through Redis' stop and start. Returns the longest answer while
/// Redis was down and how long the app took to serve again.
async fn through_a_restart(
    guard: &RedisGuard,
    store: RedisStore<Pool>,
) -> (StdDuration, StdDuration) {
    let store = FaultStore::new(store);
    let app = app(&store);
    let label = "resilient pool";
    let phase = Clock::default();
    let loaders: Vec<_> = (0..4)
        .map(|n| tokio::spawn(background(app.clone(), phase.clone(), n)))
        .collect();
    let mut visitor = Visitor::new(&app);
    let (reply, _) = visitor.send(Method::POST, "/ns/cart/a/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{label}: before: {reply:?}");
    let (reply, _) = visitor.send(Method::GET, "/ns/cart").await;
    assert_eq!(reply.json(), json!({"a": "1"}), "{label}: before");

    tokio::time::sleep(StdDuration::from_millis(100)).await;
    phase.set(Phase::Stopping);
    guard.stop();
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
            Visitor::new(&app).send(method, uri).await
        } else {
            visitor.send(method, uri).await
        };
        assert_clear_failure(&reply, took, &what);
        slowest = slowest.max(took);
    }
    // Requests that do not need the store answer as usual.
    let (reply, took) = Visitor::new(&app).send(Method::GET, "/plain").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "plain")
    );
    assert!(took < StdDuration::from_millis(500), "/plain took {took:?}");
    let (reply, _) = Visitor::new(&app).send(Method::GET, "/ns/cart").await;
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

    guard.start();
    phase.set(Phase::Back);
    let started = Instant::now();
    // The same app, store and pool: the first request that succeeds after the restart.
    let mut newcomer = Visitor::new(&app);
    loop {
        let (reply, _) = newcomer.send(Method::POST, "/ns/cart/c/3").await;
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
    let (reply, _) = newcomer.send(Method::GET, "/ns/cart").await;
    assert_eq!(reply.json(), json!({"c": "3"}), "{label}: after");

    // The old visitor's session went with Redis' memory: it starts afresh, and writes again.
    let (reply, _) = visitor.send(Method::GET, "/ns/cart").await;
    assert_eq!(
        (reply.status, reply.json()),
        (StatusCode::OK, json!({})),
        "{label}"
    );
    let (reply, _) = visitor.send(Method::POST, "/ns/cart/d/4").await;
    assert_eq!(reply.status, StatusCode::OK, "{label}: after: {reply:?}");
    let (reply, _) = visitor.send(Method::GET, "/ns/cart").await;
    assert_eq!(reply.json(), json!({"d": "4"}), "{label}: after");

    tokio::time::sleep(StdDuration::from_millis(300)).await;
    phase.set(Phase::Stop);
    let mut seen = Vec::new();
    for loader in loaders {
        seen.extend(loader.await.expect("a background visitor panicked"));
    }
    let counts = check_background(&seen);
    eprintln!("background requests (phase, 200, 500): {counts:?}");

    for id in store.ids() {
        let _ = store.inner.delete(&id).await;
    }
    (slowest, recovered)
}

#[tokio::test]
async fn requests_fail_clearly_while_redis_is_down_and_succeed_after_it_restarts() {
    const TEST: &str =
        "redis_restart::requests_fail_clearly_while_redis_is_down_and_succeed_after_it_restarts";
    if services::redis_url() != format!("redis://{HOST}:{PORT}") {
        eprintln!(
            "SKIPPED {TEST}: REDIS_URL is {}, and this test can only restart the machine's Redis \
             at {HOST}:{PORT}",
            services::redis_url()
        );
        return;
    }
    let kind = PoolKind::Resilient {
        command_timeout: COMMAND_TIMEOUT,
    };
    let Some((store, pool)) = services::redis(TEST, kind).await else {
        return;
    };
    let guard = RedisGuard::new();
    let outcome = AssertUnwindSafe(through_a_restart(&guard, store))
        .catch_unwind()
        .await;
    // Redis answers again before the clean-up, whatever happened.
    drop(guard);
    let _ = pool.quit().await;
    match outcome {
        Ok((slowest, recovered)) => eprintln!(
            "slowest answer while Redis was down: {slowest:?}; serving again {recovered:?} after \
             it was back"
        ),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    assert!(ping(), "Redis is running again");
}
