//! The expiry rules of a namespace and of its keys, in one place.
//!
//! A namespace carries one stamp (see [`STAMP_KEY`](crate::STAMP_KEY)): the instant it expires.
//! What a write does to it is the namespace's [`ExpiryPolicy`]; the rules every policy shares:
//!
//! - under the default policy, a write sets the stamp to the request's now plus the namespace's
//!   expiry (the timeout slides on every write; reads never move it);
//! - a namespace is alive while its stamp is still in the future: at the stamp instant it has
//!   expired;
//! - a namespace whose stamp has passed, or that has no requests left, is dropped when it is
//!   opened; so are the keys whose own [`Lifetime`] is over;
//! - opening counts one request against every count of requests the namespace and its keys hold;
//!   when the response is produced, what was in its last request ends;
//! - a namespace without a stamp is never dropped, and reports itself expired (the seed counts a
//!   missing stamp as the epoch).
//!
//! The in-memory namespace ([`Entry`](crate::entry::Entry)) and the merge of overlapping saves
//! apply these rules; neither makes its own.

use std::num::NonZeroU32;

use time::{Duration, OffsetDateTime};

use crate::{
    error::Error,
    stored::{self, Deadline, KeyDeadline, Stored},
};

/// The expiry a namespace gets when none is given: five minutes, the seed's
/// `seconds_till_expiry = 300`. [`SessionControllers::open`](crate::SessionControllers::open)
/// and [`Namespace::EXPIRY`](crate::Namespace::EXPIRY) use it.
///
/// ```
/// assert_eq!(tower_sessions_controller::DEFAULT_EXPIRY.whole_seconds(), 300);
/// ```
pub const DEFAULT_EXPIRY: Duration = Duration::minutes(5);

/// When a namespace expires: chosen when it is opened
/// ([`SessionControllers::open_with_policy`](crate::SessionControllers::open_with_policy)) or
/// declared by a typed namespace
/// ([`Namespace::EXPIRY_POLICY`](crate::Namespace::EXPIRY_POLICY)).
///
/// Every policy judges with the request's one "now", taken when the request entered the layer:
/// a long request judges and stamps with the same instant, and the order of calls within a
/// request does not change the outcome. Policies that end at an instant keep it in the seed's
/// stamp, so a reader of the seed's layout sees the same deadline; the others store no stamp.
///
/// ```
/// use std::num::NonZeroU32;
/// use time::Duration;
/// use tower_sessions_controller::ExpiryPolicy;
///
/// assert_eq!(
///     ExpiryPolicy::default(),
///     ExpiryPolicy::SlidingOnWrite(Duration::minutes(5))
/// );
/// let three_requests = ExpiryPolicy::Hops(NonZeroU32::new(3).unwrap());
/// # let _ = three_requests;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExpiryPolicy {
    /// Every write sets the stamp to now plus the duration; reads leave it. The seed's rule and
    /// the default, with [`DEFAULT_EXPIRY`].
    SlidingOnWrite(Duration),
    /// Every request that opens the namespace while it is alive sets the stamp to now plus the
    /// duration, whether it reads or writes. Each such request is a store write.
    SlidingOnAccess(Duration),
    /// The first write sets the stamp to now plus the duration; later writes do not extend it.
    /// After the namespace expires (or is purged), the next write starts a new period.
    AfterFirstWrite(Duration),
    /// The namespace expires at this instant, whatever is written. A write at or after it is not
    /// kept: the namespace reads as expired and the flush stores nothing.
    At(OffsetDateTime),
    /// The namespace is readable in this many requests that open it after the last write, then
    /// gone. Each write starts the count again. Each request that opens it is a store write (the
    /// count goes down).
    Hops(NonZeroU32),
    /// The namespace never expires; a write removes any stamp it had.
    Never,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self::SlidingOnWrite(DEFAULT_EXPIRY)
    }
}

/// What a write leaves: the namespace's new deadline, and whether that deadline has already
/// passed (only an [`ExpiryPolicy::At`] instant can be; such a write is not stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Write {
    pub(crate) deadline: Deadline,
    pub(crate) past_deadline: bool,
}

impl ExpiryPolicy {
    /// Refuses durations that would expire a namespace the moment it is written.
    pub(crate) fn validate(self, namespace: &str) -> Result<Self, Error> {
        match self {
            Self::SlidingOnWrite(expiry)
            | Self::SlidingOnAccess(expiry)
            | Self::AfterFirstWrite(expiry)
                if !is_valid(expiry) =>
            {
                Err(Error::InvalidExpiry {
                    namespace: namespace.to_owned(),
                    expiry,
                })
            }
            policy => Ok(policy),
        }
    }

