//! Sliding expiry: every write (an insert, or any mutable access to a `Keyed<T>`) sets the stamp
//! to now plus the namespace's expiry; reads never move it. The expiry is chosen per open, or by
//! the `Namespace` type, and each namespace keeps its own.

use serde_json::json;
use time::Duration;
use tower_sessions_controller::{Namespace, DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    app, insert_value, insert_value_for, read_ns,
    support::{enc, instant, seconds, stored_stamp, user_keys, Calls, START},
    Cart, Wizard,
};

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
    app.post("/cart/apple").await.assert_ok();
    app.clock.advance(Duration::seconds(50));
    let reply = app.post("/cart/fig").await;
    reply.assert_ok();

    let expected = START + Duration::seconds(50) + DEFAULT_EXPIRY;
    assert_eq!(instant(&reply.json()["expires_at"]), expected);
    let stored = app.stored(Cart::KEY).await.expect("cart stored");
    assert_eq!(stored_stamp(&stored), seconds(expected));
}

#[tokio::test]
async fn any_mutable_access_to_keyed_counts_as_a_write_and_slides_the_stamp() {
    let mut app = app();
    app.post("/cart/apple").await.assert_ok();
    app.clock.advance(Duration::seconds(50));
    app.store.take_calls();

    let reply = app.post("/cart_touch").await;
    reply.assert_ok();

    let expected = START + Duration::seconds(50) + DEFAULT_EXPIRY;
    assert_eq!(instant(&reply.json()["expires_at"]), expected);
    app.assert_calls(Calls::LOAD_SAVE);
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
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn reading_through_keyed_never_moves_the_stamp() {
    let mut app = app();
    app.post("/cart/apple").await.assert_ok();
    let before = app.stored(Cart::KEY).await.expect("cart stored");
    app.clock.advance(Duration::seconds(100));
    app.store.take_calls();

    let reply = app.get("/cart").await;
    reply.assert_ok();

    assert_eq!(instant(&reply.json()["expires_at"]), START + DEFAULT_EXPIRY);
    assert_eq!(app.stored(Cart::KEY).await, Some(before));
    app.assert_calls(Calls::LOAD);
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

    reply.assert_error("expiry");
    app.assert_calls(Calls::NONE);
}

#[tokio::test]
async fn namespace_expiry_override_sets_the_keyed_stamp() {
    let mut app = app();

    let reply = app.post("/wizard/next").await;
    reply.assert_ok();

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
