//! A record as the crate's Redis and SQL stores keep it, and as tower-sessions' own store crates
//! do: the whole `Record` in MessagePack. Also the token a load hands to the save: the bytes it
//! read, in hex.

use std::{collections::HashMap, fmt};

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
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
            while let Some(key) = map.next_key()? {
                data.insert(key, map.next_value_seed(StoredValue)?);
            }
            Ok(data)
        }
    }

    deserializer.deserialize_map(Room)
}

/// One value of a stored record: the `Value` that `serde_json::Value`'s own decoding makes of
/// it, with a large object built at once instead of one key at a time.
///
/// `Value`'s decoding inserts each key of an object into its map, and each insert searches the
/// map from its root; a namespace of 240 keys costs some 14 key comparisons a key that way. Here
/// an object of more than [`INSERTED_UP_TO`] keys gathers its entries first and builds its map
/// from them (`Map::from_iter`): a stored object's keys come sorted (they were written from a
/// sorted map), and a sorted run is checked and built in one pass. Keys in another order are
/// sorted first; of equal keys the last one wins, as with inserts. Everything else is decoded
/// exactly as `Value` does it: a float that is no JSON number (NaN, an infinity) is `null`, and a
/// MessagePack byte string, which no JSON value is, makes the record unreadable. (One key is read
/// differently: with serde_json's `raw_value` feature, which another crate of the app may turn on,
/// `Value` reads an object whose first key is serde_json's private raw-value token as JSON text;
/// here that key is a key like any other, whatever the features.)
struct StoredValue;

/// The most keys an object gets inserted one at a time: below this, gathering them first costs
/// more than the searches it saves.
const INSERTED_UP_TO: usize = 8;

/// The most entries the length a nested array or object claims makes the decoder reserve room
/// for up front (each level of a deep record reserves its own): beyond it they grow as they come.
const MOST_RESERVED_NESTED: usize = 128;

