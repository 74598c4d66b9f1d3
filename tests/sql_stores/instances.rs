//! Two app instances, each with its own pool, layers and store, on one table: overlapping
//! writes of one session lose nothing, and a session that ended (a logout, an id cycled) while a
//! slow write of it ran is never written back.

use std::sync::Arc;

use axum::{http::StatusCode, Router};
use futures::{stream, StreamExt};
use tower_sessions::SessionStore;

use crate::{app, id_of, keys, on_both, Db, Gate, Reply, Visitor};

/// Overlapping writes of distinct keys.
const WRITES: usize = 240;
/// How many are in flight at once.
const IN_FLIGHT: usize = 16;

/// `WRITES` writes of distinct keys to one session, alternating between `a` and `b`, `IN_FLIGHT`
/// at a time: the replies, and the keys of the stored namespaces `n0`..`n3` afterwards.
pub async fn overlapping_writes<S: SessionStore>(
    a: &Router,
    b: &Router,
    visitor: &Visitor,
    read_back: &S,
) -> (Vec<Reply>, usize) {
    let cookie = visitor.cookie.clone();
    let replies: Vec<Reply> = stream::iter(0..WRITES)
        .map(|i| {
            let router = if i % 2 == 0 { a } else { b };
            let mut visitor = Visitor {
                cookie: cookie.clone(),
            };
            async move {
                visitor
                    .post(router, &format!("/ns/n{}/k{i}/{i}", i % 4))
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let record = read_back
        .load(&id_of(visitor))
        .await
        .expect("load")
        .expect("the session");
    let stored = (0..4)
        .map(|n| {
            record
                .data
                .get(&format!("n{n}"))
                .map_or(0, |namespace| keys(namespace).len())
        })
        .sum();
    (replies, stored)
}

/// 240 overlapping writes through two instances: every one answered `200` and stored. The same
/// run on tower-sessions-sqlx-store's store loses writes, so the writes do overlap.
async fn overlapping_writes_lose_nothing(db: Db) {
    let gate = Arc::new(Gate::default());
    let store = db.store().await;
    let (a, b) = (app(store.clone(), &gate), app(db.store().await, &gate));
    let mut visitor = Visitor::default();
    visitor.post(&a, "/ns/seed/k/v").await.assert_ok();

    let (replies, stored) = overlapping_writes(&a, &b, &visitor, &store).await;
    let failed: Vec<&Reply> = replies
        .iter()
        .filter(|reply| reply.status != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}; errors logged: {:#?}",
        failed.len(),
        failed.first(),
        crate::statements::errors()
    );
    assert_eq!(stored, 240, "keys stored of 240 written");

    let legacy = db.legacy().await;
    let (a, b) = (app(legacy.clone(), &gate), app(db.legacy().await, &gate));
    let mut visitor = Visitor::default();
    visitor.post(&a, "/ns/seed/k/v").await.assert_ok();
    let (_, stored) = overlapping_writes(&a, &b, &visitor, &legacy).await;
    assert!(
        stored < 240,
        "tower-sessions-sqlx-store lost none: the writes did not overlap"
    );
}

/// A visitor with a session holding `cart.a`, on `a`.
async fn signed_in(a: &Router) -> Visitor {
    let mut visitor = Visitor::default();
    visitor.post(a, "/ns/cart/a/1").await.assert_ok();
    visitor
}

/// A slow write on `b` of the visitor's session, held after its load: the handle of its reply.
async fn slow_write(b: &Router, visitor: &Visitor, gate: &Gate) -> tokio::task::JoinHandle<Reply> {
    let router = b.clone();
    let mut racer = visitor.clone();
    let handle = tokio::spawn(async move { racer.post(&router, "/slow/cart/late/2").await });
    gate.wait_loaded().await;
    handle
}

/// The request that ran into an ended session: `409`, the session-ended message.
fn assert_ended(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert!(reply.body.contains("session ended"), "{reply:?}");
}

/// A brand-new visitor still gets a new session.
async fn assert_new_sessions_work(db: &Db, a: &Router, ended: &str) {
    let mut visitor = Visitor::default();
    visitor.post(a, "/ns/cart/new/1").await.assert_ok();
    let id = id_of(&visitor);
    assert_ne!(id.to_string(), ended);
    assert!(db.data(&id).await.is_some(), "the new session is stored");
}

/// A logout on `a` between the load and the save of a slow write on `b`: the write answers
/// `409` and the session stays gone; its cookie then starts a new session.
async fn logout_during_a_slow_write(db: Db) {
    let gate = Arc::new(Gate::default());
    let (a, b) = (app(db.store().await, &gate), app(db.store().await, &gate));
    let mut visitor = signed_in(&a).await;
    let id = id_of(&visitor);

    let racer = slow_write(&b, &visitor, &gate).await;
    let logout = visitor.post(&a, "/logout").await;
    assert_eq!(logout.status, StatusCode::OK);
    gate.go.notify_one();
    assert_ended(&racer.await.expect("the slow write"));
    assert_eq!(db.data(&id).await, None, "the logged-out session came back");

    // The old cookie, kept by another tab: a new session, never the old one.
    let mut stale = Visitor {
        cookie: Some(format!("id={id}")),
    };
    stale.post(&a, "/ns/cart/b/2").await.assert_ok();
    assert_ne!(id_of(&stale), id);
    assert_eq!(db.data(&id).await, None);
    assert_new_sessions_work(&db, &a, &id.to_string()).await;
}

/// The other order: the slow write saves first, then the logout: the write is stored and then
/// deleted with the session, which never comes back.
async fn logout_after_a_slow_write(db: Db) {
    let gate = Arc::new(Gate::default());
    let (a, b) = (app(db.store().await, &gate), app(db.store().await, &gate));
    let mut visitor = signed_in(&a).await;
    let id = id_of(&visitor);

    let racer = slow_write(&b, &visitor, &gate).await;
    gate.go.notify_one();
    racer.await.expect("the slow write").assert_ok();
    let stored = db.record(&id).await.expect("the write is stored");
    assert_eq!(keys(&stored.data["cart"]), ["a", "late"]);
    visitor.post(&a, "/logout").await.assert_ok();
    assert_eq!(db.data(&id).await, None);

    let reply = visitor.get(&b, "/ns/cart").await;
    assert_eq!(reply.json(), serde_json::json!({}));
    assert_eq!(db.data(&id).await, None);
    assert_new_sessions_work(&db, &a, &id.to_string()).await;
}

/// `cycle_id` on `a` (a sign-in) while a slow write of the session runs on `b`: the data moves
/// to the new id, the write answers `409`, and the old id never comes back.
async fn cycled_id_during_a_slow_write(db: Db) {
    let gate = Arc::new(Gate::default());
    let (a, b) = (app(db.store().await, &gate), app(db.store().await, &gate));
    let mut visitor = signed_in(&a).await;
    let old = id_of(&visitor);

    let racer = slow_write(&b, &visitor, &gate).await;
    visitor.post(&a, "/cycle").await.assert_ok();
    let new = id_of(&visitor);
    assert_ne!(new, old);
    gate.go.notify_one();
    assert_ended(&racer.await.expect("the slow write"));

    assert_eq!(db.data(&old).await, None, "the old id came back");
    let stored = db.record(&new).await.expect("the new id is stored");
    assert_eq!(keys(&stored.data["cart"]), ["a"]);
    assert_eq!(db.ids().await, [new.to_string()]);
    visitor.post(&b, "/ns/cart/c/3").await.assert_ok();
    assert_eq!(id_of(&visitor), new);
    assert_new_sessions_work(&db, &a, &old.to_string()).await;
}

/// `user`, written through `Session` on one instance, and a cart write on the other, both
/// loaded before either saves, in either order of the saves: `user` ends as the direct write set
/// it and the cart holds its write. The second save merges, and tells what its request changed
/// by the versions stored with what it loaded: those stored with `user` = "grace" must be the
/// digest of "grace" (were they still that of the "ada" before it, the cart's request would
/// count `user` as changed and write its "grace" back over the direct write).
async fn direct_write_beside_a_namespace_write(db: Db) {
    for (slow, whole) in [
        ("/slow/cart/b/1", "/direct/user/ada"),
        ("/slow_direct/user/ada", "/ns/cart/b/1"),
    ] {
        let gate = Arc::new(Gate::default());
        let (a, b) = (app(db.store().await, &gate), app(db.store().await, &gate));
        let mut visitor = Visitor::default();
        visitor.post(&a, "/direct/user/ada").await.assert_ok();
        visitor.post(&a, "/direct/user/grace").await.assert_ok();

        let racer = tokio::spawn({
            let (b, mut visitor) = (b.clone(), visitor.clone());
            async move { visitor.post(&b, slow).await }
        });
        gate.wait_loaded().await;
        visitor.post(&a, whole).await.assert_ok();
        gate.go.notify_one();
        racer.await.expect("the slow request").assert_ok();

        let record = db.record(&id_of(&visitor)).await.expect("stored");
        assert_eq!(record.data["user"], "ada", "{slow} saved after {whole}");
        assert_eq!(
            keys(&record.data["cart"]),
            ["b"],
            "{slow} saved after {whole}"
        );
    }
}

on_both!(
    overlapping_writes_lose_nothing,
    logout_during_a_slow_write,
    logout_after_a_slow_write,
    cycled_id_during_a_slow_write,
    direct_write_beside_a_namespace_write,
);
