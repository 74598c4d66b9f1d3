//! Beyond the seed's one rule, over HTTP with a `ManualClock`: every expiry policy, per-key
//! lifetimes in time and in requests, the flash helper, budgets, and the stored layout they
//! leave. Each deadline is checked one nanosecond before, exactly at, and one nanosecond after.

mod support;

use std::num::NonZeroU32;

use axum::{
    extract::{Path, Query},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use support::{routes, Calls, CountingStore, TestApp, START};
use time::Duration;
use tower_sessions::{MemoryStore, SessionManagerLayer};
use tower_sessions_controller::{
    Error, ExpiryPolicy, Keyed, Lifetime, ManualClock, MergingStore, Namespace, SessionController,
    SessionControllerLayer, SessionControllers, HOPS_KEY, LIFETIMES_KEY, STAMP_KEY,
};

const NS: &str = "ns";

/// A policy from a path segment: `write:S`, `access:S`, `first:S`, `at:S` (seconds after START),
/// `hops:N` or `never`.
fn policy(spec: &str) -> ExpiryPolicy {
    let (kind, n) = spec.split_once(':').unwrap_or((spec, "0"));
    let n: i64 = n.parse().expect("a number");
    match kind {
        "write" => ExpiryPolicy::SlidingOnWrite(Duration::seconds(n)),
        "access" => ExpiryPolicy::SlidingOnAccess(Duration::seconds(n)),
        "first" => ExpiryPolicy::AfterFirstWrite(Duration::seconds(n)),
        "at" => ExpiryPolicy::At(START + Duration::seconds(n)),
        "hops" => ExpiryPolicy::Hops(NonZeroU32::new(n as u32).expect("hops > 0")),
        "never" => ExpiryPolicy::Never,
        other => panic!("unknown policy {other}"),
    }
}

/// A key's lifetime from a query value: `s:N` seconds or `h:N` requests.
fn lifetime(spec: &str) -> Lifetime {
    let (kind, n) = spec.split_once(':').expect("kind:n");
    let n: i64 = n.parse().expect("a number");
    match kind {
        "s" => Lifetime::For(Duration::seconds(n)),
        "h" => Lifetime::Hops(NonZeroU32::new(n as u32).expect("hops > 0")),
        other => panic!("unknown lifetime {other}"),
    }
}

fn state(controller: &SessionController) -> Value {
    json!({
        "data": controller.data(),
        "expires_at": controller.expires_at().map(|at| (at - START).whole_nanoseconds() as i64),
        "is_expired": controller.is_expired(),
    })
}

#[derive(Deserialize)]
struct Ops {
    /// `k=v` pairs to insert, comma-separated; values are JSON.
    set: Option<String>,
    /// `k=lifetime` pairs, comma-separated, applied before the inserts.
    life_first: Option<String>,
    /// `k=lifetime` pairs, comma-separated, applied after the inserts.
    life_after: Option<String>,
    /// `k=v` pairs to flash.
    flash: Option<String>,
    /// Keys to remove.
    remove: Option<String>,
    /// A budget for this controller.
    budget: Option<usize>,
    /// Seconds to advance the clock in the middle of the request.
    advance: Option<i64>,
}

fn pairs(list: &Option<String>) -> Vec<(String, String)> {
    list.as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Opens `ns` with the policy in the path and applies the query's operations in a fixed order:
/// lifetimes first, inserts, flashes, lifetimes after, removals.
async fn run(
    controllers: SessionControllers,
    axum::extract::State(clock): axum::extract::State<ManualClock>,
    Path(spec): Path<String>,
    Query(ops): Query<Ops>,
) -> Result<Json<Value>, Error> {
    let mut ns = controllers.open_with_policy(NS, policy(&spec)).await?;
    if let Some(budget) = ops.budget {
        ns = ns.with_budget(budget);
    }
    for (key, spec) in pairs(&ops.life_first) {
        ns.set_lifetime(&key, lifetime(&spec))?;
    }
    if let Some(seconds) = ops.advance {
        // A long request: the clock moves on, the request's now does not.
        clock.advance(Duration::seconds(seconds));
    }
    for (key, value) in pairs(&ops.set) {
        let value: Value = serde_json::from_str(&value).expect("JSON value");
        ns.insert(&key, value)?;
    }
    for (key, value) in pairs(&ops.flash) {
        let value: Value = serde_json::from_str(&value).expect("JSON value");
        ns.flash(&key, value)?;
    }
    for (key, spec) in pairs(&ops.life_after) {
        ns.set_lifetime(&key, lifetime(&spec))?;
    }
    for key in ops.remove.as_deref().unwrap_or_default().split(',') {
        if !key.is_empty() {
            ns.remove(key);
        }
    }
    Ok(Json(state(&ns)))
}

fn routes(clock: &ManualClock) -> Router {
    Router::new()
        .route("/ns/{policy}", post(run))
        .route("/cycle", post(routes::cycle_id))
        .with_state(clock.clone())
}

fn app_with(layer: impl FnOnce(SessionControllerLayer) -> SessionControllerLayer) -> TestApp {
    let clock = ManualClock::new(START);
    let store = CountingStore::new(MemoryStore::default());
    let router = routes(&clock)
        .layer(layer(
            SessionControllerLayer::new().with_clock(clock.clone()),
        ))
        .layer(SessionManagerLayer::new(store.clone()).with_secure(false));
    TestApp::assemble(router, store, clock)
}

fn app() -> TestApp {
    app_with(|layer| layer)
}

async fn call(app: &mut TestApp, uri: &str) -> Value {
    let reply = app.post(uri).await;
    assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
    reply.json()
}

/// `START + d` as the routes report a stamp: nanoseconds after `START`.
fn after_start(d: Duration) -> i64 {
    d.whole_nanoseconds() as i64
}

/// Sets the clock to `START + at`.
fn clock_to(app: &TestApp, at: Duration) {
    app.clock.set(START + at);
}

// ---------------------------------------------------------------------------------------------
// Namespace policies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sliding_on_access_moves_the_stamp_on_a_read() {
    let mut app = app();
    call(&mut app, "/ns/access:60?set=a=1").await;

    clock_to(&app, Duration::seconds(50));
    let read = call(&mut app, "/ns/access:60").await;
    assert_eq!(read["expires_at"], after_start(Duration::seconds(110)));
    assert_eq!(
        app.stored(NS).await.unwrap()[STAMP_KEY],
        json!((START + Duration::seconds(110)).unix_timestamp() as f64),
        "the read's new stamp is stored"
    );

    clock_to(&app, Duration::seconds(110) - Duration::nanoseconds(1));
    let before = call(&mut app, "/ns/access:60").await;
    assert_eq!(before["data"], json!({ "a": 1 }));
}

#[tokio::test]
async fn sliding_on_access_expires_exactly_at_the_stamp() {
    let mut app = app();
    call(&mut app, "/ns/access:60?set=a=1").await;

    clock_to(&app, Duration::seconds(60));
    let at = call(&mut app, "/ns/access:60").await;
    assert_eq!(at["data"], json!({}));
    assert_eq!(app.stored(NS).await, None);
}

#[tokio::test]
async fn sliding_on_write_leaves_the_stamp_on_a_read() {
    let mut app = app();
    call(&mut app, "/ns/write:60?set=a=1").await;
    app.store.take_calls();

    clock_to(&app, Duration::seconds(50));
    let read = call(&mut app, "/ns/write:60").await;

    assert_eq!(read["expires_at"], after_start(Duration::seconds(60)));
    assert_eq!(app.store.take_calls().save, 0, "a read is no write");
}

#[tokio::test]
async fn after_first_write_later_writes_do_not_extend_the_stamp() {
    let mut app = app();
    call(&mut app, "/ns/first:60?set=a=1").await;

    clock_to(&app, Duration::seconds(30));
    let second = call(&mut app, "/ns/first:60?set=b=2").await;
    assert_eq!(second["expires_at"], after_start(Duration::seconds(60)));

    clock_to(&app, Duration::seconds(60) - Duration::nanoseconds(1));
    let before = call(&mut app, "/ns/first:60").await;
    assert_eq!(before["data"], json!({ "a": 1, "b": 2 }));

    clock_to(&app, Duration::seconds(60));
    let at = call(&mut app, "/ns/first:60").await;
    assert_eq!(at["data"], json!({}));
}

#[tokio::test]
async fn after_first_write_starts_a_new_period_once_expired() {
    let mut app = app();
    call(&mut app, "/ns/first:60?set=a=1").await;

    clock_to(&app, Duration::seconds(60) + Duration::nanoseconds(1));
    let fresh = call(&mut app, "/ns/first:60?set=b=2").await;

    assert_eq!(fresh["data"], json!({ "b": 2 }));
    // The stamp is as exact as its stored float: within a microsecond of 120 s + 1 ns.
    let stamp = fresh["expires_at"].as_i64().unwrap();
    assert!(
        (stamp - after_start(Duration::seconds(120))).abs() < 1_000,
        "{stamp}"
    );
}

#[tokio::test]
async fn absolute_instant_holds_whatever_is_written() {
    let mut app = app();
    call(&mut app, "/ns/at:100?set=a=1").await;
    clock_to(&app, Duration::seconds(90));
    let later = call(&mut app, "/ns/at:100?set=b=2").await;
    assert_eq!(later["expires_at"], after_start(Duration::seconds(100)));

    clock_to(&app, Duration::seconds(100) - Duration::nanoseconds(1));
    let before = call(&mut app, "/ns/at:100").await;
    assert_eq!(before["data"], json!({ "a": 1, "b": 2 }));
    assert_eq!(before["is_expired"], false);

    clock_to(&app, Duration::seconds(100));
    let at = call(&mut app, "/ns/at:100").await;
    assert_eq!(at["data"], json!({}));
    assert_eq!(app.stored(NS).await, None);
}

#[tokio::test]
async fn a_write_after_the_absolute_instant_is_not_kept() {
    let mut app = app();
    call(&mut app, "/ns/write:600?set=keep=1").await;
    clock_to(&app, Duration::seconds(100) + Duration::nanoseconds(1));

    let late = call(&mut app, "/ns/at:100?set=a=1").await;

    assert_eq!(late["is_expired"], true);
    assert_eq!(
        app.stored(NS).await,
        None,
        "nothing stored past the deadline"
    );
}

#[tokio::test]
async fn hops_counts_the_requests_that_open_the_namespace() {
    let mut app = app();
    call(&mut app, "/ns/hops:2?set=a=1").await;
    assert_eq!(app.stored(NS).await, Some(json!({ "a": 1, HOPS_KEY: 2 })));

    let first = call(&mut app, "/ns/hops:2").await;
    assert_eq!(first["data"], json!({ "a": 1 }));
    assert_eq!(first["is_expired"], false);
    assert_eq!(app.stored(NS).await, Some(json!({ "a": 1, HOPS_KEY: 1 })));

    let second = call(&mut app, "/ns/hops:2").await;
    assert_eq!(second["data"], json!({ "a": 1 }), "still readable");
    assert_eq!(app.stored(NS).await, None, "gone after its last request");

    let third = call(&mut app, "/ns/hops:2").await;
    assert_eq!(third["data"], json!({}));
    assert_eq!(third["is_expired"], true);
}

#[tokio::test]
async fn hops_ignore_time_and_a_write_starts_the_count_again() {
    let mut app = app();
    call(&mut app, "/ns/hops:2?set=a=1").await;
    clock_to(&app, Duration::days(365));
    call(&mut app, "/ns/hops:2").await;

    let written = call(&mut app, "/ns/hops:2?set=b=2").await;

    assert_eq!(written["expires_at"], Value::Null);
    assert_eq!(
        app.stored(NS).await,
        Some(json!({ "a": 1, "b": 2, HOPS_KEY: 2 }))
    );
}

#[tokio::test]
async fn never_keeps_the_namespace_without_a_stamp() {
    let mut app = app();
    call(&mut app, "/ns/write:60?set=a=1").await;
    call(&mut app, "/ns/never?set=b=2").await;
    assert_eq!(app.stored(NS).await, Some(json!({ "a": 1, "b": 2 })));

    clock_to(&app, Duration::days(365 * 50));
    let read = call(&mut app, "/ns/never").await;

    assert_eq!(read["data"], json!({ "a": 1, "b": 2 }));
    assert_eq!(read["is_expired"], false);
}

#[tokio::test]
async fn a_policy_with_a_non_positive_duration_is_refused() {
    let mut app = app();
    for spec in ["write:0", "access:-1", "first:0"] {
        let reply = app.post(&format!("/ns/{spec}?set=a=1")).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{spec}");
        assert!(reply.body.contains("must be positive"), "{}", reply.body);
    }
    assert_eq!(app.stored(NS).await, None);
}

// ---------------------------------------------------------------------------------------------
// Lifetimes of single keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_lifetime_in_seconds_ends_before_the_namespace() {
    let mut app = app();
    call(
        &mut app,
        "/ns/write:600?set=keep=1,code=7&life_after=code=s:30",
    )
    .await;

    clock_to(&app, Duration::seconds(30) - Duration::nanoseconds(1));
    let before = call(&mut app, "/ns/write:600").await;
    assert_eq!(before["data"], json!({ "keep": 1, "code": 7 }));

    clock_to(&app, Duration::seconds(30));
    let at = call(&mut app, "/ns/write:600").await;
    assert_eq!(at["data"], json!({ "keep": 1 }));
    assert_eq!(
        at["expires_at"],
        after_start(Duration::seconds(600)),
        "the namespace's stamp is untouched"
    );
    let stored = app.stored(NS).await.unwrap();
    assert_eq!(stored.get("code"), None, "the store lost it too");
    assert_eq!(stored.get(LIFETIMES_KEY), None);
}

