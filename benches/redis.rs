//! Redis: store round trips and overlapping writes (BENCHMARKS.md), for three ways of keeping
//! sessions in Redis behind `SessionControllerLayer`:
//!
//! - raw: tower-sessions-redis-store's `RedisStore`, nothing else;
//! - merging+lock: the same store in `MergingStore::with_store_lock()`;
//! - RedisStore: this crate's `stores::RedisStore`.
//!
//! On a `redis-server` of its own (started on a free port with its own temporary directory and
//! no persistence, killed at the end; nobody else sends it commands), it counts the commands
//! each request kind sends to Redis, as `MONITOR` shows them (commands a Lua script runs inside
//! Redis are not round trips and are left out), then runs 240 writes of distinct keys to one
//! session over two app instances (two pools, two `SessionManagerLayer`s), 16 in flight, and
//! counts the keys stored afterwards. Prints Markdown tables.
//!
//! `cargo bench --bench redis` (`REDIS_BENCH_RUNS=<n>` sets the overlap runs per contender,
//! default 5; `REDIS_BENCH_ONLY=<text>` runs the overlaps of the contenders whose name holds
//! `<text>` only, for a profiler; `REDIS_BENCH_SERVER=<program>` runs another server than
//! `redis-server`, e.g. a `valkey-server`, whose `SET ... IFEQ` `stores::RedisStore` then uses).
//! Without the server on the `PATH` it says so and exits.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::mpsc,
    time::{Duration as StdDuration, Instant},
};

use axum::{
    body::Body,
    extract::Path,
    http::{header, Method, Request, StatusCode},
    routing::{get, post},
    Json, Router,
};
use fred::prelude::{ClientLike, Config, Pool};
use futures::{stream, StreamExt};
use http_body_util::BodyExt;
use serde_json::Value;
use time::Duration;
use tower::{ServiceBuilder, ServiceExt};
use tower_sessions::{session::Expiry, SessionManagerLayer, SessionStore};
use tower_sessions_controller::{
    stores, Error, MergingStore, SessionControllerLayer, SessionControllers,
};

const WRITES: usize = 240;
const IN_FLIGHT: usize = 16;

// ---------------------------------------------------------------------------------------------
// A redis-server of our own (the tests' one), and MONITOR
// ---------------------------------------------------------------------------------------------

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use redis_server::OwnRedis;

/// Every command the server runs, read from a `MONITOR` connection.
struct Monitor {
    lines: mpsc::Receiver<String>,
    markers: usize,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("MONITOR connection");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR");
        // Commands count from the server's `+OK`: it monitors from then on.
        stream
            .set_read_timeout(Some(StdDuration::from_secs(5)))
            .expect("a read timeout");
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR's answer");
        assert_eq!(ok.trim_end(), "+OK", "MONITOR's answer");
        reader
            .get_ref()
            .set_read_timeout(None)
            .expect("no read timeout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines, markers: 0 }
    }

