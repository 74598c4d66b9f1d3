//! The app's three kinds of session data, each in its own namespace with its own expiry: the
//! cart, the checkout wizard's answers and the recently viewed items.
//!
//! The cart and the checkout take their expiries from the environment, so they are runtime
//! namespaces ([`SessionControllers::open_with_expiry`]), opened by the [`Cart`] and [`Checkout`]
//! extractors. "Recently viewed" keeps a fixed expiry, so it is a typed namespace ([`Viewed`]).

use std::collections::BTreeMap;

use axum::{
    extract::FromRequestParts,
    http::{request::Parts, StatusCode},
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tower_sessions_controller::{Error, Namespace, SessionController, SessionControllers};

use crate::{
    catalogue::{self, Pence, Product},
    problem::Problem,
};

/// How far a write moves each configurable namespace's stamp: the router's state.
#[derive(Clone, Copy, Debug)]
pub struct Expiries {
    pub cart: Duration,
    pub checkout: Duration,
}

/// The visitor's cart: the namespace `shopping_cart`, holding `items` (product id → quantity),
/// the note if the visitor wrote one, and for one request after an addition, what was added.
pub struct Cart {
    namespace: SessionController,
    expiry: Duration,
}

/// What the last "add to cart" added: the confirmation the next page shows once.
#[derive(Debug, Serialize, Deserialize)]
pub struct Added {
    pub item: String,
    pub quantity: u32,
}

impl Cart {
    const KEY: &'static str = "shopping_cart";

    /// Product id → quantity, in a stable order. A stored id the catalogue does not know (or a
    /// quantity of 0) is left out and logged; the next write drops it.
    pub fn items(&self) -> BTreeMap<String, u32> {
        let mut items: BTreeMap<String, u32> = read(&self.namespace, "items");
        items.retain(|id, quantity| {
            let known = catalogue::product(id).is_some();
            if !known || *quantity == 0 {
                tracing::warn!(item = %id, quantity, "not a product or no quantity, left out of the cart");
            }
            known && *quantity > 0
        });
        items
    }

    /// The cart's lines: each product and its quantity.
    pub fn lines(&self) -> Vec<(&'static Product, u32)> {
        self.items()
            .iter()
            .filter_map(|(id, quantity)| Some((catalogue::product(id)?, *quantity)))
            .collect()
    }

    /// The number of items, for the header.
    pub fn count(&self) -> u64 {
        self.items()
            .values()
            .map(|quantity| u64::from(*quantity))
            .sum()
    }

    /// What the items cost together.
    pub fn total(&self) -> Pence {
        self.lines()
            .into_iter()
            .map(|(product, quantity)| product.price.times(quantity))
            .sum()
    }

    /// Adds `quantity` of `product` and returns the line's new quantity: `409 Conflict` if that
    /// would pass [`catalogue::MAX_QUANTITY`], and nothing changes.
    pub fn add(&mut self, product: &Product, quantity: u32) -> Result<u32, Problem> {
        let mut items = self.items();
        let held = items.get(product.id).copied().unwrap_or(0);
        let line = catalogue::add_to_line(product, held, quantity)
            .map_err(|message| Problem::new(StatusCode::CONFLICT, message))?;
        items.insert(product.id.to_owned(), line);
        self.set_items(&items)?;
        Ok(line)
    }

    /// Sets the quantity of `product`; 0 removes it.
    pub fn set_quantity(&mut self, product: &Product, quantity: u32) -> Result<(), Error> {
        let mut items = self.items();
        if quantity == 0 {
            items.remove(product.id);
        } else {
            items.insert(product.id.to_owned(), quantity);
        }
        self.set_items(&items)
    }

    /// Keeps "added `quantity` of `product`" for the next request that shows the cart (the
    /// crate's `flash`: read once, then gone).
    pub fn confirm_added(&mut self, product: &Product, quantity: u32) -> Result<(), Error> {
        let added = Added {
            item: product.id.to_owned(),
            quantity,
        };
        self.namespace.flash("added", added)
    }

    /// The confirmation kept by [`confirm_added`](Self::confirm_added) in the previous request.
    pub fn added(&self) -> Option<Added> {
        read(&self.namespace, "added")
    }

    /// Stores `items`; an empty cart is purged, so the session does not keep it for nothing.
    pub fn set_items(&mut self, items: &BTreeMap<String, u32>) -> Result<(), Error> {
        if items.is_empty() {
            self.purge();
            Ok(())
        } else {
            self.namespace.insert("items", items)
        }
    }

    /// The visitor's free-text note for the order.
    pub fn note(&self) -> Option<String> {
        read(&self.namespace, "note")
    }

    /// Stores the note; a blank one removes it.
    pub fn set_note(&mut self, note: &str) -> Result<(), Error> {
        if note.trim().is_empty() {
            self.namespace.remove("note");
            Ok(())
        } else {
            self.namespace.insert("note", note)
        }
    }

    pub fn purge(&mut self) {
        self.namespace.purge();
    }

    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.namespace.expires_at()
    }

    /// How far a write moves the cart's stamp.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// The cart's data as a `<script type="application/json">` element: safe in any page.
    pub fn to_json_script(&self, id: &str) -> String {
        self.namespace.to_json_script(id)
    }
}

