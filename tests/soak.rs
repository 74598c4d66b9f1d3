//! A bounded soak: sustained load on a real HTTP server, with expiring namespaces, for a few
//! minutes. Not run by `cargo test` (it is `#[ignore]`d): `scripts/soak.sh [seconds]` runs it.
//!
//! The server is the crate's layers on `axum::serve`, in this process, on `127.0.0.1:0` (a real
//! TCP listener and hyper's HTTP/1.1, with keep-alive), over `MergingStore::with_store_lock()` on
//! `MemoryStore`, or on the local Redis with `SOAK_STORE=redis` (`REDIS_URL`, as in the other
//! tests; the pool reconnects and gives up on a command after 2 s). `SOAK_VISITORS` visitors (default 64) each keep one connection and one session
//! and send requests one after another for `SOAK_SECS` seconds (default 180): writes (three
//! namespaces, expiring 30 s, 2 min and 10 min after a write), reads, removals and purges, over
//! eight keys. The load moves the `ManualClock` one second every 16 requests, so namespaces expire
//! between a visitor's requests all the time: expiry is exercised, judged by the crate's clock,
//! never by sleeping.
//!
//! What it checks:
//!
//! - Every response is a `200`, and says what a model of the visitor's session says: the keys and
//!   values, and the stamp, of each namespace, and that a namespace whose stamp has passed reads
//!   as empty. (The model knows the clock only between the request's start and its answer; a
//!   stamp inside that window may go either way.)
//! - RSS (`VmRSS` of `/proc/self/status`) stays flat after the warm-up (the first sixth of the
//!   run, at least 10 s): its growth from the end of the warm-up to the end is below
//!   `RSS_GROWTH_LIMIT` (8 MiB).
//! - At the end, after the clock has moved 5 minutes and every visitor has opened each namespace
//!   once more (which drops the expired ones), the store holds exactly one record per visitor,
//!   no other record (no orphaned session, no `MergingStore` lock left behind), and in each
//!   record exactly the namespaces the model holds: none expired, none the visitor purged,
//!   removed or let expire.
//!
//! Figures of one run each (debug build, 64 visitors, on the 2-core machine while other builds
//! ran); "as the model said" covers every response, and the store at the end held one record per
//! visitor, no orphaned record, no lock, no expired or unexpected namespace:
//!
//! | command | duration | requests | expired during / by the sweep | RSS after warm-up → end (peak) |
//! |---|---|---|---|---|
//! | `bash scripts/soak.sh 240` | 240.9 s | 144,108 (598/s), all `200` | 5,021 / 106 | 12.4 → 12.8 MiB (13.2), warm-up 40.7 s |
//! | `SOAK_STORE=redis bash scripts/soak.sh 180` | 180.2 s | 52,963 (294/s), all `200` | 1,816 / 108 | 16.7 → 17.3 MiB (17.8), warm-up 30.6 s |

#[path = "faults/fault_store.rs"]
mod fault_store;
#[path = "support/services.rs"]
mod services;
mod support;

use std::{
    collections::{BTreeMap, HashMap},
    future::IntoFuture,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration as StdDuration, Instant},
};

use axum::{
    extract::Path,
    routing::{delete, get, post},
    Json, Router,
};
use futures::FutureExt;
use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tower_sessions::{session::Id, MemoryStore, SessionManagerLayer, SessionStore};
use tower_sessions_controller::{
    Clock, Error, ManualClock, MergingStore, SessionControllerLayer, SessionControllers, STAMP_KEY,
};
use tower_sessions_redis_store::fred::prelude::ClientLike;

use fault_store::{mix, FaultStore};
use support::{nanos, START};

/// RSS may grow at most this much from the end of the warm-up to the end of the run.
const RSS_GROWTH_LIMIT: u64 = 8 * 1024 * 1024;
/// The namespaces, and how long after a write each expires.
const NAMESPACES: [(&str, i64); 3] = [("short", 30), ("medium", 120), ("long", 600)];
/// Keys per namespace.
const KEYS: u64 = 8;
/// The clock moves one second every this many requests.
const REQUESTS_PER_CLOCK_SECOND: u64 = 16;
const VERSIONS_KEY: &str = "tower_sessions_controller.versions";

