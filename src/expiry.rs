//! The expiry rules of a namespace, in one place.
//!
//! A namespace carries one stamp, `_timeout_datestamp`: the instant it expires, stored as seconds
//! since the Unix epoch in a float (the seed's layout). The rules:
//!
//! - a write sets the stamp to the request's now plus the namespace's expiry (the timeout slides on
//!   every write; reads never move it);
//! - a namespace is alive while its stamp is still in the future: at the stamp instant it has
//!   expired;
//! - a namespace whose stamp has passed is dropped when it is opened;
//! - a namespace without a stamp is never dropped, and reports itself expired (the seed counts a
//!   missing stamp as the epoch).

use serde_json::Value;
use time::{Duration, OffsetDateTime};

/// The reserved key under which a namespace stores its expiry stamp.
///
/// Inserting it as user data is an [`Error::ReservedKey`](crate::Error::ReservedKey), and
/// [`SessionController::to_json`](crate::SessionController::to_json) never shows it.
///
/// ```
/// assert_eq!(tower_sessions_controller::STAMP_KEY, "_timeout_datestamp");
/// ```
pub const STAMP_KEY: &str = "_timeout_datestamp";

/// The expiry a namespace gets when none is given: five minutes, the seed's
/// `seconds_till_expiry = 300`. [`SessionControllers::open`](crate::SessionControllers::open)
/// and [`Namespace::EXPIRY`](crate::Namespace::EXPIRY) use it.
///
/// ```
/// assert_eq!(tower_sessions_controller::DEFAULT_EXPIRY.whole_seconds(), 300);
/// ```
pub const DEFAULT_EXPIRY: Duration = Duration::minutes(5);

/// Whether `key` is reserved for the namespace's own bookkeeping.
pub(crate) fn is_reserved(key: &str) -> bool {
    key == STAMP_KEY
}

/// Whether an expiry can be used: a namespace that expires the moment it is written is a mistake.
pub(crate) fn is_valid(expiry: Duration) -> bool {
    expiry.is_positive()
}

/// The seed's `is_expired`: true unless the stamp is still in the future.
pub(crate) fn is_expired(stamp: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    stamp.is_none_or(|stamp| stamp <= now)
}

/// Whether a stored namespace is dropped when it is opened: it has a stamp, and the stamp has
/// passed.
pub(crate) fn is_dropped_on_open(stamp: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    stamp.is_some_and(|stamp| stamp <= now)
}

/// The latest stamp: the last whole second of year 9999, which a float of seconds still holds
/// and reads back exactly.
const LATEST_STAMP: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

/// The stamp a write sets: `now + expiry`, as it will read back from the stored float, so that
/// what a handler sees in [`expires_at`](crate::SessionController::expires_at) is exactly what the
/// next request judges by. The float resolves about a quarter of a microsecond today: an expiry
/// shorter than that still stamps strictly after `now`, so a written namespace is alive after the
/// write. An expiry past the calendar saturates at the latest stamp.
pub(crate) fn stamp_after_write(now: OffsetDateTime, expiry: Duration) -> OffsetDateTime {
    let stamp = now
        .checked_add(expiry)
        .map_or(LATEST_STAMP, |stamp| stamp.min(LATEST_STAMP));
    let mut seconds = encode_seconds(stamp);
    loop {
        match decode_seconds(seconds) {
            Some(read) if read > now || read >= LATEST_STAMP => return read,
            Some(_) => seconds = seconds.next_up(),
            None => return stamp,
        }
    }
}

/// The stored form of a stamp: seconds since the Unix epoch, as a float.
pub(crate) fn encode(stamp: OffsetDateTime) -> Value {
    Value::from(encode_seconds(stamp))
}

fn encode_seconds(stamp: OffsetDateTime) -> f64 {
    stamp.unix_timestamp() as f64 + f64::from(stamp.nanosecond()) / 1e9
}

