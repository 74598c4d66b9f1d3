//! Budgets: how many bytes a namespace takes serialized as JSON (serde_json's compact form), its
//! user data and its bookkeeping, measured without building the text; and how deep a value nests.
//!
//! Every insert checks its namespace against the budget, so the measure must be cheap. Escapes
//! are the only part of the length that needs every byte of every string: without them, a string
//! is its length plus two quotes. And a float's length needs it formatted, the dearest step of a
//! count. So the first measure of a namespace is a pair of **bounds** (each string between its
//! length and six times its length, plus quotes; each float, a stamp too, between 3 and 24
//! bytes), which walks the values but not the bytes. Only when the bounds cannot settle whether
//! an insert fits (the namespace is close to its budget) is the **exact** length counted, and
//! from then on kept exact by adding and subtracting the entries an insert changes. The
//! bookkeeping (stamp, counts, keys' lifetimes) is small, and counted the same way.

use serde_json::{Map, Number, Value};

use crate::stored::{self, Deadline, KeyDeadline, HOPS_KEY, LIFETIMES_KEY, STAMP_KEY};

/// A namespace's serialized length, between `low` and `high` bytes; `exact` when they are equal
/// because every string was scanned for escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    pub(crate) low: usize,
    pub(crate) high: usize,
    exact: bool,
}

impl Size {
    pub(crate) fn is_exact(self) -> bool {
        self.exact
    }

    fn of_len(len: usize, exact: bool) -> Self {
        Self {
            low: len,
            high: len,
            exact,
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            low: self.low + other.low,
            high: self.high + other.high,
            exact: self.exact,
        }
    }

    fn minus(self, other: Self) -> Self {
        Self {
            low: self.low - other.low,
            high: self.high - other.high,
            exact: self.exact,
        }
    }
}

/// The bounds of `map`'s length: a walk of its values, not of their bytes.
pub(crate) fn bounds(map: &Map<String, Value>) -> Size {
    map_bounds(map)
}

/// The exact length of `map`.
pub(crate) fn exact(map: &Map<String, Value>) -> Size {
    Size::of_len(exact_map_len(map), true)
}

/// `map`'s length as a check against `budget` needs it: its bounds' high end when that is within
/// the budget (a walk of its values, not of their bytes: most checks), else counted exactly.
pub(crate) fn len_against(map: &Map<String, Value>, budget: usize) -> usize {
    match bounds(map) {
        bounds if bounds.high <= budget => bounds.high,
        _ => exact(map).low,
    }
}

/// The size of an object holding `entries` (a session's top-level keys and values): bounds, or
/// exact.
pub(crate) fn entries<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    exact: bool,
) -> Size {
    let (size, count) = entries.fold(
        (Size::of_len(2, exact), 0usize),
        |(size, count), (key, value)| (size.plus(entry_size(key, value, exact)), count + 1),
    );
    size.plus(Size::of_len(count.saturating_sub(1), exact))
}

/// `map`'s size (`size`, measured before) once `value` is inserted under `key`: the entry it
/// replaces is subtracted, the new one added, measured as `size` was.
pub(crate) fn with_entry(size: Size, map: &Map<String, Value>, key: &str, value: &Value) -> Size {
    let entry = entry_size(key, value, size.exact);
    match map.get(key) {
        Some(old) => size.minus(entry_size(key, old, size.exact)).plus(entry),
        None if map.is_empty() => size.plus(entry),
        // The comma before it.
        None => size.plus(entry).plus(Size::of_len(1, size.exact)),
    }
}

/// The size of `"key":value`.
fn entry_size(key: &str, value: &Value, exact: bool) -> Size {
    if exact {
        Size::of_len(exact_string_len(key) + 1 + exact_value_len(value), true)
    } else {
        string_bounds(key)
            .plus(Size::of_len(1, false))
            .plus(value_bounds(value))
    }
}