fn expiry_of(ns: &str) -> Duration {
    let (_, seconds) = NAMESPACES
        .iter()
        .find(|(name, _)| *name == ns)
        .unwrap_or_else(|| panic!("unknown namespace {ns}"));
    Duration::seconds(*seconds)
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

fn report(data: Map<String, Value>, expires_at: Option<OffsetDateTime>) -> Json<Value> {
    Json(json!({ "data": data, "expires_at": expires_at.map(nanos) }))
}

/// GET /ns/{ns}
async fn read(Path(ns): Path<String>, c: SessionControllers) -> Result<Json<Value>, Error> {
    let namespace = c.open_with_expiry(&ns, expiry_of(&ns)).await?;
    Ok(report(namespace.data(), namespace.expires_at()))
}

/// POST /ns/{ns}/{key}/{value}
async fn write(
    Path((ns, key, value)): Path<(String, String, u64)>,
    c: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = c.open_with_expiry(&ns, expiry_of(&ns)).await?;
    namespace.insert(&key, value)?;
    Ok(report(namespace.data(), namespace.expires_at()))
}

/// DELETE /ns/{ns}/{key}
async fn remove(
    Path((ns, key)): Path<(String, String)>,
    c: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = c.open_with_expiry(&ns, expiry_of(&ns)).await?;
    namespace.remove(&key);
    Ok(report(namespace.data(), namespace.expires_at()))
}

/// DELETE /ns/{ns}
async fn purge(Path(ns): Path<String>, c: SessionControllers) -> Result<Json<Value>, Error> {
    let mut namespace = c.open_with_expiry(&ns, expiry_of(&ns)).await?;
    namespace.purge();
    Ok(report(namespace.data(), namespace.expires_at()))
}

/// GET /all: every namespace opened (so the expired ones are dropped), with its stamp.
async fn all(c: SessionControllers) -> Result<Json<Value>, Error> {
    let mut out = Map::new();
    for (ns, _) in NAMESPACES {
        let namespace = c.open_with_expiry(ns, expiry_of(ns)).await?;
        out.insert(
            ns.to_owned(),
            json!({ "data": namespace.data(), "expires_at": namespace.expires_at().map(nanos) }),
        );
    }
    Ok(Json(Value::Object(out)))
}

fn app<B: SessionStore + Clone>(store: &FaultStore<B>, clock: &ManualClock) -> Router {
    Router::new()
        .route("/ns/{ns}", get(read).delete(purge))
        .route("/ns/{ns}/{key}", delete(remove))
        .route("/ns/{ns}/{key}/{value}", post(write))
        .route("/all", get(all))
        .layer(SessionControllerLayer::new().with_clock(clock.clone()))
        .layer(
            SessionManagerLayer::new(MergingStore::new(store.clone()).with_store_lock())
                .with_secure(false),
        )
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client on one kept-alive connection
// ---------------------------------------------------------------------------------------------

struct Connection {
    stream: BufReader<TcpStream>,
    cookie: Option<String>,
}

struct Answer {
    status: u16,
    body: Value,
}

impl Connection {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream: BufReader::new(stream),
            cookie: None,
        }
    }

    async fn send(&mut self, method: &str, uri: &str) -> Answer {
        let mut request =
            format!("{method} {uri} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n");
        if let Some(cookie) = &self.cookie {
            request.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        request.push_str("\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("write");

        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("status line {line:?}"));
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.expect("header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').expect("a header");
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>().expect("length")),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "set-cookie" => {
                    self.cookie = Some(value.split(';').next().unwrap_or_default().to_owned());
                }
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await.expect("chunk size");
                let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await.expect("chunk");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length.expect("a content-length"), 0);
            self.stream.read_exact(&mut body).await.expect("body");
        }
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Answer { status, body }
    }

    fn session_id(&self) -> Option<Id> {
        self.cookie.as_ref()?.strip_prefix("id=")?.parse().ok()
    }
}

// ---------------------------------------------------------------------------------------------
// The model of one visitor's session
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Stored {
    data: Map<String, Value>,
    stamp: Option<i64>,
}

#[derive(Default)]
struct Model {
    namespaces: BTreeMap<String, Stored>,
}

