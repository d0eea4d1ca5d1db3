//! When each integration is next due: from what its last pass planned (the
//! next rotation or deletion), a periodic resync, or, after a failure, a
//! capped exponential backoff for that integration alone.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use crate::clock::after;
use crate::policy::Policy;
use crate::rotation::Report;

/// First retry delay after a failure; doubled each time.
pub(crate) const BACKOFF_BASE: Duration = Duration::seconds(30);
/// Longest retry delay.
pub(crate) const BACKOFF_CAP: Duration = Duration::hours(1);
/// Shortest sleep between passes.
pub(crate) const MIN_SLEEP: Duration = Duration::seconds(1);

/// The delay before retry number `failures` (1-based): 30s doubling to 1h,
/// spread by ±20% with `jitter` in [0, 1) so failing integrations do not
/// retry in step; never above the cap.
pub(crate) fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = BACKOFF_BASE
        .num_seconds()
        .saturating_mul(1i64 << failures.saturating_sub(1).min(20));
    let base = exp.min(BACKOFF_CAP.num_seconds()) as f64;
    let spread = base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    Duration::seconds(spread.min(BACKOFF_CAP.num_seconds() as f64) as i64)
}

/// How the daemon paces passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// A pass at least this often (`[daemon] resync_interval`).
    pub(crate) resync: Duration,
    /// This instance's own delay after each rotation deadline (a random part
    /// of `[daemon] spread`, fixed per process): replicas sharing a primary
    /// wake one after the other, and the later ones see the first's publish.
    pub(crate) offset: Duration,
}

impl Timing {
    /// A resync interval, and no offset.
    #[cfg(test)]
    pub(crate) fn resync(resync: Duration) -> Self {
        Self {
            resync,
            offset: Duration::zero(),
        }
    }
}

/// When an integration is next due, after a pass at `now` produced `report`.
/// `failures` counts consecutive failed passes, this one included. A failing
/// integration backs off, but never past its own next deadline (an
/// account in use elsewhere, reported at every pass, must not delay its
/// rotations and deletions).
pub(crate) fn next_due(
    report: &Report,
    now: DateTime<Utc>,
    failures: u32,
    timing: &Timing,
    jitter: f64,
) -> DateTime<Utc> {
    let rotation = report.plan.next_rotation().map(|t| after(t, timing.offset));
    let deletion = report.plan.delete_later.iter().filter_map(|d| d.due).min();
    let next = [rotation, deletion].into_iter().flatten().min();
    if failures > 0 {
        let retry = after(now, backoff(failures, jitter));
        let next = next.filter(|t| *t > now);
        return next.map_or(retry, |t| t.min(retry)).max(after(now, MIN_SLEEP));
    }
    // Something changed: look again right away, from the new state.
    if report.rotated.is_some() || !report.deleted.is_empty() {
        return after(now, MIN_SLEEP);
    }
    let resync_at = after(now, timing.resync);
    let due = next.map_or(resync_at, |t| t.min(resync_at));
    due.max(after(now, MIN_SLEEP))
}

#[derive(Debug, Clone)]
struct Slot {
    due: DateTime<Utc>,
    failures: u32,
    /// After a failure: when its backoff ends. A pass before then (asked by
    /// `POST /-/resync`) only re-reads: it starts no rotation.
    retry_at: Option<DateTime<Utc>>,
}

/// Due times of every integration.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    slots: BTreeMap<String, Slot>,
}

impl Scheduler {
    /// Every integration of `policy` due at `now` (the daemon passes its
    /// start plus its share of `spread`); integrations no longer in the
    /// policy are forgotten, known ones keep their failure count.
    pub(crate) fn reset(&mut self, policy: &Policy, now: DateTime<Utc>) {
        let names: BTreeSet<&str> = policy.integrations.iter().map(|i| i.name.as_str()).collect();
        self.slots.retain(|k, _| names.contains(k.as_str()));
        for n in names {
            let slot = self.slots.entry(n.to_string()).or_insert(Slot {
                due: now,
                failures: 0,
                retry_at: None,
            });
            // A reload is the operator's: it may retry at once.
            slot.due = now;
            slot.retry_at = None;
        }
    }

    /// Of `due`, the integrations still in failure backoff at `now`: a pass
    /// now (a resync asked over HTTP) must not start their rotation.
    pub(crate) fn backing_off(&self, due: &BTreeSet<String>, now: DateTime<Utc>) -> BTreeSet<String> {
        due.iter()
            .filter(|n| self.slots.get(*n).and_then(|s| s.retry_at).is_some_and(|r| r > now))
            .cloned()
            .collect()
    }

    /// The integrations due at `now`.
    pub(crate) fn due(&self, now: DateTime<Utc>) -> BTreeSet<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The earliest due time.
    pub(crate) fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.slots.values().map(|s| s.due).min()
    }

    /// When to wake up next, seen from `now`: the earliest due time, at least
    /// [`MIN_SLEEP`] and at most `resync` away.
    pub(crate) fn wake_at(&self, now: DateTime<Utc>, resync: Duration) -> DateTime<Utc> {
        let wake = self.next_wake().unwrap_or(after(now, resync));
        after(
            now,
            wake.signed_duration_since(now).clamp(MIN_SLEEP, resync.max(MIN_SLEEP)),
        )
    }

    /// Records a pass's reports; those of `held` (in backoff, only
    /// re-read) keep their failure count and are due when their backoff ends.
    pub(crate) fn update(&mut self, reports: &[Report], now: DateTime<Utc>, timing: &Timing, held: &BTreeSet<String>) {
        for r in reports {
            let slot = self.slots.entry(r.integration.clone()).or_insert(Slot {
                due: now,
                failures: 0,
                retry_at: None,
            });
            if let Some(retry) = slot.retry_at.filter(|_| held.contains(&r.integration)) {
                let other = next_due(r, now, 0, timing, 0.5);
                slot.due = retry.min(other).max(after(now, MIN_SLEEP));
                continue;
            }
            slot.failures = if r.failed() { slot.failures.saturating_add(1) } else { 0 };
            slot.due = next_due(r, now, slot.failures, timing, rand::random::<f64>());
            slot.retry_at = (slot.failures > 0).then_some(slot.due);
        }
    }

    /// Makes each of `names` this scheduler knows due at `at` at the latest;
    /// how many it knew.
    pub(crate) fn hurry<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, at: DateTime<Utc>) -> usize {
        let mut known = 0usize;
        for n in names {
            if let Some(slot) = self.slots.get_mut(n) {
                slot.due = slot.due.min(at);
                known = known.saturating_add(1);
            }
        }
        known
    }

    /// When `integration` is next due.
    #[cfg(test)]
    pub(crate) fn due_of(&self, integration: &str) -> Option<DateTime<Utc>> {
        self.slots.get(integration).map(|s| s.due)
    }

    /// Every integration's due time.
    pub(crate) fn due_times(&self) -> BTreeMap<String, DateTime<Utc>> {
        self.slots.iter().map(|(k, s)| (k.clone(), s.due)).collect()
    }
}

#[cfg(test)]
mod tests;
