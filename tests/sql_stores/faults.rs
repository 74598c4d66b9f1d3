//! Store failures under the SQL stores, with the fault schedules of `tests/faults.rs`
//! (`faults/fault_store.rs` wraps the store): every store call of a request failed (before or
//! after reaching the database) or delayed in turn, a store failing every call, every third save
//! failing, random failures over a sequence of requests, overlapping writes through two
//! instances under random delays and failures, and the database gone (its pool closed). A request answered `200` is stored; a failure answers `500`
//! without the store's message; no namespace is ever half written; the next request succeeds.

use std::{collections::BTreeMap, time::Duration as StdDuration};

use axum::{
    http::{Method, StatusCode},
    Router,
};
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use tower_sessions::SessionStore;

use crate::{
    app,
    fault_store::{self, Fault, FaultStore, Jitter, Op, Pick, SECRET},
    id_of, keys, on_both, Db, Gate, Reply, Store, Visitor,
};

/// The request kinds faulted in turn: (method, path) after a session holding `cart.a` exists,
/// or for a new visitor.
const KINDS: [(&str, Method, &str, bool); 4] = [
    ("write", Method::POST, "/ns/cart/b/2", true),
    ("read", Method::GET, "/ns/cart", true),
    ("logout", Method::POST, "/logout", true),
    ("first write", Method::POST, "/ns/cart/b/2", false),
];

/// A failed request: `500`, and nothing of the store's error in the body.
fn assert_clear_failure(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{what}: {reply:?}"
    );
    assert!(
        !reply.body.contains(SECRET),
        "{what}: the store's message: {reply:?}"
    );
    assert!(!reply.body.contains("injected"), "{what}: {reply:?}");
}

/// The user keys of the visitor's stored `cart`, or `None` without a stored session.
async fn stored_cart(store: &Store, visitor: &Visitor) -> Option<Vec<String>> {
    cart_of(store, &visitor.session_id()?).await
}

/// The user keys of the `cart` stored under `id`, or `None` without a stored session.
async fn cart_of(store: &Store, id: &tower_sessions::session::Id) -> Option<Vec<String>> {
    let record = store.load(id).await.expect("load")?;
    Some(record.data.get("cart").map(keys).unwrap_or_default())
}

/// A visitor with `cart.a` stored, if `signed_in`.
async fn visitor_of(router: &Router, signed_in: bool) -> Visitor {
    let mut visitor = Visitor::default();
    if signed_in {
        visitor.post(router, "/ns/cart/a/1").await.assert_ok();
    }
    visitor
}

async fn every_store_call_faulted_in_turn(db: Db) {
    let store = db.store().await;
    let faulty = FaultStore::new(store.clone());
    let router = app(faulty.clone(), &Gate::default().into());
    for (kind, method, path, signed_in) in KINDS {
        // The calls of this kind of request, learned from a run without faults.
        let mut visitor = visitor_of(&router, signed_in).await;
        faulty.take_log();
        visitor.ok(&router, method.clone(), path).await;
        let calls = faulty.take_log();
        assert!(!calls.is_empty() || !signed_in, "{kind}: no store call");
        for (at, op) in calls.iter().enumerate() {
            let nth = calls[..=at].iter().filter(|other| *other == op).count() as u64;
            for fault in [
                Fault::Fail,
                Fault::FailAfter,
                Fault::Delay(StdDuration::from_millis(25)),
            ] {
                let what = format!("{kind}: {op:?} call {nth} {fault:?}");
                let mut visitor = visitor_of(&router, signed_in).await;
                let id = visitor.session_id();
                let before = stored_cart(&store, &visitor).await;
                faulty.set(*op, Pick::Calls(vec![nth]), fault);
                let reply = visitor.send(&router, method.clone(), path).await;
                faulty.heal();
                // The session the request ran on (a logout removes the cookie), or the new one.
                let after = match (&before, kind) {
                    (Some(_), _) | (None, "logout") => match id {
                        Some(id) => cart_of(&store, &id).await,
                        None => None,
                    },
                    _ => stored_cart(&store, &visitor).await,
                };
                let done = match kind {
                    "write" => Some(vec!["a".to_owned(), "b".to_owned()]),
                    "read" => before.clone(),
                    "logout" => None,
                    _ => Some(vec!["b".to_owned()]),
                };
                if reply.status == StatusCode::OK {
                    assert_eq!(after, done, "{what}: answered 200");
                } else {
                    assert_clear_failure(&reply, &what);
                    assert!(
                        after == before || after == done,
                        "{what}: stored {after:?}, neither {before:?} nor {done:?}"
                    );
                }
                if matches!(fault, Fault::Delay(_)) {
                    assert_eq!(reply.status, StatusCode::OK, "{what}: {reply:?}");
                }
                // The next request on the session succeeds.
                visitor.ok(&router, Method::POST, "/ns/cart/c/3").await;
                assert!(
                    stored_cart(&store, &visitor)
                        .await
                        .is_some_and(|cart| cart.contains(&"c".to_owned())),
                    "{what}: the next write"
                );
            }
        }
    }
}

