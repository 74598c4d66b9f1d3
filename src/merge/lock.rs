//! The locks that make a session's merged saves one at a time: a lock per session within the
//! process, and with [`MergingStore::with_store_lock`](super::MergingStore::with_store_lock) a
//! lock record in the store, for several app instances.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tokio::sync::OwnedMutexGuard;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

/// How long a store lock lives if its holder dies before releasing it.
const STORE_LOCK_TTL: Duration = Duration::seconds(10);
/// How long a save waits for another instance's store lock before it fails.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The key of a lock record naming the instance that took it.
const LOCK_OWNER_KEY: &str = "tower_sessions_controller.lock_owner";
/// Turns a session id into the id of its lock record.
const STORE_LOCK_MASK: i128 = 0x7473_635f_6d65_7267_655f_6c6f_636b_2121;

/// Every session's save lock, shared by the clones of one store.
#[derive(Clone)]
pub(super) struct SaveLocks {
    /// The in-process lock of each session that a save holds or waits for.
    sessions: Arc<Mutex<HashMap<Id, Arc<tokio::sync::Mutex<()>>>>>,
    /// Whether saves also take the session's lock through the store.
    pub(super) store_lock: bool,
    /// Marks the store locks this instance takes, so it can tell one it left behind.
    owner: Value,
}

/// A session's save lock, held while one save merges. The in-process part is released on drop;
/// the store part by [`release`](Self::release), or, if the save is dropped before it gets
/// there (a client that went away, a timeout), by a task of its own.
pub(super) struct SaveLock<'a, S: SessionStore> {
    locks: &'a SaveLocks,
    store: Arc<S>,
    id: Id,
    guard: Option<OwnedMutexGuard<()>>,
    store_locked: bool,
}

impl SaveLocks {
    pub(super) fn new() -> Self {
        Self {
            sessions: Arc::default(),
            store_lock: false,
            owner: Value::from(Id::default().to_string()),
        }
    }

    /// Takes the session's in-process lock, and its store lock if configured.
    pub(super) async fn acquire<S: SessionStore>(
        &self,
        store: &Arc<S>,
        id: Id,
    ) -> session_store::Result<SaveLock<'_, S>> {
        let mutex = Arc::clone(
            self.sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(id)
                .or_default(),
        );
        let guard = mutex.lock_owned().await;
        let mut held = SaveLock {
            locks: self,
            store: Arc::clone(store),
            id,
            guard: Some(guard),
            store_locked: false,
        };
        if self.store_lock {
            self.acquire_in_store(&**store, id).await?;
            held.store_locked = true;
        }
        Ok(held)
    }

    async fn acquire_in_store<S: SessionStore>(
        &self,
        store: &S,
        id: Id,
    ) -> session_store::Result<()> {
        let lock_id = lock_id(id);
        let deadline = tokio::time::Instant::now() + STORE_LOCK_WAIT;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let mut record = Record {
                id: lock_id,
                data: HashMap::from([(LOCK_OWNER_KEY.to_owned(), self.owner.clone())]),
                expiry_date: OffsetDateTime::now_utc() + STORE_LOCK_TTL,
            };
            store.create(&mut record).await?;
            if record.id == lock_id {
                return Ok(());
            }
            // Taken: `create` stored the record under a fresh id instead. Remove it.
            store.delete(&record.id).await?;
            // Ours: this instance holds the session's in-process lock, so no save of ours is under
            // way, and the lock is one whose release failed. Another instance's lock is never
            // touched: it is released, or expires.
            let holder = store.load(&lock_id).await?;
            let left_behind =
                holder.is_some_and(|holder| holder.data.get(LOCK_OWNER_KEY) == Some(&self.owner));
            if left_behind {
                tracing::warn!(session = %id, "clearing a store lock left behind");
                store.delete(&lock_id).await?;
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(session = %id, "timed out waiting for the session's store lock");
                return Err(session_store::Error::Backend(
                    "timed out waiting for another instance's merge of this session".into(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
    }
}

/// The id of a session's lock record.
fn lock_id(id: Id) -> Id {
    Id(id.0 ^ STORE_LOCK_MASK)
}

/// Removes a store lock. A failure is logged: the lock expires by itself, and this instance's
/// next save of the session clears it.
async fn release_in_store<S: SessionStore>(store: &S, id: Id) {
    if let Err(err) = store.delete(&lock_id(id)).await {
        tracing::warn!(
            session = %id,
            error = %err,
            "could not release the session's store lock; it expires by itself, and the next \
             save clears it"
        );
    }
}

impl<S: SessionStore> SaveLock<'_, S> {
    /// Releases the store lock, if held.
    pub(super) async fn release(&mut self) {
        if std::mem::take(&mut self.store_locked) {
            release_in_store(&*self.store, self.id).await;
        }
    }
}

impl<S: SessionStore> Drop for SaveLock<'_, S> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.store_locked) {
            // The save was dropped while it held the lock: release it from a task of its own.
            let (store, id) = (Arc::clone(&self.store), self.id);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { release_in_store(&*store, id).await });
                }
                Err(_) => tracing::warn!(
                    session = %id,
                    "a session's store lock was left outside a runtime; it expires by itself, \
                     and the next save clears it"
                ),
            }
        }
        drop(self.guard.take());
        let mut sessions = self
            .locks
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map holds it now: nobody waits for this session.
        if sessions
            .get(&self.id)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            sessions.remove(&self.id);
        }
    }
}
