//! Precise delays for `--latency`: one thread that wakes each waiting
//! answer at its deadline, to within about a tenth of a millisecond.
//!
//! tokio's timer rounds a deadline up to its next millisecond tick and its
//! driver wakes later still: a 20 ms sleep answered in 21.5 ms on average
//! here, with a tail to 30 ms, which made every latency-bound figure of
//! `scripts/bench.sh` measure the simulator's timer. A condition variable's
//! timed wait (a futex) is precise to the kernel's timer slack (50 us).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::oneshot;

/// Deadlines waiting, earliest first, each with the answer it releases.
#[derive(Default)]
struct Timers {
    due: Mutex<BinaryHeap<Reverse<Waiting>>>,
    changed: Condvar,
}

struct Waiting {
    at: Instant,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// Waits until `delay` after `start`.
pub(super) async fn after(start: Instant, delay: std::time::Duration) {
    let (Some(deadline), Some(timers)) = (start.checked_add(delay), timers()) else {
        // No timer thread (it could not be started) or a deadline past the
        // end of time: tokio's timer, less precise.
        tokio::time::sleep(delay).await;
        return;
    };
    if deadline <= Instant::now() {
        return;
    }
    let (wake, woken) = oneshot::channel();
    timers
        .due
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Reverse(Waiting { at: deadline, wake }));
    timers.changed.notify_one();
    let _ = woken.await;
}

/// The process's timer thread, started on first use.
fn timers() -> Option<&'static Timers> {
    static TIMERS: OnceLock<Option<&'static Timers>> = OnceLock::new();
    *TIMERS.get_or_init(|| {
        let timers: &'static Timers = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("simulator-latency".into())
            .spawn(move || run(timers))
            .ok()
            .map(|_| timers)
    })
}

fn run(timers: &Timers) {
    let mut due = timers.due.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        while due.peek().is_some_and(|Reverse(w)| w.at <= now) {
            if let Some(Reverse(w)) = due.pop() {
                let _ = w.wake.send(());
            }
        }
        due = match due.peek() {
            Some(Reverse(next)) => {
                let wait = next.at.saturating_duration_since(now);
                timers
                    .changed
                    .wait_timeout(due, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => timers.changed.wait(due).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_each_at_its_deadline_in_any_order() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let (a, b, c) = tokio::join!(after(start, ms(30)), after(start, ms(10)), after(start, ms(20)));
        let _ = (a, b, c);
        let took = start.elapsed();
        assert!(took >= ms(30), "{took:?}");
        assert!(took < ms(200), "{took:?}");
        after(start, ms(0)).await;
    }
}
