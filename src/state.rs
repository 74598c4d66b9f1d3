//! The state of one request, shared by the layer and the extractors: its "now", its default
//! budget, the registry of the namespaces it opened, and the flush.
//!
//! The layer creates a [`RequestState`] when a request comes in and puts it in the request's
//! extensions. Opening a namespace loads it from the session once and keeps it here as an
//! [`Entry`]; every controller for the same key in the request shares that entry, so they see one
//! state. When the response is produced, the layer calls [`RequestState::finish`], and if some
//! entry changed, [`RequestState::flush`], which writes each changed entry back into the session
//! in one step.

use std::{
    mem,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
};

use axum::http::request::Parts;
use time::OffsetDateTime;
use tower_sessions::Session;

use crate::{
    entry::{Change, Entry, Limits, MapNeed},
    error::Error,
    expiry::ExpiryPolicy,
    merge::{self, Journal, Refusal, SessionLimits},
    stores::held::{HoldsLoads, Loads},
};

/// The longest key a namespace may have, in bytes.
pub(crate) const MAX_NAMESPACE_LEN: usize = 128;

/// Refuses keys a namespace may not have: the top-level keys this crate keeps for itself, and
/// keys longer than [`MAX_NAMESPACE_LEN`] (a key can be anything a visitor sent).
fn validate(namespace: &str) -> Result<(), Error> {
    let reason = if namespace.starts_with(merge::RESERVED_PREFIX) {
        "keys beginning with `tower_sessions_controller.` are reserved for the crate's own \
         bookkeeping"
    } else if namespace.len() > MAX_NAMESPACE_LEN {
        "a namespace key is at most 128 bytes long"
    } else {
        return Ok(());
    };
    Err(Error::InvalidNamespace {
        namespace: namespace.to_owned(),
        reason,
    })
}

/// One request's namespaces, its "now", its default budget, and whether its response has been
/// produced.
pub(crate) struct RequestState {
    pub(crate) session: Option<Session>,
    pub(crate) now: OffsetDateTime,
    /// The layer's budget and nesting limit.
    pub(crate) limits: Limits,
    /// The layer's limits of the whole session.
    session_limits: SessionLimits,
    /// The response has been produced: changes from now on are not saved.
    responded: AtomicBool,
    /// The namespaces opened so far. A request opens one or two, so a list beats a hash map.
    entries: Mutex<Vec<Arc<Entry>>>,
    /// Whether a [`MergingStore`](crate::MergingStore) is underneath (with the number of the
    /// session's load through it), learnt by [`merging`](Self::merging) when first needed.
    merging: OnceLock<Option<u64>>,
    /// The bytes the session's load read, if a store held them for the save.
    loads: Loads,
}

impl HoldsLoads for RequestState {
    fn loads(&self) -> &Loads {
        &self.loads
    }
}

impl RequestState {
    pub(crate) fn new(
        session: Option<Session>,
        now: OffsetDateTime,
        limits: Limits,
        session_limits: SessionLimits,
    ) -> Self {
        Self {
            session,
            now,
            limits,
            session_limits,
            responded: AtomicBool::new(false),
            entries: Mutex::new(Vec::new()),
            merging: OnceLock::new(),
            loads: Loads::default(),
        }
    }

