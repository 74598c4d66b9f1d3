//! One state per namespace per request: controllers for one key share it, a middleware's changes
//! reach the handler, and a `Keyed<T>` alive beside another controller of its namespace is
//! `Error::NamespaceInUse` instead of a second copy that would diverge.

use axum::middleware;
use serde_json::json;
use tower_sessions_controller::{Namespace, DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    app, cart_in_middleware, read_ns, routes,
    support::{instant, seconds, Calls, TestApp, START},
    write_in_middleware, Cart,
};

#[tokio::test]
async fn two_controllers_for_one_key_in_a_handler_share_one_state() {
    let mut app = app();

    let reply = app.post("/twice").await;
    reply.assert_ok();

    let reply = reply.json();
    assert_eq!(reply["second_saw_a"], 1);
    assert_eq!(reply["first_saw_b"], 2);
    assert_eq!(reply["first"]["data"], json!({ "a": 1, "b": 2 }));
    assert_eq!(reply["first"], reply["second"]);
    assert_eq!(
        app.stored("shared").await,
        Some(json!({ "a": 1, "b": 2, STAMP_KEY: seconds(START + DEFAULT_EXPIRY) }))
    );
    app.assert_calls(Calls::CREATE);
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
    app.assert_calls(Calls::CREATE);
}

#[tokio::test]
async fn opening_a_key_while_its_keyed_is_alive_is_namespace_in_use() {
    let mut app = app();
    app.post("/cart/apple").await.assert_ok();
    let before = app.stored(Cart::KEY).await;

    let reply = app.post("/keyed_then_open").await;

    reply.assert_error("already open");
    assert_eq!(app.stored(Cart::KEY).await, before);
}

#[tokio::test]
async fn extracting_keyed_while_a_controller_for_its_key_is_alive_is_namespace_in_use() {
    let mut app = app();

    let reply = app.post("/open_then_keyed").await;

    reply.assert_error("already open");
    assert!(reply.set_cookie.is_none());
    app.assert_calls(Calls::NONE);
}

#[tokio::test]
async fn extracting_the_same_keyed_twice_is_namespace_in_use() {
    let mut app = app();

    let reply = app.get("/keyed_twice").await;

    reply.assert_error("already open");
}

#[tokio::test]
async fn keyed_dropped_in_a_middleware_hands_its_state_to_the_handler() {
    let routes = routes().layer(middleware::from_fn(cart_in_middleware));
    let mut app = TestApp::new(routes);

    let reply = app.post("/cart/handler").await;
    reply.assert_ok();

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
    app.assert_calls(Calls::CREATE);
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
