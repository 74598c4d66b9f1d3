//! The web pages under `/shop`: products, the cart, and the checkout wizard (address, delivery,
//! confirm). A form posts, changes the session, and redirects to a page (post/redirect/get), so
//! that reloading the page does not repeat the action; only an incomplete address and the placed
//! order are answered directly.

use std::{collections::BTreeMap, fmt::Write, num::NonZeroU32};

use axum::{
    extract::Path,
    http::StatusCode,
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Router,
};
use serde::Deserialize;
use time::OffsetDateTime;
use tower_sessions_controller::Error;

use crate::{
    html::{duration, escape, page},
    namespaces::{Address, Cart, Checkout, Delivery, Expiries},
};

pub fn routes() -> Router<Expiries> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/shop") }))
        .route("/shop", get(products))
        .route("/shop/cart", get(cart_page).post(add))
        .route("/shop/cart/items/{item}", post(set_quantity))
        .route("/shop/cart/items/{item}/remove", post(remove))
        .route("/shop/cart/note", post(save_note))
        .route("/shop/cart/empty", post(empty))
        .route("/shop/checkout", get(checkout_start))
        .route(
            "/shop/checkout/address",
            get(address_page).post(save_address),
        )
        .route(
            "/shop/checkout/delivery",
            get(delivery_page).post(save_delivery),
        )
        .route(
            "/shop/checkout/confirm",
            get(confirm_page).post(place_order),
        )
}

/// The catalogue: item name and description.
const PRODUCTS: &[(&str, &str)] = &[
    ("apple", "Crisp and sweet, from the orchard."),
    ("pear", "Juicy, ripe this week."),
    ("banana", "Good for a long walk."),
    ("cherry", "By the handful."),
];

/// GET /shop
async fn products(cart: Cart, checkout: Checkout) -> Html<String> {
    let mut body = String::from("<ul class=\"products\">");
    for (item, description) in PRODUCTS {
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            r#"<li id="product-{item}"><strong>{item}</strong>: {description}
  <form class="inline" method="post" action="/shop/cart">
    <input type="hidden" name="item" value="{item}">
    <input type="number" name="quantity" value="1" min="1" aria-label="quantity of {item}">
    <button>Add to cart</button>
  </form></li>"#
        );
    }
    body.push_str("</ul>");
    Html(page("Products", &cart, &checkout, &body))
}

#[derive(Deserialize)]
struct AddForm {
    item: String,
    quantity: NonZeroU32,
}

/// POST /shop/cart: add a product.
async fn add(mut cart: Cart, Form(form): Form<AddForm>) -> Result<Redirect, Error> {
    let mut items = cart.items();
    let count = items.entry(form.item.clone()).or_default();
    *count = count.saturating_add(form.quantity.get());
    cart.set_items(&items)?;
    tracing::info!(item = %form.item, quantity = form.quantity, "added to the cart");
    Ok(Redirect::to("/shop"))
}

/// GET /shop/cart
async fn cart_page(cart: Cart, checkout: Checkout) -> Html<String> {
    let items = cart.items();
    if items.is_empty() {
        let body =
            r#"<p id="cart-empty">Your cart is empty. <a href="/shop">See the products</a>.</p>"#;
        return Html(page("Your cart", &cart, &checkout, body));
    }
    let mut body =
        String::from("<table id=\"cart-items\"><tr><th>Item</th><th>Quantity</th><th></th></tr>");
    for (item, quantity) in &items {
        // Any name can reach the cart through the JSON API: escape it for the page, and
        // percent-encode it for the path.
        let path = format!("/shop/cart/items/{}", percent_encode(item));
        let name = escape(item);
        let _ = write!(
            body,
            r#"<tr data-item="{name}"><td>{name}</td>
  <td><form class="inline" method="post" action="{path}">
    <input type="number" name="quantity" value="{quantity}" min="0" aria-label="quantity of {name}">
    <button>Update</button></form></td>
  <td><form class="inline" method="post" action="{path}/remove"><button>Remove</button></form></td></tr>"#
        );
    }
    body.push_str("</table>");

    let note = cart.note().unwrap_or_default();
    if !note.is_empty() {
        let _ = write!(
            body,
            r#"<p>Your note: <span id="cart-note">{}</span></p>"#,
            escape(&note)
        );
    }
    let _ = write!(
        body,
        r#"<form method="post" action="/shop/cart/note">
  <label>A note for your order (a gift message, say)
    <textarea name="note" rows="2" cols="50">{}</textarea></label>
  <button>Save the note</button>
</form>
<p><a href="/shop/checkout" id="checkout">Go to checkout</a></p>
<form method="post" action="/shop/cart/empty"><button>Empty the cart</button></form>
<p class="muted">Your cart is kept for {} after its last change{}.</p>"#,
        escape(&note),
        duration(cart.expiry()),
        until(cart.expires_at()),
    );
    Html(page("Your cart", &cart, &checkout, &body))
}

#[derive(Deserialize)]
struct QuantityForm {
    quantity: u32,
}

