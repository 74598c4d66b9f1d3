//! Model-based property tests: random programs of requests run through the real layer over HTTP
//! and through a plain reference model of the documented rules (README, "The expiry rule").
//!
//! A program is a list of events: a request by a visitor, or a move of the `ManualClock` (whole
//! seconds, a random number of nanoseconds, or to a stored stamp minus one, plus zero or plus one
//! nanosecond). A request is a list of steps: open a namespace (a small alphabet, so requests
//! collide; an expiry from a small set) and act on an open controller (insert, remove, purge,
//! get, and every observation). A generic handler interprets the steps; every observation it
//! reports, and every visitor's stored record after every request, must equal the model's. A
//! request that changes nothing in the model must not touch the store.
//!
//! The properties: one visitor; two visitors interleaved on one router, store and clock (each
//! matches its own model, so nothing of one is visible to the other); and two visitors behind
//! `MergingStore`, whose merge must not change what sequential requests do. A failure prints
//! proptest's shrunk program, further minimized by deleting events and steps, with the trace of
//! the clock and the model's state.
//!
//! `MODEL_CASES=20000 cargo test --test model` runs more programs (default 6,000 in all). The
//! tests at the end are regressions for library bugs these properties and the fuzz targets found.

mod support;

use std::{collections::BTreeMap, fmt};

use axum::{extract::Query, http::StatusCode, routing::get, Json, Router};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};
use tower_sessions_controller::{Error, SessionController, SessionControllers, STAMP_KEY};

use support::{enc, TestApp, START};

// ---------------------------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------------------------

/// One step of a request, as the handler receives it.
#[derive(Clone, Serialize, Deserialize)]
enum Step {
    /// Opens `ns` with `expiry`: the next controller number.
    Open { ns: String, expiry: Expiry },
    /// Acts on controller number `c` (always one opened earlier in the request).
    Do { c: usize, op: Op },
}

/// An expiry, in the unit it is written in.
#[derive(Clone, Copy, Serialize, Deserialize)]
enum Expiry {
    Seconds(i64),
    Nanos(i64),
}

impl Expiry {
    fn duration(self) -> Duration {
        match self {
            Self::Seconds(s) => Duration::seconds(s),
            Self::Nanos(n) => Duration::nanoseconds(n),
        }
    }

    fn nanos(self) -> Nanos {
        match self {
            Self::Seconds(s) => i128::from(s) * NANOS_PER_SECOND,
            Self::Nanos(n) => i128::from(n),
        }
    }
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Seconds(i64::MAX) => f.write_str("i64::MAX s"),
            Self::Seconds(s) => write!(f, "{s}s"),
            Self::Nanos(n) => write!(f, "{n}ns"),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
enum Op {
    Insert { key: String, value: Value },
    Remove { key: String },
    Purge,
    Get { key: String },
    GetI64 { key: String },
    Contains { key: String },
    HasData,
    IsExpired,
    Len,
    Keys,
    Data,
    ToJson,
    ExpiresAt,
}

/// How the clock moves between requests.
#[derive(Clone, Copy)]
enum Advance {
    Seconds(i64),
    Nanos(i64),
    /// To `delta` nanoseconds around the stamp of one visitor's stored namespace, if it has one
    /// not in the past.
    ToStamp {
        visitor: usize,
        ns: &'static str,
        delta: i64,
    },
    /// To `delta` nanoseconds around the earliest stored stamp still ahead of the clock.
    ToNextStamp {
        delta: i64,
    },
}

#[derive(Clone)]
enum Event {
    Request { visitor: usize, steps: Vec<Step> },
    Advance(Advance),
}

#[derive(Clone)]
struct Program(Vec<Event>);

// Readable counterexamples: `#0 = open("a", 60s)`, `#0.insert("x", 1)`, `clock +3s`.

struct Line(String);

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Steps<'a>(&'a [Step]);

impl fmt::Debug for Steps<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut opened = 0;
        let lines = self.0.iter().map(|step| {
            let line = step_line(step, opened);
            if matches!(step, Step::Open { .. }) {
                opened += 1;
            }
            Line(line)
        });
        f.debug_list().entries(lines).finish()
    }
}