    /// The commands clients sent since the last call (script internals left out), by name.
    async fn take(&mut self, pool: &Pool) -> Vec<String> {
        self.markers += 1;
        let marker = format!("bench-marker-{}", self.markers);
        let _: String = pool
            .custom(
                fred::types::CustomCommand::new_static("ECHO", None, false),
                vec![marker.as_str()],
            )
            .await
            .expect("ECHO");
        let mut commands = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(StdDuration::from_secs(5))
                .expect("MONITOR shows the marker");
            if line.contains(&format!("\"{marker}\"")) {
                return commands;
            }
            let Some((source, command)) = line.split_once("] \"") else {
                continue;
            };
            if !source.ends_with(" lua") {
                let name = command.split('"').next().unwrap_or_default();
                commands.push(name.to_ascii_uppercase());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

async fn ns_read(
    Path(ns): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    Ok(Json(Value::Object(controllers.open(&ns).await?.data())))
}

async fn ns_put(
    Path((ns, key, value)): Path<(String, String, String)>,
    controllers: SessionControllers,
) -> Result<&'static str, Error> {
    controllers.open(&ns).await?.insert(&key, value)?;
    Ok("ok")
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/ns/{ns}", get(ns_read))
        .route("/ns/{ns}/{key}/{value}", post(ns_put))
        .layer(
            ServiceBuilder::new()
                .layer(
                    SessionManagerLayer::new(store)
                        .with_secure(false)
                        .with_expiry(Expiry::OnInactivity(Duration::hours(1))),
                )
                .layer(SessionControllerLayer::new()),
        )
}

/// One request; the status, the `Set-Cookie` pair (`id=...`) if any, and the body.
async fn send(
    app: &Router,
    cookie: Option<&str>,
    method: Method,
    uri: &str,
) -> (StatusCode, Option<String>, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, cookie, String::from_utf8_lossy(&body).into_owned())
}

async fn pool(url: &str) -> Pool {
    let pool = Pool::new(Config::from_url(url).expect("url"), None, None, None, 4).expect("pool");
    pool.init().await.expect("connect");
    pool
}

#[derive(Clone, Copy)]
enum Contender {
    Raw,
    MergingLock,
    Ours,
}

impl Contender {
    const ALL: [Contender; 3] = [Contender::Raw, Contender::MergingLock, Contender::Ours];

    fn name(self) -> &'static str {
        match self {
            Contender::Raw => "raw tower-sessions-redis-store",
            Contender::MergingLock => "`MergingStore` + `with_store_lock()`",
            Contender::Ours => "`stores::RedisStore`",
        }
    }

    fn app(self, pool: &Pool) -> Router {
        let theirs = tower_sessions_redis_store::RedisStore::new(pool.clone());
        match self {
            Contender::Raw => app(theirs),
            Contender::MergingLock => app(MergingStore::new(theirs).with_store_lock()),
            Contender::Ours => app(stores::RedisStore::new(pool.clone())),
        }
    }
}

/// The commands of each request kind, as `"GET, SET"`.
async fn round_trips(contender: Contender, pool: &Pool, monitor: &mut Monitor) -> Vec<String> {
    let app = contender.app(pool);
    monitor.take(pool).await;
    let mut shown = Vec::new();
    let mut show = |commands: Vec<String>| {
        shown.push(if commands.is_empty() {
            "0".to_owned()
        } else {
            format!("{} ({})", commands.len(), commands.join(", "))
        })
    };

    let (status, _, _) = send(&app, None, Method::GET, "/ns/cart").await;
    assert_eq!(status, StatusCode::OK);
    show(monitor.take(pool).await);

    let (status, cookie, _) = send(&app, None, Method::POST, "/ns/cart/a/1").await;
    assert_eq!(status, StatusCode::OK);
    let cookie = cookie.expect("a session");
    show(monitor.take(pool).await);

    // A first save loads the script into the server (stores::RedisStore): not counted.
    send(&app, Some(&cookie), Method::POST, "/ns/cart/b/2").await;
    monitor.take(pool).await;
    let (status, _, _) = send(&app, Some(&cookie), Method::POST, "/ns/cart/c/3").await;
    assert_eq!(status, StatusCode::OK);
    show(monitor.take(pool).await);

    let (status, _, body) = send(&app, Some(&cookie), Method::GET, "/ns/cart").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"c\""), "{body}");
    show(monitor.take(pool).await);
    shown
}

/// How many times the server ran `command` so far (its `INFO commandstats` calls).
async fn calls(pool: &Pool, command: &str) -> u64 {
    let info: String = pool
        .custom(
            fred::types::CustomCommand::new_static("INFO", None, false),
            vec!["commandstats"],
        )
        .await
        .expect("INFO commandstats");
    redis_server::ran(&info, command)
}