#[tokio::test]
async fn the_last_key_expiring_removes_the_namespace() {
    let mut app = app();
    call(&mut app, "/ns/write:600?set=code=7&life_after=code=s:30").await;

    clock_to(&app, Duration::seconds(30) + Duration::nanoseconds(1));
    let after = call(&mut app, "/ns/write:600").await;

    assert_eq!(after["data"], json!({}));
    assert_eq!(after["expires_at"], Value::Null);
    assert_eq!(app.stored(NS).await, None);
}

#[tokio::test]
async fn the_namespace_expiring_first_takes_a_longer_lived_key_with_it() {
    let mut app = app();
    call(&mut app, "/ns/write:60?set=code=7&life_after=code=s:600").await;

    clock_to(&app, Duration::seconds(60));
    let at = call(&mut app, "/ns/write:60").await;

    assert_eq!(at["data"], json!({}));
}

#[tokio::test]
async fn lifetime_before_or_after_the_value_gives_the_same_record() {
    let mut first = app();
    let mut second = first.visitor();
    let a = call(&mut first, "/ns/write:600?life_first=code=s:30&set=code=7").await;
    let b = call(&mut second, "/ns/write:600?set=code=7&life_after=code=s:30").await;

    assert_eq!(a, b);
    let stored_a = first.stored(NS).await.unwrap();
    assert_eq!(stored_a, second.stored(NS).await.unwrap());
    assert_eq!(
        stored_a[LIFETIMES_KEY]["code"]["until"],
        json!((START + Duration::seconds(30)).unix_timestamp() as f64)
    );
}