fn step_line(step: &Step, opened: usize) -> String {
    match step {
        Step::Open { ns, expiry } => format!("#{opened} = open({ns:?}, {expiry:?})"),
        Step::Do { c, op } => format!("#{c}.{}", op_line(op)),
    }
}

fn op_line(op: &Op) -> String {
    match op {
        Op::Insert { key, value } => format!("insert({key:?}, {value})"),
        Op::Remove { key } => format!("remove({key:?})"),
        Op::Purge => "purge()".into(),
        Op::Get { key } => format!("get::<Value>({key:?})"),
        Op::GetI64 { key } => format!("get::<i64>({key:?})"),
        Op::Contains { key } => format!("contains_key({key:?})"),
        Op::HasData => "has_data()".into(),
        Op::IsExpired => "is_expired()".into(),
        Op::Len => "len()".into(),
        Op::Keys => "keys()".into(),
        Op::Data => "data()".into(),
        Op::ToJson => "to_json()".into(),
        Op::ExpiresAt => "expires_at()".into(),
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&op_line(self))
    }
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open { ns, expiry } => write!(f, "open({ns:?}, {expiry:?})"),
            Self::Do { c, op } => write!(f, "#{c}.{}", op_line(op)),
        }
    }
}

impl fmt::Debug for Advance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Seconds(s) => write!(f, "clock +{s}s"),
            Self::Nanos(n) => write!(f, "clock +{n}ns"),
            Self::ToStamp { visitor, ns, delta } => {
                write!(
                    f,
                    "clock to visitor {visitor}'s stamp of {ns:?} {delta:+}ns"
                )
            }
            Self::ToNextStamp { delta } => write!(f, "clock to the next stamp {delta:+}ns"),
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request { visitor, steps } => {
                write!(f, "visitor {visitor}: ")?;
                fmt::Debug::fmt(&Steps(steps), f)
            }
            Self::Advance(advance) => fmt::Debug::fmt(advance, f),
        }
    }
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const NAMESPACES: [&str; 3] = ["a", "b", "c"];

fn namespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&NAMESPACES[..])
}

/// Expiries: mostly a few seconds; now and then zero (which the layer refuses), one shorter than
/// the stored float's step (about 238 ns in 2026), or one past the end of the calendar.
fn expiry() -> impl Strategy<Value = Expiry> {
    prop_oneof![
        12 => prop::sample::select(vec![1_i64, 2, 60, 300]).prop_map(Expiry::Seconds),
        1 => Just(Expiry::Seconds(0)),
        1 => prop::sample::select(vec![1_i64, 150, 1_000]).prop_map(Expiry::Nanos),
        1 => Just(Expiry::Seconds(i64::MAX)),
    ]
}

/// User keys: few, so that they collide; the empty key and the reserved stamp key too.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["x", "y", "z"]),
        1 => Just(""),
        1 => Just(STAMP_KEY),
    ]
    .prop_map(String::from)
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2_i64..=2).prop_map(Value::from),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        prop::sample::select(vec![0.5_f64, -2.25, 1e300]).prop_map(Value::from),
        prop::sample::select(vec!["", "s", "</script>&'\"", "\u{2028}é", STAMP_KEY])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (key(), value()).prop_map(|(key, value)| Op::Insert { key, value }),
        5 => key().prop_map(|key| Op::Remove { key }),
        1 => Just(Op::Purge),
        2 => key().prop_map(|key| Op::Get { key }),
        1 => key().prop_map(|key| Op::GetI64 { key }),
        1 => key().prop_map(|key| Op::Contains { key }),
        1 => Just(Op::HasData),
        2 => Just(Op::IsExpired),
        1 => Just(Op::Len),
        1 => Just(Op::Keys),
        1 => Just(Op::Data),
        1 => Just(Op::ToJson),
        2 => Just(Op::ExpiresAt),
    ]
}

