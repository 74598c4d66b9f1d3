//! The behaviour suite: one body per behaviour, generic over the store. `behaviour_suite!` in
//! `main.rs` runs each once per store.

use axum::http::StatusCode;
use serde_json::{json, Value};
use time::Duration;
use tower_sessions::SessionStore;
use tower_sessions_controller::{DEFAULT_EXPIRY, STAMP_KEY};

use crate::{
    assert_stamp, routes, store_raw, stored, user_keys, Calls, CountingStore, Instance, Reported,
    Visitor, START,
};

/// Values written in one request come back in later ones, through the cookie.
pub async fn write_then_read_back<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    let reply = visitor.post(&app.router, "/ns/prefs/theme/dark").await;
    assert_eq!(reply.data(), json!({ "theme": "dark" }));
    assert!(visitor.cookie.is_some(), "a write gives a cookie");
    let reply = visitor.post(&app.router, "/ns/prefs/size/3").await;
    assert_eq!(reply.data(), json!({ "theme": "dark", "size": 3 }));

    let reply = visitor.get(&app.router, "/ns/prefs").await;
    assert_eq!(reply.data(), json!({ "theme": "dark", "size": 3 }));
    assert_eq!(reply.expires_at(), Some(START + DEFAULT_EXPIRY));

    let namespace = stored(&store.inner, &visitor, "prefs")
        .await
        .expect("namespace stored");
    assert_eq!(user_keys(&namespace), json!({ "theme": "dark", "size": 3 }));
    assert_stamp(&namespace, START + DEFAULT_EXPIRY);

    // Another browser has no cookie, so none of it.
    let mut stranger = Visitor::default();
    let reply = stranger.get(&app.router, "/ns/prefs").await;
    assert_eq!(reply.data(), json!({}));
    assert_eq!(reply.set_cookie, None);
}

/// A `Keyed<T>` is stored in the seed's layout and read back as the same `T`.
pub async fn typed_round_trip<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    assert_eq!(
        visitor.post(&app.router, "/cart/apple").await.data(),
        json!(["apple"])
    );
    assert_eq!(
        visitor.post(&app.router, "/cart/pear").await.data(),
        json!(["apple", "pear"])
    );
    let reply = visitor.get(&app.router, "/cart").await;
    assert_eq!(reply.data(), json!(["apple", "pear"]));
    assert_eq!(reply.expires_at(), Some(START + DEFAULT_EXPIRY));

    let namespace = stored(&store.inner, &visitor, "cart")
        .await
        .expect("cart stored");
    assert_eq!(user_keys(&namespace), json!({ "items": ["apple", "pear"] }));
    assert_stamp(&namespace, START + DEFAULT_EXPIRY);
}

/// A write slides the stamp to now + expiry; a read leaves it, in the store too.
pub async fn stamp_slides_on_write_not_on_read<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    let reply = visitor.post(&app.router, "/ns/prefs/theme/dark").await;
    assert_eq!(reply.expires_at(), Some(START + DEFAULT_EXPIRY));
    visitor.post(&app.router, "/cart/apple").await.data();

    app.clock.advance(Duration::minutes(2));
    let reply = visitor.get(&app.router, "/ns/prefs").await;
    assert_eq!(reply.expires_at(), Some(START + DEFAULT_EXPIRY), "a read");
    let reply = visitor.get(&app.router, "/cart").await;
    assert_eq!(
        reply.expires_at(),
        Some(START + DEFAULT_EXPIRY),
        "a typed read"
    );
    let prefs = stored(&store.inner, &visitor, "prefs")
        .await
        .expect("prefs");
    assert_stamp(&prefs, START + DEFAULT_EXPIRY);
    let cart = stored(&store.inner, &visitor, "cart").await.expect("cart");
    assert_stamp(&cart, START + DEFAULT_EXPIRY);

    let moved = START + Duration::minutes(2) + DEFAULT_EXPIRY;
    let reply = visitor.post(&app.router, "/ns/prefs/theme/light").await;
    assert_eq!(reply.expires_at(), Some(moved), "a write");
    let reply = visitor.post(&app.router, "/cart/pear").await;
    assert_eq!(reply.expires_at(), Some(moved), "a typed write");
    let prefs = stored(&store.inner, &visitor, "prefs")
        .await
        .expect("prefs");
    assert_stamp(&prefs, moved);
    let cart = stored(&store.inner, &visitor, "cart").await.expect("cart");
    assert_stamp(&cart, moved);
}

