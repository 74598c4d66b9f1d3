//! Sessions: each visitor sees only its own namespaces, and tower-sessions' own operations work
//! on them: `cycle_id` keeps every namespace with its stamp under the new id, `flush` removes
//! them all, and a namespace written before a flush in the same request is gone with it.

use serde_json::{json, Value};
use time::Duration;
use tower_sessions::session::Id;

use crate::{
    app, insert_value, insert_value_for, read_ns,
    support::{instant, user_keys, Calls, TestApp, START},
};

#[tokio::test]
async fn two_visitors_never_see_each_others_namespaces() {
    let mut alice = app();
    let mut bob = alice.visitor();
    insert_value(&mut alice, "ns", "who", "\"alice\"").await;

    let bob_reads = read_ns(&mut bob, "ns").await;
    assert_eq!(bob_reads["data"], json!({}));
    assert!(bob.visitor.cookie.is_none(), "reading gave bob no session");

    insert_value(&mut bob, "ns", "who", "\"bob\"").await;
    assert_eq!(
        read_ns(&mut alice, "ns").await["data"],
        json!({ "who": "alice" })
    );
    assert_eq!(
        read_ns(&mut bob, "ns").await["data"],
        json!({ "who": "bob" })
    );
    assert_ne!(alice.session_id(), bob.session_id());
    assert_eq!(
        user_keys(&alice.stored("ns").await.unwrap())["who"],
        "alice"
    );
    assert_eq!(user_keys(&bob.stored("ns").await.unwrap())["who"], "bob");
}

/// A record's data read straight from the wrapped store, by id (whatever the cookie says).
async fn load_by_id(app: &TestApp, id: &Id) -> Option<Value> {
    app.record_by_id(id).await.map(|record| json!(record.data))
}

// ---------------------------------------------------------------------------------------------
// tower-sessions' own session operations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cycling_the_session_id_keeps_every_namespace_with_its_stamp() {
    let mut app = app();
    insert_value_for(&mut app, "short", 60, "a", "1").await;
    app.post("/cart/apple").await.assert_ok();
    app.clock.advance(Duration::seconds(20));
    let old_id = app.session_id().expect("session id");
    let before = app.record().await.expect("session stored").data;
    app.store.take_calls();

    let reply = app.post("/cycle").await;
    reply.assert_ok();

    assert!(reply.set_cookie.is_some(), "the new id is sent");
    let new_id = app.session_id().expect("session id");
    assert_ne!(new_id, old_id);
    assert_eq!(app.record().await.expect("session kept").data, before);
    assert_eq!(load_by_id(&app, &old_id).await, None);
    app.assert_calls(Calls {
        load: 1,
        create: 1,
        delete: 1,
        ..Calls::NONE
    });
    let short = read_ns(&mut app, "short").await;
    assert_eq!(short["data"], json!({ "a": 1 }));
    assert_eq!(instant(&short["expires_at"]), START + Duration::seconds(60));
}

#[tokio::test]
async fn flushing_the_session_removes_every_namespace() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    app.post("/cart/apple").await.assert_ok();
    let old_id = app.session_id().expect("session id");
    app.store.take_calls();

    let reply = app.post("/flush").await;
    reply.assert_ok();

    let cookie = reply.set_cookie.expect("a removal cookie");
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    assert!(app.visitor.cookie.is_none());
    assert_eq!(load_by_id(&app, &old_id).await, None);
    // `Session::flush` clears without loading.
    app.assert_calls(Calls {
        delete: 1,
        ..Calls::NONE
    });
    assert_eq!(read_ns(&mut app, "ns").await["data"], json!({}));
    assert_eq!(
        app.get("/cart").await.json()["value"],
        json!({ "items": [] })
    );
}

#[tokio::test]
async fn namespace_written_before_a_flush_in_the_same_request_does_not_survive_it() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;
    let old_id = app.session_id().expect("session id");
    app.store.take_calls();

    let reply = app.post("/write_then_flush").await;
    reply.assert_ok();

    // The flush came last: the session is gone, and so is its cookie.
    assert_eq!(load_by_id(&app, &old_id).await, None);
    assert!(
        app.visitor.cookie.is_none(),
        "Set-Cookie: {:?}",
        reply.set_cookie
    );
    app.assert_calls(Calls {
        load: 1,
        delete: 1,
        ..Calls::NONE
    });
}

#[tokio::test]
async fn namespace_opened_after_a_flush_in_the_same_request_lands_in_the_new_session() {
    let mut app = app();
    insert_value(&mut app, "ns", "a", "1").await;

    let reply = app.post("/flush_then_write").await;
    reply.assert_ok();

    // tower-sessions' `flush` keeps the record's id, and `MemoryStore::create` reuses it once the
    // old record is deleted: what matters is what the id now holds.
    let new_id = app.session_id().expect("a cookie for the new session");
    let record = load_by_id(&app, &new_id)
        .await
        .expect("the new session is stored");
    assert_eq!(record["notes"]["bye"], json!(true));
    assert_eq!(
        record.get("ns"),
        None,
        "the old session's data came back: {record}"
    );
}
