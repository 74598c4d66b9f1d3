//! The layer: a request comes in and gets its [`RequestState`]; the response goes out after the
//! changed namespaces are flushed into the session.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use axum::{
    body::Body,
    http::{Request, Response},
    response::IntoResponse,
};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_sessions::Session;

use crate::{
    clock::{Clock, SystemClock},
    entry::Limits,
    merge::SessionLimits,
    state::RequestState,
    stores::held::{self, HoldsLoads},
};

/// A layer that makes [`SessionControllers`](crate::SessionControllers) and
/// [`Keyed`](crate::Keyed) available to handlers, and flushes their changes into the session when
/// the response is produced.
///
/// It must run inside `tower_sessions::SessionManagerLayer`, which loads and saves the session.
/// Apply both with one `tower::ServiceBuilder`, the session manager first: axum boxes each layer
/// given to `Router::layer` on its own and clones that box on every request, which would double
/// what the session layers cost axum. (With two `Router::layer` calls, add this layer first: the
/// last layer added runs first.)
///
/// # Example
///
/// ```
/// use axum::{routing::get, Router};
/// use tower::ServiceBuilder;
/// use tower_sessions::{MemoryStore, SessionManagerLayer};
/// use tower_sessions_controller::SessionControllerLayer;
///
/// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
///     ServiceBuilder::new()
///         .layer(SessionManagerLayer::new(MemoryStore::default()))
///         .layer(SessionControllerLayer::new()),
/// );
/// ```
#[derive(Clone)]
pub struct SessionControllerLayer {
    clock: Arc<dyn Clock>,
    limits: Limits,
    session_limits: SessionLimits,
}

/// The budget of a namespace unless the layer or the namespace sets another: 1 MiB of JSON as
/// stored (the user data, and the namespace's stamp, counts and keys' lifetimes).
///
/// That is far more than a cart or a wizard needs, and small enough that a runaway loop fails
/// at the insert that crosses it instead of growing every later request's store traffic. Behind
/// a store that keeps sessions in cookies (about 4 KiB per cookie), set a budget that fits.
///
/// ```
/// assert_eq!(tower_sessions_controller::DEFAULT_BUDGET, 1 << 20);
/// ```
pub const DEFAULT_BUDGET: usize = 1 << 20;

/// How deep a stored value may nest arrays and objects unless the layer sets another limit: 32
/// levels (`[1]` is one level).
///
/// Far deeper than session data needs, and well inside what every store's decoder reads back
/// (serde_json stops at 128 levels, MessagePack decoders at 1,024, counting the levels of the
/// record and the namespace around the value): a value that could be stored but not read would
/// break every later request of the session.
///
/// ```
/// assert_eq!(tower_sessions_controller::DEFAULT_MAX_DEPTH, 32);
/// ```
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// The budget of a whole session unless the layer sets another: 4 MiB of JSON as stored, every
/// namespace and every key written through `Session` directly.
///
/// Four namespaces at their default budget; far more than a session needs, and a bound on what
/// a visitor can make the store keep and send on every request of the session.
///
/// ```
/// assert_eq!(tower_sessions_controller::DEFAULT_SESSION_BUDGET, 4 << 20);
/// ```
pub const DEFAULT_SESSION_BUDGET: usize = 4 << 20;

/// How many top-level keys a session may hold unless the layer sets another limit: 128
/// namespaces and keys written through `Session` directly.
///
/// An app opens a handful; a limit matters where namespace keys come from what visitors send
/// (a wizard per item, say), so that one session cannot grow without end.
///
/// ```
/// assert_eq!(tower_sessions_controller::DEFAULT_MAX_NAMESPACES, 128);
/// ```
pub const DEFAULT_MAX_NAMESPACES: usize = 128;

