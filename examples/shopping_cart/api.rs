//! The JSON API: `/cart` and `/viewed`, the routes the README's `curl` lines use. Every response
//! is JSON, errors included (`{"error": "…"}`); `expires_in_seconds` is the time left before the
//! namespace's stamp, `null` when nothing is stored.

use axum::{
    extract::{rejection::QueryRejection, Query},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tower_sessions_controller::Keyed;

use crate::{
    catalogue::{self, ProductInPath},
    namespaces::{Cart, Expiries, Viewed},
    problem::Problem,
};

pub fn routes() -> Router<Expiries> {
    Router::new()
        .route("/cart", get(list).delete(purge))
        .route("/cart/{item}", post(add).delete(remove))
        .route("/viewed", get(list_viewed))
        .route("/viewed/{item}", post(view_item))
}

/// Whether `path` belongs to the API (answered in JSON) rather than to the pages.
pub fn is_api_path(path: &str) -> bool {
    ["/cart", "/viewed"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The answer to a request no route takes: `404` for an unknown path, `405` for a method the
/// path does not take.
pub fn no_route(status: StatusCode, method: &Method, path: &str) -> Response {
    let message = format!(
        "the API has no {method} {}: it takes GET /cart, POST /cart/{{item}}?quantity=N, \
         DELETE /cart/{{item}}, DELETE /cart, GET /viewed and POST /viewed/{{item}}",
        catalogue::quoted(path)
    );
    Problem::new(status, message).into_response()
}

/// GET /cart
async fn list(cart: Cart) -> Json<Value> {
    Json(cart_json(&cart))
}

/// POST /cart/{item}?quantity=N
// The product and the quantity come first: bad input is refused before the session is loaded.
async fn add(
    ProductInPath(product): ProductInPath,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    mut cart: Cart,
) -> Result<Json<Value>, Problem> {
    let quantity = quantity(query)?;
    cart.add(product, quantity)?;
    tracing::info!(item = product.id, quantity, "added to the cart");
    Ok(Json(cart_json(&cart)))
}

/// `quantity` from the query string: 1 when absent, else a whole number from 1 to
/// `MAX_QUANTITY` (400 otherwise).
fn quantity(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<u32, Problem> {
    let bad = |message: String| Problem::new(StatusCode::BAD_REQUEST, message);
    let Query(pairs) = query.map_err(|rejection| {
        tracing::debug!(%rejection, "unreadable query string");
        bad("the query string cannot be read: send ?quantity=N".to_owned())
    })?;
    let mut given = pairs.iter().filter(|(name, _)| name == "quantity");
    match (given.next(), given.next()) {
        (None, _) => Ok(1),
        (Some((_, raw)), None) => catalogue::parse_quantity(raw, 1).map_err(bad),
        (Some(_), Some(_)) => Err(bad("give the quantity once".to_owned())),
    }
}

/// DELETE /cart/{item}: removing the last item purges the cart.
async fn remove(
    ProductInPath(product): ProductInPath,
    mut cart: Cart,
) -> Result<Json<Value>, Problem> {
    let mut items = cart.items();
    if items.remove(product.id).is_none() {
        let message = format!("{:?} is not in the cart", product.id);
        return Err(Problem::new(StatusCode::NOT_FOUND, message));
    }
    cart.set_items(&items)?;
    tracing::info!(item = product.id, "removed from the cart");
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
async fn view_item(
    ProductInPath(product): ProductInPath,
    mut viewed: Keyed<Viewed>,
) -> Json<Value> {
    // An expired history was dropped when `Keyed` opened it: this starts a fresh one.
    viewed.items.retain(|seen| seen != product.id);
    viewed.items.insert(0, product.id.to_owned());
    viewed.items.truncate(Viewed::MAX);
    Json(viewed_json(&viewed))
}

/// The cart's items, its note when it has one, the time left, and the total in pence.
fn cart_json(cart: &Cart) -> Value {
    let mut body = json!({
        "items": cart.items(),
        "expires_in_seconds": seconds_left(cart.expires_at()),
        "total_pence": cart.total().0,
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
