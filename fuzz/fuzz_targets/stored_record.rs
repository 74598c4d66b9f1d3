//! A whole stored session record, arbitrary at every top-level key, the merge's bookkeeping
//! included, loaded, flushed and saved through the real layers on each kind of store.
//!
//! The record is generated from the input (an `Unstructured` reader): each top-level key is
//! picked from the reserved ones (`tower_sessions_controller.versions`, `.ops`, `.lock_owner`,
//! `.seen`, `.loaded`, the bare prefix or the prefix and some text), the namespaces the handlers open, plain
//! session keys or arbitrary text, and its value is generated for the key: versions with
//! digests, load marks and tokens; a journal with its instant and per-namespace operations, a
//! flush mark (as earlier releases left them) or a bare request number (as the flush leaves one); a namespace with its stamp, hops and key lifetimes; all with plausible and hostile
//! values (`u64::MAX`, negatives, floats, NaN-like strings, instants off the calendar, wrong
//! types, deep nesting). The bytes after the input's first newline, parsed as a JSON object, are
//! laid over it, so the dictionary (`stored_record.dict`) and the seeds reach the keys too.
//!
//! The record is put into each store: tower-sessions' `MemoryStore` as is, a `MergingStore` over
//! one (planted in the inner store, as another writer would leave it), and the crate's own
//! `stores::MemoryStore` (through its `save`, which drops stored bookkeeping it does not trust).
//! Then one to three requests carrying its cookie go through `SessionManagerLayer` and
//! `SessionControllerLayer`; each handler opens a runtime namespace under some policy, reads it
//! and changes it, opens a `Keyed<T>`, and writes the `Session` directly (any key, reserved ones
//! too). On the merging stores, two more requests then overlap: both load before either saves.
//!
//! Checked: nothing panics; every request gets a response, a success unless its handler ended
//! the session or wrote a reserved key through `Session` (or, of two overlapping requests, one
//! set a small budget, which the merge with the other's changes may cross); and every non-reserved key that was
//! stored and that no handler opened or wrote is still stored, with its value.

#![no_main]

use std::{
    collections::{BTreeSet, HashMap},
    future::{poll_fn, Future},
    num::NonZeroU32,
    pin::pin,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    task::Poll,
};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    routing::get,
    Extension, Router,
};
use libfuzzer_sys::{
    arbitrary::{Result, Unstructured},
    fuzz_target,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_sessions::{
    session::{Id, Record},
    MemoryStore, Session, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{
    stores, ExpiryPolicy, Lifetime, ManualClock, MergingStore, Namespace, SessionControllerLayer,
    SessionControllers, HOPS_KEY, LIFETIMES_KEY, STAMP_KEY,
};

/// The layer's "now": 2026-11-25 12:00 UTC.
const NOW: i64 = 1_795_608_000;
const PREFIX: &str = "tower_sessions_controller.";
const VERSIONS: &str = "tower_sessions_controller.versions";
const JOURNAL: &str = "tower_sessions_controller.ops";
const LOCK_OWNER: &str = "tower_sessions_controller.lock_owner";
/// Where an earlier release left a load's token in memory; now a key like any other.
const SEEN: &str = "tower_sessions_controller.seen";
/// Where a load through a merging store leaves the process's load mark, and a load through the
/// crate's stores its token after it, in memory; never stored.
const LOADED: &str = "tower_sessions_controller.loaded";
/// The namespace handlers open by runtime key, most of the time.
const RUNTIME: &str = "cart";
/// The plain session key handlers write, most of the time.
const USER: &str = "user";

/// The typed namespace.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Typed {
    #[serde(default)]
    items: Vec<String>,
    #[serde(default)]
    count: u64,
}

impl Namespace for Typed {
    const KEY: &'static str = "typed";
}

// ---------------------------------------------------------------------------------------------
// Values.

fn number(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=22)? {
        0 => json!(0),
        1 => json!(1),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(i64::MAX),
        6 => json!(u32::MAX),
        7 => json!(u64::from(u32::MAX) + 1),
        8 => json!(1e300),
        9 => json!(-1e300),
        10 => json!(f64::MAX),
        11 => json!(5e-324),
        12 => json!(0.5),
        13 => json!(NOW),
        14 => json!(NOW as f64 + 60.5),
        15 => json!(NOW - 60),
        // Off the calendar's ends, and its last second.
        16 => json!(253_402_300_800.0),
        17 => json!(-377_705_116_801.0),
        18 => json!(253_402_300_799.0),
        19 => json!(u.arbitrary::<i64>()?),
        20 => json!(u.arbitrary::<u32>()?),
        21 => json!(-f64::from(u.arbitrary::<u32>()?) / 7.0),
        _ => json!(u.arbitrary::<u64>()?),
    })
}

