//! In-process request benchmarks: one full request per iteration, through
//! `tower::ServiceExt::oneshot`, with a valid session cookie, against a session seeded once in
//! setup. The contenders and workloads are described in BENCHMARKS.md.
//!
//! `cargo bench --bench requests` runs every benchmark in a fresh process of its own (this binary
//! again, with `BENCH_ONLY=<id>`), then prints the ratio tables (medians of this run against raw
//! tower-sessions), also written to `target/criterion/ratios.md`. `BENCH_FILTER=<text>` keeps the
//! benchmarks whose id contains the text; `BENCH_CLOCK=wall` measures wall time instead of the
//! thread's CPU time. Given criterion's own arguments (`cargo bench --bench requests --
//! change_one_key`, `--profile-time 10`, …) it runs them in this one process, as criterion does.
//! `--drive` runs one case without criterion, for callgrind (see `drive`).

mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use criterion::{
    measurement::{Measurement, ValueFormatter, WallTime},
    BenchmarkGroup, Criterion, SamplingMode,
};
use time::OffsetDateTime;
use tokio::runtime::Runtime;
use tower_sessions_controller::ManualClock;

use support::{app, body, request, send, Contender, Seed, SEED_COUNTER};

/// The benchmarked namespace's sizes.
const SIZES: [(&str, usize); 3] = [("100B", 100), ("10KiB", 10 << 10), ("1MiB", 1 << 20)];
/// How many other namespaces the session holds besides the benchmarked one.
const OTHERS: [usize; 2] = [1, 50];
/// The size of each other namespace.
const OTHER_BYTES: usize = 1 << 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `GET /read`: open the namespace, read its counter. Nothing is saved.
    ReadOnly,
    /// `POST /change`: open the namespace, increment its counter (a write: the stamp slides).
    ChangeOneKey,
    /// `GET /read` of a namespace whose stamp has passed: it is dropped and the session saved.
    Expired,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::ReadOnly => "read_only",
            Workload::ChangeOneKey => "change_one_key",
            Workload::Expired => "expired",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Workload::ChangeOneKey => "/change",
            Workload::ReadOnly | Workload::Expired => "/read",
        }
    }

    /// What the first request of the workload answers after seeding: proof that it found the
    /// session (or dropped the expired namespace).
    fn expected(self) -> String {
        match self {
            Workload::ReadOnly => SEED_COUNTER.to_string(),
            Workload::ChangeOneKey => (SEED_COUNTER + 1).to_string(),
            Workload::Expired => "0".to_owned(),
        }
    }
}

/// What the benchmarks measure: the CPU time of the benchmarking thread (the default), or wall
/// time (`BENCH_CLOCK=wall`). Every request runs on that one thread (a current-thread Tokio
/// runtime, in-memory stores, no I/O), so its CPU time is its wall time minus the time the thread
/// waited for the CPU: on a shared machine, time lost to other processes does not count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClockKind {
    ThreadCpu,
    Wall,
}

fn clock() -> (ClockKind, Instant) {
    static CLOCK: OnceLock<(ClockKind, Instant)> = OnceLock::new();
    *CLOCK.get_or_init(|| {
        let kind = match std::env::var("BENCH_CLOCK").as_deref() {
            Ok("wall") => ClockKind::Wall,
            Ok("cpu") | Err(_) => ClockKind::ThreadCpu,
            Ok(other) => panic!("BENCH_CLOCK={other}: use `cpu` (the default) or `wall`"),
        };
        (kind, Instant::now())
    })
}

/// The chosen clock's reading, as a duration since an arbitrary origin.
fn now() -> Duration {
    match clock() {
        (ClockKind::Wall, origin) => origin.elapsed(),
        (ClockKind::ThreadCpu, _) => {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid, writable `timespec`, and the clock id is a constant that
            // Linux provides for the calling thread.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
            Duration::new(ts.tv_sec.unsigned_abs(), ts.tv_nsec.unsigned_abs() as u32)
        }
    }
}

/// Criterion's measurement on [`now`].
struct BenchClock {
    wall: WallTime,
}

