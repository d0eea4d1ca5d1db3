//! `run`'s HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive), `/readyz` (a policy is loaded and the last pass reached
//! Mixpanel and every sink), `/startupz` (every mirror has held the primary's
//! credential at least once since the start: a sidecar's startup probe, so
//! the app beside it starts with its credential file in place), and
//! `POST /-/resync` (integrations to re-read now: what `rotate-now` and
//! `reconcile` send a daemon beside them, see [`tell_daemon`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::metrics::Metrics;
use crate::policy::MAX_INTEGRATION_NAME;

/// The most integration names a resync request may queue (a bound on what
/// anyone who reaches the port can make the daemon hold).
pub(crate) const MAX_RESYNC_QUEUE: usize = 100_000;

/// The largest `POST /-/resync` body: one name per line.
const MAX_RESYNC_BODY: usize = 4 << 20;

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// The last pass reached Mixpanel and every sink.
    pub(crate) ready: AtomicBool,
    /// Every mirror has been up to date at least once since the start.
    pub started: AtomicBool,
    /// Integrations asked to be re-read (`POST /-/resync`), not yet taken.
    pub resync: Resync,
    /// Whether the daemon's loop is making progress.
    pub(crate) liveness: Liveness,
    /// The bearer token `POST /-/resync` must carry (`[server] resync_token`).
    pub resync_token: Mutex<Option<crate::secret::Secret>>,
}

/// Whether the daemon's loop is making progress: it beats at every
/// integration a pass finishes, and is idle between passes. Busy without a
/// beat for longer than the stall bound, or not come round for longer than
/// its longest sleep plus that bound, it is stuck: `/readyz` says so
/// and the systemd watchdog is no longer fed. Monotonic time: not the
/// injected clock, since what is measured is this process's own progress.
#[derive(Debug)]
pub(crate) struct Liveness {
    origin: std::time::Instant,
    /// Milliseconds since `origin`: the last beat.
    last_beat: AtomicU64,
    /// Milliseconds since `origin` when the loop became busy; `u64::MAX`: idle.
    busy_since: AtomicU64,
    /// Milliseconds since `origin`: when the loop last came round (it does
    /// at least every resync interval, passes or not).
    last_round: AtomicU64,
    /// The stall bound, and the longest expected time between passes, in ms.
    stall_ms: AtomicU64,
    pass_every_ms: AtomicU64,
    /// Stopping has begun: the watchdog is no longer fed.
    stopping: AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            origin: std::time::Instant::now(),
            last_beat: AtomicU64::new(0),
            busy_since: AtomicU64::new(u64::MAX),
            last_round: AtomicU64::new(0),
            stall_ms: AtomicU64::new(15 * 60 * 1000),
            pass_every_ms: AtomicU64::new(10 * 60 * 1000),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Liveness {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The bounds of the policy in force.
    pub(crate) fn configure(&self, stall: std::time::Duration, pass_every: std::time::Duration) {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.stall_ms.store(ms(stall), Ordering::SeqCst);
        self.pass_every_ms.store(ms(pass_every), Ordering::SeqCst);
    }

    /// Progress: one integration done, or the loop came round.
    pub(crate) fn beat(&self) {
        self.last_beat.store(self.now_ms(), Ordering::SeqCst);
    }

    /// A pass or a mirror sync starts.
    pub(crate) fn busy(&self) {
        let now = self.now_ms();
        self.last_beat.store(now, Ordering::SeqCst);
        self.busy_since.store(now, Ordering::SeqCst);
    }

    /// It ended.
    pub(crate) fn idle(&self) {
        let now = self.now_ms();
        self.last_beat.store(now, Ordering::SeqCst);
        self.busy_since.store(u64::MAX, Ordering::SeqCst);
    }

    /// The loop came round (woke up, with or without work): it is not stuck
    /// in a sleep either, whatever is due (integrations in a long backoff
    /// make no pass for a while, and that is not being stuck).
    pub(crate) fn came_round(&self) {
        self.last_round.store(self.now_ms(), Ordering::SeqCst);
    }

    /// Stopping has begun.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Why the loop counts as stuck, if it does.
    pub(crate) fn stuck(&self) -> Option<String> {
        let now = self.now_ms();
        let stall = self.stall_ms.load(Ordering::SeqCst);
        let busy = self.busy_since.load(Ordering::SeqCst) != u64::MAX;
        let quiet = now.saturating_sub(self.last_beat.load(Ordering::SeqCst));
        if busy && quiet > stall {
            return Some(format!(
                "stuck: no integration finished for {}s (`daemon.stall_timeout` is {}s)",
                quiet / 1000,
                stall / 1000
            ));
        }
        let since = now.saturating_sub(self.last_round.load(Ordering::SeqCst));
        let bound = self.pass_every_ms.load(Ordering::SeqCst).saturating_add(stall);
        (since > bound).then(|| format!("stuck: the loop has not come round for {}s", since / 1000))
    }

    /// Whether the systemd watchdog may be fed.
    pub(crate) fn feeds_watchdog(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst) && self.stuck().is_none()
    }
}

