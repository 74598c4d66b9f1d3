//! How the stores of a server save: by compare-and-set, with a merge and another try for each
//! save that came first, and the saves of one session through one store in batches (the module
//! docs of [`stores`](super) tell the design). [`MemoryStore`](super::MemoryStore) holds its
//! records itself and merges under its lock instead, so this is built only with a store of a
//! server (the features `redis`, `postgres`, `sqlite`).

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::oneshot;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store;

use super::CompareAndSet;
use crate::merge;

/// How many times a save tries to replace the record before it gives up: each failed try means
/// another request of the same session saved in between (through another instance's store:
/// through one, saves of a session go in batches). Generous, as a try is cheap and fails only to
/// another save that succeeded.
const MAX_ATTEMPTS: usize = 32;

/// The record a save stores: a request's own session as it is (its first try, when nobody else
/// saved since it loaded), borrowed, or a merge.
pub(crate) enum ToStore<'a> {
    /// The request's session as it is, with its versions; not copied.
    Unmerged(merge::Unmerged<'a>),
    /// The request's operations merged into a later record.
    Merged(Record),
}

impl ToStore<'_> {
    /// The session the record is stored under.
    pub(crate) fn id(&self) -> Id {
        match self {
            Self::Unmerged(record) => record.id(),
            Self::Merged(record) => record.id,
        }
    }

    /// When the record expires.
    #[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
    pub(crate) fn expiry_date(&self) -> time::OffsetDateTime {
        match self {
            Self::Unmerged(record) => record.expiry_date(),
            Self::Merged(record) => record.expiry_date,
        }
    }

    /// What the note of a request's flush takes when the record is that request's own session
    /// as it is, without digesting the session again; `None` for a merge.
    fn at_flush(&self) -> Option<merge::AtFlush> {
        match self {
            Self::Unmerged(record) => Some(record.at_flush()),
            Self::Merged(_) => None,
        }
    }

    /// The record, owned (the request's session is copied).
    pub(crate) fn into_record(self) -> Record {
        match self {
            Self::Unmerged(record) => record.into_record(),
            Self::Merged(record) => record,
        }
    }
}

/// Serialized as the `Record` it stores.
impl serde::Serialize for ToStore<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Unmerged(record) => record.serialize(serializer),
            Self::Merged(record) => record.serialize(serializer),
        }
    }
}

impl fmt::Debug for ToStore<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unmerged(record) => record.fmt(f),
            Self::Merged(record) => f.debug_tuple("Merged").field(&record.id).finish(),
        }
    }
}

/// What [`CompareAndSet::replace`] did.
pub(crate) enum Replaced {
    /// The record is stored; with `keep`, here it is, with its token.
    Done(Option<(Record, String)>),
    /// Another save came first: nothing was written; this is the latest record and its token,
    /// or `None` if none is stored any more.
    Changed(Option<(Record, String)>),
}

/// A merged save: one compare-and-set when nobody else saved since the load, a merge and another
/// try for each save that came first.
///
/// Saves of one session through one store (and its clones) go one batch at a time (the
/// compare-and-set still decides): a save that finds another of its session under way waits, and
/// the next batch stores every save that waited, merged in order, with one compare-and-set.
/// Overlapping requests of one visitor in one instance then cost one round trip per batch, not
/// one (or two, when the previous one came first) per request, and a save competes only with
/// other instances' saves.
pub(crate) async fn save<S: CompareAndSet>(
    store: &S,
    record: &Record,
) -> session_store::Result<()> {
    let merge::Prepared::Save(ours) = merge::prepare(record) else {
        return Ok(());
    };
    let saves = store.batches().of(ours.id);
    // Each batch's future is boxed where it runs: a store's compare-and-set holds its client's
    // command, some kilobytes on Redis, which unboxed would make every save's future that large,
    // those that store nothing or wait for another's batch too (and glibc's allocator sweeps its
    // bins of small blocks before it hands out a block of a kilobyte or more).
    // Nobody else is saving this session: the usual case, with nothing to copy.
    if let Ok(_turn) = saves.turn.try_lock() {
        return Box::pin(saves.lead(store, &ours)).await;
    }
    // The batch that stores ours takes what its merge reads, not a copy of the whole session.
    let waited = Arc::new(merge::Reduced::of(&ours));
    let (done, mut answer) = oneshot::channel();
    saves.waiting().push(Waiting {
        ours: Arc::clone(&waited),
        done,
    });
    // Until a batch takes it, ours is withdrawn if its request is dropped: tower-sessions saves
    // nothing for a dropped request either (once a batch took it, it is stored all the same).
    let queued = Queued {
        saves: &saves,
        ours: &waited,
    };
    let _turn = saves.turn.lock().await;
    match answer.try_recv() {
        // A batch before ours stored it.
        Ok(answer) => answer,
        // Still waiting, or the batch that took it never finished (its request was dropped):
        // ours leads the next batch, with its whole record (no batch runs while ours holds the
        // turn, so whatever still waits is in the queue, where it is taken out of).
        Err(_) => {
            drop(queued);
            Box::pin(saves.lead(store, &ours)).await
        }
    }
}

