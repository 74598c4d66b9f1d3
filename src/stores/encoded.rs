//! A record as the crate's Redis and SQL stores keep it, and as tower-sessions' own store crates
//! do: the whole `Record` in MessagePack. Also the token a load hands to the save: the bytes it
//! read, in hex.

use std::{collections::HashMap, fmt};

use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    session_store,
};

/// How deep the values of a stored record may nest: far deeper than a namespace may be written
/// (`DEFAULT_MAX_DEPTH`, 32, unless the layer sets more), and shallow enough that decoding a
/// record stays far from the end of a thread's stack. A deeper record reads as no session.
pub(super) const MAX_DECODE_DEPTH: usize = 128;

/// The record's bytes: a `Record`, or a record to store ([`ToStore`](super::ToStore)), which
/// serializes as one. `expected` is about how long they will be (the loaded version's length,
/// for a save): the buffer starts that large, as a buffer that grows from nothing copies a large
/// record several times over.
pub(super) fn encode(
    record: &impl serde::Serialize,
    expected: usize,
) -> session_store::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(room_for(expected));
    rmp_serde::encode::write(&mut bytes, record)
        .map_err(|err| session_store::Error::Encode(err.to_string()))?;
    Ok(bytes)
}

/// The buffer [`encode`] starts with for a record of about `expected` bytes: an eighth more, for
/// what the request added, and never less than [`SMALLEST_BUFFER`].
fn room_for(expected: usize) -> usize {
    expected.saturating_add(expected / 8).max(SMALLEST_BUFFER)
}

/// The buffer [`encode`] starts with at the least: a small session's record (a cart, its
/// bookkeeping and the versions) fits.
const SMALLEST_BUFFER: usize = 256;

/// The record stored as `bytes` for `session`; `None`, logged, if it cannot be decoded (nested
/// too deep included): it reads as no session, as tower-sessions' stores read an unreadable
/// record.
pub(super) fn decode(session: impl fmt::Display, bytes: &[u8]) -> Option<Record> {
    let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
    decoder.set_max_depth(MAX_DECODE_DEPTH);
    match <Decoded as serde::Deserialize>::deserialize(&mut decoder) {
        Ok(Decoded {
            id,
            data,
            expiry_date,
        }) => Some(Record {
            id,
            data,
            expiry_date,
        }),
        Err(err) => {
            tracing::warn!(
                session = %session,
                error = %err,
                "the stored session record cannot be decoded: read as no session"
            );
            None
        }
    }
}

/// A `Record` as decoded, field for field, with room in its map for the keys a request adds to
/// it: the load's mark (see `mark_loaded`) and a namespace its flush creates. A map that grows
/// rehashes every key.
#[derive(serde::Deserialize)]
#[serde(rename = "Record")]
struct Decoded {
    id: Id,
    #[serde(deserialize_with = "with_room")]
    data: HashMap<String, Value>,
    expiry_date: OffsetDateTime,
}

/// The most entries a stored map's length makes the decoder reserve room for up front: a length
/// is what the bytes claim, not what they hold.
const MOST_RESERVED: usize = 1024;

fn with_room<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<HashMap<String, Value>, D::Error> {
    struct Room;

    impl<'de> serde::de::Visitor<'de> for Room {
        type Value = HashMap<String, Value>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of session data")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let claimed = map.size_hint().unwrap_or(0).min(MOST_RESERVED);
            let mut data = HashMap::with_capacity(claimed + 2);
            while let Some((key, value)) = map.next_entry()? {
                data.insert(key, value);
            }
            Ok(data)
        }
    }

    deserializer.deserialize_map(Room)
}

/// The token naming the stored `bytes`: they, in lower-case hex.
///
/// Written as arithmetic on each byte, without a lookup table or a branch, so that the compiler
/// can turn the loop into vector instructions: a token is as long as the record twice over, and a
/// load of a large session makes one.
pub(super) fn token(bytes: &[u8]) -> String {
    /// The lower-case hex digit of `nibble` (below 16).
    fn digit(nibble: u8) -> u8 {
        nibble + b'0' + u8::from(nibble > 9) * (b'a' - b'0' - 10)
    }
    let pairs: Vec<[u8; 2]> = bytes
        .iter()
        .map(|byte| [digit(byte >> 4), digit(byte & 0x0f)])
        .collect();
    // Hex digits are ASCII: never the empty fallback.
    String::from_utf8(pairs.into_flattened()).unwrap_or_default()
}

