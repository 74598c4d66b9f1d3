//! What can go wrong, and what a developer should do about it.

use std::fmt;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use time::Duration;

/// The errors of this crate.
///
/// Every variant but one is a fault of the server, not of the visitor, so as an axum rejection or
/// a handler error it answers `500 Internal Server Error`. Misconfiguration and misuse answer with
/// a message that names the fix; a store failure answers with a generic message and logs the
/// details. Every such response is also logged with `tracing` at `error` level. The exception is
/// [`Error::SessionEnded`]: `409 Conflict`, logged at `warn`.
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
    /// A write would have made a namespace larger than its budget: its JSON as stored, in bytes,
    /// the user data and the namespace's own bookkeeping (stamp, counts, keys' lifetimes). Nothing
    /// was written.
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
    /// A namespace was opened under a key it may not have: too long, or one of the top-level
    /// keys this crate keeps for itself (they begin with `tower_sessions_controller.`).
    InvalidNamespace {
        /// The refused key.
        namespace: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The session ended while the request ran: another request logged out (`Session::flush`),
    /// cycled its id at a login, or it expired, between this request's load and its save. Nothing
    /// of the request was saved, and its session cookie is removed. Answers `409 Conflict` (not a
    /// fault of the server: the visitor's session changed under the request).
    ///
    /// Only a merging store can tell ([`MergingStore`](crate::MergingStore) and
    /// [`stores`](crate::stores)); with another store, the ended session is written back.
    SessionEnded,
    /// A value nests arrays and objects deeper than the layer allows
    /// ([`SessionControllerLayer::with_max_depth`](crate::SessionControllerLayer::with_max_depth)).
    /// Nothing was written.
    TooDeep {
        /// The namespace written to.
        namespace: String,
        /// The key inserted; `None` when a whole typed namespace was written.
        key: Option<String>,
        /// The deepest nesting allowed.
        limit: usize,
    },
    /// The session as a whole would cross its limits
    /// ([`SessionControllerLayer::with_session_budget`](crate::SessionControllerLayer::with_session_budget),
    /// [`SessionControllerLayer::with_max_namespaces`](crate::SessionControllerLayer::with_max_namespaces))
    /// and the request added to it: nothing of the request was saved.
    ///
    /// Only a merging store sees the whole session and can tell
    /// ([`MergingStore`](crate::MergingStore) and [`stores`](crate::stores)); with another store,
    /// each namespace's budget and the length of its key still bound what is stored.
    SessionFull {
        /// The bytes the session's data would take as stored (JSON).
        size: usize,
        /// The top-level keys it would hold (namespaces, and keys written through `Session`).
        namespaces: usize,
        /// Its budget, in bytes.
        budget: usize,
        /// The most top-level keys it may hold.
        max_namespaces: usize,
    },
}

/// A namespace or key as error messages show it: quoted, and cut short past 64 characters (a key
/// can be anything a visitor sent).
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
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
                "the key {} is reserved for the namespace's bookkeeping (its expiry stamp, \
                 request count and keys' lifetimes); choose another key",
                Shown(key)
            ),
            Self::Serialize {
                namespace,
                key: Some(key),
                source,
            } => write!(
                f,
                "the value for key {} of namespace {} cannot be serialized: {source}",
                Shown(key),
                Shown(namespace)
            ),
            Self::Serialize {
                namespace,
                key: None,
                source,
            } => write!(
                f,
                "namespace {} cannot be serialized: {source}",
                Shown(namespace)
            ),
            Self::Deserialize {
                namespace,
                key,
                source,
            } => write!(
                f,
                "the value for key {} of namespace {} does not deserialize into the type asked \
                 for: {source}",
                Shown(key),
                Shown(namespace)
            ),
            Self::NotAnObject { namespace } => write!(
                f,
                "namespace {} did not serialize to a JSON object: a `Namespace` type must be a \
                 struct or a map",
                Shown(namespace)
            ),
            Self::NamespaceInUse { namespace } => write!(
                f,
                "namespace {} is already open in this request as a `Keyed` (or a `Keyed` was \
                 asked for while a controller for it is open): drop one before opening the other",
                Shown(namespace)
            ),
            Self::InvalidExpiry { namespace, expiry } => write!(
                f,
                "namespace {} was opened with expiry {expiry}; an expiry must be positive",
                Shown(namespace)
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
                        "inserting {} would make namespace {} {size} bytes, ",
                        Shown(key),
                        Shown(namespace)
                    )?,
                    None => write!(f, "namespace {} would be {size} bytes, ", Shown(namespace))?,
                }
                write!(
                    f,
                    "over its budget of {limit} bytes (its user data and its stamp, counts and \
                     keys' lifetimes as stored); nothing was written (store less, or raise the \
                     budget with SessionControllerLayer::with_budget, \
                     SessionController::with_budget or Namespace::BUDGET)"
                )
            }
            Self::SessionEnded => f.write_str(
                "the session ended while this request ran (another request logged out or signed \
                 in anew): nothing of this request was saved",
            ),
            Self::InvalidNamespace { namespace, reason } => write!(
                f,
                "a namespace cannot be opened under the key {}: {reason}",
                Shown(namespace)
            ),
            Self::TooDeep {
                namespace,
                key,
                limit,
            } => {
                match key {
                    Some(key) => write!(f, "the value for key {}", Shown(key))?,
                    None => f.write_str("the value")?,
                }
                write!(
                    f,
                    " of namespace {} nests arrays and objects more than {limit} levels deep; \
                     nothing was written (flatten the value, or raise the limit with \
                     SessionControllerLayer::with_max_depth)",
                    Shown(namespace)
                )
            }
            Self::SessionFull {
                size,
                namespaces,
                budget,
                max_namespaces,
            } => write!(
                f,
                "the session would hold {namespaces} namespaces in {size} bytes, over its limits \
                 of {max_namespaces} namespaces and {budget} bytes; nothing of this request was \
                 saved (remove or purge namespaces the visitor no longer needs, or raise the \
                 limits with SessionControllerLayer::with_session_budget and \
                 SessionControllerLayer::with_max_namespaces)"
            ),
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
        if matches!(self, Self::SessionEnded) {
            tracing::warn!(error = %self, "session controller error");
        } else {
            tracing::error!(error = %self, "session controller error");
        }
        let status = match self {
            Self::SessionEnded => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = match self {
            // Store errors can carry connection details: keep them in the log.
            Self::Store(_) => "session store unavailable".to_owned(),
            other => other.to_string(),
        };
        (status, body).into_response()
    }
}
