//! What can go wrong, and what a developer should do about it.

use std::fmt;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use time::Duration;

/// The errors of this crate.
///
/// Every variant is a fault of the server, not of the visitor, so as an axum rejection or a
/// handler error it answers `500 Internal Server Error`. Misconfiguration and misuse answer with a
/// message that names the fix; a store failure answers with a generic message and logs the
/// details. Every response is also logged with `tracing` at `error` level.
///
/// # Example
///
/// ```
/// use tower_sessions_controller::Error;
///
/// let err = Error::ReservedKey { key: "_timeout_datestamp".into() };
/// assert!(err.to_string().contains("reserved"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An extractor of this crate ran on a route without
    /// [`SessionControllerLayer`](crate::SessionControllerLayer).
    MissingLayer,
    /// [`SessionControllerLayer`](crate::SessionControllerLayer) found no `tower_sessions::Session`
    /// on the request: it is not inside `SessionManagerLayer`.
    MissingSessionManager,
    /// The session store failed: while a namespace was loaded, or while the flush wrote the
    /// request's changes into the session (which loads it first if nothing else has).
    Store(tower_sessions::session::Error),
    /// A user key collides with a key the namespace keeps for its bookkeeping
    /// ([`STAMP_KEY`](crate::STAMP_KEY), [`HOPS_KEY`](crate::HOPS_KEY),
    /// [`LIFETIMES_KEY`](crate::LIFETIMES_KEY)).
    ReservedKey {
        /// The refused key.
        key: String,
    },
    /// A value could not be turned into JSON.
    Serialize {
        /// The namespace written to.
        namespace: String,
        /// The key written; `None` when a whole typed namespace was written.
        key: Option<String>,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// A stored value does not deserialize into the type asked for.
    Deserialize {
        /// The namespace read from.
        namespace: String,
        /// The key read.
        key: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// A [`Namespace`](crate::Namespace) type serialized to something other than a JSON object
    /// (a namespace stores its data as the fields of one object).
    NotAnObject {
        /// The namespace written to.
        namespace: String,
    },
    /// A namespace was opened while a [`Keyed`](crate::Keyed) for it was alive, or a `Keyed` was
    /// extracted while another controller for the same namespace was alive: the two would
    /// diverge.
    NamespaceInUse {
        /// The namespace in use.
        namespace: String,
    },
    /// A namespace was opened with an expiry that is zero or negative.
    InvalidExpiry {
        /// The namespace opened.
        namespace: String,
        /// The refused expiry.
        expiry: Duration,
    },
    /// A write would have made a namespace larger than its budget (its user data serialized as
    /// JSON, in bytes). Nothing was written.
    OverBudget {
        /// The namespace written to.
        namespace: String,
        /// The key inserted; `None` when a whole typed namespace was written.
        key: Option<String>,
        /// The size the namespace would have had, in bytes.
        size: usize,
        /// The namespace's budget, in bytes.
        limit: usize,
    },
}

/// How to put the two layers in order, both ways of adding layers.
const LAYER_ORDER: &str = "In one `tower::ServiceBuilder`, add \
    `SessionManagerLayer::new(store)` first and `SessionControllerLayer::new()` after it; with \
    separate `Router::layer` calls, call `.layer(SessionControllerLayer::new())` first and \
    `.layer(SessionManagerLayer::new(store))` after it (the last layer added runs first)";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingLayer => write!(
                f,
                "session controllers are not available on this route: add \
                 `SessionControllerLayer::new()` to the router, inside `SessionManagerLayer`. \
                 {LAYER_ORDER}"
            ),
            Self::MissingSessionManager => write!(
                f,
                "SessionControllerLayer found no session on the request: it must run inside \
                 tower_sessions::SessionManagerLayer. {LAYER_ORDER}"
            ),
            Self::Store(err) => write!(f, "the session store failed: {err}"),
            Self::ReservedKey { key } => write!(
                f,
                "the key {key:?} is reserved for the namespace's bookkeeping (its expiry stamp, \
                 request count and keys' lifetimes); choose another key"
            ),
            Self::Serialize {
                namespace,
                key: Some(key),
                source,
            } => write!(
                f,
                "the value for key {key:?} of namespace {namespace:?} cannot be serialized: {source}"
            ),
            Self::Serialize {
                namespace,
                key: None,
                source,
            } => write!(f, "namespace {namespace:?} cannot be serialized: {source}"),
            Self::Deserialize {
                namespace,
                key,
                source,
            } => write!(
                f,
                "the value for key {key:?} of namespace {namespace:?} does not deserialize into the \
                 type asked for: {source}"
            ),
            Self::NotAnObject { namespace } => write!(
                f,
                "namespace {namespace:?} did not serialize to a JSON object: a `Namespace` type must \
                 be a struct or a map"
            ),
            Self::NamespaceInUse { namespace } => write!(
                f,
                "namespace {namespace:?} is already open in this request as a `Keyed` (or a \
                 `Keyed` was asked for while a controller for it is open): drop one before opening \
                 the other"
            ),
            Self::InvalidExpiry { namespace, expiry } => write!(
                f,
                "namespace {namespace:?} was opened with expiry {expiry}; an expiry must be \
                 positive"
            ),
            Self::OverBudget {
                namespace,
                key,
                size,
                limit,
            } => {
                match key {
                    Some(key) => write!(
                        f,
                        "inserting {key:?} would make namespace {namespace:?} {size} bytes, "
                    )?,
                    None => write!(f, "namespace {namespace:?} would be {size} bytes, ")?,
                }
                write!(
                    f,
                    "over its budget of {limit} bytes; nothing was written (store less, or raise \
                     the budget with SessionControllerLayer::with_budget, \
                     SessionController::with_budget or Namespace::BUDGET)"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(err) => Some(err),
            Self::Serialize { source, .. } | Self::Deserialize { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        tracing::error!(error = %self, "session controller error");
        let body = match self {
            // Store errors can carry connection details: keep them in the log.
            Self::Store(_) => "session store unavailable".to_owned(),
            other => other.to_string(),
        };
        (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
    }
}
