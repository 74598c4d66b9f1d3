//! Handlers several test files mount.

use axum::{extract::Path, http::StatusCode, Json};
use serde_json::Value;
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

/// `GET /ns/{ns}`: the namespace's keys and values.
pub async fn ns_read(
    Path(ns): Path<String>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    Ok(Json(Value::Object(controllers.open(&ns).await?.data())))
}

/// `POST /ns/{ns}/{key}/{value}`: the key set; the namespace's keys and values.
pub async fn ns_put(
    Path((ns, key, value)): Path<(String, String, String)>,
    controllers: SessionControllers,
) -> Result<Json<Value>, Error> {
    let mut namespace = controllers.open(&ns).await?;
    namespace.insert(&key, value)?;
    Ok(Json(Value::Object(namespace.data())))
}

/// `POST /direct/{key}/{value}`: `value`, a string, under the top-level `key`, written through
/// `Session` itself (beside the controllers, as an app may write a user id).
pub async fn direct(Path((key, value)): Path<(String, String)>, session: Session) -> StatusCode {
    write_direct(&session, &key, value).await
}

/// `value`, a string, under the top-level `key` of `session`: `200`, or `500` if the store failed.
pub async fn write_direct(session: &Session, key: &str, value: String) -> StatusCode {
    match session.insert_value(key, Value::String(value)).await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
