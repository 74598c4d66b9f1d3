//! Typed namespaces: a [`Namespace`] type names its key and expiry at compile time, and the
//! [`Keyed<T>`] extractor hands the handler a `T`.

use std::{
    fmt,
    ops::{Deref, DerefMut},
    sync::Arc,
};

use axum::{extract::FromRequestParts, http::request::Parts};
use serde::{de::DeserializeOwned, Serialize};
use time::{Duration, OffsetDateTime};

use crate::{
    entry::{Entry, Limits, Return},
    error::Error,
    expiry::{self, ExpiryPolicy, Write},
    export::json_script,
    state::RequestState,
    stored::Deadline,
};

/// A typed namespace: its fields are the namespace's keys, stored under [`KEY`](Self::KEY) in
/// the seed's layout.
///
/// `T` must serialize to a JSON object (a struct with named fields, or a map); the field names
/// must not be reserved keys ([`STAMP_KEY`](crate::STAMP_KEY), [`HOPS_KEY`](crate::HOPS_KEY),
/// [`LIFETIMES_KEY`](crate::LIFETIMES_KEY)): the flush refuses such a value with
/// [`Error::ReservedKey`]. A stored namespace whose fields no longer
/// deserialize into `T` (after a schema change, say) is treated as empty, with a warning, and
/// replaced on the next write; give new fields `#[serde(default)]` to keep old data readable.
///
/// # Example
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use time::Duration;
/// use tower_sessions_controller::Namespace;
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Wizard {
///     step: u8,
///     address: Option<String>,
/// }
///
/// impl Namespace for Wizard {
///     const KEY: &'static str = "checkout_wizard";
///     const EXPIRY: Duration = Duration::minutes(10);
/// }
/// ```
pub trait Namespace: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The key of the namespace in the session.
    const KEY: &'static str;
    /// How far a write moves the expiry stamp under the default policy. Five minutes unless
    /// overridden.
    const EXPIRY: Duration = expiry::DEFAULT_EXPIRY;
    /// When the namespace expires: sliding [`EXPIRY`](Self::EXPIRY) on every write unless
    /// overridden. See [`ExpiryPolicy`] for the others.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use serde::{Deserialize, Serialize};
    /// use tower_sessions_controller::{ExpiryPolicy, Namespace};
    ///
    /// /// A notice shown once, on the next page.
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Notice {
    ///     text: String,
    /// }
    ///
    /// impl Namespace for Notice {
    ///     const KEY: &'static str = "notice";
    ///     const EXPIRY_POLICY: ExpiryPolicy = ExpiryPolicy::Hops(NonZeroU32::MIN);
    /// }
    /// ```
    const EXPIRY_POLICY: ExpiryPolicy = ExpiryPolicy::SlidingOnWrite(Self::EXPIRY);
    /// The namespace's budget in bytes of its fields and its stamp serialized as JSON; the layer's
    /// ([`SessionControllerLayer::with_budget`](crate::SessionControllerLayer::with_budget))
    /// unless set. A `Keyed<T>` is serialized when the response is produced, so a write past the
    /// budget turns the response into an [`Error::OverBudget`] (a `500`), and the session keeps
    /// what it had.
    const BUDGET: Option<usize> = None;
}

/// An extractor for the typed namespace `T`: dereferences to `T`.
///
/// Every mutable access (`DerefMut`) counts as a write: it slides the stamp to now plus
/// [`T::EXPIRY`](Namespace::EXPIRY) and makes the layer store `T` when the response is produced.
/// Reads through `Deref` change nothing. An expired namespace reads as `T::default()`.
///
/// While a `Keyed<T>` is alive it holds the namespace: opening the same key again in the same
/// request (another `Keyed<T>`, or a [`SessionController`](crate::SessionController)) is an
/// [`Error::NamespaceInUse`] rather than two copies that silently diverge. A `Keyed<T>` dropped in
/// a middleware hands its state on to the handler's.
///
/// # Example
///
/// ```
/// use axum::{routing::post, Router};
/// use serde::{Deserialize, Serialize};
/// use tower_sessions::{MemoryStore, SessionManagerLayer};
/// use tower_sessions_controller::{Keyed, Namespace, SessionControllerLayer};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Cart {
///     items: Vec<String>,
/// }
///
/// impl Namespace for Cart {
///     const KEY: &'static str = "shopping_cart";
/// }
///
/// async fn add(mut cart: Keyed<Cart>) -> String {
///     cart.items.push("apple".into());
///     format!("{} items", cart.items.len())
/// }
///
/// let app: Router = Router::new()
///     .route("/add", post(add))
///     .layer(SessionControllerLayer::new())
///     .layer(SessionManagerLayer::new(MemoryStore::default()));
/// ```
pub struct Keyed<T: Namespace> {
    value: T,
    entry: Arc<Entry>,
    request: Arc<RequestState>,
    deadline: Deadline,
    /// The value stands for the stored namespace: unwritten, it is given back to the entry on
    /// drop so a later `Keyed<T>` need not read it again.
    stands: bool,
    /// The write a mutable access made, once.
    write: Option<Write>,
    /// Purged at some point: the namespace starts afresh, even if written again afterwards.
    purged: bool,
}

impl<T: Namespace> Keyed<T> {
    pub(crate) async fn open(request: &Arc<RequestState>) -> Result<Self, Error> {
        let entry = request.open(T::KEY, T::EXPIRY_POLICY).await?;
        let loan = entry.open_lent::<T>(T::EXPIRY_POLICY, request.now, entry.is_shared())?;
        Ok(Self {
            value: loan.value,
            entry,
            request: Arc::clone(request),
            deadline: loan.deadline,
            stands: loan.stands,
            write: None,
            purged: false,
        })
    }

    /// Resets the namespace to `T::default()`; the session no longer holds it after this
    /// request (unless it is written again).
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use tower_sessions_controller::{Error, Namespace};
    /// # #[derive(Default, Serialize, Deserialize)]
    /// # struct Cart { items: Vec<String> }
    /// # impl Namespace for Cart { const KEY: &'static str = "shopping_cart"; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let controllers = tower_sessions_controller::__doc_controllers();
    /// let mut cart = controllers.keyed::<Cart>().await?;
    /// cart.items.push("apple".into());
    /// cart.purge();
    /// assert!(cart.items.is_empty());
    /// assert_eq!(cart.expires_at(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn purge(&mut self) {
        self.request.warn_if_responded(T::KEY, "purged");
        self.value = T::default();
        self.deadline = Deadline::default();
        self.purged = true;
        self.write = None;
    }

    /// True unless the namespace holds a stamp still in the future: a namespace never written,
    /// or purged, reports expired. Under a policy that keeps no stamp ([`ExpiryPolicy::Hops`],
    /// [`ExpiryPolicy::Never`]), true unless it was written or holds stored data.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use tower_sessions_controller::{Error, Namespace};
    /// # #[derive(Default, Serialize, Deserialize)]
    /// # struct Cart { items: Vec<String> }
    /// # impl Namespace for Cart { const KEY: &'static str = "shopping_cart"; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let controllers = tower_sessions_controller::__doc_controllers();
    /// let mut cart = controllers.keyed::<Cart>().await?;
    /// assert!(cart.is_expired()); // never written
    /// cart.items.push("apple".into());
    /// assert!(!cart.is_expired());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_expired(&self) -> bool {
        let holds_data = self.write.is_some() || (self.stands && !self.purged);
        T::EXPIRY_POLICY.is_expired(self.deadline.stamp, holds_data, self.request.now)
    }

    /// The instant the namespace expires, if it holds a stamp.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use tower_sessions_controller::{Error, Namespace};
    /// # #[derive(Default, Serialize, Deserialize)]
    /// # struct Cart { items: Vec<String> }
    /// # impl Namespace for Cart { const KEY: &'static str = "shopping_cart"; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let controllers = tower_sessions_controller::__doc_controllers();
    /// let mut cart = controllers.keyed::<Cart>().await?;
    /// assert_eq!(cart.expires_at(), None);
    /// cart.items.push("apple".into());
    /// assert!(cart.expires_at().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.deadline.stamp
    }

    /// The value as a `<script type="application/json" id="…">` element, like Django's
    /// `json_script`: safe to put in a page's HTML as is, whatever the data holds. See
    /// [`json_script`](crate::json_script) for the escaping.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if `T` cannot be turned into JSON.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use tower_sessions_controller::{Error, Namespace};
    /// # #[derive(Default, Serialize, Deserialize)]
    /// # struct Cart { items: Vec<String> }
    /// # impl Namespace for Cart { const KEY: &'static str = "shopping_cart"; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let controllers = tower_sessions_controller::__doc_controllers();
    /// let mut cart = controllers.keyed::<Cart>().await?;
    /// cart.items.push("<b>".into());
    /// assert_eq!(
    ///     cart.to_json_script("cart")?,
    ///     r#"<script id="cart" type="application/json">{"items":["\u003Cb\u003E"]}</script>"#
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn to_json_script(&self, id: &str) -> Result<String, Error> {
        let json = serde_json::to_string(&self.value).map_err(|source| Error::Serialize {
            namespace: T::KEY.to_owned(),
            key: None,
            source,
        })?;
        Ok(json_script(&json, id))
    }
}

impl<T: Namespace> Deref for Keyed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Namespace> DerefMut for Keyed<T> {
    fn deref_mut(&mut self) -> &mut T {
        if self.write.is_none() {
            self.request.warn_if_responded(T::KEY, "changed");
            let write = T::EXPIRY_POLICY.write(self.deadline, self.request.now);
            self.deadline = write.deadline;
            self.write = Some(write);
        }
        &mut self.value
    }
}

impl<T: Namespace> Drop for Keyed<T> {
    fn drop(&mut self) {
        let limits = Limits {
            budget: T::BUDGET.unwrap_or(self.request.limits.budget),
            ..self.request.limits
        };
        self.entry.take_back(Return {
            value: std::mem::take(&mut self.value),
            stands: self.stands,
            purged: self.purged,
            write: self.write.map(|write| (write, limits)),
        });
    }
}

impl<S: Send + Sync, T: Namespace> FromRequestParts<S> for Keyed<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::open(&RequestState::of(parts)?).await
    }
}

impl<T: Namespace + fmt::Debug> fmt::Debug for Keyed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("key", &T::KEY)
            .field("expires_at", &self.deadline.stamp)
            .field("value", &self.value)
            .finish()
    }
}
