//! The records of tower-sessions-redis-store 0.16, both ways: what it writes loads through
//! `stores::RedisStore`, and what ours writes loads through it, straight and through apps, so an
//! app that switches store keeps its visitors' sessions. Also: the key, value and expiry as it
//! writes them, and a record that cannot be decoded.

use std::panic::AssertUnwindSafe;

use fred::{
    interfaces::{ClientLike, KeysInterface},
    types::{CustomCommand, Expiration},
};
use futures::FutureExt;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower_sessions::{
    session::{Id, Record},
    SessionStore,
};
use tower_sessions_redis_store::RedisStore as TheirStore;

use crate::{app, on_redis, routes, support::Logs, Gate, Visitor};

/// The beginning of the keys of the crate's bookkeeping (the versions a merge keeps, and the
/// load's token a load through the crate's store leaves in memory).
const BOOKKEEPING: &str = "tower_sessions_controller.";

fn record(data: Value) -> Record {
    Record {
        id: Id::default(),
        data: data
            .as_object()
            .expect("an object")
            .clone()
            .into_iter()
            .collect(),
        // Not a whole second: the stored expiry must round the same way on both sides.
        expiry_date: OffsetDateTime::now_utc() + Duration::minutes(30) + Duration::milliseconds(7),
    }
}

/// `record`'s data without the crate's bookkeeping.
fn data(record: &Record) -> Value {
    let data: serde_json::Map<String, Value> = record
        .data
        .iter()
        .filter(|(key, _)| !key.starts_with(BOOKKEEPING))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Value::Object(data)
}

/// `EXPIRETIME key`: the Unix second at which Redis removes it.
async fn expire_time(pool: &fred::prelude::Pool, key: &str) -> i64 {
    pool.custom(
        CustomCommand::new_static("EXPIRETIME", None, false),
        vec![key],
    )
    .await
    .expect("EXPIRETIME")
}

#[tokio::test]
async fn records_load_both_ways_with_the_same_key_value_and_expiry() {
    on_redis(
        "compat::records_load_both_ways_with_the_same_key_value_and_expiry",
        |shared| async move {
            let pool = &shared.pools[0];
            let ours = shared.a.clone();
            let theirs = shared.a.sharing(TheirStore::new(pool.clone()));

            // Theirs writes, ours reads.
            let mut written = record(json!({ "user": "ada", "cart": { "apple": 1 } }));
            theirs.create(&mut written).await.expect("their create");
            let loaded = ours
                .load(&written.id)
                .await
                .expect("our load")
                .expect("ours reads their record");
            assert_eq!(data(&loaded), data(&written));
            assert_eq!(loaded.expiry_date, written.expiry_date);

            // Ours writes, theirs reads.
            let mut ours_written = record(json!({ "user": "bob", "wizard": { "step": 2 } }));
            ours.create(&mut ours_written).await.expect("our create");
            let loaded = theirs
                .load(&ours_written.id)
                .await
                .expect("their load")
                .expect("theirs reads our record");
            assert_eq!(data(&loaded), data(&ours_written));
            assert_eq!(loaded.expiry_date, ours_written.expiry_date);

            // The key is the id, the value the whole record in MessagePack, the expiry the
            // record's, in whole seconds: as theirs writes them.
            for (id, expiry) in [
                (written.id, written.expiry_date),
                (ours_written.id, ours_written.expiry_date),
            ] {
                let key = id.to_string();
                let bytes: Vec<u8> = pool.get(key.as_str()).await.expect("GET");
                let decoded: Record = rmp_serde::from_slice(&bytes).expect("MessagePack");
                assert_eq!(decoded.id, id);
                assert_eq!(expire_time(pool, &key).await, expiry.unix_timestamp());
            }

            // A save through ours keeps the expiry in step with the record's.
            let mut changed = ours.load(&written.id).await.unwrap().unwrap();
            changed.data.insert("user".into(), json!("eve"));
            changed.expiry_date += Duration::minutes(5);
            ours.save(&changed).await.expect("our save");
            let reloaded = theirs.load(&written.id).await.unwrap().unwrap();
            assert_eq!(reloaded.data["user"], "eve");
            assert_eq!(
                expire_time(pool, &written.id.to_string()).await,
                changed.expiry_date.unix_timestamp()
            );
        },
    )
    .await;
}