impl Measurement for BenchClock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        now()
    }

    fn end(&self, start: Duration) -> Duration {
        now().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

/// An app of `contender`, its session seeded, and the cookie of that session.
struct Prepared {
    app: axum::Router,
    cookie: String,
}

fn prepare(
    rt: &Runtime,
    contender: Contender,
    workload: Workload,
    bytes: usize,
    others: usize,
) -> Prepared {
    rt.block_on(async {
        let now = OffsetDateTime::now_utc();
        let stamp = match workload {
            Workload::Expired => now - time::Duration::hours(1),
            _ => now + time::Duration::days(1),
        };
        let seed = Arc::new(Seed::new(bytes, stamp, others, OTHER_BYTES));
        if contender != Contender::Floor {
            let stored = seed.namespaces[0].1.to_string().len();
            assert!(
                stored.abs_diff(bytes) <= 4,
                "the namespace is {stored} B, not {bytes} B"
            );
        }
        let clock = (workload == Workload::Expired).then(|| ManualClock::new(now));
        let app = app(contender, seed, clock).await;
        if contender == Contender::Floor {
            let (status, _, answer) = send(&app, request("/read", None)).await;
            assert!(
                status.is_success() && answer == "0",
                "the floor answered {status}"
            );
            return Prepared {
                app,
                cookie: String::new(),
            };
        }
        let (status, cookie, _) = send(&app, request("/seed", None)).await;
        assert!(
            status.is_success() && !cookie.is_empty(),
            "{contender:?}: seeding failed"
        );
        let (status, _, answer) = send(&app, request(workload.path(), Some(&cookie))).await;
        assert!(
            status.is_success() && answer == workload.expected(),
            "{contender:?} {}: answered {status} {answer:?}",
            workload.name()
        );
        if workload == Workload::Expired {
            send(&app, request("/seed", Some(&cookie))).await;
        }
        Prepared { app, cookie }
    })
}

fn bench_contender(
    group: &mut BenchmarkGroup<'_, BenchClock>,
    rt: &Runtime,
    contender: Contender,
    workload: Workload,
    bytes: usize,
    others: usize,
) {
    let Prepared { app, cookie } = prepare(rt, contender, workload, bytes, others);
    let (app, cookie) = (&app, Some(cookie.as_str()).filter(|c| !c.is_empty()));
    let path = workload.path();
    group.bench_function(contender.name(), |b| {
        if workload == Workload::Expired {
            // Each request drops the namespace: put it back, untimed, before the next one.
            b.to_async(rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    body(app, request("/seed", cookie)).await;
                    let start = now();
                    let answer = body(app, request(path, cookie)).await;
                    total += now().saturating_sub(start);
                    std::hint::black_box(answer);
                }
                total
            });
        } else {
            b.to_async(rt).iter(|| body(app, request(path, cookie)));
        }
    });
}

fn bench_case(
    c: &mut Criterion<BenchClock>,
    rt: &Runtime,
    only: Option<&str>,
    workload: Workload,
    size: &str,
    others: usize,
) {
    let name = group_name(workload, size, others);
    let chosen: Vec<Contender> = Contender::SESSIONS
        .into_iter()
        .filter(|c| only.is_none_or(|id| id == format!("{name}/{}", c.name())))
        .collect();
    if chosen.is_empty() {
        return;
    }
    let bytes = SIZES
        .iter()
        .find(|(name, _)| *name == size)
        .expect("a size")
        .1;
    let mut group = c.benchmark_group(name);
    if bytes >= 1 << 20 {
        // Milliseconds per request: criterion's default of 100 linear samples would need
        // 5,050 of them.
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
    } else {
        group.sample_size(50);
    }
    for contender in chosen {
        bench_contender(&mut group, rt, contender, workload, bytes, others);
    }
    group.finish();
}

