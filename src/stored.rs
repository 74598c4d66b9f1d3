//! The stored layout of a namespace: what one key of the session holds, and the stamp's codec.
//!
//! Under the namespace's key the session holds a JSON object: the user's keys and values, and
//! the namespace's bookkeeping under three reserved keys. [`STAMP_KEY`] holds the expiry instant
//! as seconds since the Unix epoch in a float (the seed's layout); [`HOPS_KEY`] and
//! [`LIFETIMES_KEY`] appear only when a policy or a key's lifetime needs them. [`Stored`] is that
//! object split into the user's map and the bookkeeping: [`Stored::decode`] reads it, or says why
//! it cannot, and [`Stored::encode`] writes it back.
//!
//! A stamp is written as the float it will read back as: instants are computed in whole
//! seconds and nanoseconds since the epoch ([`Unix`]), so a stamp a handler sees is exactly the
//! one the next request judges by.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
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

/// The reserved key under which a namespace counted in requests
/// ([`ExpiryPolicy::Hops`](crate::ExpiryPolicy::Hops)) stores how many more requests may open it.
///
/// ```
/// assert_eq!(tower_sessions_controller::HOPS_KEY, "_timeout_hops");
/// ```
pub const HOPS_KEY: &str = "_timeout_hops";

/// The reserved key under which a namespace stores the [`Lifetime`](crate::Lifetime)s of its
/// keys: an object from key to `{"until": seconds}` or `{"hops": requests left}`.
///
/// ```
/// assert_eq!(tower_sessions_controller::LIFETIMES_KEY, "_key_timeouts");
/// ```
pub const LIFETIMES_KEY: &str = "_key_timeouts";

/// Whether `key` is reserved for the namespace's own bookkeeping.
pub(crate) fn is_reserved(key: &str) -> bool {
    key == STAMP_KEY || key == HOPS_KEY || key == LIFETIMES_KEY
}

/// What decides when a namespace ends: its stamp, or the requests it has left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) stamp: Option<OffsetDateTime>,
    pub(crate) hops: Option<u32>,
}

/// A key's lifetime as stored: an instant, or the requests it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyDeadline {
    Until(OffsetDateTime),
    Hops(u32),
}

/// A namespace in its stored form: the user's keys, and the bookkeeping under the reserved keys.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) map: Map<String, Value>,
    pub(crate) deadline: Deadline,
    pub(crate) lifetimes: BTreeMap<String, KeyDeadline>,
}

impl Stored {
    /// Splits a stored namespace, or says why it cannot be read.
    pub(crate) fn decode(stored: Value) -> Result<Self, &'static str> {
        let Value::Object(mut map) = stored else {
            return Err("the namespace is not a JSON object");
        };
        let stamp = map.remove(STAMP_KEY);
        let (hops, lifetimes) = if holds_no_other_reserved_key(&map) {
            (None, None)
        } else {
            (map.remove(HOPS_KEY), map.remove(LIFETIMES_KEY))
        };
        let (deadline, lifetimes) =
            bookkeeping(stamp.as_ref(), hops.as_ref(), lifetimes.as_ref(), |key| {
                map.contains_key(key)
            })?;
        Ok(Self {
            map,
            deadline,
            lifetimes,
        })
    }

    /// The stored form, or `None` for an empty namespace (which is not stored at all). Only the
    /// lifetimes of keys that hold a value are kept.
    pub(crate) fn encode(self) -> Option<Value> {
        let Self {
            mut map,
            deadline,
            lifetimes,
        } = self;
        if map.is_empty() {
            return None;
        }
        let lifetimes: Map<String, Value> = lifetimes
            .into_iter()
            .filter(|(key, _)| map.contains_key(key))
            .map(|(key, deadline)| (key, deadline.encode()))
            .collect();
        if !lifetimes.is_empty() {
            map.insert(LIFETIMES_KEY.to_owned(), Value::Object(lifetimes));
        }
        if let Some(hops) = deadline.hops {
            map.insert(HOPS_KEY.to_owned(), Value::from(hops));
        }
        if let Some(stamp) = deadline.stamp {
            map.insert(STAMP_KEY.to_owned(), encode_stamp(stamp));
        }
        Some(Value::Object(map))
    }
}

/// Whether `map`, without its stamp, surely holds neither [`HOPS_KEY`] nor [`LIFETIMES_KEY`]:
/// a small map is looked through, which is cheaper than looking the two keys up (most
/// namespaces hold a few keys); a larger one is left to the lookups. (Whatever the map's order:
/// serde_json's `preserve_order` keeps keys in insertion order.)
fn holds_no_other_reserved_key(map: &Map<String, Value>) -> bool {
    /// The most keys looked through.
    const LOOKED_THROUGH: usize = 4;
    // The stamp was taken out first: any reserved key left is one of the two.
    map.len() <= LOOKED_THROUGH && !map.keys().any(|key| is_reserved(key))
}

