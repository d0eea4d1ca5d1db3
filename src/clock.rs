//! Time is a parameter: everything that reads the time, or waits for it,
//! takes a [`Clock`], so schedules, grace periods and expiry are tested
//! without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;

/// A future that completes at a time of a [`Clock`].
pub(crate) type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of the current time, and of waiting for a later one.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Completes once this clock has reached `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> Wait;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the wall clock
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Wait {
        let wait = at.signed_duration_since(self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that only moves when told to (tests, the simulator's time
/// travel). Waiting on it completes when it is moved past the deadline.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<watch::Sender<DateTime<Utc>>>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(watch::Sender::new(at)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.send_modify(|t| *t = after(*t, by));
    }

    /// Sets the clock.
    pub fn set(&self, at: DateTime<Utc>) {
        self.0.send_replace(at);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Wait {
        let mut rx = self.0.subscribe();
        Box::pin(async move {
            // The sender lives as long as any clone of this clock; if every
            // clone is gone, nobody can move time any more: never complete.
            if rx.wait_for(|t| *t >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// `t + d`, saturating at the ends of the calendar: a hostile date (a
/// payload's, Mixpanel's) or a long duration never panics.
pub(crate) fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < Duration::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `t - d`, saturating at the ends of the calendar.
pub(crate) fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(d).unwrap_or(if d < Duration::zero() {
        DateTime::<Utc>::MAX_UTC
    } else {
        DateTime::<Utc>::MIN_UTC
    })
}

/// `a - b` for durations, saturating.
pub(crate) fn span_between(a: Duration, b: Duration) -> Duration {
    a.checked_sub(&b).unwrap_or(if b < Duration::zero() {
        Duration::MAX
    } else {
        Duration::MIN
    })
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// Another clock, set ahead (or behind) by an adjustable amount: the
/// simulator's, to play a Mixpanel whose clock disagrees with the rotator's.
#[derive(Clone)]
pub(crate) struct SkewedClock {
    inner: SharedClock,
    /// The skew, in milliseconds (positive: ahead of `inner`).
    skew_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl SkewedClock {
    /// `inner`, not skewed yet.
    pub(crate) fn new(inner: SharedClock) -> Self {
        Self {
            inner,
            skew_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        }
    }

    /// Sets the skew (positive: ahead of the inner clock).
    pub(crate) fn set_skew(&self, skew: Duration) {
        self.skew_ms
            .store(skew.num_milliseconds(), std::sync::atomic::Ordering::Relaxed);
    }

    fn skew(&self) -> Duration {
        Duration::milliseconds(self.skew_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> DateTime<Utc> {
        after(self.inner.now(), self.skew())
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Wait {
        self.inner.sleep_until(before(at, self.skew()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_moved_past_their_deadline() {
        let start = DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = ManualClock::new(start);
        let mut wait = c.sleep_until(start + Duration::minutes(10));
        assert!((&mut wait).now_or_never().is_none());
        c.advance(Duration::minutes(9));
        assert!((&mut wait).now_or_never().is_none());
        c.advance(Duration::minutes(1));
        wait.await;
        c.sleep_until(start).await; // already past: at once
    }
}