#[tokio::test]
async fn one_now_per_request_stamps_and_lifetimes_ignore_the_clock_moving_mid_request() {
    let mut app = app();
    let reply = call(
        &mut app,
        "/ns/write:600?life_first=code=s:30&advance=3600&set=code=7",
    )
    .await;

    assert_eq!(reply["expires_at"], after_start(Duration::seconds(600)));
    let stored = app.stored(NS).await.unwrap();
    assert_eq!(
        stored[LIFETIMES_KEY]["code"]["until"],
        json!((START + Duration::seconds(30)).unix_timestamp() as f64)
    );
}

#[tokio::test]
async fn a_later_insert_keeps_the_keys_lifetime_and_remove_ends_it() {
    let mut app = app();
    call(&mut app, "/ns/write:600?set=code=7&life_after=code=s:30").await;
    call(&mut app, "/ns/write:600?set=code=8").await;
    assert!(app.stored(NS).await.unwrap()[LIFETIMES_KEY]["code"].is_object());

    call(&mut app, "/ns/write:600?set=other=1&remove=code").await;
    call(&mut app, "/ns/write:600?set=code=9").await;

    clock_to(&app, Duration::seconds(31));
    let read = call(&mut app, "/ns/write:600").await;
    assert_eq!(read["data"], json!({ "code": 9, "other": 1 }));
}

