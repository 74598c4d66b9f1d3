//! Instants as the tests write and read them: nanoseconds in handler replies, float seconds in
//! stored stamps, and percent-encoded values in URIs.

use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions_controller::STAMP_KEY;

/// An instant as nanoseconds since the Unix epoch (fits an `i64` until 2262): how handlers
/// report `expires_at`.
pub fn nanos(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).expect("instant fits in i64 nanoseconds")
}

/// The instant a handler reported as nanoseconds.
pub fn instant(value: &Value) -> OffsetDateTime {
    let nanos = value
        .as_i64()
        .unwrap_or_else(|| panic!("expires_at {value} is not an instant"));
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).expect("instant in range")
}

/// An instant as a stamp stores it: float seconds since the Unix epoch (the seed's
/// `datetime.timestamp()`).
pub fn seconds(at: OffsetDateTime) -> f64 {
    at.unix_timestamp() as f64 + f64::from(at.nanosecond()) / 1e9
}

/// The stamp of a stored namespace, as the float it is stored as.
pub fn stored_stamp(namespace: &Value) -> f64 {
    namespace
        .get(STAMP_KEY)
        .unwrap_or_else(|| panic!("no {STAMP_KEY} in {namespace}"))
        .as_f64()
        .unwrap_or_else(|| panic!("{STAMP_KEY} in {namespace} is not a number"))
}

/// Asserts the stored namespace's stamp is `at`, to the float's precision.
pub fn assert_stamp(namespace: &Value, at: OffsetDateTime) {
    let stamp = stored_stamp(namespace);
    assert!(
        (stamp - seconds(at)).abs() < 1e-5,
        "stored stamp {stamp} in {namespace}, expected {} ({at})",
        seconds(at)
    );
}

/// A stored namespace without its stamp: the user's keys.
pub fn user_keys(namespace: &Value) -> Value {
    let mut keys = namespace
        .as_object()
        .unwrap_or_else(|| panic!("stored namespace {namespace} is not an object"))
        .clone();
    keys.remove(STAMP_KEY);
    Value::Object(keys)
}

/// Percent-encodes a value for a path segment or a query (JSON values in URIs).
pub fn enc(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