#[tokio::test]
async fn an_app_that_switches_store_keeps_its_visitors_sessions() {
    on_redis(
        "compat::an_app_that_switches_store_keeps_its_visitors_sessions",
        |shared| async move {
            let theirs = shared.a.sharing(TheirStore::new(shared.pools[0].clone()));
            let on_theirs = app(routes(Gate::default()), theirs);
            let on_ours = app(routes(Gate::default()), shared.b.clone());

            let mut visitor = Visitor::default();
            visitor
                .post(&on_theirs, "/ns/cart/apple/1")
                .await
                .assert_ok();
            let cookie = visitor.cookie.clone().expect("a session");

            // Switched to ours: the same session, and writes go on.
            let reply = visitor.get(&on_ours, "/ns/cart").await;
            assert_eq!(reply.json(), json!({ "apple": "1" }));
            visitor.post(&on_ours, "/ns/cart/pear/2").await.assert_ok();
            assert_eq!(visitor.cookie.as_ref(), Some(&cookie), "no new session");

            // And back.
            let reply = visitor.get(&on_theirs, "/ns/cart").await;
            assert_eq!(reply.json(), json!({ "apple": "1", "pear": "2" }));
            visitor
                .post(&on_theirs, "/ns/wizard/step/3")
                .await
                .assert_ok();
            visitor.post(&on_ours, "/ns/cart/fig/4").await.assert_ok();
            assert_eq!(
                visitor.get(&on_theirs, "/ns/wizard").await.json(),
                json!({ "step": "3" })
            );
            assert_eq!(
                visitor.get(&on_ours, "/ns/cart").await.json(),
                json!({ "apple": "1", "pear": "2", "fig": "4" })
            );
            assert_eq!(
                visitor.cookie.as_ref(),
                Some(&cookie),
                "one session all along"
            );
        },
    )
    .await;
}

#[tokio::test]
async fn a_record_that_cannot_be_decoded_reads_as_a_fresh_session() {
    on_redis(
        "compat::a_record_that_cannot_be_decoded_reads_as_a_fresh_session",
        |shared| async move {
            let pool = &shared.pools[0];
            let id = Id::default();
            let key = id.to_string();
            let garbage: &[u8] = b"\xc1 not MessagePack";
            let _: () = pool
                .set(
                    key.as_str(),
                    garbage,
                    Some(Expiration::EX(600)),
                    None,
                    false,
                )
                .await
                .expect("SET");

            // The key is deleted at the end whatever happens (and expires in 10 minutes).
            let outcome = AssertUnwindSafe(async {
                let (logs, _guard) = Logs::capture();
                assert!(shared.a.load(&id).await.expect("no error").is_none());
                let warned = logs.lines_at("WARN");
                assert!(
                    warned
                        .iter()
                        .any(|line| line.contains("cannot be decoded") && line.contains(&key)),
                    "the undecodable record is logged at WARN:\n{}",
                    logs.text()
                );
                let on_ours = app(routes(Gate::default()), shared.a.clone());
                let mut visitor = Visitor {
                    cookie: Some(format!("id={id}")),
                };
                assert_eq!(visitor.get(&on_ours, "/ns/cart").await.json(), json!({}));
                visitor.post(&on_ours, "/ns/cart/a/1").await.assert_ok();
                let new = visitor.session_id().expect("a new session");
                assert_ne!(new, id);
                assert_eq!(
                    visitor.get(&on_ours, "/ns/cart").await.json(),
                    json!({ "a": "1" })
                );
                // The undecodable record is left as it was.
                let bytes: Vec<u8> = pool.get(key.as_str()).await.expect("GET");
                assert_eq!(bytes, garbage);
            })
            .catch_unwind()
            .await;
            let _: i64 = pool.del(key.as_str()).await.expect("DEL");
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        },
    )
    .await;
}
