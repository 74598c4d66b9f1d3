//! The shop's errors as a visitor sees them: a status and a message. The JSON API answers them
//! as `{"error": "…"}`; the pages show them in the page the form came from.
//!
//! Under both, [`explain_bare_errors`] replaces any error response that is neither JSON nor a
//! page (a session store that fails before or after the handler, an axum rejection that slipped
//! through), so no visitor ever sees a raw `text/plain` error or an empty body.

use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{Html, IntoResponse, Response},
    Json,
};
use serde_json::json;
use tower_sessions_controller::Error;

use crate::{api, catalogue::NotAProduct, html};

/// What went wrong, in words for the visitor.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// A session that cannot be read or written: the server's fault, logged with the details, which
/// stay out of the message (a store error can carry connection details).
impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        tracing::error!(error = %err, "the session could not be used");
        let message = match err {
            Error::Store(_) => "the session store is unavailable; please try again in a moment",
            Error::OverBudget { .. } => "the cart is too large to be saved; nothing was changed",
            _ => "the session could not be updated; the server's log says why",
        };
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<NotAProduct> for Problem {
    fn from(not_a_product: NotAProduct) -> Self {
        Self::new(not_a_product.status(), not_a_product.to_string())
    }
}

/// `{"error": "…"}` with the status: the JSON API's form.
impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// The outermost layer: an error response whose body is neither JSON nor HTML becomes the
/// API's JSON error or a shop page, with the same status and headers. The handlers answer every
/// error they know of themselves; what reaches this is a failure around them, such as the store
/// failing to load or save the session.
pub async fn explain_bare_errors(request: Request, next: Next) -> Response {
    let from_api = api::is_api_path(request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_explained(&response) {
        return response;
    }
    tracing::warn!(%status, "an error without a message of the shop's own; answering with one");
    let message = if status.is_server_error() {
        "the server could not handle the request; its log says why"
    } else {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
    };
    let explained = if from_api {
        Problem::new(status, message).into_response()
    } else {
        let body = format!(
            r#"{}<p><a href="/shop">Back to the shop</a></p>"#,
            html::error_box(message)
        );
        (status, Html(html::bare_page("Something went wrong", &body))).into_response()
    };
    // Keep the headers (a cookie, `Allow`), but not those of the body being replaced.
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (explained_parts, body) = explained.into_parts();
    parts.headers.extend(explained_parts.headers);
    Response::from_parts(parts, body)
}

fn is_explained(response: &Response) -> bool {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    content_type.starts_with(b"application/json") || content_type.starts_with(b"text/html")
}
