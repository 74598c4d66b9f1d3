//! An arbitrary stored value opened as a namespace, through the public API: the value is put in
//! a `MemoryStore` record, a request carrying that session's cookie goes through
//! `SessionControllerLayer` and `SessionManagerLayer`, and a handler opens the namespace under
//! some `ExpiryPolicy`, reads it and changes it. Nothing may panic, and what the handler sees and
//! what is stored afterwards must follow the documented rules (README: "Stored layout", "The
//! expiry rule", "Beyond the seed", "When things go wrong"). Those rules are written out in
//! `mod rules` below, as a small reference model of one request, and every request is checked
//! against it; a second, read-only request at the same instant then checks what the first left.
//!
//! Input: `[shape, stamp, book, ops, extra, policy, json...]`. `json` is parsed with serde_json
//! (or taken as a string); `shape` decides how it becomes the namespace (as is, as a value beside
//! a stamp, as the stamp, nested deeply, as a huge string, as a key); `stamp` picks an awkward
//! stamp (or none); `book` picks the other bookkeeping (`_timeout_hops` in the low nibble,
//! `_key_timeouts` in the high one), valid or malformed; `ops` and `extra` pick what the handler
//! does; `policy` picks the policy it opens with.

#![no_main]

use std::{cell::RefCell, collections::HashMap, num::NonZeroU32};

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
use time::{Date, Duration, OffsetDateTime, Time};
use tower::ServiceExt;
use tower_sessions::{
    session::{Id, Record},
    MemoryStore, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{
    escape_js, Error, ExpiryPolicy, Lifetime, ManualClock, SessionController,
    SessionControllerLayer, SessionControllers, HOPS_KEY, LIFETIMES_KEY, STAMP_KEY,
};

/// The layer's "now": 2026-11-25 12:00 UTC.
const NOW: i64 = 1_795_608_000;
const NAMESPACE: &str = "fuzzed";
/// Another namespace of the same session, which nothing may touch.
const NEIGHBOUR: &str = "neighbour";
/// A key that the generated `_key_timeouts` may name without the namespace holding it.
const GHOST: &str = "g";
const RESERVED: [&str; 3] = [STAMP_KEY, HOPS_KEY, LIFETIMES_KEY];

// `ops`
const INSERT_KEY: u8 = 1;
const INSERT_RESERVED: u8 = 2;
const REMOVE_KEY: u8 = 4;
const REMOVE_FIRST: u8 = 8;
const PURGE: u8 = 16;
const SECOND_CONTROLLER: u8 = 32;
const INSERT_FIRST: u8 = 64;
const FLASH_FIRST: u8 = 128;
// `extra`; bits 4 to 6 pick the lifetime set.
const LIFETIME_KEY: u8 = 1;
const LIFETIME_FIRST: u8 = 2;
const FLASH: u8 = 4;
const LIFETIMES_AFTER_INSERTS: u8 = 8;
const INSERT_GHOST: u8 = 128;

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
    store: MemoryStore,
    id: Id,
}

/// One change the handler makes, with the key resolved against what it opened.
#[derive(Debug, Clone)]
enum Op {
    Insert(String, Value),
    Flash(String, Value),
    SetLifetime(String, Lifetime),
    Remove(String),
    Purge,
}

/// What one `Op` returned.
#[derive(Debug, Clone, PartialEq)]
enum Res {
    Done,
    Removed(Option<Value>),
    ReservedKey,
    InvalidExpiry,
    OverBudget,
    TooDeep,
}

/// What the handler saw and left. Handed over beside the HTTP response rather than in its body:
/// serde_json would not parse back a value nested deeper than 128.
#[derive(Debug)]
struct Outcome {
    policy: ExpiryPolicy,
    refused: bool,
    opened: Map<String, Value>,
    plan: Vec<Op>,
    results: Vec<Res>,
    data: Map<String, Value>,
    expires_at: Option<f64>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            policy: ExpiryPolicy::default(),
            refused: false,
            opened: Map::new(),
            plan: Vec::new(),
            results: Vec::new(),
            data: Map::new(),
            expires_at: None,
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
    static OUTCOME: RefCell<Outcome> = RefCell::new(Outcome::default());
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW).expect("in range")
}

