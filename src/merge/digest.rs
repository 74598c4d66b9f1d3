//! The digest of a stored value: how a save tells the keys its request changed from the ones it
//! only loaded, without keeping a copy of what it loaded.
//!
//! A 64-bit hash over the value's structure, in the manner of FNV-1a but eight bytes at a step
//! (a long string costs an eighth of the multiplications), stable across processes (the digests
//! are stored; a release that changes the function says so: the records stored before it then
//! count every key as changed, once, at their next merge). Objects are hashed without regard to
//! their keys' order, so a map that keeps insertion order (serde_json's `preserve_order`)
//! digests as a sorted one does. Two
//! different values may share a digest; then a change counts as none, and the latest stored value
//! of that key stands: one write of one key lost, once in some 2^64 changes.

use serde_json::Value;

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Mixes a whole word in: an odd multiplier and a shift, each a bijection, so that two inputs
/// of one length that differ in one word always differ after it.
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut le = [0; 8];
        le.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(le)).wrapping_mul(MIX);
        hash ^= hash >> 29;
    }
    for byte in words.remainder() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// The digest of `value`.
pub(super) fn of(value: &Value) -> u64 {
    match value {
        Value::Null => fnv(OFFSET, b"n"),
        Value::Bool(true) => fnv(OFFSET, b"t"),
        Value::Bool(false) => fnv(OFFSET, b"f"),
        Value::Number(number) => {
            if let Some(n) = number.as_u64() {
                fnv(fnv(OFFSET, b"u"), &n.to_le_bytes())
            } else if let Some(n) = number.as_i64() {
                fnv(fnv(OFFSET, b"i"), &n.to_le_bytes())
            } else {
                let float = number.as_f64().unwrap_or_default();
                fnv(fnv(OFFSET, b"d"), &float.to_bits().to_le_bytes())
            }
        }
        Value::String(string) => {
            let hash = fnv(fnv(OFFSET, b"s"), &(string.len() as u64).to_le_bytes());
            fnv(hash, string.as_bytes())
        }
        Value::Array(items) => {
            let hash = fnv(fnv(OFFSET, b"a"), &(items.len() as u64).to_le_bytes());
            items
                .iter()
                .fold(hash, |hash, item| fnv(hash, &of(item).to_le_bytes()))
        }
        Value::Object(map) => of_entries(map.iter().map(|(key, value)| (key.as_str(), of(value)))),
    }
}

