//! The behaviour of namespaces over HTTP: stored layout, sliding expiry, dropping on open, the
//! edge instants of expiry, removal and purge, the reserved stamp key, store traffic, sharing of
//! one namespace within a request, several namespaces and visitors, and tower-sessions' own
//! `cycle_id` / `flush`.

mod support;

use axum::{
    extract::{Path, Request},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower_sessions::{session::Id, Session, SessionStore};
use tower_sessions_controller::{
    Error, Keyed, Namespace, SessionController, SessionControllers, DEFAULT_EXPIRY, STAMP_KEY,
};

use support::{Calls, Reply, TestApp, START};

// ---------------------------------------------------------------------------------------------
// Typed namespaces
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cart {
    items: Vec<String>,
}

impl Namespace for Cart {
    const KEY: &'static str = "cart";
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Wizard {
    step: u32,
}

impl Namespace for Wizard {
    const KEY: &'static str = "wizard";
    const EXPIRY: Duration = Duration::minutes(10);
}

/// A typed namespace whose field collides with the stamp key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sneaky {
    #[serde(rename = "_timeout_datestamp")]
    stamp: f64,
    n: u32,
}

impl Namespace for Sneaky {
    const KEY: &'static str = "sneaky";
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An instant as nanoseconds since the Unix epoch (fits an `i64` until 2262).
fn nanos(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).expect("instant fits in i64 nanoseconds")
}

/// The instant a handler reported as `expires_at`.
fn instant(value: &Value) -> OffsetDateTime {
    let nanos = value
        .as_i64()
        .unwrap_or_else(|| panic!("expires_at {value} is not an instant"));
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).expect("instant in range")
}

/// An instant as the seed stores it: float seconds since the Unix epoch.
fn seconds(at: OffsetDateTime) -> f64 {
    at.unix_timestamp() as f64 + f64::from(at.nanosecond()) / 1e9
}

/// The stamp of a stored namespace, as the float it is stored as.
fn stored_stamp(namespace: &Value) -> f64 {
    namespace
        .get(STAMP_KEY)
        .unwrap_or_else(|| panic!("no {STAMP_KEY} in {namespace}"))
        .as_f64()
        .unwrap_or_else(|| panic!("{STAMP_KEY} in {namespace} is not a number"))
}

/// A stored namespace without its stamp: the user's keys.
fn user_keys(namespace: &Value) -> Value {
    let mut namespace = namespace.clone();
    namespace
        .as_object_mut()
        .expect("stored namespace is an object")
        .remove(STAMP_KEY);
    namespace
}