/// Alive until its stamp; opened at the stamp, the namespace is empty and its drop is saved,
/// though the request only read. Another namespace of the session is untouched.
pub async fn expired_namespace_dropped_on_open<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();
    let stamp = START + DEFAULT_EXPIRY;

    visitor.post(&app.router, "/ns/wizard/step/2").await.data();
    visitor.post(&app.router, "/cart/apple").await.data();
    app.clock.set(START + Duration::minutes(4));
    visitor.post(&app.router, "/ns/keep/x/1").await.data();

    app.clock.set(stamp - Duration::seconds(1));
    let reply = visitor.get(&app.router, "/ns/wizard").await;
    assert_eq!(reply.data(), json!({ "step": 2 }), "alive before its stamp");
    assert_eq!(
        visitor.get(&app.router, "/cart").await.data(),
        json!(["apple"])
    );

    app.clock.set(stamp);
    store.take_calls();
    let reply = visitor.get(&app.router, "/ns/wizard").await;
    assert_eq!(reply.data(), json!({}), "expired at its stamp");
    assert_eq!(reply.expires_at(), None);
    // One save; under a merging store two calls, the session manager's after the flush's own
    // storing nothing (the record below shows what was stored).
    assert_ne!(store.take_calls().save, 0, "the drop is saved");
    let reply = visitor.get(&app.router, "/cart").await;
    assert_eq!(reply.data(), json!([]), "the typed namespace too");

    let record = crate::record(&store.inner, &visitor)
        .await
        .expect("the session is still stored");
    assert!(!record.data.contains_key("wizard"), "dropped: {record:?}");
    assert!(!record.data.contains_key("cart"), "dropped: {record:?}");
    assert_eq!(user_keys(&record.data["keep"]), json!({ "x": 1 }));
    let reply = visitor.get(&app.router, "/ns/keep").await;
    assert_eq!(reply.data(), json!({ "x": 1 }), "its own stamp is later");
}

/// A write in the request that finds the namespace expired starts a fresh one, which persists.
pub async fn write_after_expiry_persists<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    visitor.post(&app.router, "/ns/wizard/step/1").await.data();
    visitor.post(&app.router, "/ns/wizard/old/x").await.data();
    visitor.post(&app.router, "/cart/apple").await.data();

    let later = START + Duration::minutes(6);
    app.clock.set(later);
    let reply = visitor.post(&app.router, "/ns/wizard/step/2").await;
    assert_eq!(reply.data(), json!({ "step": 2 }), "the old keys are gone");
    assert_eq!(reply.expires_at(), Some(later + DEFAULT_EXPIRY));
    let reply = visitor.post(&app.router, "/cart/pear").await;
    assert_eq!(reply.data(), json!(["pear"]));

    let wizard = stored(&store.inner, &visitor, "wizard")
        .await
        .expect("written");
    assert_eq!(user_keys(&wizard), json!({ "step": 2 }));
    assert_stamp(&wizard, later + DEFAULT_EXPIRY);
    let cart = stored(&store.inner, &visitor, "cart")
        .await
        .expect("written");
    assert_eq!(user_keys(&cart), json!({ "items": ["pear"] }));

    let reply = visitor.get(&app.router, "/ns/wizard").await;
    assert_eq!(reply.data(), json!({ "step": 2 }));
}

/// Removing keys one by one: the last removal takes the namespace out of the stored session.
pub async fn removing_last_key_removes_namespace<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    visitor.post(&app.router, "/ns/keep/x/1").await.data();
    visitor.post(&app.router, "/ns/list/a/1").await.data();
    visitor.post(&app.router, "/ns/list/b/2").await.data();

    let reply = visitor.delete(&app.router, "/ns/list/a").await;
    assert_eq!(reply.data(), json!({ "b": 2 }));
    let list = stored(&store.inner, &visitor, "list")
        .await
        .expect("one key left");
    assert_eq!(user_keys(&list), json!({ "b": 2 }));

    let reply = visitor.delete(&app.router, "/ns/list/b").await;
    assert_eq!(reply.data(), json!({}));
    assert_eq!(reply.expires_at(), None);
    let record = crate::record(&store.inner, &visitor)
        .await
        .expect("the session is still stored");
    assert!(!record.data.contains_key("list"), "removed: {record:?}");
    assert!(record.data.contains_key("keep"), "untouched: {record:?}");
    assert_eq!(visitor.get(&app.router, "/ns/list").await.data(), json!({}));
}

