//! Keyed, expiring namespaces of session data for axum, on top of [`tower_sessions`].
//!
//! # The design
//!
//! A visitor's session often carries several features' data: a shopping cart, the answers of a
//! checkout wizard, a search filter. Each wants its own key in the session and its own lifetime:
//! the wizard's answers should go stale after a few minutes of inactivity while the cart lives on.
//! This crate gives each feature a **namespace**: one key of the tower-sessions session holding a
//! JSON object of that feature's keys and values, plus an expiry **stamp**. It is the Rust form
//! of django-spire's `SessionController`, and it reads and writes the same stored layout.
//!
//! - A **write** (an [`insert`](SessionController::insert) or
//!   [`update`](SessionController::update), or any mutable access to a
//!   [`Keyed<T>`]) slides the stamp to *now + expiry* (five minutes by default). Reads never move
//!   it.
//! - A namespace whose stamp has passed is **dropped when it is opened**: the handler sees it
//!   empty, and a write in the same request starts a fresh one.
//! - **Removing** the last key, or a **purge**, removes the namespace from the session.
//!
//! That is the seed's rule, and the default. An [`ExpiryPolicy`], chosen when a namespace is
//! opened or declared by a typed namespace, gives the others: sliding on any access, a period from
//! the first write that later writes do not extend, a fixed instant, a number of requests
//! ("hops"), or never. Single keys can carry their own [`Lifetime`], in time or in requests, that
//! ends before the namespace's; [`SessionController::flash`] is a value for the next request
//! only. Every rule judges with the request's one "now", and the order of calls within a request
//! does not change the outcome. Each namespace also has a **budget**: an insert that would make it
//! larger than that (1 MiB of JSON unless configured) is refused with [`Error::OverBudget`].
//!
//! Handlers get namespaces from two extractors. [`SessionControllers`] opens a
//! [`SessionController`] by a key chosen at run time; [`Keyed<T>`] hands over a typed value whose
//! key and expiry its [`Namespace`] impl declares. Both are synchronous once opened: a handler
//! changes the request's copy without `.await`.
//!
//! [`SessionControllerLayer`] makes that work. When a request comes in, it takes "now" once from
//! its [`Clock`], so one request judges and stamps with one instant. When the response is
//! produced, it **flushes**: every namespace the request changed is written back into the
//! session, once, and tower-sessions' `SessionManagerLayer` then saves the session. A request
//! that only reads writes nothing, so it costs no store write and gives an anonymous visitor no
//! cookie. If the flush fails, the response becomes a `500` and, as tower-sessions saves nothing
//! for server errors, the stored session stays as it was.
//!
//! tower-sessions itself saves a visitor's whole record at the end of each request, so of two
//! overlapping requests the later save undoes the earlier one. A **merging store** merges each
//! save into the latest stored record instead: every namespace a request changed gets exactly
//! that request's operations (inserts, removals, a purge) applied on top of what is stored now,
//! and keys the request did not touch keep their latest value. The crate's own [`stores`] do so
//! atomically in the store, by compare-and-set ([`stores::MemoryStore`] is the default);
//! [`MergingStore`] wraps any other store. Under a merging store the flush saves the session
//! itself, so a session that ended while the request ran (a logout in another tab) is never
//! written back, and the request answers [`Error::SessionEnded`].
//!
//! Corrupt stored data (a namespace that is not an object, a stamp that is not a number, a typed
//! namespace whose fields no longer deserialize) never fails a request: the namespace reads as
//! empty, a warning naming the key is logged, and the next write replaces it.
//!
//! # Example
//!
//! ```
//! use axum::{routing::post, Router};
//! use serde::{Deserialize, Serialize};
//! use tower::ServiceBuilder;
//! use tower_sessions::SessionManagerLayer;
//! use tower_sessions_controller::{
//!     stores::MemoryStore, Error, Keyed, Namespace, SessionControllerLayer, SessionControllers,
//! };
//!
//! // A typed namespace: key and expiry checked by the compiler.
//! #[derive(Default, Serialize, Deserialize)]
//! struct Cart {
//!     items: Vec<String>,
//! }
//!
//! impl Namespace for Cart {
//!     const KEY: &'static str = "shopping_cart";
//! }
//!
//! async fn add_to_cart(mut cart: Keyed<Cart>) -> String {
//!     cart.items.push("apple".into());
//!     format!("{} items", cart.items.len())
//! }
//!
//! // A runtime key, as in the seed: `SessionController(request, "recently_viewed")`.
//! async fn view(controllers: SessionControllers) -> Result<String, Error> {
//!     let mut viewed = controllers.open("recently_viewed").await?;
//!     viewed.insert("last", "apple")?;
//!     Ok(viewed.to_json())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/cart", post(add_to_cart))
//!     .route("/view", post(view))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(SessionManagerLayer::new(MemoryStore::default())) // outside: the session
//!             .layer(SessionControllerLayer::new()), // inside: its namespaces
//!     );
//! ```
//!
//! # Stored layout
//!
//! Under the namespace's key, the session holds a JSON object: the user's keys and values, and
//! [`STAMP_KEY`] (`_timeout_datestamp`) with the expiry instant as seconds since the Unix epoch,
//! a float. A namespace counted in requests keeps how many it has left under [`HOPS_KEY`], and
//! keys with their own lifetimes are listed under [`LIFETIMES_KEY`]; both appear only when used,
//! so a reader of the seed's layout sees its keys and stamp with their usual meaning. These keys
//! are reserved: inserting one is an [`Error::ReservedKey`], and
//! [`to_json`](SessionController::to_json) never shows them.
//!
//! # Layout of the crate
//!
//! Each rule has one home, and imports run one way, from the request down to the store:
//!
//! - `layer`: the layer; a request comes in and gets its state, the response goes out after the
//!   flush.
//! - `state`: the request's state, shared with the extractors: its "now", the registry of the
//!   namespaces it opened, and the flush.
//! - `entry`: one namespace open in a request, in memory: the rules applied to it (insert,
//!   remove, purge, what opening and the end of the request do) and its loan to a `Keyed`.
//! - `controller` and `keyed`: what handlers touch, by runtime key and by type.
//! - `expiry`: the expiry rules of namespaces and keys, and the policies; `clock`: where "now"
//!   comes from.
//! - `stored`: the stored layout of a namespace, its reserved keys and the stamp's codec;
//!   `budget`: namespace sizes for the budgets.
//! - `merge`: what every merging store shares, and [`MergingStore`], the store wrapper
//!   (`merge/mod.rs`): its locks (`lock`), the journal of a request's operations and the load's
//!   mark (`journal`), the record's versions (`versions`, with the values' digests in
//!   `digest`), the rebuild of a record from a save and the latest stored one (`rebuild`), and
//!   the flush's own save and what it notes (`flushed`). The flush reaches it only through the
//!   journal.
//! - `stores`: the crate's own stores: what they share (`stores/mod.rs`), then `memory` (which
//!   merges under its lock), `batches` (how the stores of a server save: compare-and-set, tries,
//!   batches), `encoded` (a record as the Redis and SQL stores keep it), `held` (a load's bytes
//!   kept for the save), `redis` (feature `redis`) and `sql` (features `postgres` and `sqlite`:
//!   the code both share, then `postgres` and `sqlite`).
//! - `export`: getting namespace data into a page; `error`: what can go wrong.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod budget;
mod clock;
mod controller;
mod entry;
mod error;
mod expiry;
mod export;
mod keyed;
mod layer;
mod merge;
mod state;
mod stored;
pub mod stores;