#[tokio::test]
async fn a_lifetime_for_a_key_that_never_gets_a_value_is_not_stored() {
    let mut app = app();
    call(&mut app, "/ns/write:600?set=a=1&life_after=ghost=s:30").await;

    assert_eq!(app.stored(NS).await.unwrap().get(LIFETIMES_KEY), None);
}

#[tokio::test]
async fn a_key_lifetime_in_hops() {
    let mut app = app();
    call(
        &mut app,
        "/ns/write:600?set=keep=1,step=2&life_after=step=h:2",
    )
    .await;

    let first = call(&mut app, "/ns/write:600").await;
    assert_eq!(first["data"], json!({ "keep": 1, "step": 2 }));
    let second = call(&mut app, "/ns/write:600").await;
    assert_eq!(second["data"], json!({ "keep": 1, "step": 2 }));
    let third = call(&mut app, "/ns/write:600").await;
    assert_eq!(third["data"], json!({ "keep": 1 }));
    assert_eq!(app.stored(NS).await.unwrap().get("step"), None);
}

#[tokio::test]
async fn flash_is_readable_in_the_next_request_then_gone() {
    let mut app = app();
    let set = call(
        &mut app,
        "/ns/write:600?set=keep=1&flash=notice=%22saved%22",
    )
    .await;
    assert_eq!(
        set["data"]["notice"], "saved",
        "the setting request sees it"
    );

    let next = call(&mut app, "/ns/write:600").await;
    assert_eq!(next["data"], json!({ "keep": 1, "notice": "saved" }));
    assert_eq!(
        app.stored(NS).await.unwrap().get("notice"),
        None,
        "removed when the reading request's response is produced"
    );

    let after = call(&mut app, "/ns/write:600").await;
    assert_eq!(after["data"], json!({ "keep": 1 }));
}