/// A save in the queue of the saves waiting for a batch: taken out of it when dropped, unless a
/// batch took it first.
struct Queued<'a> {
    saves: &'a Saves,
    ours: &'a Arc<merge::Reduced>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.saves
            .waiting()
            .retain(|waiting| !Arc::ptr_eq(&waiting.ours, self.ours));
    }
}

/// The answer of a save that no batch answered, which cannot happen: an error rather than a
/// panic all the same.
fn lost() -> session_store::Result<()> {
    Err(session_store::Error::Backend(
        "the save of this session was lost".into(),
    ))
}

/// The saves of one session through one store: the turn one batch holds while it stores, the
/// saves waiting for the next batch, and what the last batch stored while others were waiting.
#[derive(Default)]
struct Saves {
    turn: tokio::sync::Mutex<()>,
    waiting: Mutex<Vec<Waiting>>,
    /// The record the last batch stored and its token, kept when saves were waiting: the next
    /// batch merges into it, rather than into what its saves loaded, which the last batch changed.
    /// Only ever read with the turn held.
    stored: Mutex<Option<(Record, String)>>,
}

/// A save waiting for a batch: its record as the merge reads it, and where the batch answers it.
struct Waiting {
    ours: Arc<merge::Reduced>,
    done: oneshot::Sender<session_store::Result<()>>,
}

/// A save in a batch: the one that leads it, whole, or one that waited for it.
#[derive(Clone, Copy)]
enum Member<'a> {
    Leading(&'a Record),
    Waited(&'a merge::Reduced),
}

impl<'a> Member<'a> {
    /// What names the save's session and request.
    fn record(self) -> &'a Record {
        match self {
            Self::Leading(ours) => ours,
            Self::Waited(ours) => ours.record(),
        }
    }

    /// This save merged into `latest`, without versions: the batch writes them for the record it
    /// stores.
    fn merge(self, latest: Option<Record>) -> Result<Record, merge::Refusal> {
        match self {
            Self::Leading(ours) => merge::merge_data(ours, latest),
            Self::Waited(ours) => ours.merge_data(latest),
        }
    }

    /// Notes that this save is stored; `at_flush` is what was stored when it is the leading save's
    /// own session as it is.
    fn saved(self, at_flush: &mut Option<merge::AtFlush>) {
        match self {
            Self::Leading(ours) => merge::saved(ours, at_flush.take()),
            Self::Waited(ours) => ours.saved(),
        }
    }
}

/// The saves of each session that a store is storing or waiting for. Each store has its own, and
/// its clones share them: a batch stores its saves through the store they were made to.
#[derive(Clone, Default)]
pub(crate) struct Batches(Arc<Mutex<HashMap<Id, Arc<Saves>>>>);

impl Batches {
    fn sessions(&self) -> MutexGuard<'_, HashMap<Id, Arc<Saves>>> {
        // Every change to the map is one statement: a poisoned lock holds nothing half-done.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A hold on the saves of session `id`.
    fn of(&self, id: Id) -> Held<'_> {
        let saves = Arc::clone(self.sessions().entry(id).or_default());
        Held {
            batches: self,
            id,
            saves,
        }
    }
}

impl fmt::Debug for Batches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batches")
            .field("sessions_saving", &self.sessions().len())
            .finish()
    }
}

/// One save's hold on its session's [`Saves`]; the last to let go removes them from the map.
struct Held<'a> {
    batches: &'a Batches,
    id: Id,
    saves: Arc<Saves>,
}

impl Saves {
    fn waiting(&self) -> MutexGuard<'_, Vec<Waiting>> {
        // Pushes and takes only: a poisoned lock holds nothing half-done.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stored(&self) -> MutexGuard<'_, Option<(Record, String)>> {
        // Puts and takes only: a poisoned lock holds nothing half-done.
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores a batch, with the turn held: `own` and every save waiting, in one
    /// compare-and-set per try. Answers the waiting saves; returns `own`'s answer.
    async fn lead<S: CompareAndSet>(&self, store: &S, own: &Record) -> session_store::Result<()> {
        let waiting = std::mem::take(&mut *self.waiting());
        let members: Vec<Member<'_>> = std::iter::once(Member::Leading(own))
            .chain(waiting.iter().map(|waiting| Member::Waited(&waiting.ours)))
            .collect();
        let mut answers = self.store(store, &members).await.into_iter();
        let own = answers.next().unwrap_or_else(lost);
        for (waiting, answer) in waiting.into_iter().zip(answers) {
            // A save whose request was dropped meanwhile is stored all the same.
            let _ = waiting.done.send(answer);
        }
        own
    }