    /// A write at `now` to a namespace whose (live) deadline is `current`: the one write rule of
    /// both controllers.
    pub(crate) fn write(self, current: Deadline, now: OffsetDateTime) -> Write {
        let deadline = match self {
            Self::SlidingOnWrite(expiry) | Self::SlidingOnAccess(expiry) => Deadline {
                stamp: Some(stored::stamp_after(now, expiry)),
                hops: None,
            },
            Self::AfterFirstWrite(expiry) => Deadline {
                stamp: Some(
                    current
                        .stamp
                        .unwrap_or_else(|| stored::stamp_after(now, expiry)),
                ),
                hops: None,
            },
            Self::At(at) => Deadline {
                stamp: Some(stored::representable(at)),
                hops: None,
            },
            Self::Hops(hops) => Deadline {
                stamp: None,
                hops: Some(hops.get()),
            },
            Self::Never => Deadline::default(),
        };
        let past_deadline =
            matches!(self, Self::At(_)) && deadline.stamp.is_some_and(|stamp| stamp <= now);
        Write {
            deadline,
            past_deadline,
        }
    }

    /// The write that opening a namespace which `holds_data` makes, once per request: only a
    /// namespace that slides on access gets one.
    pub(crate) fn on_open(
        self,
        holds_data: bool,
        current: Deadline,
        now: OffsetDateTime,
    ) -> Option<Write> {
        (matches!(self, Self::SlidingOnAccess(_)) && holds_data).then(|| self.write(current, now))
    }

    /// The seed's `is_expired` under this policy: by the stamp (a namespace without one reports
    /// expired), or, for the policies that store none, by whether the namespace holds anything.
    pub(crate) fn is_expired(
        self,
        stamp: Option<OffsetDateTime>,
        holds_data: bool,
        now: OffsetDateTime,
    ) -> bool {
        match self {
            Self::Hops(_) | Self::Never => !holds_data,
            _ => is_expired(stamp, now),
        }
    }
}

/// How long one key of a namespace lives, set with
/// [`SessionController::set_lifetime`](crate::SessionController::set_lifetime). A key whose
/// lifetime is over disappears as if removed; the namespace's own expiry still ends it earlier
/// if it comes first.
///
/// ```
/// use std::num::NonZeroU32;
/// use time::Duration;
/// use tower_sessions_controller::Lifetime;
///
/// let half_a_minute = Lifetime::For(Duration::seconds(30));
/// let next_request_only = Lifetime::Hops(NonZeroU32::MIN);
/// # let _ = (half_a_minute, next_request_only);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lifetime {
    /// Until the request's now plus this duration; readable while that instant is in the future.
    For(Duration),
    /// Readable in this many later requests that open the namespace, then gone.
    Hops(NonZeroU32),
}

impl Lifetime {
    /// The deadline a key gets when this lifetime is set at `now`.
    pub(crate) fn deadline(self, now: OffsetDateTime) -> KeyDeadline {
        match self {
            Self::For(duration) => KeyDeadline::Until(stored::stamp_after(now, duration)),
            Self::Hops(hops) => KeyDeadline::Hops(hops.get()),
        }
    }
}

/// Whether an expiry can be used: a namespace that expires the moment it is written is a mistake.
pub(crate) fn is_valid(expiry: Duration) -> bool {
    expiry.is_positive()
}

/// The seed's `is_expired`: true unless the stamp is still in the future.
fn is_expired(stamp: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    stamp.is_none_or(|stamp| stamp <= now)
}

/// Whether a stored namespace is dropped when it is opened: it has a stamp, and the stamp has
/// passed.
fn is_dropped_on_open(stamp: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    stamp.is_some_and(|stamp| stamp <= now)
}

/// Whether a namespace with `deadline` has ended for a request at `now`: its stamp has passed,
/// or it has no requests left.
fn has_ended(deadline: Deadline, now: OffsetDateTime) -> bool {
    is_dropped_on_open(deadline.stamp, now) || deadline.hops == Some(0)
}

/// Whether a key with `deadline` is gone for a request at `now`.
fn key_has_ended(deadline: KeyDeadline, now: OffsetDateTime) -> bool {
    match deadline {
        KeyDeadline::Until(until) => until <= now,
        KeyDeadline::Hops(left) => left == 0,
    }
}

