//! An arbitrary stored value opened as a namespace, through the public API: the value is put in
//! a `MemoryStore` record, a request carrying that session's cookie goes through
//! `SessionControllerLayer` and `SessionManagerLayer`, and a handler reads and changes the
//! namespace. Nothing may panic, and what the handler sees and what is stored afterwards must
//! follow the documented rules (README: "The expiry rule", "When things go wrong").
//!
//! Input: `[shape, stamp, ops, expiry, json...]`. `json` is parsed with serde_json (or taken as
//! a string); `shape` decides how it becomes the namespace (as is, as a value beside a stamp, as
//! the stamp, nested deeply, as a huge string, as a key); `stamp` picks an awkward stamp;
//! `ops` picks what the handler does; `expiry` picks the expiry it opens with.

#![no_main]

use std::{cell::RefCell, collections::HashMap};

use axum::{
    body::Body,
    extract::Query,
    http::{header, Request, StatusCode},
    routing::get,
    Router,
};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_sessions::{
    session::{Id, Record},
    MemoryStore, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{
    escape_js, Error, ManualClock, SessionControllerLayer, SessionControllers, STAMP_KEY,
};

/// The layer's "now": 2026-11-25 12:00 UTC.
const NOW: i64 = 1_795_608_000;
const NAMESPACE: &str = "fuzzed";
/// Another namespace of the same session, which nothing may touch.
const NEIGHBOUR: &str = "neighbour";
const INSERT_KEY: u8 = 1;
const INSERT_RESERVED: u8 = 2;
const REMOVE_KEY: u8 = 4;
const REMOVE_FIRST: u8 = 8;
const PURGE: u8 = 16;
const SECOND_CONTROLLER: u8 = 32;
const INSERT_FIRST: u8 = 64;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
    store: MemoryStore,
    id: Id,
}

/// What the handler saw and left. Handed over beside the HTTP response rather than in its body:
/// serde_json would not parse back a value nested deeper than 128.
#[derive(Debug, Default)]
struct Outcome {
    refused: bool,
    opened: Map<String, Value>,
    data: Map<String, Value>,
    expires_at: Option<OffsetDateTime>,
    changed: bool,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
    static OUTCOME: RefCell<Outcome> = RefCell::new(Outcome::default());
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW).expect("in range")
}

fn harness() -> Harness {
    let store = MemoryStore::default();
    let router = Router::new()
        .route("/", get(handler))
        .layer(SessionControllerLayer::new().with_clock(ManualClock::new(now())))
        .layer(SessionManagerLayer::new(store.clone()).with_secure(false));
    Harness {
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime"),
        router,
        store,
        id: Id(0x5eed),
    }
}

fn stamp(pick: u8, parsed: &Value) -> Value {
    let now = NOW as f64;
    match pick % 24 {
        0 => json!(now + 60.0),
        1 => json!(now),
        2 => json!(now - 1e-6),
        3 => json!(now + 1e-6),
        4 => json!(0),
        5 => json!(-1),
        6 => json!(-1e300),
        7 => json!(1e300),
        8 => json!(f64::MAX),
        9 => json!(f64::MIN),
        10 => json!(5e-324),
        11 => json!(i64::MAX),
        12 => json!(i64::MIN),
        13 => json!(u64::MAX),
        // The last representable second, and the first ones past each end of the calendar.
        14 => json!(253_402_300_799.999_999),
        15 => json!(253_402_300_800.0),
        16 => json!(-377_705_116_800.0),
        17 => json!(-377_705_116_801.0),
        18 => json!("1795608060"),
        19 => Value::Null,
        20 => json!(true),
        21 => json!([now + 60.0]),
        22 => json!({ "$date": now }),
        _ => parsed.clone(),
    }
}

/// The namespace value the input describes.
fn namespace(shape: u8, stamp_pick: u8, ops: u8, parsed: Value) -> Value {
    let with_stamp = |mut map: Map<String, Value>| {
        map.insert(STAMP_KEY.to_owned(), stamp(stamp_pick, &parsed));
        Value::Object(map)
    };
    match shape % 8 {
        0 => parsed,
        1 => with_stamp(Map::from_iter([("k".to_owned(), parsed.clone())])),
        2 => Value::Object(Map::from_iter([
            ("k".to_owned(), json!(1)),
            (STAMP_KEY.to_owned(), parsed),
        ])),
        3 => match parsed {
            Value::Object(ref map) => with_stamp(map.clone()),
            other => other,
        },
        4 => with_stamp(Map::new()),
        5 => {
            let key = match &parsed {
                Value::String(key) => key.clone(),
                other => other.to_string(),
            };
            with_stamp(Map::from_iter([(key, json!(1))]))
        }
        6 => {
            // Deeper than serde_json parses (128); not much deeper, as every copy of the value
            // costs its depth in allocations. (Not with `json!`, which copies an interpolated
            // value through `to_value`.)
            let mut value = parsed.clone();
            for depth in 0..129 + usize::from(ops % 32) {
                value = if depth % 2 == 0 {
                    Value::Array(vec![value])
                } else {
                    Value::Object(Map::from_iter([("d".to_owned(), value)]))
                };
            }
            with_stamp(Map::from_iter([("k".to_owned(), value)]))
        }
        _ => {
            // Now and then a megabyte; mostly a few kilobytes, which keeps the run fast.
            let length = match stamp_pick {
                250.. => 1 << 20,
                pick => usize::from(pick) * 16,
            };
            let huge = format!("\u{2028}<\"'&{}\u{2029}", "x".repeat(length));
            with_stamp(Map::from_iter([("k".to_owned(), json!(huge))]))
        }
    }
}