/// POST /shop/cart/items/{item}: set the quantity; 0 removes the item.
async fn set_quantity(
    Path(item): Path<String>,
    mut cart: Cart,
    Form(form): Form<QuantityForm>,
) -> Result<Redirect, Error> {
    let mut items = cart.items();
    if form.quantity == 0 {
        items.remove(&item);
    } else {
        items.insert(item.clone(), form.quantity);
    }
    cart.set_items(&items)?;
    tracing::info!(%item, quantity = form.quantity, "quantity set");
    Ok(Redirect::to("/shop/cart"))
}

/// POST /shop/cart/items/{item}/remove
async fn remove(Path(item): Path<String>, mut cart: Cart) -> Result<Redirect, Error> {
    let mut items = cart.items();
    if items.remove(&item).is_some() {
        cart.set_items(&items)?;
        tracing::info!(%item, "removed from the cart");
    }
    Ok(Redirect::to("/shop/cart"))
}

#[derive(Deserialize)]
struct NoteForm {
    note: String,
}

/// POST /shop/cart/note
async fn save_note(mut cart: Cart, Form(form): Form<NoteForm>) -> Result<Redirect, Error> {
    cart.set_note(&form.note)?;
    Ok(Redirect::to("/shop/cart"))
}

/// POST /shop/cart/empty: the cart goes, and a checkout of it with it.
async fn empty(mut cart: Cart, mut checkout: Checkout) -> Redirect {
    cart.purge();
    checkout.purge();
    tracing::info!("cart emptied");
    Redirect::to("/shop/cart")
}

/// The pages of the checkout, in order; `Cart` stands for "nothing to check out yet".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Cart,
    Address,
    Delivery,
    Confirm,
}

impl Step {
    /// The furthest step the visitor may see: the cart when it is empty, else the first step
    /// not yet answered.
    fn reached(cart: &Cart, checkout: &Checkout) -> Self {
        if cart.items().is_empty() {
            Self::Cart
        } else if checkout.address().is_none() {
            Self::Address
        } else if checkout.delivery().is_none() {
            Self::Delivery
        } else {
            Self::Confirm
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Cart => "/shop/cart",
            Self::Address => "/shop/checkout/address",
            Self::Delivery => "/shop/checkout/delivery",
            Self::Confirm => "/shop/checkout/confirm",
        }
    }

    /// A redirect to the furthest step reached, if that is before `self`: an expired checkout
    /// sends the visitor back to its first step.
    fn redirect_if_unreached(self, cart: &Cart, checkout: &Checkout) -> Option<Redirect> {
        let reached = Self::reached(cart, checkout);
        (reached < self).then(|| Redirect::to(reached.path()))
    }
}

/// GET /shop/checkout: the first step not yet answered.
async fn checkout_start(cart: Cart, checkout: Checkout) -> Redirect {
    Redirect::to(Step::reached(&cart, &checkout).path())
}

/// The frame of a checkout step: where the visitor is, and how long the answers are kept.
fn step_page(step: Step, cart: &Cart, checkout: &Checkout, form: &str) -> String {
    let mut progress = String::new();
    for (each, name) in [
        (Step::Address, "1. Address"),
        (Step::Delivery, "2. Delivery"),
        (Step::Confirm, "3. Confirm"),
    ] {
        if each == step {
            let _ = write!(progress, " <strong>{name}</strong>");
        } else {
            let _ = write!(progress, " {name}");
        }
    }
    let body = format!(
        r#"<p>{progress}</p>
{form}
<p class="muted">Your answers are kept for {} after your last answer; your cart for {}.</p>"#,
        duration(checkout.expiry()),
        duration(cart.expiry()),
    );
    page("Checkout", cart, checkout, &body)
}

/// GET /shop/checkout/address
async fn address_page(cart: Cart, checkout: Checkout) -> Response {
    if let Some(redirect) = Step::Address.redirect_if_unreached(&cart, &checkout) {
        return redirect.into_response();
    }
    let form = address_form(checkout.address().as_ref(), None);
    Html(step_page(Step::Address, &cart, &checkout, &form)).into_response()
}

fn address_form(address: Option<&Address>, error: Option<&str>) -> String {
    let field = |name: &str, label: &str, value: Option<&String>| {
        let value = escape(value.map_or("", String::as_str));
        format!(r#"<label>{label} <input name="{name}" value="{value}" required></label>"#)
    };
    let error = error.map_or(String::new(), |error| {
        format!(r#"<p class="error">{}</p>"#, escape(error))
    });
    format!(
        r#"{error}<form method="post" action="/shop/checkout/address">
{}
{}
{}
<button>Continue</button>
</form>"#,
        field("name", "Name", address.map(|a| &a.name)),
        field("street", "Street", address.map(|a| &a.street)),
        field("city", "City", address.map(|a| &a.city)),
    )
}

/// POST /shop/checkout/address
async fn save_address(
    cart: Cart,
    mut checkout: Checkout,
    Form(address): Form<Address>,
) -> Result<Response, Error> {
    if let Some(redirect) = Step::Address.redirect_if_unreached(&cart, &checkout) {
        return Ok(redirect.into_response());
    }
    let address = Address {
        name: address.name.trim().to_owned(),
        street: address.street.trim().to_owned(),
        city: address.city.trim().to_owned(),
    };
    if address.name.is_empty() || address.street.is_empty() || address.city.is_empty() {
        let form = address_form(Some(&address), Some("Please fill in every field."));
        let page = step_page(Step::Address, &cart, &checkout, &form);
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(page)).into_response());
    }
    checkout.set_address(&address)?;
    Ok(Redirect::to(Step::Delivery.path()).into_response())
}