#[tokio::test]
async fn a_flash_as_the_only_key_takes_the_namespace_with_it() {
    let mut app = app();
    call(&mut app, "/ns/write:600?flash=notice=1").await;
    call(&mut app, "/ns/write:600").await;

    assert_eq!(app.stored(NS).await, None);
}

#[tokio::test]
async fn a_flash_set_while_reading_the_previous_one_reaches_the_next_request() {
    let mut app = app();
    call(&mut app, "/ns/write:600?flash=notice=1").await;
    let reading = call(&mut app, "/ns/write:600?flash=notice=2").await;
    assert_eq!(reading["data"]["notice"], 2);

    let next = call(&mut app, "/ns/write:600").await;
    assert_eq!(next["data"]["notice"], 2);
}

#[tokio::test]
async fn flash_survives_a_session_id_rotation() {
    let mut app = app();
    call(
        &mut app,
        "/ns/write:600?set=keep=1&flash=notice=1&life_after=keep=s:60",
    )
    .await;
    let before = app.stored(NS).await.unwrap();
    let old_id = app.session_id();

    assert_eq!(app.post("/cycle").await.status, StatusCode::OK);

    assert_ne!(app.session_id(), old_id);
    assert_eq!(
        app.stored(NS).await.unwrap(),
        before,
        "stamps and lifetimes intact"
    );
    let next = call(&mut app, "/ns/write:600").await;
    assert_eq!(next["data"], json!({ "keep": 1, "notice": 1 }));
}

