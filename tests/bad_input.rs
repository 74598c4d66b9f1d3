//! Bad input and misconfiguration, over HTTP: corrupt stored data, values of the wrong type, a
//! router set up wrongly, a failing store, an invalid expiry, a namespace type that is not an
//! object, changes made after the response, forged session cookies and hostile keys.

mod support;

use std::sync::{Arc, Mutex};

use axum::{
    extract::{Path, State},
    http::{Method, StatusCode},
    routing::{get, post},
    Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::Duration;
use tokio::{sync::oneshot, task::JoinHandle};
use tower_sessions::{session::Id, MemoryStore, SessionManagerLayer};
use tower_sessions_controller::{
    Error, Keyed, Namespace, SessionControllerLayer, SessionControllers, STAMP_KEY,
};

use support::{routes, CountingStore, Logs, Reply, TestApp, START};

// ---------------------------------------------------------------------------------------------
// Namespaces and handlers
// ---------------------------------------------------------------------------------------------

/// The namespace the runtime-keyed handlers below work on.
const NS: &str = "cart";

/// A typed namespace.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Cart {
    items: Vec<String>,
}

impl Namespace for Cart {
    const KEY: &'static str = "shopping_cart";
}

/// A typed namespace that serializes to a number, not an object.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter(u32);

impl Namespace for Counter {
    const KEY: &'static str = "counter";
}

/// A typed namespace that serializes to a string, not an object.
#[derive(Debug, Default, Serialize, Deserialize)]
enum Theme {
    #[default]
    Light,
    Dark,
}

impl Namespace for Theme {
    const KEY: &'static str = "theme";
}

/// A typed namespace declared with an expiry that cannot be used.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Instant {
    seen: bool,
}

impl Namespace for Instant {
    const KEY: &'static str = "instant";
    const EXPIRY: Duration = Duration::ZERO;
}

/// Keys no one would choose, and that must still come back exactly as written.
fn hostile_keys() -> Vec<String> {
    let mut keys = hostile_namespace_keys();
    keys.push("k".repeat(10 * 1024));
    keys
}

/// The hostile keys a namespace may have: a namespace key is at most 128 bytes long.
fn hostile_namespace_keys() -> Vec<String> {
    vec![
        String::new(),
        "k".repeat(128),
        "\u{0}\u{1}\u{7}\u{8}\t\n\r\u{b}\u{c}\u{1b}\u{7f}".to_owned(),
        r#""'`\"\\'"#.to_owned(),
        "</script><script>alert(1)</script>".to_owned(),
        "ключ 🔑 é e\u{301} \u{200b}\u{2028}\u{2029}\u{feff}\u{fffd} مرحبا".to_owned(),
    ]
}

/// What a late handler left for the test: the signal that lets its spawned task go on, and the
/// task.
#[derive(Clone, Default)]
struct Late(Arc<Mutex<Option<LateTask>>>);

/// The signal a late task waits for, and the task.
type LateTask = (oneshot::Sender<()>, JoinHandle<()>);

impl Late {
    fn take(&self) -> LateTask {
        self.0
            .lock()
            .expect("late slot")
            .take()
            .expect("the handler left a task")
    }
}

async fn seed(controllers: SessionControllers) -> Result<String, Error> {
    let mut other = controllers.open("other").await?;
    other.insert("keep", true)?;
    Ok(other.to_json())
}

async fn write(controllers: SessionControllers, Path(ns): Path<String>) -> Result<String, Error> {
    let mut controller = controllers.open(&ns).await?;
    controller.insert("fresh", 1)?;
    Ok(controller.to_json())
}

async fn read_cart(cart: Keyed<Cart>) -> String {
    serde_json::to_string(&*cart).expect("a cart serializes")
}

/// Opens the cart as `Keyed<Cart>`, then through a runtime controller in the same request.
async fn read_cart_then_map(controllers: SessionControllers) -> Result<String, Error> {
    drop(controllers.keyed::<Cart>().await?);
    Ok(controllers.open(Cart::KEY).await?.to_json())
}

async fn add_to_cart(mut cart: Keyed<Cart>) -> String {
    cart.items.push("apple".into());
    serde_json::to_string(&*cart).expect("a cart serializes")
}

async fn put_apples(controllers: SessionControllers) -> Result<String, Error> {
    let mut cart = controllers.open(NS).await?;
    cart.insert("apples", 3)?;
    Ok(cart.to_json())
}

async fn apples_as_text(controllers: SessionControllers) -> Result<String, Error> {
    let cart = controllers.open(NS).await?;
    Ok(cart.get::<String>("apples")?.unwrap_or_default())
}