impl SessionControllerLayer {
    /// A layer on the [`SystemClock`].
    ///
    /// ```
    /// use tower_sessions_controller::SessionControllerLayer;
    ///
    /// let layer = SessionControllerLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            limits: Limits {
                budget: DEFAULT_BUDGET,
                max_depth: DEFAULT_MAX_DEPTH,
            },
            session_limits: SessionLimits {
                budget: DEFAULT_SESSION_BUDGET,
                namespaces: DEFAULT_MAX_NAMESPACES,
            },
        }
    }

    /// Uses `clock` for "now": once per request, when the request enters the layer.
    ///
    /// # Example
    ///
    /// ```
    /// use time::macros::datetime;
    /// use tower_sessions_controller::{ManualClock, SessionControllerLayer};
    ///
    /// let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
    /// let layer = SessionControllerLayer::new().with_clock(clock.clone());
    /// # let _ = layer;
    /// ```
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the budget of every namespace, in bytes of its JSON as stored (user data and
    /// bookkeeping):
    /// [`DEFAULT_BUDGET`] (1 MiB) unless set. An insert that would cross it is an
    /// [`Error::OverBudget`](crate::Error::OverBudget) and writes nothing. A namespace can set its
    /// own with [`SessionController::with_budget`](crate::SessionController::with_budget) or
    /// [`Namespace::BUDGET`](crate::Namespace::BUDGET).
    ///
    /// # Example
    ///
    /// ```
    /// use tower_sessions_controller::SessionControllerLayer;
    ///
    /// // Sessions kept in a cookie: keep each namespace well under the cookie's 4 KiB.
    /// let layer = SessionControllerLayer::new().with_budget(1024);
    /// # let _ = layer;
    /// ```
    pub fn with_budget(mut self, bytes: usize) -> Self {
        self.limits.budget = bytes;
        self
    }

    /// Sets how deep a stored value may nest arrays and objects: [`DEFAULT_MAX_DEPTH`] (32)
    /// unless set. An insert of a deeper value is an [`Error::TooDeep`](crate::Error::TooDeep)
    /// and writes nothing; a `Keyed<T>` holding one fails the response when it is flushed.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_sessions_controller::SessionControllerLayer;
    ///
    /// let layer = SessionControllerLayer::new().with_max_depth(8);
    /// # let _ = layer;
    /// ```
    pub fn with_max_depth(mut self, levels: usize) -> Self {
        self.limits.max_depth = levels;
        self
    }

    /// Sets the budget of a whole session, in bytes of its JSON as stored (every namespace, and
    /// every key written through `Session` directly): [`DEFAULT_SESSION_BUDGET`] (4 MiB) unless
    /// set. A request that would take the session past it by writing to a namespace answers
    /// [`Error::SessionFull`](crate::Error::SessionFull), and nothing of it is saved; a request
    /// that removes or purges is always saved.
    ///
    /// The whole session is seen where it is saved, so the check is made by a merging store
    /// ([`MergingStore`](crate::MergingStore), [`stores`](crate::stores)); with another store,
    /// each namespace's budget still bounds what a write stores.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_sessions_controller::SessionControllerLayer;
    ///
    /// let layer = SessionControllerLayer::new().with_session_budget(64 * 1024);
    /// # let _ = layer;
    /// ```
    pub fn with_session_budget(mut self, bytes: usize) -> Self {
        self.session_limits.budget = bytes;
        self
    }

    /// Sets how many top-level keys a session may hold (namespaces, and keys written through
    /// `Session` directly): [`DEFAULT_MAX_NAMESPACES`] (128) unless set. A request that would
    /// create a namespace past it answers [`Error::SessionFull`](crate::Error::SessionFull), and
    /// nothing of it is saved. Checked by merging stores, as
    /// [`with_session_budget`](Self::with_session_budget) is.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_sessions_controller::SessionControllerLayer;
    ///
    /// let layer = SessionControllerLayer::new().with_max_namespaces(16);
    /// # let _ = layer;
    /// ```
    pub fn with_max_namespaces(mut self, count: usize) -> Self {
        self.session_limits.namespaces = count;
        self
    }
}

impl Default for SessionControllerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SessionControllerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionControllerLayer")
            .field("now", &self.clock.now())
            .field("budget", &self.limits.budget)
            .field("max_depth", &self.limits.max_depth)
            .field("session_budget", &self.session_limits.budget)
            .field("max_namespaces", &self.session_limits.namespaces)
            .finish()
    }
}

impl<S> Layer<S> for SessionControllerLayer {
    type Service = SessionControllerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionControllerService {
            inner,
            clock: Arc::clone(&self.clock),
            limits: self.limits,
            session_limits: self.session_limits,
        }
    }
}

/// The service made by [`SessionControllerLayer`]: see there for what it does.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower::Layer;
/// use tower_sessions_controller::{SessionControllerLayer, SessionControllerService};
///
/// let service: SessionControllerService<Router> =
///     SessionControllerLayer::new().layer(Router::new().route("/", get(|| async { "hi" })));
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct SessionControllerService<S> {
    inner: S,
    clock: Arc<dyn Clock>,
    limits: Limits,
    session_limits: SessionLimits,
}

impl<S: fmt::Debug> fmt::Debug for SessionControllerService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionControllerService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for SessionControllerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let session = req.extensions().get::<Session>().cloned();
        let state = Arc::new(RequestState::new(
            session,
            self.clock.now(),
            self.limits,
            self.session_limits,
        ));
        req.extensions_mut().insert(Arc::clone(&state));
        // The inner service was polled ready and is called now: it needs no clone, and the
        // future it returns owns what it needs.
        ResponseFuture {
            inner: self.inner.call(req),
            state,
            flush: None,
        }
    }
}

/// A flush in progress, which ends in the response to send: boxed, and made only for a request
/// that changed something.
type Flush = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

pin_project! {
    /// The response future of [`SessionControllerService`]: the inner service's response, after
    /// the namespaces the request changed were flushed into the session.
    ///
    /// A request that changed nothing (whether or not it opened namespaces) costs no flush: its
    /// response is handed on as soon as the inner service produces it.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Arc<RequestState>,
        flush: Option<Flush>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("flushing", &self.flush.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Polled as part of the request: a store's load holds the bytes it read for the save.
        held::within(this.state, || {
            if let Some(flush) = this.flush {
                return flush.as_mut().poll(cx).map(Ok);
            }
            let response = ready!(this.inner.poll(cx))?;
            let changed = this.state.finish();
            if changed.is_empty() {
                return Poll::Ready(Ok(keep_loads(this.state, response)));
            }
            let state = Arc::clone(this.state);
            let server_error = response.status().is_server_error();
            let flush = this.flush.insert(Box::pin(async move {
                let response = match state.flush(changed, server_error).await {
                    Ok(()) => response,
                    // A server error: SessionManagerLayer saves nothing for it, so the session
                    // keeps what it had before this request and no namespace is half written.
                    Err(err) => err.into_response(),
                };
                keep_loads(&state, response)
            }));
            flush.as_mut().poll(cx).map(Ok)
        })
    }
}

/// The bytes a load held for the request, kept until the response is sent: the session
/// manager's save, after this layer's response, may still need them.
#[derive(Clone)]
struct HeldLoads {
    /// Only ever dropped.
    _state: Arc<RequestState>,
}

/// `response`, keeping the bytes `state`'s loads hold, if any, until it is dropped.
fn keep_loads(state: &Arc<RequestState>, mut response: Response<Body>) -> Response<Body> {
    if state.loads().any() {
        response.extensions_mut().insert(HeldLoads {
            _state: Arc::clone(state),
        });
    }
    response
}