impl<'de> DeserializeSeed<'de> for StoredValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StoredValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_i128<E: serde::de::Error>(self, value: i128) -> Result<Value, E> {
        serde::Deserialize::deserialize(serde::de::value::I128Deserializer::<E>::new(value))
            .map(Value::Number)
    }

    fn visit_u128<E: serde::de::Error>(self, value: u128) -> Result<Value, E> {
        serde::Deserialize::deserialize(serde::de::value::U128Deserializer::<E>::new(value))
            .map(Value::Number)
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0).min(MOST_RESERVED_NESTED);
        let mut values = Vec::with_capacity(claimed);
        while let Some(value) = seq.next_element_seed(StoredValue)? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let claimed = map.size_hint().unwrap_or(0);
        if claimed <= INSERTED_UP_TO {
            let mut object = Map::new();
            while let Some(key) = map.next_key()? {
                object.insert(key, map.next_value_seed(StoredValue)?);
            }
            return Ok(Value::Object(object));
        }
        let mut entries: Vec<(String, Value)> =
            Vec::with_capacity(claimed.min(MOST_RESERVED_NESTED));
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value_seed(StoredValue)?));
        }
        Ok(Value::Object(entries.into_iter().collect()))
    }
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
    use proptest::prelude::*;
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

    /// The bytes of a record whose one key, `x`, holds `value`: MessagePack bytes, as they are
    /// (no `Value` is built from them).
    fn holding(value: &[u8]) -> Vec<u8> {
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
        let mut holding = bytes[..null].to_vec();
        holding.extend(value);
        holding.extend(&bytes[null + 1..]);
        holding
    }

    /// A record whose value nests `depth` arrays, as bytes (no value that deep is built).
    fn nested(depth: usize) -> Vec<u8> {
        let mut value = vec![0x91; depth];
        value.push(0xc0);
        holding(&value)
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

    /// A MessagePack document: what the stores write, and what they never do (objects whose
    /// keys are out of order or repeated, floats of 32 bits, NaN).
    #[derive(Debug, Clone)]
    enum Stored {
        Nil,
        Bool(bool),
        Int(i64),
        UInt(u64),
        F32(f32),
        F64(f64),
        Str(String),
        Array(Vec<Stored>),
        Object(Vec<(String, Stored)>),
    }

    impl serde::Serialize for Stored {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{SerializeMap, SerializeSeq};
            match self {
                Stored::Nil => serializer.serialize_unit(),
                Stored::Bool(value) => serializer.serialize_bool(*value),
                Stored::Int(value) => serializer.serialize_i64(*value),
                Stored::UInt(value) => serializer.serialize_u64(*value),
                Stored::F32(value) => serializer.serialize_f32(*value),
                Stored::F64(value) => serializer.serialize_f64(*value),
                Stored::Str(value) => serializer.serialize_str(value),
                Stored::Array(values) => {
                    let mut seq = serializer.serialize_seq(Some(values.len()))?;
                    for value in values {
                        seq.serialize_element(value)?;
                    }
                    seq.end()
                }
                // In the order given, repeats included.
                Stored::Object(entries) => {
                    let mut map = serializer.serialize_map(Some(entries.len()))?;
                    for (key, value) in entries {
                        map.serialize_entry(key, value)?;
                    }
                    map.end()
                }
            }
        }
    }

    fn stored() -> impl Strategy<Value = Stored> {
        let leaf = prop_oneof![
            Just(Stored::Nil),
            any::<bool>().prop_map(Stored::Bool),
            any::<i64>().prop_map(Stored::Int),
            any::<u64>().prop_map(Stored::UInt),
            any::<f32>().prop_map(Stored::F32),
            any::<f64>().prop_map(Stored::F64),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY)].prop_map(Stored::F64),
            ".{0,12}".prop_map(Stored::Str),
        ];
        leaf.prop_recursive(4, 160, 24, |inner| {
            // Few distinct keys, so that objects repeat some; sorted or not.
            let key = prop_oneof!["[a-e]", "k[0-9]{1,2}", ".{0,6}"];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..24).prop_map(Stored::Array),
                (prop::collection::vec((key, inner), 0..24), any::<bool>()).prop_map(
                    |(mut entries, sorted)| {
                        if sorted {
                            entries.sort_by(|a, b| a.0.cmp(&b.0));
                        }
                        Stored::Object(entries)
                    }
                ),
            ]
        })
    }

    /// `bytes` decoded as a record's value is, and as `serde_json::Value` decodes them.
    fn both_ways(bytes: &[u8]) -> (Option<Value>, Option<Value>) {
        let ours = StoredValue
            .deserialize(&mut rmp_serde::Deserializer::from_read_ref(bytes))
            .ok();
        let theirs = rmp_serde::from_slice::<Value>(bytes).ok();
        (ours, theirs)
    }

    proptest::proptest! {
        #[test]
        fn a_stored_value_decodes_as_serde_json_decodes_it(value in stored()) {
            let bytes = rmp_serde::to_vec(&value).expect("encodes");
            let (ours, theirs) = both_ways(&bytes);
            proptest::prop_assert!(theirs.is_some(), "{value:?}");
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_large_object_in_any_order_decodes_to_the_same_map_the_last_of_equal_keys_winning() {
        let sorted: Vec<(String, Stored)> = (0..300)
            .map(|n| (format!("k{n:03}"), Stored::Int(n)))
            .collect();
        let mut reversed = sorted.clone();
        reversed.reverse();
        let mut repeated = sorted.clone();
        repeated.push(("k007".to_owned(), Stored::Str("last".to_owned())));
        repeated.insert(0, ("k299".to_owned(), Stored::Str("first".to_owned())));
        for entries in [sorted, reversed, repeated] {
            let bytes = rmp_serde::to_vec(&Stored::Object(entries.clone())).expect("encodes");
            let (ours, theirs) = both_ways(&bytes);
            let ours = ours.expect("decodes");
            assert_eq!(Some(&ours), theirs.as_ref());
            let object = ours.as_object().expect("an object");
            assert_eq!(object.len(), 300);
            let last = |key: &str| entries.iter().rev().find(|(k, _)| k == key).cloned();
            let expected = |key: &str| match last(key) {
                Some((_, Stored::Int(n))) => serde_json::json!(n),
                Some((_, Stored::Str(text))) => serde_json::json!(text),
                other => panic!("{other:?}"),
            };
            assert_eq!(object["k007"], expected("k007"));
            assert_eq!(object["k299"], expected("k299"));
        }
    }

    #[test]
    fn a_byte_string_in_a_stored_value_makes_the_record_unreadable() {
        // A one-byte MessagePack `bin`, and a one-byte string.
        assert!(decode("s", &holding(&[0xc4, 0x01, 0x00])).is_none());
        assert!(decode("s", &holding(&[0xa1, 0x00])).is_some());
    }

    #[test]
    fn a_record_that_cannot_be_decoded_reads_as_none() {
        assert!(decode("s", b"\xc1 not messagepack").is_none());
        assert!(decode("s", b"").is_none());
    }
}