pub use clock::{Clock, ManualClock, SystemClock};
pub use controller::{SessionController, SessionControllers};
pub use error::Error;
pub use expiry::{ExpiryPolicy, Lifetime, DEFAULT_EXPIRY};
pub use export::{escape_js, json_script};
pub use keyed::{Keyed, Namespace};
pub use layer::{
    ResponseFuture, SessionControllerLayer, SessionControllerService, DEFAULT_BUDGET,
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_NAMESPACES, DEFAULT_SESSION_BUDGET,
};
pub use merge::MergingStore;
pub use stored::{HOPS_KEY, LIFETIMES_KEY, STAMP_KEY};

/// Controllers of a fresh session on a `MemoryStore`, outside any request: the examples in the
/// docs use it. Not part of the API.
#[doc(hidden)]
pub fn __doc_controllers() -> SessionControllers {
    let session = tower_sessions::Session::new(
        None,
        std::sync::Arc::new(tower_sessions::MemoryStore::default()),
        None,
    );
    SessionControllers::from_state(std::sync::Arc::new(state::RequestState::new(
        Some(session),
        time::OffsetDateTime::now_utc(),
        entry::Limits {
            budget: DEFAULT_BUDGET,
            max_depth: DEFAULT_MAX_DEPTH,
        },
        merge::SessionLimits {
            budget: DEFAULT_SESSION_BUDGET,
            namespaces: DEFAULT_MAX_NAMESPACES,
        },
    )))
}

/// Runs `f` on a controller for the namespace `shopping_cart` from [`__doc_controllers`], and
/// fails if the example did. Not part of the API.
#[doc(hidden)]
pub fn __doc_controller<R: __DocOutcome>(f: impl FnOnce(SessionController) -> R) {
    use std::{
        future::Future,
        task::{Context, Poll, Waker},
    };

    let controllers = __doc_controllers();
    // A session without an id never reaches the store, so opening completes at once.
    let open = std::pin::pin!(controllers.open("shopping_cart"));
    match open.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(controller)) => f(controller).check(),
        _ => panic!("opening a namespace of a fresh session did not complete at once"),
    }
}

/// What a doc example run by [`__doc_controller`] ends with: nothing, or a result that must be
/// `Ok`. Not part of the API.
#[doc(hidden)]
pub trait __DocOutcome {
    /// Panics if the example failed.
    fn check(self);
}

impl __DocOutcome for () {
    fn check(self) {}
}

impl<E: std::fmt::Debug> __DocOutcome for Result<(), E> {
    fn check(self) {
        if let Err(err) = self {
            panic!("the example failed: {err:?}");
        }
    }
}

/// The README's Rust blocks, run as doc tests (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
