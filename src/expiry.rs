//! The expiry rules of a namespace, in one place.
//!
//! A namespace carries one stamp, `_timeout_datestamp`: the instant it expires, stored as seconds
//! since the Unix epoch in a float (the seed's layout). What a write does to the stamp is the
//! namespace's [`ExpiryPolicy`]; the rules every policy shares:
//!
//! - under the default policy, a write sets the stamp to the request's now plus the namespace's
//!   expiry (the timeout slides on every write; reads never move it);
//! - a namespace is alive while its stamp is still in the future: at the stamp instant it has
//!   expired;
//! - a namespace whose stamp has passed is dropped when it is opened;
//! - a namespace without a stamp is never dropped, and reports itself expired (the seed counts a
//!   missing stamp as the epoch).

use std::num::NonZeroU32;

use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::Error;

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

/// The reserved key under which a namespace counted in requests ([`ExpiryPolicy::Hops`]) stores
/// how many more requests may open it.
///
/// ```
/// assert_eq!(tower_sessions_controller::HOPS_KEY, "_timeout_hops");
/// ```
pub const HOPS_KEY: &str = "_timeout_hops";

/// The reserved key under which a namespace stores the [`Lifetime`]s of its keys: an object from
/// key to `{"until": seconds}` or `{"hops": requests left}`.
///
/// ```
/// assert_eq!(tower_sessions_controller::LIFETIMES_KEY, "_key_timeouts");
/// ```
pub const LIFETIMES_KEY: &str = "_key_timeouts";

/// Whether `key` is reserved for the namespace's own bookkeeping.
pub(crate) fn is_reserved(key: &str) -> bool {
    key == STAMP_KEY || key == HOPS_KEY || key == LIFETIMES_KEY
}

/// When a namespace expires: chosen when it is opened
/// ([`SessionControllers::open_with_policy`](crate::SessionControllers::open_with_policy)) or
/// declared by a typed namespace
/// ([`Namespace::EXPIRY_POLICY`](crate::Namespace::EXPIRY_POLICY)).
///
/// Every policy judges with the request's one "now", taken when the request entered the layer:
/// a long request judges and stamps with the same instant, and the order of calls within a
/// request does not change the outcome. Policies that end at an instant keep it in the seed's
/// stamp, so a reader of the seed's layout sees the same deadline; the others store no stamp.
///
/// ```
/// use std::num::NonZeroU32;
/// use time::Duration;
/// use tower_sessions_controller::ExpiryPolicy;
///
/// assert_eq!(
///     ExpiryPolicy::default(),
///     ExpiryPolicy::SlidingOnWrite(Duration::minutes(5))
/// );
/// let three_requests = ExpiryPolicy::Hops(NonZeroU32::new(3).unwrap());
/// # let _ = three_requests;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExpiryPolicy {
    /// Every write sets the stamp to now plus the duration; reads leave it. The seed's rule and
    /// the default, with [`DEFAULT_EXPIRY`].
    SlidingOnWrite(Duration),
    /// Every request that opens the namespace while it is alive sets the stamp to now plus the
    /// duration, whether it reads or writes. Each such request is a store write.
    SlidingOnAccess(Duration),
    /// The first write sets the stamp to now plus the duration; later writes do not extend it.
    /// After the namespace expires (or is purged), the next write starts a new period.
    AfterFirstWrite(Duration),
    /// The namespace expires at this instant, whatever is written. A write at or after it is not
    /// kept: the namespace reads as expired and the flush stores nothing.
    At(OffsetDateTime),
    /// The namespace is readable in this many requests that open it after the last write, then
    /// gone. Each write starts the count again. Each request that opens it is a store write (the
    /// count goes down).
    Hops(NonZeroU32),
    /// The namespace never expires; a write removes any stamp it had.
    Never,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self::SlidingOnWrite(DEFAULT_EXPIRY)
    }
}

impl ExpiryPolicy {
    /// Refuses durations that would expire a namespace the moment it is written.
    pub(crate) fn validate(self, namespace: &str) -> Result<Self, Error> {
        match self {
            Self::SlidingOnWrite(expiry)
            | Self::SlidingOnAccess(expiry)
            | Self::AfterFirstWrite(expiry)
                if !is_valid(expiry) =>
            {
                Err(Error::InvalidExpiry {
                    namespace: namespace.to_owned(),
                    expiry,
                })
            }
            policy => Ok(policy),
        }
    }

    /// The stamp and request count a write leaves, given the namespace's current (live) stamp.
    pub(crate) fn on_write(self, stamp: Option<OffsetDateTime>, now: OffsetDateTime) -> Deadline {
        match self {
            Self::SlidingOnWrite(expiry) | Self::SlidingOnAccess(expiry) => Deadline {
                stamp: Some(stamp_after_write(now, expiry)),
                hops: None,
            },
            Self::AfterFirstWrite(expiry) => Deadline {
                stamp: Some(stamp.unwrap_or_else(|| stamp_after_write(now, expiry))),
                hops: None,
            },
            Self::At(at) => Deadline {
                stamp: Some(representable(at)),
                hops: None,
            },
            Self::Hops(hops) => Deadline {
                stamp: None,
                hops: Some(hops.get()),
            },
            Self::Never => Deadline::default(),
        }
    }