#[tokio::test]
async fn reserved_keys_are_refused_and_never_shown() {
    let mut app = app();
    for key in [HOPS_KEY, LIFETIMES_KEY] {
        let reply = app.post(&format!("/ns/write:60?set={key}=1")).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(reply.body.contains("reserved"), "{}", reply.body);
        let reply = app
            .post(&format!("/ns/write:60?set=a=1&life_after={key}=s:5"))
            .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let shown = call(&mut app, "/ns/hops:3?set=a=1&life_after=a=s:5").await;
    assert_eq!(shown["data"], json!({ "a": 1 }));
}

#[tokio::test]
async fn a_seed_layout_reader_sees_its_keys_and_stamp_unchanged() {
    let mut app = app();
    call(
        &mut app,
        "/ns/write:300?set=a=1&flash=notice=2&life_after=a=s:60",
    )
    .await;

    let stored = app.stored(NS).await.unwrap();
    let object = stored.as_object().unwrap();
    assert_eq!(object["a"], 1);
    assert_eq!(object["notice"], 2);
    assert_eq!(
        object[STAMP_KEY],
        json!((START + Duration::seconds(300)).unix_timestamp() as f64)
    );
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, [LIFETIMES_KEY, STAMP_KEY, "a", "notice"]);
}

#[tokio::test]
async fn corrupt_bookkeeping_reads_as_an_empty_namespace() {
    let mut app = app();
    call(&mut app, "/ns/write:300?set=other=1").await;
    for corrupt in [
        json!({ "a": 1, HOPS_KEY: "two" }),
        json!({ "a": 1, HOPS_KEY: -1 }),
        json!({ "a": 1, LIFETIMES_KEY: [1] }),
        json!({ "a": 1, LIFETIMES_KEY: { "a": { "until": "soon" } } }),
        json!({ "a": 1, LIFETIMES_KEY: { "a": 5 } }),
    ] {
        app.store_raw(NS, corrupt.clone()).await;
        let read = call(&mut app, "/ns/write:300").await;
        assert_eq!(read["data"], json!({}), "{corrupt}");
        assert_eq!(
            app.stored(NS).await,
            Some(corrupt),
            "a read leaves it stored"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Budgets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_insert_up_to_the_budget_fits_and_one_byte_more_is_refused() {
    // {"a":"xx","_timeout_datestamp":1795608060.0} is 44 bytes: the budget counts the stamp.
    let mut app = app_with(|layer| layer.with_budget(44));
    call(&mut app, "/ns/write:60?set=a=%22xx%22").await;

    let reply = app.post("/ns/write:60?set=a=%22xxx%22").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply
            .body
            .contains(r#"inserting "a" would make namespace "ns" 45 bytes, over its budget of 44"#),
        "{}",
        reply.body
    );
    assert_eq!(
        app.stored(NS).await,
        Some(
            json!({ "a": "xx", STAMP_KEY: (START + Duration::seconds(60)).unix_timestamp() as f64 })
        )
    );
}

#[tokio::test]
async fn the_budget_counts_the_whole_namespace_and_a_smaller_value_fits_again() {
    // {"a":"xx","b":1} is 16 bytes; with "c":1 it would be 22; {"a":"","b":1,"c":1} is 20; the
    // stamp adds 34.
    let mut app = app_with(|layer| layer.with_budget(54));
    call(&mut app, "/ns/write:60?set=a=%22xx%22,b=1").await;
    let over = app.post("/ns/write:60?set=c=1").await;
    assert_eq!(over.status, StatusCode::INTERNAL_SERVER_ERROR);

    let smaller = call(&mut app, "/ns/write:60?set=a=%22%22,c=1").await;
    assert_eq!(smaller["data"], json!({ "a": "", "b": 1, "c": 1 }));
}

#[tokio::test]
async fn a_refused_insert_leaves_the_requests_earlier_changes() {
    let mut app = app_with(|layer| layer.with_budget(12));
    let reply = app
        .post("/ns/write:60?set=a=1,big=%22far%20too%20long%22")
        .await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.stored(NS).await, None, "a 500 saves nothing");
}

#[tokio::test]
async fn a_controller_budget_overrides_the_layers() {
    let mut app = app_with(|layer| layer.with_budget(8));
    let reply = call(
        &mut app,
        "/ns/write:60?budget=64&set=a=%22a%20longer%20value%22",
    )
    .await;
    assert_eq!(reply["data"]["a"], "a longer value");

    let tighter = app.post("/ns/write:60?budget=4&set=b=1").await;
    assert_eq!(tighter.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Notes {
    lines: Vec<String>,
}

impl Namespace for Notes {
    const KEY: &'static str = "notes";
    const BUDGET: Option<usize> = Some(56);
}

async fn add_note(mut notes: Keyed<Notes>, Path(line): Path<String>) -> Json<Value> {
    notes.lines.push(line);
    Json(json!(notes.lines))
}

#[tokio::test]
async fn a_typed_namespace_over_its_budget_fails_the_response_and_keeps_what_was_stored() {
    let mut app = TestApp::new(Router::new().route("/notes/{line}", post(add_note)));
    // {"lines":["abc"]} is 17 bytes, 51 with its stamp; with "defgh" it would be 59.
    assert_eq!(app.post("/notes/abc").await.status, StatusCode::OK);

    let reply = app.post("/notes/defgh").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.body.contains("over its budget of 56"),
        "{}",
        reply.body
    );
    assert_eq!(app.stored("notes").await.unwrap()["lines"], json!(["abc"]));
}

// ---------------------------------------------------------------------------------------------
// Typed namespaces declare a policy
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Notice {
    text: Option<String>,
}

impl Namespace for Notice {
    const KEY: &'static str = "notice";
    const EXPIRY_POLICY: ExpiryPolicy = ExpiryPolicy::Hops(NonZeroU32::MIN);
}

async fn set_notice(mut notice: Keyed<Notice>) -> Json<Value> {
    notice.text = Some("saved".into());
    Json(json!({ "is_expired": notice.is_expired() }))
}

async fn purge_then_set_notice(mut notice: Keyed<Notice>) -> Json<Value> {
    notice.purge();
    let purged = notice.is_expired();
    notice.text = Some("again".into());
    Json(json!({ "purged": purged, "written": notice.is_expired() }))
}

async fn read_notice(notice: Keyed<Notice>) -> Json<Value> {
    Json(json!({ "text": notice.text, "is_expired": notice.is_expired() }))
}

#[tokio::test]
async fn a_typed_namespace_with_one_hop_is_a_flash_message() {
    let mut app = TestApp::new(
        Router::new()
            .route("/notice", post(set_notice))
            .route("/notice", get(read_notice)),
    );
    let set = app.post("/notice").await.json();
    assert_eq!(set["is_expired"], false);
    assert_eq!(
        app.stored("notice").await,
        Some(json!({ "text": "saved", HOPS_KEY: 1 }))
    );

    let next = app.get("/notice").await.json();
    assert_eq!(next, json!({ "text": "saved", "is_expired": false }));
    assert_eq!(app.stored("notice").await, None);

    let after = app.get("/notice").await.json();
    assert_eq!(after, json!({ "text": null, "is_expired": true }));
}

#[tokio::test]
async fn a_typed_namespace_without_a_stamp_is_expired_once_purged_and_alive_once_written() {
    let mut app = TestApp::new(Router::new().route("/notice", post(purge_then_set_notice)));

    let reply = app.post("/notice").await.json();

    assert_eq!(reply, json!({ "purged": true, "written": false }));
    assert_eq!(
        app.stored("notice").await,
        Some(json!({ "text": "again", HOPS_KEY: 1 }))
    );
}

// ---------------------------------------------------------------------------------------------
// Under MergingStore
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hops_and_lifetimes_hold_behind_a_merging_store() {
    let clock = ManualClock::new(START);
    let store = CountingStore::new(MemoryStore::default());
    let router = routes(&clock)
        .layer(SessionControllerLayer::new().with_clock(clock.clone()))
        .layer(SessionManagerLayer::new(MergingStore::new(store.clone())).with_secure(false));
    let mut app = TestApp::assemble(router, store, clock);
    call(
        &mut app,
        "/ns/write:600?set=keep=1,code=7&flash=notice=1&life_after=code=s:30",
    )
    .await;

    let next = call(&mut app, "/ns/write:600").await;
    assert_eq!(next["data"], json!({ "keep": 1, "code": 7, "notice": 1 }));

    clock_to(&app, Duration::seconds(30));
    let later = call(&mut app, "/ns/write:600").await;
    assert_eq!(later["data"], json!({ "keep": 1 }));
    let stored = app.stored(NS).await.unwrap();
    assert_eq!(stored.get("notice"), None);
    assert_eq!(stored.get("code"), None);
}

#[tokio::test]
async fn a_stored_lifetime_for_a_key_the_namespace_does_not_hold_is_ignored() {
    let mut app = app();
    call(&mut app, "/ns/write:600?set=a=1").await;
    let stamp = json!((START + Duration::seconds(60)).unix_timestamp() as f64);
    let past = json!((START - Duration::seconds(1)).unix_timestamp() as f64);
    app.store_raw(
        NS,
        json!({ "a": 1, STAMP_KEY: stamp, LIFETIMES_KEY: { "g": { "hops": 1 }, "h": { "until": past } } }),
    )
    .await;

    let reply = call(&mut app, "/ns/first:300?set=g=2").await;

    assert_eq!(reply["data"], json!({ "a": 1, "g": 2 }));
    assert_eq!(
        reply["expires_at"],
        after_start(Duration::seconds(60)),
        "the stamp stands"
    );
    let stored = app.stored(NS).await.unwrap();
    assert_eq!(stored["g"], 2, "the insert is kept");
    assert_eq!(stored.get(LIFETIMES_KEY), None, "no lifetime nobody set");
}

#[tokio::test]
async fn a_read_that_counts_a_request_or_slides_on_access_costs_one_load_and_one_save() {
    for spec in ["hops:3", "access:60"] {
        let mut app = app();
        call(&mut app, &format!("/ns/{spec}?set=a=1")).await;
        app.store.take_calls();
        // Later, or sliding on access would stamp what is stored already, and save nothing.
        clock_to(&app, Duration::seconds(1));

        call(&mut app, &format!("/ns/{spec}")).await;

        assert_eq!(app.store.take_calls(), Calls::LOAD_SAVE, "{spec}");
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Strict {
    count: u32,
}

impl Namespace for Strict {
    const KEY: &'static str = "strict";
    const EXPIRY_POLICY: ExpiryPolicy = ExpiryPolicy::SlidingOnAccess(Duration::seconds(60));
}

async fn read_strict(strict: Keyed<Strict>) -> Json<Value> {
    Json(json!(strict.count))
}

async fn write_strict(mut strict: Keyed<Strict>) -> Json<Value> {
    strict.count += 1;
    Json(json!(strict.count))
}

#[tokio::test]
async fn a_typed_read_that_slides_on_access_keeps_data_its_type_cannot_read() {
    let mut app = TestApp::new(
        Router::new()
            .route("/strict", get(read_strict))
            .route("/strict", post(write_strict)),
    );
    assert_eq!(app.post("/strict").await.json(), json!(1));
    let stored = json!({ "count": "not a number", STAMP_KEY: (START + Duration::seconds(30)).unix_timestamp() as f64 });
    app.store_raw("strict", stored.clone()).await;

    let reply = app.get("/strict").await;

    assert_eq!(reply.json(), json!(0), "read as the default");
    let kept = app.stored("strict").await.expect("still stored");
    assert_eq!(kept["count"], "not a number");
}
