//! `run`: the long-lived loop over the reconcile engine.
//!
//! Each integration has a due time (`scheduler`); the loop sleeps on the
//! injected clock until the earliest one (no polling), runs a pass over the
//! integrations that are due, and schedules them again from what the pass
//! planned. It is driven from outside through a [`Control`]: cancelling its
//! shutdown token stops it (the step in flight finishes, bounded by the
//! shutdown timeout), a message on its reload channel reloads the policy.
//! `signals` maps SIGTERM/SIGINT and SIGHUP to those; tests drive them
//! directly, in-process, under a manual clock.

pub(crate) mod scheduler;
pub(crate) mod signals;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::scheduler::{Scheduler, Timing};
use crate::clock::SharedClock;
use crate::exit::Exit;
use crate::metrics::Metrics;
use crate::mixpanel::RetryPolicy;
use crate::notify::{Notifier, status_line};
use crate::policy::Policy;
use crate::rotation::{Engine, MirrorSync, MirrorView, PassOptions, Report};
use crate::server::Health;
use crate::text::rfc3339;

/// When an integration is next due after a pass at `now` produced
/// `report`, by the daemon's own rule (the next rotation or deletion, a
/// resync at least every `resync`, after `failures` consecutive failures a
/// capped backoff spread by `jitter` in [0, 1)): for a simulation that
/// drives the engine itself and must pace it as the daemon would.
pub fn next_due(
    report: &Report,
    now: DateTime<Utc>,
    failures: u32,
    resync: chrono::Duration,
    jitter: f64,
) -> DateTime<Utc> {
    let timing = Timing {
        resync,
        offset: chrono::Duration::zero(),
    };
    scheduler::next_due(report, now, failures, &timing, jitter)
}

/// How the daemon is told to stop or reload.
#[derive(Debug)]
pub struct Control {
    /// Cancelled: finish the step in flight and exit.
    pub(crate) shutdown: CancellationToken,
    /// A message: reload the policy.
    pub(crate) reload: mpsc::Receiver<()>,
}

/// The other end of a [`Control`]: what a signal handler (or a test) uses.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Cancel to stop the daemon.
    pub shutdown: CancellationToken,
    /// Send to reload the policy (one request may be queued).
    pub reload: mpsc::Sender<()>,
}

impl Control {
    /// A control and the handle that drives it, like a channel's two ends.
    pub fn new() -> (Self, Handle) {
        let shutdown = CancellationToken::new();
        let (tx, rx) = mpsc::channel(1);
        let control = Self {
            shutdown: shutdown.clone(),
            reload: rx,
        };
        (control, Handle { shutdown, reload: tx })
    }
}

