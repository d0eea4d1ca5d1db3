//! `run` as a real subprocess: scheduling without outside nudges, HTTP
//! endpoints, signals, and systemd notifications on a test NOTIFY_SOCKET.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mixpanel_rotator::mixpanel::types::Role;
use mixpanel_rotator::simulator::{Fault, FaultAction, Seed};
use tokio::net::UnixDatagram;

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
        let sock = h.dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        let log = h.dir.path().join("daemon.log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mixpanel-rotator"))
            .arg("--config")
            .arg(config)
            .args(["--log-level", "debug", "run", "--shutdown-timeout", "20s"])
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
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[daemon]\nresync_interval = \"10s\"\n\
         [[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\ngrace = \"{grace}\"\nadopt = {legacy}\n{extra}"
    )
}

#[tokio::test]
async fn the_daemon_bootstraps_serves_deletes_after_grace_reloads_and_stops() {
    let h = Harness::realtime(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].id;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
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
    let first = with_credential(h.policy(&policy(legacy, port, "3s", "")));
    assert!(first.contains("credential = \"mixpanel\""));
    std::fs::write(&cfg, first).unwrap();
    let mut d = Daemon::start(&h, &cfg);
    d.expect_note("READY=1").await;

    // It bootstraps on its own and says so on /readyz.
    eventually(10, "etl published", async || h.payload("etl.json").is_some()).await;
    eventually(10, "/readyz 200", async || {
        get(&format!("{base}/readyz")).await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);
    assert!(h.sim.account(legacy).is_some(), "the old account is kept during grace");
    // The old account goes when grace ends, without any outside nudge.
    let published = Instant::now();
    eventually(10, "old account deleted after grace", async || {
        h.sim.account(legacy).is_none()
    })
    .await;
    assert!(published.elapsed() >= Duration::from_secs(1), "not before grace");
    let (_, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    for needle in [
        "mixpanel_rotator_rotations_total{integration=\"etl\",result=\"success\"} 1",
        "mixpanel_rotator_accounts_deleted_total{integration=\"etl\",reason=\"retiring\"} 1",
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
    std::fs::write(&cfg, with_credential(h.policy(&policy(legacy, port, "3s", ci)))).unwrap();
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
    let (_, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    assert!(
        metrics.contains("mixpanel_rotator_policy_reload_failures_total 1"),
        "{metrics}"
    );
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().0, 200);
    h.sim
        .delete_account(h.payload("ci.json").unwrap()["service_account_id"].as_u64().unwrap());
    eventually(
        15,
        "the old policy still rotates ci (resync notices the deletion)",
        async || {
            h.payload("ci.json")
                .is_some_and(|p| h.sim.account(p["service_account_id"].as_u64().unwrap()).is_some())
        },
    )
    .await;

    d.signal("-TERM");
    assert_eq!(d.wait_exit(10).await, Some(0));
    d.expect_note("STOPPING=1").await;
    h.record(d.log_text());
    h.assert_no_secret_leaked(&[]);
}

#[tokio::test]
async fn sigterm_during_a_rotation_finishes_it_and_exits_zero() {
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        h.policy(&format!(
            "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n\
             [server]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        )),
    )
    .unwrap();
    // The verification of the new credential (the only GET /me here) takes 2s.
    h.sim
        .inject(Fault::once("GET", "/me", FaultAction::Latency(Duration::from_secs(2))));
    let mut d = Daemon::start(&h, &cfg);
    eventually(10, "account created", async || {
        !h.accounts_with_prefix("mpr-etl-").is_empty()
    })
    .await;
    assert!(h.payload("etl.json").is_none(), "not published yet");
    d.signal("-TERM");
    let stopped = Instant::now();
    assert_eq!(d.wait_exit(20).await, Some(0), "{}", d.log_text());
    assert!(stopped.elapsed() < Duration::from_secs(10));
    // Finished, not abandoned: published, working, and no account leaked.
    let p = h.payload("etl.json").expect("the rotation in flight was published");
    h.consumer("etl.json").me().await.unwrap();
    let lineage: Vec<u64> = h.accounts_with_prefix("mpr-etl-").iter().map(|a| a.id).collect();
    assert_eq!(lineage, vec![p["service_account_id"].as_u64().unwrap()]);
    // Nothing else was started after SIGTERM.
    let log = d.log_text();
    assert!(log.contains("Stopping; letting the step in flight finish."), "{log}");
    let _ = Role::Admin;
    h.record(log);
    h.assert_no_secret_leaked(&[]);
}