    /// Stores `members`, saves of one session, in order: one compare-and-set when nobody else
    /// saved since the record it merges into (what the last batch stored, if it kept it, or else
    /// what the first member loaded), a merge of all and another try for each save that came
    /// first. Answers each member.
    async fn store<S: CompareAndSet>(
        &self,
        store: &S,
        members: &[Member<'_>],
    ) -> Vec<session_store::Result<()>> {
        let mut answers: Vec<Option<session_store::Result<()>>> =
            members.iter().map(|_| None).collect();
        let (mut seen, latest) = match self.stored().take() {
            Some((record, token)) => (Some(Cow::Owned(token)), Some(Some(record))),
            None => (None, None),
        };
        let mut next = merged(members, &mut answers, latest, &mut seen);
        for _ in 0..MAX_ATTEMPTS {
            let latest = match next {
                // Every member was refused: nothing to store.
                Next::Nothing => break,
                // A member was refused after others were merged: start again from the latest
                // record.
                Next::Refetch => store.fetch(&members[0].record().id).await,
                Next::Store(record) => {
                    // Saves waiting now make the next batch: it merges into what this one stores.
                    let keep = !self.waiting().is_empty();
                    let mut at_flush = record.at_flush();
                    match store.replace(record, seen.as_deref(), keep).await {
                        Ok(Replaced::Done(stored)) => {
                            *self.stored() = stored;
                            for (ours, answer) in members.iter().zip(&mut answers) {
                                if answer.is_none() {
                                    ours.saved(&mut at_flush);
                                    *answer = Some(Ok(()));
                                }
                            }
                            break;
                        }
                        Ok(Replaced::Changed(latest)) => Ok(latest),
                        Err(err) => Err(err),
                    }
                }
            };
            let latest = match latest {
                Ok(latest) => latest,
                Err(err) => {
                    for answer in answers.iter_mut().filter(|answer| answer.is_none()) {
                        *answer = Some(Err(copy(&err)));
                    }
                    break;
                }
            };
            let (latest, token) =
                latest.map_or((None, None), |(record, token)| (Some(record), Some(token)));
            seen = token.map(Cow::Owned);
            next = merged(members, &mut answers, Some(latest), &mut seen);
        }
        if answers.iter().any(Option::is_none) {
            tracing::error!(
                session = %members[0].record().id,
                attempts = MAX_ATTEMPTS,
                "gave up saving the session: other requests of it kept saving first"
            );
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(session_store::Error::Backend(
                        "too many concurrent saves of this session".into(),
                    ))
                })
            })
            .collect()
    }
}

impl std::ops::Deref for Held<'_> {
    type Target = Saves;

    fn deref(&self) -> &Saves {
        &self.saves
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut sessions = self.batches.sessions();
        // Nobody else holds them: the map's reference and ours are the only ones.
        if Arc::strong_count(&self.saves) == 2 {
            sessions.remove(&self.id);
        }
    }
}

/// What a batch does after [`merged`].
enum Next<'a> {
    /// Stores this record.
    Store(ToStore<'a>),
    /// Nothing: every member is answered (refused).
    Nothing,
    /// Fetches the latest record and merges again: a member was refused after the record it
    /// was merged into had taken others' operations, which went with it.
    Refetch,
}

