//! `run`, two ways. In-process, under a manual clock and driven through its
//! `Control`: scheduling (grace deletion, resync, backoff), reload, and
//! shutdown in the middle of a rotation, without sleeping for time. As a
//! real subprocess: the real signals, the HTTP endpoints, and systemd
//! notifications on a test NOTIFY_SOCKET.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Span;
use mixpanel_rotator::daemon::{self, Control, Progress};
use mixpanel_rotator::exit::Exit;
use mixpanel_rotator::metrics::Metrics;
use mixpanel_rotator::rotation::RotateReason;
use mixpanel_rotator::simulator::{Fault, FaultAction, Gate, Seed};
use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it is true, or fails after `secs`.
async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

struct Daemon {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    /// Every datagram received on the test's NOTIFY_SOCKET, drained continuously.
    notes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _drain: tokio::task::JoinHandle<()>,
}

impl Daemon {
    fn start(h: &Harness, config: &Path) -> Self {
        Self::start_with(h, config, "20s", &[])
    }

    /// With `--shutdown-timeout shutdown_timeout` and `env` added.
    fn start_with(h: &Harness, config: &Path, shutdown_timeout: &str, env: &[(&str, &str)]) -> Self {
        let sock = h.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&sock);
        let notify = UnixDatagram::bind(&sock).unwrap();
        let log = h.dir.path().join("daemon.log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mixpanel-rotator"))
            .arg("--config")
            .arg(config)
            .args(["--log-level", "debug", "run", "--shutdown-timeout", shutdown_timeout])
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .env("NOTIFY_SOCKET", &sock)
            .env("WATCHDOG_USEC", "400000")
            .env("CREDENTIALS_DIRECTORY", h.dir.path().join("credentials"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let notes: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let sink = notes.clone();
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf).await {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        });
        Self {
            child,
            log,
            notes,
            _drain: drain,
        }
    }

    /// Waits for a notification containing `needle`.
    async fn expect_note(&self, needle: &str) {
        let notes = self.notes.clone();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if notes.lock().unwrap().iter().any(|n| n.contains(needle)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {needle:?} on NOTIFY_SOCKET; got {:?}\n{}",
            notes.lock().unwrap(),
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    async fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(secs), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the daemon did not exit within {secs}s\n{}", self.log_text()))
            .unwrap()
            .code()
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let st = r.status().as_u16();
    Some((st, r.text().await.ok()?))
}

fn policy(legacy: u64, port: u16, grace: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[daemon]\nresync_interval = \"10s\"\nspread = \"0s\"\n\
         [[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\ngrace = \"{grace}\"\nadopt = {legacy}\n{extra}"
    )
}