/// The bytes a namespace's bookkeeping adds to its user data when stored (each reserved entry
/// and the comma before it): its `deadline`, and the `lifetimes` of the keys it holds (`holds`).
/// The user data is not empty: an empty namespace is not stored at all.
///
/// Exact when `exact`; else each stamp counts between [`FLOAT_LEN`]'s bounds instead of being
/// formatted (the one costly part of the count, and a write far below its budget needs no more).
pub(crate) fn bookkeeping<'a>(
    deadline: Deadline,
    lifetimes: impl Iterator<Item = (&'a str, KeyDeadline)>,
    holds: impl Fn(&str) -> bool,
    exact: bool,
) -> Size {
    let stamp = |stamp| {
        if exact {
            Size::of_len(stamp_len(stamp), true)
        } else {
            FLOAT_LEN
        }
    };
    // A comma, the key and its colon, then the value.
    let entry =
        |key: &str, value: Size| Size::of_len(1 + exact_string_len(key) + 1, exact).plus(value);
    let mut len = Size::of_len(0, exact);
    if let Some(at) = deadline.stamp {
        len = len.plus(entry(STAMP_KEY, stamp(at)));
    }
    if let Some(hops) = deadline.hops {
        len = len.plus(entry(
            HOPS_KEY,
            Size::of_len(digits(u64::from(hops)), exact),
        ));
    }
    let (mut count, mut entries) = (0, Size::of_len(0, exact));
    for (key, deadline) in lifetimes.filter(|(key, _)| holds(key)) {
        let value = match deadline {
            // {"until":seconds}
            KeyDeadline::Until(until) => Size::of_len(10, exact).plus(stamp(until)),
            // {"hops":count}
            KeyDeadline::Hops(hops) => Size::of_len(9 + digits(u64::from(hops)), exact),
        };
        count += 1;
        entries = entries
            .plus(Size::of_len(exact_string_len(key) + 1, exact))
            .plus(value);
    }
    if count > 0 {
        len = len.plus(entry(
            LIFETIMES_KEY,
            Size::of_len(2 + (count - 1), exact).plus(entries),
        ));
    }
    len
}

/// The bounds of a float's length: serde_json writes a finite float in at most 24 bytes (the
/// shortest form that reads back as the same float, as in `-2.2250738585072014e-308`), and in no
/// fewer than 3 (`0.0`); a stamp that is not a finite float is written `null`.
const FLOAT_LEN: Size = Size {
    low: 3,
    high: 24,
    exact: false,
};

fn stamp_len(stamp: time::OffsetDateTime) -> usize {
    match stored::encode_stamp(stamp) {
        Value::Number(number) => number_len(&number),
        other => exact_value_len(&other),
    }
}

/// Whether `value` nests arrays and objects more than `limit` levels deep (`[1]` is one level).
/// No depth of `value` can exhaust the stack: the walk recurses at most `limit` levels, and for a
/// limit past [`RECURSION`] it keeps its own stack.
pub(crate) fn is_deeper_than(value: &Value, limit: usize) -> bool {
    if limit <= RECURSION {
        deeper(value, limit)
    } else {
        deeper_without_recursion(value, limit)
    }
}

/// The deepest limit checked by recursion: a few kilobytes of stack.
const RECURSION: usize = 128;

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Array(_) | Value::Object(_))
}

/// Whether `value` nests more than `levels` levels, by recursion at most that deep.
fn deeper(value: &Value, levels: usize) -> bool {
    let Some(below) = levels.checked_sub(1) else {
        return is_container(value);
    };
    let nested = |inner: &Value| is_container(inner) && deeper(inner, below);
    match value {
        Value::Array(items) => items.iter().any(nested),
        Value::Object(map) => map.values().any(nested),
        _ => false,
    }
}

fn deeper_without_recursion(value: &Value, limit: usize) -> bool {
    if !is_container(value) {
        return false;
    }
    // The containers still to look into, with their depth.
    let mut pending: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((value, depth)) = pending.pop() {
        if depth > limit {
            return true;
        }
        match value {
            Value::Array(items) => pending.extend(
                items
                    .iter()
                    .filter(|inner| is_container(inner))
                    .map(|inner| (inner, depth + 1)),
            ),
            Value::Object(map) => pending.extend(
                map.values()
                    .filter(|inner| is_container(inner))
                    .map(|inner| (inner, depth + 1)),
            ),
            _ => {}
        }
    }
    false
}

