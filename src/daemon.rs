//! `run`: the long-lived loop over the reconcile engine.
//!
//! Each integration has a due time; the loop sleeps until the earliest one
//! (no polling), runs a pass over the integrations that are due, and
//! computes their next due time from what the pass saw ([`next_due`]): the
//! next rotation (expiry minus `renew_before`, or a schedule slot plus its
//! jitter), a retiring account's grace end or an orphan's `orphan_after`, a
//! periodic resync, or, after a failure, a capped exponential backoff for
//! that integration alone. SIGTERM/SIGINT stop it (the step in flight
//! finishes, bounded by `--shutdown-timeout`), SIGHUP reloads the policy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Duration, Utc};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Exit;
use crate::clock::{SharedClock, SystemClock};
use crate::metrics::Metrics;
use crate::notify::{notify, status_line, watchdog_interval};
use crate::policy::Policy;
use crate::rotation::{Engine, PassOptions, Report, Step};
use crate::server::Health;

/// First retry delay after a failure; doubled each time.
pub const BACKOFF_BASE: Duration = Duration::seconds(30);
/// Longest retry delay.
pub const BACKOFF_CAP: Duration = Duration::hours(1);
/// Shortest sleep between passes.
const MIN_SLEEP: Duration = Duration::seconds(1);

/// The delay before retry number `failures` (1-based): 30s doubling to 1h,
/// spread by ±20% with `jitter` in [0, 1) so failing integrations do not
/// retry in step; never above the cap.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = BACKOFF_BASE
        .num_seconds()
        .saturating_mul(1i64 << failures.saturating_sub(1).min(20));
    let base = exp.min(BACKOFF_CAP.num_seconds()) as f64;
    let spread = base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    Duration::seconds(spread.min(BACKOFF_CAP.num_seconds() as f64) as i64)
}

/// When an integration is next due, after a pass at `now` produced `report`.
/// `failures` counts consecutive failed passes, this one included.
pub fn next_due(report: &Report, now: DateTime<Utc>, failures: u32, resync: Duration, jitter: f64) -> DateTime<Utc> {
    if failures > 0 {
        return now + backoff(failures, jitter);
    }
    // Something changed: look again right away, from the new state.
    if report.rotated.is_some() || !report.deleted.is_empty() {
        return now + MIN_SLEEP;
    }
    let d = &report.decision;
    let mut due = now + resync;
    for t in d.next_rotation.into_iter().chain(d.delete_later.iter().map(|x| x.due)) {
        if t != DateTime::<Utc>::MAX_UTC {
            due = due.min(t);
        }
    }
    due.max(now + MIN_SLEEP)
}

#[derive(Debug, Clone)]
struct Slot {
    due: DateTime<Utc>,
    failures: u32,
}

/// Due times of every integration.
#[derive(Debug, Default)]
pub struct Scheduler {
    slots: BTreeMap<String, Slot>,
}

impl Scheduler {
    /// Every integration of `policy` due at `now`; integrations no longer in
    /// the policy are forgotten, known ones keep their failure count.
    pub fn reset(&mut self, policy: &Policy, now: DateTime<Utc>) {
        let names: BTreeSet<&str> = policy.integrations.iter().map(|i| i.name.as_str()).collect();
        self.slots.retain(|k, _| names.contains(k.as_str()));
        for n in names {
            let slot = self
                .slots
                .entry(n.to_string())
                .or_insert(Slot { due: now, failures: 0 });
            slot.due = now;
        }
    }

    /// The integrations due at `now`.
    pub fn due(&self, now: DateTime<Utc>) -> BTreeSet<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The earliest due time.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.slots.values().map(|s| s.due).min()
    }

    /// Records a pass's reports.
    pub fn update(&mut self, reports: &[Report], now: DateTime<Utc>, resync: Duration) {
        for r in reports {
            let slot = self
                .slots
                .entry(r.integration.clone())
                .or_insert(Slot { due: now, failures: 0 });
            slot.failures = if r.failed() { slot.failures.saturating_add(1) } else { 0 };
            slot.due = next_due(r, now, slot.failures, resync, rand::random::<f64>());
        }
    }

    /// When `integration` is next due.
    pub fn due_of(&self, integration: &str) -> Option<DateTime<Utc>> {
        self.slots.get(integration).map(|s| s.due)
    }
}

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub shutdown_timeout: std::time::Duration,
}

fn load(path: &std::path::Path, clock: &SharedClock, metrics: &Arc<Metrics>) -> Result<(Arc<Policy>, Engine), String> {
    let policy =
        Arc::new(Policy::load(path).map_err(|e| e.all().iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))?);
    let engine = Engine::from_policy(policy.clone(), clock.clone()).map_err(|e| e.to_string())?;
    Ok((policy, engine.with_metrics(metrics.clone())))
}

