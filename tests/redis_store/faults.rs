//! The fault schedules of `tests/faults.rs` on `stores::RedisStore`, behind the same
//! fault-injecting wrapper (`faults/fault_store.rs`): every write answered `200` is stored, and a
//! write whose record vanished between its load and its save answers an error and stores
//! nothing (with tower-sessions-redis-store it answers `200` and is lost: the `#[ignore]`d
//! limitation test there).

use std::collections::HashMap;

use axum::{
    extract::Path,
    http::{Method, StatusCode},
    routing::post,
    Router,
};
use futures::{stream, StreamExt};
use serde_json::json;
use tower_sessions::SessionStore;
use tower_sessions_controller::{Error, SessionControllers};

use crate::{
    app, assert_session_ended,
    fault_store::{Fault, FaultStore, Jitter, Op, Pick, SECRET},
    on_redis, routes, send, stored_keys, Gate, Reply, Visitor,
};

/// The namespace request `i` inserts into, and the one it removes from.
fn overlap_namespaces(i: usize) -> (String, String) {
    (format!("ns{}", i % 4), format!("ns{}", (i + 1) % 4))
}

/// POST /seed/{n}: key `r{i}` into namespace `ns{(i + 1) % 4}` for every `i < n`.
async fn seed_many(
    Path(n): Path<usize>,
    controllers: SessionControllers,
) -> Result<&'static str, Error> {
    for i in 0..n {
        let (_, from) = overlap_namespaces(i);
        controllers.open(&from).await?.insert(&format!("r{i}"), i)?;
    }
    Ok("seeded")
}

/// POST /overlap/{i}: inserts `a{i}` into one namespace and removes `r{i}` from another.
async fn overlap(
    Path(i): Path<usize>,
    controllers: SessionControllers,
) -> Result<&'static str, Error> {
    let (into, from) = overlap_namespaces(i);
    controllers.open(&into).await?.insert(&format!("a{i}"), i)?;
    controllers.open(&from).await?.remove(&format!("r{i}"));
    Ok("done")
}

fn fault_routes() -> Router {
    routes(Gate::default())
        .route("/seed/{n}", post(seed_many))
        .route("/overlap/{i}", post(overlap))
}

/// Checks a `500` caused by an injected fault: a body that says the store failed (or nothing,
/// as tower-sessions answers a failed save), none of the injected error's words, no cookie.
fn assert_store_failure(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{what}: {reply:?}"
    );
    assert!(
        reply.body == "session store unavailable" || reply.body.is_empty(),
        "{what}: {:?}",
        reply.body
    );
    for word in [SECRET, "hunter2", "injected"] {
        assert!(!reply.body.contains(word), "{what}: leaks {:?}", reply.body);
    }
    assert_eq!(reply.set_cookie, None, "{what}");
}