    /// The state the layer left in a request, for the extractors.
    ///
    /// # Errors
    ///
    /// [`Error::MissingLayer`] without the layer, [`Error::MissingSessionManager`] without a
    /// session around it.
    pub(crate) fn of(parts: &Parts) -> Result<Arc<Self>, Error> {
        let request = parts
            .extensions
            .get::<Arc<Self>>()
            .cloned()
            .ok_or(Error::MissingLayer)?;
        if request.session.is_none() {
            return Err(Error::MissingSessionManager);
        }
        Ok(request)
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Arc<Entry>>> {
        // The list is consistent between statements, so a poisoned lock holds nothing half-done.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The opening path of both controllers: `policy` checked, then the namespace under
    /// `namespace`, loaded from the session on first use in this request. The controller then
    /// opens the entry by its rules ([`Entry::open`], [`Entry::open_lent`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidExpiry`] for a policy whose duration is not positive,
    /// [`Error::MissingSessionManager`] without a session, [`Error::Store`] if loading fails.
    pub(crate) async fn open(
        &self,
        namespace: &str,
        policy: ExpiryPolicy,
    ) -> Result<Arc<Entry>, Error> {
        validate(namespace)?;
        policy.validate(namespace)?;
        self.warn_if_responded(namespace, "opened");
        let found = self.find(namespace);
        if let Some(entry) = found {
            self.reload_lent_map(&entry).await?;
            return Ok(entry);
        }
        let session = self.session.as_ref().ok_or(Error::MissingSessionManager)?;
        // Boxed: tower-sessions' load future is some 300 bytes, and unboxed it would sit in every
        // handler future that opens a namespace (see BENCHMARKS.md).
        let stored = Box::pin(session.get_value(namespace)).await;
        let stored = stored.map_err(Error::Store)?;
        // The session is loaded now: through a merging store, that load marked it.
        let journaled = merge::any_marked();
        let entry = Entry::load(namespace, session.id(), stored, self.now, journaled);
        // Another task of this request may have loaded it meanwhile: the first one in wins, so
        // both controllers share one entry.
        let mut entries = self.entries();
        if let Some(entry) = entries.iter().find(|entry| entry.namespace() == namespace) {
            return Ok(Arc::clone(entry));
        }
        let entry = Arc::new(entry);
        entries.push(Arc::clone(&entry));
        Ok(entry)
    }

    fn find(&self, namespace: &str) -> Option<Arc<Entry>> {
        self.entries()
            .iter()
            .find(|entry| entry.namespace() == namespace)
            .cloned()
    }

    /// Whether a [`MergingStore`](crate::MergingStore) is underneath: `Some`, with the number of
    /// the session's load through it, which names the request's journal. Learnt once per
    /// request, and only by a write's flush (and the rare
    /// [`reload_lent_map`](Self::reload_lent_map)), so a read does not pay the lookup.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the session had to be loaded and the store failed.
    async fn merging(&self) -> Result<Option<u64>, Error> {
        if let Some(merging) = self.merging.get() {
            return Ok(*merging);
        }
        let Some(session) = &self.session else {
            return Ok(None);
        };
        let merging = merge::is_underneath(session).await.map_err(Error::Store)?;
        Ok(*self.merging.get_or_init(|| merging))
    }

    /// Gives `entry` back the map that went with a loan to a `Keyed` when something needs it: a
    /// merge diffs a typed write against it, and a controller opened after a `Keyed` that could
    /// not read the namespace must see what is stored. The map is read again from the session,
    /// which still holds the namespace as it was loaded (an entry only lends the map of a
    /// namespace that opening left unchanged).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the session had to be loaded and the store failed.
    async fn reload_lent_map(&self, entry: &Entry) -> Result<(), Error> {
        match entry.map_need() {
            MapNeed::No => return Ok(()),
            // Boxed, as the load in `open` is: this runs inside handler futures.
            MapNeed::IfMerging if Box::pin(self.merging()).await?.is_none() => return Ok(()),
            MapNeed::IfMerging | MapNeed::Yes => {}
        }
        let Some(session) = &self.session else {
            return Ok(());
        };
        let stored = Box::pin(session.get_value(entry.namespace())).await;
        entry.reload_map(stored.map_err(Error::Store)?, self.now);
        Ok(())
    }

    /// Logs a change made after the response was produced, which will not be saved.
    pub(crate) fn warn_if_responded(&self, namespace: &str, what: &str) {
        if self.responded.load(Ordering::Acquire) {
            tracing::warn!(
                namespace,
                "namespace {what} after the response was produced: this is not saved to the \
                 session (was a controller moved into a spawned task?)"
            );
        }
    }

    /// Marks the response as produced and returns the namespaces that changed, for
    /// [`flush`](Self::flush); the others are let go. Without changes, there is nothing to
    /// flush.
    pub(crate) fn finish(&self) -> Vec<Arc<Entry>> {
        self.responded.store(true, Ordering::Release);
        let mut entries = mem::take(&mut *self.entries());
        entries.retain(|entry| entry.is_changed());
        entries
    }

    /// Writes the namespaces that [`finish`](Self::finish) returned back into the session. Under
    /// a merging store ([`MergingStore`](crate::MergingStore), or one of
    /// [`stores`](crate::stores)), also leaves the request's journal for it and, unless the
    /// response is a server error (which saves nothing), saves the session itself, to answer for
    /// a save the store refuses (see `merge::flushed`).
    ///
    /// # Errors
    ///
    /// A typed namespace that does not serialize to an object (or holds a reserved key, or is
    /// over its budget), a store failure, or a refused save: [`Error::SessionEnded`] when the
    /// session ended while the request ran (the session is then flushed, so its cookie goes), or
    /// [`Error::OverBudget`] when the merged namespace would cross its budget, or
    /// [`Error::SessionFull`] when the session would cross its limits.
    pub(crate) async fn flush(
        &self,
        changed: Vec<Arc<Entry>>,
        server_error: bool,
    ) -> Result<(), Error> {
        let Some(session) = &self.session else {
            // Nothing can be opened without a session.
            return Ok(());
        };
        let load = self.merging().await?;
        let merging = load.is_some();
        let mut journal =
            load.map(|load| Journal::new(self.now, load).limited(self.session_limits));
        for entry in changed {
            let namespace = entry.namespace();
            if entry.loaded_from().is_some() && session.id().is_none() && session.is_empty().await {
                // `Session::flush` ran after this namespace was loaded: it belonged to the old
                // session. (`Session::cycle_id` also clears the id, but keeps the data.)
                tracing::warn!(
                    namespace,
                    "the session was flushed after this namespace was opened: its changes are \
                     dropped; open it again after the flush to write to the new session"
                );
                continue;
            }
            // The registry's reference was moved here; any other one is a controller still alive.
            let detached = Arc::strong_count(&entry) > 1;
            if detached {
                tracing::warn!(
                    namespace,
                    "a controller for this namespace is still alive when the response is \
                     produced; changes made through it from now on are not saved"
                );
            }
            if merging {
                self.reload_lent_map(&entry).await?;
            }
            let (change, ops) = entry.take_change(detached, merging)?;
            match change {
                Change::Write(value) => {
                    session
                        .insert_value(namespace, value)
                        .await
                        .map_err(Error::Store)?;
                }
                Change::Remove => {
                    session
                        .remove_value(namespace)
                        .await
                        .map_err(Error::Store)?;
                }
                Change::Nothing => continue,
            }
            if let Some(journal) = &mut journal {
                journal.record(namespace.to_owned(), ops);
            }
        }
        let Some(journal) = journal else {
            return Ok(());
        };
        // Only a modified session is saved: an unmodified one (changes that cancelled out)
        // needs no journal. Nor does a response that is a server error: the session manager does
        // not save it. (A session the flush emptied still holds the load's mark, so it is saved,
        // and the removals are merged.)
        if journal.is_empty() || !session.is_modified() || server_error {
            return Ok(());
        }
        let request = journal.request();
        // Taken back once the save below is done (or abandoned): the session manager's save
        // that follows finds the outcome noted under the same number instead.
        let _left: merge::Left = journal.left();
        match session.save().await {
            Ok(()) => Ok(()),
            Err(err) => {
                let refusal = session.id().and_then(|id| merge::take_refusal(id, request));
                match refusal {
                    Some(Refusal::Ended) => {
                        // Its cookie names a session that is gone: flushed, the session is empty,
                        // so the session manager removes the cookie and saves nothing. (The store
                        // holds nothing under the id to delete; a failure to say so changes
                        // nothing.)
                        if let Err(err) = session.flush().await {
                            tracing::warn!(error = %err, "could not flush an ended session");
                        }
                        Err(Error::SessionEnded)
                    }
                    Some(Refusal::OverBudget {
                        namespace,
                        size,
                        budget,
                    }) => Err(Error::OverBudget {
                        namespace,
                        key: None,
                        size,
                        limit: budget,
                    }),
                    Some(Refusal::SessionFull {
                        size,
                        namespaces,
                        limits,
                    }) => Err(Error::SessionFull {
                        size,
                        namespaces,
                        budget: limits.budget,
                        max_namespaces: limits.namespaces,
                    }),
                    None => Err(Error::Store(err)),
                }
            }
        }
    }
}