fn summary(reports: &[Report], sched: &Scheduler) -> String {
    let failed = reports.iter().filter(|r| r.failed()).count();
    let next = sched
        .next_wake()
        .map(crate::rotation::rfc3339)
        .unwrap_or_else(|| "-".into());
    format!(
        "{} integration(s) in the last pass, {failed} failing; next pass {next}",
        reports.len()
    )
}

/// Whether the pass reached Mixpanel and every sink.
fn reached_everything(reports: &[Report]) -> bool {
    reports.iter().all(|r| {
        !r.errors
            .iter()
            .any(|e| matches!(e.step, Step::ListAccounts | Step::ReadSink))
    })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Exit {
    let clock: SharedClock = Arc::new(SystemClock);
    let metrics = Metrics::shared();
    let health = Arc::new(Health::default());
    let (mut policy, mut engine) = match load(&opts.config, &clock, &metrics) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: policy {}: {e}", opts.config.display());
            return Exit::Usage;
        }
    };
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("error: cannot install signal handlers");
            return Exit::Failed;
        }
    };
    let _server = match policy.listen {
        Some(addr) => match crate::server::serve(addr, metrics.clone(), health.clone()).await {
            Ok((local, task)) => {
                tracing::info!(listen = %local, "Serving /metrics, /healthz, /readyz.");
                Some(AbortOnDrop(task))
            }
            Err(e) => {
                eprintln!("error: cannot listen on {addr} (`server.listen`): {e}");
                return Exit::Failed;
            }
        },
        None => None,
    };
    let _watchdog = watchdog_interval().map(|every| {
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify("WATCHDOG=1");
            }
        }))
    });

    let stop = Arc::new(AtomicBool::new(false));
    let mut sched = Scheduler::default();
    sched.reset(&policy, clock.now());
    tracing::info!(
        integrations = policy.integrations.len(),
        "Started; the first pass runs now."
    );
    notify(&format!("READY=1\n{}", status_line("started; first pass running")));

    loop {
        let now = clock.now();
        let due = sched.due(now);
        if !due.is_empty() {
            let pass_opts = PassOptions {
                only: Some(due),
                stop: Some(stop.clone()),
                ..Default::default()
            };
            let pass = engine.pass(&pass_opts);
            tokio::pin!(pass);
            let reports = tokio::select! {
                r = &mut pass => r,
                _ = term.recv() => return shut_down(pass, &stop, opts.shutdown_timeout).await,
                _ = int.recv() => return shut_down(pass, &stop, opts.shutdown_timeout).await,
            };
            for r in &reports {
                metrics.pass(r);
                for e in &r.errors {
                    tracing::error!(integration = %r.integration, step = ?e.step, "{e}");
                }
            }
            let after = clock.now();
            sched.update(&reports, after, policy.resync_interval);
            for r in &reports {
                // After a rotation the decision predates it: the new account's renewal time counts.
                let renewed = r
                    .rotated
                    .as_ref()
                    .and_then(|x| x.expires)
                    .zip(policy.integration(&r.integration))
                    .map(|(e, i)| e - i.renew_before);
                metrics.next_rotation(&r.integration, renewed.or(r.decision.next_rotation));
            }
            health.ready.store(reached_everything(&reports), Ordering::SeqCst);
            notify(&status_line(&summary(&reports, &sched)));
            continue;
        }
        let wake = sched.next_wake().unwrap_or(now + policy.resync_interval);
        let sleep = (wake - now)
            .clamp(MIN_SLEEP, policy.resync_interval)
            .to_std()
            .unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify("RELOADING=1");
                match load(&opts.config, &clock, &metrics) {
                    Ok((p, e)) => {
                        if p.listen != policy.listen {
                            tracing::warn!("`server.listen` changed; it takes effect at the next restart.");
                        }
                        policy = p;
                        engine = e;
                        sched.reset(&policy, clock.now());
                        metrics.reload(true);
                        tracing::info!(integrations = policy.integrations.len(), "Policy reloaded.");
                    }
                    Err(e) => {
                        metrics.reload(false);
                        tracing::error!(config = %opts.config.display(), "Policy reload rejected, the previous policy stays in force: {e}");
                    }
                }
                notify(&format!("READY=1\n{}", status_line("policy reload handled")));
            }
        }
    }
    notify("STOPPING=1");
    tracing::info!("Stopped.");
    Exit::Ok
}