fn string(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=12)? {
        0 => "NaN".to_owned(),
        1 => "Infinity".to_owned(),
        2 => "-Infinity".to_owned(),
        3 => "1e999".to_owned(),
        4 => "18446744073709551616".to_owned(),
        5 => String::new(),
        6 => PREFIX.to_owned(),
        // Shaped like a load mark or a session id.
        7 => Id(i128::from(u.arbitrary::<u64>()?)).to_string(),
        8 => "1795608060".to_owned(),
        _ => u.arbitrary::<&str>()?.to_owned(),
    })
}

/// Arrays and objects nested `levels` deep around `leaf`.
fn nested(levels: usize, leaf: Value) -> Value {
    let mut value = leaf;
    for level in 0..levels {
        value = if level % 2 == 0 {
            Value::Array(vec![value])
        } else {
            Value::Object(Map::from_iter([("d".to_owned(), value)]))
        };
    }
    value
}

/// Any JSON value, at most `depth` levels of generated containers (and now and then a deep
/// nest).
fn any(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let kinds = if depth == 0 { 5 } else { 8 };
    Ok(match u.int_in_range(0..=kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 | 3 => number(u)?,
        4 | 5 => Value::String(string(u)?),
        6 => {
            let len = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(any(u, depth - 1)?);
            }
            Value::Array(items)
        }
        7 => {
            let len = u.int_in_range(0..=4)?;
            let mut map = Map::new();
            for _ in 0..len {
                map.insert(key(u)?, any(u, depth - 1)?);
            }
            Value::Object(map)
        }
        _ => {
            let levels = match u.int_in_range(0..=3)? {
                0 => 33,
                1 => 129,
                2 => 300,
                _ => u.int_in_range(0..=64)?,
            };
            nested(levels, number(u)?)
        }
    })
}

/// A key: top-level, of a namespace, or of the bookkeeping.
fn key(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=16)? {
        0 => VERSIONS.to_owned(),
        1 => JOURNAL.to_owned(),
        2 => LOCK_OWNER.to_owned(),
        3 => PREFIX.to_owned(),
        4 => format!("{PREFIX}{}", string(u)?),
        5 => RUNTIME.to_owned(),
        6 => Typed::KEY.to_owned(),
        7 => USER.to_owned(),
        8 => "other".to_owned(),
        9 => STAMP_KEY.to_owned(),
        10 => HOPS_KEY.to_owned(),
        11 => LIFETIMES_KEY.to_owned(),
        12 => "a".to_owned(),
        13 => "items".to_owned(),
        14 => SEEN.to_owned(),
        15 => LOADED.to_owned(),
        _ => string(u)?,
    })
}

/// An object of a few keys, each with a value from `value`.
fn object_of(
    u: &mut Unstructured,
    value: impl Fn(&mut Unstructured) -> Result<Value>,
) -> Result<Value> {
    let len = u.int_in_range(0..=4)?;
    let mut map = Map::new();
    for _ in 0..len {
        map.insert(key(u)?, value(u)?);
    }
    Ok(Value::Object(map))
}

/// `value`, or now and then anything else in its place.
fn or_hostile(
    u: &mut Unstructured,
    value: impl FnOnce(&mut Unstructured) -> Result<Value>,
) -> Result<Value> {
    if u.ratio(1, 6)? {
        any(u, 1)
    } else {
        value(u)
    }
}

