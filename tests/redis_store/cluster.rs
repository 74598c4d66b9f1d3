//! `stores::RedisStore` on a Redis Cluster of three shards of the test's own, through fred's
//! clustered client: overlapping writes on two instances lose nothing, sessions spread over the
//! shards, and a logout that races a write is never undone; once on `redis-server`s (the script),
//! once on Valkey servers (`SET ... IFEQ`). The servers are the test's own and are killed at its
//! end (see `servers`).

use axum::http::{Method, StatusCode};
use fred::{
    interfaces::ClientLike,
    prelude::{Config, Pool, ServerConfig},
};
use futures::{stream, StreamExt};
use serde_json::json;
use tower_sessions_controller::stores::RedisStore;

use crate::{
    app, assert_session_ended, routes, send, servers, services, stored_keys, Gate, Visitor,
};

/// Sessions written at once, so that they land on several shards.
const SESSIONS: usize = 8;
/// Writes per session.
const WRITES: usize = 30;
/// Requests in flight at once.
const IN_FLIGHT: usize = 16;

async fn clustered_pool(cluster: &servers::OwnCluster) -> Pool {
    let hosts = cluster
        .nodes
        .iter()
        .map(|node| ("127.0.0.1".to_owned(), node.port))
        .collect();
    let config = Config {
        server: ServerConfig::new_clustered(hosts),
        ..Config::default()
    };
    let pool = Pool::new(config, None, None, None, 2).expect("a clustered pool");
    tokio::time::timeout(services::CONNECT_TIMEOUT, pool.init())
        .await
        .expect("the cluster answers in time")
        .expect("the cluster connects");
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_overlapping_writes_lose_nothing_and_logouts_stay() {
    let test = "cluster::on_a_cluster_overlapping_writes_lose_nothing_and_logouts_stay";
    if let Some(cluster) = servers::own_cluster(test, "redis-server") {
        overlapping_writes_and_a_logout(&cluster).await;
    }
}

/// The same on a cluster of Valkey servers, where the store saves by `SET ... IFEQ`, routed to
/// the key's shard like every other command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_valkey_cluster_overlapping_writes_lose_nothing_and_logouts_stay() {
    let test = "cluster::on_a_valkey_cluster_overlapping_writes_lose_nothing_and_logouts_stay";
    if let Some(cluster) = servers::own_cluster(test, &crate::redis_server::valkey_program()) {
        overlapping_writes_and_a_logout(&cluster).await;
        // Every save was a `SET` on its shard; no shard ran the script.
        let calls = |command: &str| -> u64 {
            cluster
                .nodes
                .iter()
                .filter_map(|node| servers::command(node.port, "INFO commandstats"))
                .map(|info| crate::redis_server::ran(&info, command))
                .sum()
        };
        assert_eq!(calls("evalsha") + calls("eval"), 0, "no script ran");
        // Beyond one `SET NX` per session, the saves.
        assert!(calls("set") > SESSIONS as u64, "the saves were SETs");
    }
}

/// Sessions spread over the shards of `cluster`, overlapping writes of each through two
/// instances, then a logout that races a write.
async fn overlapping_writes_and_a_logout(cluster: &servers::OwnCluster) {
    let (pool_a, pool_b) = (clustered_pool(cluster).await, clustered_pool(cluster).await);
    let store = RedisStore::new(pool_a.clone());
    let gate = Gate::default();
    let a = app(routes(gate.clone()), store.clone());
    let b = app(routes(Gate::default()), RedisStore::new(pool_b.clone()));

    let mut visitors = Vec::new();
    for _ in 0..SESSIONS {
        let mut visitor = Visitor::default();
        visitor.post(&a, "/ns/log/seed/0").await.assert_ok();
        visitors.push(visitor);
    }

    // Every session gets `WRITES` writes of its own keys, through both instances, all sessions
    // interleaved, `IN_FLIGHT` at a time.
    let cookies: Vec<String> = visitors
        .iter()
        .map(|visitor| visitor.cookie.clone().expect("a session"))
        .collect();
    let failed: Vec<String> = stream::iter(0..SESSIONS * WRITES)
        .map(|n| {
            let (session, i) = (n % SESSIONS, n / SESSIONS);
            let router = if n % 2 == 0 { &a } else { &b };
            let cookie = cookies[session].as_str();
            async move {
                let reply = send(
                    router,
                    Some(cookie),
                    Method::POST,
                    &format!("/ns/log/k{i}/{i}"),
                )
                .await;
                (reply.status != StatusCode::OK).then(|| format!("{session}/{i}: {reply:?}"))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|failed| async move { failed })
        .collect()
        .await;
    assert!(
        failed.is_empty(),
        "writes that did not answer 200: {failed:#?}"
    );
    let mut expected: Vec<String> = (0..WRITES).map(|i| format!("k{i}")).collect();
    expected.push("seed".to_owned());
    expected.sort();
    for visitor in &visitors {
        let id = visitor.session_id().expect("a session");
        assert_eq!(
            stored_keys(&store, &id, "log").await,
            expected,
            "session {id}"
        );
    }
    let shards = cluster.keys_per_shard();
    assert_eq!(shards.iter().sum::<u64>(), SESSIONS as u64, "{shards:?}");
    assert!(
        shards.iter().filter(|&&keys| keys > 0).count() >= 2,
        "the sessions are all on one shard: {shards:?}"
    );

    // A logout on B while a write on A is between its load and its save: the write is refused,
    // the session stays gone, and the visitor's next write makes a new one.
    let mut visitor = visitors.pop().expect("a visitor");
    let old = visitor.session_id().expect("a session");
    let mut writer = visitor.clone();
    let write = tokio::spawn({
        let a = a.clone();
        async move { writer.post(&a, "/gated/log/late/1").await }
    });
    gate.entered.notified().await;
    assert_eq!(visitor.post(&b, "/logout").await.status, StatusCode::OK);
    gate.release.notify_one();
    let write = write.await.expect("the write");
    assert_session_ended(&write, "a write that raced a logout on the cluster");
    assert!(stored_keys(&store, &old, "log").await.is_empty());
    assert_eq!(
        cluster.keys_per_shard().iter().sum::<u64>(),
        SESSIONS as u64 - 1
    );
    let mut stale = Visitor {
        cookie: Some(format!("id={old}")),
    };
    let reply = stale.post(&b, "/ns/log/again/2").await;
    assert_eq!(reply.json(), json!({ "again": "2" }));
    assert_ne!(stale.session_id(), Some(old));

    let _ = pool_a.quit().await;
    let _ = pool_b.quit().await;
}
