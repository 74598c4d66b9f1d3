//! The Redis store: session records in Redis, read and written as tower-sessions-redis-store
//! reads and writes them, and saved by an atomic compare-and-set in one round trip.
//!
//! # Records
//!
//! Exactly what `tower-sessions-redis-store` 0.16 stores: the key is the session id
//! (`Id::to_string`), the value the whole `Record` in MessagePack (`rmp_serde::to_vec`), and the
//! key expires at the record's expiry date (`SET ... EXAT`, in whole Unix seconds). Either store
//! reads what the other wrote, so an app that switches keeps its visitors logged in.
//!
//! # The compare-and-set
//!
//! - A load is one `GET`. The version read is named by the bytes read themselves: two versions
//!   are the same version exactly when their bytes are equal. Within a request that
//!   `SessionControllerLayer` serves, the process holds those bytes until the response is sent
//!   and the session carries a short token naming them; elsewhere (and for a record under 512
//!   bytes, whose hex costs less than holding it) the token is the bytes in hex.
//! - A save is one command. On a server with a compare-and-set of its own (Valkey 8.1 and later,
//!   Redis 8.4 and later) it is `SET key new IFEQ loaded EXAT t GET`: the server sets the new
//!   record only if the stored value is the bytes the request loaded, and answers the stored
//!   value either way; the save is done when that answer is the loaded bytes. (For a loaded
//!   record of 1 KiB or more, without `GET`, so that the server does not send it back: a save
//!   that lost then reads the latest with a `GET` of its own.) On older servers it
//!   is one `EVALSHA` of a short Lua script (`EVAL` once per server, when the server does not know
//!   the script yet) that does the same: it compares the stored value with the loaded bytes and,
//!   if they are equal, `SET`s the new record with `EXAT`; otherwise it writes nothing. Either
//!   way a save that lost gets the stored value (or nil, when the session is gone), which it
//!   merges into and tries again with, without another `GET`. Both run atomically on the server
//!   that holds the key, so this is also correct in a Redis Cluster.
//! - Which of the two: a store tries `SET ... IFEQ` first; when a server refuses it as a syntax
//!   error (Redis before 8.4, Valkey before 8.1), that save and every later one of the store (and
//!   of its clones) run the script instead. The script costs a Redis 7 server several times a
//!   plain `SET`'s time (see BENCHMARKS.md); `SET ... IFEQ` about a `SET`'s.
//! - A new session is one `SET NX EXAT`; a taken id makes `create` try another.
//!
//! Why compare the whole bytes rather than a digest or a version number: a version number would
//! have to live in the record, which tower-sessions-redis-store does not write (and would carry
//! along into the app's session data); a digest would have to match Redis' own (`redis.sha1hex`),
//! which needs a SHA-1 on the client. Comparing the bytes needs neither, costs Redis a `memcmp`,
//! and is never wrong: equal bytes are an equal record, so a save that finds them merges into
//! exactly what it would have merged into. The price is that a save sends the record it loaded
//! along with the new one (about twice a `SET`'s upload; `SET ... IFEQ ... GET` also answers it
//! back), and a request keeps the record it loaded, as bytes, until it ends. (Redis 8.4's `IFDEQ`
//! compares a digest, but Valkey has no such option and Redis 7 neither.)

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use fred::{
    bytes::Bytes,
    interfaces::{KeysInterface, LuaInterface},
    types::{ClusterHash, CustomCommand, Expiration, SetOptions, Value},
};
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use super::{
    encoded::{decode, encode, token},
    held, Batches, CompareAndSet, Replaced, ToStore,
};

/// The compare-and-set: `KEYS[1]` the session's key, `ARGV[1]` the value the save loaded,
/// `ARGV[2]` the new value, `ARGV[3]` its expiry (Unix seconds). `1` once stored; otherwise the
/// stored value, or nil if none.
const REPLACE_SCRIPT: &str = "local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EXAT', ARGV[3])
  return 1
end
return current
";

/// The SHA-1 of [`REPLACE_SCRIPT`], by which `EVALSHA` names it. Change both together: a server
/// that knows the old script under this name would go on running it (a unit test below checks
/// the name, and `tests/redis_store/round_trips.rs` that a fresh server finds the script by it
/// once `EVAL` has run it).
const REPLACE_SCRIPT_SHA1: &str = "bce978006dbaa5cfabc2fbf0a56b6817dcf89e5a";