/// Puts `value` under `key` in `map`, unless the input says to leave the field out.
fn field(
    u: &mut Unstructured,
    map: &mut Map<String, Value>,
    key: &str,
    value: impl FnOnce(&mut Unstructured) -> Result<Value>,
) -> Result<()> {
    if u.ratio(4, 5)? {
        let value = or_hostile(u, value)?;
        map.insert(key.to_owned(), value);
    }
    Ok(())
}

/// `tower_sessions_controller.versions`: the digests of the record's keys, as stored now (one
/// string: `1;` then, per key, 16 hex digits, the key's length, `:` and the key) or as earlier
/// releases stored them (a map of digests, a load mark and what the store saw).
fn versions(u: &mut Unstructured) -> Result<Value> {
    if u.ratio(1, 2)? {
        let mut text = if u.ratio(7, 8)? {
            "1;".to_owned()
        } else {
            string(u)?
        };
        for _ in 0..u.int_in_range(0..=4)? {
            let key = key(u)?;
            let digest = match u.int_in_range(0..=3)? {
                0 => format!("{:016x}", u.arbitrary::<u64>()?),
                1 => format!("{:016X}", u.arbitrary::<u64>()?),
                2 => format!("{:x}", u.arbitrary::<u16>()?),
                _ => string(u)?,
            };
            let len = match u.int_in_range(0..=3)? {
                0 => key.len().saturating_sub(1),
                1 => key.len() + 1,
                2 => u.arbitrary::<usize>()?,
                _ => key.len(),
            };
            text.push_str(&format!("{digest}{len}:{key}"));
        }
        return Ok(Value::String(text));
    }
    let mut map = Map::new();
    field(u, &mut map, "digests", |u| object_of(u, number))?;
    field(u, &mut map, "loaded", |u| Ok(Value::String(string(u)?)))?;
    field(u, &mut map, "seen", |u| Ok(Value::String(string(u)?)))?;
    Ok(Value::Object(map))
}

/// One namespace's operations in a journal.
fn ops(u: &mut Unstructured) -> Result<Value> {
    let mut map = Map::new();
    field(u, &mut map, "purged", |u| Ok(Value::Bool(u.arbitrary()?)))?;
    field(u, &mut map, "touched", |u| {
        let len = u.int_in_range(0..=4)?;
        let mut keys = Vec::with_capacity(len);
        for _ in 0..len {
            keys.push(Value::String(key(u)?));
        }
        Ok(Value::Array(keys))
    })?;
    field(u, &mut map, "wrote", |u| Ok(Value::Bool(u.arbitrary()?)))?;
    field(u, &mut map, "counted", |u| Ok(Value::Bool(u.arbitrary()?)))?;
    field(u, &mut map, "typed", |u| Ok(Value::Bool(u.arbitrary()?)))?;
    field(u, &mut map, "budget", number)?;
    Ok(Value::Object(map))
}

/// `tower_sessions_controller.ops`: a journal (its instant, its namespaces' operations and the
/// request's number), or the mark a flush leaves.
fn journal(u: &mut Unstructured) -> Result<Value> {
    if u.ratio(1, 4)? {
        return Ok(json!({ "flushed": or_hostile(u, number)? }));
    }
    let mut map = Map::new();
    field(u, &mut map, "now", number)?;
    field(u, &mut map, "now_nanos", |u| {
        Ok(match u.int_in_range(0..=5)? {
            0 => json!(0),
            1 => json!(999_999_999),
            2 => json!(1_000_000_000),
            3 => json!(u32::MAX),
            4 => json!(-1),
            _ => number(u)?,
        })
    })?;
    field(u, &mut map, "namespaces", |u| object_of(u, ops))?;
    field(u, &mut map, "request", number)?;
    Ok(Value::Object(map))
}

/// A key's lifetime in `_key_timeouts`.
fn lifetime_value(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => json!({ "hops": number(u)? }),
        1 => json!({ "until": number(u)? }),
        2 => json!({ "hops": number(u)?, "until": number(u)? }),
        _ => any(u, 1)?,
    })
}