/// `requests --drive CONTENDER WORKLOAD SIZE OTHERS N`: prepares one case as the benchmark does,
/// then sends N requests, each through [`one_request`], and exits. For profiling:
/// `valgrind --tool=callgrind --toggle-collect='*one_request*' <binary> --drive …` counts the
/// instructions of the requests alone (an expired case's untimed re-seeding is outside).
fn drive(args: &[String]) {
    let [contender, workload, size, others, n] = args else {
        panic!("--drive CONTENDER WORKLOAD SIZE OTHERS N");
    };
    let contender = Contender::parse(contender).expect("a contender name");
    let workload = [
        Workload::ReadOnly,
        Workload::ChangeOneKey,
        Workload::Expired,
    ]
    .into_iter()
    .find(|w| w.name() == workload)
    .expect("read_only, change_one_key or expired");
    let bytes = SIZES
        .iter()
        .find(|(name, _)| name == size)
        .expect("100B, 10KiB or 1MiB")
        .1;
    let (others, n): (usize, u64) = (others.parse().expect("OTHERS"), n.parse().expect("N"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let Prepared { app, cookie } = prepare(&rt, contender, workload, bytes, others);
    let cookie = Some(cookie.as_str()).filter(|c| !c.is_empty());
    rt.block_on(async {
        for _ in 0..n {
            if workload == Workload::Expired {
                body(&app, request("/seed", cookie)).await;
            }
            std::hint::black_box(one_request(&app, request(workload.path(), cookie)));
        }
    });
}

/// One request, polled once: every contender completes a request without waiting (the stores
/// are in memory), so this is a plain function that a profiler can single out.
#[inline(never)]
fn one_request(
    app: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> axum::body::Bytes {
    // Unconstrained: Tokio's cooperative budget would otherwise run out over many requests in
    // one task and make a lock answer `Pending`.
    let future = std::pin::pin!(tokio::task::unconstrained(body(app, request)));
    let waker = std::task::Waker::noop();
    match future.poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(bytes) => bytes,
        std::task::Poll::Pending => panic!("a request did not complete in one poll"),
    }
}

/// The benchmarked cases, in order: (workload, size, others).
fn cases() -> Vec<(Workload, &'static str, usize)> {
    let mut cases = Vec::new();
    for workload in [Workload::ChangeOneKey, Workload::ReadOnly] {
        for (size, _) in SIZES {
            for others in OTHERS {
                cases.push((workload, size, others));
            }
        }
    }
    for others in OTHERS {
        cases.push((Workload::Expired, "10KiB", others));
    }
    cases
}

fn group_name(workload: Workload, size: &str, others: usize) -> String {
    format!("{}/{size}/others_{others}", workload.name())
}

/// Every benchmark's id (`group/function`), in the order they run.
fn benchmark_ids() -> Vec<String> {
    let mut ids = vec![format!("floor/{}", Contender::Floor.name())];
    for (workload, size, others) in cases() {
        let group = group_name(workload, size, others);
        ids.extend(Contender::SESSIONS.map(|c| format!("{group}/{}", c.name())));
    }
    ids
}

/// Runs the benchmarks in this process: all of them, or only the one whose id is `only`.
fn run_here(only: Option<&str>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let mut c = Criterion::default()
        .with_measurement(BenchClock { wall: WallTime })
        .warm_up_time(Duration::from_millis(1000))
        .measurement_time(Duration::from_millis(2500))
        .nresamples(20_000)
        .without_plots()
        .configure_from_args();

    let floor = format!("floor/{}", Contender::Floor.name());
    if only.is_none_or(|id| id == floor) {
        let mut group = c.benchmark_group("floor");
        group.sample_size(50);
        bench_contender(&mut group, &rt, Contender::Floor, Workload::ReadOnly, 0, 0);
        group.finish();
    }
    for (workload, size, others) in cases() {
        bench_case(&mut c, &rt, only, workload, size, others);
    }
    c.final_summary();
}

/// Runs every benchmark (those whose id contains `BENCH_FILTER`, if set) in a process of its
/// own, one after the other. In one long-lived process, each benchmark would start from the heap
/// that the previous ones left (freed megabytes of small allocations, fragmented bins), and the
/// medians of identical requests moved by tens of percent with their position in the run; a fresh
/// process gives each contender the same start.
fn run_isolated() {
    let exe = std::env::current_exe().expect("this binary's path");
    let home = criterion_home();
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    for id in benchmark_ids() {
        if !id.contains(&filter) {
            continue;
        }
        let status = std::process::Command::new(&exe)
            .arg("--bench")
            .env("BENCH_ONLY", &id)
            .env("CRITERION_HOME", &home)
            .status()
            .expect("run a benchmark process");
        assert!(
            status.success(),
            "the benchmark process for {id} failed: {status}"
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--drive") {
        return drive(&args[1..]);
    }
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        // One benchmark, for `run_isolated`: no table.
        return run_here(Some(&only));
    }
    let started = SystemTime::now();
    // `cargo bench` passes `--bench` alone; `cargo test --benches` passes nothing (criterion's
    // test mode: each benchmark once, in this process).
    if args == ["--bench"] {
        run_isolated();
    } else {
        // Criterion's own arguments (a filter, `--profile-time`, …): one process, as usual.
        run_here(None);
    }
    match report(started) {
        Some(report) => {
            println!("\n{report}");
            let path = criterion_home().join("ratios.md");
            if let Err(err) = std::fs::write(&path, &report) {
                eprintln!("could not write {}: {err}", path.display());
            }
        }
        None => println!("\n(no benchmark results from this run: no ratio table)"),
    }
}

/// Where criterion writes its results (its own rule: `CRITERION_HOME`, else the cargo target
/// directory's `criterion`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&target).join("criterion");
    }
    // The bench binary is target/<profile>/deps/requests-<hash>.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Medians (ns) of the benchmarks this run measured, by (group, function).
fn medians(since: SystemTime) -> BTreeMap<(String, String), f64> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![criterion_home()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.file_name().is_none_or(|name| name != "estimates.json")
                || path
                    .parent()
                    .and_then(Path::file_name)
                    .is_none_or(|d| d != "new")
            {
                continue;
            }
            let fresh = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified >= since);
            let read = |p: &Path| -> Option<serde_json::Value> {
                serde_json::from_slice(&std::fs::read(p).ok()?).ok()
            };
            let (Some(estimates), Some(id)) =
                (read(&path), read(&path.with_file_name("benchmark.json")))
            else {
                continue;
            };
            let (Some(group), Some(function), Some(median)) = (
                id["group_id"].as_str(),
                id["function_id"].as_str(),
                estimates["median"]["point_estimate"].as_f64(),
            ) else {
                continue;
            };
            if fresh {
                found.insert((group.to_owned(), function.to_owned()), median);
            }
        }
    }
    found
}