/// Percent-encodes a path segment (for JSON values in paths).
fn enc(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A path segment value read as JSON, or else as a string.
fn parse(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

fn report(controller: &SessionController) -> Value {
    json!({
        "data": controller.data(),
        "keys": controller.keys(),
        "len": controller.len(),
        "has_data": controller.has_data(),
        "is_expired": controller.is_expired(),
        "expires_at": controller.expires_at().map(nanos),
        "policy": format!("{:?}", controller.policy()),
    })
}

fn keyed_report<T: Namespace>(keyed: &Keyed<T>) -> Value {
    json!({
        "value": serde_json::to_value(&**keyed).expect("namespace serializes"),
        "is_expired": keyed.is_expired(),
        "expires_at": keyed.expires_at().map(nanos),
    })
}

/// A record's data read straight from the wrapped store, by id (whatever the cookie says).
async fn load_by_id(app: &TestApp, id: &Id) -> Option<Value> {
    app.store
        .inner
        .load(id)
        .await
        .expect("memory store load")
        .map(|record| json!(record.data))
}

fn assert_ok(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn read(
    controllers: SessionControllers,
    Path(key): Path<String>,
) -> Result<Json<Value>, Error> {
    let controller = controllers.open(&key).await?;
    Ok(Json(report(&controller)))
}

async fn insert(
    controllers: SessionControllers,
    Path((key, field, value)): Path<(String, String, String)>,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(&key).await?;
    let before = report(&controller);
    controller.insert(&field, parse(&value))?;
    Ok(Json(
        json!({ "before": before, "after": report(&controller) }),
    ))
}

async fn insert_for(
    controllers: SessionControllers,
    Path((key, secs, field, value)): Path<(String, i64, String, String)>,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers
        .open_with_expiry(&key, Duration::seconds(secs))
        .await?;
    let before = report(&controller);
    controller.insert(&field, parse(&value))?;
    Ok(Json(
        json!({ "before": before, "after": report(&controller) }),
    ))
}

/// Tries to insert the reserved key, then answers 200 with what the controller holds: the flush
/// runs as for any successful request.
async fn try_reserved(
    controllers: SessionControllers,
    Path(key): Path<String>,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(&key).await?;
    let refused = matches!(
        controller.insert(STAMP_KEY, 1.0),
        Err(Error::ReservedKey { .. })
    );
    Ok(Json(
        json!({ "refused": refused, "after": report(&controller) }),
    ))
}

async fn remove(
    controllers: SessionControllers,
    Path((key, field)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(&key).await?;
    let removed = controller.remove(&field);
    Ok(Json(
        json!({ "removed": removed, "after": report(&controller) }),
    ))
}

async fn purge(
    controllers: SessionControllers,
    Path(key): Path<String>,
) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(&key).await?;
    controller.purge();
    Ok(Json(report(&controller)))
}

async fn read_cart(cart: Keyed<Cart>) -> Json<Value> {
    Json(keyed_report(&cart))
}

async fn add_to_cart(mut cart: Keyed<Cart>, Path(item): Path<String>) -> Json<Value> {
    cart.items.push(item);
    Json(keyed_report(&cart))
}

/// Takes a mutable reference without changing anything.
async fn touch_cart(mut cart: Keyed<Cart>) -> Json<Value> {
    let _: &mut Cart = &mut cart;
    Json(keyed_report(&cart))
}

async fn read_wizard(wizard: Keyed<Wizard>) -> Json<Value> {
    Json(keyed_report(&wizard))
}

async fn next_step(mut wizard: Keyed<Wizard>) -> Json<Value> {
    wizard.step += 1;
    Json(keyed_report(&wizard))
}

async fn open_twice(controllers: SessionControllers) -> Result<Json<Value>, Error> {
    let mut first = controllers.open("shared").await?;
    let mut second = controllers.open("shared").await?;
    first.insert("a", 1)?;
    let second_saw_a: Option<i64> = second.get("a")?;
    second.insert("b", 2)?;
    let first_saw_b: Option<i64> = first.get("b")?;
    Ok(Json(json!({
        "second_saw_a": second_saw_a,
        "first_saw_b": first_saw_b,
        "first": report(&first),
        "second": report(&second),
    })))
}

/// Several writes to two runtime namespaces and one typed namespace.
async fn write_many(controllers: SessionControllers) -> Result<Json<Value>, Error> {
    let mut x = controllers.open("x").await?;
    let mut y = controllers
        .open_with_expiry("y", Duration::hours(1))
        .await?;
    x.insert("one", 1)?;
    x.insert("two", 2)?;
    y.insert("three", 3)?;
    let mut cart = controllers.keyed::<Cart>().await?;
    cart.items.push("apple".into());
    cart.items.push("fig".into());
    Ok(Json(json!({ "x": report(&x), "y": report(&y) })))
}

async fn write_sneaky(mut sneaky: Keyed<Sneaky>) -> Json<Value> {
    sneaky.stamp = 1.0;
    sneaky.n += 1;
    Json(keyed_report(&sneaky))
}

/// Writes into `ns`, then flushes the whole session, in one request.
async fn write_then_flush(
    controllers: SessionControllers,
    session: Session,
) -> Result<StatusCode, Error> {
    let mut controller = controllers.open("ns").await?;
    controller.insert("late", 1)?;
    drop(controller);
    Ok(match session.flush().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    })
}

/// Logging out, then leaving a note for the next page: the note belongs to the new session.
async fn flush_then_write(
    controllers: SessionControllers,
    session: Session,
) -> Result<StatusCode, Error> {
    if session.flush().await.is_err() {
        return Ok(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut notes = controllers.open("notes").await?;
    notes.insert("bye", true)?;
    Ok(StatusCode::OK)
}

async fn keyed_then_open(
    _cart: Keyed<Cart>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let controller = controllers.open(Cart::KEY).await?;
    Ok(Json(report(&controller)))
}

async fn open_then_keyed(controllers: SessionControllers) -> Result<Json<Value>, Error> {
    let mut controller = controllers.open(Cart::KEY).await?;
    controller.insert("items", ["from controller"])?;
    let cart = controllers.keyed::<Cart>().await?;
    Ok(Json(keyed_report(&cart)))
}

async fn keyed_twice(_first: Keyed<Cart>, second: Keyed<Cart>) -> Json<Value> {
    Json(keyed_report(&second))
}

async fn cycle(session: Session) -> StatusCode {
    match session.cycle_id().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn flush(session: Session) -> StatusCode {
    match session.flush().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A middleware that writes into the namespace `shared` before the handler runs.
async fn write_in_middleware(
    controllers: SessionControllers,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let mut controller = controllers.open("shared").await?;
    controller.insert("middleware", true)?;
    drop(controller);
    Ok(next.run(request).await)
}

/// A middleware that changes the typed cart and drops its `Keyed` before the handler runs.
async fn cart_in_middleware(mut cart: Keyed<Cart>, request: Request, next: Next) -> Response {
    cart.items.push("middleware".into());
    drop(cart);
    next.run(request).await
}

fn routes() -> Router {
    Router::new()
        .route("/read/{key}", get(read))
        .route("/insert/{key}/{field}/{value}", post(insert))
        .route("/insert_for/{key}/{secs}/{field}/{value}", post(insert_for))
        .route("/reserved/{key}", post(try_reserved))
        .route("/remove/{key}/{field}", post(remove))
        .route("/purge/{key}", post(purge))
        .route("/cart", get(read_cart))
        .route("/cart/{item}", post(add_to_cart))
        .route("/cart_touch", post(touch_cart))
        .route("/wizard", get(read_wizard))
        .route("/wizard/next", post(next_step))
        .route("/twice", post(open_twice))
        .route("/write_many", post(write_many))
        .route("/keyed_then_open", post(keyed_then_open))
        .route("/open_then_keyed", post(open_then_keyed))
        .route("/keyed_twice", get(keyed_twice))
        .route("/cycle", post(cycle))
        .route("/flush", post(flush))
        .route("/write_then_flush", post(write_then_flush))
        .route("/flush_then_write", post(flush_then_write))
        .route("/sneaky", post(write_sneaky))
}

fn app() -> TestApp {
    TestApp::new(routes())
}

async fn insert_value(app: &mut TestApp, key: &str, field: &str, value: &str) -> Reply {
    let reply = app
        .post(&format!("/insert/{key}/{field}/{}", enc(value)))
        .await;
    assert_ok(&reply);
    reply
}

async fn insert_value_for(
    app: &mut TestApp,
    key: &str,
    secs: i64,
    field: &str,
    value: &str,
) -> Reply {
    let reply = app
        .post(&format!("/insert_for/{key}/{secs}/{field}/{}", enc(value)))
        .await;
    assert_ok(&reply);
    reply
}

async fn read_ns(app: &mut TestApp, key: &str) -> Value {
    let reply = app.get(&format!("/read/{key}")).await;
    assert_ok(&reply);
    reply.json()
}

// ---------------------------------------------------------------------------------------------
// Stored layout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stored_namespace_is_an_object_of_user_keys_plus_a_float_stamp() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value(&mut app, "ns", "b", "[1,2]").await;

    let stored = app.stored("ns").await.expect("namespace stored");
    let stamp = &stored[STAMP_KEY];
    assert!(stamp.is_f64(), "stamp {stamp} is not a float");
    assert_eq!(
        stored,
        json!({ "a": 1, "b": [1, 2], STAMP_KEY: seconds(START + DEFAULT_EXPIRY) })
    );
}

#[tokio::test]
async fn keyed_namespace_stores_its_fields_in_the_same_layout() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);

    let stored = app.stored(Cart::KEY).await.expect("cart stored");
    assert_eq!(
        stored,
        json!({ "items": ["apple"], STAMP_KEY: seconds(START + DEFAULT_EXPIRY) })
    );
}

#[tokio::test]
async fn data_written_by_a_controller_reads_back_through_keyed() {
    let mut app = app();
    insert_value(&mut app, Cart::KEY, "items", r#"["pear","plum"]"#).await;
    let written = app.stored(Cart::KEY).await.expect("cart stored");

    let reply = app.get("/cart").await;
    assert_ok(&reply);
    let cart = reply.json();
    assert_eq!(cart["value"], json!({ "items": ["pear", "plum"] }));
    assert_eq!(
        seconds(instant(&cart["expires_at"])),
        stored_stamp(&written)
    );
    assert_eq!(cart["is_expired"], false);
}

#[tokio::test]
async fn data_written_through_keyed_reads_back_through_a_controller() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);
    assert_ok(&app.post("/cart/fig").await);

    let cart = read_ns(&mut app, Cart::KEY).await;
    assert_eq!(cart["data"], json!({ "items": ["apple", "fig"] }));
    assert_eq!(cart["keys"], json!(["items"]));
    assert_eq!(
        instant(&cart["expires_at"]),
        START + DEFAULT_EXPIRY,
        "the stamp the Keyed wrote"
    );
}

// ---------------------------------------------------------------------------------------------
// Sliding on write, never on read
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn insert_slides_the_stamp_to_now_plus_expiry() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    app.clock.advance(Duration::seconds(50));
    let reply = insert_value(&mut app, "ns", "b", "2").await.json();

    let expected = START + Duration::seconds(50) + DEFAULT_EXPIRY;
    assert_eq!(instant(&reply["after"]["expires_at"]), expected);
    let stored = app.stored("ns").await.expect("namespace stored");
    assert_eq!(stored_stamp(&stored), seconds(expected));
    assert_eq!(user_keys(&stored), json!({ "a": 1, "b": 2 }));
}

#[tokio::test]
async fn keyed_mutation_slides_the_stamp_to_now_plus_expiry() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);
    app.clock.advance(Duration::seconds(50));
    let reply = app.post("/cart/fig").await;
    assert_ok(&reply);

    let expected = START + Duration::seconds(50) + DEFAULT_EXPIRY;
    assert_eq!(instant(&reply.json()["expires_at"]), expected);
    let stored = app.stored(Cart::KEY).await.expect("cart stored");
    assert_eq!(stored_stamp(&stored), seconds(expected));
}