/// A namespace: a few user keys, its stamp, hops and key lifetimes.
fn namespace(u: &mut Unstructured) -> Result<Value> {
    let mut map = Map::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let value = any(u, 2)?;
        map.insert(key(u)?, value);
    }
    field(u, &mut map, STAMP_KEY, number)?;
    if u.arbitrary()? {
        field(u, &mut map, HOPS_KEY, number)?;
    }
    if u.arbitrary()? {
        field(u, &mut map, LIFETIMES_KEY, |u| object_of(u, lifetime_value))?;
    }
    Ok(Value::Object(map))
}

/// The value stored under `key`, generated for what the key holds.
fn value_for(u: &mut Unstructured, key: &str) -> Result<Value> {
    if u.ratio(1, 8)? {
        return any(u, 3);
    }
    match key {
        VERSIONS => versions(u),
        // A journal as an earlier release serialized it, or a number, as the flush leaves one.
        JOURNAL if u.arbitrary()? => Ok(Value::from(u.arbitrary::<u64>()?)),
        JOURNAL => journal(u),
        LOCK_OWNER | SEEN | LOADED => Ok(Value::String(string(u)?)),
        RUNTIME | "typed" | "other" => namespace(u),
        _ if u.arbitrary()? => namespace(u),
        _ => any(u, 3),
    }
}

/// The stored record's data.
fn record_data(u: &mut Unstructured) -> Result<HashMap<String, Value>> {
    let mut data = HashMap::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let key = key(u)?;
        let value = value_for(u, &key)?;
        data.insert(key, value);
    }
    Ok(data)
}

// ---------------------------------------------------------------------------------------------
// Handler input.

fn duration(u: &mut Unstructured) -> Result<Duration> {
    Ok(match u.int_in_range(0..=5)? {
        0 => Duration::seconds(300),
        1 => Duration::seconds(1),
        2 => Duration::nanoseconds(1),
        3 => Duration::MAX,
        4 => Duration::ZERO,
        _ => Duration::seconds(-1),
    })
}

fn policy(u: &mut Unstructured) -> Result<ExpiryPolicy> {
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("in range");
    Ok(match u.int_in_range(0..=6)? {
        0 => ExpiryPolicy::SlidingOnWrite(duration(u)?),
        1 => ExpiryPolicy::SlidingOnAccess(duration(u)?),
        2 => ExpiryPolicy::AfterFirstWrite(duration(u)?),
        3 => ExpiryPolicy::At(
            now.checked_add(duration(u)?)
                .unwrap_or(OffsetDateTime::new_utc(time::Date::MAX, time::Time::MAX)),
        ),
        4 => ExpiryPolicy::Hops(NonZeroU32::new(u.int_in_range(1..=3)?).expect("not zero")),
        5 => ExpiryPolicy::Hops(NonZeroU32::MAX),
        _ => ExpiryPolicy::Never,
    })
}

fn lifetime(u: &mut Unstructured) -> Result<Lifetime> {
    Ok(if u.arbitrary()? {
        Lifetime::For(duration(u)?)
    } else {
        Lifetime::Hops(NonZeroU32::new(u.int_in_range(1..=2)?).unwrap_or(NonZeroU32::MAX))
    })
}

/// What a handler does to the runtime namespace it opened.
#[derive(Debug, Clone)]
enum NsOp {
    Insert(String, Value),
    Flash(String, Value),
    SetLifetime(String, Lifetime),
    Remove(String),
    Purge,
    Budget(usize),
}

/// What a handler does to its `Keyed<Typed>`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TypedOp {
    None,
    Read,
    Push,
    Purge,
}

/// What a handler does to the `Session` directly.
#[derive(Debug, Clone)]
enum SessionOp {
    Insert(String, Value),
    Remove(String),
    Clear,
    Flush,
    CycleId,
}

/// One request's handler input.
#[derive(Debug, Clone)]
struct Plan {
    open: Option<(String, ExpiryPolicy)>,
    ops: Vec<NsOp>,
    typed: TypedOp,
    session: Vec<SessionOp>,
    /// Waits, after its work, until the other overlapping request has done its own.
    gate: bool,
}