impl FromRequestParts<Expiries> for Cart {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, expiries: &Expiries) -> Result<Self, Error> {
        let controllers = SessionControllers::from_request_parts(parts, expiries).await?;
        let namespace = controllers
            .open_with_expiry(Self::KEY, expiries.cart)
            .await?;
        Ok(Self {
            namespace,
            expiry: expiries.cart,
        })
    }
}

/// The first step's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Address {
    pub name: String,
    pub street: String,
    pub city: String,
}

/// The second step's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Standard,
    Express,
}

impl Delivery {
    pub const ALL: [Self; 2] = [Self::Standard, Self::Express];

    /// The form's value, as stored.
    pub fn id(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Express => "express",
        }
    }

    pub fn price(self) -> Pence {
        match self {
            Self::Standard => Pence(0),
            Self::Express => Pence(495),
        }
    }

    /// "Express, tomorrow".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Standard => "Standard, in 3 to 5 days",
            Self::Express => "Express, tomorrow",
        }
    }
}

/// The checkout wizard: its answers in the namespace `checkout`, which expires sooner than the
/// cart, and the marker `checkout_started`, which lives as long as a cart.
///
/// Once the answers' stamp has passed, opening the namespace drops it, and nothing left in it
/// tells whether a checkout ever began. So every answer also writes the marker (sliding its
/// stamp too): answers gone while the marker is still there means the checkout expired, not that
/// it never started. Finishing the checkout purges both. The marker's expiry is the cart's, which
/// start-up requires to be longer than the checkout's, so the marker outlives the answers.
pub struct Checkout {
    answers: SessionController,
    started: SessionController,
    expiry: Duration,
}

impl Checkout {
    pub fn address(&self) -> Option<Address> {
        read(&self.answers, "address")
    }

    pub fn delivery(&self) -> Option<Delivery> {
        read(&self.answers, "delivery")
    }

    pub fn set_address(&mut self, address: &Address) -> Result<(), Error> {
        self.answer("address", address)
    }

    pub fn set_delivery(&mut self, delivery: Delivery) -> Result<(), Error> {
        self.answer("delivery", delivery)
    }

    fn answer(&mut self, key: &str, value: impl Serialize) -> Result<(), Error> {
        self.answers.insert(key, value)?;
        self.started.insert("started", true)
    }

    /// True when a checkout was started and its answers have expired since.
    pub fn has_expired(&self) -> bool {
        self.answers.is_empty() && !self.started.is_empty()
    }

    /// Forgets the answers and the marker: the checkout is over, finished or abandoned.
    pub fn purge(&mut self) {
        self.answers.purge();
        self.started.purge();
    }

    /// How far an answer moves the answers' stamp.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }
}

impl FromRequestParts<Expiries> for Checkout {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, expiries: &Expiries) -> Result<Self, Error> {
        let controllers = SessionControllers::from_request_parts(parts, expiries).await?;
        Ok(Self {
            answers: controllers
                .open_with_expiry("checkout", expiries.checkout)
                .await?,
            started: controllers
                .open_with_expiry("checkout_started", expiries.cart)
                .await?,
            expiry: expiries.checkout,
        })
    }
}

/// The last few items viewed, newest first. Browsing history goes stale quickly and its expiry
/// is fixed, so it is a typed namespace: `Keyed<Viewed>`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Viewed {
    pub items: Vec<String>,
}

impl Viewed {
    pub const MAX: usize = 5;
}

impl Namespace for Viewed {
    const KEY: &'static str = "recently_viewed";
    const EXPIRY: Duration = Duration::minutes(2);
}

/// The value under `key`, or its default when there is none or it no longer has the expected
/// shape (logged: the next write replaces it).
fn read<T: DeserializeOwned + Default>(namespace: &SessionController, key: &str) -> T {
    match namespace.get(key) {
        Ok(value) => value.unwrap_or_default(),
        Err(err) => {
            tracing::warn!(namespace = namespace.key(), key, error = %err, "unreadable value, ignored");
            T::default()
        }
    }
}
