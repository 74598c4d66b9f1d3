//! Expired rows: never loaded, never written back, removed by `delete_expired` (and only they);
//! an id held by an expired row is free for a new session. A record that cannot be decoded reads
//! as no session.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower_sessions::{session::Record, SessionStore};

use crate::{app, id_of, on_both, Db, Gate, Logs, Visitor};

/// An expired session reads as none, and a write with its cookie makes a new session: the
/// expired row is left as it was.
async fn an_expired_row_is_neither_loaded_nor_written_back(db: Db) {
    let store = db.store().await;
    let router = app(store.clone(), &Gate::default().into());
    let mut visitor = Visitor::default();
    visitor.post(&router, "/ns/cart/a/1").await.assert_ok();
    let id = id_of(&visitor);
    db.expire(&id).await;
    let expired = db.data(&id).await;

    assert_eq!(store.load(&id).await.expect("load"), None);
    let reply = visitor.get(&router, "/ns/cart").await;
    assert_eq!(reply.json(), json!({}));
    visitor.post(&router, "/ns/cart/b/2").await.assert_ok();
    assert_ne!(id_of(&visitor), id, "a new session");
    assert_eq!(db.data(&id).await, expired, "the expired row is untouched");
}

/// A session that expires between a slow write's load and its save: the write answers `409`
/// and the expired row is never written back.
async fn a_session_expiring_during_a_write_is_not_written_back(db: Db) {
    let gate = Arc::new(Gate::default());
    let router = app(db.store().await, &gate);
    let mut visitor = Visitor::default();
    visitor.post(&router, "/ns/cart/a/1").await.assert_ok();
    let id = id_of(&visitor);

    let racer = {
        let router = router.clone();
        let mut racer = visitor.clone();
        tokio::spawn(async move { racer.post(&router, "/slow/cart/late/2").await })
    };
    gate.wait_loaded().await;
    db.expire(&id).await;
    let expired = db.data(&id).await;
    gate.go.notify_one();
    let reply = racer.await.expect("the slow write");
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    // The ended session's row may be deleted with its cookie; it is never written.
    let now = db.data(&id).await;
    assert!(
        now.is_none() || now == expired,
        "the expired row was written"
    );
}

/// `delete_expired` removes the expired rows, whoever wrote them, and only them.
async fn delete_expired_removes_only_expired_rows(db: Db) {
    let store = db.store().await;
    let legacy = db.legacy().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let mut record = Record {
            id: Default::default(),
            data: [("n".to_owned(), json!(n))].into_iter().collect(),
            expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
        };
        if n % 2 == 0 {
            store.create(&mut record).await.expect("create");
        } else {
            legacy.create(&mut record).await.expect("create");
        }
        ids.push(record.id);
    }
    db.expire(&ids[0]).await;
    db.expire(&ids[1]).await;

    store.delete_expired().await.expect("delete_expired");
    let mut live = vec![ids[2].to_string(), ids[3].to_string()];
    live.sort();
    assert_eq!(db.ids().await, live);
}

/// A new session may take an id whose row expired: the row is replaced in one statement.
async fn an_expired_id_is_free_for_a_new_session(db: Db) {
    let store = db.store().await;
    let mut old = Record {
        id: Default::default(),
        data: [("user".to_owned(), json!("ada"))].into_iter().collect(),
        expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
    };
    store.create(&mut old).await.expect("create");
    let mut taken = Record {
        data: [("user".to_owned(), json!("eve"))].into_iter().collect(),
        ..old.clone()
    };
    store.create(&mut taken).await.expect("create");
    assert_ne!(taken.id, old.id, "a live id is never taken");

    db.expire(&old.id).await;
    let mut new = Record {
        data: [("user".to_owned(), json!("bob"))].into_iter().collect(),
        ..old.clone()
    };
    store.create(&mut new).await.expect("create");
    assert_eq!(new.id, old.id, "the expired row's id is free");
    let loaded = store.load(&old.id).await.expect("load").expect("stored");
    assert_eq!(loaded.data["user"], json!("bob"));
}

/// A row whose data is not a record reads as no session, logged at `WARN`; the visitor's next
/// write starts a new session.
async fn an_undecodable_record_reads_as_a_new_session(db: Db) {
    let router = app(db.store().await, &Gate::default().into());
    let mut visitor = Visitor::default();
    visitor.post(&router, "/ns/cart/a/1").await.assert_ok();
    let id = id_of(&visitor);
    db.set_data(&id, b"\xc1 not a record").await;

    let (logs, guard) = Logs::capture();
    let reply = visitor.get(&router, "/ns/cart").await;
    drop(guard);
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({}));
    let warnings = logs.lines_at("WARN");
    assert!(
        warnings
            .iter()
            .any(|line| line.contains("cannot be decoded") && line.contains(&id.to_string())),
        "{}",
        logs.text()
    );
    visitor.post(&router, "/ns/cart/b/2").await.assert_ok();
    assert_ne!(id_of(&visitor), id);
}

on_both!(
    an_expired_row_is_neither_loaded_nor_written_back,
    a_session_expiring_during_a_write_is_not_written_back,
    delete_expired_removes_only_expired_rows,
    an_expired_id_is_free_for_a_new_session,
    an_undecodable_record_reads_as_a_new_session,
);
