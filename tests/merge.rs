//! No lost updates: overlapping requests on one session, with and without `MergingStore`.
//!
//! Each pair of requests meets at a barrier after both have loaded the session and changed it,
//! so both save from the same stale record: the classic lost update, made deterministic.

mod support;

use std::sync::Arc;

use axum::{
    extract::{Extension, Path},
    routing::{get, post},
    Router,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{routes, Calls, CountingStore, TestApp};
use tokio::sync::Barrier;
use tower_sessions::{
    session::{Id, Record},
    session_store, MemoryStore, Session, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{
    Error, Keyed, MergingStore, Namespace, SessionControllerLayer, SessionControllers,
};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    city: Option<String>,
}

impl Namespace for Profile {
    const KEY: &'static str = "profile";
}

/// Inserts `key = true` into namespace `ns`, then waits for the other request.
async fn insert(
    Path((ns, key)): Path<(String, String)>,
    Extension(barrier): Extension<Arc<Barrier>>,
    controllers: SessionControllers,
) -> Result<(), Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.insert(&key, true)?;
    barrier.wait().await;
    Ok(())
}

/// Writes `key = true` straight into the session, then waits for the other request.
async fn insert_direct(
    Path(key): Path<String>,
    Extension(barrier): Extension<Arc<Barrier>>,
    session: Session,
) -> Result<(), String> {
    session
        .insert_value(&key, json!(true))
        .await
        .map_err(|e| e.to_string())?;
    barrier.wait().await;
    Ok(())
}

/// Both at once: a direct write and a namespace write in one request.
async fn insert_both(
    Path((ns, key)): Path<(String, String)>,
    Extension(barrier): Extension<Arc<Barrier>>,
    session: Session,
    controllers: SessionControllers,
) -> Result<(), Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.insert(&key, true)?;
    drop(namespace);
    session
        .insert_value(&format!("direct_{key}"), json!(true))
        .await
        .map_err(Error::Store)?;
    barrier.wait().await;
    Ok(())
}

/// Sets one field of the typed profile, then waits for the other request.
async fn set_field(
    Path((field, value)): Path<(String, String)>,
    Extension(barrier): Extension<Arc<Barrier>>,
    mut profile: Keyed<Profile>,
) {
    match field.as_str() {
        "name" => profile.name = Some(value),
        _ => profile.city = Some(value),
    }
    drop(profile);
    barrier.wait().await;
}

/// Sets the typed profile's name, reads the profile back through a runtime controller in the
/// same request, then waits for the other request.
async fn set_name_then_read(
    Path(value): Path<String>,
    Extension(barrier): Extension<Arc<Barrier>>,
    controllers: SessionControllers,
) -> Result<String, Error> {
    let mut profile = controllers.keyed::<Profile>().await?;
    profile.name = Some(value);
    drop(profile);
    let json = controllers.open(Profile::KEY).await?.to_json();
    barrier.wait().await;
    Ok(json)
}

/// Stores a profile with both fields set, without waiting.
async fn seed_profile(mut profile: Keyed<Profile>) {
    profile.name = Some("grace".into());
    profile.city = Some("london".into());
}

/// Purges namespace `ns`, then waits for the other request.
async fn purge(
    Path(ns): Path<String>,
    Extension(barrier): Extension<Arc<Barrier>>,
    controllers: SessionControllers,
) -> Result<(), Error> {
    controllers.open(&ns).await?.purge();
    barrier.wait().await;
    Ok(())
}

/// A write that does not wait: sets up the session before the overlapping pair.
async fn seed(Path(ns): Path<String>, controllers: SessionControllers) -> Result<(), Error> {
    controllers.open(&ns).await?.insert("seed", true)?;
    Ok(())
}

fn routes(parties: usize) -> Router {
    Router::new()
        .route("/insert/{ns}/{key}", post(insert))
        .route("/direct/{key}", post(insert_direct))
        .route("/both/{ns}/{key}", post(insert_both))
        .route("/profile/{field}/{value}", post(set_field))
        .route("/profile-then-read/{value}", post(set_name_then_read))
        .route("/seed-profile", post(seed_profile))
        .route("/purge/{ns}", post(purge))
        .route("/read/{ns}", get(routes::namespace_json))
        .route("/seed/{ns}", post(seed))
        .layer(Extension(Arc::new(Barrier::new(parties))))
}

