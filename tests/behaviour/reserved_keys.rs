//! The reserved stamp key: inserting it is `Error::ReservedKey` and writes nothing, also when the
//! handler goes on and the request succeeds, and a typed namespace with a field of that name
//! fails the request instead of losing the value to the stamp.

use serde_json::json;
use time::Duration;
use tower_sessions_controller::{DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    app, app_with_another_namespace, insert_value,
    support::{enc, instant, Calls, START},
};

#[tokio::test]
async fn inserting_the_stamp_key_is_a_reserved_key_error_and_a_500() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let before = app.stored("ns").await;
    app.store.take_calls();

    let reply = app
        .post(&format!("/insert/ns/{STAMP_KEY}/{}", enc("99")))
        .await;

    reply.assert_error("reserved");
    assert_eq!(app.stored("ns").await, before);
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn refused_stamp_key_insert_writes_nothing_even_when_the_request_succeeds() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let before = app.stored("ns").await;
    app.clock.advance(Duration::seconds(10));
    app.store.take_calls();

    let reply = app.post("/reserved/ns").await;

    reply.assert_ok();
    let reply = reply.json();
    assert_eq!(reply["refused"], true);
    assert_eq!(reply["after"]["data"], json!({ "a": 1 }));
    assert_eq!(
        instant(&reply["after"]["expires_at"]),
        START + DEFAULT_EXPIRY,
        "a refused insert does not slide the stamp"
    );
    assert_eq!(app.stored("ns").await, before);
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn typed_namespace_with_a_stamp_field_is_a_reserved_key_error_and_writes_nothing() {
    let (mut app, before) = app_with_another_namespace().await;

    let reply = app.post("/sneaky").await;

    reply.assert_error("reserved");
    assert_eq!(app.record().await.expect("session kept").data, before);
    app.assert_calls(Calls::LOAD);
}