/// SIGTERM/SIGINT during a pass: start nothing new, let what is in flight
/// finish (bounded), exit.
async fn shut_down(
    pass: impl std::future::Future<Output = Vec<Report>>,
    stop: &AtomicBool,
    timeout: std::time::Duration,
) -> Exit {
    stop.store(true, Ordering::SeqCst);
    notify(&format!(
        "STOPPING=1\n{}",
        status_line("stopping: finishing the step in flight")
    ));
    tracing::info!(
        timeout_s = timeout.as_secs(),
        "Stopping; letting the step in flight finish."
    );
    match tokio::time::timeout(timeout, pass).await {
        Ok(_) => {
            tracing::info!("Stopped.");
            Exit::Ok
        }
        Err(_) => {
            tracing::error!(
                "The step in flight did not finish within --shutdown-timeout; an account it created may be left unpublished, and the next pass deletes it as an orphan."
            );
            Exit::Failed
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::decide::{DeleteReason, Disposal};
    use crate::rotation::{Decision, StepError};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn report(decision: Decision) -> Report {
        Report {
            integration: "etl".into(),
            sink: "s".into(),
            path: "p".into(),
            current: None,
            decision,
            deleted: vec![],
            rotated: None,
            plan: vec![],
            warnings: vec![],
            errors: vec![],
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff(1, 0.5), Duration::seconds(30));
        assert_eq!(backoff(2, 0.5), Duration::seconds(60));
        assert_eq!(backoff(3, 0.5), Duration::seconds(120));
        for n in 1..40 {
            for j in [0.0, 0.3, 0.999] {
                let b = backoff(n, j);
                assert!(b <= BACKOFF_CAP && b >= Duration::seconds(24), "{n} {j}: {b}");
            }
        }
        assert_eq!(backoff(30, 0.5), BACKOFF_CAP);
        assert!(backoff(1, 0.0) < backoff(1, 0.99), "jitter spreads retries");
    }

    #[test]
    fn next_due_is_the_earliest_deadline() {
        let now = t("2026-11-28T04:00:00Z");
        let resync = Duration::minutes(10);
        // Nothing pending: the resync.
        assert_eq!(
            next_due(&report(Decision::default()), now, 0, resync, 0.5),
            now + resync
        );
        // A rotation due in 5 minutes (expiry - renew_before, or a slot + jitter).
        let d = Decision {
            next_rotation: Some(now + Duration::minutes(5)),
            ..Default::default()
        };
        assert_eq!(next_due(&report(d), now, 0, resync, 0.5), now + Duration::minutes(5));
        // A grace end or an orphan deadline in 2 minutes.
        let d = Decision {
            next_rotation: Some(now + Duration::days(3)),
            delete_later: vec![Disposal {
                id: 1,
                username: "u".into(),
                reason: DeleteReason::Retiring,
                due: now + Duration::minutes(2),
            }],
            ..Default::default()
        };
        assert_eq!(
            next_due(&report(d.clone()), now, 0, resync, 0.5),
            now + Duration::minutes(2)
        );
        // A failure: back off, whatever else is pending.
        let mut failed = report(d);
        failed.errors.push(StepError {
            integration: "etl".into(),
            step: Step::Create,
            message: "x".into(),
        });
        assert_eq!(next_due(&failed, now, 1, resync, 0.5), now + Duration::seconds(30));
        assert_eq!(next_due(&failed, now, 3, resync, 0.5), now + Duration::seconds(120));
        // Deadlines in the past never make it spin.
        let d = Decision {
            next_rotation: Some(now - Duration::hours(1)),
            ..Default::default()
        };
        assert_eq!(next_due(&report(d), now, 0, resync, 0.5), now + MIN_SLEEP);
    }

    #[test]
    fn a_failing_integration_does_not_delay_the_others() {
        let p = crate::policy::test_policy(
            "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\n\
             [[integrations]]\nname = \"ci\"\nsink = \"f\"\npath = \"ci.json\"\nadopt = 6\n",
        );
        let now = t("2026-11-28T04:00:00Z");
        let mut s = Scheduler::default();
        s.reset(&p, now);
        assert_eq!(s.due(now).len(), 2);
        let mut bad = report(Decision::default());
        bad.errors.push(StepError {
            integration: "etl".into(),
            step: Step::Verify,
            message: "x".into(),
        });
        let mut good = report(Decision {
            next_rotation: Some(now + Duration::seconds(10)),
            ..Default::default()
        });
        good.integration = "ci".into();
        s.update(&[bad.clone(), good.clone()], now, Duration::minutes(10));
        assert_eq!(s.due_of("ci"), Some(now + Duration::seconds(10)));
        let etl = s.due_of("etl").unwrap();
        assert!(
            etl >= now + Duration::seconds(24) && etl <= now + Duration::seconds(36),
            "{etl}"
        );
        // ci is due on its own schedule, etl is not retried early.
        assert_eq!(
            s.due(now + Duration::seconds(10)).into_iter().collect::<Vec<_>>(),
            vec!["ci".to_string()]
        );
        // Consecutive failures double the delay, up to the cap.
        for _ in 0..12 {
            s.update(&[bad.clone()], now, Duration::minutes(10));
        }
        let etl = s.due_of("etl").unwrap();
        assert!(etl <= now + BACKOFF_CAP && etl >= now + Duration::minutes(48), "{etl}");
        // Success resets the count.
        let mut ok = report(Decision::default());
        ok.integration = "etl".into();
        s.update(&[ok], now, Duration::minutes(10));
        assert_eq!(s.due_of("etl"), Some(now + Duration::minutes(10)));
    }
}