/// The length from which a loaded record does not come back with `SET ... IFEQ`'s answer: a
/// save that loses then `GET`s the latest record (one more round trip, under contention only),
/// and one that wins (nearly all) does not have the server send the record back. Measured on a
/// session of 11 KiB: the answer cost the app 15k instructions a write (BENCHMARKS.md).
const ANSWER_BELOW: usize = 1024;

/// What a compare-and-set did.
enum Swap {
    /// It stored the new value.
    Stored,
    /// It stored nothing; the stored value (nil when there is none) came with the answer.
    Lost(Value),
    /// It stored nothing, and the stored value did not come with the answer.
    LostUnread,
}

/// Session records in Redis (through a [fred](https://docs.rs/fred/10) client), merged
/// atomically: overlapping requests of one visitor lose nothing, across any number of app
/// instances, with no lock and no polling. Behind the cargo feature `redis`.
///
/// The records are those of `tower-sessions-redis-store` 0.16 (same key, same MessagePack value,
/// same expiry): switching from it to this store, or back, keeps every visitor's session. What
/// changes is the save: it applies the request's namespace operations to the latest stored record
/// by compare-and-set (see [`stores`](crate::stores)), in one round trip when no other request of
/// the session saved meanwhile, as `tower-sessions-redis-store`'s own save; a load is one `GET`.
/// The compare-and-set is the server's own `SET ... IFEQ` on Valkey 8.1 and Redis 8.4 and later,
/// and a Lua script on older servers; the store finds out which by itself.
/// A session that ended meanwhile (a logout, an id cycled at login, an expiry) is never written
/// back.
///
/// `C` is any fred client that runs key and Lua commands: a `Pool`, a `Client`, a client of a
/// Redis Cluster (each session is one key, so every command goes to one shard). Build it, connect
/// it (`init`), and give it to [`RedisStore::new`]. A record that cannot be decoded reads as no
/// session (and is logged); a Redis failure is a store error the request answers with a `500`.
///
/// # Example
///
/// ```no_run
/// use axum::Router;
/// use fred::prelude::{ClientLike, Config, Pool};
/// use tower::ServiceBuilder;
/// use tower_sessions::SessionManagerLayer;
/// use tower_sessions_controller::{stores::RedisStore, SessionControllerLayer};
///
/// # async fn app() -> Result<Router, fred::error::Error> {
/// let pool = Pool::new(Config::from_url("redis://127.0.0.1:6379")?, None, None, None, 4)?;
/// pool.init().await?;
///
/// let app: Router = Router::new().layer(
///     ServiceBuilder::new()
///         .layer(SessionManagerLayer::new(RedisStore::new(pool)))
///         .layer(SessionControllerLayer::new()),
/// );
/// # Ok(app)
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore<C> {
    client: C,
    batches: Batches,
    /// Set once a server refused `SET ... IFEQ`: saves run the script from then on. Shared by
    /// the store's clones, which use one client.
    script_only: Arc<AtomicBool>,
}

impl<C> RedisStore<C> {
    /// A store on `client`, which should be connected (fred's `init`, or `connect` and
    /// `wait_for_connect`).
    pub fn new(client: C) -> Self {
        Self {
            client,
            batches: Batches::default(),
            script_only: Arc::default(),
        }
    }

    /// The client the store uses.
    pub fn client(&self) -> &C {
        &self.client
    }
}

impl<C: fmt::Debug> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("client", &self.client)
            .field(
                "compare_and_set",
                &if self.script_only.load(Ordering::Relaxed) {
                    "script"
                } else {
                    "SET IFEQ"
                },
            )
            .finish()
    }
}

/// A Redis failure as a store error: what failed and fred's description (its kind and Redis'
/// message, never the connection's URL or password).
fn backend(what: &str, err: &fred::error::Error) -> session_store::Error {
    session_store::Error::Backend(format!(
        "Redis {what} failed: {:?}: {}",
        err.kind(),
        err.details()
    ))
}

/// What a replace that is done gives back: with `keep`, the record and its token (`value` being
/// the record as stored).
fn kept(record: ToStore<'_>, value: &[u8], keep: bool) -> Option<(Record, String)> {
    keep.then(|| (record.into_record(), token(value)))
}

