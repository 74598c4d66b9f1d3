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
        Value::Object(map) => {
            // Each entry on its own, then summed: the same whatever the order.
            let entries = map.iter().fold(0u64, |sum, (key, value)| {
                let entry = fnv(fnv(OFFSET, b"k"), &(key.len() as u64).to_le_bytes());
                let entry = fnv(fnv(entry, key.as_bytes()), &of(value).to_le_bytes());
                sum.wrapping_add(entry)
            });
            let hash = fnv(fnv(OFFSET, b"o"), &(map.len() as u64).to_le_bytes());
            fnv(hash, &entries.to_le_bytes())
        }
    }
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
