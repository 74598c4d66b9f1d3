//! A record's versions: the digest of every top-level key's value as it was stored, which a
//! merging store keeps in the record under a key of its own, so that a save can tell the keys its
//! request changed from those it only loaded.
//!
//! # As stored
//!
//! One string: `1;`, then, for each key in ascending order, its digest in 16 lower-case hex
//! digits, the key's length in bytes in decimal, `:`, and the key. For example
//! `1;00000000000000ff4:cart` for a record holding `cart` alone. A load copies the whole session,
//! versions included, and a string is copied in one allocation where a map of the keys takes two
//! or three per key (a session of eleven namespaces spent about 5,300 instructions copying them
//! at every load, and 3,500 dropping them).
//!
//! Earlier builds stored `{"digests": {key: digest, ...}}`: still read, and written anew in the
//! string form at the record's next write. (An earlier build reads the string as no versions, and
//! logs it: its next merge of that record counts every key as changed. Deployments that run two
//! builds side by side for a while should expect that once per record.)
//!
//! Versions are untrusted input like the rest of a stored record: any that cannot be read (not one
//! of the two forms, a digest that is not 16 lower-case hex digits, a length that runs past the
//! end or splits a character, keys out of order or repeated) count as none, and are logged.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{digest, journal::push_decimal};

/// The beginning of the stored form: a form that changes changes it.
const FORMAT: &str = "1;";

/// The length of a digest in the stored form: 16 hex digits.
const DIGEST_LEN: usize = 16;

/// The most changed keys whose digests a save rewrites in place (more are written anew).
const IN_PLACE: usize = 4;

/// The most digits a key's length has in the stored form (a length is below 2^32).
const MOST_LEN_DIGITS: usize = 10;

/// A record's versions, as read. (`Deserialize` reads the form earlier builds stored:
/// `{"digests": {key: digest, ...}}`.)
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(super) struct Versions {
    /// The digest of each key's value; `None` when they are not known (a record stored without
    /// them, or cleared, or unreadable): then every key counts as changed by the request that
    /// saves.
    digests: Option<BTreeMap<String, u64>>,
}

impl Versions {
    /// Reads versions as stored, in either form; unreadable ones count as none, and are logged.
    pub(super) fn read(value: &Value) -> Self {
        let digests = match value {
            Value::String(text) => entries(text).map(|entries| {
                entries
                    .into_iter()
                    .map(|entry| (entry.key.to_owned(), entry.digest))
                    .collect()
            }),
            Value::Object(_) => match Self::deserialize(value) {
                Ok(earlier) => return earlier,
                Err(_) => None,
            },
            _ => None,
        };
        if digests.is_none() {
            tracing::warn!("unreadable versions in a session record: ignoring them");
        }
        Self { digests }
    }

