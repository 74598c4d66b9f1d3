//! The web pages under `/shop`: products, the cart, and the checkout wizard (address, delivery,
//! confirm). A form posts, changes the session, and redirects to a page (post/redirect/get), so
//! that reloading the page does not repeat the action; only the placed order is answered
//! directly. A form the shop cannot take is answered with the page it came from and a message
//! saying why.

use std::fmt::Write;

use axum::{
    extract::{rejection::FormRejection, FromRequestParts},
    http::{request::Parts, Method, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Form, Router,
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::{
    catalogue::{self, Pence, Product, ProductInPath, MAX_QUANTITY, PRODUCTS},
    html::{self, duration, error_box, escape, page},
    namespaces::{Address, Cart, Checkout, Delivery, Expiries},
    problem::Problem,
};

/// The largest form the shop reads; a larger one is answered `413` with the page it came from.
pub const FORM_LIMIT: usize = 16 * 1024;

/// The longest note, in characters.
const NOTE_LIMIT: usize = 1000;

pub fn routes() -> Router<Expiries> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/shop") }))
        .route("/favicon.svg", get(html::favicon))
        .route("/favicon.ico", get(html::favicon))
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

/// The page for a request no route takes: `404` for an unknown path, `405` for a method the
/// path does not take (a form's address typed into the address bar, say).
pub async fn no_route(
    status: StatusCode,
    method: &Method,
    parts: &mut Parts,
    expiries: &Expiries,
) -> Response {
    let path = parts.uri.path().to_owned();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED && method == Method::GET {
        format!(
            "there is no page at {}: that address only takes the shop's forms",
            catalogue::quoted(&path)
        )
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("{method} is not accepted at {}", catalogue::quoted(&path))
    } else {
        format!("there is no page at {}", catalogue::quoted(&path))
    };
    let body = format!(
        r#"{}<p><a href="/shop">See the products</a> or <a href="/shop/cart">your cart</a>.</p>"#,
        error_box(&message)
    );
    let (cart, checkout) = match (
        Cart::from_request_parts(parts, expiries).await,
        Checkout::from_request_parts(parts, expiries).await,
    ) {
        (Ok(cart), Ok(checkout)) => (cart, checkout),
        // The crate's own answer (logged, `500`), which the outermost layer turns into a page.
        (Err(err), _) | (_, Err(err)) => return err.into_response(),
    };
    (status, Html(page("Not here", &cart, &checkout, &body))).into_response()
}

/// A form's body that the shop cannot read: too large, not a form, or malformed.
fn unreadable_form(rejection: &FormRejection) -> Problem {
    tracing::debug!(%rejection, "unreadable form");
    let status = rejection.status();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the form is larger than {} KiB, the most the shop reads",
            FORM_LIMIT / 1024
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "the form must be sent as application/x-www-form-urlencoded".to_owned()
        }
        _ => "the form could not be read; please send it again from the page".to_owned(),
    };
    Problem::new(status, message)
}

/// A field the visitor filled in wrongly.
fn invalid(message: String) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// GET /shop
async fn products(cart: Cart, checkout: Checkout) -> Html<String> {
    Html(products_page(&cart, &checkout, None))
}

/// The products, under an error if a form failed, else under the confirmation of what was just
/// added.
fn products_page(cart: &Cart, checkout: &Checkout, error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&error_box(error));
    } else if let Some(added) = cart.added() {
        if let Some(product) = catalogue::product(&added.item) {
            // Writing to a String cannot fail.
            let _ = write!(
                body,
                r#"<p class="confirmation" role="status" id="added">Added {} × {} to your cart.
  <a href="/shop/cart">Your cart</a>: {}, {}.</p>"#,
                added.quantity,
                escape(product.name),
                items(cart.count()),
                cart.total(),
            );
        }
    }
    body.push_str("<ul class=\"products\">");
    for Product {
        id,
        name,
        description,
        price,
    } in PRODUCTS
    {
        let name = escape(name);
        let _ = write!(
            body,
            r#"<li id="product-{id}"><strong>{name}</strong> · <span class="price">{price}</span><br>
  <span class="muted">{description}</span>
  <form class="line" method="post" action="/shop/cart">
    <input type="hidden" name="item" value="{id}">
    <input type="number" name="quantity" value="1" min="1" max="{MAX_QUANTITY}" aria-label="quantity of {name}">
    <button>Add to cart</button>
  </form></li>"#
        );
    }
    body.push_str("</ul>");
    page("Products", cart, checkout, &body)
}