#[tokio::test]
async fn a_write_across_a_vanishing_record_answers_an_error_and_stores_nothing() {
    on_redis(
        "faults::a_write_across_a_vanishing_record_answers_an_error_and_stores_nothing",
        |shared| async move {
            let store = FaultStore::new(shared.a.clone());
            let gate = Gate::default();
            let router = app(routes(gate.clone()), store.clone());
            let mut visitor = Visitor::default();
            visitor.post(&router, "/ns/cart/a/1").await.assert_ok();
            let id = visitor.session_id().expect("a session");

            // The write loads the session and stops before its save; meanwhile the record goes
            // (evicted, expired, lost with a Redis restart, or a logout).
            let mut writer = visitor.clone();
            let write = tokio::spawn({
                let router = router.clone();
                async move { writer.post(&router, "/gated/cart/b/2").await }
            });
            gate.entered.notified().await;
            store.inner.delete(&id).await.expect("delete");
            gate.release.notify_one();
            let reply = write.await.expect("the write");
            assert_session_ended(&reply, "a write across a vanishing record");
            assert!(
                store.inner.load(&id).await.expect("load").is_none(),
                "the vanished record was written back"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn a_write_across_another_save_is_merged_into_it() {
    on_redis(
        "faults::a_write_across_another_save_is_merged_into_it",
        |shared| async move {
            let store = FaultStore::new(shared.a.clone());
            let gate = Gate::default();
            let router = app(routes(gate.clone()), store.clone());
            let other = app(routes(Gate::default()), shared.b.clone());
            let mut visitor = Visitor::default();
            visitor.post(&router, "/ns/cart/a/1").await.assert_ok();
            let id = visitor.session_id().expect("a session");

            // Another instance saves between the write's load and its save.
            let mut writer = visitor.clone();
            let write = tokio::spawn({
                let router = router.clone();
                async move { writer.post(&router, "/gated/cart/b/2").await }
            });
            gate.entered.notified().await;
            visitor.post(&other, "/ns/cart/c/3").await.assert_ok();
            gate.release.notify_one();
            write.await.expect("the write").assert_ok();
            assert_eq!(
                stored_keys(&store.inner, &id, "cart").await,
                ["a", "b", "c"]
            );
        },
    )
    .await;
}

/// A write of a stored session makes two saves: the controller layer's flush saves the session
/// itself (the compare-and-set), and the session manager's save after it finds nothing left to
/// store and sends nothing to Redis (the fault store passes that one through: no fault can hit
/// it). Faults are injected on the first, the one that reaches Redis.
#[tokio::test]
async fn every_third_save_failing_loses_exactly_those_writes() {
    on_redis(
        "faults::every_third_save_failing_loses_exactly_those_writes",
        |shared| async move {
            let store = FaultStore::new(shared.a.clone());
            let router = app(routes(Gate::default()), store.clone());
            let mut visitor = Visitor::default();
            visitor.post(&router, "/ns/other/x/1").await.assert_ok();
            visitor.post(&router, "/ns/other/y/2").await.assert_ok();
            let log = store.take_log();
            assert_eq!(log[log.len() - 2..], [Op::Load, Op::Save]);

            // The flush's save of every third write fails.
            let failing: Vec<u64> = (1..=30u64).filter(|i| i % 3 == 0).collect();
            store.set(Op::Save, Pick::Calls(failing), Fault::Fail);
            for i in 1..=30 {
                let reply = visitor.post(&router, &format!("/ns/log/k{i}/{i}")).await;
                let what = format!("write {i}");
                if i % 3 == 0 {
                    assert_store_failure(&reply, &what);
                } else {
                    assert_eq!(reply.status, StatusCode::OK, "{what}: {reply:?}");
                }
            }
            store.heal();
            let id = visitor.session_id().expect("a session");
            let mut expected: Vec<String> = (1..=30)
                .filter(|i| i % 3 != 0)
                .map(|i| format!("k{i}"))
                .collect();
            expected.sort();
            assert_eq!(stored_keys(&store.inner, &id, "log").await, expected);
            assert_eq!(store.injected(), 10);
        },
    )
    .await;
}

/// Overlapping requests.
const OVERLAP_REQUESTS: usize = 96;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;

/// `OVERLAP_REQUESTS` requests on one session, `IN_FLIGHT` at a time; every store call waits a
/// random 0 to 4 ms, and some loads, saves and creates fail. Request `i` inserts `a{i}` into one
/// namespace and removes `r{i}` from another. Every request answered `200` has both changes in
/// the final record, and every request has both or neither. (A `500` may have both: the faults
/// here also hit the session manager's save after the flush's, which on this store writes
/// nothing, so the flush's save had stored the request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_requests_with_faults_and_delays_lose_no_update() {
    on_redis(
        "faults::overlapping_requests_with_faults_and_delays_lose_no_update",
        |shared| async move {
            for seed in [21, 22] {
                let store = FaultStore::new(shared.a.clone());
                let router = app(fault_routes(), store.clone());
                let mut visitor = Visitor::default();
                visitor
                    .ok(&router, Method::POST, &format!("/seed/{OVERLAP_REQUESTS}"))
                    .await;
                let cookie = visitor.cookie.clone().expect("a session");
                for (i, op) in Op::ALL.into_iter().enumerate() {
                    let seed = seed ^ (i as u64) << 40;
                    store.jitter(op, Jitter { seed, max_ms: 4 });
                }
                for (op, per_mille, salt) in
                    [(Op::Load, 100, 0), (Op::Save, 150, 1), (Op::Create, 100, 2)]
                {
                    let seed = seed + salt;
                    store.set(op, Pick::Random { seed, per_mille }, Fault::Fail);
                }

                let statuses: HashMap<usize, StatusCode> = stream::iter(0..OVERLAP_REQUESTS)
                    .map(|i| {
                        let (router, cookie) = (&router, cookie.as_str());
                        async move {
                            let reply =
                                send(router, Some(cookie), Method::POST, &format!("/overlap/{i}"))
                                    .await;
                            if reply.status != StatusCode::OK {
                                assert_store_failure(&reply, &format!("overlap {i}"));
                            }
                            (i, reply.status)
                        }
                    })
                    .buffer_unordered(IN_FLIGHT)
                    .collect()
                    .await;
                store.heal();

                let id = visitor.session_id().expect("a session");
                let record = store.inner.load(&id).await.expect("load").expect("stored");
                let has = |ns: &str, key: &str| {
                    record
                        .data
                        .get(ns)
                        .and_then(|namespace| namespace.get(key))
                        .is_some()
                };
                let mut wrong = Vec::new();
                let mut ok = 0;
                for (i, status) in &statuses {
                    let (into, from) = overlap_namespaces(*i);
                    let inserted = has(&into, &format!("a{i}"));
                    let removed = !has(&from, &format!("r{i}"));
                    let as_answered = if *status == StatusCode::OK {
                        ok += 1;
                        inserted && removed
                    } else {
                        inserted == removed
                    };
                    if !as_answered {
                        wrong.push(json!([i, status.as_u16(), inserted, removed]));
                    }
                }
                assert!(
                    ok > 0 && ok < OVERLAP_REQUESTS,
                    "seed {seed}: {ok} answered 200"
                );
                assert!(
                    wrong.is_empty(),
                    "seed {seed}: requests not as answered ([i, status, inserted, removed]): \
                     {wrong:?}"
                );
            }
        },
    )
    .await;
}