impl Plan {
    fn generate(u: &mut Unstructured) -> Result<Self> {
        let open = if u.ratio(7, 8)? {
            let key = if u.ratio(3, 4)? {
                RUNTIME.to_owned()
            } else {
                key(u)?
            };
            Some((key, policy(u)?))
        } else {
            None
        };
        let mut ops = Vec::new();
        for _ in 0..u.int_in_range(0..=4)? {
            let user_key = |u: &mut Unstructured| -> Result<String> {
                if u.ratio(1, 2)? {
                    Ok("a".to_owned())
                } else {
                    key(u)
                }
            };
            ops.push(match u.int_in_range(0..=6)? {
                0 | 1 => NsOp::Insert(user_key(u)?, any(u, 2)?),
                2 => NsOp::Flash(user_key(u)?, any(u, 1)?),
                3 => NsOp::SetLifetime(user_key(u)?, lifetime(u)?),
                4 => NsOp::Remove(user_key(u)?),
                5 => NsOp::Purge,
                _ => NsOp::Budget(u.int_in_range(0..=64)?),
            });
        }
        let typed = match u.int_in_range(0..=5)? {
            0 | 1 => TypedOp::None,
            2 | 3 => TypedOp::Read,
            4 => TypedOp::Push,
            _ => TypedOp::Purge,
        };
        let mut session = Vec::new();
        for _ in 0..u.int_in_range(0..=2)? {
            session.push(match u.int_in_range(0..=12)? {
                0..=4 => {
                    let key = if u.ratio(1, 2)? {
                        USER.to_owned()
                    } else {
                        key(u)?
                    };
                    SessionOp::Insert(key, any(u, 2)?)
                }
                5..=8 => SessionOp::Remove(key(u)?),
                9 => SessionOp::Clear,
                10 => SessionOp::Flush,
                _ => SessionOp::CycleId,
            });
        }
        Ok(Self {
            open,
            ops,
            typed,
            session,
            gate: false,
        })
    }

    /// The top-level keys this request may change: a namespace it opens, the typed one, the
    /// keys it writes directly. `None` if it may change any (it clears or ends the session).
    fn touched(&self) -> Option<BTreeSet<String>> {
        let mut keys = BTreeSet::new();
        if let Some((key, _)) = &self.open {
            keys.insert(key.clone());
        }
        if self.typed != TypedOp::None {
            keys.insert(Typed::KEY.to_owned());
        }
        for op in &self.session {
            match op {
                SessionOp::Insert(key, _) | SessionOp::Remove(key) => {
                    keys.insert(key.clone());
                }
                SessionOp::Clear | SessionOp::Flush | SessionOp::CycleId => return None,
            }
        }
        Some(keys)
    }

    /// Whether the request gives its namespace a budget of its own (a small one).
    fn sets_budget(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, NsOp::Budget(_)))
    }

    /// Whether the request must succeed: it neither ends the session nor writes the merge's
    /// bookkeeping through `Session`.
    fn must_succeed(&self) -> bool {
        self.session.iter().all(|op| match op {
            SessionOp::Insert(key, _) | SessionOp::Remove(key) => !key.starts_with(PREFIX),
            SessionOp::Clear => true,
            SessionOp::Flush | SessionOp::CycleId => false,
        })
    }
}

/// How many overlapping requests have done their work.
static GATE: AtomicU32 = AtomicU32::new(0);