/// "1 item", "3 items".
fn items(count: u64) -> String {
    if count == 1 {
        "1 item".to_owned()
    } else {
        format!("{count} items")
    }
}

#[derive(Deserialize)]
struct AddForm {
    #[serde(default)]
    item: String,
    #[serde(default)]
    quantity: String,
}

/// POST /shop/cart: add a product; the products page then confirms it.
async fn add(
    mut cart: Cart,
    checkout: Checkout,
    form: Result<Form<AddForm>, FormRejection>,
) -> Response {
    match add_to_cart(&mut cart, form) {
        Ok(()) => Redirect::to("/shop").into_response(),
        Err(problem) => {
            let page = products_page(&cart, &checkout, Some(&problem.message));
            (problem.status, Html(page)).into_response()
        }
    }
}

fn add_to_cart(cart: &mut Cart, form: Result<Form<AddForm>, FormRejection>) -> Result<(), Problem> {
    let Form(form) = form.map_err(|rejection| unreadable_form(&rejection))?;
    let product = catalogue::product(&form.item).ok_or_else(|| {
        invalid(format!(
            "there is no product {}",
            catalogue::quoted(&form.item)
        ))
    })?;
    let quantity = catalogue::parse_quantity(&form.quantity, 1).map_err(invalid)?;
    cart.add(product, quantity)?;
    cart.confirm_added(product, quantity)?;
    tracing::info!(item = product.id, quantity, "added to the cart");
    Ok(())
}

/// GET /shop/cart
async fn cart_page(cart: Cart, checkout: Checkout) -> Html<String> {
    Html(cart_view(&cart, &checkout, None, None))
}

/// The cart, under `error` if a form failed; `draft` is a refused note, kept in the note's
/// field so that the visitor can shorten it rather than write it again.
fn cart_view(cart: &Cart, checkout: &Checkout, error: Option<&str>, draft: Option<&str>) -> String {
    let mut body = error.map(error_box).unwrap_or_default();
    let lines = cart.lines();
    if lines.is_empty() {
        body.push_str(
            r#"<p id="cart-empty">Your cart is empty. <a href="/shop">See the products</a>.</p>"#,
        );
        return page("Your cart", cart, checkout, &body);
    }
    body.push_str(
        r#"<table id="cart-items"><tr><th>Item</th><th>Quantity</th><th class="money">Price</th></tr>"#,
    );
    for (product, quantity) in &lines {
        let path = format!("/shop/cart/items/{}", product.id);
        let name = escape(product.name);
        let _ = write!(
            body,
            r#"<tr data-item="{id}"><td>{name}<br><span class="muted">{price} each</span>
    <form class="inline" method="post" action="{path}/remove"><button>Remove</button></form></td>
  <td><form class="line" method="post" action="{path}">
    <input type="number" name="quantity" value="{quantity}" min="0" max="{MAX_QUANTITY}" aria-label="quantity of {name}">
    <button>Update</button></form></td>
  <td class="money">{line}</td></tr>"#,
            id = product.id,
            price = product.price,
            line = product.price.times(*quantity),
        );
    }
    let _ = write!(
        body,
        r#"<tr><th colspan="2">Total</th><td class="money"><strong id="cart-total">{}</strong></td></tr></table>"#,
        cart.total()
    );

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
    <textarea name="note" rows="3">{}</textarea></label>
  <button>Save the note</button>
</form>
<p><a href="/shop/checkout" id="checkout">Go to checkout</a></p>
<form method="post" action="/shop/cart/empty"><button>Empty the cart</button></form>
<p class="muted">Your cart is kept for {} after its last change{}.</p>"#,
        escape(draft.unwrap_or(&note)),
        duration(cart.expiry()),
        until(cart.expires_at()),
    );
    page("Your cart", cart, checkout, &body)
}

/// The cart page with `problem`'s message and status.
fn cart_problem(
    cart: &Cart,
    checkout: &Checkout,
    problem: &Problem,
    draft: Option<&str>,
) -> Response {
    let page = cart_view(cart, checkout, Some(&problem.message), draft);
    (problem.status, Html(page)).into_response()
}