/// The digest of an object whose entries are `entries`: each key with the digest of its value.
/// What [`of`] gives for the object itself, and, over a record's data, one number that changes
/// when any key is added, dropped or given another value (but for a collision, as above).
pub(super) fn of_entries<'a>(entries: impl Iterator<Item = (&'a str, u64)>) -> u64 {
    // Each entry on its own, then summed: the same whatever the order.
    let (count, sum) = entries.fold((0u64, 0u64), |(count, sum), (key, digest)| {
        let entry = fnv(fnv(OFFSET, b"k"), &(key.len() as u64).to_le_bytes());
        let entry = fnv(fnv(entry, key.as_bytes()), &digest.to_le_bytes());
        (count + 1, sum.wrapping_add(entry))
    });
    let hash = fnv(fnv(OFFSET, b"o"), &count.to_le_bytes());
    fnv(hash, &sum.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_share_a_digest_and_small_changes_do_not() {
        let value = json!({ "items": { "apple": 2, "pear": 1 }, "note": "x", "n": -1, "f": 1.5 });
        assert_eq!(of(&value), of(&value.clone()));
        for changed in [
            json!({ "items": { "apple": 3, "pear": 1 }, "note": "x", "n": -1, "f": 1.5 }),
            json!({ "items": { "apple": 2 }, "note": "x", "n": -1, "f": 1.5 }),
            json!({ "items": { "apple": 2, "pear": 1 }, "note": "y", "n": -1, "f": 1.5 }),
            json!({ "items": { "apple": 2, "pear": 1 }, "note": "x", "n": 1, "f": 1.5 }),
            json!({ "items": { "apple": 2, "pear": 1 }, "note": "x", "n": -1, "f": 1.25 }),
            json!(["items"]),
            json!(null),
        ] {
            assert_ne!(of(&value), of(&changed), "{changed}");
        }
    }

    #[test]
    fn a_change_anywhere_in_a_long_string_changes_its_digest() {
        let long: String = (0..100).map(|i| char::from(b'a' + i % 26)).collect();
        let digest = of(&json!(long));
        for at in 0..long.len() {
            let mut changed = long.clone().into_bytes();
            changed[at] = b'-';
            let changed = String::from_utf8(changed).unwrap();
            assert_ne!(of(&json!(changed)), digest, "a change at byte {at}");
        }
        assert_ne!(of(&json!(&long[..99])), digest);
    }

    #[test]
    fn types_and_boundaries_are_told_apart() {
        assert_ne!(of(&json!(1)), of(&json!(1.0)));
        assert_ne!(of(&json!(1)), of(&json!("1")));
        assert_ne!(of(&json!(["ab", "c"])), of(&json!(["a", "bc"])));
        assert_ne!(of(&json!({ "a": "b" })), of(&json!({ "b": "a" })));
        assert_ne!(of(&json!([])), of(&json!({})));
    }

    #[test]
    fn digests_are_those_earlier_releases_stored() {
        // Stored digests are compared with the digests of values at later saves, by other
        // processes and later releases: a change to the function must be a decision (see the
        // module doc), never a side effect of a rewrite.
        let long: String = (0..100).map(|i| char::from(b'a' + i % 26)).collect();
        let cart = json!({ "items": { "apple": 2, "pear": 1 }, "note": "x", "n": -1, "f": 1.5 });
        for (value, digest) in [
            (json!(null), 0xaf63_e34c_8601_f871),
            (json!(true), 0xaf63_e94c_8602_02a3),
            (json!(false), 0xaf63_db4c_8601_ead9),
            (json!(7), 0x5549_4bbf_6d4d_e5ad),
            (json!(-7), 0x2772_2eda_5a1e_f1fa),
            (json!(1.5), 0x921e_2fad_4e70_cd21),
            (json!(""), 0xd244_7ad9_8340_b732),
            (json!("cart"), 0xd485_88b4_bbfe_98d4),
            (json!(long), 0xe025_1f14_95d4_0f4c),
            (json!([1, "a", null]), 0x853a_c89a_45b6_f32c),
            (json!({}), 0x04a0_5615_354f_89da),
            (cart, 0xd991_fa59_cb1a_219d),
        ] {
            assert_eq!(of(&value), digest, "{value}");
        }
    }

    #[test]
    fn the_digest_of_entries_is_that_of_the_object_they_make() {
        let object = json!({ "items": { "apple": 2 }, "note": "x", "n": -1 });
        let Value::Object(map) = &object else {
            unreachable!()
        };
        let digests: Vec<(&str, u64)> = map
            .iter()
            .map(|(key, value)| (key.as_str(), of(value)))
            .collect();
        assert_eq!(of_entries(digests.iter().copied()), of(&object));
        assert_eq!(of_entries(digests.iter().rev().copied()), of(&object));
        assert_ne!(of_entries(digests[1..].iter().copied()), of(&object));
        assert_eq!(of_entries(std::iter::empty()), of(&json!({})));
    }

    #[test]
    fn an_objects_digest_does_not_depend_on_the_order_of_its_keys() {
        let mut forwards = serde_json::Map::new();
        let mut backwards = serde_json::Map::new();
        for i in 0..20 {
            forwards.insert(format!("k{i}"), json!(i));
            backwards.insert(format!("k{}", 19 - i), json!(19 - i));
        }
        assert_eq!(of(&Value::Object(forwards)), of(&Value::Object(backwards)));
    }
}
