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
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    panic::AssertUnwindSafe,
    path::PathBuf,
    process::{Child, Command, Stdio},
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
    services::{self, PoolKind},
    support::{Logs, Reply, Visitor, START},
    Stack,
};

const HOST: &str = "127.0.0.1";
/// How long a command waits on the resilient pool.
const COMMAND_TIMEOUT: StdDuration = StdDuration::from_millis(500);
/// The longest a request may take while Redis is down.
const ANSWER_WITHIN: StdDuration = StdDuration::from_secs(5);
/// The longest the app may take to serve again after Redis is back.
const RECOVER_WITHIN: StdDuration = StdDuration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A Redis of the test's own
// ---------------------------------------------------------------------------------------------

/// Sends one inline command to the Redis on `port` and returns its reply lines until `done`
/// says enough, or `None` when nothing answers (`SHUTDOWN` closes the connection without a
/// reply).
fn command(port: u16, command: &str, done: impl Fn(&str) -> bool) -> Option<Vec<String>> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, StdDuration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(StdDuration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.ok()?;
        let enough = done(&line);
        lines.push(line);
        if enough {
            break;
        }
    }
    Some(lines)
}

fn ping(port: u16) -> bool {
    command(port, "PING", |_| true).is_some_and(|reply| reply == ["+PONG"])
}

/// The process id of the Redis that answers on `port`: the test shuts down only a server it
/// knows to be its own.
fn server_pid(port: u16) -> Option<u32> {
    let reply = command(port, "INFO server", |line| line.starts_with("process_id:"))?;
    reply
        .iter()
        .find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok())
}

fn wait_for(port: u16, up: bool, within: StdDuration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ping(port) == up {
            return true;
        }
        std::thread::sleep(StdDuration::from_millis(50));
    }
    ping(port) == up
}

/// A port no one listens on now (the kernel's pick for port 0).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((HOST, 0))?.local_addr()?.port())
}

/// A `redis-server` this test started: on its own port, with its own directory. Dropping it
/// stops the server and removes the directory, whatever happened in between.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    server: Option<Child>,
}

impl OwnRedis {
    /// Starts an instance on a free port, or says why it cannot.
    fn start() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "tower_sessions_controller_redis_{}_{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|err| format!("creating {dir:?}: {err}"))?;
        let mut redis = Self {
            port: 0,
            dir,
            server: None,
        };
        // Another process may take the free port before the server binds it: try a few.
        let mut tried = Vec::new();
        for _ in 0..3 {
            redis.port = free_port().map_err(|err| format!("no free port: {err}"))?;
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(err) => tried.push(err),
            }
        }
        Err(tried.join("; "))
    }

    fn url(&self) -> String {
        format!("redis://{HOST}:{}", self.port)
    }

    /// Starts the server on the instance's port and directory, and waits until it answers.
    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let log = self.dir.join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .args([
                "--bind",
                HOST,
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_this_thread(&mut command);
        let server = command
            .spawn()
            .map_err(|err| format!("redis-server cannot be started: {err}"))?;
        let pid = server.id();
        self.server = Some(server);
        let deadline = Instant::now() + StdDuration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                break;
            }
            // Another server may hold the port: only this process's answer counts.
            if server_pid(self.port) == Some(pid) {
                return Ok(());
            }
            std::thread::sleep(StdDuration::from_millis(50));
        }
        self.kill();
        Err(format!(
            "redis-server on port {port} did not answer; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ))
    }

    /// Whether the server process has ended.
    fn exited(&mut self) -> bool {
        self.server
            .as_mut()
            .is_none_or(|server| !matches!(server.try_wait(), Ok(None)))
    }

    /// Stops this instance as an operator would: `SHUTDOWN NOSAVE` on its own port.
    fn stop(&mut self) {
        let pid = self.server.as_ref().map(Child::id);
        assert!(
            pid.is_some() && server_pid(self.port) == pid,
            "the server on port {} is not the test's own",
            self.port
        );
        let reply = command(self.port, "SHUTDOWN NOSAVE", |_| true);
        let deadline = Instant::now() + StdDuration::from_secs(5);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(StdDuration::from_millis(20));
        }
        assert!(
            self.exited(),
            "the test's Redis still runs after SHUTDOWN NOSAVE (reply {reply:?})"
        );
        self.server = None;
        assert!(
            wait_for(self.port, false, StdDuration::from_secs(5)),
            "the test's Redis still answers after SHUTDOWN NOSAVE"
        );
    }

    /// Starts this instance again, on the same port.
    fn restart(&mut self) {
        if let Err(err) = self.spawn() {
            panic!("the test's Redis did not start again: {err}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Has the kernel kill the server when the thread that started it ends: a test run killed
/// before the guard's drop leaves no server behind.
#[cfg(target_os = "linux")]
fn die_with_this_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only `prctl`, which is async-signal-safe,
    // and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_this_thread(_command: &mut Command) {}

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

    redis.restart();
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
    let mut redis = match OwnRedis::start() {
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