/// What a response should show for a namespace opened at a "now" between `t0` and `t1`.
enum Judged<'a> {
    Alive(&'a Stored),
    Gone,
    EitherWay(&'a Stored),
}

impl Model {
    fn judge(&self, ns: &str, t0: i64, t1: i64) -> Judged<'_> {
        match self.namespaces.get(ns) {
            None => Judged::Gone,
            // A namespace without a stamp is never dropped.
            Some(stored) => match stored.stamp {
                None => Judged::Alive(stored),
                Some(stamp) if stamp > t1 + SLACK => Judged::Alive(stored),
                Some(stamp) if stamp <= t0 - SLACK => Judged::Gone,
                Some(_) => Judged::EitherWay(stored),
            },
        }
    }
}

/// Stamps are stored as float seconds: a stamp read back may differ from the one written by the
/// float's resolution (about 0.24 µs today).
const SLACK: i64 = 1_000;

fn same_stamp(a: Option<i64>, b: Option<i64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= SLACK,
        (a, b) => a == b,
    }
}

/// One operation of a visitor.
enum Step {
    Read,
    Write(String, u64),
    Remove(String),
    Purge,
}

/// Checks one answer for `ns` against the model and updates the model: `Ok(true)` if the
/// namespace had expired (the model held it, and its stamp had passed), a description of the
/// mismatch if the answer is not what the model allows.
fn check(
    model: &mut Model,
    ns: &str,
    step: &Step,
    answer: &Value,
    (t0, t1): (i64, i64),
) -> Result<bool, String> {
    let data = answer["data"].as_object().cloned().unwrap_or_default();
    let stamp = answer["expires_at"].as_i64();
    let expiry = i64::try_from(expiry_of(ns).whole_nanoseconds()).expect("fits");
    // What the namespace was before the request, each way the judgement may go.
    let judged = model.judge(ns, t0, t1);
    let expired = matches!(judged, Judged::Gone) && model.namespaces.contains_key(ns);
    let befores: Vec<Option<&Stored>> = match judged {
        Judged::Alive(stored) => vec![Some(stored)],
        Judged::Gone => vec![None],
        Judged::EitherWay(stored) => vec![Some(stored), None],
    };
    let fits = |before: Option<&Stored>| -> bool {
        let mut expected = before.map(|s| s.data.clone()).unwrap_or_default();
        let old_stamp = before.and_then(|s| s.stamp);
        match step {
            Step::Read => data == expected && same_stamp(stamp, old_stamp),
            Step::Write(key, value) => {
                expected.insert(key.clone(), json!(value));
                data == expected
                    && stamp
                        .is_some_and(|stamp| (t0 - SLACK..=t1 + SLACK).contains(&(stamp - expiry)))
            }
            Step::Remove(key) => {
                expected.remove(key);
                let expected_stamp = if expected.is_empty() { None } else { old_stamp };
                data == expected && same_stamp(stamp, expected_stamp)
            }
            Step::Purge => data.is_empty() && stamp.is_none(),
        }
    };
    if !befores.iter().any(|before| fits(*before)) {
        return Err(format!(
            "{ns}: model {:?} (clock {t0}..{t1}) but answered {answer}",
            model.namespaces.get(ns)
        ));
    }
    if data.is_empty() {
        model.namespaces.remove(ns);
    } else {
        model
            .namespaces
            .insert(ns.to_owned(), Stored { data, stamp });
    }
    Ok(expired)
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value:?} is not a number"))
        })
        .unwrap_or(default)
}

fn now_nanos(clock: &ManualClock) -> i64 {
    nanos(clock.now())
}

/// What one visitor did.
struct Visited {
    connection: Connection,
    model: Model,
    requests: u64,
    mismatches: Vec<String>,
    non_200: u64,
    /// Namespaces found expired (and dropped) when opened.
    expired: u64,
}

