//! Peak memory (VmHWM) of a process that populates a `MemoryStore` with 10,000 sessions, each
//! holding one 1 KiB namespace, written through each contender's layers and handler.
//!
//! `cargo bench --bench memory` runs this binary once more per contender, in a separate process
//! (`<binary> --contender NAME`), so that each peak is its own; it prints the table. See
//! BENCHMARKS.md.

mod support;

use std::{process::Command, sync::Arc};

use time::{Duration, OffsetDateTime};

use support::{app, request, send, Contender, Seed};

const SESSIONS: usize = 10_000;
const NAMESPACE_BYTES: usize = 1 << 10;

/// `VmHWM` and `VmRSS` of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The worker: `None` builds the app and sends nothing (the baseline of the process).
fn work(contender: Option<Contender>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let cookies = rt.block_on(async {
        let stamp = OffsetDateTime::now_utc() + Duration::days(1);
        let seed = Arc::new(Seed::new(NAMESPACE_BYTES, stamp, 0, 0));
        let Some(contender) = contender else {
            let _app = app(Contender::Raw, seed, None).await;
            return 0;
        };
        let app = app(contender, seed, None).await;
        let mut cookies = 0;
        for _ in 0..SESSIONS {
            let (status, cookie, _) = send(&app, request("/write", None)).await;
            assert!(
                status.is_success(),
                "{contender:?}: /write answered {status}"
            );
            cookies += usize::from(!cookie.is_empty());
        }
        // The store (and so the sessions) is still alive here: `app` holds it.
        let (hwm, rss) = memory();
        println!("{} {hwm} {rss} {cookies}", contender.name());
        std::mem::forget(app);
        cookies
    });
    if contender.is_none() {
        let (hwm, rss) = memory();
        println!("baseline {hwm} {rss} {cookies}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--contender") {
        let name = args.get(at + 1).expect("--contender NAME");
        match name.as_str() {
            "baseline" => work(None),
            name => work(Some(Contender::parse(name).expect("a contender name"))),
        }
        return;
    }
    // `cargo test --benches` runs bench binaries with `--test`... skip: nothing to check here.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let exe = std::env::current_exe().expect("this binary's path");
    let names = ["baseline"]
        .into_iter()
        .chain(Contender::SESSIONS.map(Contender::name));
    let mut rows = Vec::new();
    for name in names {
        let output = Command::new(&exe)
            .args(["--contender", name])
            .output()
            .expect("run a worker");
        assert!(
            output.status.success(),
            "worker {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let kib = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        rows.push((name, kib(1), kib(2), kib(3)));
    }
    let raw = rows
        .iter()
        .find(|row| row.0 == Contender::Raw.name())
        .map_or(0, |row| row.1);
    println!(
        "Peak RSS (VmHWM) of one process that wrote {SESSIONS} sessions, each with one \
         {NAMESPACE_BYTES} B namespace, into a MemoryStore.\n"
    );
    println!(
        "| contender | VmHWM | VmRSS at the end | / raw tower-sessions (VmHWM) | cookies set |"
    );
    println!("|---|---|---|---|---|");
    for (name, hwm, rss, cookies) in rows {
        let ratio = if raw > 0 {
            format!("{:.3}", hwm as f64 / raw as f64)
        } else {
            "–".to_owned()
        };
        println!(
            "| {name} | {:.1} MiB | {:.1} MiB | {ratio} | {cookies} |",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        );
    }
}
