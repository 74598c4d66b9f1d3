//! The JSON API: `/cart` and `/viewed`, the routes the README's `curl` lines use. Every response
//! is JSON; `expires_in_seconds` is the time left before the namespace's stamp, `null` when
//! nothing is stored.

use std::num::NonZeroU32;

use axum::{
    extract::{Path, Query},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tower_sessions_controller::{Error, Keyed};

use crate::namespaces::{Cart, Expiries, Viewed};

pub fn routes() -> Router<Expiries> {
    Router::new()
        .route("/cart", get(list).delete(purge))
        .route("/cart/{item}", post(add).delete(remove))
        .route("/viewed", get(list_viewed))
        .route("/viewed/{item}", post(view_item))
}

#[derive(Deserialize)]
struct AddParams {
    /// Defaults to 1; `NonZeroU32` makes `quantity=0` a 400 instead of an empty line in the cart.
    quantity: Option<NonZeroU32>,
}

/// GET /cart
async fn list(cart: Cart) -> Json<Value> {
    Json(cart_json(&cart))
}

/// POST /cart/{item}?quantity=N
// `Path` and `Query` come first: bad input is rejected before the session is loaded.
async fn add(
    Path(item): Path<String>,
    Query(params): Query<AddParams>,
    mut cart: Cart,
) -> Result<Json<Value>, Error> {
    let quantity = params.quantity.map_or(1, NonZeroU32::get);
    let mut items = cart.items();
    let count = items.entry(item.clone()).or_default();
    *count = count.saturating_add(quantity);
    cart.set_items(&items)?;
    tracing::info!(%item, quantity, "added to the cart");
    Ok(Json(cart_json(&cart)))
}

/// DELETE /cart/{item}: removing the last item purges the cart.
async fn remove(Path(item): Path<String>, mut cart: Cart) -> Result<Json<Value>, Response> {
    let mut items = cart.items();
    if items.remove(&item).is_none() {
        let error = json!({ "error": format!("{item:?} is not in the cart") });
        return Err((StatusCode::NOT_FOUND, Json(error)).into_response());
    }
    cart.set_items(&items)
        .map_err(IntoResponse::into_response)?;
    tracing::info!(%item, "removed from the cart");
    Ok(Json(cart_json(&cart)))
}

/// DELETE /cart
async fn purge(mut cart: Cart) -> Json<Value> {
    cart.purge();
    tracing::info!("cart purged");
    Json(cart_json(&cart))
}

/// GET /viewed
async fn list_viewed(viewed: Keyed<Viewed>) -> Json<Value> {
    Json(viewed_json(&viewed))
}

/// POST /viewed/{item}: the item moves to the front of the last few viewed.
async fn view_item(Path(item): Path<String>, mut viewed: Keyed<Viewed>) -> Json<Value> {
    // An expired history was dropped when `Keyed` opened it: this starts a fresh one.
    viewed.items.retain(|seen| *seen != item);
    viewed.items.insert(0, item);
    viewed.items.truncate(Viewed::MAX);
    Json(viewed_json(&viewed))
}

/// The cart's items, its note when it has one, and the time left.
fn cart_json(cart: &Cart) -> Value {
    let mut body = json!({
        "items": cart.items(),
        "expires_in_seconds": seconds_left(cart.expires_at()),
    });
    if let Some(note) = cart.note() {
        body["note"] = Value::String(note);
    }
    body
}

fn viewed_json(viewed: &Keyed<Viewed>) -> Value {
    json!({ "items": viewed.items, "expires_in_seconds": seconds_left(viewed.expires_at()) })
}

/// The time left before the stamp, for display; `null` when nothing is stored.
fn seconds_left(stamp: Option<OffsetDateTime>) -> Option<i64> {
    stamp.map(|at| (at - OffsetDateTime::now_utc()).whole_seconds())
}