/// A real-time harness for a daemon process: the legacy account `etl`
/// adopts, a free port for `[server] listen`, and its base URL.
async fn for_a_process() -> (Harness, u64, u16, String) {
    let h = Harness::realtime(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].id;
    let port = free_port();
    (h, legacy, port, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn the_daemon_as_a_process_notifies_serves_reloads_on_sighup_and_stops_on_sigterm() {
    let (h, legacy, port, base) = for_a_process().await;
    let cfg = h.dir.path().join("daemon.toml");
    // The rotator's secret as a systemd credential (LoadCredential=mixpanel:...).
    std::fs::create_dir_all(h.dir.path().join("credentials")).unwrap();
    std::fs::write(h.dir.path().join("credentials/mixpanel"), h.sim.admin().secret.expose()).unwrap();
    let with_credential = |text: String| {
        text.replace(
            &format!(
                "secret = {{ file = \"{}\" }}",
                h.dir.path().join("admin.secret").display()
            ),
            "secret = { credential = \"mixpanel\" }",
        )
    };
    let first = with_credential(h.policy(&policy(legacy, port, "1h", "")));
    assert!(first.contains("credential = \"mixpanel\""));
    std::fs::write(&cfg, first).unwrap();
    let mut d = Daemon::start(&h, &cfg);
    d.expect_note("READY=1").await;

    // It bootstraps on its own and says so on /readyz and /metrics.
    eventually(10, "etl published", async || h.payload("etl.json").is_some()).await;
    eventually(10, "/readyz 200", async || {
        get(&format!("{base}/readyz")).await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);
    assert!(h.sim.account(legacy).is_some(), "the old account is kept during grace");
    let (_, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    for needle in [
        "mixpanel_rotator_rotations_total{integration=\"etl\",result=\"success\"} 1",
        "mixpanel_rotator_api_requests_total{endpoint=\"create-service-account\",status=\"201\"} 1",
        "mixpanel_rotator_credential_expiry_timestamp_seconds{integration=\"etl\"}",
        "mixpanel_rotator_next_rotation_timestamp_seconds{integration=\"etl\"}",
        "mixpanel_rotator_last_success_timestamp_seconds{integration=\"etl\"}",
        "mixpanel_rotator_rotation_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from:\n{metrics}");
    }
    d.expect_note("WATCHDOG=1").await;
    d.expect_note("STATUS=").await;

    // SIGHUP with a new integration: it is rotated.
    let ci = "[[integrations]]\nname = \"ci\"\nsink = \"local\"\npath = \"ci.json\"\nprojects = [{ id = 101, role = \"consumer\" }]\n";
    std::fs::write(&cfg, with_credential(h.policy(&policy(legacy, port, "1h", ci)))).unwrap();
    d.signal("-HUP");
    d.expect_note("RELOADING=1").await;
    eventually(10, "ci published after SIGHUP", async || h.payload("ci.json").is_some()).await;

    // SIGHUP with a broken policy: rejected, the old one stays, still healthy.
    std::fs::write(&cfg, "version = 1\n[mixpanel]\nregion = \"mars\"\n").unwrap();
    d.signal("-HUP");
    eventually(10, "reload rejected", async || {
        d.log_text().contains("Policy reload rejected")
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);

    d.signal("-TERM");
    assert_eq!(d.wait_exit(10).await, Some(0));
    d.expect_note("STOPPING=1").await;
    h.record(d.log_text());
    h.assert_no_secret_leaked(&[]);
}

/// `rotate-now` beside a running daemon: the daemon re-reads the integration
/// at once (`POST /-/resync` on its `[server] listen`), not at its resync
/// (an hour here), so its gauges follow the new credential within seconds.
/// `retire` beside it warns that the daemon would bootstrap it again.
#[tokio::test]
async fn a_rotate_now_beside_the_daemon_is_noticed_at_once() {
    let (h, legacy, port, base) = for_a_process().await;
    let text = h
        .policy(&policy(legacy, port, "1h", ""))
        .replace("resync_interval = \"10s\"", "resync_interval = \"1h\"");
    assert!(text.contains("resync_interval = \"1h\""));
    let cfg = h.dir.path().join("daemon.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut d = Daemon::start(&h, &cfg);
    d.expect_note("READY=1").await;
    let expiry_of = |p: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(p["expires"].as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    let gauge = async || -> Option<i64> {
        let (_, m) = get(&format!("{base}/metrics")).await?;
        m.lines()
            .find(|l| l.starts_with("mixpanel_rotator_credential_expiry_timestamp_seconds{integration=\"etl\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as i64)
    };
    eventually(10, "etl bootstrapped by the daemon", async || {
        h.payload("etl.json").is_some()
    })
    .await;
    let first = expiry_of(&h.payload("etl.json").unwrap());
    eventually(10, "the daemon's gauge shows the first credential", async || {
        gauge().await == Some(first)
    })
    .await;

    // One second later (expiries are whole seconds), another process rotates.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = h.run_bin(&cfg, &["rotate-now", "etl"], &[]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Told the daemon"), "{stderr}");
    let second = expiry_of(&h.payload("etl.json").unwrap());
    assert!(second > first, "{first} {second}");
    let told = Instant::now();
    eventually(5, "the daemon's gauge follows the rotate-now", async || {
        gauge().await == Some(second)
    })
    .await;
    assert!(told.elapsed() < Duration::from_secs(5));
    assert!(d.log_text().contains("A resync was asked"), "{}", d.log_text());

    // The endpoint takes only names, by POST.
    let client = reqwest::Client::new();
    let r = client.post(format!("{base}/-/resync")).body("\n").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = client.get(format!("{base}/-/resync")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = client
        .post(format!("{base}/-/resync"))
        .body("x".repeat(33))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "longer than any integration name");
    let r = client
        .post(format!("{base}/-/resync"))
        .body("nosuch\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "unknown names are queued, then ignored");

    // `retire` beside it warns: the daemon would bootstrap `etl` again.
    let warning = format!("warning: a daemon answers on 127.0.0.1:{port}");
    let out = h.run_bin(&cfg, &["retire", "etl"], &[]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&warning) && stderr.contains("bootstraps `etl` again"),
        "{stderr}"
    );

    d.signal("-TERM");
    assert_eq!(d.wait_exit(10).await, Some(0));
    let out = h.run_bin(&cfg, &["retire", "etl"], &[]).await;
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "no daemon, no warning"
    );
    h.record(d.log_text());
    h.assert_no_secret_leaked(&[]);
}

/// The daemon in-process, under the harness's manual clock, driven through its `Control`.
struct InProcess {
    progress: watch::Receiver<Progress>,
    shutdown: CancellationToken,
    reload: mpsc::Sender<()>,
    metrics: Arc<Metrics>,
    health: Arc<mixpanel_rotator::server::Health>,
    task: tokio::task::JoinHandle<Exit>,
}

impl InProcess {
    fn start(h: &Harness, config: &Path, shutdown_timeout: Duration) -> Self {
        Self::start_with_share(h, config, shutdown_timeout, 0.0)
    }

    /// As [`InProcess::start`], taking `share` of `[daemon] spread` (a replica).
    fn start_with_share(h: &Harness, config: &Path, shutdown_timeout: Duration, share: f64) -> Self {
        let daemon = daemon::Daemon::new(config.to_path_buf(), Arc::new(h.clock.clone()))
            .retry(fast_retry(), fast_retry())
            .spread_share(share)
            .shutdown_timeout(shutdown_timeout);
        let (progress, metrics, health) = (daemon.progress(), daemon.metrics(), daemon.health());
        let (control, handle) = Control::new();
        Self {
            progress,
            shutdown: handle.shutdown,
            reload: handle.reload,
            metrics,
            health,
            task: tokio::spawn(daemon.run(control)),
        }
    }

    /// Waits until the daemon has completed `n` passes (a hang guard, not a timing).
    async fn passes(&mut self, n: u64) -> Progress {
        let wait = self.progress.wait_for(|p| p.passes >= n);
        match tokio::time::timeout(Duration::from_secs(20), wait).await {
            Ok(Ok(p)) => p.clone(),
            _ => panic!("the daemon did not complete pass {n}"),
        }
    }

    /// Waits until the daemon sleeps, with a wake-up time (a hang guard).
    async fn idle(&mut self) -> Progress {
        let wait = self.progress.wait_for(|p| p.wake_at.is_some());
        match tokio::time::timeout(Duration::from_secs(20), wait).await {
            Ok(Ok(p)) => p.clone(),
            _ => panic!("the daemon never went idle"),
        }
    }

    /// Waits until `integration` is due at `by` at the latest (a hang guard, not a timing).
    async fn due_by(&mut self, integration: &str, by: chrono::DateTime<chrono::Utc>) -> Progress {
        let wait = self
            .progress
            .wait_for(|p| p.due.get(integration).is_some_and(|d| *d <= by));
        match tokio::time::timeout(Duration::from_secs(5), wait).await {
            Ok(Ok(p)) => p.clone(),
            _ => panic!("{integration} did not become due by {by}"),
        }
    }

    /// Moves the clock to the daemon's next wake-up and waits for the pass it runs.
    async fn tick(&mut self, h: &Harness) -> Progress {
        let p = self.progress.borrow().clone();
        let wake = p.wake_at.expect("the daemon is idle, with a wake-up time");
        assert!(wake > h.clock_now(), "wake-ups are in the future");
        h.clock.set(wake);
        self.passes(p.passes + 1).await
    }

    async fn stop(self) -> Exit {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the daemon stops")
            .expect("the daemon task does not panic")
    }
}

/// The sink `s` of the policy at `cfg`.
fn policy_sink(cfg: &Path) -> mixpanel_rotator::sink::SinkConfig {
    let p = mixpanel_rotator::policy::Policy::load(cfg).unwrap();
    p.sinks.get("s").unwrap().clone()
}

fn etl_policy(h: &Harness, extra: &str) -> String {
    format!(
        "[daemon]\nresync_interval = \"30m\"\n[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\ngrace = \"2h\"\nadopt = {}\n{extra}",
        h.accounts_with_prefix("etl-legacy")[0].id
    )
}

#[tokio::test]
async fn in_process_the_old_account_goes_when_grace_ends_on_the_daemons_own_schedule() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].id;
    let cfg = h.policy_file(&etl_policy(&h, ""));
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    let p = d.passes(1).await;
    let rotated = p.reports[0].rotated.clone().expect("bootstrapped on the first pass");
    assert_eq!(rotated.reason, RotateReason::Bootstrap);
    assert_eq!(
        p.wake_at,
        Some(h.clock_now() + Span::seconds(1)),
        "after a change: look again soon"
    );
    let published = h.clock_now();
    // Each wake-up is the earliest of the resync (30m) and the grace end (2h).
    let mut wakes = vec![];
    while h.sim.account(legacy).is_some() {
        let p = d.tick(&h).await;
        wakes.push(h.clock_now() - published);
        assert!(
            h.clock_now() - published <= Span::hours(3),
            "still not deleted at {wakes:?}"
        );
        if h.sim.account(legacy).is_none() {
            assert_eq!(p.reports[0].deleted[0].id, legacy);
        }
    }
    assert_eq!(
        wakes,
        vec![
            Span::seconds(1),
            Span::seconds(1) + Span::minutes(30),
            Span::seconds(1) + Span::minutes(60),
            Span::seconds(1) + Span::minutes(90),
            Span::hours(2),
        ],
        "woken by the resync, then exactly at the grace end"
    );
    let m = d.metrics.render();
    assert!(
        m.contains("mixpanel_rotator_accounts_deleted_total{integration=\"etl\",reason=\"retiring\"} 1"),
        "{m}"
    );
    assert_eq!(d.stop().await, Exit::Ok);
    h.assert_no_secret_leaked(&[]);
}

/// A pass over more integrations than are read up front (512), with
/// Mixpanel down: every report, in the policy's order, still says what its
/// sink publishes (the reads beyond the first ones run concurrently, and
/// come back in order).
#[tokio::test]
async fn a_large_pass_with_mixpanel_down_reports_every_published_credential_in_order() {
    let h = Harness::new(Seed::Demo).await;
    let n = 700;
    let rest: String = (0..n)
        .map(|k| format!("[[integrations]]\nname = \"i{k:04}\"\nsink = \"local\"\npath = \"i{k:04}.json\"\nprojects = [{{ id = 101, role = \"consumer\" }}]\n"))
        .collect();
    let engine = h.engine(&rest);
    // Every other one published: the others have nothing to report.
    let odd: std::collections::BTreeSet<String> = (0..n).filter(|k| k % 2 == 1).map(|k| format!("i{k:04}")).collect();
    let boot = engine
        .pass(&mixpanel_rotator::rotation::PassOptions {
            only: Some(odd.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!(boot.len(), odd.len());
    let failed: Vec<_> = boot
        .iter()
        .filter(|r| r.rotated.is_none())
        .map(|r| (&r.integration, &r.errors))
        .collect();
    assert!(failed.is_empty(), "bootstrapped: {:?}", &failed[..failed.len().min(2)]);

    h.sim.stop();
    let reports = engine.pass(&Default::default()).await;
    let names: Vec<String> = reports.iter().map(|r| r.integration.clone()).collect();
    let expected: Vec<String> = (0..n).map(|k| format!("i{k:04}")).collect();
    assert_eq!(names, expected, "every integration, in the policy's order");
    for r in &reports {
        assert!(!r.reached_everything(), "{}", r.integration);
        let published = h.payload(&format!("{}.json", r.integration));
        match (&r.current, published) {
            (Some(c), Some(p)) => {
                assert_eq!(
                    c.service_account_id,
                    p["service_account_id"].as_u64().unwrap(),
                    "{}",
                    r.integration
                );
                assert_eq!(c.exists, None, "not checked: Mixpanel was not reached");
            }
            (None, None) => assert!(!odd.contains(&r.integration)),
            (c, p) => panic!("{}: reported {c:?}, published {p:?}", r.integration),
        }
    }
}

/// Resync requests (`POST /-/resync`) make the named integrations due at
/// once, but passes asked that way are at least 10 s apart, whatever the
/// rate of requests; names not in the policy change nothing.
#[tokio::test]
async fn in_process_resync_requests_are_spaced() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.policy_file(&etl_policy(&h, ""));
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    let mut p = d.passes(1).await;
    for _ in 0..5 {
        if p.wake_at.unwrap() > h.clock_now() + Span::minutes(1) {
            break;
        }
        p = d.tick(&h).await;
    }
    let idle = p.clone();
    assert!(idle.due["etl"] > h.clock_now() + Span::minutes(1), "{idle:?}");
    let ask = |d: &InProcess, name: &str| assert!(d.health.resync.ask([name.to_string()]));

    // A name not in the policy: nothing moves.
    ask(&d, "nosuch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.progress.borrow().passes, idle.passes);
    assert_eq!(d.progress.borrow().due, idle.due);
    // A request: a pass at once, without moving the clock.
    let at = h.clock_now();
    ask(&d, "etl");
    let p = d.passes(idle.passes + 1).await;
    assert_eq!(h.clock_now(), at);
    // Another right after it: due 10 s after the first, not now.
    ask(&d, "etl");
    let q = d.due_by("etl", at + Span::seconds(10)).await;
    assert_eq!(q.due["etl"], at + Span::seconds(10));
    assert_eq!(q.passes, p.passes, "no pass before the spacing");
    // A third within those 10 s: merged into the same pass.
    ask(&d, "etl");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = d.tick(&h).await;
    assert_eq!(h.clock_now(), at + Span::seconds(10));
    assert_eq!(p.passes, q.passes + 1);
    assert!(
        p.due["etl"] > h.clock_now() + Span::minutes(1),
        "one pass for both: {:?}",
        p.due
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.progress.borrow().passes, p.passes, "no pass left over");
    // Half the spacing later: due 10 s after the last one asked, not 20.
    h.clock.set(at + Span::seconds(15));
    ask(&d, "etl");
    let q = d.due_by("etl", at + Span::seconds(20)).await;
    assert_eq!(q.due["etl"], at + Span::seconds(20));
    d.stop().await;
}

/// Monitoring does not go blind when Mixpanel does: with the simulator
/// stopped, the expiry and next-rotation gauges still come from what the
/// sink publishes (never 0), and every counter exists (at 0) from the start.
#[tokio::test]
async fn in_process_metrics_stay_truthful_with_mixpanel_down() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.policy_file(&etl_policy(&h, ""));
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    let p = d.passes(1).await;
    // Every counter of every integration exists, at 0 until its first event.
    let m = d.metrics.render();
    for needle in [
        "mixpanel_rotator_rotations_total{integration=\"etl\",result=\"success\"} 1",
        "mixpanel_rotator_rotations_total{integration=\"etl\",result=\"failure\"} 0",
        "mixpanel_rotator_passes_total{integration=\"etl\",result=\"error\"} 0",
        "mixpanel_rotator_accounts_deleted_total{integration=\"etl\",reason=\"orphan\"} 0",
        "mixpanel_rotator_hook_failures_total{integration=\"etl\",hook=\"webhook\"} 0",
        "mixpanel_rotator_accounts_in_use_elsewhere{integration=\"etl\"} 0",
        "mixpanel_rotator_build_info{version=",
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
    let rotated = p.reports[0].rotated.clone().expect("bootstrapped");
    let gauge = |m: &str, name: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.starts_with(&format!("mixpanel_rotator_{name}{{integration=\"etl\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
    };
    let m = d.metrics.render();
    let expiry = gauge(&m, "credential_expiry_timestamp_seconds").expect("expiry after the rotation");
    let next = gauge(&m, "next_rotation_timestamp_seconds").expect("next rotation after the rotation");
    assert_eq!(expiry, rotated.expires.unwrap().timestamp() as f64);

    // Mixpanel goes away. The next passes fail to list accounts...
    h.sim.stop();
    d.tick(&h).await;
    let p = d.tick(&h).await;
    assert!(!p.reports[0].reached_everything(), "{:?}", p.reports[0].errors);
    let m = d.metrics.render();
    assert!(
        m.contains("mixpanel_rotator_passes_total{integration=\"etl\",result=\"error\"} 2"),
        "{m}"
    );
    // ...yet the gauges still say what the sink publishes, and are never 0.
    assert_eq!(gauge(&m, "credential_expiry_timestamp_seconds"), Some(expiry), "{m}");
    assert_eq!(gauge(&m, "next_rotation_timestamp_seconds"), Some(next), "{m}");
    // A fresh daemon started while Mixpanel is down knows them too (after a restart).
    d.stop().await;
    let mut fresh = InProcess::start(&h, &cfg, Duration::from_secs(5));
    let p = fresh.passes(1).await;
    assert!(!p.reports[0].reached_everything());
    let current = p.reports[0].current.clone().expect("what the sink publishes");
    assert_eq!(current.exists, None, "not checked: Mixpanel was not reached");
    let m = fresh.metrics.render();
    assert_eq!(gauge(&m, "credential_expiry_timestamp_seconds"), Some(expiry), "{m}");
    assert_eq!(gauge(&m, "next_rotation_timestamp_seconds"), Some(next), "{m}");
    assert!(!m.contains("_timestamp_seconds{integration=\"etl\"} 0\n"), "{m}");
    fresh.stop().await;
}

#[tokio::test]
async fn in_process_reload_applies_a_good_policy_and_rejects_a_broken_one() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.dir.path().join("daemon.toml");
    std::fs::write(&cfg, h.policy(&etl_policy(&h, ""))).unwrap();
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    d.passes(1).await;
    let ci = "[[integrations]]\nname = \"ci\"\nsink = \"local\"\npath = \"ci.json\"\nprojects = [{ id = 101, role = \"consumer\" }]\n";
    std::fs::write(&cfg, h.policy(&etl_policy(&h, ci))).unwrap();
    d.reload.send(()).await.unwrap();
    // A reload makes every integration due at once.
    let p = d.passes(2).await;
    assert_eq!(p.reloads, 1);
    assert_eq!(p.reload_error, None);
    assert!(p.reports.iter().any(|r| r.integration == "ci" && r.rotated.is_some()));
    let ci_account = h.payload("ci.json").unwrap()["service_account_id"].as_u64().unwrap();

    std::fs::write(&cfg, "version = 1\n[mixpanel]\nregion = \"mars\"\n").unwrap();
    d.reload.send(()).await.unwrap();
    let p = d.progress.wait_for(|p| p.reloads == 2).await.unwrap().clone();
    assert!(
        p.reload_error.as_deref().is_some_and(|e| e.contains("mixpanel.region")),
        "{p:?}"
    );
    assert!(
        d.metrics
            .render()
            .contains("mixpanel_rotator_policy_reload_failures_total 1")
    );
    // The previous policy stays in force: the resync notices ci's account is gone and rotates it.
    h.sim.delete_account(ci_account);
    loop {
        let p = d.tick(&h).await;
        if let Some(r) = p.reports.iter().find(|r| r.integration == "ci" && r.rotated.is_some()) {
            assert_eq!(r.rotated.as_ref().unwrap().reason, RotateReason::CurrentMissing);
            break;
        }
    }
    assert_eq!(d.stop().await, Exit::Ok);
}

const EXPLICIT_ETL: &str = "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 101, role = \"analyst\" }]\n";

/// Makes the verification of the next new credential (the only GET /me of a
/// bootstrap with explicit projects) wait at a gate.
fn hold_verification(h: &Harness) -> Gate {
    let gate = Gate::new();
    h.sim
        .inject(Fault::once("GET", "/me", FaultAction::Hold(gate.clone())).from_callers("mpr-"));
    gate
}

#[tokio::test]
async fn in_process_shutdown_during_a_rotation_finishes_it() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.policy_file(EXPLICIT_ETL);
    let gate = hold_verification(&h);
    let d = InProcess::start(&h, &cfg, Duration::from_secs(20));
    gate.arrived(1).await;
    assert_eq!(h.accounts_with_prefix("mpr-etl-").len(), 1, "created");
    assert!(h.payload("etl.json").is_none(), "not published yet");
    d.shutdown.cancel();
    gate.open();
    assert_eq!(d.stop().await, Exit::Ok);
    // Finished, not abandoned: published, working, and no account leaked.
    let p = h.payload("etl.json").expect("the rotation in flight was published");
    h.consumer("etl.json").me().await.unwrap();
    let lineage: Vec<u64> = h.accounts_with_prefix("mpr-etl-").iter().map(|a| a.id).collect();
    assert_eq!(lineage, vec![p["service_account_id"].as_u64().unwrap()]);
    assert!(h.logs.text().contains("Stopping; letting the step in flight finish."));
    h.assert_no_secret_leaked(&[]);
}

#[tokio::test]
async fn in_process_a_rotation_stuck_past_the_shutdown_timeout_fails_and_the_next_run_cleans_up() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.policy_file(EXPLICIT_ETL);
    let gate = hold_verification(&h);
    let d = InProcess::start(&h, &cfg, Duration::from_millis(200));
    gate.arrived(1).await;
    let stray = h.accounts_with_prefix("mpr-etl-")[0].id;
    assert_eq!(d.stop().await, Exit::Failed);
    assert!(h.logs.text().contains("did not finish within --shutdown-timeout"));
    gate.open();
    // The next run: the unpublished account is an orphan, deleted after `orphan_after`.
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    let p = d.passes(1).await;
    assert!(
        h.sim.account(stray).is_some(),
        "an orphan younger than orphan_after is left alone"
    );
    assert!(p.reports[0].plan.delete_later.iter().any(|x| x.id == stray));
    while h.sim.account(stray).is_some() {
        d.tick(&h).await;
        assert!(
            h.clock_now() <= t(START) + Span::hours(1),
            "the orphan was never deleted"
        );
    }
    assert!(h.clock_now() >= t(START) + Span::minutes(15));
    assert_eq!(d.stop().await, Exit::Ok);
}

#[tokio::test]
async fn in_process_failures_back_off_exponentially_and_recover() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.policy_file(EXPLICIT_ETL);
    h.sim.inject(Fault::always(
        "POST",
        "/organizations/1/service-accounts",
        FaultAction::Status(500),
    ));
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    let p = d.passes(1).await;
    assert!(p.reports[0].failed());
    let first = p.due["etl"] - h.clock_now();
    assert!(first >= Span::seconds(24) && first <= Span::seconds(36), "{first}");
    let p = d.tick(&h).await;
    assert!(p.reports[0].failed());
    let second = p.due["etl"] - h.clock_now();
    assert!(second >= Span::seconds(48) && second <= Span::seconds(72), "{second}");
    h.sim.clear_faults();
    let p = d.tick(&h).await;
    assert!(p.reports[0].rotated.is_some(), "{:?}", p.reports[0].errors);
    assert_eq!(
        p.due["etl"] - h.clock_now(),
        Span::seconds(1),
        "success resets the backoff"
    );
    let m = d.metrics.render();
    assert!(
        m.contains("mixpanel_rotator_rotations_total{integration=\"etl\",result=\"failure\"} 2"),
        "{m}"
    );
    assert_eq!(d.stop().await, Exit::Ok);
}

/// Finding 6: SIGTERM while a mirror's lock was held by another process
/// logged "did not finish within --shutdown-timeout" and yet the process
/// ran on (the runtime waited for the blocked lock), needing SIGKILL. Now
/// a stop is a bound: it exits at once, whatever a blocking task holds.
#[tokio::test]
async fn sigterm_with_a_mirrors_lock_held_by_another_process_exits_within_the_timeout() {
    let (h, legacy, port, _) = for_a_process().await;
    let pod = h.dir.path().join("pod");
    let mirrored = format!(
        "[sinks.pod]\ntype = \"file\"\ndir = \"{}\"\n{}mirrors = [{{ sink = \"pod\", path = \"etl.json\" }}]\n",
        pod.display(),
        policy(legacy, port, "1h", "")
    );
    let cfg = h.policy_file(&mirrored);
    // Published once, with no mirror yet: the daemon's first sync writes it.
    let cfg_plain = h.policy_file(&policy(legacy, port, "1h", ""));
    assert_eq!(h.run_bin(&cfg_plain, &["reconcile"], &[]).await.status.code(), Some(0));
    std::fs::create_dir_all(&pod).unwrap();
    let lock = std::fs::File::create(pod.join("etl.json.lock")).unwrap();
    lock.lock().unwrap();
    let mut d = Daemon::start_with(&h, &cfg, "5s", &[]);
    d.expect_note("READY=1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    d.signal("-TERM");
    d.wait_exit(5).await;
    assert!(asked.elapsed() < Duration::from_secs(5), "{:?}", asked.elapsed());
    d.expect_note("STOPPING=1").await;
    drop(lock);
    h.record(d.log_text());
    h.assert_no_secret_leaked(&[]);
}

/// Finding 10: a stuck pass (here: a failpoint that never returns) kept
/// `/readyz` at 200 and `WATCHDOG=1` coming. Now the watchdog is fed only
/// while the loop makes progress, and `/readyz` says it is stuck once no
/// integration has finished for `daemon.stall_timeout`; SIGTERM still
/// ends it within `--shutdown-timeout`.
#[tokio::test]
async fn a_stuck_pass_stops_the_watchdog_and_turns_readyz_503() {
    let (h, legacy, port, base) = for_a_process().await;
    let stall = "[mixpanel]\nverify_timeout = \"5s\"\n";
    let text = h
        .policy(&policy(legacy, port, "1h", ""))
        .replace("[daemon]\n", "[daemon]\nstall_timeout = \"10s\"\n")
        .replace("[mixpanel]\n", stall);
    let cfg = h.dir.path().join("stuck.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut d = Daemon::start_with(
        &h,
        &cfg,
        "2s",
        &[("MIXPANEL_ROTATOR_TEST_FAILPOINT", "before_hooks:etl")],
    );
    d.expect_note("WATCHDOG=1").await;
    eventually(10, "the rotation published, then stuck in its hooks", async || {
        h.payload("etl.json").is_some()
    })
    .await;
    let watchdogs = || {
        d.notes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
    };
    eventually(20, "/readyz 503, stuck", async || {
        get(&format!("{base}/readyz"))
            .await
            .is_some_and(|(s, body)| s == 503 && body.contains("stuck: no integration finished"))
    })
    .await;
    let before = watchdogs();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(watchdogs(), before, "no WATCHDOG=1 while stuck");
    assert!(
        d.log_text().contains("The systemd watchdog is no longer fed"),
        "{}",
        d.log_text()
    );
    assert_eq!(
        get(&format!("{base}/healthz")).await.unwrap().0,
        200,
        "alive, not ready"
    );
    d.signal("-TERM");
    assert_eq!(
        d.wait_exit(6).await,
        Some(1),
        "the step in flight did not finish: exit 1"
    );
    h.record(d.log_text());
    h.assert_no_secret_leaked(&[]);
}

/// Finding 7: under a Mixpanel fault, an unauthenticated caller posting a
/// resync every 0.5 s raised account creations from 3 to 16 in 150 s: each
/// resync pass was a new rotation attempt, failed and rolled back. Now a
/// resync pass before the backoff ends only re-reads the integration.
#[tokio::test]
async fn in_process_resync_requests_never_bypass_the_failure_backoff() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.policy_file(&etl_policy(&h, ""));
    // Every new credential is refused: each rotation attempt creates an
    // account, fails its verification and deletes it.
    h.sim
        .inject(Fault::always("GET", "/me", FaultAction::Status(401)).from_callers("mpr-"));
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    let creates = || {
        h.sim
            .requests()
            .iter()
            .filter(|q| q.method == "POST" && q.path.ends_with("/service-accounts"))
            .count()
    };
    let mut p = d.passes(1).await;
    assert!(p.reports[0].failed());
    assert_eq!(creates(), 1);
    let start = h.clock_now();
    // 150 s of resync requests, one every 0.5 s of the daemon's clock.
    while h.clock_now() < start + Span::seconds(150) {
        assert!(d.health.resync.ask(["etl".to_string()]));
        tokio::time::sleep(Duration::from_millis(5)).await;
        h.clock.advance(Span::milliseconds(500));
        tokio::task::yield_now().await;
        p = d.progress.borrow().clone();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The backoff alone: 30 s, 60 s, 120 s (each ±20%) => at most 3 more.
    assert!(creates() <= 4, "{} creates in 150 s", creates());
    assert!(
        p.passes > 4,
        "the resync passes ran ({} passes), they only re-read",
        p.passes
    );
    let held = d.progress.borrow().reports[0].clone();
    assert!(
        held.rotated.is_none() && held.warnings.iter().any(|w| w.contains("in failure backoff")) || held.failed(),
        "{held:?}"
    );
    d.stop().await;
}

/// Finding 9: a reload that moved an integration (another path or sink)
/// left its old published account unexplained, deleted at `orphan_after`
/// while the old place still served it to consumers that read it only at
/// start. Now the reload carries the old place's payload over: the first
/// rotation at the new place replaces that account, which is deleted only
/// `grace` later.
#[tokio::test]
async fn in_process_a_reload_that_moves_an_integration_keeps_its_old_credential_for_grace() {
    let h = Harness::new(Seed::Demo).await;
    let cfg = h.dir.path().join("daemon.toml");
    let at = |path: &str, sink: &str| {
        format!(
            "[sinks.vaultless]\ntype = \"file\"\ndir = \"{}\"\n[daemon]\nresync_interval = \"1m\"\n[[integrations]]\nname = \"etl\"\nsink = \"{sink}\"\npath = \"{path}\"\ngrace = \"2h\"\norphan_after = \"1m\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n",
            h.dir.path().join("other").display()
        )
    };
    std::fs::write(&cfg, h.policy(&at("etl.json", "local"))).unwrap();
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    d.passes(1).await;
    let old = h.payload("etl.json").unwrap();
    let old_id = old["service_account_id"].as_u64().unwrap();
    // A consumer read it at its start, and uses it rarely.
    h.client_for(&old).me().await.unwrap();
    for (n, (path, sink)) in [("moved/etl.json", "local"), ("etl.json", "vaultless")]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&cfg, h.policy(&at(path, sink))).unwrap();
        let passes = d.progress.borrow().passes;
        d.reload.send(()).await.unwrap();
        // A reload makes every integration due at once: the first pass at the new place.
        let p = d.passes(passes + 1).await;
        assert_eq!((p.reloads, p.reload_error), (n as u64 + 1, None));
        // Half an hour of passes (far past `orphan_after`): the old account stays.
        let start = h.clock_now();
        while h.clock_now() < start + Span::minutes(30) {
            d.tick(&h).await;
            assert!(h.sim.account(old_id).is_some(), "deleted at {}", h.clock_now() - start);
        }
    }
    let new = serde_json::from_slice::<serde_json::Value>(&std::fs::read(h.dir.path().join("other/etl.json")).unwrap())
        .unwrap();
    let first_move =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(h.creds_dir().join("moved/etl.json")).unwrap())
            .unwrap();
    assert_eq!(first_move["previous_service_account_id"].as_u64(), Some(old_id));
    assert_eq!(
        new["previous_service_account_id"], first_move["service_account_id"],
        "each move's first rotation replaces what the old place published"
    );
    h.client_for(&old).me().await.unwrap();
    // `grace` after its replacement (the first move's publish), it goes.
    let replaced = chrono::DateTime::parse_from_rfc3339(first_move["rotated_at"].as_str().unwrap()).unwrap();
    while h.sim.account(old_id).is_some() {
        d.tick(&h).await;
        assert!(
            h.clock_now() <= replaced + Span::hours(2) + Span::minutes(2),
            "never deleted"
        );
    }
    assert!(h.clock_now() >= replaced + Span::hours(2), "deleted before grace");
    assert_eq!(d.stop().await, Exit::Ok);
}

/// Issue 22, points 9 and 1: after a start the gauges waited for the first
/// pass (up to `[daemon] spread`), so a restart looked like an outage; and
/// an integration removed by a reload kept its gauges until a restart (an
/// alert about it fired weeks later). Now the gauges come from the
/// primaries at start, and a reload removes every series of what it drops.
#[tokio::test]
async fn gauges_exist_from_the_start_and_leave_with_their_integration() {
    let (h, legacy, port, base) = for_a_process().await;
    let ci = "[[integrations]]\nname = \"ci\"\nsink = \"local\"\npath = \"ci.json\"\nprojects = [{ id = 101, role = \"consumer\" }]\nmirrors = [{ sink = \"local\", path = \"ci-copy.json\" }]\n";
    let both = h
        .policy(&policy(legacy, port, "1h", ci))
        .replace("spread = \"0s\"", "spread = \"30s\"");
    let cfg = h.dir.path().join("gauges.toml");
    std::fs::write(&cfg, &both).unwrap();
    assert_eq!(h.run_bin(&cfg, &["reconcile"], &[]).await.status.code(), Some(0));
    let mut d = Daemon::start(&h, &cfg);
    let started = Instant::now();
    eventually(2, "the gauges of both integrations", async || {
        get(&format!("{base}/metrics")).await.is_some_and(|(_, m)| {
            ["etl", "ci"].iter().all(|i| {
                m.contains(&format!(
                    "mixpanel_rotator_credential_expiry_timestamp_seconds{{integration=\"{i}\"}}"
                )) && m.contains(&format!(
                    "mixpanel_rotator_next_rotation_timestamp_seconds{{integration=\"{i}\"}}"
                ))
            })
        })
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    eventually(40, "ci's mirror gauge", async || {
        get(&format!("{base}/metrics"))
            .await
            .is_some_and(|(_, m)| m.contains("mixpanel_rotator_mirror_up_to_date{integration=\"ci\""))
    })
    .await;
    // `ci` leaves the policy: every series of it goes at the reload.
    std::fs::write(&cfg, h.policy(&policy(legacy, port, "1h", ""))).unwrap();
    d.signal("-HUP");
    d.expect_note("RELOADING=1").await;
    eventually(10, "no series of ci left", async || {
        get(&format!("{base}/metrics"))
            .await
            .is_some_and(|(_, m)| !m.contains("integration=\"ci\"") && m.contains("integration=\"etl\""))
    })
    .await;
    d.signal("-TERM");
    assert_eq!(d.wait_exit(10).await, Some(0));
    h.record(d.log_text());
    h.assert_no_secret_leaked(&[]);
}

/// Two daemons share the rotator's own credential in Vault
/// (`[mixpanel.self]`) for several of its lifetimes: each self-rotation is
/// made once (compare-and-swap), both act as the credential in the payload
/// after their next pass, the previous own accounts go, and no pass of
/// either daemon fails.
#[tokio::test]
async fn two_daemons_share_the_rotators_own_credential_and_no_pass_fails() {
    let _own = OWN_CREDENTIAL.lock().await;
    use mixpanel_rotator::policy::SELF_NAME;
    let h = Harness::new(Seed::Demo).await;
    let (sink, path) = Backend::Vault.sink(&h);
    let text = format!(
        "{sink}\n[mixpanel.self]\nsink = \"s\"\npath = \"{path}\"\nttl = \"6h\"\nrenew_before = \"2h\"\ngrace = \"30m\"\n{}",
        etl_policy(&h, "").replace("[daemon]\n", "[daemon]\nspread = \"2m\"\n")
    );
    let cfg = h.policy_file(&text);
    // Replicas: each its own share of `spread`.
    let mut a = InProcess::start_with_share(&h, &cfg, Duration::from_secs(5), 0.1);
    let mut b = InProcess::start_with_share(&h, &cfg, Duration::from_secs(5), 0.7);
    let mut seen = vec![];
    let start = h.clock_now();
    let mut own_accounts = std::collections::BTreeSet::new();
    while h.clock_now() - start < Span::hours(15) {
        let (pa, pb) = (a.idle().await, b.idle().await);
        let wake = [pa.wake_at, pb.wake_at]
            .into_iter()
            .flatten()
            .min()
            .expect("an idle daemon");
        h.clock.set(wake.max(h.clock_now()));
        if pa.wake_at.is_some_and(|w| w <= wake) {
            seen.push(a.passes(pa.passes + 1).await);
        }
        if pb.wake_at.is_some_and(|w| w <= wake) {
            seen.push(b.passes(pb.passes + 1).await);
        }
        let own = h
            .sim
            .accounts()
            .into_iter()
            .filter(|x| x.username.starts_with("mpr-rotator-"))
            .map(|x| x.id)
            .collect::<Vec<_>>();
        assert!(own.len() <= 2, "at most the own account and its predecessor: {own:?}");
        own_accounts.extend(own);
    }
    // Both replicas are due at the same renewal instant (the spread delays
    // only their first pass): they race, and the compare-and-swap decides;
    // the loser deletes its new account and reports the conflict. Nothing
    // else may fail.
    let mut races = 0;
    for p in &seen {
        for r in &p.reports {
            for e in &r.errors {
                assert_eq!(e.code().to_string(), "publish.sink.conflict", "{}: {e}", r.integration);
                races += 1;
            }
        }
    }
    assert!(races <= own_accounts.len() * 2, "{races} races lost");
    assert!(
        own_accounts.len() >= 3,
        "several self-rotations in 15h of a 6h ttl: {own_accounts:?}"
    );
    let seed = h.sim.admin().username;
    assert!(
        h.sim.accounts().iter().all(|x| x.username != seed),
        "the seed was deleted"
    );
    assert!(
        seen.iter()
            .any(|p| p.reports.iter().any(|r| r.integration == SELF_NAME))
    );
    // Both end with a clean pass, and the published own account exists.
    eprintln!(
        "{races} races lost, {} own accounts, {} passes",
        own_accounts.len(),
        seen.len()
    );
    let sink = mixpanel_rotator::sink::build("s", &policy_sink(&cfg)).unwrap();
    let (own, _) = sink.read_current(&path).await.unwrap().unwrap();
    for (d, name) in [(&a, "a"), (&b, "b")] {
        let last = d.progress.borrow().reports.clone();
        assert!(last.iter().all(|r| r.errors.is_empty()), "{name}: {last:#?}");
    }
    assert!(h.sim.account(own.service_account_id).is_some());
    a.stop().await;
    b.stop().await;
}

/// Where no `validate` runs first (a pod), the daemon itself says at start
/// that the own credential is kept where a reboot loses it.
#[tokio::test]
async fn the_daemon_warns_of_an_own_credential_on_tmpfs() {
    let _own = OWN_CREDENTIAL.lock().await;
    let h = Harness::new(Seed::Demo).await;
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm is a tmpfs on Linux");
    let cfg = h.policy_file(&format!(
        "[sinks.shm]\ntype = \"file\"\ndir = \"{}\"\n[mixpanel.self]\nsink = \"shm\"\npath = \"rotator.json\"\n",
        shm.path().display()
    ));
    let mut d = InProcess::start(&h, &cfg, Duration::from_secs(5));
    d.idle().await;
    assert!(
        h.logs.text().contains("is kept where a reboot loses it"),
        "{}",
        h.logs.text()
    );
    d.stop().await;
}
