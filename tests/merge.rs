//! No lost updates: overlapping requests on one session, with and without `MergingStore`.
//!
//! Each pair of requests meets at a barrier after both have loaded the session and changed it,
//! so both save from the same stale record: the classic lost update, made deterministic.

mod support;

use std::sync::Arc;

use axum::{
    extract::{Extension, Path},
    http::StatusCode,
    routing::{get, post},
    Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
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

/// Writes `key = value` straight into the session (`value` read as JSON, or else taken as a
/// string), then waits for the other request.
async fn insert_direct(
    Path((key, value)): Path<(String, String)>,
    Extension(barrier): Extension<Arc<Barrier>>,
    session: Session,
) -> Result<(), String> {
    let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
    session
        .insert_value(&key, value)
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

/// Logs out (`Session::flush`), then waits for the other request.
async fn logout(Extension(barrier): Extension<Arc<Barrier>>, session: Session) -> StatusCode {
    let flushed = session.flush().await;
    barrier.wait().await;
    match flushed {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Logs in: a new session id for the same data, with the user, then waits for the other request.
async fn login(Extension(barrier): Extension<Arc<Barrier>>, session: Session) -> StatusCode {
    let cycled = session.cycle_id().await;
    let user = session.insert_value("user", json!("ada")).await;
    barrier.wait().await;
    match (cycled, user) {
        (Ok(()), Ok(_)) => StatusCode::OK,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A two-field typed namespace whose fields are both written, `None` or not.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Pair {
    a: Option<u32>,
    b: Option<u32>,
}

impl Namespace for Pair {
    const KEY: &'static str = "pair";
}

/// Sets one field of the pair, then waits for the other request.
async fn set_pair(
    Path(field): Path<String>,
    Extension(barrier): Extension<Arc<Barrier>>,
    mut pair: Keyed<Pair>,
) {
    match field.as_str() {
        "a" => pair.a = Some(1),
        _ => pair.b = Some(2),
    }
    drop(pair);
    barrier.wait().await;
}

/// Inserts `key` = a string of `len` bytes into the namespace `budgeted` (budget 120), then
/// waits for the other request.
async fn insert_budgeted(
    Path((key, len)): Path<(String, usize)>,
    Extension(barrier): Extension<Arc<Barrier>>,
    controllers: SessionControllers,
) -> Result<(), Error> {
    let mut namespace = controllers.open("budgeted").await?.with_budget(120);
    namespace.insert(&key, "x".repeat(len))?;
    barrier.wait().await;
    Ok(())
}

/// Sets `user` to `value` straight in the session, and writes the cart, without waiting.
async fn set_user(
    Path(value): Path<String>,
    session: Session,
    controllers: SessionControllers,
) -> Result<(), Error> {
    session
        .insert_value("user", json!(value))
        .await
        .map_err(Error::Store)?;
    controllers.open("cart").await?.insert("seen", true)?;
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
        .route("/direct/{key}/{value}", post(insert_direct))
        .route("/both/{ns}/{key}", post(insert_both))
        .route("/profile/{field}/{value}", post(set_field))
        .route("/profile-then-read/{value}", post(set_name_then_read))
        .route("/seed-profile", post(seed_profile))
        .route("/purge/{ns}", post(purge))
        .route("/read/{ns}", get(routes::namespace_json))
        .route("/seed/{ns}", post(seed))
        .route("/user/{value}", post(set_user))
        .route("/logout", post(logout))
        .route("/login", post(login))
        .route("/pair/{field}", post(set_pair))
        .route("/budgeted/{key}/{len}", post(insert_budgeted))
        .route("/wizard/seed", post(seed_wizard))
        .route("/wizard/next", post(next_step))
        .layer(Extension(Arc::new(Barrier::new(parties))))
}

/// The set-ups the overlapping requests run on: `MergingStore` over tower-sessions'
/// `MemoryStore` (a lock and a merge), and the crate's own `stores::MemoryStore` (a merge by
/// compare-and-set).
const SETUPS: [fn(Router) -> TestApp; 2] = [TestApp::merging, TestApp::atomic];

/// A merging app on `setup` with an established session.
async fn merging_app(setup: fn(Router) -> TestApp) -> TestApp {
    let mut app = setup(routes(2));
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
    for setup in SETUPS {
        let app = merging_app(setup).await;
        overlap(&app, "/insert/cart/a", "/insert/cart/b").await;
        let cart = app.stored("cart").await.expect("cart stored");
        assert_eq!(cart["a"], true, "{cart}");
        assert_eq!(cart["b"], true, "{cart}");
        assert_eq!(cart["seed"], true, "{cart}");
    }
}

#[tokio::test]
async fn overlapping_writes_to_two_namespaces_both_survive() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
        overlap(&app, "/insert/cart/a", "/insert/wizard/b").await;
        assert_eq!(app.stored("cart").await.expect("cart")["a"], true);
        assert_eq!(app.stored("wizard").await.expect("wizard")["b"], true);
    }
}

#[tokio::test]
async fn a_direct_session_write_and_an_overlapping_namespace_write_both_survive() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
        overlap(&app, "/direct/user/true", "/insert/cart/b").await;
        let record = app.record().await.expect("record");
        assert_eq!(record.data["user"], true, "{:?}", record.data);
        assert_eq!(app.stored("cart").await.expect("cart")["b"], true);
    }
}

#[tokio::test]
async fn a_direct_write_in_the_same_request_as_a_namespace_write_survives_the_merge() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
        overlap(&app, "/both/cart/a", "/insert/cart/b").await;
        let record = app.record().await.expect("record");
        assert_eq!(record.data["direct_a"], true, "{:?}", record.data);
        let cart = app.stored("cart").await.expect("cart");
        assert_eq!(
            (cart["a"].clone(), cart["b"].clone()),
            (json!(true), json!(true))
        );
    }
}

