//! Overlapping requests on one session, through one or two app instances sharing one Redis:
//! each request adds a distinct key to one namespace (all to the same one, or spread over
//! several). At the end, the keys that should be stored are counted against those that are.
//!
//! Run on raw tower-sessions (the baseline: handlers that get the namespace object from
//! `tower_sessions::Session`, insert the key and insert it back) and on this crate. The counts are
//! printed (`cargo test --test stores stress -- --nocapture --include-ignored`).

use axum::{extract::Path, http::StatusCode, routing::post, Router};
use futures::{stream, StreamExt};
use serde_json::{Map, Value};
use tower_sessions::{Session, SessionStore};
use tower_sessions_controller::{Error, MergingStore, SessionControllers};

use crate::{record, run_pair, send, CountingStore, Instance, Visitor};

/// Requests per scenario.
const REQUESTS: usize = 240;
/// Requests in flight at once.
const IN_FLIGHT: usize = 32;
/// Namespaces of the "spread" scenarios.
const SPREAD: usize = 8;

/// The baseline's handler: read-modify-write of the namespace object straight on the session.
async fn raw_add(
    Path((ns, key)): Path<(String, String)>,
    session: Session,
) -> Result<StatusCode, (StatusCode, String)> {
    let failed =
        |err: tower_sessions::session::Error| (StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
    let mut namespace: Map<String, Value> =
        session.get(&ns).await.map_err(failed)?.unwrap_or_default();
    namespace.insert(key, Value::Bool(true));
    session.insert(&ns, namespace).await.map_err(failed)?;
    Ok(StatusCode::OK)
}

/// The crate's handler.
async fn crate_add(
    Path((ns, key)): Path<(String, String)>,
    controllers: SessionControllers,
) -> Result<StatusCode, Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.insert(&key, true)?;
    Ok(StatusCode::OK)
}

fn stress_routes() -> Router {
    Router::new()
        .route("/raw/{ns}/{key}", post(raw_add))
        .route("/crate/{ns}/{key}", post(crate_add))
}

/// What one scenario saw.
#[derive(Debug)]
struct Outcome {
    label: String,
    ok: usize,
    expected: usize,
    found: usize,
}

impl Outcome {
    fn lost(&self) -> usize {
        self.expected - self.found
    }
}

/// `REQUESTS` requests on one fresh session, `IN_FLIGHT` at a time, alternating over
/// `instances`, each adding key `k{i}` to namespace `ns{i % namespaces}` through `kind`'s
/// handler (`raw` or `crate`).
async fn scenario<S: SessionStore + Clone>(
    store: &CountingStore<S>,
    instances: &[&Router],
    kind: &str,
    namespaces: usize,
) -> Outcome {
    // The session exists before the burst, so every request carries its cookie.
    let mut visitor = Visitor::default();
    let reply = visitor
        .post(instances[0], &format!("/{kind}/seed/created"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "seed: {}", reply.body);
    let cookie = visitor
        .cookie
        .clone()
        .expect("the seed request gives a cookie");

    let ok = stream::iter(0..REQUESTS)
        .map(|i| {
            let app = instances[i % instances.len()];
            let uri = format!("/{kind}/ns{}/k{i}", i % namespaces);
            let cookie = cookie.as_str();
            async move {
                send(app, Some(cookie), axum::http::Method::POST, &uri)
                    .await
                    .status
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter(|status| std::future::ready(*status == StatusCode::OK))
        .count()
        .await;

    let record = record(&store.inner, &visitor)
        .await
        .expect("the session is stored");
    let found = (0..REQUESTS)
        .filter(|i| {
            record
                .data
                .get(&format!("ns{}", i % namespaces))
                .and_then(|namespace| namespace.get(format!("k{i}")))
                .is_some()
        })
        .count();
    let outcome = Outcome {
        label: format!(
            "{kind:>5}: {} instance(s), {}",
            instances.len(),
            if namespaces == 1 {
                "one namespace".to_owned()
            } else {
                format!("{namespaces} namespaces")
            }
        ),
        ok,
        expected: REQUESTS,
        found,
    };
    eprintln!(
        "stress {}: {} requests ({IN_FLIGHT} in flight), {} answered 200; {} of {} keys stored, \
         {} lost",
        outcome.label,
        REQUESTS,
        outcome.ok,
        outcome.found,
        outcome.expected,
        outcome.lost()
    );
    outcome
}

fn merging<S: SessionStore>(store: S) -> MergingStore<S> {
    MergingStore::new(store).with_store_lock()
}

/// The four scenarios of `kind`: one and two instances, one namespace and spread.
async fn scenarios<S: SessionStore + Clone>(
    kind: &str,
    a_store: CountingStore<S>,
    b_store: CountingStore<S>,
) -> Vec<Outcome> {
    // The crate runs as a multi-instance deployment should: each instance's store behind its
    // own `MergingStore`, locking through the shared Redis.
    let (a, b) = if kind == "crate" {
        (
            Instance::new(stress_routes(), merging(a_store.clone())),
            Instance::new(stress_routes(), merging(b_store)),
        )
    } else {
        (
            Instance::new(stress_routes(), a_store.clone()),
            Instance::new(stress_routes(), b_store),
        )
    };
    let mut outcomes = Vec::new();
    for instances in [vec![&a.router], vec![&a.router, &b.router]] {
        for namespaces in [1, SPREAD] {
            outcomes.push(scenario(&a_store, &instances, kind, namespaces).await);
        }
    }
    outcomes
}

/// Raw tower-sessions: the last save wins, so updates are expected to be lost. This only checks
/// that the harness ran, and prints the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_raw_tower_sessions() {
    run_pair(
        "stress::baseline_raw_tower_sessions",
        crate::redis_pair,
        |a, b| async move {
            for outcome in scenarios("raw", a, b).await {
                assert_eq!(
                    outcome.ok, REQUESTS,
                    "{}: every request answered 200",
                    outcome.label
                );
            }
        },
    )
    .await;
}

/// This crate: no update may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crate_loses_no_updates() {
    run_pair(
        "stress::crate_loses_no_updates",
        crate::redis_pair,
        |a, b| async move {
            let outcomes = scenarios("crate", a, b).await;
            for outcome in &outcomes {
                assert_eq!(
                    outcome.ok, REQUESTS,
                    "{}: every request answered 200",
                    outcome.label
                );
            }
            for outcome in &outcomes {
                let lost = outcome.lost();
                assert_eq!(lost, 0, "{}: updates lost", outcome.label);
            }
        },
    )
    .await;
}