/// Gauges from the primaries (no Mixpanel call), before the first pass
/// waits its share of `spread`; at most 10 s.
async fn prime_gauges(engine: &Engine) {
    if tokio::time::timeout(std::time::Duration::from_secs(10), engine.prime_gauges())
        .await
        .is_err()
    {
        tracing::warn!("Reading the primaries for the gauges took more than 10 s; the first pass sets them.");
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard(pub tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the daemon has done so far, published after every pass and reload.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Passes completed.
    pub passes: u64,
    /// The reports of the last pass.
    pub reports: Vec<Report>,
    /// When the daemon wakes up next, if it is idle.
    pub wake_at: Option<DateTime<Utc>>,
    /// Every integration's next due time.
    pub due: BTreeMap<String, DateTime<Utc>>,
    /// Reload requests handled (applied or rejected).
    pub reloads: u64,
    /// Why the last reload was rejected, if it was.
    pub reload_error: Option<String>,
    /// Mirror syncs between passes completed.
    pub mirror_syncs: u64,
    /// What the last of them did.
    pub(crate) mirrors: Vec<MirrorSync>,
}

/// The daemon, before it runs.
pub struct Daemon {
    config: PathBuf,
    clock: SharedClock,
    shutdown_timeout: std::time::Duration,
    notifier: Notifier,
    retry: Option<(RetryPolicy, RetryPolicy)>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    progress: watch::Sender<Progress>,
    /// This process's share of `[daemon] spread`, in [0, 1), drawn once.
    spread_share: f64,
}

/// The engine of the policy in force, and its schedule.
struct Running {
    engine: Engine,
    sched: Scheduler,
    /// When the mirrors are next brought up to date between passes.
    mirrors_at: DateTime<Utc>,
    /// The integrations whose mirrors have all held the primary's payload
    /// at least once since the start (`/startupz`).
    mirrored: BTreeSet<String>,
    /// When the pass asked by the last `POST /-/resync` starts (requests
    /// until then join it; the next one waits RESYNC_REQUEST_SPACING).
    resync_asked_at: Option<DateTime<Utc>>,
}

/// The least time between two passes asked by `POST /-/resync` (requests in
/// between are merged into the next): whoever reaches the port cannot make
/// the daemon do more than a pass this often.
pub(crate) const RESYNC_REQUEST_SPACING: chrono::Duration = chrono::Duration::seconds(10);

impl Running {
    fn new(engine: Engine, now: DateTime<Utc>) -> Self {
        Self {
            engine,
            sched: Scheduler::default(),
            // Mirrors first: they need no Mixpanel call, and the consumers
            // beside this process wait for them (`/startupz`).
            mirrors_at: now,
            mirrored: BTreeSet::new(),
            resync_asked_at: None,
        }
    }

    fn policy(&self) -> &Policy {
        self.engine.policy()
    }

    fn has_mirrors(&self) -> bool {
        self.policy().integrations.iter().any(|i| !i.mirrors.is_empty())
    }

    /// When to wake up next: the scheduler's next due time, or the next
    /// mirror sync if that comes first.
    fn wake_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let wake = self.sched.wake_at(now, self.policy().resync_interval);
        if self.has_mirrors() {
            wake.min(self.mirrors_at.max(now))
        } else {
            wake
        }
    }

    /// Notes the integrations whose mirrors are all up to date; whether
    /// every mirrored integration has been, once.
    fn note_mirrored<'a>(&mut self, synced: impl IntoIterator<Item = (&'a str, &'a [MirrorView])>) -> bool {
        for (integration, views) in synced {
            if !views.is_empty() && views.iter().all(|v| v.state.up_to_date()) {
                self.mirrored.insert(integration.to_string());
            }
        }
        self.policy()
            .integrations
            .iter()
            .filter(|i| !i.mirrors.is_empty())
            .all(|i| self.mirrored.contains(&i.name))
    }
}

/// The rotator's own credential in a sink that does not outlive a reboot
/// (a pod's `emptyDir` on tmpfs, `/run`): the daemon runs, but says so at
/// start, where there is no `validate` before it (a Kubernetes pod).
fn warn_if_own_volatile(policy: &Policy) {
    let Some(own) = policy.own() else { return };
    if let Some(Err(e)) = policy.sinks.get(&own.sink).map(|s| s.backend().durable()) {
        tracing::error!(
            sink = %own.sink,
            "The rotator's own credential (`[mixpanel.self]`) is kept where a reboot loses it ({e}); once the seed is deleted it is the only copy: keep it on disk, in Vault or in AWS."
        );
    }
}

/// Why the daemon could not load (or reload) its policy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The policy is invalid: every error, each naming its key.
    #[error("{}", .0.all().iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Policy(crate::policy::PolicyError),
    /// The engine could not be set up (a secret, a sink).
    #[error(transparent)]
    Setup(#[from] crate::rotation::SetupError),
}

impl Daemon {
    /// A daemon reading the policy at `config`, on `clock`.
    pub fn new(config: PathBuf, clock: SharedClock) -> Self {
        Self {
            config,
            clock,
            shutdown_timeout: std::time::Duration::from_secs(30),
            notifier: Notifier::default(),
            retry: None,
            metrics: Metrics::shared(),
            health: Arc::new(Health::default()),
            progress: watch::Sender::new(Progress::default()),
            spread_share: rand::random::<f64>(),
        }
    }

    /// This process's share of `[daemon] spread` (tests pin it; default random).
    pub fn spread_share(mut self, share: f64) -> Self {
        self.spread_share = share.clamp(0.0, 0.999);
        self
    }

    /// How long the step in flight may take after shutdown is asked.
    pub fn shutdown_timeout(mut self, t: std::time::Duration) -> Self {
        self.shutdown_timeout = t;
        self
    }

    /// Where to send systemd notifications.
    pub(crate) fn notifier(mut self, n: Notifier) -> Self {
        self.notifier = n;
        self
    }

    /// Retry policies for API calls and for verifying new credentials (tests use short ones).
    pub fn retry(mut self, api: RetryPolicy, verify: RetryPolicy) -> Self {
        self.retry = Some((api, verify));
        self
    }