fn seconds(at: OffsetDateTime) -> f64 {
    at.unix_timestamp() as f64 + f64::from(at.nanosecond()) / 1e9
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

// ---------------------------------------------------------------------------------------------
// The stored value.

/// The `_timeout_datestamp` to store, or none.
fn stamp(pick: u8, parsed: &Value) -> Option<Value> {
    let now = NOW as f64;
    Some(match pick % 32 {
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
        23 => return None,
        24 => json!(now - 60.0),
        25 => json!(now + 3600.0),
        26 => json!(253_402_300_799.0),
        _ => parsed.clone(),
    })
}

/// The `_timeout_hops` to store (low nibble of `book`), or none.
fn hops(pick: u8, parsed: &Value) -> Option<Value> {
    Some(match pick % 16 {
        1 => json!(0),
        2 => json!(1),
        3 => json!(2),
        4 => json!(u32::MAX),
        // Malformed.
        5 => json!("2"),
        6 => json!(-1),
        7 => json!(2.0),
        8 => json!(2.5),
        9 => json!(u64::from(u32::MAX) + 1),
        10 => Value::Null,
        11 => json!([2]),
        12 => json!({ "hops": 2 }),
        13 => parsed.clone(),
        14 => json!(u64::MAX),
        _ => return None,
    })
}

/// The `_key_timeouts` to store (high nibble of `book`), or none; `key` is the namespace's first
/// key (absent from it when it has none).
fn lifetimes(pick: u8, key: &str, parsed: &Value) -> Option<Value> {
    let now = NOW as f64;
    let one = |lifetime: Value| json!({ key: lifetime });
    Some(match pick % 16 {
        1 => one(json!({ "hops": 0 })),
        2 => one(json!({ "hops": 1 })),
        3 => one(json!({ "hops": 2 })),
        4 => one(json!({ "until": now - 1.0 })),
        5 => one(json!({ "until": now })),
        6 => one(json!({ "until": now + 60.0 })),
        // For a key the namespace does not hold.
        7 => json!({ GHOST: { "hops": 1 } }),
        8 => json!({ GHOST: { "until": now + 60.0 }, key: { "hops": 1 } }),
        // Malformed.
        9 => json!("not an object"),
        10 => one(json!(5)),
        11 => one(json!({ "hops": -1 })),
        12 => one(json!({ "hops": "1" })),
        13 => one(json!({ "until": "1795608060" })),
        14 => one(json!({})),
        15 => json!({ key: { "hops": u32::MAX }, GHOST: parsed }),
        _ => return None,
    })
}

/// The namespace value the input describes.
fn namespace(shape: u8, stamp_pick: u8, book: u8, ops: u8, parsed: Value) -> Value {
    let with_stamp = |mut map: Map<String, Value>| {
        match stamp(stamp_pick, &parsed) {
            Some(stamp) => map.insert(STAMP_KEY.to_owned(), stamp),
            None => map.remove(STAMP_KEY),
        };
        Value::Object(map)
    };
    let mut value = match shape % 8 {
        0 => parsed.clone(),
        1 => with_stamp(Map::from_iter([("k".to_owned(), parsed.clone())])),
        2 => Value::Object(Map::from_iter([
            ("k".to_owned(), json!(1)),
            (STAMP_KEY.to_owned(), parsed.clone()),
        ])),
        3 => match parsed {
            Value::Object(ref map) => with_stamp(map.clone()),
            ref other => other.clone(),
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
            // Now and then a megabyte (over the default budget); mostly a few kilobytes, which
            // keeps the run fast.
            let length = match stamp_pick {
                250.. => 1 << 20,
                pick => usize::from(pick) * 16,
            };
            let huge = format!("\u{2028}<\"'&{}\u{2029}", "x".repeat(length));
            with_stamp(Map::from_iter([("k".to_owned(), json!(huge))]))
        }
    };
    if let Value::Object(map) = &mut value {
        let first = map
            .keys()
            .find(|key| !RESERVED.contains(&key.as_str()))
            .cloned()
            .unwrap_or_else(|| "k".to_owned());
        if let Some(hops) = hops(book, &parsed) {
            map.insert(HOPS_KEY.to_owned(), hops);
        }
        if let Some(lifetimes) = lifetimes(book >> 4, &first, &parsed) {
            map.insert(LIFETIMES_KEY.to_owned(), lifetimes);
        }
    }
    value
}

// ---------------------------------------------------------------------------------------------
// The request.

fn duration(pick: u8) -> Duration {
    match pick % 6 {
        0 => Duration::seconds(1),
        1 => Duration::seconds(300),
        2 => Duration::nanoseconds(1),
        3 => Duration::MAX,
        4 => Duration::ZERO,
        _ => Duration::seconds(-1),
    }
}

/// Low three bits: the kind; the rest: its duration, instant or count.
fn policy(pick: u8) -> ExpiryPolicy {
    let param = pick >> 3;
    match pick % 8 {
        1 => ExpiryPolicy::SlidingOnAccess(duration(param)),
        2 => ExpiryPolicy::AfterFirstWrite(duration(param)),
        3 => ExpiryPolicy::At(match param % 5 {
            0 => now() - Duration::seconds(60),
            1 => now(),
            2 => now() + Duration::seconds(60),
            3 => now() + Duration::days(1),
            // Past the last stamp a float of seconds holds exactly.
            _ => OffsetDateTime::new_utc(Date::MAX, Time::MAX),
        }),
        4 => ExpiryPolicy::Hops(match param % 3 {
            0 => NonZeroU32::MIN,
            1 => NonZeroU32::new(2).expect("not zero"),
            _ => NonZeroU32::MAX,
        }),
        5 => ExpiryPolicy::Never,
        _ => ExpiryPolicy::SlidingOnWrite(duration(param)),
    }
}

fn lifetime(pick: u8) -> Lifetime {
    match pick % 8 {
        0 => Lifetime::For(Duration::seconds(30)),
        1 => Lifetime::For(Duration::nanoseconds(1)),
        2 => Lifetime::For(Duration::MAX),
        3 => Lifetime::For(Duration::ZERO),
        4 => Lifetime::For(Duration::seconds(-1)),
        5 => Lifetime::Hops(NonZeroU32::MIN),
        6 => Lifetime::Hops(NonZeroU32::new(2).expect("not zero")),
        _ => Lifetime::Hops(NonZeroU32::MAX),
    }
}

/// The changes `ops` and `extra` ask for, in the order the handler makes them.
fn plan(ops: u8, extra: u8, opened: &Map<String, Value>) -> Vec<Op> {
    let first = opened
        .iter()
        .next()
        .map(|(key, value)| (key.clone(), value));
    let life = lifetime(extra >> 4);
    let mut plan = Vec::new();
    let lifetimes = |plan: &mut Vec<Op>| {
        if extra & LIFETIME_KEY != 0 {
            plan.push(Op::SetLifetime("k".to_owned(), life));
        }
        if let (Some((key, _)), true) = (&first, extra & LIFETIME_FIRST != 0) {
            plan.push(Op::SetLifetime(key.clone(), life));
        }
    };
    if extra & LIFETIMES_AFTER_INSERTS == 0 {
        lifetimes(&mut plan);
    }
    if ops & INSERT_KEY != 0 {
        plan.push(Op::Insert("k".to_owned(), json!(1)));
    }
    if let (Some((key, value)), true) = (&first, ops & INSERT_FIRST != 0) {
        plan.push(Op::Insert(key.clone(), (*value).clone()));
    }
    if extra & FLASH != 0 {
        plan.push(Op::Flash("f".to_owned(), json!("saved")));
    }
    if let (Some((key, value)), true) = (&first, ops & FLASH_FIRST != 0) {
        plan.push(Op::Flash(key.clone(), (*value).clone()));
    }
    if extra & INSERT_GHOST != 0 {
        plan.push(Op::Insert(GHOST.to_owned(), json!(1)));
    }
    if extra & LIFETIMES_AFTER_INSERTS != 0 {
        lifetimes(&mut plan);
    }
    if ops & REMOVE_KEY != 0 {
        plan.push(Op::Remove("k".to_owned()));
    }
    if let (Some((key, _)), true) = (&first, ops & REMOVE_FIRST != 0) {
        plan.push(Op::Remove(key.clone()));
    }
    if ops & PURGE != 0 {
        plan.push(Op::Purge);
    }
    plan
}

fn result(result: Result<(), Error>) -> Res {
    match result {
        Ok(()) => Res::Done,
        Err(Error::ReservedKey { .. }) => Res::ReservedKey,
        Err(Error::InvalidExpiry { .. }) => Res::InvalidExpiry,
        Err(Error::OverBudget { .. }) => Res::OverBudget,
        Err(Error::TooDeep { .. }) => Res::TooDeep,
        Err(err) => panic!("unexpected error: {err}"),
    }
}

fn execute(controller: &mut SessionController, op: &Op) -> Res {
    match op {
        Op::Insert(key, value) => result(controller.insert(key, value)),
        Op::Flash(key, value) => result(controller.flash(key, value)),
        Op::SetLifetime(key, lifetime) => result(controller.set_lifetime(key, *lifetime)),
        Op::Remove(key) => Res::Removed(controller.remove(key)),
        Op::Purge => {
            controller.purge();
            Res::Done
        }
    }
}

#[derive(Deserialize)]
struct Params {
    ops: u8,
    extra: u8,
    policy: u8,
}

/// Opens the namespace, changes it as `ops` and `extra` say, checks what holds of any controller
/// at any time, and hands over what it saw and did.
async fn handler(controllers: SessionControllers, Query(params): Query<Params>) {
    let policy = policy(params.policy);
    let mut controller = match controllers.open_with_policy(NAMESPACE, policy).await {
        Ok(controller) => controller,
        Err(Error::InvalidExpiry { .. }) => {
            assert!(rules::refused(policy), "{policy:?} refused");
            OUTCOME.set(Outcome {
                policy,
                refused: true,
                ..Outcome::default()
            });
            return;
        }
        Err(err) => panic!("open failed: {err}"),
    };
    assert!(!rules::refused(policy), "{policy:?} accepted");
    assert_eq!(controller.policy(), policy);
    let opened = controller.data();
    check(&controller);

    if params.ops & SECOND_CONTROLLER != 0 {
        let second = controllers
            .open(NAMESPACE)
            .await
            .expect("a second open shares the first");
        assert_eq!(second.data(), controller.data());
        assert_eq!(second.expires_at(), controller.expires_at());
    }
    if params.ops & INSERT_RESERVED != 0 {
        let (before, at) = (controller.data(), controller.expires_at());
        for key in RESERVED {
            let refused = |result| matches!(result, Err(Error::ReservedKey { .. }));
            assert!(refused(controller.insert(key, 1)), "insert {key}");
            assert!(refused(controller.flash(key, 1)), "flash {key}");
            let once = Lifetime::Hops(NonZeroU32::MIN);
            assert!(
                refused(controller.set_lifetime(key, once)),
                "lifetime {key}"
            );
        }
        assert_eq!(controller.data(), before);
        assert_eq!(controller.expires_at(), at);
    }
    let plan = plan(params.ops, params.extra, &opened);
    let results = plan.iter().map(|op| execute(&mut controller, op)).collect();
    check(&controller);
    OUTCOME.set(Outcome {
        policy,
        refused: false,
        opened,
        plan,
        results,
        data: controller.data(),
        expires_at: controller.expires_at().map(seconds),
    });
}

/// What holds of any controller at any time.
fn check(controller: &SessionController) {
    let data = controller.data();
    for key in RESERVED {
        assert!(!data.contains_key(key), "{key} leaked into the data");
        assert!(
            !controller.contains_key(key),
            "{key} leaked into contains_key"
        );
    }
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
    let alive = controller.expires_at().is_some_and(|at| at > now());
    if let Some(at) = controller.expires_at() {
        // Opened alive, or written in this request: in the future, unless written under an
        // instant that has passed.
        assert!(
            alive || matches!(controller.policy(), ExpiryPolicy::At(at) if at <= now()),
            "a stamp at or before now survived: {at}"
        );
    }
    // The stamp decides, or, under a policy that keeps none, whether anything is held.
    let expired = if rules::has_stamp(controller.policy()) {
        !alive
    } else {
        data.is_empty()
    };
    assert_eq!(controller.is_expired(), expired);
    for key in data.keys() {
        assert!(controller.contains_key(key));
        assert!(controller.get::<Value>(key).expect("a value").is_some());
    }
}

// ---------------------------------------------------------------------------------------------
// The rules.

/// The documented rules, written out as a reference model of one request at `NOW`: what a stored
/// value reads as, what each change does, and what the flush stores. Stamps are seconds in a
/// float, as stored; stamps that a request writes are compared with a tolerance (the crate
/// rounds them to what the float holds, strictly after now).
mod rules {
    use std::collections::BTreeMap;

    use serde_json::{Map, Value};
    use time::Duration;
    use tower_sessions_controller::{
        ExpiryPolicy, Lifetime, DEFAULT_BUDGET, DEFAULT_MAX_DEPTH, HOPS_KEY, LIFETIMES_KEY,
        STAMP_KEY,
    };

    use super::{seconds, Op, Res, NOW};

    const NOW_S: f64 = NOW as f64;
    /// -9999-01-01 00:00 and 9999-12-31 23:59:59 UTC: the calendar's first second, and the last
    /// one a float of seconds holds exactly (the latest stamp a write sets).
    const FIRST: f64 = -377_705_116_800.0;
    const LAST: f64 = 253_402_300_799.0;

    /// Why a stored value gives no exact expectation.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Bad {
        /// Malformed bookkeeping: the namespace is corrupt.
        Malformed,
        /// At an edge where either reading is defensible (the calendar's ends, a lifetime with
        /// more than its one documented member).
        Unsure,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Life {
        Until(f64),
        Hops(u32),
    }

    /// A namespace as stored: the user's keys and the bookkeeping.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Ns {
        pub data: Map<String, Value>,
        pub stamp: Option<f64>,
        pub hops: Option<u32>,
        pub lifetimes: BTreeMap<String, Life>,
    }

    /// Whether user data of `size` bytes, with its bookkeeping, may be over the budget: the
    /// bookkeeping of a namespace is a few dozen bytes per key with a lifetime.
    fn near_budget(size: usize) -> bool {
        size + 64 * 1024 > DEFAULT_BUDGET
    }

    /// How many levels of arrays and objects `value` nests (`[1]` is one level).
    fn depth(value: &Value) -> usize {
        let mut deepest = 0;
        let mut pending = vec![(value, 0)];
        while let Some((value, depth)) = pending.pop() {
            let inner: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Object(map) => map.values().collect(),
                _ => {
                    deepest = deepest.max(depth);
                    continue;
                }
            };
            deepest = deepest.max(depth + 1);
            pending.extend(inner.into_iter().map(|inner| (inner, depth + 1)));
        }
        deepest
    }

    /// An instant: a number of seconds within the calendar.
    fn instant(value: &Value) -> Result<f64, Bad> {
        let seconds = value.as_f64().ok_or(Bad::Malformed)?;
        if (FIRST..=LAST).contains(&seconds) && seconds >= FIRST + 1.0 {
            Ok(seconds)
        } else if (FIRST - 1.0..LAST + 1.0).contains(&seconds) {
            Err(Bad::Unsure)
        } else {
            Err(Bad::Malformed)
        }
    }

    /// A count of requests: a JSON integer from 0 to u32::MAX (`2.0` is a float, not a count).
    fn count(value: &Value) -> Result<u32, Bad> {
        let count = value.as_u64().ok_or(Bad::Malformed)?;
        u32::try_from(count).map_err(|_| Bad::Malformed)
    }

    /// A key's lifetime: `{"until": instant}` or `{"hops": count}`.
    fn life(value: &Value) -> Result<Life, Bad> {
        let Value::Object(map) = value else {
            return Err(Bad::Malformed);
        };
        match (map.get("until"), map.get("hops"), map.len()) {
            (Some(until), None, 1) => instant(until).map(Life::Until),
            (None, Some(hops), 1) => count(hops).map(Life::Hops),
            (None, None, _) => Err(Bad::Malformed),
            _ => Err(Bad::Unsure),
        }
    }

    /// Splits a stored namespace; malformed anywhere wins over unsure anywhere.
    pub fn decode(stored: &Value) -> Result<Ns, Bad> {
        let Value::Object(map) = stored else {
            return Err(Bad::Malformed);
        };
        let mut ns = Ns::default();
        let mut unsure = false;
        let mut note = |bad: Bad| match bad {
            Bad::Malformed => Err(Bad::Malformed),
            Bad::Unsure => {
                unsure = true;
                Ok(())
            }
        };
        for (key, value) in map {
            match key.as_str() {
                STAMP_KEY => match instant(value) {
                    Ok(stamp) => ns.stamp = Some(stamp),
                    Err(bad) => note(bad)?,
                },
                HOPS_KEY => ns.hops = Some(count(value)?),
                LIFETIMES_KEY => {
                    let Value::Object(lifetimes) = value else {
                        return Err(Bad::Malformed);
                    };
                    for (key, value) in lifetimes {
                        match life(value) {
                            Ok(life) => {
                                ns.lifetimes.insert(key.clone(), life);
                            }
                            Err(bad) => note(bad)?,
                        }
                    }
                }
                _ => {
                    ns.data.insert(key.clone(), value.clone());
                }
            }
        }
        if unsure {
            return Err(Bad::Unsure);
        }
        Ok(ns)
    }

    /// What a request at `NOW` finds on opening.
    pub struct Opened {
        pub ns: Ns,
        /// Whether the opening itself must be saved (a drop, or a count).
        pub dirty: bool,
        /// Whether something is stored under the namespace's key.
        pub stored: bool,
        /// Whether `_key_timeouts` named keys the namespace does not hold. Such a lifetime is
        /// ignored; whether a request that only reads drops it from the store is not specified.
        pub ghosts: bool,
    }

    /// Reading at `NOW`: corrupt reads as empty (and is left stored); a namespace whose stamp is
    /// at or before now, or with no requests left, is dropped; so are keys whose lifetime is
    /// over, the last one taking the namespace with it; every count goes down by one.
    pub fn open(stored: Option<&Value>) -> Result<Opened, Bad> {
        let empty = |dirty| Opened {
            ns: Ns::default(),
            dirty,
            stored: stored.is_some(),
            ghosts: false,
        };
        let Some(stored) = stored else {
            return Ok(empty(false));
        };
        let mut ns = match decode(stored) {
            Ok(ns) => ns,
            Err(Bad::Malformed) => return Ok(empty(false)),
            Err(Bad::Unsure) => return Err(Bad::Unsure),
        };
        if ns.stamp.is_some_and(|stamp| stamp <= NOW_S) || ns.hops == Some(0) {
            return Ok(empty(true));
        }
        // A lifetime for a key the namespace does not hold is ignored: it reads as nothing, and
        // a key inserted under that name later has no lifetime. (Whether a request that only
        // reads drops it from the store is not specified.)
        let held = ns.data.clone();
        let before = ns.lifetimes.len();
        ns.lifetimes.retain(|key, _| held.contains_key(key));
        let ghosts = ns.lifetimes.len() != before;
        let is_over = |life: &Life| match life {
            Life::Until(until) => *until <= NOW_S,
            Life::Hops(left) => *left == 0,
        };
        let mut dirty = false;
        let over: Vec<String> = ns
            .lifetimes
            .iter()
            .filter(|(_, life)| is_over(life))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &over {
            ns.data.remove(key);
            ns.lifetimes.remove(key);
            dirty = true;
            if ns.data.is_empty() {
                ns.stamp = None;
                ns.hops = None;
            }
        }
        if let Some(hops) = &mut ns.hops {
            *hops -= 1;
            dirty = true;
        }
        for life in ns.lifetimes.values_mut() {
            if let Life::Hops(left) = life {
                *left -= 1;
                dirty = true;
            }
        }
        Ok(Opened {
            ns,
            dirty,
            stored: true,
            ghosts,
        })
    }

    /// The policies whose duration must be positive.
    pub fn refused(policy: ExpiryPolicy) -> bool {
        match policy {
            ExpiryPolicy::SlidingOnWrite(expiry)
            | ExpiryPolicy::SlidingOnAccess(expiry)
            | ExpiryPolicy::AfterFirstWrite(expiry) => !expiry.is_positive(),
            _ => false,
        }
    }

    /// The policies that keep the seed's stamp (the others judge by whether anything is held).
    pub fn has_stamp(policy: ExpiryPolicy) -> bool {
        !matches!(policy, ExpiryPolicy::Hops(_) | ExpiryPolicy::Never)
    }

    /// Now plus `duration`, saturated at the latest stamp.
    fn after(duration: Duration) -> f64 {
        (NOW_S + duration.as_seconds_f64()).min(LAST)
    }

    /// What the store holds after a request.
    #[derive(Debug, Clone, PartialEq)]
    pub enum After {
        Unchanged,
        Removed,
        Written(Ns),
    }

    /// What one request must see, return and leave.
    #[derive(Debug)]
    pub struct Expected {
        pub opened: Map<String, Value>,
        pub results: Vec<Res>,
        pub data: Map<String, Value>,
        pub stamp: Option<f64>,
        pub after: After,
        /// What the store may hold instead (see `Opened::ghosts`).
        pub or: Option<After>,
    }

    struct Model {
        ns: Ns,
        policy: ExpiryPolicy,
        dirty: bool,
        /// Written under an instant that had passed: the flush stores nothing.
        past: bool,
        /// A write came near the budget, where the bytes of the bookkeeping (stamp, hops, key
        /// lifetimes), which the budget counts too, decide: either outcome is allowed.
        near_budget: bool,
    }

    impl Model {
        /// A write: the policy decides the deadline (table "ExpiryPolicy" in the README).
        fn write(&mut self) {
            let (stamp, hops) = match self.policy {
                ExpiryPolicy::SlidingOnWrite(d) | ExpiryPolicy::SlidingOnAccess(d) => {
                    (Some(after(d)), None)
                }
                ExpiryPolicy::AfterFirstWrite(d) => (Some(self.ns.stamp.unwrap_or(after(d))), None),
                ExpiryPolicy::At(at) => {
                    let at = seconds(at).min(LAST);
                    self.past = at <= NOW_S;
                    (Some(at), None)
                }
                ExpiryPolicy::Hops(n) => (None, Some(n.get())),
                _ => (None, None),
            };
            self.ns.stamp = stamp;
            self.ns.hops = hops;
            self.dirty = true;
        }

        fn insert(&mut self, key: &str, value: &Value) -> Res {
            // The layer's depth limit comes before the budget, and refuses without a change.
            if depth(value) > DEFAULT_MAX_DEPTH {
                return Res::TooDeep;
            }
            let mut data = self.ns.data.clone();
            data.insert(key.to_owned(), value.clone());
            let size = serde_json::to_vec(&data)
                .expect("JSON values serialize")
                .len();
            if size > DEFAULT_BUDGET {
                return Res::OverBudget;
            }
            self.near_budget |= near_budget(size);
            self.ns.data = data;
            self.write();
            Res::Done
        }

        /// A lifetime belongs to the key, held or not; it does not move the stamp.
        fn set_lifetime(&mut self, key: &str, lifetime: Lifetime) -> Res {
            // The lifetime of a held key is stored, and counts against the budget.
            if self.ns.data.contains_key(key) {
                let size = serde_json::to_vec(&self.ns.data)
                    .expect("JSON values serialize")
                    .len();
                self.near_budget |= near_budget(size);
            }
            let life = match lifetime {
                Lifetime::For(d) if !d.is_positive() => return Res::InvalidExpiry,
                Lifetime::For(d) => Life::Until(after(d)),
                Lifetime::Hops(n) => Life::Hops(n.get()),
                other => panic!("unknown lifetime {other:?}"),
            };
            self.ns.lifetimes.insert(key.to_owned(), life);
            self.dirty = true;
            Res::Done
        }

        fn apply(&mut self, op: &Op) -> Res {
            match op {
                Op::Insert(key, value) => self.insert(key, value),
                Op::Flash(key, value) => match self.insert(key, value) {
                    Res::Done => self.set_lifetime(key, Lifetime::Hops(std::num::NonZeroU32::MIN)),
                    refused => refused,
                },
                Op::SetLifetime(key, lifetime) => self.set_lifetime(key, *lifetime),
                Op::Remove(key) => {
                    let removed = self.ns.data.remove(key);
                    if removed.is_some() {
                        self.ns.lifetimes.remove(key);
                        if self.ns.data.is_empty() {
                            self.ns.stamp = None;
                            self.ns.hops = None;
                        }
                        self.dirty = true;
                    }
                    Res::Removed(removed)
                }
                Op::Purge => {
                    self.ns = Ns::default();
                    self.dirty = true;
                    Res::Done
                }
            }
        }

        /// What the flush stores: keys in their last request go, a namespace in its last request
        /// (or written past its instant) goes, an empty one is not stored, and only the
        /// lifetimes of held keys are kept.
        fn flush(&self, stored: bool) -> After {
            let mut ns = self.ns.clone();
            let last: Vec<String> = ns
                .lifetimes
                .iter()
                .filter(|(_, life)| **life == Life::Hops(0))
                .map(|(key, _)| key.clone())
                .collect();
            for key in &last {
                ns.data.remove(key);
            }
            if ns.hops == Some(0) || self.past {
                ns.data.clear();
            }
            ns.lifetimes.retain(|key, _| ns.data.contains_key(key));
            match (ns.data.is_empty(), stored) {
                (false, _) => After::Written(ns),
                (true, true) => After::Removed,
                (true, false) => After::Unchanged,
            }
        }
    }

    /// The request that opens `stored` under `policy` and makes `ops`; `None` where the rules
    /// leave the outcome open.
    pub fn request(stored: Option<&Value>, policy: ExpiryPolicy, ops: &[Op]) -> Option<Expected> {
        let opened = open(stored).ok()?;
        let mut model = Model {
            ns: opened.ns,
            policy,
            dirty: opened.dirty,
            past: false,
            near_budget: false,
        };
        let data = model.ns.data.clone();
        // Sliding on access: opening a namespace that holds something stamps it.
        if let ExpiryPolicy::SlidingOnAccess(d) = policy {
            if !data.is_empty() {
                model.ns.stamp = Some(after(d));
                model.ns.hops = None;
                model.dirty = true;
            }
        }
        let results = ops.iter().map(|op| model.apply(op)).collect();
        if model.near_budget {
            return None;
        }
        let flushed = model.flush(opened.stored);
        let (after, or) = match (model.dirty, opened.ghosts) {
            (true, _) => (flushed, None),
            (false, false) => (After::Unchanged, None),
            (false, true) => (After::Unchanged, Some(flushed)),
        };
        Some(Expected {
            opened: data,
            results,
            data: model.ns.data,
            stamp: model.ns.stamp,
            after,
            or,
        })
    }

    /// Two stamps equal up to the crate's rounding to the stored float.
    pub fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 + a.abs().max(b.abs()) * 1e-15
    }

    fn same_life(a: &Life, b: &Life) -> bool {
        match (a, b) {
            (Life::Until(a), Life::Until(b)) => close(*a, *b),
            (a, b) => a == b,
        }
    }

    /// Whether `actual`, read back from the store, is `expected` (stamps up to rounding).
    pub fn same(expected: &Ns, actual: &Value) -> Result<(), String> {
        let actual = decode(actual).map_err(|bad| format!("stored {actual} is {bad:?}"))?;
        let stamps = match (expected.stamp, actual.stamp) {
            (Some(a), Some(b)) => close(a, b),
            (a, b) => a == b,
        };
        let lifetimes = expected.lifetimes.len() == actual.lifetimes.len()
            && expected.lifetimes.iter().all(|(key, life)| {
                actual
                    .lifetimes
                    .get(key)
                    .is_some_and(|b| same_life(life, b))
            });
        if expected.data == actual.data && expected.hops == actual.hops && stamps && lifetimes {
            Ok(())
        } else {
            Err(format!("expected {expected:?}, stored {actual:?}"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fuzz_target!(|data: &[u8]| {
    let mut header = [0_u8; 6];
    let split = data.len().min(header.len());
    header[..split].copy_from_slice(&data[..split]);
    let [shape, stamp_pick, book, ops, extra, policy_pick] = header;
    let json_bytes = &data[split..];
    let parsed = serde_json::from_slice(json_bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(json_bytes).into_owned()));
    let stored = namespace(shape, stamp_pick, book, ops, parsed);
    let neighbour = json!({
        "n": 1,
        STAMP_KEY: NOW as f64 + 3600.0,
        HOPS_KEY: 1,
        LIFETIMES_KEY: { "n": { "hops": 1 } },
    });

    HARNESS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let harness = cell.get_or_insert_with(harness);
        harness
            .runtime
            .block_on(run(harness, stored, neighbour, [ops, extra, policy_pick]));
    });
});

/// One request with the harness's cookie; the reply, after checking the neighbour is intact.
async fn request(harness: &Harness, [ops, extra, policy]: [u8; 3], neighbour: &Value) -> Outcome {
    let request = Request::get(format!("/?ops={ops}&extra={extra}&policy={policy}"))
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

/// The user's keys of a stored namespace.
fn user_keys(stored: &Value) -> Map<String, Value> {
    let mut map = stored.as_object().cloned().unwrap_or_default();
    for key in RESERVED {
        map.remove(key);
    }
    map
}

/// Checks one request, which found `before` stored and left `after`, against the rules.
fn verify(before: Option<&Value>, reply: &Outcome, after: Option<&Value>) {
    if reply.refused {
        assert_eq!(after, before, "a refused open changed the session");
        return;
    }
    let Some(expected) = rules::request(before, reply.policy, &reply.plan) else {
        // An edge the rules leave open: what is stored is what was, or a readable namespace
        // holding only what the handler left.
        if let Some(after) = after.filter(|after| Some(*after) != before) {
            let ns = rules::decode(after).unwrap_or_else(|bad| panic!("stored {after} is {bad:?}"));
            for (key, value) in &ns.data {
                assert_eq!(reply.data.get(key), Some(value), "stored {key} not left");
            }
        }
        return;
    };
    assert_eq!(reply.opened, expected.opened, "opened {before:?}");
    assert_eq!(reply.results, expected.results, "plan {:?}", reply.plan);
    assert_eq!(reply.data, expected.data, "data after {:?}", reply.plan);
    let stamps = match (reply.expires_at, expected.stamp) {
        (Some(a), Some(b)) => rules::close(a, b),
        (a, b) => a == b,
    };
    assert!(
        stamps,
        "expires_at {:?}, expected {:?}",
        reply.expires_at, expected.stamp
    );
    let matches = |expected: &rules::After| match (expected, after) {
        (rules::After::Unchanged, after) => {
            if after == before {
                Ok(())
            } else {
                Err(format!("changed to {after:?}"))
            }
        }
        (rules::After::Removed, None) => Ok(()),
        (rules::After::Removed, Some(after)) => Err(format!("kept {after}")),
        (rules::After::Written(ns), Some(after)) => rules::same(ns, after),
        (rules::After::Written(ns), None) => Err(format!("removed, not {ns:?}")),
    };
    if let Err(first) = matches(&expected.after) {
        let or = expected.or.as_ref().map(matches);
        assert!(
            matches!(or, Some(Ok(()))),
            "stored after {before:?} with {:?} under {:?}: expected {:?} (or {:?}): {first}",
            reply.plan,
            reply.policy,
            expected.after,
            expected.or
        );
    }
}

async fn run(harness: &Harness, stored_value: Value, neighbour: Value, bytes: [u8; 3]) {
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
    let reply = request(harness, bytes, &neighbour).await;
    let after = stored(harness, NAMESPACE).await;
    verify(Some(&stored_value), &reply, after.as_ref());

    // What a request leaves is what the next one sees at the same instant: the stamp the
    // handler saw is the one the next request judges by (even one saturated at the end of the
    // calendar, or one after an expiry shorter than the float's step), and every count it wrote
    // has at least this request left.
    let left = match &after {
        None => Some(Map::new()),
        // Left as it was: read as this request read it (if it opened it at all).
        Some(after) if *after == stored_value && reply.refused => {
            rules::open(Some(after)).ok().map(|opened| opened.ns.data)
        }
        Some(after) if *after == stored_value => Some(reply.opened.clone()),
        Some(after) => Some(user_keys(after)),
    };
    // Read-only, under the default policy with an expiry of 1 s.
    let next = request(harness, [0, 0, 0], &neighbour).await;
    if let Some(left) = left {
        assert_eq!(next.opened, left, "the next request sees another namespace");
    }
    let after_next = stored(harness, NAMESPACE).await;
    verify(after.as_ref(), &next, after_next.as_ref());
}