#[tokio::test]
async fn a_direct_write_beside_a_namespace_write_is_known_as_changed_to_later_merges() {
    for setup in SETUPS {
        let mut app = merging_app(setup).await;
        assert_eq!(app.post("/user/ada").await.status, 200);
        assert_eq!(app.post("/user/grace").await.status, 200);
        // One request sets `user` back to "ada"; the other writes only the cart, and still holds
        // the "grace" it loaded. Whichever saves second, `user` ends as "ada": the versions
        // stored with "grace" must be its own digest. (Had they kept the digest of "ada", the
        // merge would take the cart's request for the one that changed `user`, or the other
        // for the one that did not.)
        overlap(&app, "/insert/cart/b", "/direct/user/ada").await;
        let record = app.record().await.expect("record");
        assert_eq!(record.data["user"], "ada", "{:?}", record.data);
        assert_eq!(app.stored("cart").await.expect("cart")["b"], true);
    }
}

#[tokio::test]
async fn overlapping_writes_to_different_fields_of_a_typed_namespace_both_survive() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
        overlap(&app, "/profile/name/ada", "/profile/city/paris").await;
        let profile = app.stored("profile").await.expect("profile");
        assert_eq!(profile["name"], "ada", "{profile}");
        assert_eq!(profile["city"], "paris", "{profile}");
    }
}

/// A stored profile: each request's typed write is told apart from what it loaded, so the
/// other field's stale value is not written back over the other request's change.
#[tokio::test]
async fn overlapping_writes_to_different_fields_of_a_stored_typed_namespace_both_survive() {
    for setup in SETUPS {
        for (first, second) in [
            ("/profile/name/ada", "/profile/city/paris"),
            ("/profile/city/paris", "/profile/name/ada"),
            // The typed write then read through a runtime controller in the same request.
            ("/profile-then-read/ada", "/profile/city/paris"),
            ("/profile/city/paris", "/profile-then-read/ada"),
        ] {
            let mut app = merging_app(setup).await;
            assert_eq!(app.post("/seed-profile").await.status, 200);
            overlap(&app, first, second).await;
            let profile = app.stored("profile").await.expect("profile");
            assert_eq!(profile["name"], "ada", "{first} with {second}: {profile}");
            assert_eq!(profile["city"], "paris", "{first} with {second}: {profile}");
        }
    }
}

