//! The behaviour of namespaces over HTTP, one rule family a module (the map from the README's
//! rules to these tests is `tests/README.md`):
//!
//! - `stored_layout`: the object of user keys plus a float stamp, shared by both controllers;
//! - `sliding_expiry`: writes slide the stamp, reads never do; expiry per open and per type;
//! - `dropped_on_open`: expired namespaces dropped when opened, the edges of expiry, and what
//!   `is_expired` / `has_data` report;
//! - `remove_and_purge`: removing the last key or purging removes the namespace;
//! - `reserved_keys`: the stamp key cannot be written;
//! - `store_traffic`: the store calls each kind of request makes, counted exactly;
//! - `one_state_per_request`: sharing one namespace within a request;
//! - `sessions`: visitors, and tower-sessions' own `cycle_id` / `flush`.
//! - `update`: `SessionController::update`, a value changed in place (its own small app).
//!
//! Every module drives the one app below: its routes report what the controllers see.

mod dropped_on_open;
mod one_state_per_request;
mod remove_and_purge;
mod reserved_keys;
mod sessions;
mod sliding_expiry;
mod store_traffic;
mod stored_layout;
#[path = "../support/mod.rs"]
mod support;
mod update;

use std::collections::HashMap;

use axum::{
    extract::{Path, Request},
    http::StatusCode,
    middleware::Next,
    response::Response,
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::Duration;
use tower_sessions::Session;
use tower_sessions_controller::{
    Error, Keyed, Namespace, SessionController, SessionControllers, STAMP_KEY,
};

use support::{enc, nanos, Reply, TestApp};

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
// What the handlers report
// ---------------------------------------------------------------------------------------------

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
        .route("/cycle", post(support::routes::cycle_id))
        .route("/flush", post(support::routes::flush))
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
    reply.assert_ok();
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
    reply.assert_ok();
    reply
}

/// An app whose visitor has a stored session holding only the namespace `other`, with the
/// session's stored data, and the store's counters reset.
async fn app_with_another_namespace() -> (TestApp, HashMap<String, Value>) {
    let mut app = app();
    insert_value(&mut app, "other", "a", "1").await;
    let before = app.record().await.expect("session stored").data;
    app.store.take_calls();
    (app, before)
}

async fn read_ns(app: &mut TestApp, key: &str) -> Value {
    let reply = app.get(&format!("/read/{key}")).await;
    reply.assert_ok();
    reply.json()
}
