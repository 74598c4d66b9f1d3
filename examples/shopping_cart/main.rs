//! A small web shop whose visitor data lives in session namespaces, each with its own expiry.
//!
//! ```text
//! cargo run --example shopping_cart            # http://127.0.0.1:3000, PORT=8080 to change
//! SESSION_STORE=redis://127.0.0.1:6379 cargo run --example shopping_cart --features redis
//! CHECKOUT_EXPIRY_SECS=20 cargo run --example shopping_cart  # watch a checkout expire
//!
//! curl -s -c jar -b jar -X POST 'http://127.0.0.1:3000/cart/apple?quantity=2'
//! curl -s -c jar -b jar http://127.0.0.1:3000/cart
//! curl -s -c jar -b jar -X DELETE http://127.0.0.1:3000/cart/apple
//! curl -s -c jar -b jar -X DELETE http://127.0.0.1:3000/cart
//! curl -s -c jar -b jar -X POST http://127.0.0.1:3000/viewed/pear
//! ```
//!
//! Server-rendered pages under `/shop` (`pages`): a product list with prices (`catalogue`), the
//! cart (quantities, line prices and the total, removal, a free-text note, emptying), and a
//! three-step checkout wizard (address, delivery, confirm). Beside them, the JSON API of `/cart`
//! and `/viewed` (`api`). Both work on the same session data (`namespaces`):
//!
//! - the cart, namespace `shopping_cart`, kept `CART_EXPIRY_SECS` after its last change
//!   (default 30 minutes);
//! - the checkout's answers, namespace `checkout`, kept `CHECKOUT_EXPIRY_SECS` after the last
//!   answer (default 5 minutes, and shorter than the cart's): when they expire, the pages say
//!   so and the visitor starts the checkout again while the cart stays;
//! - the recently viewed items, the typed namespace `recently_viewed` (2 minutes).
//!
//! Every page embeds the cart through the crate's `json_script` export, and a small script
//! counts the items in the header from it again (the server renders the count too).
//!
//! Every error has a message: the API answers `{"error": "…"}`, a form the shop cannot take is
//! answered with its page and the reason (`problem`). The server (`serve`) closes a connection
//! that does not send its request head within `HEADER_READ_TIMEOUT_SECS`, and Ctrl-C stops it
//! within a few seconds whatever the clients do.
//!
//! `SESSION_STORE` picks the session store: `memory` (the default: sessions last as long as the
//! process), `redis://…`, `postgres://…` (or `postgresql://…`) or `sqlite://…` (the file is
//! created if missing). The last three need the example's feature of the same name (`--features
//! redis`, `postgres`, `sqlite`; README: "Stores"): their store crates are optional dependencies
//! of the example's package, not dependencies of the library.

mod api;
mod catalogue;
mod html;
mod namespaces;
mod pages;
mod problem;
mod serve;
mod store;

use std::{env, net::SocketAddr, process::ExitCode};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware,
    response::Response,
    Router,
};
use time::Duration;
use tower::ServiceBuilder;
use tower_sessions::{SessionManagerLayer, SessionStore};
use tower_sessions_controller::{stores::MemoryStore, SessionControllerLayer};
use tracing_subscriber::EnvFilter;

use crate::{
    namespaces::Expiries,
    store::{redact, StoreChoice},
};

const DEFAULT_PORT: u16 = 3000;
const DEFAULT_CART_EXPIRY: Duration = Duration::minutes(30);
const DEFAULT_CHECKOUT_EXPIRY: Duration = Duration::minutes(5);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::seconds(10);

fn app<S: SessionStore + Clone>(store: S, expiries: Expiries) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(api::routes())
        .fallback(|state, request| no_route(StatusCode::NOT_FOUND, state, request))
        .method_not_allowed_fallback(|state, request| {
            no_route(StatusCode::METHOD_NOT_ALLOWED, state, request)
        })
        // The forms are small; a larger body is refused before it is read, with the form's page.
        .layer(DefaultBodyLimit::max(pages::FORM_LIMIT))
        .with_state(expiries)
        // One `ServiceBuilder` for both session layers (axum boxes each `Router::layer` on its
        // own), the session manager first: the controller layer runs inside it.
        //
        // Browsers drop `Secure` cookies set over plain http://127.0.0.1, and the cart would
        // forget every request. Production serves HTTPS and keeps the default,
        // `with_secure(true)`, so the session cookie never travels in clear text. The default
        // `SameSite=Strict` stays: another site's form cannot post with the visitor's session.
        //
        // The store merges each save into the latest record (the crate's own stores), so two
        // overlapping requests (two tabs adding to the cart) never undo each other's changes.
        //
        // Outside both, `explain_bare_errors` gives a message to any error without one, such as
        // a store that fails while the session is saved.
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(problem::explain_bare_errors))
                .layer(SessionManagerLayer::new(store).with_secure(false))
                .layer(SessionControllerLayer::new()),
        )
}