async fn write_with_expiry(
    controllers: SessionControllers,
    Path(seconds): Path<i64>,
) -> Result<String, Error> {
    let mut cart = controllers
        .open_with_expiry(NS, Duration::seconds(seconds))
        .await?;
    cart.insert("apples", 1)?;
    Ok(cart.to_json())
}

async fn touch_instant(mut instant: Keyed<Instant>) -> String {
    instant.seen = true;
    "seen".into()
}

async fn bump_counter(mut counter: Keyed<Counter>) -> String {
    counter.0 += 1;
    counter.0.to_string()
}

async fn go_dark(mut theme: Keyed<Theme>) -> String {
    *theme = Theme::Dark;
    "dark".into()
}

async fn insert_after_response(
    State(late): State<Late>,
    controllers: SessionControllers,
) -> Result<String, Error> {
    let mut cart = controllers.open(NS).await?;
    cart.insert("early", 1)?;
    let (go, wait) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        wait.await.expect("the test signals");
        cart.insert("late", 2)
            .expect("an insert after the response");
    });
    *late.0.lock().expect("late slot") = Some((go, task));
    Ok("spawned".into())
}

async fn push_after_response(State(late): State<Late>, mut cart: Keyed<Cart>) -> String {
    let (go, wait) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        wait.await.expect("the test signals");
        cart.items.push("late".into());
    });
    *late.0.lock().expect("late slot") = Some((go, task));
    "spawned".into()
}

async fn write_hostile_namespaces(controllers: SessionControllers) -> Result<String, Error> {
    for (i, key) in hostile_namespace_keys().iter().enumerate() {
        controllers.open(key).await?.insert("i", i)?;
    }
    Ok("written".into())
}

async fn read_hostile_namespaces(controllers: SessionControllers) -> Result<String, Error> {
    let mut found = Vec::new();
    for key in hostile_namespace_keys() {
        found.push(controllers.open(&key).await?.get::<usize>("i")?);
    }
    Ok(serde_json::to_string(&found).expect("numbers serialize"))
}

async fn write_hostile_user_keys(controllers: SessionControllers) -> Result<String, Error> {
    let mut cart = controllers.open(NS).await?;
    for key in hostile_keys() {
        cart.insert(&key, &key)?;
    }
    Ok("written".into())
}

async fn read_hostile_user_keys(controllers: SessionControllers) -> Result<String, Error> {
    Ok(controllers.open(NS).await?.to_json())
}

fn routes() -> Router {
    Router::new()
        .route("/seed", post(seed))
        .route("/read/{ns}", get(routes::namespace_json))
        .route("/write/{ns}", post(write))
        .route("/cart", get(read_cart).post(add_to_cart))
        .route("/cart/then-map", get(read_cart_then_map))
        .route("/apples", post(put_apples))
        .route("/apples-as-text", get(apples_as_text))
        .route("/expiry/{seconds}", post(write_with_expiry))
        .route("/instant", post(touch_instant))
        .route("/counter", post(bump_counter))
        .route("/theme", post(go_dark))
        .route("/hostile/namespaces", get(read_hostile_namespaces))
        .route("/hostile/namespaces", post(write_hostile_namespaces))
        .route("/hostile/keys", get(read_hostile_user_keys))
        .route("/hostile/keys", post(write_hostile_user_keys))
}

/// Routes whose handlers move a controller into a spawned task.
fn late_routes(late: Late) -> Router {
    Router::new()
        .route("/late/controller", post(insert_after_response))
        .route("/late/keyed", post(push_after_response))
        .with_state(late)
}