/// Integrations asked to be re-read now, and the wake-up of the daemon's
/// loop. Names are queued as sent; the daemon ignores those not in its
/// policy when it takes them.
#[derive(Debug, Default)]
pub struct Resync {
    names: Mutex<BTreeSet<String>>,
    /// Notified once per request that queued something (a permit is kept
    /// while the daemon is busy, so none is lost).
    pub(crate) notify: tokio::sync::Notify,
}

impl Resync {
    /// Queues `names`; false when the queue filled up (the names before
    /// that are queued, the rest are not).
    pub fn ask(&self, names: impl IntoIterator<Item = String>) -> bool {
        let Ok(mut q) = self.names.lock() else { return false };
        let before = q.len();
        let mut room = true;
        for n in names {
            if q.len() >= MAX_RESYNC_QUEUE && !q.contains(&n) {
                room = false;
                break;
            }
            q.insert(n);
        }
        if q.len() > before {
            self.notify.notify_one();
        }
        room
    }

    /// Takes every queued name.
    pub fn take(&self) -> BTreeSet<String> {
        self.names
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

/// Whether a resync request carries the token, when one is set.
fn authorized(health: &Health, headers: &axum::http::HeaderMap) -> bool {
    let token = health.resync_token.lock().unwrap_or_else(|e| e.into_inner());
    let Some(token) = token.as_ref() else { return true };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared in constant time (the Secret's equality).
    crate::secret::Secret::new(sent) == *token
}

/// `POST /-/resync`: the body's lines are integration names.
async fn resync(
    health: Arc<Health>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if !authorized(&health, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "this daemon needs `Authorization: Bearer <[server] resync_token>`\n",
        )
            .into_response();
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "the body must be integration names, one per line, in UTF-8\n",
        )
            .into_response();
    };
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        // Longer lines cannot name an integration: dropped, so the queue
        // holds a few megabytes at most, whoever sends it.
        .filter(|l| !l.is_empty() && l.len() <= MAX_INTEGRATION_NAME)
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "no integration named: send their names (at most {MAX_INTEGRATION_NAME} bytes each), one per line\n"
            ),
        )
            .into_response();
    }
    let count = names.len();
    if health.resync.ask(names) {
        (
            StatusCode::ACCEPTED,
            format!("{count} integration(s) queued for a pass\n"),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many integrations queued; retry later\n",
        )
            .into_response()
    }
}

/// A probe: 200 with `yes` while the flag `which` picks is set, else 503 with `no`.
fn probe(
    health: Arc<Health>,
    which: fn(&Health) -> &AtomicBool,
    yes: &'static str,
    no: &'static str,
) -> axum::routing::MethodRouter {
    axum::routing::get(move || async move {
        if which(&health).load(Ordering::SeqCst) {
            (StatusCode::OK, yes).into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, no).into_response()
        }
    })
}

/// `/readyz`: the last pass reached Mixpanel and every sink, and the loop
/// is not stuck.
async fn readyz(health: Arc<Health>) -> axum::response::Response {
    if let Some(why) = health.liveness.stuck() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response();
    }
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the last pass did not reach Mixpanel or a sink\n",
        )
            .into_response()
    }
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/startupz",
            probe(
                health.clone(),
                |h| &h.started,
                "started\n",
                "starting: a mirror does not hold the primary's credential yet\n",
            ),
        )
        .route(
            "/-/resync",
            axum::routing::post({
                let health = health.clone();
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| resync(health.clone(), headers, body)
            })
            .layer(axum::extract::DefaultBodyLimit::max(MAX_RESYNC_BODY)),
        )
        .route("/readyz", axum::routing::get(move || readyz(health.clone())));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "The metrics and health server stopped.");
        }
    });
    Ok((local, task))
}