/// 240 overlapping writes of distinct keys to one session over two instances, 16 in flight:
/// the keys lost, the writes not answered `200`, and the wall time.
async fn overlap(contender: Contender, a: &Pool, b: &Pool) -> (usize, usize, StdDuration) {
    let (app_a, app_b) = (contender.app(a), contender.app(b));
    let (_, cookie, _) = send(&app_a, None, Method::POST, "/ns/log/seed/0").await;
    let cookie = cookie.expect("a session");
    let started = Instant::now();
    let failed: usize = stream::iter(0..WRITES)
        .map(|i| {
            let (app, cookie) = (if i % 2 == 0 { &app_a } else { &app_b }, cookie.as_str());
            async move {
                let uri = format!("/ns/log/k{i}/{i}");
                let (status, _, _) = send(app, Some(cookie), Method::POST, &uri).await;
                usize::from(status != StatusCode::OK)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    let elapsed = started.elapsed();
    let (_, _, body) = send(&app_a, Some(&cookie), Method::GET, "/ns/log").await;
    let stored: Value = serde_json::from_str(&body).expect("JSON");
    let kept = (0..WRITES)
        .filter(|i| stored.get(format!("k{i}")).is_some())
        .count();
    (WRITES - kept, failed, elapsed)
}

fn main() {
    let program = std::env::var("REDIS_BENCH_SERVER").unwrap_or_else(|_| "redis-server".into());
    let redis = match OwnRedis::start_program(&program, false) {
        Ok(redis) => redis,
        Err(err) => {
            eprintln!("SKIPPED: a {program} of its own is needed: {err}");
            return;
        }
    };
    let runs: usize = std::env::var("REDIS_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = redis.url();
        let (a, b) = (pool(&url).await, pool(&url).await);
        let mut monitor = Monitor::start(redis.port);

        println!("Redis commands per request (as MONITOR shows them):\n");
        println!("| store | anonymous read | new visitor's first write | write | read |");
        println!("|---|---|---|---|---|");
        for contender in Contender::ALL {
            let shown = round_trips(contender, &a, &mut monitor).await;
            println!("| {} | {} |", contender.name(), shown.join(" | "));
        }
        drop(monitor);

        println!(
            "\n{WRITES} overlapping writes of distinct keys to one session, 2 instances, \
             {IN_FLIGHT} in flight, {runs} runs:\n"
        );
        println!(
            "| store | keys lost, each run | writes not answered 200 | wall time, each run (ms) \
             | compare-and-set tries per write |"
        );
        println!("|---|---|---|---|---|");
        let only = std::env::var("REDIS_BENCH_ONLY").unwrap_or_default();
        for contender in Contender::ALL {
            if !contender.name().contains(&only) {
                continue;
            }
            let (mut lost, mut failed, mut times) = (Vec::new(), 0, Vec::new());
            let before = (calls(&a, "evalsha").await, calls(&a, "set").await);
            for _ in 0..runs {
                let (l, f, t) = overlap(contender, &a, &b).await;
                lost.push(l.to_string());
                failed += f;
                times.push(format!("{:.0}", t.as_secs_f64() * 1000.0));
            }
            // `stores::RedisStore`: one `EVALSHA` per compare-and-set where the store runs the
            // script (whose own `SET`s Redis counts as `SET` calls too), else one `SET ... IFEQ`
            // (and one `SET NX` per run, the session's creation); so per write, the tries.
            let evalsha = calls(&a, "evalsha").await - before.0;
            let sets = calls(&a, "set").await - before.1;
            let tries = match contender {
                Contender::Ours if evalsha > 0 => evalsha as f64 / (runs * WRITES) as f64,
                Contender::Ours => sets.saturating_sub(runs as u64) as f64 / (runs * WRITES) as f64,
                _ => 0.0,
            };
            println!(
                "| {} | {} | {failed} | {} | {} |",
                contender.name(),
                lost.join(", "),
                times.join(", "),
                if tries > 0.0 {
                    format!("{tries:.2}")
                } else {
                    "-".to_owned()
                }
            );
        }
        let _ = a.quit().await;
        let _ = b.quit().await;
    });
    drop(redis);
}