async fn visitor(
    index: u64,
    addr: std::net::SocketAddr,
    clock: ManualClock,
    requests: Arc<AtomicU64>,
    until: Instant,
) -> Visited {
    let mut visited = Visited {
        connection: Connection::open(addr).await,
        model: Model::default(),
        requests: 0,
        mismatches: Vec::new(),
        non_200: 0,
        expired: 0,
    };
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let roll = mix((index << 32) ^ n);
        let (ns, _) = NAMESPACES[(roll % 3) as usize];
        let key = format!("k{}", (roll >> 8) % KEYS);
        let (method, uri, step) = match (roll >> 16) % 20 {
            0..=8 => (
                "POST",
                format!("/ns/{ns}/{key}/{n}"),
                Step::Write(key.clone(), n),
            ),
            9..=14 => ("GET", format!("/ns/{ns}"), Step::Read),
            15..=18 => ("DELETE", format!("/ns/{ns}/{key}"), Step::Remove(key)),
            _ => ("DELETE", format!("/ns/{ns}"), Step::Purge),
        };
        let t0 = now_nanos(&clock);
        let answer = visited.connection.send(method, &uri).await;
        let t1 = now_nanos(&clock);
        visited.requests += 1;
        if requests.fetch_add(1, Ordering::Relaxed) % REQUESTS_PER_CLOCK_SECOND == 0 {
            clock.advance(Duration::seconds(1));
        }
        if answer.status != 200 {
            visited.non_200 += 1;
            if visited.mismatches.len() < 5 {
                visited
                    .mismatches
                    .push(format!("{method} {uri}: {} {}", answer.status, answer.body));
            }
            continue;
        }
        match check(&mut visited.model, ns, &step, &answer.body, (t0, t1)) {
            Ok(expired) => visited.expired += u64::from(expired),
            Err(mismatch) if visited.mismatches.len() < 5 => {
                visited
                    .mismatches
                    .push(format!("{method} {uri}: {mismatch}"));
            }
            Err(_) => {}
        }
    }
    visited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: run scripts/soak.sh [seconds]"]
async fn soak() {
    match std::env::var("SOAK_STORE").as_deref() {
        Err(_) | Ok("memory") => run(FaultStore::new(MemoryStore::default()), "memory").await,
        Ok("redis") => {
            let kind = services::PoolKind::Resilient {
                command_timeout: StdDuration::from_secs(2),
            };
            let Some((redis, pool)) = services::redis("soak::soak", kind).await else {
                return;
            };
            let store = FaultStore::new(redis);
            let outcome = AssertUnwindSafe(run(store.clone(), "redis"))
                .catch_unwind()
                .await;
            for id in store.ids() {
                if let Err(err) = store.inner.delete(&id).await {
                    eprintln!("clean-up: deleting session {id} failed: {err}");
                }
            }
            let _ = pool.quit().await;
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        }
        Ok(other) => panic!("SOAK_STORE={other:?}: use memory or redis"),
    }
}

