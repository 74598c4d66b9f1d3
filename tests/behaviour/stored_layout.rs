//! The stored layout: a namespace is stored as an object of the user's keys plus a float stamp,
//! the same for a runtime controller and a `Keyed<T>`, and each reads what the other wrote.

use serde_json::json;
use tower_sessions_controller::{Namespace, DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    app, insert_value, read_ns,
    support::{instant, seconds, stored_stamp, START},
    Cart,
};

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
    app.post("/cart/apple").await.assert_ok();

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
    reply.assert_ok();
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
    app.post("/cart/apple").await.assert_ok();
    app.post("/cart/fig").await.assert_ok();

    let cart = read_ns(&mut app, Cart::KEY).await;
    assert_eq!(cart["data"], json!({ "items": ["apple", "fig"] }));
    assert_eq!(cart["keys"], json!(["items"]));
    assert_eq!(
        instant(&cart["expires_at"]),
        START + DEFAULT_EXPIRY,
        "the stamp the Keyed wrote"
    );
}