    /// The versions of `data` as stored: the digest of every value.
    #[cfg(test)]
    pub(super) fn of<'a>(data: impl Iterator<Item = (&'a String, &'a Value)>) -> Self {
        let digests = sorted_digests(data).into_iter();
        Self {
            digests: Some(digests.map(|(key, digest)| (key.clone(), digest)).collect()),
        }
    }

    /// These versions as stored (test only: the crate writes versions from a record's data,
    /// [`value_of_data`](Self::value_of_data)).
    #[cfg(test)]
    pub(super) fn to_value(&self) -> Value {
        match &self.digests {
            Some(digests) => Self::value_of(digests),
            None => Value::Null,
        }
    }

    /// Whether `key` was absent from the record these versions were loaded with. Without
    /// digests, no key counts as absent.
    pub(super) fn lacked(&self, key: &str) -> bool {
        self.digests
            .as_ref()
            .is_some_and(|digests| !digests.contains_key(key))
    }

    /// Whether the request changed `key` since it loaded these versions: `own` (its value now,
    /// or `None` if absent) differs from what was stored. Without digests, every key counts as
    /// changed.
    pub(super) fn changed(&self, key: &str, own: Option<&Value>) -> bool {
        self.differs(key, own.map(digest::of))
    }

    /// [`changed`](Self::changed), for a key whose value now digests to `digest` (`None` when
    /// the request holds no value under it).
    pub(super) fn differs(&self, key: &str, digest: Option<u64>) -> bool {
        match &self.digests {
            Some(digests) => digests.get(key).copied() != digest,
            None => true,
        }
    }

    /// These versions without the digests of the keys `dropped` names, as stored; `None`
    /// without digests.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(super) fn value_without(&self, dropped: impl Fn(&str) -> bool) -> Option<Value> {
        let digests = self.digests.as_ref()?;
        let dropped = &dropped;
        let mut text = String::new();
        write_sorted(
            &mut text,
            digests
                .iter()
                .filter(|(key, _)| !dropped(key))
                .map(|(key, digest)| (key.as_str(), *digest)),
        );
        Some(Value::String(text))
    }

    /// The versions whose digests are `digests`, as stored (test only, for digests of the test's
    /// choosing).
    #[cfg(test)]
    pub(super) fn value_of(digests: &BTreeMap<String, u64>) -> Value {
        let mut text = String::new();
        write(&mut text, digests);
        Value::String(text)
    }

    /// Updates stored versions in place for a save that keeps most of them: drops the keys that
    /// `keep` refuses (when given), and sets the digests of the `changed` keys. `false` when
    /// `value` is not versions as this release stores them, or when the result does not hold
    /// exactly `held` keys (it was not the versions of the data it was stored with): then the
    /// caller makes them again from every value.
    pub(super) fn patch_value(
        value: &mut Value,
        keep: Option<&dyn Fn(&str) -> bool>,
        changed: &[(&String, u64)],
        held: usize,
    ) -> bool {
        let Value::String(text) = value else {
            return false;
        };
        if keep.is_none() && changed.len() <= IN_PLACE {
            // The usual write changes the value of a key the versions hold: its digits, in place.
            let (mut count, mut found) = (0, [(0, 0); IN_PLACE]);
            let mut found_len = 0;
            let readable = scan(text, |entry| {
                count += 1;
                if let Some((_, digest)) = changed.iter().find(|(key, _)| *key == entry.key) {
                    found[found_len] = (entry.at, *digest);
                    found_len += 1;
                }
            });
            if !readable {
                return false;
            }
            // The stored keys are distinct, and so are the changed ones.
            if found_len == changed.len() {
                let mut bytes = std::mem::take(text).into_bytes();
                for (at, digest) in &found[..found_len] {
                    bytes[*at..*at + DIGEST_LEN].copy_from_slice(&hex_digits(*digest));
                }
                // ASCII digits over ASCII digits: still UTF-8, never the empty fallback.
                *text = String::from_utf8(bytes).unwrap_or_default();
                return count == held;
            }
        }
        let Some(entries) = entries(text) else {
            return false;
        };
        // A key added or dropped: written anew.
        let mut digests: BTreeMap<String, u64> = entries
            .into_iter()
            .filter(|entry| keep.is_none_or(|keep| keep(entry.key)))
            .map(|entry| (entry.key.to_owned(), entry.digest))
            .collect();
        for (key, digest) in changed {
            digests.insert((*key).clone(), *digest);
        }
        write(text, &digests);
        digests.len() == held
    }

    /// The versions of `data` (a record's data), as stored.
    pub(super) fn value_of_data<'a>(data: impl Iterator<Item = (&'a String, &'a Value)>) -> Value {
        Value::String(Self::text_of(&sorted_digests(data)))
    }

    /// The versions whose digests are `digests`, as stored: `digests` sorted by key, keys
    /// distinct (a record's data, [`sorted_digests`]).
    pub(super) fn text_of(digests: &[(&String, u64)]) -> String {
        debug_assert!(digests.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let mut text = String::new();
        write_sorted(
            &mut text,
            digests.iter().map(|(key, digest)| (key.as_str(), *digest)),
        );
        text
    }
}

/// The digest of every key of `data` (a record's data), sorted by key: what its versions are
/// written from, with no key copied.
pub(super) fn sorted_digests<'a>(
    data: impl Iterator<Item = (&'a String, &'a Value)>,
) -> Vec<(&'a String, u64)> {
    let mut digests: Vec<(&String, u64)> =
        data.map(|(key, value)| (key, digest::of(value))).collect();
    digests.sort_unstable_by_key(|(key, _)| *key);
    digests
}

/// Writes `digests` in the stored form into `text`, replacing what it held.
fn write(text: &mut String, digests: &BTreeMap<String, u64>) {
    write_sorted(
        text,
        digests.iter().map(|(key, digest)| (key.as_str(), *digest)),
    );
}

/// Writes `digests`, keys ascending and distinct, in the stored form into `text`, replacing what
/// it held.
fn write_sorted<'a>(text: &mut String, digests: impl Iterator<Item = (&'a str, u64)> + Clone) {
    text.clear();
    let len = digests
        .clone()
        .map(|(key, _)| DIGEST_LEN + 4 + key.len())
        .sum::<usize>();
    text.reserve(FORMAT.len() + len);
    text.push_str(FORMAT);
    for (key, digest) in digests {
        push_hex(text, digest);
        push_decimal(text, key.len() as u64);
        text.push(':');
        text.push_str(key);
    }
}