/// The soak on `store`.
async fn run<B: SessionStore + Clone>(store: FaultStore<B>, store_name: &str) {
    let seconds = env_number("SOAK_SECS", 180);
    let visitors = env_number("SOAK_VISITORS", 64);
    let warm_up = StdDuration::from_secs((seconds / 6).max(10));

    let clock = ManualClock::new(START);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(axum::serve(listener, app(&store, &clock)).into_future());

    let started = Instant::now();
    let until = started + StdDuration::from_secs(seconds);
    let requests = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..visitors)
        .map(|i| {
            tokio::spawn(visitor(
                i,
                addr,
                clock.clone(),
                Arc::clone(&requests),
                until,
            ))
        })
        .collect();

    // RSS, once a second.
    let mut samples = Vec::new();
    let mut rss_at_warm_up = None;
    while Instant::now() < until {
        tokio::time::sleep(StdDuration::from_secs(1)).await;
        let rss = rss_bytes();
        samples.push(rss);
        if rss_at_warm_up.is_none() && started.elapsed() >= warm_up {
            rss_at_warm_up = Some(rss);
            eprintln!(
                "soak: warm-up over after {:?}: RSS {:.1} MiB, {} requests",
                started.elapsed(),
                mib(rss),
                requests.load(Ordering::Relaxed)
            );
        }
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("a visitor panicked"));
    }
    let elapsed = started.elapsed();
    let rss_at_end = rss_bytes();
    let total = requests.load(Ordering::Relaxed);
    let non_200: u64 = done.iter().map(|v| v.non_200).sum();
    let expired: u64 = done.iter().map(|v| v.expired).sum();
    let mismatches: Vec<String> = done.iter().flat_map(|v| v.mismatches.clone()).collect();

    // The final sweep: the clock moves 5 minutes, every visitor opens every namespace.
    clock.advance(Duration::minutes(5));
    let now = now_nanos(&clock);
    let mut sweep_mismatches = Vec::new();
    let mut kept = 0;
    let mut swept = 0;
    for visited in &mut done {
        let answer = visited.connection.send("GET", "/all").await;
        assert_eq!(answer.status, 200, "final sweep: {}", answer.body);
        for (ns, _) in NAMESPACES {
            match check(
                &mut visited.model,
                ns,
                &Step::Read,
                &answer.body[ns],
                (now, now),
            ) {
                Ok(expired) => swept += u64::from(expired),
                Err(mismatch) => sweep_mismatches.push(mismatch),
            }
        }
        kept += visited.model.namespaces.len();
    }

    // The store: one record per visitor, holding exactly its model, nothing expired.
    let ids: HashMap<Id, usize> = done
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((v.connection.session_id()?, i)))
        .collect();
    let mut records = 0;
    let mut store_problems = Vec::new();
    for id in store.ids() {
        let Some(record) = store.inner.load(&id).await.expect("store load") else {
            continue;
        };
        records += 1;
        let Some(&owner) = ids.get(&id) else {
            store_problems.push(format!("orphaned record {id}: {:?}", record.data));
            continue;
        };
        let model = &done[owner].model;
        let mut namespaces = BTreeMap::new();
        for (key, value) in record.data {
            if key == VERSIONS_KEY {
                continue;
            }
            let mut data = value.as_object().cloned().unwrap_or_default();
            let stamp = data.remove(STAMP_KEY).and_then(|stamp| stamp.as_f64());
            match stamp {
                Some(stamp) if stamp * 1e9 > now as f64 => {}
                other => store_problems.push(format!(
                    "visitor {owner}: namespace {key} stored with stamp {other:?}, now {now}"
                )),
            }
            namespaces.insert(key, data);
        }
        let expected: BTreeMap<String, Map<String, Value>> = model
            .namespaces
            .iter()
            .map(|(ns, stored)| (ns.clone(), stored.data.clone()))
            .collect();
        if namespaces != expected {
            store_problems.push(format!(
                "visitor {owner}: stored {namespaces:?}, model {expected:?}"
            ));
        }
    }
    server.abort();

    let rss_at_warm_up = rss_at_warm_up.expect("the run outlasted its warm-up");
    let peak = samples.iter().copied().max().unwrap_or(rss_at_end);
    eprintln!(
        "soak on {store_name}: {elapsed:.1?}, {visitors} visitors, {total} requests ({:.0}/s), {non_200} not 200, \
         {} mismatches; {expired} namespaces found expired during the run, {swept} more by the final \
         sweep; clock moved {} s; RSS {:.1} MiB after warm-up, {:.1} MiB at the end \
         (peak {:.1} MiB, growth {:+.1} MiB); final store: {records} records, {kept} live \
         namespaces, {} problems",
        total as f64 / elapsed.as_secs_f64(),
        mismatches.len() + sweep_mismatches.len(),
        (now_nanos(&clock) - nanos(START)) / 1_000_000_000,
        mib(rss_at_warm_up),
        mib(rss_at_end),
        mib(peak),
        (rss_at_end as f64 - rss_at_warm_up as f64) / 1024.0 / 1024.0,
        store_problems.len()
    );

    assert_eq!(non_200, 0, "responses other than 200: {mismatches:#?}");
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert!(sweep_mismatches.is_empty(), "{sweep_mismatches:#?}");
    assert!(store_problems.is_empty(), "{store_problems:#?}");
    assert_eq!(records, visitors as usize, "one record per visitor");
    assert!(
        rss_at_end < rss_at_warm_up + RSS_GROWTH_LIMIT,
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(rss_at_warm_up),
        mib(rss_at_end)
    );
    assert!(total > 1000, "only {total} requests: the load did not run");
    assert!(
        expired > total / 100 && swept > 0,
        "expiry was hardly exercised: {expired} namespaces found expired in {total} requests, \
         {swept} by the sweep"
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}