#[derive(Deserialize)]
struct Params {
    ops: u8,
    expiry: u8,
}

fn expiry(pick: u8) -> Duration {
    match pick % 6 {
        0 => Duration::seconds(1),
        1 => Duration::seconds(300),
        2 => Duration::nanoseconds(1),
        3 => Duration::MAX,
        4 => Duration::ZERO,
        _ => Duration::seconds(-1),
    }
}

/// Opens the namespace, checks what it sees against the rules, changes it as `ops` says, and
/// answers with what it holds in the end and whether anything was changed.
async fn handler(controllers: SessionControllers, Query(params): Query<Params>) {
    let expiry = expiry(params.expiry);
    let mut controller = match controllers.open_with_expiry(NAMESPACE, expiry).await {
        Ok(controller) => controller,
        Err(Error::InvalidExpiry { .. }) => {
            assert!(!expiry.is_positive());
            OUTCOME.set(Outcome {
                refused: true,
                ..Outcome::default()
            });
            return;
        }
        Err(err) => panic!("open failed: {err}"),
    };
    assert!(expiry.is_positive());
    let opened = controller.data();
    check(&controller);

    let ops = params.ops;
    let first = controller.keys().into_iter().next();
    let mut changed = false;
    if ops & SECOND_CONTROLLER != 0 {
        let second = controllers
            .open(NAMESPACE)
            .await
            .expect("a second open shares the first");
        assert_eq!(second.data(), controller.data());
        assert_eq!(second.expires_at(), controller.expires_at());
    }
    if ops & INSERT_KEY != 0 {
        controller.insert("k", 1).expect("insert of a plain key");
        changed = true;
        assert_eq!(controller.get::<i64>("k").expect("an i64"), Some(1));
        assert!(controller.has_data());
        // Even an expiry shorter than the stored float's step (about 238 ns in 2026).
        assert!(!controller.is_expired(), "expired right after a write");
    }
    if ops & INSERT_RESERVED != 0 {
        let before = controller.data();
        assert!(matches!(
            controller.insert(STAMP_KEY, 1),
            Err(Error::ReservedKey { .. })
        ));
        assert_eq!(controller.data(), before);
    }
    if let (Some(first), true) = (&first, ops & INSERT_FIRST != 0) {
        let value = opened.get(first).cloned().unwrap_or(Value::Null);
        controller
            .insert(first, &value)
            .expect("insert of a stored key");
        changed = true;
        assert_eq!(
            controller.get::<Value>(first).expect("a value"),
            Some(value)
        );
    }
    if ops & REMOVE_KEY != 0 {
        let had = controller.data().get("k").cloned();
        assert_eq!(controller.remove("k"), had);
        changed |= had.is_some();
    }
    if let (Some(first), true) = (&first, ops & REMOVE_FIRST != 0) {
        let had = controller.data().get(first).cloned();
        assert_eq!(controller.remove(first), had);
        changed |= had.is_some();
        if !controller.has_data() {
            assert_eq!(controller.expires_at(), None, "the last key took the stamp");
        }
    }
    if ops & PURGE != 0 {
        controller.purge();
        changed = true;
        assert!(!controller.has_data());
        assert_eq!(controller.expires_at(), None);
    }
    check(&controller);
    OUTCOME.set(Outcome {
        refused: false,
        opened,
        data: controller.data(),
        expires_at: controller.expires_at(),
        changed,
    });
}

/// What holds of any controller at any time.
fn check(controller: &tower_sessions_controller::SessionController) {
    let data = controller.data();
    assert!(
        !data.contains_key(STAMP_KEY),
        "the stamp leaked into the data"
    );
    assert_eq!(controller.len(), data.len());
    assert_eq!(controller.keys(), data.keys().cloned().collect::<Vec<_>>());
    assert_eq!(controller.has_data(), !data.is_empty());
    assert_eq!(controller.is_empty(), data.is_empty());
    let to_json = controller.to_json();
    // Compared as text: serde_json would not parse back a value nested deeper than 128.
    assert_eq!(
        to_json,
        serde_json::to_string(&data).expect("JSON values serialize")
    );
    assert_eq!(controller.to_escaped_json(), escape_js(&to_json));
    match controller.expires_at() {
        // Opened alive, or written in this request: in the future either way.
        Some(at) => {
            assert!(at > now(), "a stamp at or before now survived: {at}");
            assert!(!controller.is_expired());
        }
        None => assert!(controller.is_expired()),
    }
    for key in data.keys() {
        assert!(controller.contains_key(key));
        assert!(controller.get::<Value>(key).expect("a value").is_some());
    }
}