/// `digest` in 16 lower-case hex digits.
fn hex_digits(digest: u64) -> [u8; DIGEST_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0; DIGEST_LEN];
    for (place, digit) in digits.iter_mut().rev().enumerate() {
        *digit = DIGITS[(digest >> (place * 4)) as usize & 0x0f];
    }
    digits
}

/// Appends `digest` in 16 lower-case hex digits.
fn push_hex(text: &mut String, digest: u64) {
    // Hex digits are ASCII: never the empty fallback.
    text.push_str(std::str::from_utf8(&hex_digits(digest)).unwrap_or_default());
}

/// One key of the stored form.
struct Entry<'a> {
    /// Where its digest's digits begin.
    at: usize,
    digest: u64,
    key: &'a str,
}

/// The keys of `text`, versions in the stored form, in their (ascending) order; `None` if it is
/// not versions in that form.
fn entries(text: &str) -> Option<Vec<Entry<'_>>> {
    let mut entries = Vec::new();
    scan(text, |entry| entries.push(entry)).then_some(entries)
}

/// Gives `each` the keys of `text`, versions in the stored form, in their (ascending) order;
/// `false` if it is not versions in that form (`each` may have had some keys by then).
fn scan<'a>(text: &'a str, mut each: impl FnMut(Entry<'a>)) -> bool {
    if text.get(..FORMAT.len()) != Some(FORMAT) {
        return false;
    }
    let (mut at, mut last) = (FORMAT.len(), None);
    while at < text.len() {
        let Some((entry, end)) = entry_at(text, at) else {
            return false;
        };
        if last.is_some_and(|last| last >= entry.key) {
            return false;
        }
        last = Some(entry.key);
        each(entry);
        at = end;
    }
    true
}