/// The key's expiry for `record`: its expiry date in whole Unix seconds, at least 1 (Redis
/// refuses 0 and less; a record that old has expired anyway, and Redis removes it at once).
fn expire_at(expiry_date: time::OffsetDateTime) -> i64 {
    expiry_date.unix_timestamp().max(1)
}

impl<C> RedisStore<C>
where
    C: KeysInterface + LuaInterface + Send + Sync,
{
    /// Stores `value` under `key` (expiring at `expire_at`) if it holds `seen`. By `SET ... IFEQ`
    /// while the server takes it, else by the script.
    async fn compare_and_set(
        &self,
        key: &str,
        seen: Bytes,
        value: &Bytes,
        expire_at: i64,
    ) -> session_store::Result<Swap> {
        if !self.script_only.load(Ordering::Relaxed) {
            // A short record comes back with the answer (`GET`), so a save that lost has the
            // latest at once; a long one does not, and a save that lost fetches it.
            let answer = seen.len() < ANSWER_BELOW;
            let mut args = vec![
                Value::from(key),
                Value::Bytes(value.clone()),
                Value::from_static_str("IFEQ"),
                Value::Bytes(seen.clone()),
                Value::from_static_str("EXAT"),
                Value::from(expire_at),
            ];
            if answer {
                args.push(Value::from_static_str("GET"));
            }
            let set = CustomCommand::new_static("SET", ClusterHash::FirstKey, false);
            match self.client.custom::<Value, _>(set, args).await {
                Ok(stored) if answer => {
                    return Ok(match stored.as_bytes() {
                        Some(stored) if *stored == *seen => Swap::Stored,
                        _ => Swap::Lost(stored),
                    })
                }
                Ok(Value::Null) => return Ok(Swap::LostUnread),
                Ok(_) => return Ok(Swap::Stored),
                Err(err) if err.details().contains("syntax error") => {
                    tracing::debug!(
                        "Redis refused SET ... IFEQ ({}): saves compare and set by a script",
                        err.details()
                    );
                    self.script_only.store(true, Ordering::Relaxed);
                }
                Err(err) => return Err(backend("SET IFEQ", &err)),
            }
        }
        let args = vec![
            Value::Bytes(seen),
            Value::Bytes(value.clone()),
            Value::from(expire_at),
        ];
        Ok(match self.run_replace(key, args).await? {
            Value::Integer(1) => Swap::Stored,
            stored => Swap::Lost(stored),
        })
    }

    /// Runs the compare-and-set script: by its SHA-1, or whole when the server does not know it
    /// yet (which also makes the server keep it).
    async fn run_replace(&self, key: &str, args: Vec<Value>) -> session_store::Result<Value> {
        match self
            .client
            .evalsha::<Value, _, _, _>(REPLACE_SCRIPT_SHA1, key, args.clone())
            .await
        {
            Err(err) if err.details().starts_with("NOSCRIPT") => self
                .client
                .eval::<Value, _, _, _>(REPLACE_SCRIPT, key, args)
                .await
                .map_err(|err| backend("EVAL", &err)),
            result => result.map_err(|err| backend("EVALSHA", &err)),
        }
    }
}

