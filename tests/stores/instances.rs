//! Two independent app instances on one store backend: each with its own store client (pool),
//! its own layers and its own `ManualClock`, the clocks moved together. A cookie from one
//! carries the session to the other, and both judge expiry alike.

use serde_json::json;
use time::Duration;
use tower_sessions::SessionStore;
use tower_sessions_controller::DEFAULT_EXPIRY;

use crate::{
    assert_stamp, routes, run_pair, stored, CountingStore, Instance, Reported, Visitor, START,
};

#[tokio::test]
async fn redis_two_instances() {
    run_pair(
        "instances::redis_two_instances",
        crate::redis_pair,
        two_instances,
    )
    .await;
}

#[tokio::test]
async fn postgres_two_instances() {
    run_pair(
        "instances::postgres_two_instances",
        crate::postgres_pair,
        two_instances,
    )
    .await;
}

async fn two_instances<S: SessionStore + Clone>(
    a_store: CountingStore<S>,
    b_store: CountingStore<S>,
) {
    let a = Instance::new(routes(), a_store.clone());
    let b = Instance::new(routes(), b_store);
    let set_clocks = |at| {
        a.clock.set(at);
        b.clock.set(at);
    };
    let stamp = START + DEFAULT_EXPIRY;

    // A issues the cookie; B reads what A wrote.
    let mut x = Visitor::default();
    x.post(&a.router, "/ns/wizard/step/1").await.data();
    x.post(&a.router, "/cart/apple").await.data();
    assert!(x.cookie.is_some(), "A gave a cookie");
    let reply = x.get(&b.router, "/ns/wizard").await;
    assert_eq!(reply.data(), json!({ "step": 1 }), "A's namespace on B");
    assert_eq!(reply.expires_at(), Some(stamp));
    assert_eq!(x.get(&b.router, "/cart").await.data(), json!(["apple"]));

    // And the other way round.
    let mut y = Visitor::default();
    y.post(&b.router, "/ns/wizard/step/7").await.data();
    let reply = y.get(&a.router, "/ns/wizard").await;
    assert_eq!(reply.data(), json!({ "step": 7 }), "B's namespace on A");
    assert_eq!(reply.expires_at(), Some(stamp));

    // Two more sessions with the same stamp, to judge after it.
    let mut u = Visitor::default();
    u.post(&a.router, "/ns/wizard/step/3").await.data();
    let mut w = Visitor::default();
    w.post(&b.router, "/ns/wizard/step/4").await.data();

    // Just before the stamp: alive on both, whoever reads first; reads move no stamp.
    set_clocks(stamp - Duration::seconds(1));
    for (visitor, step) in [(&mut x, 1), (&mut y, 7), (&mut u, 3), (&mut w, 4)] {
        for (name, app) in [("B", &b), ("A", &a)] {
            let reply = visitor.get(&app.router, "/ns/wizard").await;
            assert_eq!(reply.data(), json!({ "step": step }), "alive on {name}");
            assert_eq!(reply.expires_at(), Some(stamp), "on {name}");
        }
        let wizard = stored(&a_store.inner, visitor, "wizard")
            .await
            .expect("still stored");
        assert_stamp(&wizard, stamp);
    }

    // At the stamp: expired on B (x, written on A) and on A (y, written on B); a second later,
    // on A (w, written on B) and on B (u, written on A). Each drop is saved, and the other
    // instance then sees the namespace gone too.
    set_clocks(stamp);
    for (visitor, judge, other) in [(&mut x, &b, &a), (&mut y, &a, &b)] {
        let reply = visitor.get(&judge.router, "/ns/wizard").await;
        assert_eq!(reply.data(), json!({}), "expired at the stamp");
        assert_eq!(reply.expires_at(), None);
        assert_eq!(stored(&a_store.inner, visitor, "wizard").await, None);
        assert_eq!(
            visitor.get(&other.router, "/ns/wizard").await.data(),
            json!({})
        );
    }
    assert_eq!(x.get(&a.router, "/cart").await.data(), json!([]));
    set_clocks(stamp + Duration::seconds(1));
    for (visitor, judge, other) in [(&mut w, &a, &b), (&mut u, &b, &a)] {
        let reply = visitor.get(&judge.router, "/ns/wizard").await;
        assert_eq!(reply.data(), json!({}), "expired after the stamp");
        assert_eq!(
            visitor.get(&other.router, "/ns/wizard").await.data(),
            json!({})
        );
    }

    // A write on B after expiry starts a fresh namespace that A reads.
    let later = stamp + Duration::minutes(1);
    set_clocks(later);
    let reply = x.post(&b.router, "/ns/wizard/step/2").await;
    assert_eq!(reply.data(), json!({ "step": 2 }));
    let reply = x.get(&a.router, "/ns/wizard").await;
    assert_eq!(reply.data(), json!({ "step": 2 }));
    assert_eq!(reply.expires_at(), Some(later + DEFAULT_EXPIRY));
}