    /// The metrics the daemon records (and `/metrics` serves).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Whether the last pass reached Mixpanel and every sink (`/readyz`).
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// A view of the daemon's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The pacing of passes under `policy`: its resync interval, and this
    /// process's share of its `spread`.
    fn timing(&self, policy: &Policy) -> Timing {
        let spread_ms = policy.spread.num_milliseconds().max(0) as f64;
        Timing {
            resync: policy.resync_interval,
            offset: chrono::Duration::milliseconds((spread_ms * self.spread_share) as i64),
        }
    }

    fn load(&self) -> Result<Engine, LoadError> {
        let policy = Policy::load(&self.config).map_err(LoadError::Policy)?;
        let policy = Arc::new(policy);
        let engine = match &self.retry {
            Some((api, verify)) => Engine::with_retry(policy.clone(), self.clock.clone(), api.clone(), verify.clone()),
            None => Engine::from_policy(policy.clone(), self.clock.clone()),
        }?;
        Ok(engine.with_metrics(self.metrics.clone()))
    }

    /// Runs until `control.shutdown` is cancelled.
    pub async fn run(self, mut control: Control) -> Exit {
        let engine = match self.load() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: policy {}: {e}", self.config.display());
                return Exit::Usage;
            }
        };
        let _server = match self.serve(engine.policy()).await {
            Ok(s) => s,
            Err(exit) => return exit,
        };
        let _watchdog = self.watchdog(control.shutdown.clone());
        if let Err(e) = self.server_settings(engine.policy()) {
            eprintln!("error: policy {}: {e}", self.config.display());
            return Exit::Usage;
        }
        prime_gauges(&engine).await;
        let now = self.clock.now();
        let mut state = Running::new(engine, now);
        self.begin(&mut state, now);
        loop {
            self.health.liveness.came_round();
            let now = self.clock.now();
            if state.has_mirrors() && state.mirrors_at <= now {
                tokio::select! {
                    () = self.sync_mirrors(&mut state) => {}
                    () = control.shutdown.cancelled() => break,
                }
                continue;
            }
            let due = state.sched.due(now);
            if !due.is_empty() {
                if let Some(exit) = self.pass(&mut state, due, &control.shutdown).await {
                    return exit;
                }
                continue;
            }
            let wake = state.wake_at(now);
            tokio::select! {
                () = self.clock.sleep_until(wake) => {}
                () = control.shutdown.cancelled() => break,
                Some(()) = control.reload.recv() => self.reload(&mut state).await,
                () = self.health.resync.notify.notified() => self.resync_asked(&mut state),
            }
        }
        self.notifier.notify("STOPPING=1");
        tracing::info!("Stopped.");
        Exit::Ok
    }

    /// Schedules the first pass and says the daemon is ready.
    fn begin(&self, state: &mut Running, now: DateTime<Utc>) {
        // This process's share of `spread` before its first pass too:
        // replicas started together (a new Deployment) do not all bootstrap.
        let first = crate::clock::after(now, self.timing(state.policy()).offset);
        state.sched.reset(state.engine.policy(), first);
        self.progress.send_modify(|p| p.wake_at = Some(first));
        warn_if_own_volatile(state.policy());
        self.health.started.store(!state.has_mirrors(), Ordering::SeqCst);
        tracing::info!(
            integrations = state.policy().integrations.len(),
            first_pass = %crate::text::rfc3339(first),
            "Started; mirrors are brought up to date now, the first pass runs after this process's share of `[daemon] spread`."
        );
        self.notifier.notify(&format!(
            "READY=1\n{}",
            status_line(&format!("started; first pass at {}", rfc3339(first)))
        ));
    }

    /// Serves `/metrics`, `/healthz`, `/readyz`, `/startupz` and `POST
    /// /-/resync` when `[server] listen` is set.
    async fn serve(&self, policy: &Policy) -> Result<Option<TaskGuard>, Exit> {
        let Some(addr) = policy.listen else { return Ok(None) };
        match crate::server::serve(addr, self.metrics.clone(), self.health.clone()).await {
            Ok((local, task)) => {
                tracing::info!(listen = %local, "Serving /metrics, /healthz, /readyz, /startupz and POST /-/resync.");
                Ok(Some(TaskGuard(task)))
            }
            Err(e) => {
                eprintln!("error: cannot listen on {addr} (`server.listen`): {e}");
                Err(Exit::Failed)
            }
        }
    }

    /// What the endpoints and the watchdog take from `policy`: the resync
    /// token, and the liveness bounds.
    fn server_settings(&self, policy: &Policy) -> Result<(), crate::values::KeyError> {
        self.bounds(policy);
        let token = match &policy.resync_token {
            Some(t) => Some(t.resolve("server.resync_token")?),
            None => None,
        };
        *self.health.resync_token.lock().unwrap_or_else(|e| e.into_inner()) = token;
        Ok(())
    }

    /// The liveness bounds of `policy`: how long a pass may go without
    /// finishing an integration, and how far apart passes come.
    fn bounds(&self, policy: &Policy) {
        let std = |d: chrono::Duration| d.to_std().unwrap_or_default();
        self.health.liveness.configure(
            std(policy.stall_timeout),
            std(policy.resync_interval).saturating_add(std(policy.spread)),
        );
    }

    /// Pings the systemd watchdog, when it is on, while the loop makes
    /// progress: a stuck pass (or a stop that does not end) stops the
    /// pings, and systemd restarts the service.
    fn watchdog(&self, shutdown: CancellationToken) -> Option<TaskGuard> {
        let every = self.notifier.watchdog_interval()?;
        let notifier = self.notifier.clone();
        let health = self.health.clone();
        Some(TaskGuard(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut said = false;
            loop {
                tick.tick().await;
                if shutdown.is_cancelled() {
                    health.liveness.stopping();
                }
                if health.liveness.feeds_watchdog() {
                    notifier.notify("WATCHDOG=1");
                    said = false;
                } else if !said {
                    said = true;
                    let why = health.liveness.stuck().unwrap_or_else(|| "stopping".into());
                    tracing::error!("The systemd watchdog is no longer fed ({why}); systemd restarts the service.");
                }
            }
        })))
    }

    /// One pass over the integrations `due`; `Some` when the daemon must exit.
    async fn pass(&self, state: &mut Running, due: BTreeSet<String>, shutdown: &CancellationToken) -> Option<Exit> {
        // Due before its failure backoff ends (a resync asked over HTTP):
        // re-read, never a new rotation attempt.
        let held = state.sched.backing_off(&due, self.clock.now());
        let opts = PassOptions {
            only: Some(due),
            stop: Some(shutdown.clone()),
            hold_rotation: held.clone(),
            ..Default::default()
        };
        let liveness = &self.health.liveness;
        liveness.busy();
        let mut reports = Vec::new();
        {
            let mut each = |r: Report| {
                liveness.beat();
                reports.push(r);
            };
            let pass = state.engine.pass_each(&opts, &mut each);
            tokio::pin!(pass);
            tokio::select! {
                () = &mut pass => {}
                () = shutdown.cancelled() => {
                    liveness.stopping();
                    return Some(self.shut_down(pass).await);
                }
            }
        }
        liveness.idle();
        for r in &reports {
            for e in &r.errors {
                tracing::error!(integration = %r.integration, step = ?e.step, "{e}");
            }
        }
        let after = self.clock.now();
        state.sched.update(&reports, after, &self.timing(state.policy()), &held);
        self.health
            .ready
            .store(reports.iter().all(Report::reached_everything), Ordering::SeqCst);
        if state.note_mirrored(reports.iter().map(|r| (r.integration.as_str(), r.mirrors.as_slice()))) {
            self.health.started.store(true, Ordering::SeqCst);
        }
        let failing = reports.iter().filter(|r| r.failed()).count();
        let wake = state.wake_at(after);
        self.notifier.notify(&status_line(&format!(
            "{} integration(s) in the last pass, {failing} failing; next pass {}",
            reports.len(),
            rfc3339(wake)
        )));
        self.progress.send_modify(|p| {
            p.passes = p.passes.saturating_add(1);
            p.reports = reports;
            p.wake_at = Some(wake);
            p.due = state.sched.due_times();
        });
        None
    }

    /// Brings every mirror up to date from its primary (no Mixpanel call),
    /// and schedules the next sync.
    async fn sync_mirrors(&self, state: &mut Running) {
        self.health.liveness.busy();
        let synced = state.engine.sync_mirrors(None).await;
        self.health.liveness.idle();
        let now = self.clock.now();
        state.mirrors_at = crate::clock::after(now, state.policy().mirror_interval);
        if state.note_mirrored(synced.iter().map(|s| (s.integration.as_str(), s.views.as_slice()))) {
            self.health.started.store(true, Ordering::SeqCst);
        }
        let wake = state.sched.due(now).is_empty().then(|| state.wake_at(now));
        self.progress.send_modify(|p| {
            p.mirror_syncs = p.mirror_syncs.saturating_add(1);
            p.mirrors = synced;
            if wake.is_some() {
                p.wake_at = wake;
            }
        });
    }

    /// Shutdown asked during a pass: start nothing new, let what is in
    /// flight finish (bounded), exit.
    async fn shut_down(&self, pass: impl std::future::Future<Output = ()>) -> Exit {
        self.notifier.notify(&format!(
            "STOPPING=1\n{}",
            status_line("stopping: finishing the step in flight")
        ));
        tracing::info!(
            timeout_s = self.shutdown_timeout.as_secs(),
            "Stopping; letting the step in flight finish."
        );
        match tokio::time::timeout(self.shutdown_timeout, pass).await {
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

    /// `POST /-/resync` named integrations: each of them the policy has is
    /// due now, or once [`RESYNC_REQUEST_SPACING`] has passed since the last
    /// pass asked that way.
    fn resync_asked(&self, state: &mut Running) {
        let names = self.health.resync.take();
        let now = self.clock.now();
        let at = match state.resync_asked_at {
            Some(last) if last > now => last,
            Some(last) => crate::clock::after(last, RESYNC_REQUEST_SPACING).max(now),
            None => now,
        };
        let known = state.sched.hurry(names.iter().map(String::as_str), at);
        if known > 0 {
            state.resync_asked_at = Some(at);
            tracing::info!(
                asked = names.len(),
                in_policy = known,
                at = %rfc3339(at),
                "A resync was asked (`POST /-/resync`, e.g. by `rotate-now` beside this daemon); those integrations are re-read."
            );
        } else {
            // Quietly: whoever reaches the port must not fill the log.
            tracing::debug!(
                asked = names.len(),
                "A resync was asked for no integration of the policy; ignored."
            );
        }
        let wake = state.sched.due(now).is_empty().then(|| state.wake_at(now));
        self.progress.send_modify(|p| {
            p.due = state.sched.due_times();
            if wake.is_some() {
                p.wake_at = wake;
            }
        });
    }

    /// Reloads the policy; a broken one is rejected and the old one stays.
    async fn reload(&self, state: &mut Running) {
        self.notifier.notify("RELOADING=1");
        let error = match self.load() {
            Ok(mut engine) => {
                let moved = engine.carry_over(&state.engine).await;
                if !moved.is_empty() {
                    tracing::warn!(
                        integrations = %moved.join(", "),
                        "Integrations moved to another sink or path: what their old place publishes is replaced by their first rotation at the new place, then deleted after `grace`; the old place itself is left as it is."
                    );
                }
                if engine.policy().listen != state.policy().listen {
                    tracing::warn!("`server.listen` changed; it takes effect at the next restart.");
                }
                let first = crate::clock::after(self.clock.now(), self.timing(engine.policy()).offset);
                state.sched.reset(engine.policy(), first);
                if let Err(e) = self.server_settings(engine.policy()) {
                    tracing::error!(
                        "`server.resync_token` of the new policy cannot be read ({e}); the previous token stays."
                    );
                }
                state.engine = engine;
                let policy = state.policy();
                let mirrors = policy
                    .integrations
                    .iter()
                    .flat_map(|i| {
                        i.mirrors
                            .iter()
                            .map(|m| (i.name.as_str(), m.sink.as_str(), m.path.as_str()))
                    })
                    .collect();
                self.metrics
                    .keep_only(&policy.integrations.iter().map(|i| i.name.as_str()).collect(), &mirrors);
                self.metrics.reload(true);
                tracing::info!(integrations = state.policy().integrations.len(), "Policy reloaded.");
                None
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(config = %self.config.display(), "Policy reload rejected, the previous policy stays in force: {e}");
                Some(e)
            }
        };
        self.notifier
            .notify(&format!("READY=1\n{}", status_line("policy reload handled")));
        let now = self.clock.now();
        let idle = state.sched.due(now).is_empty();
        let wake = idle.then(|| state.wake_at(now));
        self.progress.send_modify(|p| {
            p.reloads = p.reloads.saturating_add(1);
            p.reload_error = error.map(|e| e.to_string());
            p.wake_at = wake;
        });
    }
}