#[tokio::test]
async fn any_mutable_access_to_keyed_counts_as_a_write_and_slides_the_stamp() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);
    app.clock.advance(Duration::seconds(50));
    app.store.take_calls();

    let reply = app.post("/cart_touch").await;
    assert_ok(&reply);

    let expected = START + Duration::seconds(50) + DEFAULT_EXPIRY;
    assert_eq!(instant(&reply.json()["expires_at"]), expected);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            save: 1,
            ..Calls::default()
        }
    );
    let stored = app.stored(Cart::KEY).await.expect("cart stored");
    assert_eq!(
        stored,
        json!({ "items": ["apple"], STAMP_KEY: seconds(expected) })
    );
}

#[tokio::test]
async fn reading_through_a_controller_never_moves_the_stamp() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let before = app.stored("ns").await.expect("namespace stored");
    app.clock.advance(Duration::seconds(100));
    app.store.take_calls();

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(instant(&read["expires_at"]), START + DEFAULT_EXPIRY);
    assert_eq!(read["data"], json!({ "a": 1 }));
    assert_eq!(app.stored("ns").await, Some(before));
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn reading_through_keyed_never_moves_the_stamp() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);
    let before = app.stored(Cart::KEY).await.expect("cart stored");
    app.clock.advance(Duration::seconds(100));
    app.store.take_calls();

    let reply = app.get("/cart").await;
    assert_ok(&reply);

    assert_eq!(instant(&reply.json()["expires_at"]), START + DEFAULT_EXPIRY);
    assert_eq!(app.stored(Cart::KEY).await, Some(before));
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Dropped on open
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expired_namespace_is_empty_and_accepts_a_write() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    app.clock.advance(DEFAULT_EXPIRY + Duration::seconds(1));
    app.store.take_calls();

    let reply = insert_value(&mut app, "ns", "c", "3").await.json();

    assert_eq!(reply["before"]["data"], json!({}));
    assert_eq!(reply["before"]["has_data"], false);
    assert_eq!(reply["before"]["is_expired"], true);
    assert_eq!(reply["before"]["expires_at"], Value::Null);
    assert_eq!(reply["after"]["data"], json!({ "c": 3 }));
    let now = START + DEFAULT_EXPIRY + Duration::seconds(1);
    assert_eq!(
        app.stored("ns").await,
        Some(json!({ "c": 3, STAMP_KEY: seconds(now + DEFAULT_EXPIRY) }))
    );
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            save: 1,
            ..Calls::default()
        }
    );
    // The write persists: the next request still sees it.
    assert_eq!(read_ns(&mut app, "ns").await["data"], json!({ "c": 3 }));
}

