//! Handlers several test files mount.

use axum::{extract::Path, http::StatusCode};
use tower_sessions::Session;
use tower_sessions_controller::{Error, SessionControllers};

/// `GET .../{ns}`: the runtime namespace `ns`, as `to_json` shows it.
pub async fn namespace_json(
    controllers: SessionControllers,
    Path(ns): Path<String>,
) -> Result<String, Error> {
    Ok(controllers.open(&ns).await?.to_json())
}

/// tower-sessions' own `Session::cycle_id`: a new id for the same record.
pub async fn cycle_id(session: Session) -> StatusCode {
    match session.cycle_id().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// tower-sessions' own `Session::flush`: the record deleted, the cookie removed.
pub async fn flush(session: Session) -> StatusCode {
    match session.flush().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