/// What a request at `now` finds of a stored namespace: `None` (and `stored` emptied) if the
/// namespace has ended; otherwise the keys whose lifetime is over, dropped from `stored`.
pub(crate) fn drop_ended(stored: &mut Stored, now: OffsetDateTime) -> Option<Vec<String>> {
    if has_ended(stored.deadline, now) {
        *stored = Stored::default();
        return None;
    }
    let over: Vec<String> = stored
        .lifetimes
        .iter()
        .filter(|(_, deadline)| key_has_ended(**deadline, now))
        .map(|(key, _)| key.clone())
        .collect();
    for key in &over {
        stored.lifetimes.remove(key);
        stored.map.remove(key);
    }
    if !over.is_empty() && stored.map.is_empty() {
        // Its last key is gone, and the namespace with it.
        stored.deadline = Deadline::default();
    }
    Some(over)
}

/// What opening a stored namespace found and changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Opening {
    /// The namespace had ended: the request finds it empty.
    pub(crate) ended: bool,
    /// The keys whose lifetime was over.
    pub(crate) expired_keys: Vec<String>,
    /// A request was counted against the namespace's own count.
    pub(crate) counted: bool,
    /// The keys whose count of requests went down.
    pub(crate) counted_keys: Vec<String>,
}

impl Opening {
    /// Whether opening changed what is stored.
    pub(crate) fn changed(&self) -> bool {
        self.ended || self.counted || !self.expired_keys.is_empty() || !self.counted_keys.is_empty()
    }
}

/// Opening `stored` at `now`: what has ended is dropped, and this request is counted against
/// every count of requests left.
pub(crate) fn open(stored: &mut Stored, now: OffsetDateTime) -> Opening {
    let Some(expired_keys) = drop_ended(stored, now) else {
        return Opening {
            ended: true,
            ..Opening::default()
        };
    };
    // Not ended, so at least one request was left: this one.
    let counted = match &mut stored.deadline.hops {
        Some(hops) => {
            *hops = hops.saturating_sub(1);
            true
        }
        None => false,
    };
    let mut counted_keys = Vec::new();
    for (key, deadline) in &mut stored.lifetimes {
        if let KeyDeadline::Hops(hops) = deadline {
            *hops = hops.saturating_sub(1);
            counted_keys.push(key.clone());
        }
    }
    Opening {
        ended: false,
        expired_keys,
        counted,
        counted_keys,
    }
}