/// A purge removes the namespace, runtime or typed; purging the session's only namespace leaves
/// the stored session empty.
pub async fn purge_removes_namespace<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    visitor.post(&app.router, "/ns/keep/x/1").await.data();
    visitor.post(&app.router, "/ns/list/a/1").await.data();
    visitor.post(&app.router, "/ns/list/b/2").await.data();
    visitor.post(&app.router, "/cart/apple").await.data();

    let reply = visitor.delete(&app.router, "/ns/list").await;
    assert_eq!(reply.data(), json!({}));
    let reply = visitor.delete(&app.router, "/cart").await;
    assert_eq!(reply.data(), json!([]));
    assert_eq!(reply.expires_at(), None);
    let record = crate::record(&store.inner, &visitor)
        .await
        .expect("the session is still stored");
    assert!(!record.data.contains_key("list"), "purged: {record:?}");
    assert!(!record.data.contains_key("cart"), "purged: {record:?}");
    assert_eq!(user_keys(&record.data["keep"]), json!({ "x": 1 }));
    assert_eq!(visitor.get(&app.router, "/ns/list").await.data(), json!({}));

    // The only namespace: the stored session is left without it (tower-sessions 0.14 keeps a
    // session that has an id, and its cookie, even when it holds no data).
    let mut alone = Visitor::default();
    alone.post(&app.router, "/ns/list/a/1").await.data();
    let reply = alone.delete(&app.router, "/ns/list").await;
    assert_eq!(reply.data(), json!({}));
    let record = crate::record(&store.inner, &alone)
        .await
        .expect("the session is still stored");
    assert!(!record.data.contains_key("list"), "purged: {record:?}");
    assert_eq!(alone.get(&app.router, "/ns/list").await.data(), json!({}));
}

/// A request that only reads live namespaces costs one load and no write, and gives an
/// anonymous visitor no cookie.
pub async fn read_only_request_saves_nothing<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    visitor
        .post(&app.router, "/ns/prefs/theme/dark")
        .await
        .data();
    visitor.post(&app.router, "/cart/apple").await.data();
    store.take_calls();

    app.clock.advance(Duration::minutes(1));
    let reply = visitor.get(&app.router, "/ns/prefs").await;
    assert_eq!(reply.data(), json!({ "theme": "dark" }));
    assert_eq!(reply.set_cookie, None);
    let reply = visitor.get(&app.router, "/cart").await;
    assert_eq!(reply.data(), json!(["apple"]));
    assert_eq!(reply.set_cookie, None);
    assert_eq!(
        store.take_calls(),
        Calls {
            load: 2,
            ..Calls::default()
        },
        "two reads: two loads, nothing written"
    );

    let mut anonymous = Visitor::default();
    let reply = anonymous.get(&app.router, "/ns/prefs").await;
    assert_eq!(reply.data(), json!({}));
    assert_eq!(reply.set_cookie, None);
    let reply = anonymous.get(&app.router, "/cart").await;
    assert_eq!(reply.data(), json!([]));
    assert_eq!(reply.set_cookie, None);
    assert_eq!(
        store.take_calls(),
        Calls::default(),
        "no cookie: no store call"
    );
}