fn human(ns: f64) -> String {
    match ns {
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.1} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

/// The ratio tables, in Markdown.
fn report(since: SystemTime) -> Option<String> {
    let medians = medians(since);
    if medians.is_empty() {
        return None;
    }
    let get = |group: &str, contender: Contender| {
        medians
            .get(&(group.to_owned(), contender.name().to_owned()))
            .copied()
    };
    let mut out = String::new();
    let clock = match clock().0 {
        ClockKind::ThreadCpu => "CPU time of the benchmarking thread",
        ClockKind::Wall => "wall time",
    };
    let _ = writeln!(
        out,
        "Medians of one run ({clock}); ratios are contender / raw tower-sessions (lower is \
         faster).\n"
    );
    if let Some(floor) = get("floor", Contender::Floor) {
        let _ = writeln!(
            out,
            "bare axum handler, no session layer (the floor): {}\n",
            human(floor)
        );
    }
    let _ = writeln!(
        out,
        "| workload | namespace | others | raw median | raw_typed | controllers | keyed | \
         controllers_merging | keyed_merging | axum_session | floor | keyed / raw_typed |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let cases = || {
        [
            Workload::ChangeOneKey,
            Workload::ReadOnly,
            Workload::Expired,
        ]
        .into_iter()
        .flat_map(|w| {
            SIZES
                .iter()
                .flat_map(move |(s, _)| OTHERS.iter().map(move |o| (w, *s, *o)))
        })
    };
    let group_of = group_name;
    for (workload, size, others) in cases() {
        let group = group_of(workload, size, others);
        let Some(raw) = get(&group, Contender::Raw) else {
            continue;
        };
        let over = |v: Option<f64>, base: Option<f64>| match (v, base) {
            (Some(v), Some(base)) => format!("{:.3}", v / base),
            _ => "–".to_owned(),
        };
        let ratio = |c: Contender| over(get(&group, c), Some(raw));
        let _ = writeln!(
            out,
            "| {} | {size} | {others} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            workload.name(),
            human(raw),
            ratio(Contender::RawTyped),
            ratio(Contender::Controllers),
            ratio(Contender::Keyed),
            ratio(Contender::ControllersMerging),
            ratio(Contender::KeyedMerging),
            ratio(Contender::AxumSession),
            over(get("floor", Contender::Floor), Some(raw)),
            over(
                get(&group, Contender::Keyed),
                get(&group, Contender::RawTyped)
            ),
        );
    }
    let _ = writeln!(
        out,
        "\nGrowth with the other namespaces: median with 50 others / median with 1 other, same \
         contender.\n"
    );
    let _ = writeln!(
        out,
        "| workload | namespace | raw | raw_typed | controllers | keyed | controllers_merging | \
         keyed_merging | axum_session |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (workload, size, others) in cases() {
        if others != OTHERS[0] {
            continue;
        }
        let (one, many) = (
            group_of(workload, size, OTHERS[0]),
            group_of(workload, size, OTHERS[1]),
        );
        let growth = |c: Contender| match (get(&one, c), get(&many, c)) {
            (Some(one), Some(many)) => Some(format!("{:.3}", many / one)),
            _ => None,
        };
        let cells: Vec<_> = Contender::SESSIONS.into_iter().map(growth).collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let cells: Vec<_> = cells
            .into_iter()
            .map(|c| c.unwrap_or_else(|| "–".to_owned()))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {size} | {} |",
            workload.name(),
            cells.join(" | ")
        );
    }
    Some(out)
}