/// A request: a first open, then steps; a step acting on controller `c` acts on `c` modulo the
/// controllers opened so far, so every generated (and every shrunk) request is well formed.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    fn open() -> impl Strategy<Value = Step> {
        (namespace(), expiry()).prop_map(|(ns, expiry)| Step::Open {
            ns: ns.into(),
            expiry,
        })
    }
    let raw = prop_oneof![
        1 => open(),
        6 => (0_usize..4, op()).prop_map(|(c, op)| Step::Do { c, op }),
    ];
    (open(), prop::collection::vec(raw, 0..10)).prop_map(|(first, rest)| {
        let mut opened = 1;
        let mut steps = vec![first];
        for mut step in rest {
            match step {
                Step::Open { .. } => opened += 1,
                Step::Do { ref mut c, .. } => *c %= opened,
            }
            steps.push(step);
        }
        steps
    })
}

fn advance(visitors: usize) -> impl Strategy<Value = Advance> {
    prop_oneof![
        3 => prop::sample::select(vec![1_i64, 2, 3, 59, 60, 61, 299, 300, 301])
            .prop_map(Advance::Seconds),
        1 => (1_i64..1_000_000_000).prop_map(Advance::Nanos),
        2 => (0..visitors, namespace(), -1_i64..=1)
            .prop_map(|(visitor, ns, delta)| Advance::ToStamp { visitor, ns, delta }),
        4 => (-1_i64..=1).prop_map(|delta| Advance::ToNextStamp { delta }),
    ]
}

fn program(visitors: usize) -> impl Strategy<Value = Program> {
    let event = prop_oneof![
        3 => (0..visitors, steps()).prop_map(|(visitor, steps)| Event::Request { visitor, steps }),
        2 => advance(visitors).prop_map(Event::Advance),
    ];
    prop::collection::vec(event, 1..14).prop_map(Program)
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// Instants are nanoseconds since the Unix epoch.
type Nanos = i128;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// One namespace: the user's keys, and the stamp.
#[derive(Clone, Debug, Default, PartialEq)]
struct NsModel {
    map: BTreeMap<String, Value>,
    stamp: Option<Nanos>,
}

/// One visitor's stored session: its namespaces.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    stored: BTreeMap<String, NsModel>,
}

/// The stored form of a stamp (README, "Stored layout"): seconds since the epoch, a float.
fn encode(stamp: Nanos) -> f64 {
    let seconds = stamp.div_euclid(NANOS_PER_SECOND);
    let nanos = stamp.rem_euclid(NANOS_PER_SECOND);
    seconds as f64 + nanos as f64 / 1e9
}

/// The instant a stored float denotes, to the nearest nanosecond (ties away from zero), by exact
/// integer arithmetic on the float's bits: an independent reading of the layout.
fn decode(seconds: f64) -> Nanos {
    let bits = seconds.to_bits();
    let biased = i32::try_from((bits >> 52) & 0x7ff).expect("11 bits");
    let fraction = bits & ((1_u64 << 52) - 1);
    let (mantissa, exponent) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1_u64 << 52), biased - 1075)
    };
    // |seconds| * 1e9 = scaled * 2^exponent.
    let scaled = i128::from(mantissa) * NANOS_PER_SECOND;
    let magnitude = if exponent >= 0 {
        scaled << exponent
    } else if exponent < -120 {
        0
    } else {
        let shift = -exponent;
        (scaled + (1_i128 << (shift - 1))) >> shift
    };
    if bits >> 63 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// The latest stamp: the last whole second of the calendar (9999-12-31 23:59:59 UTC).
const LATEST_STAMP: Nanos = 253_402_300_799 * NANOS_PER_SECOND;

/// The rule for a write: the stamp is now + expiry (at most the latest stamp), as the stored
/// float reads back; should that not be after now (an expiry shorter than the float's step), the
/// next float up that is.
fn stamp_after_write(now: Nanos, expiry: Expiry) -> Nanos {
    let mut seconds = encode((now + expiry.nanos()).min(LATEST_STAMP));
    loop {
        let stamp = decode(seconds);
        if stamp > now || stamp >= LATEST_STAMP {
            return stamp;
        }
        seconds = seconds.next_up();
    }
}

/// A namespace opened in a request.
struct Opened {
    ns: NsModel,
    /// Differs from what is stored: written back (or removed) at the end of the request.
    dirty: bool,
}

