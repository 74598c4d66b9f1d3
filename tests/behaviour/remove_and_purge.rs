//! Removal and purge: removing the last key removes the namespace and its stamp, removing one of
//! several leaves the stamp where it was, a purge removes the namespace from the stored record,
//! and removing or purging what is not there is a no-op that saves nothing.

use serde_json::{json, Value};
use time::Duration;
use tower_sessions_controller::{DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    app, app_with_another_namespace, insert_value,
    support::{instant, seconds, Calls, START},
};

#[tokio::test]
async fn removing_the_last_key_removes_the_stamp_and_the_namespace() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value(&mut app, "other", "b", "2").await;
    app.store.take_calls();

    let reply = app.post("/remove/ns/a").await;
    reply.assert_ok();
    let reply = reply.json();

    assert_eq!(reply["removed"], json!(1));
    assert_eq!(reply["after"]["expires_at"], Value::Null);
    assert_eq!(reply["after"]["is_expired"], true);
    let record = app.record().await.expect("session kept");
    assert!(!record.data.contains_key("ns"), "{:?}", record.data);
    assert!(record.data.contains_key("other"));
    app.assert_calls(Calls::LOAD_SAVE);
}

#[tokio::test]
async fn removing_one_of_several_keys_keeps_the_stamp_where_it_was() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value(&mut app, "ns", "b", "2").await;
    app.clock.advance(Duration::seconds(30));

    let reply = app.post("/remove/ns/a").await;
    reply.assert_ok();

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
    reply.assert_ok();

    assert_eq!(reply.json()["removed"], Value::Null);
    assert_eq!(app.stored("ns").await, before);
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn removing_from_an_absent_namespace_is_a_no_op_without_a_save() {
    let (mut app, before) = app_with_another_namespace().await;

    let reply = app.post("/remove/ghost/a").await;
    reply.assert_ok();

    assert_eq!(reply.json()["removed"], Value::Null);
    assert_eq!(app.record().await.expect("session kept").data, before);
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn purging_an_absent_namespace_is_a_no_op_without_a_save() {
    let (mut app, before) = app_with_another_namespace().await;

    let reply = app.post("/purge/ghost").await;
    reply.assert_ok();

    reply.assert_no_cookie();
    assert_eq!(app.record().await.expect("session kept").data, before);
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn purging_an_absent_namespace_for_a_new_visitor_costs_no_store_call() {
    let mut app = app();

    let reply = app.post("/purge/ghost").await;

    reply.assert_ok();
    reply.assert_no_cookie();
    app.assert_calls(Calls::NONE);
}

#[tokio::test]
async fn purging_a_namespace_removes_it_from_the_stored_record() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    insert_value(&mut app, "other", "b", "2").await;
    app.store.take_calls();

    let reply = app.post("/purge/ns").await;
    reply.assert_ok();

    let reply = reply.json();
    assert_eq!(reply["has_data"], false);
    assert_eq!(reply["is_expired"], true);
    let record = app.record().await.expect("session kept");
    assert!(!record.data.contains_key("ns"), "{:?}", record.data);
    assert!(record.data.contains_key("other"));
    app.assert_calls(Calls::LOAD_SAVE);
}
