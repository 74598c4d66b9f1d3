//! The app under test and its visitors: requests sent through the router in process, replies
//! read whole, and the session cookie kept between requests as a browser keeps it.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};
use tower_sessions::{
    session::{Id, Record},
    MemoryStore, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{ManualClock, MergingStore, SessionControllerLayer};

use super::{CountingStore, START};

/// One response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub set_cookie: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("body {:?} is not JSON: {err}", self.body))
    }

    /// Checks the request succeeded, showing the body if it did not.
    pub fn assert_ok(&self) {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
    }

    /// Checks the request failed with a `500` whose body says `words`.
    pub fn assert_error(&self, words: &str) {
        assert_eq!(self.status, StatusCode::INTERNAL_SERVER_ERROR, "{self:?}");
        assert!(self.body.contains(words), "body: {}", self.body);
    }

    /// Checks the response set no cookie: no session was created, changed or removed.
    pub fn assert_no_cookie(&self) {
        assert!(self.set_cookie.is_none(), "{:?}", self.set_cookie);
    }
}

/// One request to `router`, with `cookie` if given, its response read whole.
pub async fn send(router: &Router, cookie: Option<&str>, method: Method, uri: &str) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible router");
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .map(|value| value.to_str().expect("ascii cookie").to_owned());
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        set_cookie,
        body: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
    }
}

/// A browser: keeps the session cookie it is given, whichever app gave it, and forgets it when
/// told to remove it (`Max-Age=0`).
#[derive(Debug, Default, Clone)]
pub struct Visitor {
    /// The `id=...` pair sent with every request.
    pub cookie: Option<String>,
}

impl Visitor {
    pub async fn get(&mut self, app: &Router, uri: &str) -> Reply {
        self.send(app, Method::GET, uri).await
    }

    pub async fn post(&mut self, app: &Router, uri: &str) -> Reply {
        self.send(app, Method::POST, uri).await
    }

    pub async fn delete(&mut self, app: &Router, uri: &str) -> Reply {
        self.send(app, Method::DELETE, uri).await
    }

    pub async fn send(&mut self, app: &Router, method: Method, uri: &str) -> Reply {
        let reply = send(app, self.cookie.as_deref(), method, uri).await;
        if let Some(set_cookie) = &reply.set_cookie {
            if set_cookie.contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(set_cookie.split(';').next().unwrap_or_default().to_owned());
            }
        }
        reply
    }

    /// The reply, after checking the request succeeded.
    pub async fn ok(&mut self, app: &Router, method: Method, uri: &str) -> Reply {
        let reply = self.send(app, method.clone(), uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{method} {uri}: {reply:?}");
        reply
    }

    /// The session id the cookie carries.
    pub fn session_id(&self) -> Option<Id> {
        self.cookie.as_ref()?.strip_prefix("id=")?.parse().ok()
    }
}

/// An app behind `SessionControllerLayer` and `SessionManagerLayer` on a counting `MemoryStore`,
/// with a `ManualClock`, and one visitor of it.
pub struct TestApp {
    pub router: Router,
    pub store: CountingStore<MemoryStore>,
    pub clock: ManualClock,
    pub visitor: Visitor,
    /// Where the stored records are read and tampered with: `store`'s memory store, unless the
    /// app runs on another store.
    pub records: Arc<dyn SessionStore>,
}

impl TestApp {
    pub fn new(routes: Router) -> Self {
        Self::with_store(routes, CountingStore::new(MemoryStore::default()))
    }

    pub fn with_store(routes: Router, store: CountingStore<MemoryStore>) -> Self {
        let clock = ManualClock::new(START);
        let router = routes
            .layer(SessionControllerLayer::new().with_clock(clock.clone()))
            .layer(SessionManagerLayer::new(store.clone()).with_secure(false));
        Self::assemble(router, store, clock)
    }

    /// The same app with its counting store behind a `MergingStore`: `store` counts what reaches
    /// the memory store, the merge's own load included. Its layers are applied with one
    /// `ServiceBuilder`, as the README advises (`new` uses two `Router::layer` calls, so the
    /// suites cover both ways).
    pub fn merging(routes: Router) -> Self {
        let store = CountingStore::new(MemoryStore::default());
        let clock = ManualClock::new(START);
        let router = routes.layer(
            ServiceBuilder::new()
                .layer(
                    SessionManagerLayer::new(MergingStore::new(store.clone())).with_secure(false),
                )
                .layer(SessionControllerLayer::new().with_clock(clock.clone())),
        );
        Self::assemble(router, store, clock)
    }

    /// The same app on the crate's own `stores::MemoryStore`, which merges by compare-and-set:
    /// its records are read through that store (`store` counts nothing).
    pub fn atomic(routes: Router) -> Self {
        let store = tower_sessions_controller::stores::MemoryStore::default();
        let clock = ManualClock::new(START);
        let router = routes.layer(
            ServiceBuilder::new()
                .layer(SessionManagerLayer::new(store.clone()).with_secure(false))
                .layer(SessionControllerLayer::new().with_clock(clock.clone())),
        );
        let mut app = Self::assemble(router, CountingStore::new(MemoryStore::default()), clock);
        app.records = Arc::new(store);
        app
    }

    /// An app whose layers the test built itself, on `store` and `clock`.
    pub fn assemble(router: Router, store: CountingStore<MemoryStore>, clock: ManualClock) -> Self {
        Self {
            router,
            records: Arc::new(store.inner.clone()),
            store,
            clock,
            visitor: Visitor::default(),
        }
    }

    /// Another tab of the same browser: same app and the same cookie, for overlapping requests.
    pub fn tab(&self) -> Self {
        Self {
            visitor: self.visitor.clone(),
            ..self.visitor()
        }
    }

    /// A second visitor of the same app: same store and clock, no cookie.
    pub fn visitor(&self) -> Self {
        Self {
            records: Arc::clone(&self.records),
            ..Self::assemble(self.router.clone(), self.store.clone(), self.clock.clone())
        }
    }

    pub async fn get(&mut self, uri: &str) -> Reply {
        self.send(Method::GET, uri).await
    }

    pub async fn post(&mut self, uri: &str) -> Reply {
        self.send(Method::POST, uri).await
    }

    pub async fn send(&mut self, method: Method, uri: &str) -> Reply {
        self.visitor.send(&self.router, method, uri).await
    }

    /// The session id the cookie carries.
    pub fn session_id(&self) -> Option<Id> {
        self.visitor.session_id()
    }

    /// The visitor's whole stored record, read straight from the store.
    pub async fn record(&self) -> Option<Record> {
        self.record_by_id(&self.session_id()?).await
    }

    /// The record stored under `id`, whatever the cookie says now.
    pub async fn record_by_id(&self, id: &Id) -> Option<Record> {
        self.records.load(id).await.expect("store load")
    }

    /// The stored value of one namespace.
    pub async fn stored(&self, key: &str) -> Option<Value> {
        self.record().await?.data.get(key).cloned()
    }

    /// Replaces one key of the stored record, as another writer of the store would.
    pub async fn store_raw(&self, key: &str, value: Value) {
        let mut record = self.record().await.expect("a stored record to tamper with");
        record.data.insert(key.to_owned(), value);
        self.records.save(&record).await.expect("store save");
    }

    /// Checks the store calls since the last check (or since the store was made).
    pub fn assert_calls(&self, expected: super::Calls) {
        assert_eq!(self.store.take_calls(), expected, "store calls");
    }
}