/// A merging app with an established session.
async fn merging_app() -> TestApp {
    let mut app = TestApp::merging(routes(2));
    assert_eq!(app.post("/seed/cart").await.status, 200);
    app
}

async fn overlap(app: &TestApp, first: &str, second: &str) {
    let (mut a, mut b) = (app.tab(), app.tab());
    let (ra, rb) = tokio::join!(a.post(first), b.post(second));
    assert_eq!(ra.status, 200, "{ra:?}");
    assert_eq!(rb.status, 200, "{rb:?}");
}

#[tokio::test]
async fn without_merging_the_later_save_of_two_overlapping_requests_wins() {
    let mut app = TestApp::new(routes(2));
    assert_eq!(app.post("/seed/cart").await.status, 200);
    overlap(&app, "/insert/cart/a", "/insert/cart/b").await;
    let cart = app.stored("cart").await.expect("cart stored");
    let kept = ["a", "b"]
        .iter()
        .filter(|k| cart.get(**k).is_some())
        .count();
    assert_eq!(kept, 1, "tower-sessions alone keeps one of the two: {cart}");
}

#[tokio::test]
async fn overlapping_writes_to_one_namespace_both_survive() {
    let app = merging_app().await;
    overlap(&app, "/insert/cart/a", "/insert/cart/b").await;
    let cart = app.stored("cart").await.expect("cart stored");
    assert_eq!(cart["a"], true, "{cart}");
    assert_eq!(cart["b"], true, "{cart}");
    assert_eq!(cart["seed"], true, "{cart}");
}

#[tokio::test]
async fn overlapping_writes_to_two_namespaces_both_survive() {
    let app = merging_app().await;
    overlap(&app, "/insert/cart/a", "/insert/wizard/b").await;
    assert_eq!(app.stored("cart").await.expect("cart")["a"], true);
    assert_eq!(app.stored("wizard").await.expect("wizard")["b"], true);
}

#[tokio::test]
async fn a_direct_session_write_and_an_overlapping_namespace_write_both_survive() {
    let app = merging_app().await;
    overlap(&app, "/direct/user", "/insert/cart/b").await;
    let record = app.record().await.expect("record");
    assert_eq!(record.data["user"], true, "{:?}", record.data);
    assert_eq!(app.stored("cart").await.expect("cart")["b"], true);
}

#[tokio::test]
async fn a_direct_write_in_the_same_request_as_a_namespace_write_survives_the_merge() {
    let app = merging_app().await;
    overlap(&app, "/both/cart/a", "/insert/cart/b").await;
    let record = app.record().await.expect("record");
    assert_eq!(record.data["direct_a"], true, "{:?}", record.data);
    let cart = app.stored("cart").await.expect("cart");
    assert_eq!(
        (cart["a"].clone(), cart["b"].clone()),
        (json!(true), json!(true))
    );
}

#[tokio::test]
async fn overlapping_writes_to_different_fields_of_a_typed_namespace_both_survive() {
    let app = merging_app().await;
    overlap(&app, "/profile/name/ada", "/profile/city/paris").await;
    let profile = app.stored("profile").await.expect("profile");
    assert_eq!(profile["name"], "ada", "{profile}");
    assert_eq!(profile["city"], "paris", "{profile}");
}

/// A stored profile: each request's typed write is told apart from what it loaded, so the
/// other field's stale value is not written back over the other request's change.
#[tokio::test]
async fn overlapping_writes_to_different_fields_of_a_stored_typed_namespace_both_survive() {
    for (first, second) in [
        ("/profile/name/ada", "/profile/city/paris"),
        ("/profile/city/paris", "/profile/name/ada"),
        // The typed write then read through a runtime controller in the same request.
        ("/profile-then-read/ada", "/profile/city/paris"),
        ("/profile/city/paris", "/profile-then-read/ada"),
    ] {
        let mut app = merging_app().await;
        assert_eq!(app.post("/seed-profile").await.status, 200);
        overlap(&app, first, second).await;
        let profile = app.stored("profile").await.expect("profile");
        assert_eq!(profile["name"], "ada", "{first} with {second}: {profile}");
        assert_eq!(profile["city"], "paris", "{first} with {second}: {profile}");
    }
}