/// A stored namespace's bookkeeping, from what its reserved keys hold (the stamp, the hops, the
/// keys' lifetimes), or why it cannot be read. `holds` says whether the namespace holds a user's
/// key: a lifetime for a key it does not hold means nothing (this crate never stores one), and
/// must not end, or outlive, a value inserted later.
fn bookkeeping(
    stamp: Option<&Value>,
    hops: Option<&Value>,
    lifetimes: Option<&Value>,
    holds: impl Fn(&str) -> bool,
) -> Result<(Deadline, BTreeMap<String, KeyDeadline>), &'static str> {
    let stamp = stamp.map(decode_stamp).transpose()?;
    let hops = hops.map(decode_hops).transpose()?;
    let mut lifetimes: BTreeMap<String, KeyDeadline> = match lifetimes {
        None => BTreeMap::new(),
        Some(Value::Object(lifetimes)) => lifetimes
            .iter()
            .map(|(key, deadline)| Ok((key.clone(), KeyDeadline::decode(deadline)?)))
            .collect::<Result<_, &'static str>>()?,
        Some(_) => return Err("the keys' lifetimes are not a JSON object"),
    };
    lifetimes.retain(|key, _| holds(key));
    Ok((Deadline { stamp, hops }, lifetimes))
}

/// A stored namespace read in place: its bookkeeping decoded, its user's values looked up in the
/// stored object rather than copied out of it (a merge needs only the keys its request touched).
pub(crate) struct StoredRef<'a> {
    map: &'a Map<String, Value>,
    pub(crate) deadline: Deadline,
    pub(crate) lifetimes: BTreeMap<String, KeyDeadline>,
}

impl<'a> StoredRef<'a> {
    /// Reads a stored namespace, or says why it cannot be read, as [`Stored::decode`] does.
    pub(crate) fn read(stored: &'a Value) -> Result<Self, &'static str> {
        let Value::Object(map) = stored else {
            return Err("the namespace is not a JSON object");
        };
        let (deadline, lifetimes) = bookkeeping(
            map.get(STAMP_KEY),
            map.get(HOPS_KEY),
            map.get(LIFETIMES_KEY),
            |key| !is_reserved(key) && map.contains_key(key),
        )?;
        Ok(Self {
            map,
            deadline,
            lifetimes,
        })
    }

    /// The value of the user's key `key`, if the namespace holds one.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        if is_reserved(key) {
            return None;
        }
        self.map.get(key)
    }

    /// The user's keys and values.
    pub(crate) fn user_values(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.map.iter().filter(|(key, _)| !is_reserved(key))
    }
}

impl KeyDeadline {
    fn encode(self) -> Value {
        match self {
            Self::Until(until) => serde_json::json!({ "until": encode_stamp(until) }),
            Self::Hops(left) => serde_json::json!({ "hops": left }),
        }
    }

    fn decode(value: &Value) -> Result<Self, &'static str> {
        if let Some(until) = value.get("until") {
            return decode_stamp(until).map(Self::Until);
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
fn decode_hops(value: &Value) -> Result<u32, &'static str> {
    value
        .as_u64()
        .and_then(|hops| u32::try_from(hops).ok())
        .ok_or("the request count is not a whole number")
}

/// The stored form of a stamp: seconds since the Unix epoch, as a float.
pub(crate) fn encode_stamp(stamp: OffsetDateTime) -> Value {
    Value::from(encode_seconds(stamp))
}

/// Reads a stored stamp, or says why it cannot be read.
pub(crate) fn decode_stamp(value: &Value) -> Result<OffsetDateTime, &'static str> {
    let seconds = value.as_f64().ok_or("the expiry stamp is not a number")?;
    decode_seconds(seconds).ok_or("the expiry stamp is out of range")
}

fn encode_seconds(stamp: OffsetDateTime) -> f64 {
    Unix::of(stamp).seconds()
}

fn decode_seconds(seconds: f64) -> Option<OffsetDateTime> {
    Unix::from_seconds(seconds)?.instant()
}

/// The latest stamp: the last whole second of year 9999, which a float of seconds still holds
/// and reads back exactly.
pub(crate) const LATEST_STAMP: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

