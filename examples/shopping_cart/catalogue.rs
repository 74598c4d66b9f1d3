//! What the shop sells and what it costs, and the checks every way into the cart shares: which
//! names are products, and which quantities a cart line may hold.

use std::fmt;

use axum::{
    extract::{FromRequestParts, Path},
    http::{request::Parts, StatusCode},
};

use crate::problem::Problem;

/// A price in pence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pence(pub u64);

impl Pence {
    /// The price of `quantity` of this. A quantity read from the store may be any `u32`; even
    /// `u32::MAX` of the dearest product stays far below `u64::MAX`.
    pub fn times(self, quantity: u32) -> Self {
        Self(self.0.saturating_mul(u64::from(quantity)))
    }
}

impl std::ops::Add for Pence {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

impl std::iter::Sum for Pence {
    fn sum<I: Iterator<Item = Self>>(prices: I) -> Self {
        prices.fold(Self(0), |sum, price| sum + price)
    }
}

/// "£1.05".
impl fmt::Display for Pence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "£{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// One product of the catalogue.
#[derive(Debug)]
pub struct Product {
    /// The name in URLs, in the JSON API and in the stored cart.
    pub id: &'static str,
    /// The name the pages show.
    pub name: &'static str,
    pub description: &'static str,
    pub price: Pence,
}

/// The catalogue, in the order the products page shows it.
pub const PRODUCTS: &[Product] = &[
    Product {
        id: "apple",
        name: "Apple",
        description: "Crisp and sweet, from the orchard.",
        price: Pence(45),
    },
    Product {
        id: "pear",
        name: "Pear",
        description: "Juicy, ripe this week.",
        price: Pence(60),
    },
    Product {
        id: "banana",
        name: "Banana",
        description: "Good for a long walk.",
        price: Pence(25),
    },
    Product {
        id: "cherry",
        name: "Cherries, 250 g",
        description: "By the handful.",
        price: Pence(350),
    },
    Product {
        id: "pippin-crate",
        name: "Cox's Orange Pippin heritage apples, a wooden crate of twelve hand-picked in Kent",
        description: "The classic English dessert apple, packed in straw.",
        price: Pence(980),
    },
];

/// The most of one product a cart may hold.
pub const MAX_QUANTITY: u32 = 99;

/// No product id is longer; a longer name in a URL answers `414 URI Too Long` without a lookup.
pub const MAX_ID_LEN: usize = 64;

/// The product called `id`.
pub fn product(id: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|product| product.id == id)
}

/// Why a name in a URL is not a product: too long (414) or unknown (404).
pub enum NotAProduct {
    TooLong(usize),
    Unknown(String),
}

impl NotAProduct {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLong(_) => StatusCode::URI_TOO_LONG,
            Self::Unknown(_) => StatusCode::NOT_FOUND,
        }
    }
}

impl fmt::Display for NotAProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(len) => write!(
                f,
                "the item name is {len} bytes long; no product name is longer than {MAX_ID_LEN}"
            ),
            Self::Unknown(id) => write!(f, "there is no product {}", quoted(id)),
        }
    }
}

/// The product called `id`, or why there is none.
pub fn find(id: &str) -> Result<&'static Product, NotAProduct> {
    if id.len() > MAX_ID_LEN {
        return Err(NotAProduct::TooLong(id.len()));
    }
    product(id).ok_or_else(|| NotAProduct::Unknown(id.to_owned()))
}

/// The product named by the route's `{item}`: `400` if the name is not UTF-8 text, `414` if it
/// is longer than any product's, `404` if no product has it.
pub struct ProductInPath(pub &'static Product);

impl<S: Send + Sync> FromRequestParts<S> for ProductInPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                tracing::debug!(%rejection, "unreadable item name");
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "the item name in the URL cannot be read: it must be UTF-8 text",
                )
            })?;
        Ok(Self(find(&id)?))
    }
}

/// A quantity typed by the visitor: a whole number from `min` to [`MAX_QUANTITY`]; the message
/// says what was wrong.
pub fn parse_quantity(raw: &str, min: u32) -> Result<u32, String> {
    let expected = format!("a whole number from {min} to {MAX_QUANTITY}");
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(format!("the quantity is empty: give {expected}"));
    }
    match raw.parse::<u32>() {
        Ok(quantity) if (min..=MAX_QUANTITY).contains(&quantity) => Ok(quantity),
        _ => Err(format!(
            "the quantity must be {expected}, not {}",
            quoted(raw)
        )),
    }
}

/// The quantity a line reaches once `added` more are put in it, if that stays within
/// [`MAX_QUANTITY`]; otherwise what stops it.
pub fn add_to_line(product: &Product, held: u32, added: u32) -> Result<u32, String> {
    match held.checked_add(added) {
        Some(quantity) if quantity <= MAX_QUANTITY => Ok(quantity),
        _ => Err(format!(
            "the cart holds {held} × {}; {added} more would pass the limit of {MAX_QUANTITY} \
             per product",
            product.name
        )),
    }
}

/// Visitor text for a message: quoted, and cut at 40 characters (a 60 KB name is not repeated
/// back in full).
pub fn quoted(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}