#[tokio::test]
async fn expired_namespace_is_removed_from_the_store_by_a_read() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value_for(&mut app, "other", 3600, "keep", "1").await;
    app.clock.advance(DEFAULT_EXPIRY + Duration::seconds(1));
    app.store.take_calls();

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["data"], json!({}));
    assert_eq!(read["is_expired"], true);
    let record = app.record().await.expect("session kept");
    assert!(!record.data.contains_key("ns"), "{:?}", record.data);
    assert!(record.data.contains_key("other"));
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            save: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn expired_keyed_namespace_reads_as_default_and_a_write_starts_afresh() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);
    app.clock.advance(DEFAULT_EXPIRY + Duration::seconds(1));

    let reply = app.post("/cart/fig").await;
    assert_ok(&reply);

    assert_eq!(reply.json()["value"], json!({ "items": ["fig"] }));
    let now = START + DEFAULT_EXPIRY + Duration::seconds(1);
    assert_eq!(
        app.stored(Cart::KEY).await,
        Some(json!({ "items": ["fig"], STAMP_KEY: seconds(now + DEFAULT_EXPIRY) }))
    );
}

/// Writes `ns` at a instant with a fraction of a second, and returns the stamp the handler
/// reported.
async fn written_at_an_odd_instant(app: &mut TestApp) -> OffsetDateTime {
    app.clock.advance(Duration::nanoseconds(123_456_789));
    let reply = insert_value(app, "ns", "a", "1").await.json();
    let stamp = instant(&reply["after"]["expires_at"]);
    let written_at = START + Duration::nanoseconds(123_456_789);
    assert!(
        (stamp - (written_at + DEFAULT_EXPIRY)).abs() < Duration::microseconds(1),
        "stamp {stamp} is not now + expiry"
    );
    let stored = app.stored("ns").await.expect("namespace stored");
    assert!((stored_stamp(&stored) - seconds(stamp)).abs() < 1e-6);
    stamp
}

#[tokio::test]
async fn namespace_is_alive_one_nanosecond_before_its_stamp() {
    let mut app = app();
    let stamp = written_at_an_odd_instant(&mut app).await;
    let before = app.stored("ns").await;
    app.clock.set(stamp - Duration::nanoseconds(1));
    app.store.take_calls();

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["data"], json!({ "a": 1 }));
    assert_eq!(read["is_expired"], false);
    assert_eq!(instant(&read["expires_at"]), stamp);
    assert_eq!(app.stored("ns").await, before);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn namespace_has_expired_exactly_at_its_stamp() {
    let mut app = app();
    let stamp = written_at_an_odd_instant(&mut app).await;
    app.clock.set(stamp);

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["data"], json!({}));
    assert_eq!(read["is_expired"], true);
    assert_eq!(read["expires_at"], Value::Null);
    assert_eq!(app.stored("ns").await, None);
}

#[tokio::test]
async fn namespace_has_expired_one_nanosecond_after_its_stamp() {
    let mut app = app();
    let stamp = written_at_an_odd_instant(&mut app).await;
    app.clock.set(stamp + Duration::nanoseconds(1));

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["data"], json!({}));
    assert_eq!(read["is_expired"], true);
    assert_eq!(app.stored("ns").await, None);
}

#[tokio::test]
async fn keyed_namespace_expiry_edges_follow_the_stored_float() {
    let mut app = app();
    app.clock.advance(Duration::nanoseconds(987_654_321));
    let reply = app.post("/cart/apple").await;
    assert_ok(&reply);
    let stamp = instant(&reply.json()["expires_at"]);

    app.clock.set(stamp - Duration::nanoseconds(1));
    let alive = app.get("/cart").await.json();
    assert_eq!(alive["value"], json!({ "items": ["apple"] }));
    assert_eq!(alive["is_expired"], false);

    app.clock.set(stamp);
    let gone = app.get("/cart").await.json();
    assert_eq!(gone["value"], json!({ "items": [] }));
    assert_eq!(gone["is_expired"], true);
    assert_eq!(app.stored(Cart::KEY).await, None);
}