/// The bytes `token` names; `None` if it is not an even run of lower-case hex digits (no token
/// [`token`] made). Through a table of digit values: faster here than arithmetic (which, unlike
/// [`token`]'s, the compiler does not turn into vector instructions).
pub(super) fn bytes_of(token: &str) -> Option<Vec<u8>> {
    /// Each character's value as a hex digit, or `NOT_HEX`.
    const NOT_HEX: u8 = 0xff;
    const VALUES: [u8; 256] = {
        let mut values = [NOT_HEX; 256];
        let mut digit = 0;
        while digit < 10 {
            values[b'0' as usize + digit] = digit as u8;
            digit += 1;
        }
        let mut letter = 0;
        while letter < 6 {
            values[b'a' as usize + letter] = 10 + letter as u8;
            letter += 1;
        }
        values
    };
    if token.len() % 2 != 0 {
        return None;
    }
    // Every digit's value, or'ed: below 16 exactly when none was `NOT_HEX`.
    let mut all = 0;
    let bytes = token
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let (high, low) = (VALUES[usize::from(pair[0])], VALUES[usize::from(pair[1])]);
            all |= high | low;
            high << 4 | low
        })
        .collect();
    (all <= 0x0f).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;
    use tower_sessions::session::Id;

    use super::*;

    #[test]
    fn tokens_are_the_bytes_in_hex_and_back() {
        let bytes: Vec<u8> = (0..=255).collect();
        let token = token(&bytes);
        assert_eq!(&token[..8], "00010203");
        assert_eq!(bytes_of(&token), Some(bytes));
        assert_eq!(bytes_of(""), Some(Vec::new()));
    }

    #[test]
    fn a_token_that_is_not_hex_names_nothing() {
        for bad in [
            "0", "0g", "é0", "abc", "zz", "AB", "/0", "0:", "`0", "0@", "G0", "\0\0",
        ] {
            assert_eq!(bytes_of(bad), None, "{bad}");
        }
        // Every ASCII character, in either place of a pair.
        for char in (0..128u8).map(char::from) {
            let value = char.to_digit(16).filter(|_| !char.is_ascii_uppercase());
            let expected = |shift: u32| value.map(|value| vec![(value << shift) as u8]);
            assert_eq!(bytes_of(&format!("{char}0")), expected(4), "{char:?}0");
            assert_eq!(bytes_of(&format!("0{char}")), expected(0), "0{char:?}");
        }
    }

    /// A record whose value nests `depth` arrays, as bytes (no value that deep is built).
    fn nested(depth: usize) -> Vec<u8> {
        let record = Record {
            id: Id::default(),
            data: [("x".to_owned(), serde_json::Value::Null)]
                .into_iter()
                .collect(),
            expiry_date: OffsetDateTime::UNIX_EPOCH,
        };
        let bytes = encode(&record, 0).expect("encodes");
        let null = bytes
            .windows(3)
            .position(|window| window == [0xa1, b'x', 0xc0])
            .expect("the key x and its null")
            + 2;
        let mut nested = bytes[..null].to_vec();
        nested.extend(std::iter::repeat_n(0x91, depth));
        nested.extend(&bytes[null..]);
        nested
    }

    #[test]
    fn deeply_nested_records_never_exhaust_the_stack() {
        assert!(decode("s", &nested(MAX_DECODE_DEPTH - 4)).is_some());
        assert!(decode("s", &nested(MAX_DECODE_DEPTH)).is_none());
        // Past the decoder's depth limit: no session, no overflow.
        assert!(decode("s", &nested(100_000)).is_none());
    }

    #[test]
    fn a_record_to_store_is_encoded_as_the_record_it_stores() {
        let ours = Record {
            id: Id::default(),
            data: [
                ("cart".to_owned(), serde_json::json!({ "apple": 3 })),
                ("user".to_owned(), serde_json::json!("ada")),
            ]
            .into_iter()
            .collect(),
            expiry_date: OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
        };
        let unmerged = crate::merge::checked_unmerged(&ours).expect("within limits");
        let bytes = encode(&super::super::ToStore::Unmerged(unmerged), 0).expect("encodes");
        let stored = crate::merge::as_stored(&ours);
        assert_eq!(decode("s", &bytes), Some(stored.clone()));
        // Byte for byte, but for the order of the data's keys, which a `HashMap` does not keep.
        assert_eq!(bytes.len(), encode(&stored, 0).expect("encodes").len());
    }

    #[test]
    fn a_decoded_record_is_the_one_encoded_with_room_for_the_keys_of_a_load_and_a_flush() {
        for len in [0, 1, 2, 3, 7, 14, 100] {
            let record = Record {
                id: Id::default(),
                data: (0..len)
                    .map(|n| (format!("key{n}"), serde_json::json!({ "n": n })))
                    .collect(),
                expiry_date: OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
            };
            let decoded = decode("s", &encode(&record, 0).expect("encodes")).expect("decodes");
            assert_eq!(decoded, record);
            assert!(decoded.data.capacity() >= len + 2, "{len}");
        }
    }

    #[test]
    fn a_map_length_the_bytes_do_not_hold_reserves_no_room_for_it() {
        // The data map claims 2^32 - 1 entries and holds one: if the decoder reserved room for
        // the claim, the test would abort on the allocation.
        let bytes = nested(0);
        let map = bytes
            .windows(4)
            .position(|window| window == [0x81, 0xa1, b'x', 0xc0])
            .expect("the data map");
        let mut claimed = bytes[..map].to_vec();
        claimed.extend([0xdf, 0xff, 0xff, 0xff, 0xff]);
        claimed.extend(&bytes[map + 1..]);
        assert!(decode("s", &claimed).is_none());
    }

    #[test]
    fn a_record_that_cannot_be_decoded_reads_as_none() {
        assert!(decode("s", b"\xc1 not messagepack").is_none());
        assert!(decode("s", b"").is_none());
    }
}