async fn handler(
    session: Session,
    controllers: SessionControllers,
    Extension(plan): Extension<Arc<Plan>>,
) -> StatusCode {
    if let Some((key, policy)) = &plan.open {
        if let Ok(mut controller) = controllers.open_with_policy(key, *policy).await {
            let data = controller.data();
            assert_eq!(controller.len(), data.len());
            for reserved in [STAMP_KEY, HOPS_KEY, LIFETIMES_KEY] {
                assert!(!data.contains_key(reserved), "{reserved} leaked");
            }
            let _ = (controller.to_escaped_json(), controller.expires_at());
            let _ = (controller.is_expired(), controller.get::<Value>("a"));
            for op in &plan.ops {
                match op {
                    NsOp::Insert(key, value) => {
                        let _ = controller.insert(key, value);
                    }
                    NsOp::Flash(key, value) => {
                        let _ = controller.flash(key, value);
                    }
                    NsOp::SetLifetime(key, lifetime) => {
                        let _ = controller.set_lifetime(key, *lifetime);
                    }
                    NsOp::Remove(key) => {
                        controller.remove(key);
                    }
                    NsOp::Purge => controller.purge(),
                    NsOp::Budget(bytes) => controller = controller.with_budget(*bytes),
                }
            }
            let _ = controller.to_json();
        }
    }
    if plan.typed != TypedOp::None {
        if let Ok(mut typed) = controllers.keyed::<Typed>().await {
            match plan.typed {
                TypedOp::Push => {
                    typed.items.push("apple".to_owned());
                    typed.count = typed.count.wrapping_add(1);
                }
                TypedOp::Purge => typed.purge(),
                _ => {
                    let _ = (typed.items.len(), typed.expires_at(), typed.is_expired());
                }
            }
        }
    }
    for op in &plan.session {
        let _ = match op {
            SessionOp::Insert(key, value) => {
                session.insert_value(key, value.clone()).await.map(drop)
            }
            SessionOp::Remove(key) => session.remove_value(key).await.map(drop),
            SessionOp::Clear => {
                session.clear().await;
                Ok(())
            }
            SessionOp::Flush => session.flush().await,
            SessionOp::CycleId => session.cycle_id().await,
        };
    }
    if plan.gate {
        GATE.fetch_add(1, Ordering::SeqCst);
        // Bounded: a request that never reaches the gate does not hang the other.
        for _ in 0..1000 {
            if GATE.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    StatusCode::OK
}

// ---------------------------------------------------------------------------------------------
// The run.

/// A store, how to plant a record in it, and how to read one back as stored.
#[derive(Clone)]
enum Store {
    Plain(MemoryStore),
    Merging(MergingStore<MemoryStore>),
    Own(stores::MemoryStore),
}

impl Store {
    async fn plant(&self, record: &Record) {
        let planted = match self {
            Self::Plain(store) => store.save(record).await,
            // As another writer would have left it: under the wrapper.
            Self::Merging(store) => store.inner().save(record).await,
            Self::Own(store) => store.save(record).await,
        };
        planted.expect("a memory store saves");
    }

    async fn stored(&self, id: &Id) -> Option<HashMap<String, Value>> {
        let record = match self {
            Self::Plain(store) => store.load(id).await,
            Self::Merging(store) => store.inner().load(id).await,
            Self::Own(store) => store.load(id).await,
        };
        record
            .expect("a memory store loads")
            .map(|record| record.data)
    }

    fn merging(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    fn router(&self) -> Router {
        let routes =
            Router::new()
                .route("/", get(handler))
                .layer(SessionControllerLayer::new().with_clock(ManualClock::new(
                    OffsetDateTime::from_unix_timestamp(NOW).expect("in range"),
                )));
        match self {
            Self::Plain(store) => {
                routes.layer(SessionManagerLayer::new(store.clone()).with_secure(false))
            }
            Self::Merging(store) => {
                routes.layer(SessionManagerLayer::new(store.clone()).with_secure(false))
            }
            Self::Own(store) => {
                routes.layer(SessionManagerLayer::new(store.clone()).with_secure(false))
            }
        }
    }
}

async fn request(router: &Router, id: Id, plan: &Plan) -> StatusCode {
    let request = Request::get("/")
        .header(header::COOKIE, format!("id={id}"))
        .extension(Arc::new(plan.clone()))
        .body(Body::empty())
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    response.status()
}

/// Both futures, polled in turn until both are done.
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut done_a, mut done_b) = (None, None);
    poll_fn(|cx| {
        if done_a.is_none() {
            if let Poll::Ready(out) = a.as_mut().poll(cx) {
                done_a = Some(out);
            }
        }
        if done_b.is_none() {
            if let Poll::Ready(out) = b.as_mut().poll(cx) {
                done_b = Some(out);
            }
        }
        if done_a.is_some() && done_b.is_some() {
            Poll::Ready((done_a.take().expect("done"), done_b.take().expect("done")))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Every non-reserved key of `before` that none of `plans` may change is still stored as it was.
fn check_kept(
    before: &HashMap<String, Value>,
    after: Option<&HashMap<String, Value>>,
    plans: &[&Plan],
    what: &str,
) {
    let mut touched = BTreeSet::new();
    for plan in plans {
        match plan.touched() {
            Some(keys) => touched.extend(keys),
            None => return,
        }
    }
    for (key, value) in before {
        if key.starts_with(PREFIX) || touched.contains(key) {
            continue;
        }
        let kept = after.and_then(|after| after.get(key));
        assert_eq!(
            kept,
            Some(value),
            "{what}: stored key {key:?} lost or changed by requests that never touched it: {plans:?}"
        );
    }
}

fn check_status(status: StatusCode, plan: &Plan, what: &str) {
    if plan.must_succeed() {
        assert!(status.is_success(), "{what}: {status} for {plan:?}");
    }
}

/// One run: the store, the stored record's data, the requests one after the other, and two
/// overlapping requests.
struct Input {
    store: u8,
    data: HashMap<String, Value>,
    sequential: Vec<Plan>,
    overlap: Option<(Plan, Plan)>,
}

async fn run(input: Input) {
    let Input {
        store,
        data,
        sequential,
        overlap,
    } = input;
    let id = Id(0x5eed);
    let record = Record {
        id,
        data,
        expiry_date: OffsetDateTime::now_utc() + Duration::days(1),
    };
    // One store per run, picked by the input: a run is a few requests, so thousands run a
    // second.
    let store = match store % 3 {
        0 => Store::Plain(MemoryStore::default()),
        1 => Store::Merging(MergingStore::new(MemoryStore::default())),
        _ => Store::Own(stores::MemoryStore::default()),
    };
    {
        let what = match store {
            Store::Plain(_) => "tower-sessions MemoryStore",
            Store::Merging(_) => "MergingStore",
            Store::Own(_) => "stores::MemoryStore",
        };
        store.plant(&record).await;
        let router = store.router();
        for plan in &sequential {
            let before = store.stored(&id).await.unwrap_or_default();
            let status = request(&router, id, plan).await;
            check_status(status, plan, what);
            check_kept(&before, store.stored(&id).await.as_ref(), &[plan], what);
        }
        if let (Some((a, b)), true) = (&overlap, store.merging()) {
            let before = store.stored(&id).await.unwrap_or_default();
            GATE.store(0, Ordering::SeqCst);
            let (status_a, status_b) = both(request(&router, id, a), request(&router, id, b)).await;
            // Of two overlapping requests, one may find the session ended by the other, or its
            // namespace, merged with the other's changes, over the budget it set.
            if a.must_succeed() && b.must_succeed() && !a.sets_budget() && !b.sets_budget() {
                check_status(status_a, a, what);
                check_status(status_b, b, what);
            }
            check_kept(&before, store.stored(&id).await.as_ref(), &[a, b], what);
        }
    }
}

/// The input up to its first newline drives the generators; what follows, parsed as a JSON
/// object, is laid over the generated record.
fn generate(bytes: &[u8]) -> Result<Input> {
    let (structured, tail) = match bytes.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (&bytes[..newline], &bytes[newline + 1..]),
        None => (bytes, &[][..]),
    };
    let u = &mut Unstructured::new(structured);
    let store = u.arbitrary()?;
    let mut sequential = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        sequential.push(Plan::generate(u)?);
    }
    let overlap = if u.arbitrary()? {
        let (mut a, mut b) = (Plan::generate(u)?, Plan::generate(u)?);
        a.gate = true;
        b.gate = true;
        Some((a, b))
    } else {
        None
    };
    let mut data = record_data(u)?;
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(tail) {
        data.extend(map);
    }
    Ok(Input {
        store,
        data,
        sequential,
        overlap,
    })
}

thread_local! {
    static RUNTIME_: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(input) = generate(bytes) else {
        return;
    };
    RUNTIME_.with(|runtime| runtime.block_on(run(input)));
});
