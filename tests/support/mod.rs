//! What the integration tests share: an app under test that carries the session cookie between
//! requests like a browser, direct access to the stored record, a store that counts its calls
//! or fails on demand, and a capture of the logs.
#![allow(dead_code)]

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use async_trait::async_trait;
use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use serde_json::Value;
use time::{macros::datetime, OffsetDateTime};
use tower::{ServiceBuilder, ServiceExt};
use tower_sessions::{
    session::{Id, Record},
    session_store, MemoryStore, SessionManagerLayer, SessionStore,
};
use tower_sessions_controller::{ManualClock, MergingStore, SessionControllerLayer};

/// The instant every test clock starts at.
pub const START: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

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
}

/// An app behind `SessionControllerLayer` and `SessionManagerLayer` on a counting `MemoryStore`,
/// with a `ManualClock`, that keeps the session cookie like a browser.
pub struct TestApp {
    pub router: Router,
    pub store: CountingStore<MemoryStore>,
    pub clock: ManualClock,
    pub cookie: Option<String>,
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

    fn assemble(router: Router, store: CountingStore<MemoryStore>, clock: ManualClock) -> Self {
        Self {
            router,
            store,
            clock,
            cookie: None,
        }
    }

    /// Another tab of the same browser: same app and the same cookie, for overlapping requests.
    pub fn tab(&self) -> Self {
        Self {
            cookie: self.cookie.clone(),
            ..self.visitor()
        }
    }

    /// A second visitor of the same app: same store and clock, no cookie.
    pub fn visitor(&self) -> Self {
        Self {
            router: self.router.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            cookie: None,
        }
    }

    pub async fn get(&mut self, uri: &str) -> Reply {
        self.send(Method::GET, uri).await
    }

    pub async fn post(&mut self, uri: &str) -> Reply {
        self.send(Method::POST, uri).await
    }

    pub async fn send(&mut self, method: Method, uri: &str) -> Reply {
        let reply = send(&self.router, self.cookie.as_deref(), method, uri).await;
        if let Some(set_cookie) = &reply.set_cookie {
            let pair = set_cookie.split(';').next().unwrap_or_default().to_owned();
            if set_cookie.contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(pair);
            }
        }
        reply
    }

    /// The session id the cookie carries.
    pub fn session_id(&self) -> Option<Id> {
        let cookie = self.cookie.as_ref()?;
        cookie.strip_prefix("id=")?.parse().ok()
    }

    /// The visitor's whole stored record, read straight from the store.
    pub async fn record(&self) -> Option<Record> {
        let id = self.session_id()?;
        self.store.inner.load(&id).await.expect("memory store load")
    }

    /// The stored value of one namespace.
    pub async fn stored(&self, key: &str) -> Option<Value> {
        self.record().await?.data.get(key).cloned()
    }

    /// Replaces one key of the stored record, as another writer of the store would.
    pub async fn store_raw(&self, key: &str, value: Value) {
        let mut record = self.record().await.expect("a stored record to tamper with");
        record.data.insert(key.to_owned(), value);
        self.store
            .inner
            .save(&record)
            .await
            .expect("memory store save");
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

/// Counts of the store calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub load: usize,
    pub create: usize,
    pub save: usize,
    pub delete: usize,
}

/// A store wrapper that counts its calls and can be told to fail loads and saves.
#[derive(Clone)]
pub struct CountingStore<S> {
    pub inner: S,
    load: Arc<AtomicUsize>,
    create: Arc<AtomicUsize>,
    save: Arc<AtomicUsize>,
    delete: Arc<AtomicUsize>,
    fail_load: Arc<AtomicBool>,
    fail_save: Arc<AtomicBool>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            load: Arc::default(),
            create: Arc::default(),
            save: Arc::default(),
            delete: Arc::default(),
            fail_load: Arc::default(),
            fail_save: Arc::default(),
        }
    }

    /// The calls so far, and the counters reset to zero.
    pub fn take_calls(&self) -> Calls {
        Calls {
            load: self.load.swap(0, Ordering::SeqCst),
            create: self.create.swap(0, Ordering::SeqCst),
            save: self.save.swap(0, Ordering::SeqCst),
            delete: self.delete.swap(0, Ordering::SeqCst),
        }
    }

    pub fn fail_loads(&self, fail: bool) {
        self.fail_load.store(fail, Ordering::SeqCst);
    }

    pub fn fail_saves(&self, fail: bool) {
        self.fail_save.store(fail, Ordering::SeqCst);
    }
}

impl<S> fmt::Debug for CountingStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingStore").finish_non_exhaustive()
    }
}

fn injected() -> session_store::Error {
    session_store::Error::Backend("injected store failure (secret=hunter2)".into())
}

#[async_trait]
impl<S: SessionStore + Clone> SessionStore for CountingStore<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.create.fetch_add(1, Ordering::SeqCst);
        if self.fail_save.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.save.fetch_add(1, Ordering::SeqCst);
        if self.fail_save.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.load.fetch_add(1, Ordering::SeqCst);
        if self.fail_load.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.load(id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.delete.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(id).await
    }
}

/// Log lines written while the returned guard lives (on this thread: use the current-thread
/// runtime of `#[tokio::test]`).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    ///
    /// tracing caches, per call site, whether anyone wants its events, and while at most one
    /// dispatcher exists it asks only the current thread's: a test without a capture could cache
    /// "never" and a capturing test on another thread would lose the event. A dispatcher kept
    /// alive for the whole run makes tracing ask every live dispatcher instead.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        static KEEP_ALIVE: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEP_ALIVE
            .get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }

    /// The captured lines at `level` ("WARN", "ERROR", ...).
    pub fn lines_at(&self, level: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| line.contains(level))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