/// The fallbacks: JSON for a path of the API, else a page.
async fn no_route(
    status: StatusCode,
    State(expiries): State<Expiries>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    let (mut parts, _) = request.into_parts();
    if api::is_api_path(parts.uri.path()) {
        api::no_route(status, &method, parts.uri.path())
    } else {
        pages::no_route(status, &method, &mut parts, &expiries).await
    }
}

/// `PORT` from the environment, or the default.
fn port() -> Result<u16, String> {
    match env::var("PORT") {
        Err(env::VarError::NotPresent) => Ok(DEFAULT_PORT),
        Err(env::VarError::NotUnicode(raw)) => Err(format!("PORT={raw:?} is not a port number")),
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|err| format!("PORT={raw:?} is not a port number (0 to 65535): {err}")),
    }
}

/// Whole seconds above 0 from the environment variable `name`, or `default`.
fn seconds(name: &str, default: Duration) -> Result<Duration, String> {
    let raw = match env::var(name) {
        Err(env::VarError::NotPresent) => return Ok(default),
        Err(env::VarError::NotUnicode(raw)) => {
            return Err(format!("{name}={raw:?} is not a number"))
        }
        Ok(raw) => raw,
    };
    match raw.trim().parse::<u32>() {
        Ok(seconds) if seconds > 0 => Ok(Duration::seconds(seconds.into())),
        _ => Err(format!("{name}={raw:?} is not a number of seconds above 0")),
    }
}

/// `CART_EXPIRY_SECS` and `CHECKOUT_EXPIRY_SECS`; the checkout must expire before the cart.
fn expiries() -> Result<Expiries, String> {
    let expiries = Expiries {
        cart: seconds("CART_EXPIRY_SECS", DEFAULT_CART_EXPIRY)?,
        checkout: seconds("CHECKOUT_EXPIRY_SECS", DEFAULT_CHECKOUT_EXPIRY)?,
    };
    if expiries.checkout >= expiries.cart {
        // The marker that tells an expired checkout lives as long as the cart (see `Checkout`).
        return Err(format!(
            "CHECKOUT_EXPIRY_SECS ({} s) must be shorter than CART_EXPIRY_SECS ({} s)",
            expiries.checkout.whole_seconds(),
            expiries.cart.whole_seconds()
        ));
    }
    Ok(expiries)
}

async fn run() -> Result<(), String> {
    let store = StoreChoice::from_env()?;
    let expiries = expiries()?;
    let header_read_timeout =
        seconds("HEADER_READ_TIMEOUT_SECS", DEFAULT_HEADER_READ_TIMEOUT)?.unsigned_abs();
    let addr = SocketAddr::from(([127, 0, 0, 1], port()?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    // PORT=0 lets the system choose: print the address actually bound.
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;
    println!(
        "cart kept {} s after its last change (CART_EXPIRY_SECS), checkout answers {} s after \
         the last answer (CHECKOUT_EXPIRY_SECS)",
        expiries.cart.whole_seconds(),
        expiries.checkout.whole_seconds()
    );
    println!(
        "a connection must send its request head within {} s (HEADER_READ_TIMEOUT_SECS)",
        header_read_timeout.as_secs()
    );

    match store {
        StoreChoice::Memory => {
            println!("session store: memory (sessions last as long as the process)");
            serve(
                listener,
                addr,
                header_read_timeout,
                MemoryStore::default(),
                expiries,
            )
            .await
        }
        StoreChoice::Redis(url) => {
            let store = store::redis_store(&url).await?;
            println!("session store: Redis at {}", redact(&url));
            serve(listener, addr, header_read_timeout, store, expiries).await
        }
        StoreChoice::Postgres(url) => {
            let store = store::postgres_store(&url).await?;
            println!(
                "session store: PostgreSQL at {} (table tower_sessions.session)",
                redact(&url)
            );
            serve(listener, addr, header_read_timeout, store, expiries).await
        }
        StoreChoice::Sqlite(url) => {
            let store = store::sqlite_store(&url).await?;
            println!("session store: SQLite at {url} (table tower_sessions)");
            serve(listener, addr, header_read_timeout, store, expiries).await
        }
    }
    Ok(())
}

/// Serves the shop on `listener` with sessions in `store`, until Ctrl-C.
async fn serve<S: SessionStore + Clone>(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    header_read_timeout: std::time::Duration,
    store: S,
    expiries: Expiries,
) {
    println!("shopping cart listening on http://{addr} (Ctrl-C to stop)");
    let app = app(store, expiries);
    serve::serve(listener, app, header_read_timeout, shutdown_signal()).await;
}

/// Resolves on Ctrl-C; in-flight requests then finish (and save their sessions) before exit,
/// for at most `serve::SHUTDOWN_GRACE`.
async fn shutdown_signal() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        // Resolving here would stop the server at once: keep serving, stop by other means.
        tracing::error!(error = %err, "cannot listen for Ctrl-C; stop the server another way");
        std::future::pending::<()>().await;
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    // RUST_LOG overrides; by default, show the crate's warnings about corrupt or unsaved data
    // and its debug lines (such as an expired namespace being dropped).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_sessions_controller=debug"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