// The bounds.

fn map_bounds(map: &Map<String, Value>) -> Size {
    let commas = map.len().saturating_sub(1);
    map.iter()
        .fold(Size::of_len(2 + commas, false), |size, (key, value)| {
            size.plus(entry_size(key, value, false))
        })
}

fn value_bounds(value: &Value) -> Size {
    match value {
        Value::String(string) => string_bounds(string),
        Value::Array(items) => {
            let commas = items.len().saturating_sub(1);
            items
                .iter()
                .fold(Size::of_len(2 + commas, false), |size, item| {
                    size.plus(value_bounds(item))
                })
        }
        Value::Object(map) => map_bounds(map),
        // Formatting a float is what its exact length costs.
        Value::Number(number) if number.is_f64() => FLOAT_LEN,
        // Literals and integers: their length, measured exactly.
        other => Size::of_len(exact_value_len(other), false),
    }
}

/// A JSON string: its bytes and quotes, plus up to five bytes of escape for each byte.
fn string_bounds(string: &str) -> Size {
    let len = string.len();
    Size {
        low: 2 + len,
        high: 2 + 6 * len,
        exact: false,
    }
}

// The exact length, in plain `usize`s rather than bounds: the walk a large namespace near its
// budget pays for.

fn exact_map_len(map: &Map<String, Value>) -> usize {
    let braces_and_commas = 2 + map.len().saturating_sub(1);
    map.iter().fold(braces_and_commas, |len, (key, value)| {
        // The key and its colon, then the value.
        len + exact_string_len(key) + 1 + exact_value_len(value)
    })
}

fn exact_value_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(number) => number_len(number),
        Value::String(string) => exact_string_len(string),
        Value::Array(items) => {
            let brackets_and_commas = 2 + items.len().saturating_sub(1);
            items
                .iter()
                .fold(brackets_and_commas, |len, item| len + exact_value_len(item))
        }
        Value::Object(map) => exact_map_len(map),
    }
}

/// A JSON string: quotes, and serde_json's escapes (`\"`, `\\`, the short forms of five control
/// characters, `\u00XX` for the other control characters), which add at most five bytes per byte.
fn exact_string_len(string: &str) -> usize {
    let escapes: usize = string
        .bytes()
        .map(|byte| usize::from(ESCAPE_EXTRA[usize::from(byte)]))
        .sum();
    2 + string.len() + escapes
}