/// The record that stores every member not answered yet: each one's operations merged, in order,
/// into `latest` (what the store holds now), or on the first try (`latest` `None`) into what the
/// first of them, the leading save, loaded, with that load's token put in `seen`. A member whose
/// merge is refused is answered and left out. A save that waited is never stored as it is (it
/// holds only what its merge reads): when the leading save is refused on the first try, the batch
/// starts from the latest record ([`Next::Refetch`]).
///
/// Each merge takes the record before it rather than a copy (a copy of the whole session per
/// member would cost more than the merge): so when a member is refused after others were merged,
/// their operations are gone with it, and the batch starts again from the latest record
/// ([`Next::Refetch`]). Refusals are rare; copies would be paid by every batch.
fn merged<'a>(
    members: &[Member<'a>],
    answers: &mut [Option<session_store::Result<()>>],
    latest: Option<Option<Record>>,
    seen: &mut Option<Cow<'a, str>>,
) -> Next<'a> {
    let mut base = latest.map(|latest| latest.map(ToStore::Merged));
    for (ours, answer) in members.iter().zip(answers.iter_mut()) {
        if answer.is_some() {
            continue;
        }
        let (next, took) = match (&mut base, *ours) {
            (None, Member::Leading(ours)) => (
                merge::checked_unmerged(ours).map(|next| {
                    *seen = merge::seen(ours).map(Cow::Borrowed);
                    ToStore::Unmerged(next)
                }),
                false,
            ),
            // A save that waited holds only what its merge reads: it needs a record to merge
            // into (the leading save was refused).
            (None, Member::Waited(_)) => return Next::Refetch,
            (Some(latest), ours) => {
                let took = latest.is_some();
                let latest = latest.take().map(ToStore::into_record);
                (ours.merge(latest).map(ToStore::Merged), took)
            }
        };
        match next {
            Ok(next) => base = Some(Some(next)),
            Err(refusal) => {
                *answer = Some(Err(merge::refused(ours.record(), refusal)));
                if took {
                    let others = answers.iter().any(Option::is_none);
                    return if others { Next::Refetch } else { Next::Nothing };
                }
            }
        }
    }
    match base.flatten() {
        // The merges before handed each other their records without versions.
        Some(ToStore::Merged(record)) => Next::Store(ToStore::Merged(merge::versioned(record))),
        Some(unmerged) => Next::Store(unmerged),
        None => Next::Nothing,
    }
}

