//! Dropping on open: a namespace whose stamp has passed is dropped when it is opened (the drop is
//! saved even by a read), reads as empty and takes a fresh write; the edges of expiry to the
//! nanosecond; what `is_expired` and `has_data` report, a namespace without a stamp included.

use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower_sessions_controller::{Namespace, DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    app, insert_value, insert_value_for, read_ns,
    support::{instant, seconds, stored_stamp, Calls, TestApp, START},
    Cart,
};

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
    app.assert_calls(Calls::LOAD_SAVE);
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
    app.assert_calls(Calls::LOAD_SAVE);
}

#[tokio::test]
async fn expired_keyed_namespace_reads_as_default_and_a_write_starts_afresh() {
    let mut app = app();
    app.post("/cart/apple").await.assert_ok();
    app.clock.advance(DEFAULT_EXPIRY + Duration::seconds(1));

    let reply = app.post("/cart/fig").await;
    reply.assert_ok();

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
    app.assert_calls(Calls::LOAD);
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
    reply.assert_ok();
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
    app.assert_calls(Calls::LOAD);
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
