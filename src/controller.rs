//! The runtime-keyed controllers that handlers touch: [`SessionControllers`] opens a
//! [`SessionController`] for a namespace named at run time.

use std::{fmt, num::NonZeroU32, sync::Arc};

use axum::{extract::FromRequestParts, http::request::Parts};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use crate::{
    budget,
    entry::Entry,
    error::Error,
    expiry::{self, ExpiryPolicy, Lifetime},
    export::{escape_js, json_script},
    keyed::{Keyed, Namespace},
    state::RequestState,
    stored,
};

/// An extractor that opens namespaces of the visitor's session by key.
///
/// Needs [`SessionControllerLayer`](crate::SessionControllerLayer) inside
/// `tower_sessions::SessionManagerLayer`; without them it rejects the request with
/// [`Error::MissingLayer`] or [`Error::MissingSessionManager`].
///
/// # Example
///
/// ```
/// use axum::{routing::post, Router};
/// use tower_sessions::{MemoryStore, SessionManagerLayer};
/// use tower_sessions_controller::{Error, SessionControllerLayer, SessionControllers};
///
/// async fn add(controllers: SessionControllers) -> Result<String, Error> {
///     let mut cart = controllers.open("shopping_cart").await?;
///     let count: u32 = cart.get("apples")?.unwrap_or(0);
///     cart.insert("apples", count + 1)?;
///     Ok(cart.to_json())
/// }
///
/// let app: Router = Router::new()
///     .route("/add", post(add))
///     .layer(SessionControllerLayer::new())
///     .layer(SessionManagerLayer::new(MemoryStore::default()));
/// ```
#[derive(Clone)]
pub struct SessionControllers {
    request: Arc<RequestState>,
}

impl SessionControllers {
    pub(crate) fn from_state(request: Arc<RequestState>) -> Self {
        Self { request }
    }

    /// Opens the namespace under `key` with the default expiry,
    /// [`DEFAULT_EXPIRY`](crate::DEFAULT_EXPIRY) (five minutes).
    ///
    /// See [`open_with_expiry`](Self::open_with_expiry).
    ///
    /// # Example
    ///
    /// ```
    /// # use tower_sessions_controller::ExpiryPolicy;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_sessions_controller::Error> {
    /// # let controllers = tower_sessions_controller::__doc_controllers();
    /// let mut cart = controllers.open("shopping_cart").await?;
    /// cart.insert("apples", 3)?;
    /// assert_eq!(cart.policy(), ExpiryPolicy::SlidingOnWrite(time::Duration::minutes(5)));
    ///
    /// // A second open in the same request shares the first one's state.
    /// let again = controllers.open("shopping_cart").await?;
    /// assert_eq!(again.get::<u32>("apples")?, Some(3));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`open_with_expiry`](Self::open_with_expiry).
    pub async fn open(&self, key: &str) -> Result<SessionController, Error> {
        self.open_with_policy(key, ExpiryPolicy::default()).await
    }