/// Reads a stored stamp, or says why it cannot be read.
pub(crate) fn decode(value: &Value) -> Result<OffsetDateTime, &'static str> {
    let seconds = value.as_f64().ok_or("the expiry stamp is not a number")?;
    decode_seconds(seconds).ok_or("the expiry stamp is out of range")
}

fn decode_seconds(seconds: f64) -> Option<OffsetDateTime> {
    if !seconds.is_finite() {
        return None;
    }
    let whole = seconds.trunc();
    // `whole` is an integer-valued float; out of the `i64` range, `as` would saturate, so the
    // range check below sees it.
    let at = OffsetDateTime::from_unix_timestamp(whole as i64).ok()?;
    let nanos = ((seconds - whole) * 1e9).round() as i64;
    at.checked_add(Duration::nanoseconds(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_stamp_reads_back_as_the_instant_it_was_written_for() {
        for at in [
            datetime!(2026-11-25 17:00 UTC),
            datetime!(2026-11-25 17:00:00.25 UTC),
            datetime!(1969-12-31 23:59:59.5 UTC),
        ] {
            assert_eq!(decode(&encode(at)), Ok(at));
        }
    }

    #[test]
    fn a_write_stamp_is_what_the_stored_float_reads_back_as() {
        let now = datetime!(2026-11-25 17:00:00.123_456_789 UTC);
        let stamp = stamp_after_write(now, Duration::seconds(300));
        assert_eq!(decode(&encode(stamp)), Ok(stamp));
        assert!((stamp - (now + Duration::seconds(300))).abs() < Duration::microseconds(1));
    }

    #[test]
    fn an_expiry_past_the_calendar_saturates_at_a_stamp_that_reads_back() {
        let now = datetime!(2026-11-25 17:00 UTC);
        for expiry in [Duration::MAX, Duration::days(365 * 8000)] {
            let stamp = stamp_after_write(now, expiry);
            assert_eq!(stamp, LATEST_STAMP);
            assert_eq!(decode(&encode(stamp)), Ok(stamp));
        }
    }

    #[test]
    fn an_expiry_below_the_floats_resolution_still_stamps_after_now() {
        let now = datetime!(2026-11-25 17:00:00.000_000_100 UTC);
        for nanos in [1, 50, 119, 120, 238] {
            let stamp = stamp_after_write(now, Duration::nanoseconds(nanos));
            assert!(stamp > now, "{nanos} ns: {stamp} is not after {now}");
            assert_eq!(decode(&encode(stamp)), Ok(stamp));
        }
    }

    #[test]
    fn stamps_that_are_not_finite_numbers_in_range_are_refused() {
        for bad in [
            Value::from("1700000000"),
            Value::Null,
            Value::from(1e300),
            Value::from(-1e300),
            serde_json::json!([1]),
        ] {
            assert!(decode(&bad).is_err(), "{bad} was accepted");
        }
        assert!(decode_seconds(f64::NAN).is_none());
        assert!(decode_seconds(f64::INFINITY).is_none());
    }

    #[test]
    fn an_integer_stamp_from_another_writer_is_read() {
        assert_eq!(
            decode(&Value::from(1_700_000_000_i64)),
            Ok(datetime!(2023-11-14 22:13:20 UTC))
        );
    }

    #[test]
    fn at_the_stamp_the_namespace_has_expired() {
        let stamp = datetime!(2026-11-25 17:00 UTC);
        let just_before = stamp - Duration::nanoseconds(1);
        assert!(!is_expired(Some(stamp), just_before));
        assert!(is_expired(Some(stamp), stamp));
        assert!(!is_dropped_on_open(Some(stamp), just_before));
        assert!(is_dropped_on_open(Some(stamp), stamp));
    }

    #[test]
    fn without_a_stamp_a_namespace_reports_expired_but_is_kept() {
        let now = datetime!(2026-11-25 17:00 UTC);
        assert!(is_expired(None, now));
        assert!(!is_dropped_on_open(None, now));
    }
}