#[tokio::test]
async fn a_purge_overlapping_a_write_to_another_namespace_removes_only_its_own() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
        overlap(&app, "/purge/cart", "/insert/wizard/b").await;
        assert_eq!(app.stored("cart").await, None);
        assert_eq!(app.stored("wizard").await.expect("wizard")["b"], true);
    }
}

#[tokio::test]
async fn the_merge_leaves_no_operations_in_the_store() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
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
}

#[tokio::test]
async fn under_merging_a_read_only_request_loads_once_and_saves_nothing() {
    let mut app = merging_app(TestApp::merging).await;
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

/// Both requests at once, from two tabs; their replies in the order given.
async fn both(app: &TestApp, first: &str, second: &str) -> (support::Reply, support::Reply) {
    let (mut a, mut b) = (app.tab(), app.tab());
    tokio::join!(a.post(first), b.post(second))
}

#[tokio::test]
async fn a_logout_while_a_write_runs_sticks_and_the_write_is_not_answered_as_saved() {
    for setup in SETUPS {
        let mut app = merging_app(setup).await;
        let old = app.session_id().expect("a session");
        let (write, logout) = both(&app, "/insert/cart/late", "/logout").await;

        assert_eq!(logout.status, 200, "{logout:?}");
        assert_eq!(write.status, StatusCode::CONFLICT, "{write:?}");
        assert!(
            write
                .body
                .contains("the session ended while this request ran"),
            "{write:?}"
        );
        assert!(
            write
                .set_cookie
                .as_deref()
                .is_some_and(|cookie| cookie.contains("Max-Age=0")),
            "the cookie of the ended session is removed: {write:?}"
        );
        assert!(
            app.record_by_id(&old).await.is_none(),
            "the session came back"
        );
        // The old cookie finds nothing.
        assert_eq!(app.get("/read/cart").await.body, "{}");
    }
}

#[tokio::test]
async fn a_login_that_cycles_the_id_while_a_write_runs_never_brings_the_old_id_back() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
        let old = app.session_id().expect("a session");
        let (mut writer, mut login) = (app.tab(), app.tab());
        let (write, logged_in) =
            tokio::join!(writer.post("/insert/cart/late"), login.post("/login"));

        assert_eq!(logged_in.status, 200, "{logged_in:?}");
        assert_eq!(write.status, StatusCode::CONFLICT, "{write:?}");
        assert!(
            write
                .body
                .contains("the session ended while this request ran"),
            "{write:?}"
        );
        assert!(
            app.record_by_id(&old).await.is_none(),
            "the old id came back"
        );
        let new = login.session_id().expect("the login's new id");
        assert_ne!(new, old);
        let record = app.record_by_id(&new).await.expect("the new session");
        assert_eq!(record.data["user"], "ada");
    }
}

#[tokio::test]
async fn a_write_that_lands_before_a_logout_is_removed_with_the_session() {
    for setup in SETUPS {
        let mut app = setup(routes(1));
        assert_eq!(app.post("/seed/cart").await.status, 200);
        let old = app.session_id().expect("a session");
        assert_eq!(app.tab().post("/insert/cart/early").await.status, 200);
        assert_eq!(app.tab().post("/logout").await.status, 200);
        assert!(app.record_by_id(&old).await.is_none());
        assert_eq!(app.get("/read/cart").await.body, "{}");
    }
}

const JOURNAL: &str = "tower_sessions_controller.ops";
const VERSIONS: &str = "tower_sessions_controller.versions";

/// A purge of the cart, as a journal left in a record would say it.
fn planted_purge() -> Value {
    json!({ "now": 0, "now_nanos": 0, "namespaces": { "cart": { "purged": true, "wrote": true } } })
}

#[tokio::test]
async fn a_journal_found_in_the_store_is_never_applied() {
    let mut app = TestApp::merging(routes(1));
    assert_eq!(app.post("/seed/cart").await.status, 200);
    app.store_raw(JOURNAL, planted_purge()).await;

    // A save that changes no namespace, then one that changes another.
    assert_eq!(app.post("/direct/user/true").await.status, 200);
    assert_eq!(app.post("/insert/wizard/a").await.status, 200);

    let record = app.record().await.expect("record");
    assert_eq!(record.data["cart"]["seed"], true, "{:?}", record.data);
    assert!(!record.data.contains_key(JOURNAL), "{:?}", record.data);
}