#[tokio::test]
async fn a_purge_overlapping_a_write_to_another_namespace_removes_only_its_own() {
    let app = merging_app().await;
    overlap(&app, "/purge/cart", "/insert/wizard/b").await;
    assert_eq!(app.stored("cart").await, None);
    assert_eq!(app.stored("wizard").await.expect("wizard")["b"], true);
}

#[tokio::test]
async fn the_merge_leaves_no_operations_in_the_store() {
    let app = merging_app().await;
    overlap(&app, "/insert/cart/a", "/insert/cart/b").await;
    let record = app.record().await.expect("record");
    assert!(
        !record.data.contains_key("tower_sessions_controller.ops"),
        "{:?}",
        record.data.keys()
    );
    assert!(record
        .data
        .contains_key("tower_sessions_controller.versions"));
}

#[tokio::test]
async fn under_merging_a_read_only_request_loads_once_and_saves_nothing() {
    let mut app = merging_app().await;
    app.store.take_calls();
    assert_eq!(app.get("/read/cart").await.body, r#"{"seed":true}"#);
    app.assert_calls(Calls::LOAD);
}

#[tokio::test]
async fn under_merging_a_write_costs_one_extra_load() {
    let mut app = TestApp::merging(routes(1));
    assert_eq!(app.post("/seed/cart").await.status, 200);
    app.store.take_calls();
    assert_eq!(app.post("/insert/cart/a").await.status, 200);
    app.assert_calls(Calls {
        load: 2,
        ..Calls::LOAD_SAVE
    });
}

#[tokio::test]
async fn under_merging_a_first_visit_that_only_reads_costs_no_store_call() {
    let mut app = TestApp::merging(routes(1));
    let reply = app.get("/read/cart").await;
    assert_eq!(reply.body, "{}");
    assert_eq!(reply.set_cookie, None);
    app.assert_calls(Calls::NONE);
}

/// A shared store that yields before every call, as a network store would: it opens the window
/// between a merge's load and its save to the other instance.
#[derive(Debug, Clone)]
struct Remote(MemoryStore);

#[async_trait::async_trait]
impl SessionStore for Remote {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        tokio::task::yield_now().await;
        self.0.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        tokio::task::yield_now().await;
        self.0.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        tokio::task::yield_now().await;
        self.0.load(id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        tokio::task::yield_now().await;
        self.0.delete(id).await
    }
}

/// Many overlapping requests from two app instances, each with its own `MergingStore` (so its
/// own in-process locks), sharing one store; returns the keys lost.
async fn lost_across_instances(store_lock: bool) -> Vec<usize> {
    const REQUESTS: usize = 96;
    let shared = MemoryStore::default();
    let instance = || {
        let store = MergingStore::new(Remote(shared.clone()));
        let store = if store_lock {
            store.with_store_lock()
        } else {
            store
        };
        routes(1)
            .layer(SessionControllerLayer::new())
            .layer(SessionManagerLayer::new(store).with_secure(false))
    };
    let (one, two) = (instance(), instance());
    let mut first = TestApp::with_store(Router::new(), CountingStore::new(shared.clone()));
    first.router = one.clone();
    assert_eq!(first.post("/seed/cart").await.status, 200);

    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let mut tab = first.tab();
        tab.router = if i % 2 == 0 { one.clone() } else { two.clone() };
        let ns = if i % 3 == 0 { "wizard" } else { "cart" };
        tasks.push(tokio::spawn(async move {
            tab.post(&format!("/insert/{ns}/k{i}")).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("request task"), 200);
    }
    let cart = first.stored("cart").await.expect("cart");
    let wizard = first.stored("wizard").await.unwrap_or_default();
    (0..REQUESTS)
        .filter(|i| {
            let ns = if i % 3 == 0 { &wizard } else { &cart };
            ns.get(format!("k{i}")).is_none()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_store_lose_no_update_with_the_store_lock() {
    let lost = lost_across_instances(true).await;
    assert!(lost.is_empty(), "lost updates: {lost:?}");
}

/// The store lock is what the previous test relies on: without it, the instances' merges
/// interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_store_can_lose_updates_without_the_store_lock() {
    let mut runs = 0;
    while lost_across_instances(false).await.is_empty() {
        runs += 1;
        assert!(
            runs < 20,
            "no update was ever lost: the test does not open the window"
        );
    }
}
