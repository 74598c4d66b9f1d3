//! The races of `instances` on a Valkey server of the test's own, where `stores::RedisStore`
//! saves by the server's own compare-and-set (`SET ... IFEQ ... GET`) instead of the script:
//! overlapping writes on two instances lose nothing, and a logout or an id cycle that races a
//! write is never undone; a save that lost on a long record (no answer asked) reads the latest
//! and merges. (`round_trips` counts its commands there.)

use serde_json::json;

use crate::{app, instances, on_valkey, routes, Gate, Visitor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_overlapping_writes_on_two_instances_lose_nothing() {
    on_valkey(
        "native::on_valkey_overlapping_writes_on_two_instances_lose_nothing",
        instances::overlapping_writes_lose_nothing,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_a_logout_during_a_slow_write_is_never_undone() {
    on_valkey(
        "native::on_valkey_a_logout_during_a_slow_write_is_never_undone",
        instances::logout_during_a_slow_write,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_a_slow_logout_during_a_write_ends_the_session() {
    on_valkey(
        "native::on_valkey_a_slow_logout_during_a_write_ends_the_session",
        instances::slow_logout_during_a_write,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_an_id_cycled_during_a_slow_write_is_never_written_back() {
    on_valkey(
        "native::on_valkey_an_id_cycled_during_a_slow_write_is_never_written_back",
        instances::id_cycled_during_a_slow_write,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_a_direct_write_beside_a_namespace_write_is_kept_in_either_order() {
    on_valkey(
        "native::on_valkey_a_direct_write_beside_a_namespace_write_is_kept_in_either_order",
        instances::direct_write_beside_a_namespace_write,
    )
    .await;
}

/// A save that loses on a record of 1 KiB or more (whose `SET ... IFEQ` asks for no answer) reads
/// the latest record with a `GET` of its own and merges into it: both writes are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_valkey_a_save_that_lost_on_a_long_record_merges_into_the_latest() {
    on_valkey(
        "native::on_valkey_a_save_that_lost_on_a_long_record_merges_into_the_latest",
        |shared| async move {
            let gate = Gate::default();
            let a = app(routes(gate.clone()), shared.a.clone());
            let b = app(routes(Gate::default()), shared.b.clone());
            let mut visitor = Visitor::default();
            let long = "x".repeat(2000);
            visitor
                .post(&a, &format!("/ns/other/long/{long}"))
                .await
                .assert_ok();

            // The write loads the long record and stops; another write is stored meanwhile
            // through B; the first one's compare-and-set then finds the record changed.
            let write = instances::gated_write(&a, &visitor);
            gate.entered.notified().await;
            visitor.post(&b, "/ns/cart/kiwi/4").await.assert_ok();
            gate.release.notify_one();
            write.await.expect("the write").assert_ok();

            assert_eq!(
                visitor.get(&b, "/ns/cart").await.json(),
                json!({ "fig": "3", "kiwi": "4" })
            );
            assert_eq!(visitor.get(&a, "/ns/other").await.json()["long"], long);
        },
    )
    .await;
}
