//! A fault-injecting `SessionStore` wrapper: fails or delays `load`, `create`, `save` or `delete`
//! on a schedule, and remembers every session id written through it so that a test can clean up
//! (and check) everything it stored.
//!
//! Shared by `tests/faults.rs` (the Redis restart of `faults/redis_restart.rs` included) and
//! `tests/soak.rs`.
#![allow(dead_code)]

use std::{
    collections::HashSet,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

/// The secret carried by every injected error: a response body must never show it (store
/// errors can carry connection details), the log must.
pub const SECRET: &str = "password=hunter2@10.0.0.7:6379";

/// A store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Load,
    Create,
    Save,
    Delete,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Load, Op::Create, Op::Save, Op::Delete];

    fn index(self) -> usize {
        match self {
            Op::Load => 0,
            Op::Create => 1,
            Op::Save => 2,
            Op::Delete => 3,
        }
    }
}

/// What happens to a call the schedule picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Report an error without doing anything.
    Fail,
    /// Do the operation, then report an error (a timeout after the write reached the server).
    FailAfter,
    /// Wait this long, then do the operation.
    Delay(Duration),
}

/// Which calls of an operation a rule picks. Calls are counted per operation from 1, from the
/// moment the rule is set.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Every call.
    Always,
    /// The calls with these numbers.
    Calls(Vec<u64>),
    /// Every `n`th call (`n`, `2n`, ...).
    EveryNth(u64),
    /// Each call with this probability, decided by a hash of `seed` and the call number: the
    /// same calls are picked in every run.
    Random { seed: u64, per_mille: u64 },
}

impl Pick {
    fn picks(&self, call: u64) -> bool {
        match self {
            Pick::Always => true,
            Pick::Calls(calls) => calls.contains(&call),
            Pick::EveryNth(n) => *n > 0 && call % n == 0,
            Pick::Random { seed, per_mille } => mix(mix(*seed) ^ call) % 1000 < *per_mille,
        }
    }
}

/// A random delay of up to `max_ms` milliseconds on every call, chosen from `seed` and the call
/// number.
#[derive(Debug, Clone, Copy)]
pub struct Jitter {
    pub seed: u64,
    pub max_ms: u64,
}

/// splitmix64: a well-mixed hash of a counter, the whole randomness of these tests.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Default)]
struct Rules {
    /// Per operation: the rule and its fault.
    faults: [Option<(Pick, Fault)>; 4],
    jitter: [Option<Jitter>; 4],
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Rules>,
    /// Calls per operation since its rule was set.
    calls: [AtomicU64; 4],
    /// Calls per operation since the store was made (or `take_log` last ran), in order.
    log: Mutex<Vec<Op>>,
    injected: AtomicU64,
    ids: Mutex<HashSet<Id>>,
    /// The request numbers (see `flush_of`) of the flushes whose own save or create this store
    /// answered with success.
    flushed: Mutex<HashSet<u64>>,
}

/// The wrapper. Clones share rules, counters and the ids seen.
#[derive(Clone)]
pub struct FaultStore<S> {
    pub inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for FaultStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStore").finish_non_exhaustive()
    }
}

