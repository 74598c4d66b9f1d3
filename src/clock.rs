//! Where "now" comes from: the [`Clock`] the layer asks once per request.
//!
//! Every expiry decision in a request (is a stored namespace still alive, what stamp does a write
//! set) uses one instant, taken from the layer's clock when the request enters the layer. A long
//! request therefore judges and stamps with the same time. Production code uses [`SystemClock`];
//! tests use [`ManualClock`] and move time by hand instead of sleeping.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use time::{Duration, OffsetDateTime};

/// A source of the current instant for [`SessionControllerLayer`](crate::SessionControllerLayer).
///
/// # Example
///
/// ```
/// use time::OffsetDateTime;
/// use tower_sessions_controller::Clock;
///
/// /// A clock frozen at the Unix epoch.
/// struct Epoch;
///
/// impl Clock for Epoch {
///     fn now(&self) -> OffsetDateTime {
///         OffsetDateTime::UNIX_EPOCH
///     }
/// }
///
/// assert_eq!(Epoch.now().unix_timestamp(), 0);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock: [`OffsetDateTime::now_utc`]. The layer's default.
///
/// # Example
///
/// ```
/// use tower_sessions_controller::{Clock, SystemClock};
///
/// assert!(SystemClock.now().year() >= 2024);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to, for tests of expiry.
///
/// Clones share one time: give one clone to the layer with
/// [`SessionControllerLayer::with_clock`](crate::SessionControllerLayer::with_clock) and keep the
/// other in the test to [`advance`](ManualClock::advance) it between requests.
///
/// # Example
///
/// ```
/// use time::{macros::datetime, Duration};
/// use tower_sessions_controller::{Clock, ManualClock, SessionControllerLayer};
///
/// let clock = ManualClock::new(datetime!(2026-01-01 12:00 UTC));
/// let layer = SessionControllerLayer::new().with_clock(clock.clone());
///
/// clock.advance(Duration::minutes(5));
/// assert_eq!(clock.now(), datetime!(2026-01-01 12:05 UTC));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// A clock standing at `at`.
    ///
    /// ```
    /// use time::macros::datetime;
    /// use tower_sessions_controller::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
    /// assert_eq!(clock.now(), datetime!(2026-01-01 0:00 UTC));
    /// ```
    pub fn new(at: OffsetDateTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(at)),
        }
    }

    /// Moves this clock and all its clones to `at` (forwards or backwards).
    ///
    /// # Example
    ///
    /// ```
    /// use time::macros::datetime;
    /// use tower_sessions_controller::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
    /// clock.set(datetime!(2025-06-30 0:00 UTC));
    /// assert_eq!(clock.now(), datetime!(2025-06-30 0:00 UTC));
    /// ```
    pub fn set(&self, at: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Moves this clock and all its clones by `by` (which may be negative).
    ///
    /// # Example
    ///
    /// ```
    /// use time::{macros::datetime, Duration};
    /// use tower_sessions_controller::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
    /// clock.clone().advance(Duration::nanoseconds(1));
    /// assert_eq!(clock.now(), datetime!(2026-01-01 0:00:00.000_000_001 UTC));
    /// ```
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        match now.checked_add(by) {
            Some(moved) => *now = moved,
            None => {
                tracing::warn!(%by, "ManualClock::advance past the representable range; clock unchanged")
            }
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}