/// What ends when the response is produced: keys in their last request go, and the whole
/// namespace ends if it was in its last request or written under a deadline that has passed.
/// Returns whether the whole namespace ended.
pub(crate) fn end_request(stored: &mut Stored, written_past_deadline: bool) -> bool {
    let last: Vec<String> = stored
        .lifetimes
        .iter()
        .filter(|(_, deadline)| **deadline == KeyDeadline::Hops(0))
        .map(|(key, _)| key.clone())
        .collect();
    for key in &last {
        stored.lifetimes.remove(key);
        stored.map.remove(key);
    }
    let ended = stored.deadline.hops == Some(0) || written_past_deadline;
    if ended {
        stored.map.clear();
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-25 17:00 UTC);

    fn stored(map: serde_json::Value, deadline: Deadline) -> Stored {
        Stored {
            map: map.as_object().cloned().unwrap_or_default(),
            deadline,
            lifetimes: Default::default(),
        }
    }

    #[test]
    fn at_the_stamp_the_namespace_has_expired() {
        let stamp = NOW;
        let just_before = stamp - Duration::nanoseconds(1);
        assert!(!is_expired(Some(stamp), just_before));
        assert!(is_expired(Some(stamp), stamp));
        assert!(!is_dropped_on_open(Some(stamp), just_before));
        assert!(is_dropped_on_open(Some(stamp), stamp));
    }

    #[test]
    fn without_a_stamp_a_namespace_reports_expired_but_is_kept() {
        assert!(is_expired(None, NOW));
        assert!(!is_dropped_on_open(None, NOW));
    }

    #[test]
    fn policies_without_a_stamp_judge_expiry_by_the_data() {
        let hops = ExpiryPolicy::Hops(NonZeroU32::MIN);
        assert!(hops.is_expired(None, false, NOW));
        assert!(!hops.is_expired(None, true, NOW));
        assert!(ExpiryPolicy::default().is_expired(None, true, NOW));
    }

    #[test]
    fn after_first_write_keeps_a_live_stamp_and_sliding_moves_it() {
        let earlier = Deadline {
            stamp: Some(NOW + Duration::seconds(10)),
            hops: None,
        };
        let minute = Duration::minutes(1);
        assert_eq!(
            ExpiryPolicy::AfterFirstWrite(minute)
                .write(earlier, NOW)
                .deadline,
            earlier
        );
        let slid = ExpiryPolicy::SlidingOnWrite(minute).write(earlier, NOW);
        assert_eq!(slid.deadline.stamp, Some(stored::stamp_after(NOW, minute)));
        assert!(!slid.past_deadline);
    }

    #[test]
    fn a_write_at_or_after_an_at_instant_is_past_its_deadline() {
        let at = ExpiryPolicy::At(NOW);
        assert!(at.write(Deadline::default(), NOW).past_deadline);
        assert!(
            !at.write(Deadline::default(), NOW - Duration::seconds(1))
                .past_deadline
        );
    }

    #[test]
    fn only_sliding_on_access_writes_when_opened_and_only_with_data() {
        let minute = Duration::minutes(1);
        let access = ExpiryPolicy::SlidingOnAccess(minute);
        assert!(access.on_open(true, Deadline::default(), NOW).is_some());
        assert!(access.on_open(false, Deadline::default(), NOW).is_none());
        assert!(ExpiryPolicy::SlidingOnWrite(minute)
            .on_open(true, Deadline::default(), NOW)
            .is_none());
    }

    #[test]
    fn opening_an_ended_namespace_empties_it() {
        let mut ended = stored(
            json!({ "a": 1 }),
            Deadline {
                stamp: Some(NOW),
                hops: None,
            },
        );
        let opening = open(&mut ended, NOW);
        assert!(opening.ended && opening.changed());
        assert_eq!(ended, Stored::default());
    }

    #[test]
    fn opening_drops_expired_keys_and_counts_this_request() {
        let mut namespace = stored(
            json!({ "gone": 1, "flash": 2, "kept": 3 }),
            Deadline {
                stamp: None,
                hops: Some(2),
            },
        );
        namespace.lifetimes = [
            ("gone".to_owned(), KeyDeadline::Until(NOW)),
            ("flash".to_owned(), KeyDeadline::Hops(1)),
        ]
        .into();
        let opening = open(&mut namespace, NOW);
        assert_eq!(opening.expired_keys, ["gone"]);
        assert_eq!(opening.counted_keys, ["flash"]);
        assert!(opening.counted);
        assert_eq!(namespace.deadline.hops, Some(1));
        assert_eq!(namespace.lifetimes["flash"], KeyDeadline::Hops(0));
        assert!(!namespace.map.contains_key("gone"));
    }

    #[test]
    fn a_namespace_whose_last_key_expired_loses_its_stamp() {
        let mut namespace = stored(
            json!({ "gone": 1 }),
            Deadline {
                stamp: Some(NOW + Duration::minutes(1)),
                hops: None,
            },
        );
        namespace
            .lifetimes
            .insert("gone".to_owned(), KeyDeadline::Until(NOW));
        assert_eq!(
            drop_ended(&mut namespace, NOW),
            Some(vec!["gone".to_owned()])
        );
        assert_eq!(namespace.deadline, Deadline::default());
    }

    #[test]
    fn an_unchanged_opening_changes_nothing() {
        let mut namespace = stored(json!({ "a": 1 }), Deadline::default());
        let opening = open(&mut namespace, NOW);
        assert!(!opening.changed());
    }

    #[test]
    fn at_the_end_of_a_request_keys_and_namespaces_in_their_last_request_go() {
        let mut namespace = stored(json!({ "flash": 1, "kept": 2 }), Deadline::default());
        namespace
            .lifetimes
            .insert("flash".to_owned(), KeyDeadline::Hops(0));
        assert!(!end_request(&mut namespace, false));
        assert_eq!(namespace.map, *json!({ "kept": 2 }).as_object().unwrap());

        let mut last = stored(
            json!({ "a": 1 }),
            Deadline {
                stamp: None,
                hops: Some(0),
            },
        );
        assert!(end_request(&mut last, false));
        assert!(last.map.is_empty());
        let mut past = stored(json!({ "a": 1 }), Deadline::default());
        assert!(end_request(&mut past, true));
    }
}