/// A copy of a store error, for each save of a batch it failed.
fn copy(err: &session_store::Error) -> session_store::Error {
    match err {
        session_store::Error::Encode(message) => session_store::Error::Encode(message.clone()),
        session_store::Error::Decode(message) => session_store::Error::Decode(message.clone()),
        session_store::Error::Backend(message) => session_store::Error::Backend(message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use time::{Duration, OffsetDateTime};
    use tower_sessions::SessionStore;

    use super::super::{create, load, MemoryStore};
    use super::*;

    /// The crate's `MemoryStore`, counting the calls its save and load make, and able to let
    /// another save in just before each of them.
    #[derive(Default)]
    struct Counted {
        store: MemoryStore,
        fetches: AtomicUsize,
        replaces: AtomicUsize,
        /// Before this many replaces, another request's save lands first.
        interleave: AtomicUsize,
        /// Every replace waits while the test holds this for writing.
        gate: tokio::sync::RwLock<()>,
        /// Its own: two `Counted` over clones of one store are two app instances.
        batches: Batches,
    }

    impl CompareAndSet for Counted {
        async fn fetch(&self, id: &Id) -> session_store::Result<Option<(Record, String)>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.store.fetch(id).await
        }

        async fn replace(
            &self,
            record: ToStore<'_>,
            seen: Option<&str>,
            keep: bool,
        ) -> session_store::Result<Replaced> {
            self.replaces.fetch_add(1, Ordering::SeqCst);
            drop(self.gate.read().await);
            let others = self.interleave.load(Ordering::SeqCst);
            if others > 0 {
                self.interleave.store(others - 1, Ordering::SeqCst);
                let (mut other, token) = self.store.fetch(&record.id()).await?.expect("stored");
                other.data.insert(format!("other{others}"), json!(others));
                self.store
                    .replace(ToStore::Merged(other), Some(&token), false)
                    .await?;
            }
            self.store.replace(record, seen, keep).await
        }

        async fn insert(&self, record: &Record) -> session_store::Result<bool> {
            self.store.insert(record).await
        }

        fn batches(&self) -> &Batches {
            &self.batches
        }
    }

    fn record(data: serde_json::Value) -> Record {
        Record {
            id: Id::default(),
            data: data
                .as_object()
                .expect("an object")
                .clone()
                .into_iter()
                .collect(),
            expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
        }
    }

    #[tokio::test]
    async fn an_uncontended_save_is_one_compare_and_set_after_one_load() {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let mut loaded = load(&store, &new.id).await.unwrap().expect("stored");
        loaded.data.insert("user".into(), json!("bob"));
        save(&store, &loaded).await.unwrap();

        assert_eq!(store.fetches.load(Ordering::SeqCst), 1);
        assert_eq!(store.replaces.load(Ordering::SeqCst), 1);
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert_eq!(stored.data["user"], "bob");
    }

    #[tokio::test]
    async fn a_save_that_another_came_before_merges_and_tries_again() {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let mut loaded = load(&store, &new.id).await.unwrap().expect("stored");
        loaded.data.insert("user".into(), json!("bob"));
        store.interleave.store(3, Ordering::SeqCst);
        save(&store, &loaded).await.unwrap();

        assert_eq!(store.replaces.load(Ordering::SeqCst), 4);
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert_eq!(stored.data["user"], "bob");
        for other in 1..=3 {
            assert_eq!(
                stored.data[&format!("other{other}")],
                other,
                "{:?}",
                stored.data
            );
        }
    }

    #[tokio::test]
    async fn a_save_that_keeps_losing_gives_up_with_an_error() {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let loaded = load(&store, &new.id).await.unwrap().expect("stored");
        store.interleave.store(usize::MAX, Ordering::SeqCst);
        let err = save(&store, &loaded).await.unwrap_err();
        assert!(
            err.to_string().contains("too many concurrent saves"),
            "{err}"
        );
        assert_eq!(store.replaces.load(Ordering::SeqCst), MAX_ATTEMPTS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_saves_in_one_process_go_in_batches_and_all_land() {
        let store = Arc::new(Counted::default());
        let mut new = record(json!({}));
        create(&*store, &mut new).await.unwrap();
        let loaded: Vec<Record> = loads(&store, new.id, 32).await;
        let saves: Vec<_> = loaded
            .into_iter()
            .enumerate()
            .map(|save| spawn_save(&store, save))
            .collect();
        for handle in saves {
            handle.await.unwrap().unwrap();
        }

        // Each save lost at most once: to the one before it in its turn.
        assert!(store.replaces.load(Ordering::SeqCst) <= 2 * 32);
        assert!(
            !store.batches().sessions().contains_key(&new.id),
            "the session's saves are forgotten"
        );
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        for n in 0..32 {
            assert_eq!(stored.data[&format!("key{n}")], n, "{:?}", stored.data);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saves_that_wait_for_one_under_way_are_stored_together() {
        let store = Arc::new(Counted::default());
        let mut new = record(json!({}));
        create(&*store, &mut new).await.unwrap();
        let loaded: Vec<Record> = loads(&store, new.id, 32).await;
        let gate = store.gate.write().await;
        let mut loaded = loaded.into_iter().enumerate();
        // One save is in the store, held at the gate, with nobody waiting yet...
        let mut saves = vec![spawn_save(&store, loaded.next().unwrap())];
        until_waiting(&store, new.id, 0).await;
        // ... then the 31 others wait for it.
        saves.extend(loaded.map(|save| spawn_save(&store, save)));
        until_waiting(&store, new.id, 31).await;
        drop(gate);
        for handle in saves {
            handle.await.unwrap().unwrap();
        }

        // The first save alone; then the 31 together: a try into what they loaded, which the
        // first save changed, and one into the latest record.
        assert_eq!(store.replaces.load(Ordering::SeqCst), 3);
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        for n in 0..32 {
            assert_eq!(stored.data[&format!("key{n}")], n, "{:?}", stored.data);
        }
        assert!(
            !store.batches().sessions().contains_key(&new.id),
            "the session's saves are forgotten"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_save_whose_request_is_dropped_before_a_batch_takes_it_is_withdrawn() {
        let store = Arc::new(Counted::default());
        let mut new = record(json!({}));
        create(&*store, &mut new).await.unwrap();
        let loaded: Vec<Record> = loads(&store, new.id, 3).await;
        let gate = store.gate.write().await;
        let mut loaded = loaded.into_iter().enumerate();
        // One save is in the store, held at the gate; two others wait for it...
        let first = spawn_save(&store, loaded.next().unwrap());
        until_waiting(&store, new.id, 0).await;
        let second = spawn_save(&store, loaded.next().unwrap());
        let third = spawn_save(&store, loaded.next().unwrap());
        until_waiting(&store, new.id, 2).await;
        // ... and the second's request is dropped.
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        assert_eq!(waiting(&store, new.id), 1, "withdrawn from the queue");
        drop(gate);
        first.await.unwrap().unwrap();
        third.await.unwrap().unwrap();

        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.data.get("key0"), stored.data.get("key1")),
            (Some(&json!(0)), None),
            "{:?}",
            stored.data
        );
        assert_eq!(stored.data.get("key2"), Some(&json!(2)));
        assert!(!store.batches().sessions().contains_key(&new.id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_into_a_session_that_ended_answers_every_save_and_writes_nothing_back() {
        let store = Arc::new(Counted::default());
        let mut new = record(json!({}));
        create(&*store, &mut new).await.unwrap();
        let loaded: Vec<Record> = loads(&store, new.id, 3).await;
        // The first save deletes the session: the two waiting saves loaded it, so both are
        // refused, and nothing is written back.
        let gate = store.gate.write().await;
        let handles: Vec<_> = loaded
            .into_iter()
            .map(|record| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { save(&*store, &record).await })
            })
            .collect();
        until_waiting(&store, new.id, 2).await;
        store.store.delete(&new.id).await.unwrap();
        drop(gate);
        let answers: Vec<_> = answers_of(handles).await;
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
        assert!(store.store.load(&new.id).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_store_batches_only_the_saves_made_through_it() {
        // Two app instances over one set of records, each with its store.
        let records = MemoryStore::default();
        let (one, two) = (
            Arc::new(Counted {
                store: records.clone(),
                ..Counted::default()
            }),
            Arc::new(Counted {
                store: records.clone(),
                ..Counted::default()
            }),
        );
        let mut new = record(json!({}));
        create(&*one, &mut new).await.unwrap();
        let mut first = load(&*one, &new.id).await.unwrap().expect("stored");
        let mut second = load(&*two, &new.id).await.unwrap().expect("stored");
        first.data.insert("one".into(), json!(1));
        second.data.insert("two".into(), json!(2));

        // The first instance's save is held in its store...
        let gate = one.gate.write().await;
        let held = tokio::spawn({
            let one = Arc::clone(&one);
            async move { save(&*one, &first).await }
        });
        while one.replaces.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // ... and the second's does not wait for it: it is another instance's save, which only
        // the compare-and-set orders.
        let alone = tokio::time::timeout(std::time::Duration::from_secs(10), save(&*two, &second));
        alone
            .await
            .expect("not queued behind the other store's save")
            .unwrap();
        assert!(one.batches().sessions().contains_key(&new.id));
        assert!(!two.batches().sessions().contains_key(&new.id));

        drop(gate);
        held.await.unwrap().unwrap();
        // The first lost its try to the second, merged, and tried again.
        assert_eq!(one.replaces.load(Ordering::SeqCst), 2);
        let stored = records.load(&new.id).await.unwrap().unwrap();
        assert_eq!(
            (&stored.data["one"], &stored.data["two"]),
            (&json!(1), &json!(2))
        );
    }

    #[tokio::test]
    async fn a_batch_merges_into_what_the_last_one_stored_while_others_waited() {
        let store = Counted::default();
        let mut new = record(json!({}));
        create(&store, &mut new).await.unwrap();
        let mut loaded = loads(&store, new.id, 2).await;
        for (n, record) in loaded.iter_mut().enumerate() {
            record.data.insert(format!("key{n}"), json!(n));
        }
        let saves = Saves::default();
        // With a save waiting, the first batch keeps what it stores...
        let (done, _answer) = oneshot::channel();
        saves.waiting().push(Waiting {
            ours: Arc::new(merge::Reduced::of(&loaded[1])),
            done,
        });
        let first = saves.store(&store, &[Member::Leading(&loaded[0])]).await;
        assert!(first[0].is_ok(), "{first:?}");
        assert!(saves.stored().is_some());
        saves.waiting().clear();

        // ... and the next merges into it at once, rather than first trying the version its save
        // loaded, which the first batch changed.
        let second = saves.store(&store, &[Member::Leading(&loaded[1])]).await;
        assert!(second[0].is_ok(), "{second:?}");
        assert_eq!(store.replaces.load(Ordering::SeqCst), 2);
        assert!(saves.stored().is_none(), "nobody waited for the second");
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert_eq!(
            (&stored.data["key0"], &stored.data["key1"]),
            (&json!(0), &json!(1))
        );
    }

    /// `loaded` with `namespace` written as the flush writes it, and the journal of that write
    /// (the key `key` set, within `budget`) left for its save.
    fn written(loaded: Record, namespace: &str, key: &str, budget: Option<usize>) -> Record {
        let (loaded, journal) = written_by(loaded, namespace, key, budget);
        // Left under the load's number, which the load's mark holds.
        let _ = journal.left_for_good();
        loaded
    }

    /// [`written`], with the journal still to leave.
    fn written_by(
        mut loaded: Record,
        namespace: &str,
        key: &str,
        budget: Option<usize>,
    ) -> (Record, merge::Journal) {
        let load = merge::loaded(&loaded).expect("a load's mark").number;
        let mut journal = merge::Journal::new(OffsetDateTime::now_utc(), load);
        journal.record(
            namespace.to_owned(),
            merge::Ops {
                touched: [key.to_owned()].into(),
                wrote: true,
                budget,
                ..merge::Ops::default()
            },
        );
        loaded
            .data
            .insert(namespace.to_owned(), json!({ key: "0123456789".repeat(2) }));
        (loaded, journal)
    }

    #[tokio::test]
    async fn a_batch_whose_leading_save_is_refused_merges_the_saves_that_waited_into_the_latest() {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let mut loaded = loads(&store, new.id, 2).await.into_iter();
        // The leading save adds a namespace to a session already at its limit of one.
        let (first, journal) = written_by(loaded.next().unwrap(), "cart", "a", None);
        let limits = merge::SessionLimits {
            budget: 4096,
            namespaces: 1,
        };
        let _ = journal.limited(limits).left_for_good();
        let mut second = loaded.next().unwrap();
        second.data.insert("theme".into(), json!("dark"));
        let waited = merge::Reduced::of(&second);
        assert!(
            !waited.record().data.contains_key("user"),
            "the waiting save holds only what it changed"
        );
        let fetches = store.fetches.load(Ordering::SeqCst);

        let answers = Saves::default()
            .store(&store, &[Member::Leading(&first), Member::Waited(&waited)])
            .await;

        let refused = answers[0].as_ref().unwrap_err().to_string();
        assert!(refused.contains("over its limits"), "{refused}");
        assert!(answers[1].is_ok(), "{answers:?}");
        // Never stored as it is: merged into the latest record, fetched for it.
        assert_eq!(store.fetches.load(Ordering::SeqCst), fetches + 1);
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert_eq!(
            (&stored.data["user"], &stored.data["theme"]),
            (&json!("ada"), &json!("dark"))
        );
        assert!(!stored.data.contains_key("cart"), "{:?}", stored.data);
    }

    #[tokio::test]
    async fn a_save_whose_request_ended_while_it_waited_is_stored_with_its_operations() {
        let store = Counted::default();
        let mut new = record(json!({}));
        create(&store, &mut new).await.unwrap();
        let mut loaded = loads(&store, new.id, 2).await.into_iter();
        let first = written(loaded.next().unwrap(), "cart", "a", None);
        let (second, journal) = written_by(loaded.next().unwrap(), "cart", "b", None);
        let left = journal.left();
        let waited = merge::Reduced::of(&second);
        // The second request is dropped before the batch runs: its flush takes its journal back.
        drop(left);

        let answers = Saves::default()
            .store(&store, &[Member::Leading(&first), Member::Waited(&waited)])
            .await;

        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        // Its operation (`b` set) merged into the cart, not its cart written over the first's.
        assert!(stored.data["cart"].get("a").is_some(), "{:?}", stored.data);
        assert!(stored.data["cart"].get("b").is_some(), "{:?}", stored.data);
    }

    #[tokio::test]
    async fn a_member_refused_after_others_were_merged_leaves_their_operations_stored() {
        let store = Counted::default();
        let mut new = record(json!({}));
        create(&store, &mut new).await.unwrap();
        let mut loaded = loads(&store, new.id, 3).await.into_iter();
        let first = written(loaded.next().unwrap(), "cart", "a", None);
        // Alone it fits its budget; merged after the first, the cart does not.
        let second = written(loaded.next().unwrap(), "cart", "b", Some(40));
        let third = written(loaded.next().unwrap(), "wizard", "c", None);
        let fetches = store.fetches.load(Ordering::SeqCst);

        // The second and third waited for the first: the batch holds what their merges read.
        let (second, third) = (merge::Reduced::of(&second), merge::Reduced::of(&third));
        let members = [
            Member::Leading(&first),
            Member::Waited(&second),
            Member::Waited(&third),
        ];
        let answers = Saves::default().store(&store, &members).await;

        assert!(answers[0].is_ok(), "{answers:?}");
        let refused = answers[1].as_ref().unwrap_err().to_string();
        assert!(refused.contains("over its budget"), "{refused}");
        assert!(answers[2].is_ok(), "{answers:?}");
        // The batch started again from the latest record: one more fetch, one compare-and-set.
        assert_eq!(store.fetches.load(Ordering::SeqCst), fetches + 1);
        assert_eq!(store.replaces.load(Ordering::SeqCst), 1);
        let stored = store.store.load(&new.id).await.unwrap().unwrap();
        assert!(stored.data["cart"].get("a").is_some(), "{:?}", stored.data);
        assert!(stored.data["cart"].get("b").is_none(), "{:?}", stored.data);
        assert!(
            stored.data["wizard"].get("c").is_some(),
            "{:?}",
            stored.data
        );
        let (stored, _) = store.store.fetch(&new.id).await.unwrap().unwrap();
        assert!(
            merge::holds_its_versions(&stored),
            "merged in a batch, stored with the versions of its data: {:?}",
            stored.data
        );
    }

    #[tokio::test]
    async fn only_a_members_own_data_stored_as_it_is_hands_what_it_stored_to_the_note_of_its_save()
    {
        let store = Counted::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let loaded = loads(&store, new.id, 2).await;
        let (mut one, mut two) = ([None], [None, None]);

        /// What the batch hands to the note, if it stores.
        fn at_flush(next: &Next<'_>) -> Option<merge::AtFlush> {
            match next {
                Next::Store(record) => record.at_flush(),
                _ => None,
            }
        }

        let alone = merged(&[Member::Leading(&loaded[0])], &mut one, None, &mut None);
        assert!(matches!(alone, Next::Store(_)));
        assert_eq!(
            at_flush(&alone),
            Some(merge::AtFlush::of(
                loaded[0].data.iter().filter(|(key, _)| *key == "user")
            )),
            "what its own data makes, without the bookkeeping"
        );
        let waited = merge::Reduced::of(&loaded[1]);
        let members = [Member::Leading(&loaded[0]), Member::Waited(&waited)];
        let batch = merged(&members, &mut two, None, &mut None);
        assert!(matches!(batch, Next::Store(_)));
        assert!(
            at_flush(&batch).is_none(),
            "the second member was merged in"
        );
        let into_latest = merged(
            &[Member::Leading(&loaded[0])],
            &mut one,
            Some(Some(new.clone())),
            &mut None,
        );
        assert!(matches!(into_latest, Next::Store(_)));
        assert!(
            at_flush(&into_latest).is_none(),
            "merged into the latest record"
        );
    }

    async fn answers_of(
        handles: Vec<tokio::task::JoinHandle<session_store::Result<()>>>,
    ) -> Vec<session_store::Result<()>> {
        let mut answers = Vec::new();
        for handle in handles {
            answers.push(handle.await.unwrap());
        }
        answers
    }

    /// Saves `record` with the key `key{n}` set to `n`, in a task of its own.
    fn spawn_save(
        store: &Arc<Counted>,
        (n, mut record): (usize, Record),
    ) -> tokio::task::JoinHandle<session_store::Result<()>> {
        let store = Arc::clone(store);
        record.data.insert(format!("key{n}"), json!(n));
        tokio::spawn(async move { save(&*store, &record).await })
    }

    /// How many saves of session `id` wait for a batch.
    fn waiting(store: &Counted, id: Id) -> usize {
        store
            .batches()
            .sessions()
            .get(&id)
            .map_or(0, |saves| saves.waiting().len())
    }

    /// Yields until a save is in the store's replace, then until `count` saves of session `id`
    /// wait for it.
    async fn until_waiting(store: &Counted, id: Id, count: usize) {
        while store.replaces.load(Ordering::SeqCst) == 0 || waiting(store, id) < count {
            tokio::task::yield_now().await;
        }
    }

    /// `count` loads of the record under `id`, one after the other.
    async fn loads(store: &Counted, id: Id, count: usize) -> Vec<Record> {
        let mut loaded = Vec::with_capacity(count);
        for _ in 0..count {
            loaded.push(load(store, &id).await.unwrap().expect("stored"));
        }
        loaded
    }

    #[tokio::test]
    async fn a_loaded_session_gone_when_it_saves_is_not_written_back() {
        let store = MemoryStore::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let loaded = load(&store, &new.id).await.unwrap().expect("stored");
        store.delete(&new.id).await.unwrap();

        let err = save(&store, &loaded).await.unwrap_err();
        assert!(err.to_string().contains("ended"), "{err}");
        assert!(store.load(&new.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_expired_record_is_neither_loaded_nor_written_back() {
        let store = MemoryStore::default();
        let mut new = record(json!({ "user": "ada" }));
        create(&store, &mut new).await.unwrap();
        let mut loaded = load(&store, &new.id).await.unwrap().expect("stored");
        // Expire it in the store.
        let (mut stored, token) = store.fetch(&new.id).await.unwrap().unwrap();
        stored.expiry_date = OffsetDateTime::now_utc() - Duration::seconds(1);
        assert!(matches!(
            store
                .replace(ToStore::Merged(stored), Some(&token), false)
                .await
                .unwrap(),
            Replaced::Done(None)
        ));

        assert!(store.load(&new.id).await.unwrap().is_none());
        loaded.data.insert("late".into(), json!(1));
        assert!(save(&store, &loaded).await.is_err());
    }

    #[tokio::test]
    async fn create_never_overwrites_a_stored_session() {
        let store = MemoryStore::default();
        let mut first = record(json!({ "user": "ada" }));
        create(&store, &mut first).await.unwrap();
        let mut second = record(json!({ "user": "eve" }));
        second.id = first.id;
        create(&store, &mut second).await.unwrap();

        assert_ne!(second.id, first.id);
        let stored = store.load(&first.id).await.unwrap().unwrap();
        assert_eq!(stored.data["user"], "ada");
    }
}