#[tokio::test]
async fn an_app_on_a_plain_store_never_writes_merge_bookkeeping() {
    let mut app = TestApp::new(routes(1));
    assert_eq!(app.post("/seed/cart").await.status, 200);
    // A record that a merging instance wrote, with a load mark planted too.
    app.store_raw(
        VERSIONS,
        json!({ "counter": 3, "keys": { "cart": 3 }, "loaded": "guess" }),
    )
    .await;

    assert_eq!(app.post("/insert/cart/a").await.status, 200);

    let record = app.record().await.expect("record");
    assert_eq!(record.data["cart"]["a"], true);
    assert!(!record.data.contains_key(JOURNAL), "{:?}", record.data);
}

#[tokio::test]
async fn overlapping_first_writes_of_a_typed_namespace_keep_every_field() {
    for setup in SETUPS {
        for (first, second) in [("/pair/a", "/pair/b"), ("/pair/b", "/pair/a")] {
            let app = merging_app(setup).await;
            overlap(&app, first, second).await;
            assert_eq!(
                app.stored("pair")
                    .await
                    .map(|pair| (pair["a"].clone(), pair["b"].clone())),
                Some((json!(1), json!(2))),
                "{first} with {second}"
            );
        }
    }
}

/// A typed namespace whose fields are all required: stored in part, it would not read back.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Wizard {
    step: u32,
    address: String,
}

impl Namespace for Wizard {
    const KEY: &'static str = "wizard";
}

async fn seed_wizard(mut wizard: Keyed<Wizard>) {
    wizard.step = 1;
    wizard.address = "1 Main Street".into();
}

async fn next_step(Extension(barrier): Extension<Arc<Barrier>>, mut wizard: Keyed<Wizard>) {
    wizard.step = 7;
    drop(wizard);
    barrier.wait().await;
}

#[tokio::test]
async fn a_typed_write_racing_a_purge_never_stores_a_partial_value() {
    for setup in SETUPS {
        for purge_first in [true, false] {
            let mut app = setup(routes(2));
            assert_eq!(app.post("/wizard/seed").await.status, 200);
            let (step, purge) = if purge_first {
                let (purge, step) = both(&app, "/purge/wizard", "/wizard/next").await;
                (step, purge)
            } else {
                both(&app, "/wizard/next", "/purge/wizard").await
            };
            assert_eq!(
                (step.status, purge.status),
                (StatusCode::OK, StatusCode::OK)
            );

            if let Some(stored) = app.stored("wizard").await {
                let wizard: Wizard = serde_json::from_value(stored.clone())
                    .unwrap_or_else(|err| panic!("stored in part ({err}): {stored}"));
                assert_eq!((wizard.step, wizard.address.as_str()), (7, "1 Main Street"));
            }
        }
    }
}

#[tokio::test]
async fn overlapping_inserts_never_store_more_than_the_budget() {
    for setup in SETUPS {
        let app = merging_app(setup).await;
        // Alone, each fits in 120 bytes with its stamp; merged, they would not.
        let (a, b) = both(&app, "/budgeted/a/40", "/budgeted/b/40").await;

        let stored = app.stored("budgeted").await.expect("one of them is stored");
        let size = serde_json::to_string(&stored).expect("json").len();
        assert!(size <= 120, "{size} bytes stored: {stored}");
        let answered_ok = [a.status, b.status]
            .iter()
            .filter(|status| **status == 200)
            .count();
        assert_eq!(answered_ok, 1, "{a:?} {b:?}");
    }
}