/// A store that fails every call: requests that need it answer `500`; an anonymous read does
/// not need it.
async fn a_store_failing_every_call(db: Db) {
    let faulty = FaultStore::new(db.store().await);
    let router = app(faulty.clone(), &Gate::default().into());
    let mut visitor = visitor_of(&router, true).await;
    faulty.fail_everything();
    for (method, path) in [(Method::POST, "/ns/cart/b/2"), (Method::GET, "/ns/cart")] {
        let reply = visitor.send(&router, method.clone(), path).await;
        assert_clear_failure(&reply, &format!("{method} {path}"));
    }
    let mut anonymous = Visitor::default();
    let reply = anonymous.get(&router, "/ns/cart").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    assert!(faulty.injected() > 0);
}

/// Every third save fails: every write answered `200` is stored, whole; a write answered `500`
/// is stored whole or not at all.
async fn every_third_save_failing(db: Db) {
    let store = db.store().await;
    let faulty = FaultStore::new(store.clone());
    let router = app(faulty.clone(), &Gate::default().into());
    let mut visitor = visitor_of(&router, true).await;
    faulty.set(Op::Save, Pick::EveryNth(3), Fault::Fail);
    let mut answered = Vec::new();
    for i in 1..=30 {
        let reply = visitor.post(&router, &format!("/ns/log/k{i}/{i}")).await;
        if reply.status != StatusCode::OK {
            assert_clear_failure(&reply, &format!("write {i}"));
        }
        answered.push((i, reply.status));
    }
    faulty.heal();
    let record = store
        .load(&id_of(&visitor))
        .await
        .expect("load")
        .expect("the session");
    let log: &Value = &record.data["log"];
    for (i, status) in &answered {
        let value = &log[format!("k{i}")];
        if *status == StatusCode::OK {
            assert_eq!(value, &json!(i.to_string()), "write {i} answered 200");
        } else {
            assert!(
                value.is_null() || value == &json!(i.to_string()),
                "write {i}"
            );
        }
    }
    assert!(
        answered.iter().any(|(_, status)| *status != StatusCode::OK),
        "no save failed"
    );
}

/// 60 writes and reads of one visitor over 2 namespaces and 3 keys, with seeded random failures
/// of a fifth of the loads, creates and saves: after every request the stored namespaces are
/// exactly those of the requests answered `200`, and a read answered `200` shows them.
async fn random_faults_on_a_sequence(db: Db) {
    for seed in [3, 4] {
        let store = db.store().await;
        let faulty = FaultStore::new(store.clone());
        let router = app(faulty.clone(), &Gate::default().into());
        for (i, op) in [Op::Load, Op::Create, Op::Save].into_iter().enumerate() {
            let seed = seed ^ (i as u64) << 32;
            let per_mille = 200;
            faulty.set(op, Pick::Random { seed, per_mille }, Fault::Fail);
        }
        let mut visitor = Visitor::default();
        let mut model: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let (mut ok, mut failed) = (0, 0);
        for step in 0..60u64 {
            let roll = fault_store::mix(seed.wrapping_mul(31) ^ step);
            let ns = format!("n{}", roll % 2);
            let key = format!("k{}", (roll >> 8) % 3);
            let write = (roll >> 16) % 3 != 0;
            let what = format!(
                "seed {seed} step {step}: {} {ns}",
                ["read", "write"][usize::from(write)]
            );
            let reply = if write {
                visitor
                    .post(&router, &format!("/ns/{ns}/{key}/v{step}"))
                    .await
            } else {
                visitor.get(&router, &format!("/ns/{ns}")).await
            };
            if reply.status == StatusCode::OK {
                ok += 1;
                let namespace = model.entry(ns.clone()).or_default();
                if write {
                    namespace.insert(key, json!(format!("v{step}")));
                }
                let expected = Value::Object(namespace.clone().into_iter().collect());
                if namespace.is_empty() {
                    model.remove(&ns);
                }
                assert_eq!(reply.json(), expected, "{what}: the response");
            } else {
                failed += 1;
                assert_clear_failure(&reply, &what);
            }
            let stored = match visitor.session_id() {
                Some(id) => stored_namespaces(&store, &id).await,
                None => BTreeMap::new(),
            };
            assert_eq!(stored, model, "{what}: stored after a {}", reply.status);
        }
        assert!(ok > 20 && failed > 3, "{ok} answered 200, {failed} failed");
    }
}