#[tokio::test]
async fn seed_worked_trace_holds_step_by_step() {
    let mut app = app();
    let at = |secs: i64| START + Duration::seconds(secs);

    insert_value_for(&mut app, "ns", 60, "a", "1").await;
    assert_eq!(
        app.stored("ns").await,
        Some(json!({ "a": 1, STAMP_KEY: seconds(at(60)) }))
    );

    app.clock.set(at(50));
    insert_value_for(&mut app, "ns", 60, "b", "[1,2]").await;
    let after_50 = json!({ "a": 1, "b": [1, 2], STAMP_KEY: seconds(at(110)) });
    assert_eq!(app.stored("ns").await, Some(after_50.clone()));

    app.clock.set(at(100));
    let read = read_ns(&mut app, "ns").await;
    assert_eq!(read["is_expired"], false);
    assert_eq!(read["has_data"], true);
    assert_eq!(app.stored("ns").await, Some(after_50));

    app.clock.set(at(111));
    let read = read_ns(&mut app, "ns").await;
    assert_eq!(read["data"], json!({}));
    assert_eq!(read["is_expired"], true);
    assert_eq!(app.stored("ns").await, None);

    app.clock.set(at(120));
    insert_value_for(&mut app, "ns", 60, "c", "3").await;
    assert_eq!(
        app.stored("ns").await,
        Some(json!({ "c": 3, STAMP_KEY: seconds(at(180)) }))
    );
}

// ---------------------------------------------------------------------------------------------
// Remove and purge
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn removing_the_last_key_removes_the_stamp_and_the_namespace() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value(&mut app, "other", "b", "2").await;
    app.store.take_calls();

    let reply = app.post("/remove/ns/a").await;
    assert_ok(&reply);
    let reply = reply.json();

    assert_eq!(reply["removed"], json!(1));
    assert_eq!(reply["after"]["expires_at"], Value::Null);
    assert_eq!(reply["after"]["is_expired"], true);
    let record = app.record().await.expect("session kept");
    assert!(!record.data.contains_key("ns"), "{:?}", record.data);
    assert!(record.data.contains_key("other"));
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            save: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn removing_one_of_several_keys_keeps_the_stamp_where_it_was() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value(&mut app, "ns", "b", "2").await;
    app.clock.advance(Duration::seconds(30));

    let reply = app.post("/remove/ns/a").await;
    assert_ok(&reply);

    assert_eq!(
        instant(&reply.json()["after"]["expires_at"]),
        START + DEFAULT_EXPIRY
    );
    assert_eq!(
        app.stored("ns").await,
        Some(json!({ "b": 2, STAMP_KEY: seconds(START + DEFAULT_EXPIRY) }))
    );
}

#[tokio::test]
async fn removing_a_missing_key_is_a_no_op_without_a_save() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let before = app.stored("ns").await;
    app.store.take_calls();

    let reply = app.post("/remove/ns/missing").await;
    assert_ok(&reply);

    assert_eq!(reply.json()["removed"], Value::Null);
    assert_eq!(app.stored("ns").await, before);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn removing_from_an_absent_namespace_is_a_no_op_without_a_save() {
    let mut app = app();
    insert_value(&mut app, "other", "a", "1").await;
    let before = app.record().await.expect("session stored").data;
    app.store.take_calls();

    let reply = app.post("/remove/ghost/a").await;
    assert_ok(&reply);

    assert_eq!(reply.json()["removed"], Value::Null);
    assert_eq!(app.record().await.expect("session kept").data, before);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn purging_an_absent_namespace_is_a_no_op_without_a_save() {
    let mut app = app();
    insert_value(&mut app, "other", "a", "1").await;
    let before = app.record().await.expect("session stored").data;
    app.store.take_calls();

    let reply = app.post("/purge/ghost").await;
    assert_ok(&reply);

    assert!(reply.set_cookie.is_none(), "{:?}", reply.set_cookie);
    assert_eq!(app.record().await.expect("session kept").data, before);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn purging_an_absent_namespace_for_a_new_visitor_costs_no_store_call() {
    let mut app = app();

    let reply = app.post("/purge/ghost").await;

    assert_ok(&reply);
    assert!(reply.set_cookie.is_none(), "{:?}", reply.set_cookie);
    assert_eq!(app.store.take_calls(), Calls::default());
}

#[tokio::test]
async fn purging_a_namespace_removes_it_from_the_stored_record() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value(&mut app, "other", "b", "2").await;
    app.store.take_calls();

    let reply = app.post("/purge/ns").await;
    assert_ok(&reply);

    let reply = reply.json();
    assert_eq!(reply["has_data"], false);
    assert_eq!(reply["is_expired"], true);
    let record = app.record().await.expect("session kept");
    assert!(!record.data.contains_key("ns"), "{:?}", record.data);
    assert!(record.data.contains_key("other"));
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            save: 1,
            ..Calls::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// is_expired / has_data
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unwritten_namespace_reports_expired_and_no_data() {
    let mut app = app();

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["is_expired"], true);
    assert_eq!(read["has_data"], false);
    assert_eq!(read["len"], 0);
    assert_eq!(read["expires_at"], Value::Null);
}

#[tokio::test]
async fn written_namespace_is_alive_and_counts_only_the_user_keys() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["is_expired"], false);
    assert_eq!(read["has_data"], true);
    assert_eq!(read["len"], 1, "the stamp is not one of the user's keys");
    assert_eq!(read["keys"], json!(["a"]));
    assert_eq!(read["data"], json!({ "a": 1 }));
    // The stored record does hold two keys: the user's and the stamp.
    let stored = app.stored("ns").await.expect("namespace stored");
    assert_eq!(stored.as_object().map(|o| o.len()), Some(2));
}

#[tokio::test]
async fn namespace_without_a_stamp_is_kept_but_reports_expired() {
    let mut app = app();
    insert_value(&mut app, "other", "x", "1").await;
    app.store_raw("ns", json!({ "a": 1 })).await;
    app.store.take_calls();

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["is_expired"], true);
    assert_eq!(read["has_data"], true);
    assert_eq!(read["data"], json!({ "a": 1 }));
    assert_eq!(app.stored("ns").await, Some(json!({ "a": 1 })));
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn namespace_with_a_stamp_only_has_no_data() {
    let mut app = app();
    insert_value(&mut app, "other", "x", "1").await;
    let future = seconds(START + Duration::hours(1));
    app.store_raw("ns", json!({ STAMP_KEY: future })).await;

    let read = read_ns(&mut app, "ns").await;

    assert_eq!(read["has_data"], false);
    assert_eq!(read["len"], 0);
    assert_eq!(read["is_expired"], false, "its stamp is in the future");
}