#[derive(Deserialize)]
struct QuantityForm {
    #[serde(default)]
    quantity: String,
}

/// POST /shop/cart/items/{item}: set the quantity; 0 removes the item.
async fn set_quantity(
    product: Result<ProductInPath, Problem>,
    mut cart: Cart,
    checkout: Checkout,
    form: Result<Form<QuantityForm>, FormRejection>,
) -> Response {
    match change_quantity(product, &mut cart, form) {
        Ok(()) => Redirect::to("/shop/cart").into_response(),
        Err(problem) => cart_problem(&cart, &checkout, &problem, None),
    }
}

fn change_quantity(
    product: Result<ProductInPath, Problem>,
    cart: &mut Cart,
    form: Result<Form<QuantityForm>, FormRejection>,
) -> Result<(), Problem> {
    let ProductInPath(product) = product?;
    let Form(form) = form.map_err(|rejection| unreadable_form(&rejection))?;
    let quantity = catalogue::parse_quantity(&form.quantity, 0).map_err(invalid)?;
    cart.set_quantity(product, quantity)?;
    tracing::info!(item = product.id, quantity, "quantity set");
    Ok(())
}

/// POST /shop/cart/items/{item}/remove
async fn remove(
    product: Result<ProductInPath, Problem>,
    mut cart: Cart,
    checkout: Checkout,
) -> Response {
    let ProductInPath(product) = match product {
        Ok(product) => product,
        Err(problem) => return cart_problem(&cart, &checkout, &problem, None),
    };
    if let Err(err) = cart.set_quantity(product, 0) {
        return cart_problem(&cart, &checkout, &Problem::from(err), None);
    }
    tracing::info!(item = product.id, "removed from the cart");
    Redirect::to("/shop/cart").into_response()
}

#[derive(Deserialize)]
struct NoteForm {
    #[serde(default)]
    note: String,
}

/// POST /shop/cart/note
async fn save_note(
    mut cart: Cart,
    checkout: Checkout,
    form: Result<Form<NoteForm>, FormRejection>,
) -> Response {
    let note = match form {
        Ok(Form(form)) => form.note,
        Err(rejection) => {
            return cart_problem(&cart, &checkout, &unreadable_form(&rejection), None)
        }
    };
    let length = note.chars().count();
    if length > NOTE_LIMIT {
        let problem = invalid(format!(
            "your note is {length} characters long; at most {NOTE_LIMIT} fit"
        ));
        return cart_problem(&cart, &checkout, &problem, Some(&note));
    }
    if let Err(err) = cart.set_note(&note) {
        return cart_problem(&cart, &checkout, &Problem::from(err), Some(&note));
    }
    Redirect::to("/shop/cart").into_response()
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
    format!(
        r#"{}<form method="post" action="/shop/checkout/address">
{}
{}
{}
<button>Continue</button>
</form>"#,
        error.map(error_box).unwrap_or_default(),
        field("name", "Name", address.map(|a| &a.name)),
        field("street", "Street", address.map(|a| &a.street)),
        field("city", "City", address.map(|a| &a.city)),
    )
}

/// The address form as sent: every field may be missing or blank.
#[derive(Deserialize)]
struct AddressForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    street: String,
    #[serde(default)]
    city: String,
}

/// POST /shop/checkout/address
async fn save_address(
    cart: Cart,
    mut checkout: Checkout,
    form: Result<Form<AddressForm>, FormRejection>,
) -> Response {
    if let Some(redirect) = Step::Address.redirect_if_unreached(&cart, &checkout) {
        return redirect.into_response();
    }
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            return address_problem(&cart, &checkout, None, &unreadable_form(&rejection))
        }
    };
    let address = Address {
        name: form.name.trim().to_owned(),
        street: form.street.trim().to_owned(),
        city: form.city.trim().to_owned(),
    };
    if address.name.is_empty() || address.street.is_empty() || address.city.is_empty() {
        let problem = invalid("please fill in every field".to_owned());
        return address_problem(&cart, &checkout, Some(&address), &problem);
    }
    if let Err(err) = checkout.set_address(&address) {
        return address_problem(&cart, &checkout, Some(&address), &Problem::from(err));
    }
    Redirect::to(Step::Delivery.path()).into_response()
}