/// The stamp `now + duration` as it will read back from the stored float, so that what a handler
/// sees in [`expires_at`](crate::SessionController::expires_at) is exactly what the next request
/// judges by. The float resolves about a quarter of a microsecond today: a duration shorter than
/// that still stamps strictly after `now`, so a written namespace is alive after the write. A
/// duration past the calendar saturates at the latest stamp.
///
/// The arithmetic is on seconds and nanoseconds since the epoch ([`Unix`]): `OffsetDateTime`
/// arithmetic goes through the calendar, and this runs on every write.
pub(crate) fn stamp_after(now: OffsetDateTime, duration: Duration) -> OffsetDateTime {
    let now = Unix::of(now);
    let stamp = now
        .checked_add(duration)
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
pub(crate) fn representable(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.min(LATEST_STAMP);
    decode_seconds(encode_seconds(at)).unwrap_or(at)
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
    use serde_json::json;
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
            prop_assert_eq!(stamp_after(now, expiry), stamp_by_calendar(now, expiry));
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
            assert_eq!(decode_stamp(&encode_stamp(at)), Ok(at));
        }
    }

    #[test]
    fn a_write_stamp_is_what_the_stored_float_reads_back_as() {
        let now = datetime!(2026-11-25 17:00:00.123_456_789 UTC);
        let stamp = stamp_after(now, Duration::seconds(300));
        assert_eq!(decode_stamp(&encode_stamp(stamp)), Ok(stamp));
        assert!((stamp - (now + Duration::seconds(300))).abs() < Duration::microseconds(1));
    }

    #[test]
    fn an_expiry_past_the_calendar_saturates_at_a_stamp_that_reads_back() {
        let now = datetime!(2026-11-25 17:00 UTC);
        for expiry in [Duration::MAX, Duration::days(365 * 8000)] {
            let stamp = stamp_after(now, expiry);
            assert_eq!(stamp, LATEST_STAMP);
            assert_eq!(decode_stamp(&encode_stamp(stamp)), Ok(stamp));
        }
    }

    #[test]
    fn an_expiry_below_the_floats_resolution_still_stamps_after_now() {
        let now = datetime!(2026-11-25 17:00:00.000_000_100 UTC);
        for nanos in [1, 50, 119, 120, 238] {
            let stamp = stamp_after(now, Duration::nanoseconds(nanos));
            assert!(stamp > now, "{nanos} ns: {stamp} is not after {now}");
            assert_eq!(decode_stamp(&encode_stamp(stamp)), Ok(stamp));
        }
    }

    #[test]
    fn stamps_that_are_not_finite_numbers_in_range_are_refused() {
        for bad in [
            Value::from("1700000000"),
            Value::Null,
            Value::from(1e300),
            Value::from(-1e300),
            json!([1]),
        ] {
            assert!(decode_stamp(&bad).is_err(), "{bad} was accepted");
        }
        assert!(decode_seconds(f64::NAN).is_none());
        assert!(decode_seconds(f64::INFINITY).is_none());
    }

    #[test]
    fn an_integer_stamp_from_another_writer_is_read() {
        assert_eq!(
            decode_stamp(&Value::from(1_700_000_000_i64)),
            Ok(datetime!(2023-11-14 22:13:20 UTC))
        );
    }

    #[test]
    fn a_namespace_round_trips_through_its_stored_form() {
        let at = datetime!(2026-11-25 17:00 UTC);
        let stored = Stored {
            map: json!({ "a": 1, "b": [true] }).as_object().unwrap().clone(),
            deadline: Deadline {
                stamp: Some(at),
                hops: Some(2),
            },
            lifetimes: BTreeMap::from([
                ("a".to_owned(), KeyDeadline::Until(at)),
                ("b".to_owned(), KeyDeadline::Hops(1)),
            ]),
        };
        let value = stored.clone().encode().unwrap();
        assert_eq!(
            value,
            json!({
                "a": 1, "b": [true],
                STAMP_KEY: encode_stamp(at), HOPS_KEY: 2,
                LIFETIMES_KEY: { "a": { "until": encode_stamp(at) }, "b": { "hops": 1 } },
            })
        );
        assert_eq!(Stored::decode(value), Ok(stored));
    }

    #[test]
    fn an_empty_namespace_is_not_stored_and_lifetimes_of_absent_keys_are_dropped() {
        assert_eq!(Stored::default().encode(), None);
        let stored = Stored {
            map: json!({ "a": 1 }).as_object().unwrap().clone(),
            lifetimes: BTreeMap::from([("gone".to_owned(), KeyDeadline::Hops(1))]),
            ..Stored::default()
        };
        assert_eq!(stored.encode(), Some(json!({ "a": 1 })));
        let read = Stored::decode(json!({ "a": 1, LIFETIMES_KEY: { "gone": { "hops": 1 } } }));
        assert_eq!(read.map(|stored| stored.lifetimes.len()), Ok(0));
    }

    #[test]
    fn unreadable_bookkeeping_says_why() {
        for (bad, why) in [
            (json!([1]), "the namespace is not a JSON object"),
            (
                json!({ STAMP_KEY: "soon" }),
                "the expiry stamp is not a number",
            ),
            (
                json!({ HOPS_KEY: -1 }),
                "the request count is not a whole number",
            ),
            (
                json!({ LIFETIMES_KEY: [] }),
                "the keys' lifetimes are not a JSON object",
            ),
        ] {
            assert_eq!(Stored::decode(bad), Err(why));
        }
    }
}