/// The routes a misconfigured router is built from: one per extractor.
fn extractor_routes() -> Router {
    Router::new()
        .route("/controllers", get(routes::namespace_json).post(write))
        .route("/keyed", get(read_cart).post(add_to_cart))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The stamp a write at `START` sets with the default expiry, as stored.
fn stamp_of_a_write_at_start() -> Value {
    json!((START + Duration::minutes(5)).unix_timestamp() as f64)
}

/// An app with a session already stored (namespace `other`), so there is a record to corrupt.
async fn seeded_app() -> TestApp {
    let mut app = TestApp::new(routes());
    let reply = app.post("/seed").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(app.session_id().is_some(), "seeding stored no session");
    app
}

/// A seeded app in which another writer left `value` under `key`.
async fn app_with_stored(key: &str, value: Value) -> TestApp {
    let app = seeded_app().await;
    app.store_raw(key, value).await;
    app
}

/// Whether a WARN line of this crate names the namespace `key`.
fn warned_about(logs: &Logs, key: &str) -> bool {
    let field = format!("namespace={key:?}");
    logs.lines_at("WARN")
        .iter()
        .any(|line| line.contains("tower_sessions_controller") && line.contains(&field))
}

/// Sends one request to a router built by hand.
async fn call(router: &Router, method: &str, uri: &str, cookie: Option<&str>) -> Reply {
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    support::send(router, cookie, method, uri).await
}

/// Namespaces that are not JSON objects.
fn non_object_namespaces() -> Vec<Value> {
    vec![
        json!("apples=3"),
        json!([{"apples": 3}]),
        json!(42),
        Value::Null,
    ]
}

/// Namespaces whose stamp is not a finite number in range.
fn namespaces_with_bad_stamps() -> Vec<Value> {
    [
        json!("1700000000"),
        Value::Null,
        json!(1e300),
        json!(-1e300),
        json!([1_700_000_000]),
    ]
    .into_iter()
    .map(|stamp| json!({"apples": 3, STAMP_KEY: stamp}))
    .collect()
}

/// A `Cart` stored under an older schema: the field was called `products`.
fn cart_of_an_old_schema() -> Value {
    json!({"products": ["pear"], STAMP_KEY: stamp_of_a_write_at_start()})
}

// ---------------------------------------------------------------------------------------------
// A namespace that is not an object
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_namespace_that_is_not_an_object_reads_as_empty_with_a_warning_naming_its_key() {
    for bad in non_object_namespaces() {
        let (logs, _guard) = Logs::capture();
        let mut app = app_with_stored(NS, bad.clone()).await;

        let reply = app.get("/read/cart").await;

        assert_eq!(reply.status, StatusCode::OK, "stored {bad}: {reply:?}");
        assert_eq!(reply.body, "{}", "stored {bad}");
        assert!(
            warned_about(&logs, NS),
            "stored {bad}: no WARN line names {NS:?}:\n{}",
            logs.text()
        );
    }
}

#[tokio::test]
async fn a_typed_namespace_stored_as_a_non_object_reads_as_its_default_with_a_warning() {
    for bad in non_object_namespaces() {
        let (logs, _guard) = Logs::capture();
        let mut app = app_with_stored(Cart::KEY, bad.clone()).await;

        let reply = app.get("/cart").await;

        assert_eq!(reply.status, StatusCode::OK, "stored {bad}: {reply:?}");
        assert_eq!(reply.json(), json!({"items": []}), "stored {bad}");
        assert!(
            warned_about(&logs, Cart::KEY),
            "stored {bad}: no WARN line names {:?}:\n{}",
            Cart::KEY,
            logs.text()
        );
    }
}

#[tokio::test]
async fn a_read_only_request_leaves_a_non_object_namespace_stored_as_it_was() {
    for bad in non_object_namespaces() {
        let mut app = app_with_stored(NS, bad.clone()).await;
        let before = app.record().await.expect("a record").data;

        let reply = app.get("/read/cart").await;

        assert_eq!(reply.status, StatusCode::OK, "stored {bad}: {reply:?}");
        assert_eq!(app.stored(NS).await, Some(bad.clone()));
        assert_eq!(app.record().await.expect("a record").data, before);
    }
}

#[tokio::test]
async fn the_next_write_replaces_a_non_object_namespace_with_a_valid_one() {
    for bad in non_object_namespaces() {
        let mut app = app_with_stored(NS, bad.clone()).await;

        let reply = app.post("/write/cart").await;

        assert_eq!(reply.status, StatusCode::OK, "stored {bad}: {reply:?}");
        assert_eq!(reply.body, r#"{"fresh":1}"#, "stored {bad}");
        assert_eq!(
            app.stored(NS).await,
            Some(json!({"fresh": 1, STAMP_KEY: stamp_of_a_write_at_start()})),
            "stored {bad}"
        );
        assert_eq!(
            app.stored("other").await,
            Some(json!({"keep": true, STAMP_KEY: stamp_of_a_write_at_start()})),
            "stored {bad}: another namespace was lost"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A stamp that is not a finite number
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_namespace_with_a_stamp_that_is_not_a_finite_number_reads_as_empty_with_a_warning() {
    for bad in namespaces_with_bad_stamps() {
        let (logs, _guard) = Logs::capture();
        let mut app = app_with_stored(NS, bad.clone()).await;

        let reply = app.get("/read/cart").await;

        assert_eq!(reply.status, StatusCode::OK, "stored {bad}: {reply:?}");
        assert_eq!(reply.body, "{}", "stored {bad}");
        assert!(
            warned_about(&logs, NS),
            "stored {bad}: no WARN line names {NS:?}:\n{}",
            logs.text()
        );
    }
}

#[tokio::test]
async fn a_read_only_request_leaves_a_namespace_with_a_bad_stamp_stored_as_it_was() {
    for bad in namespaces_with_bad_stamps() {
        let mut app = app_with_stored(NS, bad.clone()).await;
        let before = app.record().await.expect("a record").data;

        let reply = app.get("/read/cart").await;

        assert_eq!(reply.status, StatusCode::OK, "stored {bad}: {reply:?}");
        assert_eq!(app.stored(NS).await, Some(bad.clone()));
        assert_eq!(app.record().await.expect("a record").data, before);
    }
}

#[tokio::test]
async fn the_next_write_replaces_a_namespace_with_a_bad_stamp_with_a_valid_one() {
    for bad in namespaces_with_bad_stamps() {
        let mut app = app_with_stored(NS, bad.clone()).await;

        let reply = app.post("/write/cart").await;

        assert_eq!(reply.status, StatusCode::OK, "stored {bad}: {reply:?}");
        assert_eq!(reply.body, r#"{"fresh":1}"#, "stored {bad}");
        assert_eq!(
            app.stored(NS).await,
            Some(json!({"fresh": 1, STAMP_KEY: stamp_of_a_write_at_start()})),
            "stored {bad}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A typed namespace whose fields no longer deserialize
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_typed_namespace_of_an_older_schema_reads_as_its_default_with_a_warning() {
    let (logs, _guard) = Logs::capture();
    let mut app = app_with_stored(Cart::KEY, cart_of_an_old_schema()).await;

    let reply = app.get("/cart").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json(), json!({"items": []}));
    assert!(
        warned_about(&logs, Cart::KEY),
        "no WARN line names {:?}:\n{}",
        Cart::KEY,
        logs.text()
    );
}

#[tokio::test]
async fn a_read_only_request_leaves_a_typed_namespace_of_an_older_schema_stored_as_it_was() {
    let mut app = app_with_stored(Cart::KEY, cart_of_an_old_schema()).await;
    let before = app.record().await.expect("a record").data;

    let reply = app.get("/cart").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(app.stored(Cart::KEY).await, Some(cart_of_an_old_schema()));
    assert_eq!(app.record().await.expect("a record").data, before);
}

#[tokio::test]
async fn a_runtime_controller_after_a_keyed_that_could_not_read_the_namespace_sees_what_is_stored()
{
    let mut app = app_with_stored(Cart::KEY, cart_of_an_old_schema()).await;

    let reply = app.get("/cart/then-map").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json(), json!({"products": ["pear"]}));
    assert_eq!(app.stored(Cart::KEY).await, Some(cart_of_an_old_schema()));
}

#[tokio::test]
async fn the_next_write_replaces_a_typed_namespace_of_an_older_schema() {
    let mut app = app_with_stored(Cart::KEY, cart_of_an_old_schema()).await;

    let reply = app.post("/cart").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json(), json!({"items": ["apple"]}));
    assert_eq!(
        app.stored(Cart::KEY).await,
        Some(json!({"items": ["apple"], STAMP_KEY: stamp_of_a_write_at_start()}))
    );
}

// ---------------------------------------------------------------------------------------------
// A value read as the wrong type
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_of_a_value_of_the_wrong_type_is_a_deserialize_error_naming_key_and_namespace() {
    let mut app = TestApp::new(routes());
    assert_eq!(app.post("/apples").await.status, StatusCode::OK);

    let reply = app.get("/apples-as-text").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert!(
        reply.body.contains(r#""apples""#) && reply.body.contains(r#""cart""#),
        "the message names neither key nor namespace: {:?}",
        reply.body
    );
    assert!(reply.body.contains("deserialize"), "{:?}", reply.body);
}

#[tokio::test]
async fn get_of_a_value_of_the_wrong_type_leaves_the_stored_namespace_unchanged() {
    let mut app = TestApp::new(routes());
    assert_eq!(app.post("/apples").await.status, StatusCode::OK);
    let before = app.record().await.expect("a record");

    let reply = app.get("/apples-as-text").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert_eq!(
        app.stored(NS).await,
        Some(json!({"apples": 3, STAMP_KEY: stamp_of_a_write_at_start()}))
    );
    assert_eq!(app.record().await.expect("a record"), before);
}

// ---------------------------------------------------------------------------------------------
// Misconfiguration
// ---------------------------------------------------------------------------------------------

/// A router with the session manager but without `SessionControllerLayer`.
fn router_without_controller_layer(store: CountingStore<MemoryStore>) -> Router {
    extractor_routes().layer(SessionManagerLayer::new(store).with_secure(false))
}

/// A router with `SessionControllerLayer` outside `SessionManagerLayer`.
fn router_with_layers_in_the_wrong_order(store: CountingStore<MemoryStore>) -> Router {
    extractor_routes()
        .layer(SessionManagerLayer::new(store).with_secure(false))
        .layer(SessionControllerLayer::new())
}

/// The same mistake in one `ServiceBuilder`: there the first layer added runs first, so the
/// controller layer comes before the session manager.
fn service_builder_in_the_wrong_order(store: CountingStore<MemoryStore>) -> Router {
    extractor_routes().layer(
        tower::ServiceBuilder::new()
            .layer(SessionControllerLayer::new())
            .layer(SessionManagerLayer::new(store).with_secure(false)),
    )
}

/// Asserts a misconfigured route answers 500 with a message naming `fix`, logged at ERROR, and
/// touches no store.
async fn assert_misconfigured(
    router: Router,
    store: &CountingStore<MemoryStore>,
    method: &str,
    uri: &str,
    fix: &str,
) {
    let (logs, _guard) = Logs::capture();

    let reply = call(&router, method, uri, None).await;

    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {uri}: {reply:?}"
    );
    assert!(
        reply.body.contains(fix),
        "{method} {uri}: the body does not name {fix}: {:?}",
        reply.body
    );
    assert!(
        logs.lines_at("ERROR")
            .iter()
            .any(|line| line.contains("tower_sessions_controller") && line.contains(fix)),
        "{method} {uri}: no ERROR line names {fix}:\n{}",
        logs.text()
    );
    assert_eq!(reply.set_cookie, None, "{method} {uri}");
    let calls = store.take_calls();
    assert_eq!(
        (calls.create, calls.save),
        (0, 0),
        "{method} {uri}: {calls:?}"
    );
}

#[tokio::test]
async fn session_controllers_without_the_controller_layer_answer_500_naming_the_layer() {
    let store = CountingStore::new(MemoryStore::default());
    let router = router_without_controller_layer(store.clone());
    for method in ["GET", "POST"] {
        assert_misconfigured(
            router.clone(),
            &store,
            method,
            "/controllers",
            "SessionControllerLayer",
        )
        .await;
    }
}

#[tokio::test]
async fn keyed_without_the_controller_layer_answers_500_naming_the_layer() {
    let store = CountingStore::new(MemoryStore::default());
    let router = router_without_controller_layer(store.clone());
    for method in ["GET", "POST"] {
        assert_misconfigured(
            router.clone(),
            &store,
            method,
            "/keyed",
            "SessionControllerLayer",
        )
        .await;
    }
}

#[tokio::test]
async fn extractors_on_a_router_without_any_session_layer_answer_500_naming_the_layer() {
    let store = CountingStore::new(MemoryStore::default());
    for uri in ["/controllers", "/keyed"] {
        assert_misconfigured(
            extractor_routes(),
            &store,
            "POST",
            uri,
            "SessionControllerLayer",
        )
        .await;
    }
}

#[tokio::test]
async fn session_controllers_with_the_layer_outside_the_session_manager_answer_500_naming_it() {
    let store = CountingStore::new(MemoryStore::default());
    let router = router_with_layers_in_the_wrong_order(store.clone());
    for method in ["GET", "POST"] {
        assert_misconfigured(
            router.clone(),
            &store,
            method,
            "/controllers",
            "SessionManagerLayer",
        )
        .await;
    }
}

#[tokio::test]
async fn extractors_under_the_controller_layer_without_a_session_manager_answer_500_naming_it() {
    let store = CountingStore::new(MemoryStore::default());
    let router = extractor_routes().layer(SessionControllerLayer::new());
    for uri in ["/controllers", "/keyed"] {
        assert_misconfigured(router.clone(), &store, "POST", uri, "SessionManagerLayer").await;
    }
}

/// The message gives the fix for both ways of adding layers, each in its own words: in a
/// `ServiceBuilder` the session manager is added first, with `Router::layer` last.
#[tokio::test]
async fn layers_in_the_wrong_order_answer_with_the_fix_for_service_builder_and_router_layer() {
    let store = CountingStore::new(MemoryStore::default());
    let service_builder = "In one `tower::ServiceBuilder`, add `SessionManagerLayer::new(store)` \
        first and `SessionControllerLayer::new()` after it";
    let router_layer = "with separate `Router::layer` calls, call \
        `.layer(SessionControllerLayer::new())` first and \
        `.layer(SessionManagerLayer::new(store))` after it";
    for router in [
        service_builder_in_the_wrong_order(store.clone()),
        router_with_layers_in_the_wrong_order(store.clone()),
    ] {
        for uri in ["/controllers", "/keyed"] {
            for fix in [service_builder, router_layer] {
                assert_misconfigured(router.clone(), &store, "POST", uri, fix).await;
            }
        }
    }
}

#[tokio::test]
async fn keyed_with_the_layer_outside_the_session_manager_answers_500_naming_it() {
    let store = CountingStore::new(MemoryStore::default());
    let router = router_with_layers_in_the_wrong_order(store.clone());
    for method in ["GET", "POST"] {
        assert_misconfigured(
            router.clone(),
            &store,
            method,
            "/keyed",
            "SessionManagerLayer",
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// A failing store
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_store_failure_while_loading_is_a_500_that_does_not_leak_the_store_message() {
    for uri in ["/read/cart", "/cart"] {
        let (logs, _guard) = Logs::capture();
        let mut app = TestApp::new(routes());
        assert_eq!(app.post("/apples").await.status, StatusCode::OK);
        assert_eq!(app.post("/cart").await.status, StatusCode::OK);
        app.store.fail_loads(true);

        let reply = app.get(uri).await;

        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{uri}: {reply:?}"
        );
        assert!(
            reply.body.contains("session store"),
            "{uri}: a store failure should say so: {:?}",
            reply.body
        );
        assert!(
            !reply.body.contains("hunter2") && !reply.body.contains("secret"),
            "{uri}: the body leaks the store's message: {:?}",
            reply.body
        );
        assert!(
            logs.lines_at("ERROR").iter().any(|line| {
                line.contains("tower_sessions_controller") && line.contains("store")
            }),
            "{uri}: the store failure is not logged at ERROR:\n{}",
            logs.text()
        );
    }
}

#[tokio::test]
async fn after_a_store_failure_while_loading_the_data_is_still_there() {
    let mut app = TestApp::new(routes());
    assert_eq!(app.post("/apples").await.status, StatusCode::OK);
    let before = app.record().await.expect("a record");
    app.store.fail_loads(true);
    let failed = app.get("/read/cart").await;
    assert_eq!(
        failed.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{failed:?}"
    );
    assert_eq!(failed.set_cookie, None, "the cookie was touched");

    app.store.fail_loads(false);
    let reply = app.get("/read/cart").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, r#"{"apples":3}"#);
    assert_eq!(app.record().await.expect("a record"), before);
}

#[tokio::test]
async fn a_store_failure_on_save_is_a_500_and_the_stored_namespace_is_unchanged() {
    let mut app = TestApp::new(routes());
    assert_eq!(app.post("/apples").await.status, StatusCode::OK);
    let before = app.stored(NS).await;
    app.store.fail_saves(true);

    let reply = app.post("/write/cart").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert!(app.store.take_calls().save >= 1, "no save was attempted");
    assert_eq!(app.stored(NS).await, before);
    assert_eq!(
        before,
        Some(json!({"apples": 3, STAMP_KEY: stamp_of_a_write_at_start()}))
    );
}

// ---------------------------------------------------------------------------------------------
// An invalid expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn open_with_a_zero_or_negative_expiry_is_an_invalid_expiry_error() {
    for seconds in [0, -1, -300] {
        let mut app = TestApp::new(routes());

        let reply = app.post(&format!("/expiry/{seconds}")).await;

        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "expiry {seconds}s: {reply:?}"
        );
        assert!(
            reply.body.contains(r#""cart""#) && reply.body.contains("positive"),
            "expiry {seconds}s: {:?}",
            reply.body
        );
    }
}

#[tokio::test]
async fn open_with_a_zero_or_negative_expiry_writes_nothing() {
    for seconds in [0, -1, -300] {
        let mut app = seeded_app().await;
        let before = app.record().await.expect("a record");
        app.store.take_calls();

        let reply = app.post(&format!("/expiry/{seconds}")).await;

        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "expiry {seconds}s: {reply:?}"
        );
        let calls = app.store.take_calls();
        assert_eq!((calls.create, calls.save), (0, 0), "expiry {seconds}s");
        assert_eq!(app.stored(NS).await, None, "expiry {seconds}s");
        assert_eq!(app.record().await.expect("a record"), before);
    }
}

#[tokio::test]
async fn a_typed_namespace_declared_with_a_zero_expiry_is_an_invalid_expiry_error() {
    let mut app = seeded_app().await;
    let before = app.record().await.expect("a record");

    let reply = app.post("/instant").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert!(
        reply.body.contains(r#""instant""#) && reply.body.contains("positive"),
        "{:?}",
        reply.body
    );
    assert_eq!(app.record().await.expect("a record"), before);
}

// ---------------------------------------------------------------------------------------------
// A namespace type that is not an object
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn writing_a_newtype_namespace_is_a_500_and_the_stored_session_is_unchanged() {
    let (logs, _guard) = Logs::capture();
    let mut app = seeded_app().await;
    let before = app.record().await.expect("a record");
    app.store.take_calls();

    let reply = app.post("/counter").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert!(
        reply.body.contains(r#""counter""#) && reply.body.contains("JSON object"),
        "the 500 does not say what to fix: {reply:?}"
    );
    let calls = app.store.take_calls();
    assert_eq!((calls.create, calls.save), (0, 0), "{calls:?}");
    assert_eq!(app.stored(Counter::KEY).await, None);
    assert_eq!(app.record().await.expect("a record"), before);
    assert!(
        logs.lines_at("ERROR")
            .iter()
            .any(|line| line.contains(r#""counter""#) && line.contains("object")),
        "the flush failure is not logged naming the namespace:\n{}",
        logs.text()
    );
}

#[tokio::test]
async fn writing_a_unit_variant_enum_namespace_is_a_500_and_the_stored_session_is_unchanged() {
    let (logs, _guard) = Logs::capture();
    let mut app = seeded_app().await;
    let before = app.record().await.expect("a record");
    app.store.take_calls();

    let reply = app.post("/theme").await;

    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert!(
        reply.body.contains(r#""theme""#) && reply.body.contains("JSON object"),
        "the 500 does not say what to fix: {reply:?}"
    );
    let calls = app.store.take_calls();
    assert_eq!((calls.create, calls.save), (0, 0), "{calls:?}");
    assert_eq!(app.stored(Theme::KEY).await, None);
    assert_eq!(app.record().await.expect("a record"), before);
    assert!(
        logs.lines_at("ERROR")
            .iter()
            .any(|line| line.contains(r#""theme""#) && line.contains("object")),
        "the flush failure is not logged naming the namespace:\n{}",
        logs.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Changes after the response
// ---------------------------------------------------------------------------------------------

/// Lines warning that `namespace` was changed after the response was produced.
fn late_change_warnings(logs: &Logs, namespace: &str) -> usize {
    let quoted = format!("{namespace:?}");
    logs.lines_at("WARN")
        .iter()
        .filter(|line| line.contains("changed after the response") && line.contains(&quoted))
        .count()
}

#[tokio::test]
async fn a_controller_changed_in_a_spawned_task_after_the_response_is_not_stored_and_warns() {
    let (logs, _guard) = Logs::capture();
    let late = Late::default();
    let mut app = TestApp::new(late_routes(late.clone()));

    let reply = app.post("/late/controller").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(late_change_warnings(&logs, NS), 0, "{}", logs.text());
    let (go, task) = late.take();
    go.send(()).expect("the task waits");
    task.await
        .expect("the late task completes without panicking");

    assert_eq!(
        late_change_warnings(&logs, NS),
        1,
        "the late change is not warned about:\n{}",
        logs.text()
    );
    assert_eq!(
        app.stored(NS).await,
        Some(json!({"early": 1, STAMP_KEY: stamp_of_a_write_at_start()}))
    );
}

#[tokio::test]
async fn a_keyed_changed_in_a_spawned_task_after_the_response_is_not_stored_and_warns() {
    let (logs, _guard) = Logs::capture();
    let late = Late::default();
    let mut app = TestApp::new(late_routes(late.clone()).merge(routes()));
    assert_eq!(app.post("/cart").await.status, StatusCode::OK);
    let before = app.record().await.expect("a record");

    let reply = app.post("/late/keyed").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(late_change_warnings(&logs, Cart::KEY), 0, "{}", logs.text());
    let (go, task) = late.take();
    go.send(()).expect("the task waits");
    task.await
        .expect("the late task completes without panicking");

    assert_eq!(
        late_change_warnings(&logs, Cart::KEY),
        1,
        "the late change is not warned about:\n{}",
        logs.text()
    );
    assert_eq!(app.record().await.expect("a record"), before);
    assert_eq!(
        app.stored(Cart::KEY).await,
        Some(json!({"items": ["apple"], STAMP_KEY: stamp_of_a_write_at_start()}))
    );
}

// ---------------------------------------------------------------------------------------------
// Forged session cookies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_garbage_session_cookie_gives_a_fresh_empty_session() {
    let mut app = seeded_app().await;
    assert_eq!(app.post("/apples").await.status, StatusCode::OK);
    app.visitor.cookie = Some("id=not-a-session-id".to_owned());

    let runtime = app.get("/read/cart").await;
    app.visitor.cookie = Some("id=not-a-session-id".to_owned());
    let typed = app.get("/cart").await;
    app.visitor.cookie = Some("id=not-a-session-id".to_owned());
    let other = app.get("/read/other").await;

    assert_eq!(runtime.status, StatusCode::OK, "{runtime:?}");
    assert_eq!(runtime.body, "{}");
    assert_eq!(typed.status, StatusCode::OK, "{typed:?}");
    assert_eq!(typed.json(), json!({"items": []}));
    assert_eq!(other.status, StatusCode::OK, "{other:?}");
    assert_eq!(other.body, "{}");
}

#[tokio::test]
async fn a_well_formed_session_id_not_in_the_store_gives_a_fresh_empty_session() {
    let mut owner = seeded_app().await;
    assert_eq!(owner.post("/apples").await.status, StatusCode::OK);
    let forged = format!("id={}", Id::default());
    let mut app = owner.visitor();
    app.visitor.cookie = Some(forged.clone());

    let runtime = app.get("/read/cart").await;
    app.visitor.cookie = Some(forged.clone());
    let typed = app.get("/cart").await;
    app.visitor.cookie = Some(forged);
    let other = app.get("/read/other").await;

    assert_eq!(runtime.status, StatusCode::OK, "{runtime:?}");
    assert_eq!(runtime.body, "{}");
    assert_eq!(typed.status, StatusCode::OK, "{typed:?}");
    assert_eq!(typed.json(), json!({"items": []}));
    assert_eq!(other.status, StatusCode::OK, "{other:?}");
    assert_eq!(other.body, "{}");
    assert_eq!(owner.get("/read/cart").await.body, r#"{"apples":3}"#);
}

#[tokio::test]
async fn a_write_under_a_forged_session_id_is_stored_under_a_new_id() {
    let mut app = TestApp::new(routes());
    let forged = Id::default();
    app.visitor.cookie = Some(format!("id={forged}"));

    let reply = app.post("/write/cart").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, r#"{"fresh":1}"#);
    let id = app.session_id().expect("a new session cookie");
    assert_ne!(id, forged);
    assert_eq!(
        app.stored(NS).await,
        Some(json!({"fresh": 1, STAMP_KEY: stamp_of_a_write_at_start()}))
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn namespace_keys_too_long_or_reserved_are_refused_with_the_key_cut_short() {
    let mut app = TestApp::new(routes());
    for key in [
        "k".repeat(129),
        "k".repeat(10 * 1024),
        "tower_sessions_controller.versions".to_owned(),
        "tower_sessions_controller.ops".to_owned(),
    ] {
        let reply = app.post(&format!("/write/{key}")).await;

        reply.assert_error("a namespace cannot be opened under the key");
        assert!(
            reply.body.len() < 500,
            "the key is cut short: {}",
            reply.body
        );
        reply.assert_no_cookie();
    }
    assert!(app.record().await.is_none());
}

#[tokio::test]
async fn hostile_namespace_keys_round_trip_exactly_through_the_store() {
    let mut app = TestApp::new(routes());
    let keys = hostile_namespace_keys();

    let written = app.post("/hostile/namespaces").await;
    let read = app.get("/hostile/namespaces").await;

    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let indices: Vec<usize> = (0..keys.len()).collect();
    assert_eq!(read.json(), json!(indices));
    let record = app.record().await.expect("a record");
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            record.data.get(key),
            Some(&json!({"i": i, STAMP_KEY: stamp_of_a_write_at_start()})),
            "namespace {key:?}"
        );
    }
    assert_eq!(record.data.len(), keys.len());
}

#[tokio::test]
async fn hostile_user_keys_round_trip_exactly_through_the_store() {
    let mut app = TestApp::new(routes());
    let keys = hostile_keys();

    let written = app.post("/hostile/keys").await;
    let read = app.get("/hostile/keys").await;

    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let expected: serde_json::Map<String, Value> =
        keys.iter().map(|key| (key.clone(), json!(key))).collect();
    assert_eq!(read.json(), Value::Object(expected.clone()));
    let mut stored = expected;
    stored.insert(STAMP_KEY.to_owned(), stamp_of_a_write_at_start());
    assert_eq!(app.stored(NS).await, Some(Value::Object(stored)));
}