impl<S> FaultStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            shared: Arc::default(),
        }
    }

    /// From now on, the calls of `op` that `pick` picks get `fault`; its call counter restarts.
    pub fn set(&self, op: Op, pick: Pick, fault: Fault) {
        let mut rules = self.shared.rules.lock().expect("rules");
        rules.faults[op.index()] = Some((pick, fault));
        self.shared.calls[op.index()].store(0, Ordering::SeqCst);
    }

    /// Every call of `op` waits a random time first.
    pub fn jitter(&self, op: Op, jitter: Jitter) {
        self.shared.rules.lock().expect("rules").jitter[op.index()] = Some(jitter);
    }

    /// Every call of every operation fails.
    pub fn fail_everything(&self) {
        for op in Op::ALL {
            self.set(op, Pick::Always, Fault::Fail);
        }
    }

    /// No more faults or delays.
    pub fn heal(&self) {
        *self.shared.rules.lock().expect("rules") = Rules::default();
    }

    /// The operations called since the last `take_log`, in order.
    pub fn take_log(&self) -> Vec<Op> {
        std::mem::take(&mut *self.shared.log.lock().expect("log"))
    }

    /// How many faults (errors, not delays) were injected so far.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Every session id written through this store (created or saved) and not deleted since.
    pub fn ids(&self) -> Vec<Id> {
        self.shared
            .ids
            .lock()
            .expect("ids")
            .iter()
            .copied()
            .collect()
    }

    fn remember(&self, id: Id) {
        self.shared.ids.lock().expect("ids").insert(id);
    }

    /// Notes that the flush `record` names (if any) was saved: the session manager's save of the
    /// same request comes next.
    fn saved_flush(&self, record: &Record) {
        if let Some(flush) = flush_of(record) {
            self.shared.flushed.lock().expect("flushed").insert(flush);
        }
    }

    fn forget(&self, id: &Id) {
        self.shared.ids.lock().expect("ids").remove(id);
    }

    /// What happens to this call of `op`: an optional delay first, then maybe a fault.
    fn decide(&self, op: Op) -> (Option<Duration>, Option<Fault>) {
        self.shared.log.lock().expect("log").push(op);
        let call = self.shared.calls[op.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let rules = self.shared.rules.lock().expect("rules");
        let jitter = rules.jitter[op.index()].map(|jitter| {
            Duration::from_millis(mix(mix(jitter.seed) ^ call) % (jitter.max_ms + 1))
        });
        let fault = match &rules.faults[op.index()] {
            Some((pick, fault)) if pick.picks(call) => Some(*fault),
            _ => None,
        };
        (jitter, fault)
    }

    async fn around<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = session_store::Result<T>>,
    ) -> session_store::Result<T> {
        let (jitter, fault) = self.decide(op);
        if let Some(pause) = jitter {
            tokio::time::sleep(pause).await;
        }
        match fault {
            None => call.await,
            Some(Fault::Delay(pause)) => {
                tokio::time::sleep(pause).await;
                call.await
            }
            Some(Fault::Fail) => {
                self.shared.injected.fetch_add(1, Ordering::SeqCst);
                Err(injected(op, "before"))
            }
            Some(Fault::FailAfter) => {
                let _done = call.await;
                self.shared.injected.fetch_add(1, Ordering::SeqCst);
                Err(injected(op, "after"))
            }
        }
    }
}

/// The error every fault reports.
pub fn injected(op: Op, when: &str) -> session_store::Error {
    session_store::Error::Backend(format!(
        "injected fault: {op:?} failed {when} reaching the store ({SECRET})"
    ))
}

#[async_trait]
impl<S: SessionStore + Clone> SessionStore for FaultStore<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let inner = self.inner.clone();
        let mut copy = record.clone();
        let result = self
            .around(Op::Create, async {
                inner.create(&mut copy).await?;
                Ok(copy.id)
            })
            .await;
        // `create` may have changed the id (a collision); whatever was stored is remembered.
        self.remember(copy.id);
        record.id = result?;
        self.saved_flush(record);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.remember(record.id);
        let flush = flush_of(record);
        if flush.is_some_and(|flush| {
            self.shared
                .flushed
                .lock()
                .expect("flushed")
                .contains(&flush)
        }) {
            // Over one of the crate's stores, the session manager's save after the flush's own:
            // nothing changed since, so the store answers it without a database call, which no
            // fault can hit. (Under `MergingStore`, this store never sees such a save.)
            return self.inner.save(record).await;
        }
        self.around(Op::Save, self.inner.save(record)).await?;
        self.saved_flush(record);
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.around(Op::Load, self.inner.load(id)).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let result = self.around(Op::Delete, self.inner.delete(id)).await;
        if result.is_ok() {
            self.forget(id);
        }
        result
    }
}

/// The number of the request whose flush saves `record`, if a flush does: over the crate's
/// stores, the flush's own save and the session manager's save after it carry it in the crate's
/// load mark (its second word: the load's number).
fn flush_of(record: &Record) -> Option<u64> {
    let loaded = record
        .data
        .get("tower_sessions_controller.loaded")?
        .as_str()?;
    loaded.split(' ').nth(1)?.parse().ok()
}