/// The bytes an escape adds to each byte of a string.
const ESCAPE_EXTRA: [u8; 256] = {
    let mut extra = [0; 256];
    let mut byte = 0;
    while byte < 0x20 {
        extra[byte] = match byte {
            0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 1,
            _ => 5,
        };
        byte += 1;
    }
    extra[b'"' as usize] = 1;
    extra[b'\\' as usize] = 1;
    extra
};

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn number_len(number: &Number) -> usize {
    if let Some(n) = number.as_u64() {
        digits(n)
    } else if let Some(n) = number.as_i64() {
        1 + digits(n.unsigned_abs())
    } else {
        // A float: let serde_json format it (a few bytes, on the stack).
        struct Counter(usize);

        impl std::io::Write for Counter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }

            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let mut counter = Counter(0);
        // Writing a number to a counter cannot fail.
        let _ = serde_json::to_writer(&mut counter, number);
        counter.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use time::{macros::datetime, Duration};

    #[test]
    fn bookkeeping_is_what_the_stored_form_adds_to_the_user_data() {
        let at = datetime!(2026-11-25 12:00:00.123_456_789 UTC);
        let user = json!({ "a": 1, "b\"": "x" }).as_object().unwrap().clone();
        let deadlines = [
            Deadline::default(),
            Deadline {
                stamp: Some(at),
                hops: None,
            },
            Deadline {
                stamp: None,
                hops: Some(0),
            },
            Deadline {
                stamp: Some(at + Duration::days(9000)),
                hops: Some(4_000_000_000),
            },
        ];
        let lifetimes = [
            BTreeMap::new(),
            BTreeMap::from([("a".to_owned(), KeyDeadline::Hops(12))]),
            BTreeMap::from([
                ("a".to_owned(), KeyDeadline::Until(at)),
                ("b\"".to_owned(), KeyDeadline::Hops(0)),
                ("absent".to_owned(), KeyDeadline::Hops(1)),
            ]),
        ];
        for deadline in deadlines {
            for lifetimes in &lifetimes {
                let stored = stored::Stored {
                    map: user.clone(),
                    deadline,
                    lifetimes: lifetimes.clone(),
                };
                let written = serde_json::to_string(&stored.encode().unwrap())
                    .unwrap()
                    .len();
                let extra = |exact| {
                    bookkeeping(
                        deadline,
                        lifetimes
                            .iter()
                            .map(|(key, deadline)| (key.as_str(), *deadline)),
                        |key| user.contains_key(key),
                        exact,
                    )
                };
                let counted = extra(true);
                assert!(counted.is_exact() && counted.low == counted.high);
                assert_eq!(
                    exact(&user).low + counted.low,
                    written,
                    "{deadline:?} {lifetimes:?}"
                );
                let bounds = extra(false);
                assert!(
                    bounds.low <= counted.low && counted.low <= bounds.high,
                    "{bounds:?} {counted:?}"
                );
            }
        }
    }

    #[test]
    fn depth_counts_nested_arrays_and_objects() {
        assert!(!is_deeper_than(&json!(1), 0));
        assert!(!is_deeper_than(&json!([1, {"a": 2}]), 2));
        assert!(is_deeper_than(&json!([1, {"a": [2]}]), 2));
        let mut deep = json!(0);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(is_deeper_than(&deep, 64));
        assert!(is_deeper_than(&deep, 99_999));
        assert!(!is_deeper_than(&deep, 100_000));
        for limit in [0, 1, 2, 127, 128, 129] {
            let mut nested = json!(1);
            for _ in 0..limit {
                nested = json!([nested]);
            }
            assert!(
                !is_deeper_than(&nested, limit),
                "{limit} levels fit {limit}"
            );
            assert!(
                is_deeper_than(&json!({ "a": nested }), limit),
                "{limit} + 1 levels"
            );
        }
        // Take it apart without recursion: dropping it whole would recurse as deep.
        while let Value::Array(mut items) = deep {
            deep = items.pop().unwrap_or(Value::Null);
        }
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[\\x00-\\x7f\"\\\\]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn any_map() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-c\"\\\\\\x01]{0,3}", any_value(), 0..6)
            .prop_map(|map| map.into_iter().collect())
    }

    fn written(map: &Map<String, Value>) -> usize {
        serde_json::to_string(map).unwrap().len()
    }

    proptest! {
        #[test]
        fn exact_is_the_length_serde_json_writes(map in any_map()) {
            prop_assert_eq!(exact(&map).low, written(&map));
        }

        #[test]
        fn bounds_hold_the_length(map in any_map()) {
            let size = bounds(&map);
            prop_assert!(size.low <= written(&map) && written(&map) <= size.high);
        }

        #[test]
        fn an_insert_measured_by_its_entries_matches_a_fresh_measure(
            map in any_map(),
            key in "[a-c\"]{0,2}",
            value in any_value(),
        ) {
            let mut after = map.clone();
            after.insert(key.clone(), value.clone());
            let length = written(&after);
            let estimate = with_entry(bounds(&map), &map, &key, &value);
            prop_assert!(estimate.low <= length && length <= estimate.high);
            let counted = with_entry(exact(&map), &map, &key, &value);
            prop_assert!(counted.is_exact());
            prop_assert_eq!((counted.low, counted.high), (length, length));
        }
    }

    #[test]
    fn exact_counts_every_escape() {
        let map: Map<String, Value> = serde_json::from_value(json!({
            "\u{0}\u{1f}\u{8}\t\n\u{c}\r\"\\/\u{7f}é\u{2028}": [1, -2, 3.5, 1e300, null, true, false],
            "": { "u": u64::MAX, "i": i64::MIN },
        }))
        .unwrap();
        assert_eq!(exact(&map).low, written(&map));
    }
}