/// A layer between the session manager and the controller layer that writes to the session after
/// the controller layer's flush: its write is stored, and so is the namespace's, at every request
/// (under a merging store the flush saves first, and the session manager's save after it finds
/// the session changed since and merges what changed).
pub async fn write_after_the_flush_is_stored<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::with_a_late_write(routes(), store.clone());
    let mut visitor = Visitor::default();

    for (path, expected) in [
        ("/ns/prefs/theme/dark", json!({ "theme": "dark" })),
        ("/ns/prefs/size/3", json!({ "theme": "dark", "size": 3 })),
        ("/ns/prefs/size/4", json!({ "theme": "dark", "size": 4 })),
    ] {
        let reply = visitor.post(&app.router, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        assert_eq!(
            stored(&store.inner, &visitor, "late").await,
            Some(json!(path)),
            "the late write of {path}"
        );
        let namespace = stored(&store.inner, &visitor, "prefs")
            .await
            .expect("namespace stored");
        assert_eq!(user_keys(&namespace), expected, "{path}");
    }
    // A read changes no namespace, and its late write is stored all the same.
    let reply = visitor.get(&app.router, "/ns/prefs").await;
    assert_eq!(reply.data(), json!({ "theme": "dark", "size": 4 }));
    assert_eq!(
        stored(&store.inner, &visitor, "late").await,
        Some(json!("/ns/prefs"))
    );
}

/// Two visitors of one app, same namespaces: each sees only its own.
pub async fn visitors_are_isolated<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut first = Visitor::default();
    let mut second = Visitor::default();

    first.post(&app.router, "/ns/prefs/theme/dark").await.data();
    second
        .post(&app.router, "/ns/prefs/theme/light")
        .await
        .data();
    first.post(&app.router, "/cart/apple").await.data();
    second.post(&app.router, "/cart/pear").await.data();
    assert_ne!(first.session_id(), second.session_id());

    assert_eq!(
        first.get(&app.router, "/ns/prefs").await.data(),
        json!({ "theme": "dark" })
    );
    assert_eq!(
        second.get(&app.router, "/ns/prefs").await.data(),
        json!({ "theme": "light" })
    );
    assert_eq!(
        first.get(&app.router, "/cart").await.data(),
        json!(["apple"])
    );
    assert_eq!(
        second.get(&app.router, "/cart").await.data(),
        json!(["pear"])
    );

    second.delete(&app.router, "/ns/prefs").await.data();
    assert_eq!(
        first.get(&app.router, "/ns/prefs").await.data(),
        json!({ "theme": "dark" }),
        "the other visitor's purge"
    );
}

/// Namespaces another writer of the store corrupted read as empty, and the next write replaces
/// them.
pub async fn corrupt_namespace_reads_as_empty<S: SessionStore + Clone>(store: CountingStore<S>) {
    let app = Instance::new(routes(), store.clone());
    let mut visitor = Visitor::default();

    visitor
        .post(&app.router, "/ns/prefs/theme/dark")
        .await
        .data();
    visitor.post(&app.router, "/ns/keep/x/1").await.data();
    visitor.post(&app.router, "/cart/apple").await.data();

    let stamp = crate::seconds(START + DEFAULT_EXPIRY);
    store_raw(&store.inner, &visitor, "prefs", json!("not an object")).await;
    store_raw(
        &store.inner,
        &visitor,
        "keep",
        json!({ "x": 1, STAMP_KEY: "tomorrow" }),
    )
    .await;
    store_raw(
        &store.inner,
        &visitor,
        "cart",
        json!({ "items": 5, STAMP_KEY: stamp }),
    )
    .await;

    for uri in ["/ns/prefs", "/ns/keep"] {
        let reply = visitor.get(&app.router, uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        assert_eq!(reply.data(), json!({}), "{uri}");
        assert_eq!(reply.expires_at(), None, "{uri}");
    }
    let reply = visitor.get(&app.router, "/cart").await;
    assert_eq!(reply.data(), json!([]));

    let reply = visitor.post(&app.router, "/ns/prefs/theme/light").await;
    assert_eq!(reply.data(), json!({ "theme": "light" }));
    let reply = visitor.post(&app.router, "/cart/pear").await;
    assert_eq!(reply.data(), json!(["pear"]));
    let prefs = stored(&store.inner, &visitor, "prefs")
        .await
        .expect("replaced");
    assert_eq!(user_keys(&prefs), json!({ "theme": "light" }));
    let cart = stored(&store.inner, &visitor, "cart")
        .await
        .expect("replaced");
    assert_eq!(user_keys(&cart), json!({ "items": ["pear"] }));
    let keep: Value = stored(&store.inner, &visitor, "keep")
        .await
        .expect("still there");
    assert_eq!(
        keep[STAMP_KEY],
        json!("tomorrow"),
        "a read replaces nothing"
    );
}