    /// Opens the namespace under `key`; writes through the controller set its expiry stamp to the
    /// request's now plus `expiry`: [`open_with_policy`](Self::open_with_policy) with
    /// [`ExpiryPolicy::SlidingOnWrite`], the seed's rule.
    ///
    /// # Example
    ///
    /// ```
    /// use time::Duration;
    /// use tower_sessions_controller::{Error, SessionControllers};
    ///
    /// async fn wizard(controllers: SessionControllers) -> Result<(), Error> {
    ///     let mut answers = controllers
    ///         .open_with_expiry("checkout", Duration::minutes(2))
    ///         .await?;
    ///     answers.insert("step", 1)?;
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`open_with_policy`](Self::open_with_policy).
    pub async fn open_with_expiry(
        &self,
        key: &str,
        expiry: Duration,
    ) -> Result<SessionController, Error> {
        self.open_with_policy(key, ExpiryPolicy::SlidingOnWrite(expiry))
            .await
    }

    /// Opens the namespace under `key`, expiring as `policy` says.
    ///
    /// The first open of a key in a request loads it from the session. A namespace that has
    /// expired (its stamp has passed, or it has no requests left) is dropped then, so the
    /// controller starts empty; so are keys whose own [`Lifetime`](crate::Lifetime) is over.
    /// Later opens of the same key in the same request share that state. Opening writes nothing
    /// to the session by itself, except what the policy asks for: a namespace that slides on
    /// access gets a new stamp, and one counted in requests (or holding keys counted in
    /// requests) counts this one.
    ///
    /// # Example
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use time::Duration;
    /// use tower_sessions_controller::{Error, ExpiryPolicy, SessionControllers};
    ///
    /// async fn search(controllers: SessionControllers) -> Result<(), Error> {
    ///     // Kept while the visitor keeps looking, even without changing the filters.
    ///     let mut filters = controllers
    ///         .open_with_policy("search", ExpiryPolicy::SlidingOnAccess(Duration::minutes(15)))
    ///         .await?;
    ///     filters.insert("colour", "red")?;
    ///
    ///     // Readable by the next three requests that open it.
    ///     let three = ExpiryPolicy::Hops(NonZeroU32::new(3).unwrap());
    ///     let mut handoff = controllers.open_with_policy("handoff", three).await?;
    ///     handoff.insert("from", "search")?;
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidExpiry`] if the policy's duration is zero or negative.
    /// - [`Error::NamespaceInUse`] if a [`Keyed`] for the same key is alive in this request.
    /// - [`Error::Store`] if the session had to be loaded and the store failed.
    pub async fn open_with_policy(
        &self,
        key: &str,
        policy: ExpiryPolicy,
    ) -> Result<SessionController, Error> {
        let entry = self.request.open(key, policy).await?;
        entry.open(policy, self.request.now)?;
        Ok(SessionController {
            entry,
            budget: self.request.limits.budget,
            request: Arc::clone(&self.request),
            policy,
        })
    }

    /// Opens the typed namespace `T`, like extracting [`Keyed<T>`].
    ///
    /// # Example
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use tower_sessions_controller::{Error, Namespace};
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Cart {
    ///     items: Vec<String>,
    /// }
    ///
    /// impl Namespace for Cart {
    ///     const KEY: &'static str = "shopping_cart";
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let controllers = tower_sessions_controller::__doc_controllers();
    /// let mut cart = controllers.keyed::<Cart>().await?;
    /// cart.items.push("apple".into());
    ///
    /// // While `cart` is alive, it holds the namespace.
    /// assert!(matches!(
    ///     controllers.open("shopping_cart").await,
    ///     Err(Error::NamespaceInUse { .. })
    /// ));
    /// drop(cart);
    /// let cart = controllers.open("shopping_cart").await?;
    /// assert_eq!(cart.to_json(), r#"{"items":["apple"]}"#);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As the [`Keyed`] extractor.
    pub async fn keyed<T: Namespace>(&self) -> Result<Keyed<T>, Error> {
        Keyed::open(&self.request).await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionControllers {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            request: RequestState::of(parts)?,
        })
    }
}

impl fmt::Debug for SessionControllers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionControllers")
            .field("now", &self.request.now)
            .finish_non_exhaustive()
    }
}

/// One namespace of the visitor's session: a map of the user's keys to JSON values, with an
/// expiry stamp that slides on every write.
///
/// Obtained from [`SessionControllers::open`]. Methods are synchronous: they change the
/// request's copy of the namespace, and
/// [`SessionControllerLayer`](crate::SessionControllerLayer) writes it back into the session when
/// the response is produced. Changes made after that (by a controller moved into a spawned task)
/// are not saved, and are logged as a warning.
///
/// In every example below, `cart` is a controller opened in a handler, as in
/// [`SessionControllers`]'s example.
pub struct SessionController {
    entry: Arc<Entry>,
    request: Arc<RequestState>,
    policy: ExpiryPolicy,
    budget: usize,
}

impl SessionController {
    /// The namespace's key in the session.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|cart| {
    /// assert_eq!(cart.key(), "shopping_cart");
    /// # });
    /// ```
    pub fn key(&self) -> &str {
        self.entry.namespace()
    }

    /// The expiry policy this controller was opened with: what a write does to the deadline.
    ///
    /// ```
    /// # use tower_sessions_controller::ExpiryPolicy;
    /// # tower_sessions_controller::__doc_controller(|cart| {
    /// assert_eq!(cart.policy(), ExpiryPolicy::SlidingOnWrite(time::Duration::minutes(5)));
    /// # });
    /// ```
    pub fn policy(&self) -> ExpiryPolicy {
        self.policy
    }

    /// Sets the budget of writes through this controller, in bytes of the namespace as stored
    /// (its user data and its stamp, counts and keys' lifetimes, serialized as JSON), instead of
    /// the layer's
    /// ([`SessionControllerLayer::with_budget`](crate::SessionControllerLayer::with_budget)).
    ///
    /// ```
    /// # use tower_sessions_controller::Error;
    /// # tower_sessions_controller::__doc_controller(|cart| {
    /// let mut cart = cart.with_budget(64);
    /// // {"apples":3,"_timeout_datestamp":1795629985.363972}: about 52 bytes
    /// cart.insert("apples", 3)?;
    /// let err = cart.insert("note", "a note far too long for the budget").unwrap_err();
    /// assert!(matches!(err, Error::OverBudget { limit: 64, .. }));
    /// assert!(!cart.contains_key("note"));
    /// # Ok::<(), Error>(())
    /// # });
    /// ```
    pub fn with_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// The budget of inserts through this controller, in bytes.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|cart| {
    /// assert_eq!(cart.budget(), tower_sessions_controller::DEFAULT_BUDGET);
    /// # });
    /// ```
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The value under `key`, deserialized into `T`; `Ok(None)` if there is none. Reading does
    /// not move the stamp.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// assert_eq!(cart.get::<u32>("apples")?, Some(3));
    /// assert_eq!(cart.get::<u32>("pears")?, None);
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deserialize`] if the stored value does not deserialize into `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.entry.read(|map| {
            let Some(value) = map.get(key) else {
                return Ok(None);
            };
            T::deserialize(value)
                .map(Some)
                .map_err(|source| Error::Deserialize {
                    namespace: self.key().to_owned(),
                    key: key.to_owned(),
                    source,
                })
        })
    }

    /// Stores `value` under `key`; the stamp moves as the [policy](Self::policy) says (by default
    /// it slides to now plus the expiry). A [`Lifetime`](crate::Lifetime) the key has stays.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// assert!(cart.has_data());
    /// assert!(!cart.is_expired());
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::ReservedKey`] for [`STAMP_KEY`](crate::STAMP_KEY),
    ///   [`HOPS_KEY`](crate::HOPS_KEY) and [`LIFETIMES_KEY`](crate::LIFETIMES_KEY).
    /// - [`Error::Serialize`] if `value` cannot be turned into JSON.
    /// - [`Error::OverBudget`] if the namespace would grow past its [budget](Self::budget).
    ///
    /// On error nothing is written.
    pub fn insert(&mut self, key: &str, value: impl Serialize) -> Result<(), Error> {
        self.insert_for(key, value, None)
    }

    /// Changes the value under `key` in place: `change` gets it deserialized into `T` (or
    /// `T::default()` if the namespace holds none), and what it leaves is stored as by
    /// [`insert`](Self::insert): the stamp moves as the [policy](Self::policy) says, the budget
    /// and the nesting limit are checked, a [`Lifetime`](crate::Lifetime) the key has stays.
    /// Returns what `change` returns.
    ///
    /// The usual step of a cart, a counter or a wizard: one call instead of a
    /// [`get`](Self::get) and an [`insert`](Self::insert).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// let apples = cart.update("items", |items: &mut BTreeMap<String, u32>| {
    ///     let count = items.entry("apple".to_owned()).or_default();
    ///     *count += 1;
    ///     *count
    /// })?;
    /// assert_eq!(apples, 1);
    /// assert_eq!(cart.get::<BTreeMap<String, u32>>("items")?.unwrap()["apple"], 1);
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::Deserialize`] if the stored value does not deserialize into `T`: then
    ///   `change` is not called.
    /// - As [`insert`](Self::insert) for what `change` leaves.
    ///
    /// On error nothing is written.
    pub fn update<T, R>(&mut self, key: &str, change: impl FnOnce(&mut T) -> R) -> Result<R, Error>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        if stored::is_reserved(key) {
            return Err(Error::ReservedKey {
                key: key.to_owned(),
            });
        }
        let mut value = self.get::<T>(key)?.unwrap_or_default();
        let outcome = change(&mut value);
        self.insert_for(key, value, None)?;
        Ok(outcome)
    }

    /// [`insert`](Self::insert), giving the key its own `lifetime` in the same step.
    fn insert_for(
        &mut self,
        key: &str,
        value: impl Serialize,
        lifetime: Option<Lifetime>,
    ) -> Result<(), Error> {
        if stored::is_reserved(key) {
            return Err(Error::ReservedKey {
                key: key.to_owned(),
            });
        }
        let value = serde_json::to_value(value).map_err(|source| Error::Serialize {
            namespace: self.key().to_owned(),
            key: Some(key.to_owned()),
            source,
        })?;
        let max_depth = self.request.limits.max_depth;
        if budget::is_deeper_than(&value, max_depth) {
            return Err(Error::TooDeep {
                namespace: self.key().to_owned(),
                key: Some(key.to_owned()),
                limit: max_depth,
            });
        }
        let now = self.request.now;
        self.entry.insert(
            key.to_owned(),
            value,
            lifetime.map(|lifetime| lifetime.deadline(now)),
            now,
            self.policy,
            self.budget,
        )?;
        self.request.warn_if_responded(self.key(), "changed");
        Ok(())
    }

    /// Gives `key` its own lifetime, ending before the namespace's: when it is over, the key
    /// disappears as if removed (and if it was the last key, the namespace goes with it).
    ///
    /// The lifetime belongs to the key, not to the value: set before or after the value in the
    /// same request, the outcome is the same, and a later [`insert`](Self::insert) keeps it.
    /// [`remove`](Self::remove) ends it. A [`Lifetime::For`](crate::Lifetime::For) counts from
    /// the request's now; a [`Lifetime::Hops`](crate::Lifetime::Hops) counts the later requests
    /// that open the namespace. Setting a lifetime does not move the namespace's stamp.
    ///
    /// ```
    /// use time::Duration;
    /// use tower_sessions_controller::Lifetime;
    /// # tower_sessions_controller::__doc_controller(|mut checkout| {
    /// checkout.set_lifetime("coupon", Lifetime::For(Duration::seconds(30)))?;
    /// checkout.insert("coupon", "SPRING")?;
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::ReservedKey`] for the reserved keys.
    /// - [`Error::InvalidExpiry`] for a duration that is zero or negative.
    /// - [`Error::OverBudget`] if the lifetime, stored with the namespace, would take it past
    ///   its [budget](Self::budget).
    ///
    /// On error nothing changes.
    pub fn set_lifetime(&mut self, key: &str, lifetime: Lifetime) -> Result<(), Error> {
        if stored::is_reserved(key) {
            return Err(Error::ReservedKey {
                key: key.to_owned(),
            });
        }
        if let Lifetime::For(duration) = lifetime {
            if !expiry::is_valid(duration) {
                return Err(Error::InvalidExpiry {
                    namespace: self.key().to_owned(),
                    expiry: duration,
                });
            }
        }
        self.entry
            .set_lifetime(key, lifetime.deadline(self.request.now), self.budget)?;
        self.request.warn_if_responded(self.key(), "changed");
        Ok(())
    }

    /// Stores a one-time value: readable in the next request that opens the namespace, then
    /// gone. [`insert`](Self::insert) with a [`Lifetime::Hops`](crate::Lifetime::Hops) of one;
    /// read it with [`get`](Self::get) (this request sees it too).
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut notices| {
    /// notices.flash("saved", "Your address was saved.")?;
    /// // The next request that opens the namespace reads it; the one after finds nothing.
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert); on error nothing is written.
    pub fn flash(&mut self, key: &str, value: impl Serialize) -> Result<(), Error> {
        self.insert_for(key, value, Some(Lifetime::Hops(NonZeroU32::MIN)))
    }

    /// Removes `key` (and its lifetime) and returns its value; `None` (and no change) if it was
    /// absent. Removing the last key removes the whole namespace, stamp included. Removal does
    /// not move the stamp.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// assert_eq!(cart.remove("apples"), Some(serde_json::json!(3)));
    /// assert_eq!(cart.remove("apples"), None);
    /// assert_eq!(cart.expires_at(), None);
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let removed = self.entry.remove(key)?;
        self.request.warn_if_responded(self.key(), "changed");
        Some(removed)
    }

    /// Empties the namespace; the session no longer holds it after this request. A no-op for a
    /// namespace that holds nothing.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// cart.purge();
    /// assert!(!cart.has_data());
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn purge(&mut self) {
        self.request.warn_if_responded(self.key(), "purged");
        self.entry.purge();
    }

    /// Whether the namespace holds any of the user's keys.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|cart| {
    /// assert!(!cart.has_data());
    /// # });
    /// ```
    pub fn has_data(&self) -> bool {
        !self.entry.read(Map::is_empty)
    }

    /// The number of the user's keys.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// cart.insert("pears", 1)?;
    /// assert_eq!(cart.len(), 2);
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn len(&self) -> usize {
        self.entry.read(Map::len)
    }

    /// Whether the namespace holds none of the user's keys: `!has_data()`.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|cart| {
    /// assert!(cart.is_empty());
    /// # });
    /// ```
    pub fn is_empty(&self) -> bool {
        !self.has_data()
    }

    /// Whether the namespace holds `key`.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// assert!(cart.contains_key("apples"));
    /// assert!(!cart.contains_key("_timeout_datestamp"));
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn contains_key(&self, key: &str) -> bool {
        self.entry.read(|map| map.contains_key(key))
    }

    /// The user's keys, in the map's order (sorted).
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("pears", 1)?;
    /// cart.insert("apples", 3)?;
    /// assert_eq!(cart.keys(), ["apples", "pears"]);
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn keys(&self) -> Vec<String> {
        self.entry.read(|map| map.keys().cloned().collect())
    }

    /// A copy of the user's keys and values (never the stamp): the seed's `data`.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// assert_eq!(cart.data()["apples"], 3);
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn data(&self) -> Map<String, Value> {
        self.entry.read(Map::clone)
    }

    /// True unless the namespace holds a stamp still in the future (the seed's rule): a
    /// namespace that was never written, or was emptied, reports expired. Under a policy that
    /// keeps no stamp ([`ExpiryPolicy::Hops`], [`ExpiryPolicy::Never`]), true when it holds
    /// nothing.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// assert!(cart.is_expired());
    /// cart.insert("apples", 3)?;
    /// assert!(!cart.is_expired());
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn is_expired(&self) -> bool {
        self.policy
            .is_expired(self.expires_at(), self.has_data(), self.request.now)
    }

    /// The instant the namespace expires (the seed's `timeout_datestamp`), if it holds a stamp.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// assert_eq!(cart.expires_at(), None);
    /// cart.insert("apples", 3)?;
    /// assert!(cart.expires_at().is_some());
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.entry.deadline().stamp
    }

    /// The user's keys and values as a JSON object, never the stamp.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("apples", 3)?;
    /// assert_eq!(cart.to_json(), r#"{"apples":3}"#);
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn to_json(&self) -> String {
        self.entry.read(map_to_json)
    }

    /// [`to_json`](Self::to_json) through [`escape_js`]: the seed's template tag, safe only
    /// inside a quoted JavaScript string (`JSON.parse("…")`).
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("note", "</script>")?;
    /// assert_eq!(
    ///     cart.to_escaped_json(),
    ///     r#"{\u0022note\u0022:\u0022\u003C/script\u003E\u0022}"#
    /// );
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn to_escaped_json(&self) -> String {
        escape_js(&self.to_json())
    }

    /// [`to_json`](Self::to_json) as a `<script type="application/json" id="…">` element, like
    /// Django's `json_script`: safe to put in a page's HTML as is, whatever the data holds. See
    /// [`json_script`] for the escaping.
    ///
    /// ```
    /// # tower_sessions_controller::__doc_controller(|mut cart| {
    /// cart.insert("note", "</script>")?;
    /// assert_eq!(
    ///     cart.to_json_script("cart-data"),
    ///     r#"<script id="cart-data" type="application/json">{"note":"\u003C/script\u003E"}</script>"#
    /// );
    /// # Ok::<(), tower_sessions_controller::Error>(())
    /// # });
    /// ```
    pub fn to_json_script(&self, id: &str) -> String {
        json_script(&self.to_json(), id)
    }
}

/// Serializes the user's keys. Cannot fail: the keys are strings and the values are already JSON.
fn map_to_json(map: &Map<String, Value>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| String::from("{}"))
}

impl fmt::Debug for SessionController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionController")
            .field("key", &self.key())
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("expires_at", &self.expires_at())
            .field("data", &self.data())
            .finish()
    }
}