impl Model {
    /// Runs one request at `now`: what each step observes.
    fn request(&mut self, now: Nanos, steps: &[Step]) -> Vec<Value> {
        let mut opened: BTreeMap<String, Opened> = BTreeMap::new();
        // Controller number -> (namespace, expiry); `None` for a refused open.
        let mut controllers: Vec<Option<(String, Expiry)>> = Vec::new();
        let mut seen = Vec::new();
        for step in steps {
            let observation = match step {
                Step::Open { expiry, .. } if expiry.nanos() <= 0 => {
                    controllers.push(None);
                    json!("invalid expiry")
                }
                Step::Open { ns, expiry } => {
                    opened.entry(ns.clone()).or_insert_with(|| {
                        match self.stored.get(ns) {
                            // Alive only while the stamp is strictly in the future.
                            Some(stored) if stored.stamp.is_some_and(|stamp| stamp <= now) => {
                                Opened {
                                    ns: NsModel::default(),
                                    dirty: true,
                                }
                            }
                            Some(stored) => Opened {
                                ns: stored.clone(),
                                dirty: false,
                            },
                            None => Opened {
                                ns: NsModel::default(),
                                dirty: false,
                            },
                        }
                    });
                    controllers.push(Some((ns.clone(), *expiry)));
                    json!("opened")
                }
                Step::Do { c, op } => match &controllers[*c] {
                    None => json!("no controller"),
                    Some((ns, expiry)) => {
                        let entry = opened.get_mut(ns).expect("opened before use");
                        Self::act(entry, op, now, *expiry)
                    }
                },
            };
            seen.push(observation);
        }
        for (name, entry) in opened {
            if !entry.dirty {
                continue;
            }
            if entry.ns.map.is_empty() {
                self.stored.remove(&name);
            } else {
                self.stored.insert(name, entry.ns);
            }
        }
        seen
    }

    fn act(entry: &mut Opened, op: &Op, now: Nanos, expiry: Expiry) -> Value {
        let ns = &mut entry.ns;
        match op {
            Op::Insert { key, .. } if key == STAMP_KEY => json!("reserved key"),
            Op::Insert { key, value } => {
                ns.map.insert(key.clone(), value.clone());
                ns.stamp = Some(stamp_after_write(now, expiry));
                entry.dirty = true;
                json!("ok")
            }
            Op::Remove { key } => match ns.map.remove(key) {
                Some(value) => {
                    if ns.map.is_empty() {
                        ns.stamp = None;
                    }
                    entry.dirty = true;
                    json!({ "removed": value })
                }
                None => json!("nothing"),
            },
            Op::Purge => {
                *ns = NsModel::default();
                entry.dirty = true;
                json!("ok")
            }
            Op::Get { key } => match ns.map.get(key) {
                Some(value) => json!({ "value": value }),
                None => json!("nothing"),
            },
            Op::GetI64 { key } => match ns.map.get(key) {
                Some(value) => match value.as_i64() {
                    Some(n) => json!({ "value": n }),
                    None => json!("not deserializable"),
                },
                None => json!("nothing"),
            },
            Op::Contains { key } => json!(ns.map.contains_key(key)),
            Op::HasData => json!(!ns.map.is_empty()),
            Op::IsExpired => json!(ns.stamp.is_none_or(|stamp| stamp <= now)),
            Op::Len => json!(ns.map.len()),
            Op::Keys => json!(ns.map.keys().collect::<Vec<_>>()),
            Op::Data | Op::ToJson => json!(ns.map),
            Op::ExpiresAt => json!(ns.stamp.map(|stamp| stamp.to_string())),
        }
    }