/// The key whose digest begins at `at` in `text`, and where the next begins; `None` if none
/// does.
fn entry_at(text: &str, at: usize) -> Option<(Entry<'_>, usize)> {
    let digest = hex(text.get(at..at.checked_add(DIGEST_LEN)?)?)?;
    let rest = &text.as_bytes()[at + DIGEST_LEN..];
    let colon = rest
        .iter()
        .take(MOST_LEN_DIGITS + 1)
        .position(|byte| *byte == b':')?;
    let digits = &rest[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most ten ASCII digits: a number below 10^10, which a `u64` holds.
    let len = digits
        .iter()
        .fold(0u64, |len, digit| len * 10 + u64::from(digit - b'0'));
    let key_at = at + DIGEST_LEN + colon + 1;
    let end = key_at.checked_add(usize::try_from(len).ok()?)?;
    let key = text.get(key_at..end)?;
    Some((Entry { at, digest, key }, end))
}

/// The number 16 lower-case hex digits spell; `None` if `digits` are not that.
fn hex(digits: &str) -> Option<u64> {
    digits.bytes().try_fold(0u64, |number, digit| {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(number << 4 | u64::from(value))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn digests(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs
            .iter()
            .map(|(key, digest)| ((*key).to_owned(), *digest))
            .collect()
    }

    #[test]
    fn versions_are_stored_as_one_string_and_read_back() {
        assert_eq!(
            Versions::value_of(&digests(&[("cart", 255)])),
            json!("1;00000000000000ff4:cart")
        );
        for pairs in [
            &[][..],
            &[("cart", 0), ("user", u64::MAX)],
            // Keys that look like the form itself, empty, long, and not ASCII.
            &[("", 1), ("1:x", 2), ("16:ffffffffffffffff", 3), ("é:\n", 4)],
            &[(&"k".repeat(10_000), 5), ("z", 6)],
        ] {
            let digests = digests(pairs);
            let read = Versions::read(&Versions::value_of(&digests));
            assert_eq!(read.digests, Some(digests));
        }
    }

    #[test]
    fn the_form_of_earlier_releases_is_still_read() {
        let earlier = json!({ "digests": { "cart": 1, "user": 2 } });
        assert_eq!(
            Versions::read(&earlier).digests,
            Some(digests(&[("cart", 1), ("user", 2)]))
        );
    }

    #[test]
    fn unreadable_versions_count_as_none() {
        for value in [
            json!({ "digests": "x" }),
            json!([]),
            json!(7),
            json!(""),
            json!("2;"),
            json!("1;0000000000000001"),
            json!("1;00000000000000014:car"),
            json!("1;00000000000000014cart"),
            json!("1;0000000000000001:"),
            json!("1;0000000000000001x:"),
            json!("1;0000000000000001+4:cart"),
            json!("1;000000000000000F4:cart"),
            json!("1;+0000000000000014:cart"),
            json!("1;000000000000000199999999999:cart"),
            json!("1;000000000000000118446744073709551615:cart"),
            // A length that splits a character.
            json!("1;00000000000000011:é"),
            // Keys repeated, or out of order.
            json!("1;00000000000000014:cart00000000000000024:cart"),
            json!("1;00000000000000014:user00000000000000024:cart"),
        ] {
            let none = Versions::read(&value);
            assert_eq!(none, Versions::default(), "{value}");
            assert!(
                none.changed("cart", None),
                "without digests every key counts as changed"
            );
        }
    }

    #[test]
    fn a_key_counts_as_changed_when_its_value_differs_from_what_was_stored() {
        let (cart, user) = (json!({ "a": 1 }), json!("ada"));
        let stored = Versions::of(
            [("cart".to_owned(), cart.clone()), ("user".to_owned(), user)]
                .iter()
                .map(|(k, v)| (k, v)),
        );
        assert!(!stored.changed("cart", Some(&cart)));
        assert!(stored.changed("cart", Some(&json!({ "a": 2 }))));
        assert!(stored.changed("user", None), "removed");
        assert!(stored.changed("new", Some(&json!(1))), "added");
        assert!(!stored.changed("never", None));
        assert!(stored.lacked("new") && !stored.lacked("cart"));
    }

    #[test]
    fn patched_versions_are_those_written_anew() {
        let (cart, user, wish) = ("cart".to_owned(), "user".to_owned(), "wish".to_owned());
        let stored = digests(&[("cart", 1), ("user", 2)]);
        let keep_cart = |key: &str| key == "cart";
        /// Which keys to keep, the digests that changed, the digests to end with.
        type Case<'a> = (
            Option<&'a dyn Fn(&str) -> bool>,
            Vec<(&'a String, u64)>,
            &'a [(&'a str, u64)],
        );
        let cases: [Case<'_>; 5] = [
            (None, vec![], &[("cart", 1), ("user", 2)]),
            (None, vec![(&cart, 7)], &[("cart", 7), ("user", 2)]),
            (
                None,
                vec![(&user, u64::MAX), (&cart, 0)],
                &[("cart", 0), ("user", u64::MAX)],
            ),
            (
                None,
                vec![(&wish, 3)],
                &[("cart", 1), ("user", 2), ("wish", 3)],
            ),
            (
                Some(&keep_cart),
                vec![(&wish, 3)],
                &[("cart", 1), ("wish", 3)],
            ),
        ];
        for (keep, changed, expected) in cases {
            let mut value = Versions::value_of(&stored);
            let expected = digests(expected);
            assert!(Versions::patch_value(
                &mut value,
                keep,
                &changed,
                expected.len()
            ));
            assert_eq!(value, Versions::value_of(&expected), "{changed:?}");
            // One key more or fewer than the data holds: made again by the caller.
            let mut value = Versions::value_of(&stored);
            assert!(!Versions::patch_value(
                &mut value,
                keep,
                &changed,
                expected.len() + 1
            ));
        }
        // More changed keys than are rewritten in place: the same versions.
        let keys: Vec<String> = (0..=IN_PLACE).map(|n| format!("k{n}")).collect();
        let before: BTreeMap<String, u64> = keys.iter().map(|key| (key.clone(), 0)).collect();
        let after: BTreeMap<String, u64> = keys.iter().map(|key| (key.clone(), 9)).collect();
        let changed: Vec<(&String, u64)> = keys.iter().map(|key| (key, 9)).collect();
        let mut value = Versions::value_of(&before);
        assert!(Versions::patch_value(
            &mut value,
            None,
            &changed,
            keys.len()
        ));
        assert_eq!(value, Versions::value_of(&after));
        for mut value in [
            json!({ "digests": { "cart": 1 } }),
            json!("1;x"),
            json!(null),
        ] {
            assert!(!Versions::patch_value(&mut value, None, &[], 1), "{value}");
        }
    }

    #[test]
    fn versions_from_sorted_digests_are_those_of_the_map() {
        let (cart, user, long) = ("cart".to_owned(), "user".to_owned(), "é".repeat(40));
        let sorted = [(&cart, 1), (&user, u64::MAX), (&long, 0xabc)];
        let map = digests(&[("cart", 1), ("user", u64::MAX), (long.as_str(), 0xabc)]);
        assert_eq!(
            Value::String(Versions::text_of(&sorted)),
            Versions::value_of(&map)
        );
        assert_eq!(Versions::text_of(&[]), FORMAT);
    }
}