    /// Whether a write under this policy at `now` left `deadline` already passed: only an `At`
    /// instant can, and such a write is not stored.
    pub(crate) fn is_past(self, deadline: Deadline, now: OffsetDateTime) -> bool {
        matches!(self, Self::At(_)) && deadline.stamp.is_some_and(|stamp| stamp <= now)
    }

    /// Whether "expired" is judged by the stamp (the seed's rule: no stamp reads as expired), or,
    /// for the policies that store none, by whether the namespace holds anything.
    pub(crate) fn has_stamp(self) -> bool {
        !matches!(self, Self::Hops(_) | Self::Never)
    }
}

/// What decides when a namespace ends: its stamp, or the requests it has left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) stamp: Option<OffsetDateTime>,
    pub(crate) hops: Option<u32>,
}

/// How long one key of a namespace lives, set with
/// [`SessionController::set_lifetime`](crate::SessionController::set_lifetime). A key whose
/// lifetime is over disappears as if removed; the namespace's own expiry still ends it earlier
/// if it comes first.
///
/// ```
/// use std::num::NonZeroU32;
/// use time::Duration;
/// use tower_sessions_controller::Lifetime;
///
/// let half_a_minute = Lifetime::For(Duration::seconds(30));
/// let next_request_only = Lifetime::Hops(NonZeroU32::MIN);
/// # let _ = (half_a_minute, next_request_only);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lifetime {
    /// Until the request's now plus this duration; readable while that instant is in the future.
    For(Duration),
    /// Readable in this many later requests that open the namespace, then gone.
    Hops(NonZeroU32),
}

/// A key's lifetime as stored: an instant, or the requests it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyDeadline {
    Until(OffsetDateTime),
    Hops(u32),
}

impl KeyDeadline {
    pub(crate) fn new(lifetime: Lifetime, now: OffsetDateTime) -> Self {
        match lifetime {
            Lifetime::For(duration) => Self::Until(stamp_after_write(now, duration)),
            Lifetime::Hops(hops) => Self::Hops(hops.get()),
        }
    }

    /// Whether the key is gone for a request at `now` (judged when the namespace is opened).
    pub(crate) fn is_over(self, now: OffsetDateTime) -> bool {
        match self {
            Self::Until(until) => until <= now,
            Self::Hops(left) => left == 0,
        }
    }

    pub(crate) fn encode(self) -> Value {
        match self {
            Self::Until(until) => serde_json::json!({ "until": encode(until) }),
            Self::Hops(left) => serde_json::json!({ "hops": left }),
        }
    }

    pub(crate) fn decode(value: &Value) -> Result<Self, &'static str> {
        if let Some(until) = value.get("until") {
            return decode(until).map(Self::Until);
        }
        value
            .get("hops")
            .and_then(Value::as_u64)
            .and_then(|hops| u32::try_from(hops).ok())
            .map(Self::Hops)
            .ok_or("a key's lifetime is neither {\"until\": seconds} nor {\"hops\": count}")
    }
}

/// Reads a stored request count.
pub(crate) fn decode_hops(value: &Value) -> Result<u32, &'static str> {
    value
        .as_u64()
        .and_then(|hops| u32::try_from(hops).ok())
        .ok_or("the request count is not a whole number")
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
///
/// The arithmetic is on seconds and nanoseconds since the epoch ([`Unix`]): `OffsetDateTime`
/// arithmetic goes through the calendar, and this runs on every write.
pub(crate) fn stamp_after_write(now: OffsetDateTime, expiry: Duration) -> OffsetDateTime {
    let now = Unix::of(now);
    let stamp = now
        .checked_add(expiry)
        .map_or(Unix::LATEST, |stamp| stamp.min(Unix::LATEST));
    let mut seconds = stamp.seconds();
    let read = loop {
        match Unix::from_seconds(seconds) {
            Some(read) if read > now || read >= Unix::LATEST => break read,
            Some(_) => seconds = seconds.next_up(),
            None => break stamp,
        }
    };
    read.instant().unwrap_or(LATEST_STAMP)
}

/// `at` as it reads back from the stored float, within the calendar.
fn representable(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.min(LATEST_STAMP);
    decode_seconds(encode_seconds(at)).unwrap_or(at)
}

/// The stored form of a stamp: seconds since the Unix epoch, as a float.
pub(crate) fn encode(stamp: OffsetDateTime) -> Value {
    Value::from(encode_seconds(stamp))
}

fn encode_seconds(stamp: OffsetDateTime) -> f64 {
    Unix::of(stamp).seconds()
}

/// Reads a stored stamp, or says why it cannot be read.
pub(crate) fn decode(value: &Value) -> Result<OffsetDateTime, &'static str> {
    let seconds = value.as_f64().ok_or("the expiry stamp is not a number")?;
    decode_seconds(seconds).ok_or("the expiry stamp is out of range")
}