/// The user keys and values of every namespace stored under `id`.
async fn stored_namespaces(
    store: &Store,
    id: &tower_sessions::session::Id,
) -> BTreeMap<String, BTreeMap<String, Value>> {
    let Some(record) = store.load(id).await.expect("a load without faults") else {
        return BTreeMap::new();
    };
    record
        .data
        .iter()
        .filter(|(key, _)| !key.starts_with("tower_sessions_controller"))
        .map(|(ns, namespace)| {
            let values = keys(namespace)
                .into_iter()
                .map(|key| {
                    let value = namespace[&key].clone();
                    (key, value)
                })
                .collect();
            (ns.clone(), values)
        })
        .collect()
}

/// The database gone (the pool closed): a write and a read answer `500`, and the store's error
/// names the failure without the connection string.
async fn the_database_gone(db: Db) {
    let pool = db.pool_of(2).await;
    let store = db.store_on(pool.clone()).await;
    let router = app(store.clone(), &Gate::default().into());
    let mut visitor = visitor_of(&router, true).await;
    pool.close().await;

    for (method, path) in [(Method::POST, "/ns/cart/b/2"), (Method::GET, "/ns/cart")] {
        let reply = visitor.send(&router, method.clone(), path).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
        assert!(!reply.body.contains("postgres://"), "{reply:?}");
    }
    let err = store
        .load(&id_of(&visitor))
        .await
        .expect_err("a closed pool");
    let message = err.to_string();
    assert!(message.contains("session store: load failed"), "{message}");
    assert!(
        !message.contains("postgres://") && !message.contains(".db"),
        "{message}"
    );
}

/// Overlapping writes of one session through two instances, with random delays on every load
/// and save and random failures of a tenth of them: every write answered `200` is stored, every
/// other answered `500`.
async fn overlapping_writes_under_faults(db: Db) {
    let store = db.store().await;
    let gate = Gate::default().into();
    let (a_store, b_store) = (
        FaultStore::new(store.clone()),
        FaultStore::new(db.store().await),
    );
    let (a, b) = (app(a_store.clone(), &gate), app(b_store.clone(), &gate));
    let visitor = visitor_of(&a, true).await;
    for (seed, faulty) in [(7, &a_store), (11, &b_store)] {
        for op in [Op::Load, Op::Save] {
            faulty.jitter(op, Jitter { seed, max_ms: 3 });
            faulty.set(
                op,
                Pick::Random {
                    seed: seed + 1,
                    per_mille: 100,
                },
                Fault::Fail,
            );
        }
    }
    let cookie = visitor.cookie.clone();
    let replies: Vec<(usize, Reply)> = stream::iter(0..96)
        .map(|i| {
            let router = if i % 2 == 0 { &a } else { &b };
            let mut visitor = Visitor {
                cookie: cookie.clone(),
            };
            async move {
                (
                    i,
                    visitor
                        .post(router, &format!("/ns/n{}/k{i}/{i}", i % 4))
                        .await,
                )
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    a_store.heal();
    b_store.heal();

    let record = store
        .load(&id_of(&visitor))
        .await
        .expect("load")
        .expect("the session");
    let mut failed = 0;
    for (i, reply) in &replies {
        let stored = &record
            .data
            .get(&format!("n{}", i % 4))
            .map(|ns| ns[format!("k{i}")].clone());
        if reply.status == StatusCode::OK {
            assert_eq!(
                stored,
                &Some(json!(i.to_string())),
                "write {i} answered 200"
            );
        } else {
            assert_clear_failure(reply, &format!("write {i}"));
            failed += 1;
        }
    }
    assert!(failed > 0, "no fault was injected");
    assert!(failed < replies.len(), "every write failed");
}

on_both!(
    overlapping_writes_under_faults,
    every_store_call_faulted_in_turn,
    a_store_failing_every_call,
    every_third_save_failing,
    random_faults_on_a_sequence,
    the_database_gone,
);