/// Where a process on this host reaches a daemon listening on `listen`:
/// the loopback address of its family when it listens on every address.
pub(crate) fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Tells a daemon serving on `listen` (the policy's `[server] listen`) to
/// re-read `names` now, so its metrics, `status` and schedule follow what
/// this process just did rather than waiting for its resync. Best effort:
/// no daemon there (or no answer within 2 s) is not an error, it is said at
/// debug level and the daemon notices at its next resync.
pub async fn tell_daemon(listen: SocketAddr, token: Option<&crate::secret::Secret>, names: &[&str]) {
    if names.is_empty() {
        return;
    }
    let addr = local_address(listen);
    let url = format!("http://{addr}/-/resync");
    let Some(client) = local_client(&url) else { return };
    let mut body = names.join("\n");
    body.push('\n');
    let mut req = client.post(&url).body(body);
    if let Some(t) = token {
        match reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose())) {
            Ok(mut v) => {
                v.set_sensitive(true);
                req = req.header(header::AUTHORIZATION, v);
            }
            Err(_) => tracing::debug!("`server.resync_token` is not a valid header value; not sent."),
        }
    }
    match req.send().await {
        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => tracing::info!(
            daemon = %addr,
            integrations = names.len(),
            "Told the daemon serving there to re-read these integrations now."
        ),
        Ok(r) => tracing::debug!(
            daemon = %addr,
            status = r.status().as_u16(),
            "What serves `[server] listen` did not take the resync request; a daemon there notices at its next resync."
        ),
        Err(e) => tracing::debug!(
            daemon = %addr,
            error = %e,
            "No daemon to tell at `[server] listen`; one elsewhere notices at its next resync."
        ),
    }
}

/// A client for a daemon on this host: plain HTTP, no proxy, 2 s at most.
fn local_client(url: &str) -> Option<reqwest::Client> {
    match crate::http::builder([url])
        .timeout(std::time::Duration::from_secs(2))
        .no_proxy()
        .build()
    {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "Cannot build an HTTP client to reach the daemon.");
            None
        }
    }
}

/// Whether a daemon answers `/healthz` on `listen` (the policy's `[server]
/// listen`) from this host: where one runs, it will act on the policy it has.
pub(crate) async fn daemon_answers(listen: SocketAddr) -> Option<SocketAddr> {
    let addr = local_address(listen);
    let url = format!("http://{addr}/healthz");
    let client = local_client(&url)?;
    let r = client.get(&url).send().await.ok()?;
    (r.status().is_success() && r.text().await.ok()?.trim() == "ok").then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_is_stuck_only_when_busy_without_a_beat_or_not_coming_round() {
        let l = Liveness::default();
        let ms = std::time::Duration::from_millis;
        l.configure(ms(60), ms(60));
        l.came_round();
        assert!(l.stuck().is_none() && l.feeds_watchdog());
        // Busy and beating: fine; busy and silent past the bound: stuck.
        l.busy();
        std::thread::sleep(ms(40));
        l.beat();
        std::thread::sleep(ms(40));
        assert!(l.stuck().is_none());
        std::thread::sleep(ms(40));
        let why = l.stuck().expect("stuck");
        assert!(why.contains("no integration finished"), "{why}");
        assert!(!l.feeds_watchdog());
        // Idle, coming round (a long backoff makes no pass: not stuck).
        l.idle();
        l.came_round();
        assert!(l.stuck().is_none());
        std::thread::sleep(ms(150));
        assert!(l.stuck().is_some_and(|w| w.contains("has not come round")));
        l.came_round();
        assert!(l.feeds_watchdog());
        l.stopping();
        assert!(!l.feeds_watchdog(), "never once stopping has begun");
    }

    #[test]
    fn a_daemon_listening_everywhere_is_reached_on_loopback() {
        let at = |s: &str| local_address(s.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(at("[::]:9464"), "[::1]:9464");
        assert_eq!(at("127.0.0.1:9464"), "127.0.0.1:9464");
        assert_eq!(at("10.1.2.3:9464"), "10.1.2.3:9464");
    }

    #[test]
    fn the_resync_queue_is_bounded_and_taken_whole() {
        let r = Resync::default();
        assert!(r.ask((0..MAX_RESYNC_QUEUE).map(|i| format!("i{i}"))));
        assert!(r.ask(["i0".to_string()]), "a name already queued takes no room");
        assert!(!r.ask(["one-more".to_string()]));
        assert_eq!(r.take().len(), MAX_RESYNC_QUEUE);
        assert!(r.take().is_empty());
        assert!(r.ask(["etl".to_string()]));
    }
}