// ---------------------------------------------------------------------------------------------
// The reserved stamp key
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn inserting_the_stamp_key_is_a_reserved_key_error_and_a_500() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let before = app.stored("ns").await;
    app.store.take_calls();

    let reply = app
        .post(&format!("/insert/ns/{STAMP_KEY}/{}", enc("99")))
        .await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("reserved"), "body: {}", reply.body);
    assert_eq!(app.stored("ns").await, before);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn refused_stamp_key_insert_writes_nothing_even_when_the_request_succeeds() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let before = app.stored("ns").await;
    app.clock.advance(Duration::seconds(10));
    app.store.take_calls();

    let reply = app.post("/reserved/ns").await;

    assert_ok(&reply);
    let reply = reply.json();
    assert_eq!(reply["refused"], true);
    assert_eq!(reply["after"]["data"], json!({ "a": 1 }));
    assert_eq!(
        instant(&reply["after"]["expires_at"]),
        START + DEFAULT_EXPIRY,
        "a refused insert does not slide the stamp"
    );
    assert_eq!(app.stored("ns").await, before);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn typed_namespace_with_a_stamp_field_is_a_reserved_key_error_and_writes_nothing() {
    let mut app = app();
    insert_value(&mut app, "other", "a", "1").await;
    let before = app.record().await.expect("session stored").data;
    app.store.take_calls();

    let reply = app.post("/sneaky").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("reserved"), "body: {}", reply.body);
    assert_eq!(app.record().await.expect("session kept").data, before);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Store traffic
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn visitor_without_a_cookie_reading_costs_no_store_call_and_gets_no_cookie() {
    let mut app = app();

    let reply = app.get("/read/ns").await;
    assert_ok(&reply);

    assert!(reply.set_cookie.is_none(), "{:?}", reply.set_cookie);
    assert_eq!(app.store.take_calls(), Calls::default());
}

#[tokio::test]
async fn visitor_without_a_cookie_extracting_keyed_costs_no_store_call_and_gets_no_cookie() {
    let mut app = app();

    let reply = app.get("/cart").await;
    assert_ok(&reply);

    assert!(reply.set_cookie.is_none(), "{:?}", reply.set_cookie);
    assert_eq!(app.store.take_calls(), Calls::default());
}

#[tokio::test]
async fn read_only_request_on_a_stored_session_loads_once_and_saves_nothing() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    app.store.take_calls();

    let reply = app.get("/read/ns").await;
    assert_ok(&reply);

    assert!(reply.set_cookie.is_none(), "{:?}", reply.set_cookie);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn extracting_keyed_without_mutating_it_saves_nothing() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);
    app.store.take_calls();

    let reply = app.get("/cart").await;
    assert_ok(&reply);

    assert!(reply.set_cookie.is_none(), "{:?}", reply.set_cookie);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn first_write_of_a_new_visitor_creates_the_session_once() {
    let mut app = app();

    let reply = insert_value(&mut app, "ns", "a", "1").await;

    assert!(reply.set_cookie.is_some(), "a new session gets a cookie");
    assert_eq!(
        app.store.take_calls(),
        Calls {
            create: 1,
            ..Calls::default()
        }
    );
    assert!(app.stored("ns").await.is_some());
}

#[tokio::test]
async fn writes_to_several_namespaces_in_one_request_save_once() {
    let mut app = app();
    insert_value(&mut app, "other", "keep", "1").await;
    app.store.take_calls();

    let reply = app.post("/write_many").await;
    assert_ok(&reply);

    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            save: 1,
            ..Calls::default()
        }
    );
    let record = app.record().await.expect("session kept");
    assert_eq!(
        record.data.get("x"),
        Some(&json!({ "one": 1, "two": 2, STAMP_KEY: seconds(START + DEFAULT_EXPIRY) }))
    );
    assert_eq!(
        record.data.get("y"),
        Some(&json!({ "three": 3, STAMP_KEY: seconds(START + Duration::hours(1)) }))
    );
    assert_eq!(
        record.data.get(Cart::KEY),
        Some(&json!({ "items": ["apple", "fig"], STAMP_KEY: seconds(START + DEFAULT_EXPIRY) }))
    );
    assert!(record.data.contains_key("other"));
}

