//! A store wrapper that counts its calls, remembers every session id written through it (for
//! the clean-up of a shared server), and can be told to fail loads and saves.

use std::{
    collections::HashSet,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use async_trait::async_trait;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

/// Counts of the store calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub load: usize,
    pub create: usize,
    pub save: usize,
    pub delete: usize,
}

impl Calls {
    /// No store call at all.
    pub const NONE: Calls = Calls {
        load: 0,
        create: 0,
        save: 0,
        delete: 0,
    };
    /// A stored session read: one load, nothing written.
    pub const LOAD: Calls = Calls {
        load: 1,
        ..Self::NONE
    };
    /// A stored session changed: one load, one save.
    pub const LOAD_SAVE: Calls = Calls {
        load: 1,
        save: 1,
        ..Self::NONE
    };
    /// A new visitor's first write: one create.
    pub const CREATE: Calls = Calls {
        create: 1,
        ..Self::NONE
    };
}

#[derive(Default)]
struct Counters {
    load: AtomicUsize,
    create: AtomicUsize,
    save: AtomicUsize,
    delete: AtomicUsize,
}

/// The wrapper. Clones share counters, failure switches and the ids seen.
#[derive(Clone)]
pub struct CountingStore<S> {
    pub inner: S,
    counters: Arc<Counters>,
    ids: Arc<Mutex<HashSet<Id>>>,
    fail_load: Arc<AtomicBool>,
    fail_save: Arc<AtomicBool>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counters: Arc::default(),
            ids: Arc::default(),
            fail_load: Arc::default(),
            fail_save: Arc::default(),
        }
    }

    /// The same counters, switches and ids over another client of the same backend.
    pub fn sharing<T>(&self, inner: T) -> CountingStore<T> {
        CountingStore {
            inner,
            counters: Arc::clone(&self.counters),
            ids: Arc::clone(&self.ids),
            fail_load: Arc::clone(&self.fail_load),
            fail_save: Arc::clone(&self.fail_save),
        }
    }

    /// The calls so far, and the counters reset to zero.
    pub fn take_calls(&self) -> Calls {
        let counters = &self.counters;
        Calls {
            load: counters.load.swap(0, Ordering::SeqCst),
            create: counters.create.swap(0, Ordering::SeqCst),
            save: counters.save.swap(0, Ordering::SeqCst),
            delete: counters.delete.swap(0, Ordering::SeqCst),
        }
    }

    pub fn fail_loads(&self, fail: bool) {
        self.fail_load.store(fail, Ordering::SeqCst);
    }

    pub fn fail_saves(&self, fail: bool) {
        self.fail_save.store(fail, Ordering::SeqCst);
    }

    /// Every session id written through this store (created or saved).
    pub fn ids(&self) -> Vec<Id> {
        self.ids.lock().expect("ids").iter().copied().collect()
    }

    fn remember(&self, id: Id) {
        self.ids.lock().expect("ids").insert(id);
    }
}

impl<S: SessionStore> CountingStore<S> {
    /// Deletes every record written through this store, straight in the wrapped one: the
    /// clean-up of a test on a shared server.
    pub async fn delete_written(&self) {
        for id in self.ids() {
            if let Err(err) = self.inner.delete(&id).await {
                eprintln!("clean-up: deleting session {id} failed: {err}");
            }
        }
    }
}

impl<S> fmt::Debug for CountingStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingStore").finish_non_exhaustive()
    }
}

fn injected() -> session_store::Error {
    session_store::Error::Backend("injected store failure (secret=hunter2)".into())
}

#[async_trait]
impl<S: SessionStore + Clone> SessionStore for CountingStore<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.counters.create.fetch_add(1, Ordering::SeqCst);
        if self.fail_save.load(Ordering::SeqCst) {
            return Err(injected());
        }
        let result = self.inner.create(record).await;
        // `create` may have changed the id (a collision): what was stored is remembered.
        self.remember(record.id);
        result
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.counters.save.fetch_add(1, Ordering::SeqCst);
        if self.fail_save.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.remember(record.id);
        self.inner.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.counters.load.fetch_add(1, Ordering::SeqCst);
        if self.fail_load.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.load(id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.counters.delete.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(id).await
    }
}