impl<C> CompareAndSet for RedisStore<C>
where
    C: KeysInterface + LuaInterface + Send + Sync,
{
    async fn fetch(&self, id: &Id) -> session_store::Result<Option<(Record, String)>> {
        let key = id.to_string();
        // Bytes, not a `Vec`: fred hands over the reply's buffer without a copy.
        let bytes: Option<Bytes> = self
            .client
            .get(key.as_str())
            .await
            .map_err(|err| backend("GET", &err))?;
        Ok(bytes.and_then(|bytes| Some((decode(&key, &bytes)?, held::token_of(bytes)))))
    }

    async fn replace(
        &self,
        record: ToStore<'_>,
        seen: Option<&str>,
        keep: bool,
    ) -> session_store::Result<Replaced> {
        let key = record.id().to_string();
        // A token is always one this store made; one that is not hex matches no stored value,
        // so the save goes on with the latest record and its true token.
        let seen = seen.map(|seen| held::bytes_of(seen).map_or_else(Bytes::new, Bytes::from_owner));
        let value = Bytes::from(encode(&record, seen.as_ref().map_or(0, Bytes::len))?);
        let Some(seen) = seen else {
            let _: Value = self
                .client
                .set(
                    key.as_str(),
                    value.clone(),
                    Some(Expiration::EXAT(expire_at(record.expiry_date()))),
                    None,
                    false,
                )
                .await
                .map_err(|err| backend("SET", &err))?;
            return Ok(Replaced::Done(kept(record, &value, keep)));
        };
        let expiry = expire_at(record.expiry_date());
        match self.compare_and_set(&key, seen, &value, expiry).await? {
            Swap::Stored => Ok(Replaced::Done(kept(record, &value, keep))),
            Swap::LostUnread => Ok(Replaced::Changed(self.fetch(&record.id()).await?)),
            Swap::Lost(Value::Null) => Ok(Replaced::Changed(None)),
            Swap::Lost(latest) => match latest.as_bytes() {
                // An undecodable latest record counts as none: the session is not written back
                // over it.
                Some(bytes) => Ok(Replaced::Changed(
                    decode(&key, bytes).map(|record| (record, token(bytes))),
                )),
                None => Err(session_store::Error::Backend(format!(
                    "Redis compare-and-set answered an unexpected {}",
                    latest.kind()
                ))),
            },
        }
    }

    async fn insert(&self, record: &Record) -> session_store::Result<bool> {
        let value = encode(record, 0)?;
        let stored: Value = self
            .client
            .set(
                record.id.to_string(),
                value.as_slice(),
                Some(Expiration::EXAT(expire_at(record.expiry_date))),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(|err| backend("SET NX", &err))?;
        Ok(!stored.is_null())
    }

    fn batches(&self) -> &Batches {
        &self.batches
    }
}

#[async_trait]
impl<C> SessionStore for RedisStore<C>
where
    C: KeysInterface + LuaInterface + Clone + fmt::Debug + Send + Sync + 'static,
{
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        super::create(self, record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        super::save(self, record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        super::load(self, id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let _: Value = self
            .client
            .del(id.to_string())
            .await
            .map_err(|err| backend("DEL", &err))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-1 (FIPS 180-4), for the test below only.
    fn sha1(message: &[u8]) -> String {
        let mut h: [u32; 5] = [
            0x6745_2301,
            0xefcd_ab89,
            0x98ba_dcfe,
            0x1032_5476,
            0xc3d2_e1f0,
        ];
        let mut padded = message.to_vec();
        padded.push(0x80);
        while padded.len() % 64 != 56 {
            padded.push(0);
        }
        padded.extend_from_slice(&(message.len() as u64 * 8).to_be_bytes());
        for block in padded.chunks_exact(64) {
            let mut w = [0u32; 80];
            for (i, word) in block.chunks_exact(4).enumerate() {
                w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            }
            for i in 16..80 {
                w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
            }
            let [mut a, mut b, mut c, mut d, mut e] = h;
            for (i, word) in w.iter().enumerate() {
                let (f, k) = match i {
                    0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                    20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                    40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                    _ => (b ^ c ^ d, 0xca62_c1d6),
                };
                let t = a
                    .rotate_left(5)
                    .wrapping_add(f)
                    .wrapping_add(e)
                    .wrapping_add(k)
                    .wrapping_add(*word);
                (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
            }
            for (state, value) in h.iter_mut().zip([a, b, c, d, e]) {
                *state = state.wrapping_add(value);
            }
        }
        h.iter().map(|word| format!("{word:08x}")).collect()
    }

    #[test]
    fn the_scripts_name_is_its_sha1() {
        assert_eq!(sha1(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha1(REPLACE_SCRIPT.as_bytes()), REPLACE_SCRIPT_SHA1);
    }

    #[test]
    fn the_expiry_is_in_whole_seconds_and_never_below_one() {
        let mut record = Record {
            id: Id::default(),
            data: Default::default(),
            expiry_date: time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
                + time::Duration::milliseconds(900),
        };
        assert_eq!(expire_at(record.expiry_date), 1_800_000_000);
        record.expiry_date = time::OffsetDateTime::UNIX_EPOCH - time::Duration::days(1);
        assert_eq!(expire_at(record.expiry_date), 1);
    }
}