    /// The session record's data this model expects in the store.
    fn record(&self) -> BTreeMap<String, Value> {
        self.stored
            .iter()
            .map(|(name, ns)| {
                let mut object: Map<String, Value> =
                    ns.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                if let Some(stamp) = ns.stamp {
                    object.insert(STAMP_KEY.to_owned(), json!(encode(stamp)));
                }
                (name.clone(), Value::Object(object))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The handler: interprets steps against the real controllers
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Run {
    steps: String,
}

async fn run(
    controllers: SessionControllers,
    Query(run): Query<Run>,
) -> Result<Json<Vec<Value>>, String> {
    let steps: Vec<Step> = serde_json::from_str(&run.steps).map_err(|err| err.to_string())?;
    let mut opened: Vec<Option<SessionController>> = Vec::new();
    let mut seen = Vec::new();
    for step in &steps {
        let observation = match step {
            Step::Open { ns, expiry } => {
                match controllers.open_with_expiry(ns, expiry.duration()).await {
                    Ok(controller) => {
                        opened.push(Some(controller));
                        json!("opened")
                    }
                    Err(Error::InvalidExpiry { .. }) => {
                        opened.push(None);
                        json!("invalid expiry")
                    }
                    Err(err) => return Err(err.to_string()),
                }
            }
            Step::Do { c, op } => match opened.get_mut(*c) {
                Some(Some(controller)) => act(controller, op),
                Some(None) => json!("no controller"),
                None => return Err(format!("controller #{c} was never opened")),
            },
        };
        seen.push(observation);
    }
    Ok(Json(seen))
}

fn act(controller: &mut SessionController, op: &Op) -> Value {
    fn got<T: Serialize>(got: Result<Option<T>, Error>) -> Value {
        match got {
            Ok(Some(value)) => json!({ "value": value }),
            Ok(None) => json!("nothing"),
            Err(Error::Deserialize { .. }) => json!("not deserializable"),
            Err(err) => json!(err.to_string()),
        }
    }
    match op {
        Op::Insert { key, value } => match controller.insert(key, value) {
            Ok(()) => json!("ok"),
            Err(Error::ReservedKey { .. }) => json!("reserved key"),
            Err(err) => json!(err.to_string()),
        },
        Op::Remove { key } => match controller.remove(key) {
            Some(value) => json!({ "removed": value }),
            None => json!("nothing"),
        },
        Op::Purge => {
            controller.purge();
            json!("ok")
        }
        Op::Get { key } => got(controller.get::<Value>(key)),
        Op::GetI64 { key } => got(controller.get::<i64>(key)),
        Op::Contains { key } => json!(controller.contains_key(key)),
        Op::HasData => json!(controller.has_data()),
        Op::IsExpired => json!(controller.is_expired()),
        Op::Len => json!(controller.len()),
        Op::Keys => json!(controller.keys()),
        Op::Data => json!(controller.data()),
        Op::ToJson => {
            let text = controller.to_json();
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        Op::ExpiresAt => json!(controller
            .expires_at()
            .map(|at| at.unix_timestamp_nanos().to_string())),
    }
}

fn routes() -> Router {
    Router::new().route("/run", get(run))
}

/// The URI that runs `steps` through the generic handler.
fn run_uri(steps: &[Step]) -> String {
    let steps = serde_json::to_string(steps).expect("steps serialize");
    format!("/run?steps={}", enc(&steps))
}

// ---------------------------------------------------------------------------------------------
// Running a program through both
// ---------------------------------------------------------------------------------------------

fn instant(at: Nanos) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(at).expect("instant in range")
}

/// Where an advance moves the clock, or `None` if it would not move forwards or would leave the
/// calendar.
fn target(advance: Advance, models: &[Model], now: Nanos) -> Option<Nanos> {
    let to = match advance {
        Advance::Seconds(s) => now + i128::from(s) * NANOS_PER_SECOND,
        Advance::Nanos(n) => now + i128::from(n),
        Advance::ToStamp { visitor, ns, delta } => {
            models[visitor].stored.get(ns)?.stamp? + i128::from(delta)
        }
        Advance::ToNextStamp { delta } => {
            models
                .iter()
                .flat_map(|model| model.stored.values().filter_map(|ns| ns.stamp))
                .filter(|stamp| *stamp > now)
                .min()?
                + i128::from(delta)
        }
    };
    (to >= now && OffsetDateTime::from_unix_timestamp_nanos(to).is_ok()).then_some(to)
}

/// The key under which `MergingStore` keeps its own bookkeeping in the record (not a namespace).
const MERGE_BOOKKEEPING: &str = "tower_sessions_controller.versions";

/// The app under test: on a plain `MemoryStore`, or behind `MergingStore`.
#[derive(Clone, Copy)]
enum Store {
    Plain,
    Merging,
}

/// Runs `program` with `visitors` visitors of one app, and the models beside it.
async fn check(program: &Program, visitors: usize, store: Store) -> Result<(), TestCaseError> {
    let first = match store {
        Store::Plain => TestApp::new(routes()),
        Store::Merging => TestApp::merging(routes()),
    };
    let mut apps: Vec<TestApp> = (1..visitors).map(|_| first.visitor()).collect();
    apps.insert(0, first);
    let mut models = vec![Model::default(); visitors];
    let mut now = START.unix_timestamp_nanos();
    // What happened so far, for the failure message.
    let mut trace: Vec<String> = Vec::new();

    for (number, event) in program.0.iter().enumerate() {
        match event {
            Event::Advance(advance) => {
                if let Some(to) = target(*advance, &models, now) {
                    now = to;
                    apps[0].clock.set(instant(now));
                }
                trace.push(format!("event {number}: {advance:?}: now {}", instant(now)));
            }
            Event::Request { visitor, steps } => {
                let (visitor, app) = (*visitor, &mut apps[*visitor]);
                trace.push(format!(
                    "event {number}: visitor {visitor} requests at {}",
                    instant(now)
                ));
                let fail = |what: String| {
                    TestCaseError::fail(format!(
                        "{what}\n  request {number}: {:?}\n  trace:\n    {}\n  model: {:?}",
                        Steps(steps),
                        trace.join("\n    "),
                        models[visitor],
                    ))
                };
                let before = models[visitor].clone();
                let _ = app.store.take_calls();
                let reply = app.get(&run_uri(steps)).await;
                if reply.status != StatusCode::OK {
                    return Err(fail(format!(
                        "the handler answered {}: {}",
                        reply.status, reply.body
                    )));
                }
                let seen: Vec<Value> = serde_json::from_str(&reply.body)
                    .map_err(|err| fail(format!("reply {:?}: {err}", reply.body)))?;
                let mut model = models[visitor].clone();
                let expected = model.request(now, steps);
                let mut opened = 0;
                for (i, step) in steps.iter().enumerate() {
                    if seen.get(i) != expected.get(i) {
                        return Err(fail(format!(
                            "step {i} `{}`: the layer observed {}, the model expects {}",
                            step_line(step, opened),
                            seen.get(i).map_or("nothing".into(), Value::to_string),
                            expected.get(i).map_or("nothing".into(), Value::to_string),
                        )));
                    }
                    if matches!(step, Step::Open { .. }) {
                        opened += 1;
                    }
                }
                let calls = app.store.take_calls();
                if model == before && (calls.save + calls.create + calls.delete) > 0 {
                    return Err(fail(format!(
                        "the request changed nothing, yet wrote to the store: {calls:?}"
                    )));
                }
                models[visitor] = model;
                for (other, app) in apps.iter().enumerate() {
                    let stored: BTreeMap<String, Value> = app
                        .record()
                        .await
                        .map(|record| {
                            record
                                .data
                                .into_iter()
                                .filter(|(key, _)| key != MERGE_BOOKKEEPING)
                                .collect()
                        })
                        .unwrap_or_default();
                    let expected = models[other].record();
                    if stored != expected {
                        return Err(TestCaseError::fail(format!(
                            "after request {number} (visitor {visitor}), visitor {other}'s \
                             stored record is\n    {}\n  the model expects\n    {}\n  request: \
                             {:?}\n  trace:\n    {}",
                            json!(stored),
                            json!(expected),
                            Steps(steps),
                            trace.join("\n    "),
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The number of programs for a property: `share` of `MODEL_CASES` (default 6,000).
fn cases(share: f64) -> u32 {
    let total: f64 = std::env::var("MODEL_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(6_000.0);
    (total * share).round().max(1.0) as u32
}

fn property(visitors: usize, store: Store, cases: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = Config {
        cases,
        // A counterexample is printed, not written next to the tests.
        failure_persistence: None,
        max_shrink_iters: 10_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&program(visitors), |program| {
        runtime.block_on(check(&program, visitors, store))
    });
    let Err(TestError::Fail(_, shrunk)) = result else {
        if let Err(err) = result {
            panic!("{err}");
        }
        return;
    };
    // proptest stops deleting events once it starts shrinking them: delete what it left.
    let fails = |program: &Program| runtime.block_on(check(program, visitors, store)).err();
    let minimal = minimize(shrunk, |program| fails(program).is_some());
    let why = fails(&minimal).map_or_else(|| "(passes?)".to_owned(), |why| why.to_string());
    panic!("{why}\nminimal failing program: {minimal:#?}");
}

/// `steps` without step `i`; without an open, also without the steps acting on what it opened.
fn without_step(steps: &[Step], i: usize) -> Vec<Step> {
    let Step::Open { .. } = steps[i] else {
        let mut steps = steps.to_vec();
        steps.remove(i);
        return steps;
    };
    let number = steps[..i]
        .iter()
        .filter(|step| matches!(step, Step::Open { .. }))
        .count();
    steps
        .iter()
        .enumerate()
        .filter(|(j, step)| *j != i && !matches!(step, Step::Do { c, .. } if *c == number))
        .map(|(_, step)| match step {
            Step::Do { c, op } if *c > number => Step::Do {
                c: c - 1,
                op: op.clone(),
            },
            step => step.clone(),
        })
        .collect()
}

/// Deletes events, then steps, one at a time while `fails` still holds.
fn minimize(mut program: Program, fails: impl Fn(&Program) -> bool) -> Program {
    loop {
        let mut smaller = None;
        'search: for event in 0..program.0.len() {
            let mut candidate = program.clone();
            candidate.0.remove(event);
            if fails(&candidate) {
                smaller = Some(candidate);
                break 'search;
            }
            let Event::Request { steps, .. } = &program.0[event] else {
                continue;
            };
            for step in 0..steps.len() {
                let mut candidate = program.clone();
                if let Event::Request { steps, .. } = &mut candidate.0[event] {
                    *steps = without_step(steps, step);
                }
                if fails(&candidate) {
                    smaller = Some(candidate);
                    break 'search;
                }
            }
        }
        match smaller {
            Some(candidate) => program = candidate,
            None => return program,
        }
    }
}

#[test]
fn one_visitor_matches_the_model() {
    property(1, Store::Plain, cases(0.45));
}

#[test]
fn two_interleaved_visitors_each_match_their_own_model() {
    property(2, Store::Plain, cases(0.3));
}

/// One request at a time, the merge of `MergingStore` must change nothing.
#[test]
fn two_visitors_through_merging_store_match_their_models() {
    property(2, Store::Merging, cases(0.25));
}

#[test]
fn the_model_reads_stamps_as_the_layout_stores_them() {
    let start = START.unix_timestamp_nanos();
    assert_eq!(decode(encode(start)), start);
    assert_eq!(decode(0.5), NANOS_PER_SECOND / 2);
    assert_eq!(decode(-1.5), -3 * NANOS_PER_SECOND / 2);
    // A float near 2026 has a step of about 238 ns: one nanosecond before a whole second reads
    // back as the whole second.
    assert_eq!(
        stamp_after_write(start - 1, Expiry::Seconds(60)),
        start + 60 * NANOS_PER_SECOND
    );
    // The write rule is stable: a stamp written back reads back the same.
    for offset in [1_i128, 123_456_789, 999_999_999] {
        let stamp = stamp_after_write(start + offset, Expiry::Seconds(300));
        assert_eq!(decode(encode(stamp)), stamp);
    }
    // Shorter than the step: still after now. Past the calendar: its last whole second.
    for now in [start, start + 100] {
        let stamp = stamp_after_write(now, Expiry::Nanos(1));
        assert!(stamp > now && stamp - now < 500, "{stamp} for {now}");
    }
    assert_eq!(
        stamp_after_write(start, Expiry::Seconds(i64::MAX)),
        LATEST_STAMP
    );
    assert_eq!(decode(encode(LATEST_STAMP)), LATEST_STAMP);
}

// ---------------------------------------------------------------------------------------------
// Regressions: library bugs these properties and the fuzz target `stored_namespace` found
// ---------------------------------------------------------------------------------------------

fn write_x(ns: &str, expiry: Expiry) -> Vec<Step> {
    vec![
        Step::Open {
            ns: ns.into(),
            expiry,
        },
        Step::Do {
            c: 0,
            op: Op::Insert {
                key: "x".into(),
                value: json!(1),
            },
        },
        Step::Do {
            c: 0,
            op: Op::ExpiresAt,
        },
    ]
}

fn read_x(ns: &str) -> Vec<Step> {
    vec![
        Step::Open {
            ns: ns.into(),
            expiry: Expiry::Seconds(60),
        },
        Step::Do {
            c: 0,
            op: Op::Get { key: "x".into() },
        },
        Step::Do {
            c: 0,
            op: Op::ExpiresAt,
        },
    ]
}

/// The stamp saturated at 9999-12-31 23:59:59.999999999, whose float (253402300800.0) lies past
/// the calendar: the next request read the namespace as corrupt, hence empty.
#[tokio::test]
async fn a_write_with_an_expiry_past_the_calendar_is_there_at_the_next_request() {
    let mut app = TestApp::new(routes());
    let wrote = app
        .get(&run_uri(&write_x("a", Expiry::Seconds(i64::MAX))))
        .await
        .json();
    let read = app.get(&run_uri(&read_x("a"))).await.json();
    assert_eq!(
        read[1],
        json!({ "value": 1 }),
        "the write saw expires_at {}; stored: {:?}",
        wrote[2],
        app.stored("a").await
    );
}

async fn write_for_one_nanosecond(controllers: SessionControllers) -> Json<Value> {
    match controllers
        .open_with_expiry("a", Duration::nanoseconds(1))
        .await
    {
        Err(Error::InvalidExpiry { .. }) => Json(json!("refused")),
        Err(err) => Json(json!(err.to_string())),
        Ok(mut controller) => {
            let inserted = controller.insert("x", 1).map_err(|err| err.to_string());
            Json(json!({
                "inserted": inserted.is_ok(),
                "is_expired": controller.is_expired(),
                "expires_at": controller.expires_at().map(|at| at.to_string()),
            }))
        }
    }
}

/// The stamp was now + expiry rounded to the stored float's step (about 238 ns in 2026), so an
/// accepted expiry shorter than half a step stamped at or before now: the namespace was expired
/// as soon as it was written. Refusing such an expiry, or stamping after now, both pass.
#[tokio::test]
async fn a_positive_expiry_is_refused_or_alive_after_the_write() {
    let mut app = TestApp::new(routes().route("/tiny", get(write_for_one_nanosecond)));
    app.clock.advance(Duration::nanoseconds(100));
    let reply = app.get("/tiny").await.json();
    if reply == json!("refused") {
        return;
    }
    assert_eq!(
        reply["is_expired"],
        json!(false),
        "at START + 100 ns: {reply}"
    );
    // The next request at the same instant judges by the same stamp.
    let read = app.get(&run_uri(&read_x("a"))).await.json();
    assert_eq!(
        read[1],
        json!({ "value": 1 }),
        "wrote {reply}, then read {read}"
    );
}

/// Through `MergingStore`, a write with a shorter expiry kept the stored, later stamp (the merge
/// kept "the later of two write stamps" even when nothing overlapped), so the next request judged
/// by another stamp than the handler saw in `expires_at`.
#[tokio::test]
async fn through_merging_store_the_next_request_judges_by_the_stamp_the_handler_saw() {
    let mut app = TestApp::merging(routes());
    app.get(&run_uri(&write_x("a", Expiry::Seconds(300)))).await;
    let wrote = app
        .get(&run_uri(&write_x("a", Expiry::Seconds(1))))
        .await
        .json();
    let read = app.get(&run_uri(&read_x("a"))).await.json();
    assert_eq!(read[2], wrote[2], "stored: {:?}", app.stored("a").await);
}