fn decode_seconds(seconds: f64) -> Option<OffsetDateTime> {
    Unix::from_seconds(seconds)?.instant()
}

/// An instant of the calendar as whole seconds since the Unix epoch (rounded down) and the
/// nanoseconds past them: what stamps are computed in. Ordered as the instants are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Unix {
    seconds: i64,
    nanos: u32,
}

impl Unix {
    const NANOS_PER_SECOND: i64 = 1_000_000_000;
    /// The first and last seconds of the calendar `time` handles.
    const EARLIEST_SECONDS: i64 = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
    const LAST_SECONDS: i64 = time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
    const LATEST: Self = Self {
        seconds: LATEST_STAMP.unix_timestamp(),
        nanos: 0,
    };

    fn of(at: OffsetDateTime) -> Self {
        Self {
            seconds: at.unix_timestamp(),
            nanos: at.nanosecond(),
        }
    }

    /// `seconds` plus `nanos` (any sign, up to a second or two), if that is in the calendar.
    fn new(seconds: i64, nanos: i64) -> Option<Self> {
        let seconds = seconds.checked_add(nanos.div_euclid(Self::NANOS_PER_SECOND))?;
        let nanos = nanos.rem_euclid(Self::NANOS_PER_SECOND) as u32;
        (Self::EARLIEST_SECONDS..=Self::LAST_SECONDS)
            .contains(&seconds)
            .then_some(Self { seconds, nanos })
    }

    fn checked_add(self, duration: Duration) -> Option<Self> {
        Self::new(
            self.seconds.checked_add(duration.whole_seconds())?,
            i64::from(self.nanos) + i64::from(duration.subsec_nanoseconds()),
        )
    }

    /// The instant a stored float of seconds stands for: its whole seconds plus its fraction
    /// rounded to the nanosecond.
    fn from_seconds(seconds: f64) -> Option<Self> {
        if !seconds.is_finite() {
            return None;
        }
        let whole = seconds.trunc();
        // `whole` is an integer-valued float; out of the `i64` range, `as` saturates, and the
        // range check in `new` sees it.
        Self::new(whole as i64, ((seconds - whole) * 1e9).round() as i64)
    }

    /// The stored float: whole seconds plus the fraction.
    fn seconds(self) -> f64 {
        self.seconds as f64 + f64::from(self.nanos) / 1e9
    }

    fn instant(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.seconds)
            .ok()?
            .replace_nanosecond(self.nanos)
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    /// The calendar arithmetic the nanosecond arithmetic replaces: a stored float read as whole
    /// seconds plus the fraction rounded to the nanosecond.
    fn decode_by_calendar(seconds: f64) -> Option<OffsetDateTime> {
        if !seconds.is_finite() {
            return None;
        }
        let whole = seconds.trunc();
        let at = OffsetDateTime::from_unix_timestamp(whole as i64).ok()?;
        at.checked_add(Duration::nanoseconds(
            ((seconds - whole) * 1e9).round() as i64
        ))
    }

    /// The same for a write's stamp.
    fn stamp_by_calendar(now: OffsetDateTime, expiry: Duration) -> OffsetDateTime {
        let stamp = now
            .checked_add(expiry)
            .map_or(LATEST_STAMP, |stamp| stamp.min(LATEST_STAMP));
        let mut seconds = stamp.unix_timestamp() as f64 + f64::from(stamp.nanosecond()) / 1e9;
        loop {
            match decode_by_calendar(seconds) {
                Some(read) if read > now || read >= LATEST_STAMP => return read,
                Some(_) => seconds = seconds.next_up(),
                None => return stamp,
            }
        }
    }

    fn instants() -> impl Strategy<Value = OffsetDateTime> {
        prop_oneof![
            // Around today, where stamps live.
            (1_700_000_000_000_000_000i128..1_900_000_000_000_000_000),
            // Anywhere in the calendar.
            (i128::from(Unix::EARLIEST_SECONDS) * 1_000_000_000
                ..i128::from(Unix::LAST_SECONDS + 1) * 1_000_000_000),
        ]
        .prop_map(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap())
    }

    proptest! {
        #[test]
        fn stored_floats_read_as_the_calendar_reads_them(
            seconds in prop_oneof![
                any::<f64>(),
                -400_000_000_000.0f64..400_000_000_000.0,
                1.7e9f64..1.9e9,
            ]
        ) {
            prop_assert_eq!(decode_seconds(seconds), decode_by_calendar(seconds));
        }

        #[test]
        fn write_stamps_are_the_calendars(
            now in instants(),
            expiry in prop_oneof![
                (1i64..1_000_000).prop_map(Duration::nanoseconds),
                (1i64..100_000_000).prop_map(Duration::seconds),
                any::<i64>().prop_map(Duration::seconds),
            ],
        ) {
            prop_assert_eq!(stamp_after_write(now, expiry), stamp_by_calendar(now, expiry));
            prop_assert_eq!(encode_seconds(now), now.unix_timestamp() as f64
                + f64::from(now.nanosecond()) / 1e9);
        }
    }

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