/// GET /shop/checkout/delivery
async fn delivery_page(cart: Cart, checkout: Checkout) -> Response {
    if let Some(redirect) = Step::Delivery.redirect_if_unreached(&cart, &checkout) {
        return redirect.into_response();
    }
    let express = matches!(checkout.delivery(), Some(Delivery::Express));
    let (standard, express) = if express {
        ("", " checked")
    } else {
        (" checked", "")
    };
    let form = format!(
        r#"<form method="post" action="/shop/checkout/delivery">
<label><input type="radio" name="delivery" value="standard"{standard}> Standard, in 3 to 5 days</label>
<label><input type="radio" name="delivery" value="express"{express}> Express, tomorrow</label>
<button>Continue</button>
</form>"#
    );
    Html(step_page(Step::Delivery, &cart, &checkout, &form)).into_response()
}

#[derive(Deserialize)]
struct DeliveryForm {
    delivery: Delivery,
}

/// POST /shop/checkout/delivery
async fn save_delivery(
    cart: Cart,
    mut checkout: Checkout,
    Form(form): Form<DeliveryForm>,
) -> Result<Redirect, Error> {
    if let Some(redirect) = Step::Delivery.redirect_if_unreached(&cart, &checkout) {
        return Ok(redirect);
    }
    checkout.set_delivery(form.delivery)?;
    Ok(Redirect::to(Step::Confirm.path()))
}

/// The order as the confirm step and the order-placed page show it.
fn summary(
    items: &BTreeMap<String, u32>,
    note: Option<&str>,
    address: &Address,
    delivery: Delivery,
) -> String {
    let mut out = String::from("<ul id=\"order-items\">");
    for (item, quantity) in items {
        let _ = write!(out, "<li>{quantity} × {}</li>", escape(item));
    }
    out.push_str("</ul>");
    if let Some(note) = note {
        let _ = write!(out, "<p>Note: {}</p>", escape(note));
    }
    let delivery = match delivery {
        Delivery::Standard => "standard (3 to 5 days)",
        Delivery::Express => "express (tomorrow)",
    };
    let _ = write!(
        out,
        "<p>To {}, {}, {}; delivery {delivery}.</p>",
        escape(&address.name),
        escape(&address.street),
        escape(&address.city),
    );
    out
}

/// GET /shop/checkout/confirm
async fn confirm_page(cart: Cart, checkout: Checkout) -> Response {
    if let Some(redirect) = Step::Confirm.redirect_if_unreached(&cart, &checkout) {
        return redirect.into_response();
    }
    let (Some(address), Some(delivery)) = (checkout.address(), checkout.delivery()) else {
        return Redirect::to(Step::Address.path()).into_response();
    };
    let form = format!(
        r#"{}
<form method="post" action="/shop/checkout/confirm"><button>Place the order</button></form>
<p><a href="{}">Change the address</a> · <a href="{}">Change the delivery</a></p>"#,
        summary(&cart.items(), cart.note().as_deref(), &address, delivery),
        Step::Address.path(),
        Step::Delivery.path(),
    );
    Html(step_page(Step::Confirm, &cart, &checkout, &form)).into_response()
}

/// POST /shop/checkout/confirm: the order is placed; the cart and the checkout are purged.
async fn place_order(mut cart: Cart, mut checkout: Checkout) -> Response {
    if let Some(redirect) = Step::Confirm.redirect_if_unreached(&cart, &checkout) {
        return redirect.into_response();
    }
    let (Some(address), Some(delivery)) = (checkout.address(), checkout.delivery()) else {
        return Redirect::to(Step::Address.path()).into_response();
    };
    let order = summary(&cart.items(), cart.note().as_deref(), &address, delivery);
    cart.purge();
    checkout.purge();
    tracing::info!("order placed");
    // Rendered here rather than redirected to: once the cart is purged, the session no longer
    // holds the order. Reloading re-posts, finds nothing to confirm, and lands on the cart.
    let body = format!(r#"<p id="order-placed">Thank you, your order is placed.</p>{order}"#);
    Html(page("Order placed", &cart, &checkout, &body)).into_response()
}

/// " (until 20:35:07 UTC)" for a stamp, nothing without one.
fn until(stamp: Option<OffsetDateTime>) -> String {
    stamp.map_or(String::new(), |at| {
        format!(
            " (until {:02}:{:02}:{:02} UTC)",
            at.hour(),
            at.minute(),
            at.second()
        )
    })
}

/// Percent-encodes everything but unreserved characters, for a path segment.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}