/// What the rules say the handler must see on opening `stored`, where they say it.
fn expected_on_open(stored: &Value) -> Option<Map<String, Value>> {
    let Value::Object(map) = stored else {
        // Not an object: corrupt, read as empty.
        return Some(Map::new());
    };
    let mut map = map.clone();
    match map.remove(STAMP_KEY) {
        // Without a stamp: never dropped.
        None => Some(map),
        Some(stamp) => match stamp.as_f64() {
            // Not a number: corrupt, read as empty.
            None => Some(Map::new()),
            // Passed (or corrupt): empty either way.
            Some(seconds) if seconds <= NOW as f64 => Some(Map::new()),
            // Clearly alive and in the calendar.
            Some(seconds) if seconds > NOW as f64 + 1.0 && seconds < 253_402_300_799.0 => Some(map),
            // At the edge of the calendar or of now: either way is defensible here.
            Some(_) => None,
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let mut header = [0_u8; 4];
    let split = data.len().min(4);
    header[..split].copy_from_slice(&data[..split]);
    let [shape, stamp_pick, ops, expiry_pick] = header;
    let json_bytes = &data[split..];
    let parsed = serde_json::from_slice(json_bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(json_bytes).into_owned()));
    let stored = namespace(shape, stamp_pick, ops, parsed);
    let neighbour = json!({ "n": 1, STAMP_KEY: NOW as f64 + 3600.0 });

    HARNESS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let harness = cell.get_or_insert_with(harness);
        harness
            .runtime
            .block_on(run(harness, stored, neighbour, ops, expiry_pick));
    });
});

/// One request with the harness's cookie; the reply, after checking the neighbour is intact.
async fn request(harness: &Harness, ops: u8, expiry: u8, neighbour: &Value) -> Outcome {
    let request = Request::get(format!("/?ops={ops}&expiry={expiry}"))
        .header(header::COOKIE, format!("id={}", harness.id))
        .body(Body::empty())
        .expect("request");
    let response = harness
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        stored(harness, NEIGHBOUR).await.as_ref(),
        Some(neighbour),
        "the neighbour changed"
    );
    OUTCOME.take()
}

async fn stored(harness: &Harness, key: &str) -> Option<Value> {
    let record = harness.store.load(&harness.id).await;
    let record = record
        .expect("memory store load")
        .expect("the neighbour keeps the session");
    record.data.get(key).cloned()
}

async fn run(harness: &Harness, stored_value: Value, neighbour: Value, ops: u8, expiry: u8) {
    let record = Record {
        id: harness.id,
        data: HashMap::from([
            (NAMESPACE.to_owned(), stored_value.clone()),
            (NEIGHBOUR.to_owned(), neighbour.clone()),
        ]),
        expiry_date: OffsetDateTime::now_utc() + Duration::days(1),
    };
    harness
        .store
        .save(&record)
        .await
        .expect("memory store save");
    let reply = request(harness, ops, expiry, &neighbour).await;
    let after = stored(harness, NAMESPACE).await;
    if reply.refused {
        assert_eq!(
            after,
            Some(stored_value),
            "a refused open changed the session"
        );
        return;
    }

    let (data, changed) = (&reply.data, reply.changed);
    if let Some(expected) = expected_on_open(&stored_value) {
        assert_eq!(reply.opened, expected, "opened {stored_value}");
    }
    match &after {
        // Removed: the namespace is empty, or was dropped on open and not written again.
        None => assert!(data.is_empty(), "data {data:?} was not stored"),
        // Corrupt or valid, data that was only read stays as it was.
        Some(after) if !changed => assert_eq!(after, &stored_value, "a read changed it"),
        Some(after) => {
            assert!(
                !data.is_empty(),
                "an emptied namespace stayed stored: {after}"
            );
            let mut after = after
                .as_object()
                .expect("a written namespace is an object")
                .clone();
            let stamp = after.remove(STAMP_KEY);
            assert_eq!(&after, data, "the stored keys differ from the handler's");
            assert_eq!(
                stamp.is_some(),
                reply.expires_at.is_some(),
                "stored stamp {stamp:?}, expires_at {:?}",
                reply.expires_at
            );
            if let Some(stamp) = stamp {
                assert!(stamp.as_f64().is_some_and(f64::is_finite), "stamp {stamp}");
            }
        }
    }

    // What a request leaves is what the next one sees at the same instant: the stamp the
    // handler saw is the one the next request judges by (even one saturated at the end of the
    // calendar, or one after an expiry shorter than the float's step).
    let next = request(harness, 0, 1, &neighbour).await;
    assert_eq!(
        &next.opened, data,
        "the next request sees another namespace (expires_at {:?})",
        reply.expires_at
    );
}