/// The address step again, with what was sent and why it was refused.
fn address_problem(
    cart: &Cart,
    checkout: &Checkout,
    address: Option<&Address>,
    problem: &Problem,
) -> Response {
    let form = address_form(address, Some(&problem.message));
    let page = step_page(Step::Address, cart, checkout, &form);
    (problem.status, Html(page)).into_response()
}

/// GET /shop/checkout/delivery
async fn delivery_page(cart: Cart, checkout: Checkout) -> Response {
    if let Some(redirect) = Step::Delivery.redirect_if_unreached(&cart, &checkout) {
        return redirect.into_response();
    }
    Html(delivery_view(&cart, &checkout, None)).into_response()
}

fn delivery_view(cart: &Cart, checkout: &Checkout, error: Option<&str>) -> String {
    let chosen = checkout.delivery().unwrap_or(Delivery::Standard);
    let mut form = error.map(error_box).unwrap_or_default();
    form.push_str(r#"<form method="post" action="/shop/checkout/delivery">"#);
    for delivery in Delivery::ALL {
        let _ = write!(
            form,
            r#"<label><input type="radio" name="delivery" value="{}"{}> {}, {}</label>"#,
            delivery.id(),
            if delivery == chosen { " checked" } else { "" },
            delivery.describe(),
            price_or_free(delivery.price()),
        );
    }
    form.push_str("<button>Continue</button></form>");
    step_page(Step::Delivery, cart, checkout, &form)
}

fn price_or_free(price: Pence) -> String {
    if price == Pence(0) {
        "free".to_owned()
    } else {
        price.to_string()
    }
}

#[derive(Deserialize)]
struct DeliveryForm {
    #[serde(default)]
    delivery: String,
}

/// POST /shop/checkout/delivery
async fn save_delivery(
    cart: Cart,
    mut checkout: Checkout,
    form: Result<Form<DeliveryForm>, FormRejection>,
) -> Response {
    if let Some(redirect) = Step::Delivery.redirect_if_unreached(&cart, &checkout) {
        return redirect.into_response();
    }
    let chosen = form
        .map_err(|rejection| unreadable_form(&rejection))
        .and_then(|Form(form)| {
            Delivery::ALL
                .into_iter()
                .find(|delivery| delivery.id() == form.delivery)
                .ok_or_else(|| {
                    invalid(format!(
                        "there is no delivery {}: please choose standard or express",
                        catalogue::quoted(&form.delivery)
                    ))
                })
        })
        .and_then(|delivery| checkout.set_delivery(delivery).map_err(Problem::from));
    match chosen {
        Ok(()) => Redirect::to(Step::Confirm.path()).into_response(),
        Err(problem) => {
            let page = delivery_view(&cart, &checkout, Some(&problem.message));
            (problem.status, Html(page)).into_response()
        }
    }
}

/// The order as the confirm step and the order-placed page show it: the lines with their
/// prices, the delivery and the total.
fn summary(
    lines: &[(&Product, u32)],
    note: Option<&str>,
    address: &Address,
    delivery: Delivery,
) -> String {
    let mut out = String::from(r#"<table id="order-items">"#);
    let mut total = delivery.price();
    for (product, quantity) in lines {
        let line = product.price.times(*quantity);
        total = total + line;
        let _ = write!(
            out,
            r#"<tr><td>{quantity} × {}</td><td class="money">{line}</td></tr>"#,
            escape(product.name)
        );
    }
    let _ = write!(
        out,
        r#"<tr><td>Delivery: {}</td><td class="money">{}</td></tr>
<tr><th>Total</th><td class="money"><strong id="order-total">{total}</strong></td></tr></table>"#,
        delivery.describe(),
        price_or_free(delivery.price()),
    );
    if let Some(note) = note {
        let _ = write!(out, "<p>Note: {}</p>", escape(note));
    }
    let _ = write!(
        out,
        "<p>To {}, {}, {}.</p>",
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
        summary(&cart.lines(), cart.note().as_deref(), &address, delivery),
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
    let order = summary(&cart.lines(), cart.note().as_deref(), &address, delivery);
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
