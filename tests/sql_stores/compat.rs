//! The switch between tower-sessions-sqlx-store's stores and the crate's, both ways: same
//! table, same encoding, so a visitor stays logged in.

use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower_sessions::{
    session::{Id, Record},
    SessionStore,
};

use crate::{app, id_of, keys, on_both, Db, Gate, Visitor};

fn record(user: &str) -> Record {
    Record {
        id: Id::default(),
        data: [("user".to_owned(), json!(user))].into_iter().collect(),
        expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
    }
}

/// Records stored by either store load through the other, unchanged.
async fn records_cross_both_ways(db: Db) {
    let ours = db.store().await;
    let theirs = db.legacy().await;

    let mut written = record("ada");
    theirs.create(&mut written).await.expect("create");
    let loaded = ours.load(&written.id).await.expect("load").expect("found");
    assert_eq!(loaded.data["user"], json!("ada"));
    assert_eq!(loaded.expiry_date, written.expiry_date);

    let mut written = record("bob");
    ours.create(&mut written).await.expect("create");
    let loaded = theirs
        .load(&written.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded.data["user"], json!("bob"));
    assert_eq!(loaded.expiry_date, written.expiry_date);
    assert_eq!(db.ids().await.len(), 2);
}

/// An app that switches stores keeps its visitors and their namespaces, in both directions.
async fn an_app_switches_and_its_visitors_stay(db: Db) {
    let gate = Gate::default().into();
    let before = app(db.legacy().await, &gate);
    let after = app(db.store().await, &gate);

    let mut visitor = Visitor::default();
    visitor.post(&before, "/ns/cart/apple/1").await.assert_ok();
    let id = id_of(&visitor);
    let reply = visitor.get(&after, "/ns/cart").await;
    assert_eq!(
        reply.json(),
        json!({ "apple": "1" }),
        "the old store's session"
    );
    visitor.post(&after, "/ns/cart/pear/2").await.assert_ok();
    assert_eq!(id_of(&visitor), id, "the same session");

    // And back again.
    let reply = visitor.get(&before, "/ns/cart").await;
    assert_eq!(reply.json(), json!({ "apple": "1", "pear": "2" }));
    visitor.post(&before, "/ns/cart/plum/3").await.assert_ok();
    let reply = visitor.get(&after, "/ns/cart").await;
    assert_eq!(
        reply.json(),
        json!({ "apple": "1", "pear": "2", "plum": "3" })
    );
    assert_eq!(id_of(&visitor), id);
    let stored = db.record(&id).await.expect("one row");
    assert_eq!(keys(&stored.data["cart"]), ["apple", "pear", "plum"]);
    assert_eq!(db.ids().await, [id.to_string()]);
}

on_both!(
    records_cross_both_ways,
    an_app_switches_and_its_visitors_stay
);