#[tokio::test]
async fn writes_to_several_namespaces_for_a_new_visitor_create_once() {
    let mut app = app();

    let reply = app.post("/write_many").await;
    assert_ok(&reply);

    assert!(reply.set_cookie.is_some());
    assert_eq!(
        app.store.take_calls(),
        Calls {
            create: 1,
            ..Calls::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// One state per key per request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_controllers_for_one_key_in_a_handler_share_one_state() {
    let mut app = app();

    let reply = app.post("/twice").await;
    assert_ok(&reply);

    let reply = reply.json();
    assert_eq!(reply["second_saw_a"], 1);
    assert_eq!(reply["first_saw_b"], 2);
    assert_eq!(reply["first"]["data"], json!({ "a": 1, "b": 2 }));
    assert_eq!(reply["first"], reply["second"]);
    assert_eq!(
        app.stored("shared").await,
        Some(json!({ "a": 1, "b": 2, STAMP_KEY: seconds(START + DEFAULT_EXPIRY) }))
    );
    assert_eq!(
        app.store.take_calls(),
        Calls {
            create: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn middleware_write_is_seen_by_the_handler_in_the_same_request() {
    let routes = routes().layer(middleware::from_fn(write_in_middleware));
    let mut app = TestApp::new(routes);

    let read = read_ns(&mut app, "shared").await;

    assert_eq!(read["data"], json!({ "middleware": true }));
    assert_eq!(read["is_expired"], false);
    assert_eq!(instant(&read["expires_at"]), START + DEFAULT_EXPIRY);
    assert_eq!(
        app.stored("shared").await,
        Some(json!({ "middleware": true, STAMP_KEY: seconds(START + DEFAULT_EXPIRY) }))
    );
    assert_eq!(
        app.store.take_calls(),
        Calls {
            create: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn opening_a_key_while_its_keyed_is_alive_is_namespace_in_use() {
    let mut app = app();
    assert_ok(&app.post("/cart/apple").await);
    let before = app.stored(Cart::KEY).await;

    let reply = app.post("/keyed_then_open").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("already open"), "body: {}", reply.body);
    assert_eq!(app.stored(Cart::KEY).await, before);
}

#[tokio::test]
async fn extracting_keyed_while_a_controller_for_its_key_is_alive_is_namespace_in_use() {
    let mut app = app();

    let reply = app.post("/open_then_keyed").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("already open"), "body: {}", reply.body);
    assert!(reply.set_cookie.is_none());
    assert_eq!(app.store.take_calls(), Calls::default());
}

#[tokio::test]
async fn extracting_the_same_keyed_twice_is_namespace_in_use() {
    let mut app = app();

    let reply = app.get("/keyed_twice").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("already open"), "body: {}", reply.body);
}

#[tokio::test]
async fn keyed_dropped_in_a_middleware_hands_its_state_to_the_handler() {
    let routes = routes().layer(middleware::from_fn(cart_in_middleware));
    let mut app = TestApp::new(routes);

    let reply = app.post("/cart/handler").await;
    assert_ok(&reply);

    assert_eq!(
        reply.json()["value"],
        json!({ "items": ["middleware", "handler"] })
    );
    assert_eq!(
        app.stored(Cart::KEY).await,
        Some(json!({
            "items": ["middleware", "handler"],
            STAMP_KEY: seconds(START + DEFAULT_EXPIRY),
        }))
    );
    assert_eq!(
        app.store.take_calls(),
        Calls {
            create: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn keyed_dropped_in_a_middleware_hands_its_state_to_a_runtime_controller() {
    let routes = routes().layer(middleware::from_fn(cart_in_middleware));
    let mut app = TestApp::new(routes);

    let read = read_ns(&mut app, Cart::KEY).await;

    assert_eq!(read["data"], json!({ "items": ["middleware"] }));
    assert_eq!(instant(&read["expires_at"]), START + DEFAULT_EXPIRY);
    assert_eq!(
        app.stored(Cart::KEY).await,
        Some(json!({ "items": ["middleware"], STAMP_KEY: seconds(START + DEFAULT_EXPIRY) }))
    );
}

// ---------------------------------------------------------------------------------------------
// Several namespaces, expiry per open
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn of_two_namespaces_the_shorter_lived_expires_and_the_other_survives() {
    let mut app = app();
    insert_value_for(&mut app, "short", 60, "a", "1").await;
    insert_value_for(&mut app, "long", 600, "b", "2").await;
    app.clock.advance(Duration::seconds(61));

    let short = read_ns(&mut app, "short").await;
    let long = read_ns(&mut app, "long").await;

    assert_eq!(short["data"], json!({}));
    assert_eq!(short["is_expired"], true);
    assert_eq!(long["data"], json!({ "b": 2 }));
    assert_eq!(long["is_expired"], false);
    let record = app.record().await.expect("session kept");
    assert!(!record.data.contains_key("short"), "{:?}", record.data);
    assert_eq!(
        record.data.get("long"),
        Some(&json!({ "b": 2, STAMP_KEY: seconds(START + Duration::seconds(600)) }))
    );
}

#[tokio::test]
async fn open_with_expiry_stamps_writes_with_that_duration() {
    let mut app = app();

    let reply = insert_value_for(&mut app, "ns", 90, "a", "1").await.json();

    assert_eq!(
        reply["after"]["policy"],
        "SlidingOnWrite(SignedDuration { seconds: 90, nanoseconds: 0 })"
    );
    assert_eq!(
        instant(&reply["after"]["expires_at"]),
        START + Duration::seconds(90)
    );
    assert_eq!(
        stored_stamp(&app.stored("ns").await.expect("namespace stored")),
        seconds(START + Duration::seconds(90))
    );
    app.clock.advance(Duration::seconds(89));
    assert_eq!(read_ns(&mut app, "ns").await["data"], json!({ "a": 1 }));
    app.clock.advance(Duration::seconds(1));
    assert_eq!(read_ns(&mut app, "ns").await["data"], json!({}));
}

#[tokio::test]
async fn later_write_with_another_expiry_restamps_with_that_expiry() {
    let mut app = app();
    insert_value_for(&mut app, "ns", 3600, "a", "1").await;
    app.clock.advance(Duration::seconds(10));

    insert_value_for(&mut app, "ns", 30, "b", "2").await;

    assert_eq!(
        stored_stamp(&app.stored("ns").await.expect("namespace stored")),
        seconds(START + Duration::seconds(40))
    );
}

#[tokio::test]
async fn open_with_a_zero_expiry_is_refused() {
    let mut app = app();

    let reply = app.post(&format!("/insert_for/ns/0/a/{}", enc("1"))).await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("expiry"), "body: {}", reply.body);
    assert_eq!(app.store.take_calls(), Calls::default());
}

#[tokio::test]
async fn namespace_expiry_override_sets_the_keyed_stamp() {
    let mut app = app();

    let reply = app.post("/wizard/next").await;
    assert_ok(&reply);

    let ten_minutes = START + Duration::minutes(10);
    assert_eq!(instant(&reply.json()["expires_at"]), ten_minutes);
    assert_eq!(
        app.stored(Wizard::KEY).await,
        Some(json!({ "step": 1, STAMP_KEY: seconds(ten_minutes) }))
    );
    app.clock
        .advance(Duration::minutes(10) - Duration::nanoseconds(1));
    assert_eq!(
        app.get("/wizard").await.json()["value"],
        json!({ "step": 1 })
    );
    app.clock.advance(Duration::nanoseconds(1));
    assert_eq!(
        app.get("/wizard").await.json()["value"],
        json!({ "step": 0 })
    );
}

// ---------------------------------------------------------------------------------------------
// Visitors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_visitors_never_see_each_others_namespaces() {
    let mut alice = app();
    let mut bob = alice.visitor();
    insert_value(&mut alice, "ns", "who", "\"alice\"").await;

    let bob_reads = read_ns(&mut bob, "ns").await;
    assert_eq!(bob_reads["data"], json!({}));
    assert!(bob.visitor.cookie.is_none(), "reading gave bob no session");

    insert_value(&mut bob, "ns", "who", "\"bob\"").await;
    assert_eq!(
        read_ns(&mut alice, "ns").await["data"],
        json!({ "who": "alice" })
    );
    assert_eq!(
        read_ns(&mut bob, "ns").await["data"],
        json!({ "who": "bob" })
    );
    assert_ne!(alice.session_id(), bob.session_id());
    assert_eq!(
        user_keys(&alice.stored("ns").await.unwrap())["who"],
        "alice"
    );
    assert_eq!(user_keys(&bob.stored("ns").await.unwrap())["who"], "bob");
}

// ---------------------------------------------------------------------------------------------
// tower-sessions' own session operations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cycling_the_session_id_keeps_every_namespace_with_its_stamp() {
    let mut app = app();
    insert_value_for(&mut app, "short", 60, "a", "1").await;
    assert_ok(&app.post("/cart/apple").await);
    app.clock.advance(Duration::seconds(20));
    let old_id = app.session_id().expect("session id");
    let before = app.record().await.expect("session stored").data;
    app.store.take_calls();

    let reply = app.post("/cycle").await;
    assert_ok(&reply);

    assert!(reply.set_cookie.is_some(), "the new id is sent");
    let new_id = app.session_id().expect("session id");
    assert_ne!(new_id, old_id);
    assert_eq!(app.record().await.expect("session kept").data, before);
    assert_eq!(load_by_id(&app, &old_id).await, None);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            create: 1,
            delete: 1,
            ..Calls::default()
        }
    );
    let short = read_ns(&mut app, "short").await;
    assert_eq!(short["data"], json!({ "a": 1 }));
    assert_eq!(instant(&short["expires_at"]), START + Duration::seconds(60));
}

#[tokio::test]
async fn flushing_the_session_removes_every_namespace() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    assert_ok(&app.post("/cart/apple").await);
    let old_id = app.session_id().expect("session id");
    app.store.take_calls();

    let reply = app.post("/flush").await;
    assert_ok(&reply);

    let cookie = reply.set_cookie.expect("a removal cookie");
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    assert!(app.visitor.cookie.is_none());
    assert_eq!(load_by_id(&app, &old_id).await, None);
    assert_eq!(
        app.store.take_calls(),
        Calls {
            // `Session::flush` clears without loading.
            delete: 1,
            ..Calls::default()
        }
    );
    assert_eq!(read_ns(&mut app, "ns").await["data"], json!({}));
    assert_eq!(
        app.get("/cart").await.json()["value"],
        json!({ "items": [] })
    );
}

#[tokio::test]
async fn namespace_written_before_a_flush_in_the_same_request_does_not_survive_it() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let old_id = app.session_id().expect("session id");
    app.store.take_calls();

    let reply = app.post("/write_then_flush").await;
    assert_ok(&reply);

    // The flush came last: the session is gone, and so is its cookie.
    assert_eq!(load_by_id(&app, &old_id).await, None);
    assert!(
        app.visitor.cookie.is_none(),
        "Set-Cookie: {:?}",
        reply.set_cookie
    );
    assert_eq!(
        app.store.take_calls(),
        Calls {
            load: 1,
            delete: 1,
            ..Calls::default()
        }
    );
}

#[tokio::test]
async fn namespace_opened_after_a_flush_in_the_same_request_lands_in_the_new_session() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;

    let reply = app.post("/flush_then_write").await;
    assert_ok(&reply);

    // tower-sessions' `flush` keeps the record's id, and `MemoryStore::create` reuses it once the
    // old record is deleted: what matters is what the id now holds.
    let new_id = app.session_id().expect("a cookie for the new session");
    let record = load_by_id(&app, &new_id)
        .await
        .expect("the new session is stored");
    assert_eq!(record["notes"]["bye"], json!(true));
    assert_eq!(
        record.get("ns"),
        None,
        "the old session's data came back: {record}"
    );
}
