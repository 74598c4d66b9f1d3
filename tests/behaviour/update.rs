//! `SessionController::update`: a value changed in place, stored as `insert` stores it (the
//! stamp slides, the budget and the key's lifetime hold), or nothing written when it fails.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use axum::{
    extract::{Extension, Path},
    routing::post,
    Router,
};
use serde_json::json;
use time::Duration;
use tower_sessions_controller::{
    Error, Lifetime, SessionControllers, DEFAULT_EXPIRY, LIFETIMES_KEY, STAMP_KEY,
};

use crate::support::{seconds, TestApp, START};

/// Adds one `item` to the `items` map of namespace `cart`, with a budget of `budget` bytes;
/// answers the new count. Counts the calls of the change in `Calls`.
async fn add(
    controllers: SessionControllers,
    Extension(calls): Extension<Arc<AtomicUsize>>,
    Path((item, budget)): Path<(String, usize)>,
) -> Result<String, Error> {
    let mut cart = controllers.open("cart").await?.with_budget(budget);
    let count = cart.update("items", |items: &mut BTreeMap<String, u64>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let count = items.entry(item).or_default();
        *count += 1;
        *count
    })?;
    Ok(count.to_string())
}

/// Gives `items` a lifetime of two minutes (the namespace's expiry is five).
async fn expire_items(controllers: SessionControllers) -> Result<(), Error> {
    let mut cart = controllers.open("cart").await?;
    cart.set_lifetime("items", Lifetime::For(Duration::minutes(2)))
}

/// Stores a string under `items`, which `add` cannot read as a map.
async fn corrupt(controllers: SessionControllers) -> Result<(), Error> {
    controllers.open("cart").await?.insert("items", "a string")
}

/// Tries to update a reserved key.
async fn reserved(controllers: SessionControllers) -> Result<(), Error> {
    let mut cart = controllers.open("cart").await?;
    cart.update(STAMP_KEY, |stamp: &mut f64| *stamp += 1.0)
}

fn app() -> (TestApp, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let routes = Router::new()
        .route("/add/{item}/{budget}", post(add))
        .route("/expire-items", post(expire_items))
        .route("/corrupt", post(corrupt))
        .route("/reserved", post(reserved))
        .layer(Extension(Arc::clone(&calls)));
    (TestApp::new(routes), calls)
}

#[tokio::test]
async fn update_starts_from_the_default_and_changes_what_is_stored() {
    let (mut app, calls) = app();
    let first = app.post("/add/apple/1000").await;
    first.assert_ok();
    assert_eq!(first.body, "1");
    app.clock.advance(Duration::seconds(30));
    let second = app.post("/add/apple/1000").await;
    assert_eq!(second.body, "2");
    app.post("/add/pear/1000").await.assert_ok();

    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        app.stored("cart").await,
        Some(json!({
            "items": { "apple": 2, "pear": 1 },
            STAMP_KEY: seconds(START + Duration::seconds(30) + DEFAULT_EXPIRY),
        })),
        "the stamp slides with every update, as with insert"
    );
}

#[tokio::test]
async fn update_of_a_value_of_another_type_does_not_call_the_change_and_writes_nothing() {
    let (mut app, calls) = app();
    app.post("/corrupt").await.assert_ok();
    let before = app.stored("cart").await;

    app.post("/add/apple/1000")
        .await
        .assert_error("does not deserialize");

    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(app.stored("cart").await, before);
}

#[tokio::test]
async fn update_past_the_budget_writes_nothing() {
    let (mut app, _) = app();
    // `{"items":{"apple":1},"_timeout_datestamp":…}` fits in 60 bytes; a second item does not.
    app.post("/add/apple/60").await.assert_ok();
    let before = app.stored("cart").await;

    app.post("/add/a-pear-with-a-long-name/60")
        .await
        .assert_error("over its budget");

    assert_eq!(app.stored("cart").await, before);
}

#[tokio::test]
async fn update_keeps_the_keys_lifetime_and_refuses_reserved_keys() {
    let (mut app, _) = app();
    app.post("/add/apple/1000").await.assert_ok();
    app.post("/expire-items").await.assert_ok();
    app.post("/add/apple/1000").await.assert_ok();
    let cart = app.stored("cart").await.expect("stored");
    assert!(
        cart.get(LIFETIMES_KEY)
            .is_some_and(|lifetimes| lifetimes.get("items").is_some()),
        "{cart}"
    );

    app.post("/reserved").await.assert_error("reserved");
    // Past the key's lifetime, not the namespace's expiry.
    app.clock.advance(Duration::minutes(3));
    app.post("/add/pear/1000").await.assert_ok();
    assert_eq!(
        app.stored("cart").await.expect("stored")["items"],
        json!({ "pear": 1 }),
        "the apples went with the key's lifetime"
    );
}
