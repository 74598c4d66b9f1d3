//! Store traffic, counted exactly: a visitor without a cookie who reads costs no store call and
//! gets no cookie, a read-only request loads once and saves nothing, and a request that changes
//! several namespaces saves (or creates) the session once.

use serde_json::json;
use time::Duration;
use tower_sessions_controller::{Namespace, DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    app, insert_value,
    support::{seconds, Calls, START},
    Cart,
};

#[tokio::test]
async fn visitor_without_a_cookie_reading_costs_no_store_call_and_gets_no_cookie() {
    let mut app = app();

    let reply = app.get("/read/ns").await;
    reply.assert_ok();

    reply.assert_no_cookie();
    app.assert_calls(Calls::NONE);
}

#[tokio::test]
async fn visitor_without_a_cookie_extracting_keyed_costs_no_store_call_and_gets_no_cookie() {
    let mut app = app();

    let reply = app.get("/cart").await;
    reply.assert_ok();

    reply.assert_no_cookie();
    app.assert_calls(Calls::NONE);
}

#[tokio::test]
async fn read_only_request_on_a_stored_session_loads_once_and_saves_nothing() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    app.store.take_calls();

    let reply = app.get("/read/ns").await;
    reply.assert_ok();

    reply.assert_no_cookie();
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn extracting_keyed_without_mutating_it_saves_nothing() {
    let mut app = app();
    app.post("/cart/apple").await.assert_ok();
    app.store.take_calls();

    let reply = app.get("/cart").await;
    reply.assert_ok();

    reply.assert_no_cookie();
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn first_write_of_a_new_visitor_creates_the_session_once() {
    let mut app = app();

    let reply = insert_value(&mut app, "ns", "a", "1").await;

    assert!(reply.set_cookie.is_some(), "a new session gets a cookie");
    app.assert_calls(Calls::CREATE);
    assert!(app.stored("ns").await.is_some());
}

#[tokio::test]
async fn writes_to_several_namespaces_in_one_request_save_once() {
    let mut app = app();
    insert_value(&mut app, "other", "keep", "1").await;
    app.store.take_calls();

    let reply = app.post("/write_many").await;
    reply.assert_ok();

    app.assert_calls(Calls::LOAD_SAVE);
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
    reply.assert_ok();

    assert!(reply.set_cookie.is_some());
    app.assert_calls(Calls::CREATE);
}
