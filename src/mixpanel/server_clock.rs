//! Mixpanel's clock, as the `Date` headers of its answers show it.
//!
//! `last_used`, `created` and `expires` are Mixpanel's timestamps; the
//! rotator's rules compare them with its own clock. When the two disagree
//! (a host whose NTP is broken, a VM resumed from a snapshot), "used 6 s
//! ago" could look like "idle for 10 minutes". Every answer's `Date` gives
//! one sample of the offset; the median of the recent ones is the estimate,
//! so one slow answer or one odd proxy does not move it.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// Samples kept (the most recent ones).
const SAMPLES: usize = 7;

/// Below this, an offset is the noise of `Date`'s one-second resolution
/// and of the round trip: taken as none.
pub(crate) const NOISE: Duration = Duration::seconds(2);

/// The estimate of Mixpanel's clock offset (Mixpanel minus ours).
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    /// Offsets in milliseconds, oldest first.
    samples: Mutex<VecDeque<i64>>,
}

impl ServerClock {
    /// Records an answer whose `Date` header read `date`, received when our
    /// clock read `local`. `Date` is truncated to the second, and the answer
    /// took its time to arrive: a sample is up to a second and a round trip
    /// low, well within [`NOISE`] and the rules' margins.
    pub(crate) fn record(&self, date: &str, local: DateTime<Utc>) {
        let Ok(at) = DateTime::parse_from_rfc2822(date.trim()) else {
            return;
        };
        let offset = at.with_timezone(&Utc).signed_duration_since(local).num_milliseconds();
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= SAMPLES {
            s.pop_front();
        }
        s.push_back(offset);
    }

    /// The median offset of the recent answers (Mixpanel's clock minus
    /// ours), zero when within [`NOISE`]; `None` before any answer carried
    /// a readable `Date`.
    pub(crate) fn offset(&self) -> Option<Duration> {
        let v = self.sorted();
        let median = *v.get(v.len() / 2)?;
        let d = Duration::milliseconds(median);
        Some(if d.abs() <= NOISE { Duration::zero() } else { d })
    }

    /// How far apart the recent answers' offsets are: a clock that jumped
    /// (ours or Mixpanel's) shows at its first answer, long before the
    /// median moves.
    pub(crate) fn spread(&self) -> Duration {
        let v = self.sorted();
        match (v.first(), v.last()) {
            (Some(lo), Some(hi)) => Duration::milliseconds(hi.saturating_sub(*lo)),
            _ => Duration::zero(),
        }
    }

    fn sorted(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_median_of_recent_answers_within_noise_is_none() {
        let c = ServerClock::default();
        assert_eq!(c.offset(), None);
        c.record("Sat, 28 Nov 2026 04:00:00 GMT", t("2026-11-28T04:00:00.400Z"));
        assert_eq!(c.offset(), Some(Duration::zero()), "a second's truncation is noise");
        // Mixpanel 10 minutes behind, with one odd answer among them.
        let c = ServerClock::default();
        for _ in 0..4 {
            c.record("Sat, 28 Nov 2026 03:50:00 GMT", t("2026-11-28T04:00:00Z"));
        }
        assert_eq!(c.spread(), Duration::zero());
        c.record("Sat, 28 Nov 2026 05:00:00 GMT", t("2026-11-28T04:00:00Z"));
        assert_eq!(c.offset(), Some(Duration::minutes(-10)));
        assert_eq!(
            c.spread(),
            Duration::minutes(70),
            "one answer 70 minutes off shows at once"
        );
        c.record("not a date", t("2026-11-28T04:00:00Z"));
        assert_eq!(c.offset(), Some(Duration::minutes(-10)));
        // Only the recent ones count: the clock was fixed.
        for _ in 0..SAMPLES {
            c.record("Sat, 28 Nov 2026 04:10:00 GMT", t("2026-11-28T04:10:00Z"));
        }
        assert_eq!(c.offset(), Some(Duration::zero()));
        assert_eq!(c.spread(), Duration::zero());
    }
}
