//! Two app instances on one Redis, each with its own pool, `SessionManagerLayer` and
//! `SessionControllerLayer` on `stores::RedisStore`: overlapping writes of one session lose
//! nothing, and a logout or an id cycle that races a write is never undone by it.

use axum::{http::StatusCode, Router};
use futures::{stream, StreamExt};
use serde_json::json;
use tower_sessions::SessionStore;

use crate::{
    app, assert_session_ended, exists, on_redis, routes, send, stored_keys, stored_value, Gate,
    Reply, Shared, Visitor,
};

/// Writes of distinct keys to one session.
const WRITES: usize = 240;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;

/// `WRITES` writes of keys `k0`, `k1`, ... into namespace `log` of the visitor's session, the
/// even ones through `a`, the odd ones through `b`, `IN_FLIGHT` at a time. Returns the keys
/// stored afterwards, and the writes that answered something else than `200`.
async fn overlapping_writes<S: SessionStore>(
    a: &Router,
    b: &Router,
    store: &S,
    visitor: &Visitor,
) -> (Vec<String>, Vec<String>) {
    let cookie = visitor.cookie.clone().expect("a session");
    let failed: Vec<String> = stream::iter(0..WRITES)
        .map(|i| {
            let (router, cookie) = (if i % 2 == 0 { a } else { b }, cookie.as_str());
            async move {
                let reply = send(
                    router,
                    Some(cookie),
                    axum::http::Method::POST,
                    &format!("/ns/log/k{i}/{i}"),
                )
                .await;
                (reply.status != StatusCode::OK).then(|| format!("write {i}: {reply:?}"))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|failed| async move { failed })
        .collect()
        .await;
    let id = visitor.session_id().expect("a session");
    (stored_keys(store, &id, "log").await, failed)
}

fn all_keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..WRITES).map(|i| format!("k{i}")).collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_writes_on_two_instances_lose_nothing() {
    on_redis(
        "instances::overlapping_writes_on_two_instances_lose_nothing",
        overlapping_writes_lose_nothing,
    )
    .await;
}

/// 240 overlapping writes through two instances: every key stored, every write answered `200`.
pub async fn overlapping_writes_lose_nothing(shared: Shared) {
    let a = app(routes(Gate::default()), shared.a.clone());
    let b = app(routes(Gate::default()), shared.b.clone());
    let mut visitor = Visitor::default();
    visitor.post(&a, "/ns/other/seed/1").await.assert_ok();

    let (stored, failed) = overlapping_writes(&a, &b, &shared.a, &visitor).await;
    assert!(
        failed.is_empty(),
        "writes that did not answer 200: {failed:#?}"
    );
    assert_eq!(stored, all_keys(), "{} of {WRITES} stored", stored.len());
    // The other namespace, which no write touched, is intact.
    assert_eq!(
        visitor.get(&b, "/ns/other").await.json(),
        json!({ "seed": "1" })
    );
}

/// A visitor of `a` with a session holding `cart {apple}`.
async fn logged_in(a: &Router) -> Visitor {
    let mut visitor = Visitor::default();
    visitor.post(a, "/ns/cart/apple/1").await.assert_ok();
    visitor
}

/// A write of `fig` into `visitor`'s cart through `a`'s gated route, spawned: it loads the
/// session, says so through the gate (`entered`) and waits there until released.
pub fn gated_write(a: &Router, visitor: &Visitor) -> tokio::task::JoinHandle<Reply> {
    let (a, mut writer) = (a.clone(), visitor.clone());
    tokio::spawn(async move { writer.post(&a, "/gated/cart/fig/3").await })
}

/// A write of a logged-in visitor through A, stopped at the gate after its load: the two
/// instances (A's routes gated), the visitor, its session's id, and the write.
struct SlowWrite {
    gate: Gate,
    a: Router,
    b: Router,
    visitor: Visitor,
    old: String,
    write: tokio::task::JoinHandle<Reply>,
}

impl SlowWrite {
    async fn start(shared: &Shared) -> Self {
        let gate = Gate::default();
        let a = app(routes(gate.clone()), shared.a.clone());
        let b = app(routes(Gate::default()), shared.b.clone());
        let visitor = logged_in(&a).await;
        let old = visitor.session_id().expect("a session").to_string();
        let write = gated_write(&a, &visitor);
        gate.entered.notified().await;
        Self {
            gate,
            a,
            b,
            visitor,
            old,
            write,
        }
    }
}

/// After a race ended the session `old`: its key is gone from Redis, and the visitor (with the
/// cookie it kept, if any, or the old one) gets a brand-new session on its next write.
async fn ended(shared_pool: &fred::prelude::Pool, app: &Router, visitor: &mut Visitor, old: &str) {
    assert!(
        !exists(shared_pool, old).await,
        "the ended session came back"
    );
    if visitor.cookie.is_none() {
        visitor.cookie = Some(format!("id={old}"));
    }
    let reply = visitor.post(app, "/ns/cart/pear/2").await;
    reply.assert_ok();
    let new = visitor.session_id().expect("a new session");
    assert_ne!(new.to_string(), old, "a new session, not the old one");
    assert_eq!(
        reply.json(),
        json!({ "pear": "2" }),
        "nothing of the old one"
    );
    assert!(exists(shared_pool, &new.to_string()).await);
    assert!(
        !exists(shared_pool, old).await,
        "the ended session came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_during_a_slow_write_is_never_undone() {
    on_redis(
        "instances::a_logout_during_a_slow_write_is_never_undone",
        logout_during_a_slow_write,
    )
    .await;
}

/// A logout on B while a write on A has loaded the session: the write answers that the session
/// ended, and the session stays gone.
pub async fn logout_during_a_slow_write(shared: Shared) {
    // The write loads the session and stops; the logout runs whole on B; the write's save
    // then finds the session gone.
    let SlowWrite {
        gate,
        a,
        b,
        mut visitor,
        old,
        write,
    } = SlowWrite::start(&shared).await;
    let logout = visitor.post(&b, "/logout").await;
    assert_eq!(logout.status, StatusCode::OK);
    assert!(visitor.cookie.is_none(), "the logout removed the cookie");
    assert!(!exists(&shared.pools[0], &old).await);
    gate.release.notify_one();
    let write = write.await.expect("the write");
    assert_session_ended(&write, "the write that raced the logout");
    assert!(
        write
            .set_cookie
            .as_deref()
            .is_some_and(|cookie| cookie.contains("Max-Age=0")),
        "the ended session's cookie is removed: {write:?}"
    );

    ended(&shared.pools[0], &a, &mut visitor, &old).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_logout_during_a_write_ends_the_session() {
    on_redis(
        "instances::a_slow_logout_during_a_write_ends_the_session",
        slow_logout_during_a_write,
    )
    .await;
}

/// A write on A while a logout on B has loaded the session: the logout ends the session, the
/// write's key with it.
pub async fn slow_logout_during_a_write(shared: Shared) {
    let gate = Gate::default();
    let a = app(routes(Gate::default()), shared.a.clone());
    let b = app(routes(gate.clone()), shared.b.clone());
    let mut visitor = logged_in(&a).await;
    let old = visitor.session_id().expect("a session").to_string();

    // The logout loads the session and stops; a write runs whole on A; the logout then
    // deletes the session, the write's key with it.
    let mut leaving = visitor.clone();
    let logout = tokio::spawn({
        let b = b.clone();
        async move {
            let reply = leaving.post(&b, "/gated_logout").await;
            (reply, leaving)
        }
    });
    gate.entered.notified().await;
    visitor.post(&a, "/ns/cart/fig/3").await.assert_ok();
    gate.release.notify_one();
    let (logout, leaving) = logout.await.expect("the logout");
    assert_eq!(logout.status, StatusCode::OK, "{logout:?}");
    assert!(leaving.cookie.is_none(), "the logout removed the cookie");

    ended(&shared.pools[0], &a, &mut visitor, &old).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_cycled_during_a_slow_write_is_never_written_back() {
    on_redis(
        "instances::an_id_cycled_during_a_slow_write_is_never_written_back",
        id_cycled_during_a_slow_write,
    )
    .await;
}

/// An id cycle on B while a write on A has loaded the session: the old id never comes back, the
/// session lives on under the new one without the refused write.
pub async fn id_cycled_during_a_slow_write(shared: Shared) {
    let SlowWrite {
        gate,
        a,
        b,
        mut visitor,
        old,
        write,
    } = SlowWrite::start(&shared).await;
    let cycled = visitor.post(&b, "/cycle").await;
    assert_eq!(cycled.status, StatusCode::OK);
    let new = visitor.session_id().expect("the cycled session");
    assert_ne!(new.to_string(), old);
    gate.release.notify_one();
    let write = write.await.expect("the write");
    assert_session_ended(&write, "the write that raced the id cycle");

    assert!(
        !exists(&shared.pools[0], &old).await,
        "the old id came back"
    );
    // The session lives on under its new id, without the refused write.
    assert_eq!(
        stored_keys(&shared.a, &new, "cart").await,
        vec!["apple".to_owned()]
    );
    visitor.post(&b, "/ns/cart/kiwi/4").await.assert_ok();
    assert_eq!(visitor.session_id(), Some(new));
    assert_eq!(
        visitor.get(&a, "/ns/cart").await.json(),
        json!({ "apple": "1", "kiwi": "4" })
    );
    assert!(
        !exists(&shared.pools[0], &old).await,
        "the old id came back"
    );

    // A brand-new session is still created, for the old cookie as for a new visitor.
    let mut stale = Visitor {
        cookie: Some(format!("id={old}")),
    };
    ended(&shared.pools[0], &a, &mut stale, &old).await;
    let mut fresh = Visitor::default();
    fresh.post(&b, "/ns/cart/lime/5").await.assert_ok();
    assert!(fresh.session_id().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_beside_a_namespace_write_is_kept_in_either_order() {
    on_redis(
        "instances::a_direct_write_beside_a_namespace_write_is_kept_in_either_order",
        direct_write_beside_a_namespace_write,
    )
    .await;
}

/// `user`, written through `Session` on one instance, and a cart write on the other, both
/// loaded before either saves, in either order of the saves: `user` ends as the direct write set
/// it and the cart holds its write. The second save merges, and tells what its request changed
/// by the versions stored with what it loaded: those stored with `user` = "grace" must be the
/// digest of "grace" (were they still that of the "ada" before it, the cart's request would
/// count `user` as changed and write its "grace" back over the direct write).
pub async fn direct_write_beside_a_namespace_write(shared: Shared) {
    for (held, whole) in [
        ("/gated/cart/b/1", "/direct/user/ada"),
        ("/gated_direct/user/ada", "/ns/cart/b/1"),
    ] {
        let gate = Gate::default();
        let a = app(routes(gate.clone()), shared.a.clone());
        let b = app(routes(Gate::default()), shared.b.clone());
        let mut visitor = Visitor::default();
        visitor.post(&a, "/direct/user/ada").await.assert_ok();
        visitor.post(&a, "/direct/user/grace").await.assert_ok();

        let slow = tokio::spawn({
            let (a, mut visitor) = (a.clone(), visitor.clone());
            async move { visitor.post(&a, held).await }
        });
        gate.entered.notified().await;
        visitor.post(&b, whole).await.assert_ok();
        gate.release.notify_one();
        slow.await.expect("the held request").assert_ok();

        let id = visitor.session_id().expect("a session");
        assert_eq!(
            stored_value(&shared.a, &id, "user").await,
            Some(json!("ada")),
            "{held} saved after {whole}"
        );
        assert_eq!(
            stored_keys(&shared.a, &id, "cart").await,
            ["b"],
            "{held} saved after {whole}"
        );
    }
}
