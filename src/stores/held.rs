//! The bytes a load read, held in the process for the compare-and-set of the request's save.
//!
//! A save by compare-and-set tells the store which version of the record its request loaded. The
//! Redis and SQL stores name that version by the bytes they read, and the session carries the
//! name from the load to the save. As text in the session (the token, the bytes in hex), a large
//! session costs twice its size in text at every load, and the decoding of that text at every
//! save. So within a request that [`SessionControllerLayer`](crate::SessionControllerLayer)
//! serves, a load leaves the bytes it read in the process and the session carries only a short
//! token naming them (`@` and a number). The layer keeps them until the response is sent, after
//! the session manager's save. A load anywhere else (in a task a handler spawned, on a route
//! outside the layer, in an app without it) carries the hex, as there is nobody to let go of them.
//!
//! A token names bytes held in this process only: the load mark in front of it says the record
//! was loaded here, and a stored record's mark is dropped at load. A token whose bytes were let
//! go (a save made after its request ended) names nothing: the store then finds its record
//! changed and merges into the latest, as when another request saved first.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::merge::ByNumber;

/// The fewest bytes a load holds: below, their hex costs less to make and read than holding them
/// (a map entry, and the layer's hold on the response).
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
const HOLD_FROM: usize = 512;

/// Bytes a load read, held (the buffer the store's driver read them into).
type HeldBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
tokio::task_local! {
    /// The request being served, while the layer polls it.
    static REQUEST: Arc<dyn HoldsLoads>;
}

/// What holds the loads of a request: its state in the layer.
pub(crate) trait HoldsLoads: Send + Sync {
    /// The request's loads.
    fn loads(&self) -> &Loads;
}

/// The loads of one request whose bytes are held: let go when it is dropped.
#[derive(Debug, Default)]
pub(crate) struct Loads {
    numbers: Mutex<Vec<u64>>,
}

impl Loads {
    /// Whether any bytes are held for the request.
    pub(crate) fn any(&self) -> bool {
        !lock(&self.numbers).is_empty()
    }
}

impl Drop for Loads {
    fn drop(&mut self) {
        let numbers = std::mem::take(&mut *lock(&self.numbers));
        if !numbers.is_empty() {
            let mut held = held();
            for number in numbers {
                held.remove(&number);
            }
        }
    }
}

/// Locks `mutex`: every change under these locks is one statement, so a poisoned lock holds
/// nothing half-done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bytes held in the process, by number.
fn held() -> MutexGuard<'static, ByNumber<u64, HeldBytes>> {
    static HELD: OnceLock<Mutex<ByNumber<u64, HeldBytes>>> = OnceLock::new();
    lock(HELD.get_or_init(Mutex::default))
}

/// Runs `poll` as part of `request`: the loads it makes hold their bytes for it. Without a store
/// that holds loads (the features `redis`, `postgres`, `sqlite`), just runs it.
pub(crate) fn within<S: HoldsLoads + 'static, R>(request: &Arc<S>, poll: impl FnOnce() -> R) -> R {
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    return REQUEST.sync_scope(Arc::<S>::clone(request), poll);
    #[cfg(not(any(feature = "redis", feature = "postgres", feature = "sqlite")))]
    {
        let _ = request;
        poll()
    }
}

/// The token of `bytes`, just read by a load: a number naming them held in the process within a
/// request the layer serves (and if they are [`HOLD_FROM`] bytes or more), else their hex.
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(super) fn token_of(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};

    if bytes.as_ref().len() < HOLD_FROM {
        return super::encoded::token(bytes.as_ref());
    }
    let Ok(request) = REQUEST.try_with(Arc::clone) else {
        return super::encoded::token(bytes.as_ref());
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    held().insert(number, Arc::new(bytes));
    lock(&request.loads().numbers).push(number);
    format!("@{number}")
}

/// The bytes a token names: held ones shared with the map (not copied), or those its hex spells.
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(super) enum Seen {
    /// Bytes held in the process.
    Held(HeldBytes),
    /// Bytes a hex token spells.
    Spelled(Vec<u8>),
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl Seen {
    /// The bytes as a `Vec` (a copy of held ones).
    pub(super) fn into_vec(self) -> Vec<u8> {
        match self {
            Seen::Held(bytes) => (*bytes).as_ref().to_vec(),
            Seen::Spelled(bytes) => bytes,
        }
    }
}

#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
impl AsRef<[u8]> for Seen {
    fn as_ref(&self) -> &[u8] {
        match self {
            Seen::Held(bytes) => (**bytes).as_ref(),
            Seen::Spelled(bytes) => bytes,
        }
    }
}

/// The bytes `token` names: those held under its number, or else those its hex spells. `None` if
/// it names none (bytes let go, or not a token at all).
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub(super) fn bytes_of(token: &str) -> Option<Seen> {
    match token.strip_prefix('@') {
        Some(number) => {
            let number = number.parse().ok()?;
            held().get(&number).map(Arc::clone).map(Seen::Held)
        }
        None => super::encoded::bytes_of(token).map(Seen::Spelled),
    }
}

#[cfg(all(test, any(feature = "redis", feature = "postgres", feature = "sqlite")))]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Request(Loads);

    /// The bytes `token` names, copied.
    fn bytes(token: &str) -> Option<Vec<u8>> {
        bytes_of(token).map(|seen| seen.as_ref().to_vec())
    }

    impl HoldsLoads for Request {
        fn loads(&self) -> &Loads {
            &self.0
        }
    }

    #[test]
    fn outside_a_request_the_token_is_the_hex() {
        let token = token_of(vec![0xab; HOLD_FROM]);
        assert_eq!(token, "ab".repeat(HOLD_FROM));
        assert_eq!(bytes(&token), Some(vec![0xab; HOLD_FROM]));
    }

    #[test]
    fn within_a_request_the_bytes_are_held_until_it_ends() {
        let request = Arc::new(Request::default());
        let token = within(&request, || token_of(vec![7; HOLD_FROM]));
        assert!(token.starts_with('@') && token.len() < 22, "{token}");
        assert!(request.loads().any());
        // Found from anywhere in the process (another request's batch stores this one's save).
        assert_eq!(bytes(&token), Some(vec![7; HOLD_FROM]));
        drop(request);
        assert_eq!(bytes(&token), None, "let go with the request");
    }

    #[test]
    fn a_short_record_goes_as_hex_even_within_a_request() {
        let request = Arc::new(Request::default());
        let token = within(&request, || token_of(vec![7; HOLD_FROM - 1]));
        assert_eq!(token, "07".repeat(HOLD_FROM - 1));
        assert!(!request.loads().any());
    }

    #[test]
    fn a_token_that_names_nothing_held_gives_no_bytes() {
        for token in [
            "@",
            "@x",
            "@-1",
            "@99999999999999999999",
            "@18446744073709551615",
        ] {
            assert_eq!(bytes(token), None, "{token}");
        }
    }
}