/// A store whose next save never finishes once told to stall: a save cancelled in the middle.
#[derive(Debug, Clone)]
struct Stalling {
    inner: MemoryStore,
    stall: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl SessionStore for Stalling {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.inner.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        if self.stall.swap(false, std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.inner.load(id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.inner.delete(id).await
    }
}

/// Two instances share a store; one's save is cancelled while it holds the session's store lock
/// (a client that went away, a timeout layer). Runs on tokio's paused clock: waiting for the lock
/// costs no real time, and a lock left behind would fail the other instance's save after its 5
/// seconds of waiting (the lock's own 10 seconds are wall-clock time, which does not pass here).
#[tokio::test(start_paused = true)]
async fn a_save_cancelled_while_it_holds_the_store_lock_does_not_block_the_session() {
    let stalling = Stalling {
        inner: MemoryStore::default(),
        stall: Arc::default(),
    };
    let instance = || {
        routes(1).layer(
            tower::ServiceBuilder::new()
                .layer(
                    SessionManagerLayer::new(MergingStore::new(stalling.clone()).with_store_lock())
                        .with_secure(false),
                )
                .layer(SessionControllerLayer::new()),
        )
    };
    let mut app = TestApp::with_store(Router::new(), CountingStore::new(MemoryStore::default()));
    app.router = instance();
    assert_eq!(app.post("/seed/cart").await.status, 200);

    stalling
        .stall
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        app.tab().post("/insert/cart/a"),
    )
    .await;
    assert!(cancelled.is_err(), "the save should have stalled");

    app.router = instance();
    let next = app.post("/insert/cart/b").await;
    assert_eq!(next.status, 200, "{next:?}");
}

/// What `write_after` and a test tell each other: the flush of `/insert/cart/paused` is done;
/// the test's other request is answered.
static PAUSE: std::sync::LazyLock<(tokio::sync::Notify, tokio::sync::Notify)> =
    std::sync::LazyLock::new(Default::default);

/// A middleware between the session manager and the controller layer, writing to the session
/// after the flush (as a flash-message layer would): the request's path under `after_flush`, and
/// a key of the request's own. After the flush of `/insert/cart/paused` it first waits for the
/// test's other request.
async fn write_after(
    session: Session,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if path == "/insert/cart/paused" {
        PAUSE.0.notify_one();
        PAUSE.1.notified().await;
    }
    session
        .insert_value("after_flush", json!(path))
        .await
        .expect("session write");
    session
        .insert_value(&format!("after {path}"), json!(true))
        .await
        .expect("session write");
    response
}

/// `routes` behind the session manager on `store`, `write_after`, and the controller layer.
fn with_a_late_middleware<S: SessionStore + Clone>(store: S) -> Router {
    routes(1).layer(
        tower::ServiceBuilder::new()
            .layer(SessionManagerLayer::new(store).with_secure(false))
            .layer(axum::middleware::from_fn(write_after))
            .layer(SessionControllerLayer::new()),
    )
}

/// The apps of `merging` (on `MergingStore` over tower-sessions' `MemoryStore`) and `atomic` (on
/// the crate's own `stores::MemoryStore`), each reading its records from its store: one builder
/// of the routes behind the session manager, given twice for its two store types.
fn on_both_merging_stores(
    merging: fn(MergingStore<MemoryStore>) -> Router,
    atomic: fn(tower_sessions_controller::stores::MemoryStore) -> Router,
) -> [TestApp; 2] {
    let (memory, own) = (
        MemoryStore::default(),
        tower_sessions_controller::stores::MemoryStore::default(),
    );
    let stores: [(Router, Arc<dyn SessionStore>); 2] = [
        (merging(MergingStore::new(memory.clone())), Arc::new(memory)),
        (atomic(own.clone()), Arc::new(own)),
    ];
    stores.map(|(router, records)| {
        let mut app = TestApp::atomic(Router::new());
        app.router = router;
        app.records = records;
        app
    })
}

#[tokio::test]
async fn a_write_to_the_session_after_the_flush_is_saved_too() {
    for mut app in on_both_merging_stores(with_a_late_middleware, with_a_late_middleware) {
        assert_eq!(app.post("/seed/cart").await.status, 200);
        assert_eq!(app.post("/insert/cart/a").await.status, 200);

        let record = app.record().await.expect("record");
        assert_eq!(
            record.data["after_flush"], "/insert/cart/a",
            "{:?}",
            record.data
        );
        assert_eq!(record.data["cart"]["a"], true, "{:?}", record.data);
    }
}

#[tokio::test]
async fn a_write_after_the_flush_merges_with_a_save_that_came_in_between() {
    for mut app in on_both_merging_stores(with_a_late_middleware, with_a_late_middleware) {
        assert_eq!(app.post("/seed/cart").await.status, 200);
        let (mut paused, mut other) = (app.tab(), app.tab());
        // The other request loads what the first one's flush stored, and saves before the first
        // one's session manager does.
        let (first, second) = tokio::join!(paused.post("/insert/cart/paused"), async {
            PAUSE.0.notified().await;
            let reply = other.post("/insert/cart/b").await;
            PAUSE.1.notify_one();
            reply
        });
        assert_eq!(
            (first.status, second.status),
            (StatusCode::OK, StatusCode::OK),
            "{first:?} {second:?}"
        );

        let record = app.record().await.expect("record");
        for key in ["after /insert/cart/paused", "after /insert/cart/b"] {
            assert_eq!(
                record.data.get(key),
                Some(&json!(true)),
                "{key}: {:?}",
                record.data
            );
        }
        for item in ["paused", "b"] {
            assert_eq!(record.data["cart"][item], true, "{item}: {:?}", record.data);
        }
    }
}

/// `routes` for two overlapping requests behind the session manager on `store`, with a layer
/// that allows a session two top-level keys.
fn with_two_namespaces<S: SessionStore + Clone>(store: S) -> Router {
    routes(2).layer(
        tower::ServiceBuilder::new()
            .layer(SessionManagerLayer::new(store).with_secure(false))
            .layer(SessionControllerLayer::new().with_max_namespaces(2)),
    )
}

/// `routes` behind the session manager on `store`, with a layer that allows a session one
/// top-level key and 200 bytes.
fn with_tight_limits<S: SessionStore + Clone>(store: S) -> Router {
    routes(1).layer(
        tower::ServiceBuilder::new()
            .layer(SessionManagerLayer::new(store).with_secure(false))
            .layer(
                SessionControllerLayer::new()
                    .with_max_namespaces(1)
                    .with_session_budget(200),
            ),
    )
}

#[tokio::test]
async fn a_request_that_takes_the_session_past_its_limits_saves_nothing() {
    for mut app in on_both_merging_stores(with_tight_limits, with_tight_limits) {
        assert_eq!(app.post("/seed/cart").await.status, 200);
        // The session's data, without the bookkeeping (a load's mark differs at every load).
        let data = |record: Record| {
            record
                .data
                .into_iter()
                .filter(|(key, _)| !key.starts_with("tower_sessions_controller."))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let before = data(app.record().await.expect("stored"));

        // A second namespace, then more bytes than the session's budget in the first.
        for path in [
            "/insert/other/a",
            &format!("/insert/cart/{}", "k".repeat(200)),
        ] {
            let refused = app.post(path).await;
            assert_eq!(
                refused.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{refused:?}"
            );
            assert!(
                refused.body.contains("over its limits"),
                "{path}: {refused:?}"
            );
            let after = data(app.record().await.expect("still stored"));
            assert_eq!(after, before, "{path}: nothing of it is saved");
        }
        // Within the limits, the session still takes writes.
        assert_eq!(app.post("/insert/cart/a").await.status, 200);
        assert_eq!(app.record().await.expect("stored").data["cart"]["a"], true);
    }
}

#[tokio::test]
async fn overlapping_requests_that_each_fit_the_sessions_limit_are_checked_merged() {
    for mut app in on_both_merging_stores(with_two_namespaces, with_two_namespaces) {
        // One namespace, then two requests that each create one more: alone each fits in two.
        assert_eq!(app.post("/seed/cart").await.status, 200);
        let (a, b) = both(&app, "/insert/one/a", "/insert/two/b").await;

        let mut answers = [a.status.as_u16(), b.status.as_u16()];
        answers.sort_unstable();
        assert_eq!(answers, [200, 500], "{a:?} {b:?}");
        let refused = if a.status == 500 { &a } else { &b };
        assert!(
            refused.body.contains("namespaces") && refused.body.contains("with_max_namespaces"),
            "{refused:?}"
        );
        let record = app.record().await.expect("stored");
        let keys = record
            .data
            .keys()
            .filter(|key| !key.starts_with("tower_sessions_controller."))
            .count();
        assert_eq!(keys, 2, "{:?}", record.data);

        // A full session still takes writes to the namespaces it holds.
        assert_eq!(app.post("/seed/cart").await.status, 200);
    }
}
