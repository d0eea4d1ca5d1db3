//! Mirrors: copies of the primary beside each consumer. They follow the
//! primary, are restored when deleted, corrupted or edited without a single
//! Mixpanel call, never decide anything, and a process killed in the middle
//! of a mirror write leaves the old payload or the new one, never a part.

use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use mixpanel_rotator::metrics::Metrics;
use mixpanel_rotator::rotation::{MirrorState, PassOptions, RotateReason, Step};
use mixpanel_rotator::simulator::Seed;

use crate::common::*;

/// The directory of the mirror sink `pod`.
fn pod_dir(h: &Harness) -> PathBuf {
    h.dir.path().join("pod")
}

/// `etl` published to the file sink `local`, mirrored into `pod` (with `mirrors = false`, not mirrored).
fn etl(h: &Harness, mirrors: bool) -> String {
    let mirrors = if mirrors {
        "mirrors = [{ sink = \"pod\", path = \"etl.json\" }]\n"
    } else {
        ""
    };
    format!(
        "[sinks.pod]\ntype = \"file\"\ndir = \"{}\"\n\n[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\nadopt = {}\n{mirrors}",
        pod_dir(h).display(),
        h.accounts_with_prefix("etl-legacy")[0].id
    )
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn mutations(h: &Harness) -> usize {
    h.sim.requests().iter().filter(|q| q.is_mutating()).count()
}

#[tokio::test]
async fn a_mirror_follows_the_primary_and_is_restored_without_any_mixpanel_call() {
    let h = Harness::new(Seed::Demo).await;
    let metrics = Metrics::shared();
    let engine = h.engine(&etl(&h, true)).with_metrics(metrics.clone());
    let (primary, mirror) = (h.creds_dir().join("etl.json"), pod_dir(&h).join("etl.json"));

    // The bootstrap writes the mirror in the same pass, byte for byte the primary.
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.rotated.as_ref().unwrap().reason, RotateReason::Bootstrap);
    assert_eq!(r.mirrors.len(), 1);
    assert_eq!(r.mirrors[0].state, MirrorState::Updated);
    assert_eq!(read(&mirror), read(&primary));
    let creds: serde_json::Value = serde_json::from_slice(&read(&mirror).unwrap()).unwrap();
    h.client_for(&creds).me().await.unwrap();
    assert_eq!(std::fs::metadata(&mirror).unwrap().permissions().mode() & 0o777, 0o600);

    // A quiet pass reads the mirror and leaves it alone.
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.mirrors[0].state, MirrorState::InSync);

    let damages: [(&str, &dyn Fn()); 3] = [
        ("deleted", &|| std::fs::remove_file(&mirror).unwrap()),
        ("corrupted", &|| {
            std::fs::write(&mirror, b"{\"username\": \"trunc").unwrap()
        }),
        ("edited (another secret)", &|| {
            let mut p = creds.clone();
            p["secret"] = "not-the-secret-0123456789abcdef".into();
            std::fs::write(&mirror, serde_json::to_vec(&p).unwrap()).unwrap();
        }),
    ];
    for (how, damage) in damages {
        damage();
        let before = read(&mirror);
        // `status` and `plan` say so, and change nothing.
        let dry = engine
            .pass(&PassOptions {
                dry_run: true,
                ..Default::default()
            })
            .await;
        let want = if how == "deleted" {
            MirrorState::Missing
        } else {
            MirrorState::Stale
        };
        assert_eq!(dry[0].mirrors[0].state, want, "{how}");
        assert_eq!(read(&mirror), before, "{how}: a dry run writes nothing");
        let table = mixpanel_rotator::render::status_table(&dry);
        assert!(table.contains("MIRRORS") && table.contains("0/1 in sync"), "{table}");
        // The daemon's mirror sync restores it with no Mixpanel call at all.
        h.sim.clear_requests();
        let synced = engine.sync_mirrors(None).await;
        assert!(synced[0].errors.is_empty(), "{how}: {:?}", synced[0].errors);
        assert_eq!(synced[0].views[0].state, MirrorState::Updated, "{how}");
        assert_eq!(read(&mirror), read(&primary), "{how}: restored byte for byte");
        assert!(h.sim.requests().is_empty(), "{how}: {:?}", h.sim.requests());
    }

    // So does a full pass, with no mutation in Mixpanel.
    std::fs::remove_file(&mirror).unwrap();
    h.sim.clear_requests();
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.mirrors[0].state, MirrorState::Updated);
    assert_eq!(mutations(&h), 0);
    assert_eq!(read(&mirror), read(&primary));

    // A rotation updates the mirror in the same pass.
    h.clock.advance(chrono::Duration::hours(1));
    let r = h.force(&engine, "etl", false).await;
    ok(&r);
    assert_eq!(r.mirrors[0].state, MirrorState::Updated);
    assert_eq!(
        r.mirrors[0].rotation_id,
        Some(r.rotated.as_ref().unwrap().rotation_id.clone())
    );
    assert_eq!(read(&mirror), read(&primary));
    let m = metrics.render();
    assert!(
        m.contains("mixpanel_rotator_mirror_up_to_date{integration=\"etl\",sink=\"pod\",path=\"etl.json\"} 1"),
        "{m}"
    );
    h.assert_no_secret_leaked(&[&r]);
}

use std::os::unix::fs::PermissionsExt as _;

#[tokio::test]
async fn a_failing_mirror_fails_the_pass_and_touches_nothing_else() {
    let h = Harness::new(Seed::Demo).await;
    let metrics = Metrics::shared();
    let (url, hooks) = crate::hooks::receiver().await;
    let url_file = h.dir.path().join("webhook.url");
    std::fs::write(&url_file, &url).unwrap();
    let policy = format!(
        "{}webhook = {{ url = {{ file = \"{}\" }} }}\n",
        etl(&h, true),
        url_file.display()
    );
    let engine = h.engine(&policy).with_metrics(metrics.clone());
    ok(&h.pass(&engine).await);
    let primary = read(&h.creds_dir().join("etl.json"));
    let accounts = h.sim.accounts();
    // The mirror's directory becomes a regular file: no write can succeed there.
    std::fs::remove_dir_all(pod_dir(&h)).unwrap();
    std::fs::write(pod_dir(&h), b"not a directory").unwrap();
    h.clock.advance(chrono::Duration::hours(1));
    h.sim.clear_requests();
    let r = h.force(&engine, "etl", false).await;
    // The rotation stands; the mirror's failure is an error of the pass.
    assert!(r.rotated.is_some());
    assert!(r.failed());
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    let e = &r.errors[0];
    assert_eq!(e.step, Step::Mirror);
    let msg = e.to_string();
    for needle in [
        "integration `etl`",
        "bringing a mirror up to date failed",
        "mirror: file sink `pod`",
        "path `etl.json`",
        "the primary and the accounts are untouched",
    ] {
        assert!(msg.contains(needle), "{needle:?} in {msg}");
    }
    assert_eq!(r.mirrors[0].state, MirrorState::Failed);
    // Nothing else happened because of it: the only mutations are the rotation's own.
    let deletes = h.sim.requests().iter().filter(|q| q.method == "DELETE").count();
    assert_eq!(deletes, 0);
    assert_ne!(
        read(&h.creds_dir().join("etl.json")),
        primary,
        "the rotation was published"
    );
    assert_eq!(h.sim.accounts().len(), accounts.len() + 1);
    let m = metrics.render();
    assert!(
        m.contains("mixpanel_rotator_mirror_up_to_date{integration=\"etl\",sink=\"pod\",path=\"etl.json\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("mixpanel_rotator_mirror_writes_total{integration=\"etl\",result=\"error\"} 1"),
        "{m}"
    );
    // The webhook says so, naming the mirror, never the secret.
    let events = hooks.lock().unwrap().clone();
    let failed: Vec<_> = events.iter().filter(|e| e["event"] == "mirror_failed").collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("mirror: file sink `pod`"),
        "{:?}",
        failed[0]
    );
    assert!(
        failed[0]["text"]
            .as_str()
            .unwrap()
            .contains("a mirror of `etl` is not up to date")
    );
    h.assert_no_secret_leaked(&[&r]);
    // Fixed, the next sync writes it.
    std::fs::remove_file(pod_dir(&h)).unwrap();
    let synced = engine.sync_mirrors(None).await;
    assert_eq!(synced[0].views[0].state, MirrorState::Updated);
    assert_eq!(
        read(&pod_dir(&h).join("etl.json")),
        read(&h.creds_dir().join("etl.json"))
    );
}

/// A `.etl.json.XXXXXXXX.tmp` in `dir`: a mirror write in progress.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn sigkill_during_a_mirror_write_leaves_the_old_or_the_new_payload_never_a_part() {
    let h = Harness::realtime(Seed::Demo).await;
    let config = h.policy_file(&etl(&h, true));
    // Another rotator on the same primary, without the mirror, rotates it between runs.
    let other = h.engine(&etl(&h, false));
    let (primary, mirror) = (h.creds_dir().join("etl.json"), pod_dir(&h).join("etl.json"));
    let out = h.run_bin(&config, &["reconcile"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&mirror), read(&primary));

    // 1. Killed with the new payload written to its temporary file, not yet renamed.
    let old = read(&mirror).unwrap();
    ok(&h.force(&other, "etl", false).await);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mixpanel-rotator"))
        .arg("--config")
        .arg(&config)
        .arg("reconcile")
        .env("MIXPANEL_ROTATOR_TEST_FAILPOINT", "mirror_before_rename:etl")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while temp_files(&pod_dir(&h)).is_empty() {
        assert!(
            started.elapsed() < StdDuration::from_secs(20),
            "the mirror write never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process ended before its mirror write"
        );
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    child.kill().await.unwrap(); // SIGKILL
    assert_eq!(
        read(&mirror).unwrap(),
        old,
        "the mirror still holds the old payload, whole"
    );
    assert_eq!(temp_files(&pod_dir(&h)).len(), 1, "the dead writer's temporary file");
    let out = h.run_bin(&config, &["reconcile"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&mirror), read(&primary), "the next run writes the new payload");
    assert!(temp_files(&pod_dir(&h)).is_empty(), "and removes the leftover");

    // 2. Killed at random moments of runs that each have a mirror to write.
    let (mut kept_old, mut got_new) = (0, 0);
    for k in 0..16u64 {
        let before = read(&mirror).unwrap();
        ok(&h.force(&other, "etl", false).await);
        let new = read(&primary).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mixpanel-rotator"))
            .arg("--config")
            .arg(&config)
            .arg("reconcile")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Spread over a run's life (start-up, listing, the mirror write).
        tokio::time::sleep(StdDuration::from_millis(k.wrapping_mul(37) % 80)).await;
        let _ = child.kill().await;
        let now = read(&mirror).unwrap();
        if now == before {
            kept_old += 1;
        } else {
            assert_eq!(
                now, new,
                "run {k}: the mirror holds a whole payload, the old or the new"
            );
            got_new += 1;
        }
        serde_json::from_slice::<serde_json::Value>(&now).unwrap();
    }
    println!("SIGKILL at random moments: {kept_old} run(s) left the old payload, {got_new} the new one");
    let out = h.run_bin(&config, &["reconcile"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&mirror), read(&primary));
    assert!(temp_files(&pod_dir(&h)).is_empty());
    h.assert_no_secret_leaked(&[]);
}

/// Where the replicas' shared primary lives.
#[derive(Debug, Clone, Copy)]
enum Primary {
    Vault,
    Aws,
}

fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{prefix}-{:08x}", h.finish() as u32)
}

/// The `[sinks.primary]` section and the integration's path in it.
async fn primary_sink(h: &Harness, kind: Primary) -> (String, String) {
    match kind {
        Primary::Vault => {
            let bao = crate::vault::Bao::from_env();
            let prefix = unique("replicas");
            bao.rotator_policy(&prefix, &prefix).await;
            let token = bao.token(&[&prefix]).await;
            let file = h.dir.path().join("vault.token");
            std::fs::write(&file, token).unwrap();
            (
                format!(
                    "[sinks.primary]\ntype = \"vault\"\naddress = \"{}\"\nmount = \"secret\"\nauth = {{ method = \"token\", token = {{ file = \"{}\" }} }}\n",
                    bao.addr,
                    file.display()
                ),
                format!("{prefix}/etl"),
            )
        }
        Primary::Aws => {
            let url = std::env::var("MPR_TEST_MOTO_URL").unwrap_or_else(|_| {
                panic!("MPR_TEST_MOTO_URL is not set: moto is not running. Run the tests with scripts/test.sh, which starts it.")
            });
            (
                format!(
                    "[sinks.primary]\ntype = \"aws-secrets-manager\"\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\n"
                ),
                unique("replicas"),
            )
        }
    }
}

/// One replica: a daemon in-process on the harness's clock, with its own
/// mirror directory and its own share of `spread`.
struct Replica {
    progress: tokio::sync::watch::Receiver<mixpanel_rotator::daemon::Progress>,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<mixpanel_rotator::exit::Exit>,
    mirror: PathBuf,
    /// What `/startupz` answers.
    health: std::sync::Arc<mixpanel_rotator::server::Health>,
}

/// Passes, mirror syncs and reloads so far: moves whenever the daemon did something.
fn work(p: &mixpanel_rotator::daemon::Progress) -> u64 {
    p.passes + p.mirror_syncs + p.reloads
}

impl Replica {
    fn start(h: &Harness, primary: &str, path: &str, k: usize, share: f64) -> Self {
        let pod = h.dir.path().join(format!("pod-{k}"));
        let config = h.policy_file(&format!(
            "{primary}\n[sinks.pod]\ntype = \"file\"\ndir = \"{pod}\"\n\n\
             [daemon]\nresync_interval = \"30m\"\nspread = \"30s\"\nmirror_interval = \"10m\"\n\n\
             [[integrations]]\nname = \"etl\"\nsink = \"primary\"\npath = \"{path}\"\nrole = \"analyst\"\nadopt = {legacy}\n\
             schedule = \"0 * * * *\"\ngrace = \"15m\"\norphan_after = \"5m\"\nmirrors = [{{ sink = \"pod\", path = \"etl.json\" }}]\n",
            pod = pod.display(),
            legacy = h.accounts_with_prefix("etl-legacy")[0].id
        ));
        let daemon = mixpanel_rotator::daemon::Daemon::new(config, std::sync::Arc::new(h.clock.clone()))
            .retry(fast_retry(), fast_retry())
            .spread_share(share)
            .shutdown_timeout(StdDuration::from_secs(5));
        let (progress, health) = (daemon.progress(), daemon.health());
        let (control, handle) = mixpanel_rotator::daemon::Control::new();
        Self {
            health,
            progress,
            shutdown: handle.shutdown,
            task: tokio::spawn(daemon.run(control)),
            mirror: pod.join("etl.json"),
        }
    }

    fn wake_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.progress
            .borrow()
            .wake_at
            .expect("an idle daemon has a wake-up time")
    }

    /// Waits until the daemon has done something since `before` and is idle again after `now`.
    async fn settled(&mut self, before: u64, now: chrono::DateTime<chrono::Utc>) {
        let wait = self
            .progress
            .wait_for(|p| work(p) > before && p.wake_at.is_some_and(|w| w > now));
        match tokio::time::timeout(StdDuration::from_secs(30), wait).await {
            Ok(Ok(_)) => {}
            _ => panic!("a replica did not settle after {now}"),
        }
    }
}

fn creates(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|q| q.method == "POST" && q.path.ends_with("/service-accounts"))
        .count()
}

/// Three replicas of a pod share one primary, each writing its own mirror,
/// through 20 scheduled rotations: every mirror always authenticates, and
/// each rotation creates one account (the others see the first's publish).
async fn replicas_share_one_primary(kind: Primary) {
    let h = Harness::new(Seed::Demo).await;
    let (primary, path) = primary_sink(&h, kind).await;
    let mut replicas: Vec<Replica> = [0.1, 0.5, 0.9]
        .into_iter()
        .enumerate()
        .map(|(k, share)| Replica::start(&h, &primary, &path, k, share))
        .collect();
    let started = |r: &Replica| r.health.started.load(std::sync::atomic::Ordering::SeqCst);
    for r in &mut replicas {
        // The first mirror sync, at start: nothing to copy yet, so the app would wait.
        r.settled(0, h.clock_now() - chrono::Duration::seconds(1)).await;
        assert!(
            !started(r),
            "/startupz answers 503 before the mirror holds a credential"
        );
    }
    let start = h.clock_now();
    let mut per_rotation: Vec<usize> = vec![];
    let (mut last_creates, mut last_hour) = (0, -1i64);
    let mut checks = 0;
    let mut clients = std::collections::HashMap::new();
    let end = start + chrono::Duration::hours(20) + chrono::Duration::minutes(50);
    while h.clock_now() < end {
        let next = replicas.iter().map(Replica::wake_at).min().unwrap();
        let due: Vec<(usize, u64)> = replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.wake_at() <= next)
            .map(|(k, r)| (k, work(&r.progress.borrow())))
            .collect();
        let hour = (next - start).num_hours();
        if hour != last_hour {
            // Creates in the hour before: the bootstrap, then one scheduled rotation each.
            let now_creates = creates(&h);
            if last_hour >= 0 {
                per_rotation.push(now_creates - last_creates);
            }
            last_creates = now_creates;
            last_hour = hour;
        }
        h.clock.set(next);
        for (k, before) in due {
            replicas[k].settled(before, next).await;
        }
        // Every mirror that exists authenticates (all exist once the first publish is seen).
        for r in &replicas {
            match read(&r.mirror) {
                Some(bytes) => {
                    // One client per credential (building one loads the TLS roots).
                    let p: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    let client = clients
                        .entry(p["rotation_id"].as_str().unwrap().to_string())
                        .or_insert_with(|| h.client_for(&p));
                    client
                        .me()
                        .await
                        .unwrap_or_else(|e| panic!("{kind:?}: a mirror's credential fails at {next}: {e}"));
                    checks += 1;
                }
                None => assert!(per_rotation.is_empty(), "{kind:?}: a mirror vanished at {next}"),
            }
        }
    }
    assert!(
        replicas.iter().all(started),
        "/startupz answers 200 once the mirror was written"
    );
    let total = creates(&h);
    per_rotation.push(total - last_creates);
    println!(
        "{kind:?} primary, 3 replicas: accounts created per rotation (bootstrap first, then 20 scheduled): {per_rotation:?}; {total} in all; {checks} mirror checks"
    );
    assert!(total <= 22, "{kind:?}: {total} accounts created for 21 rotations");
    assert_eq!(per_rotation.len(), 21, "{per_rotation:?}");
    // Past the last grace and orphan_after: one lineage account is left, the published one.
    let lineage = h.accounts_with_prefix("mpr-etl-");
    assert_eq!(lineage.len(), 1, "{kind:?}: {lineage:?}");
    let mut ids = vec![];
    for r in &replicas {
        let p: serde_json::Value = serde_json::from_slice(&read(&r.mirror).unwrap()).unwrap();
        ids.push(p["service_account_id"].as_u64().unwrap());
    }
    assert!(ids.iter().all(|id| *id == lineage[0].id), "{ids:?} / {}", lineage[0].id);
    assert!(
        h.accounts_with_prefix("etl-legacy").is_empty(),
        "the adopted account was retired"
    );
    for r in replicas {
        r.shutdown.cancel();
        let exit = tokio::time::timeout(StdDuration::from_secs(20), r.task)
            .await
            .expect("the daemon stops")
            .expect("the daemon task does not panic");
        assert_eq!(exit, mixpanel_rotator::exit::Exit::Ok);
    }
    h.assert_no_secret_leaked(&[]);
}

#[tokio::test]
async fn three_replicas_sharing_a_vault_primary_create_one_account_per_rotation() {
    replicas_share_one_primary(Primary::Vault).await;
}

#[tokio::test]
async fn three_replicas_sharing_an_aws_primary_create_one_account_per_rotation() {
    replicas_share_one_primary(Primary::Aws).await;
}

/// Moto's Secrets Manager, for set-up and checks.
async fn moto() -> aws_sdk_secretsmanager::Client {
    let url = std::env::var("MPR_TEST_MOTO_URL").unwrap_or_else(|_| {
        panic!(
            "MPR_TEST_MOTO_URL is not set: moto is not running. Run the tests with scripts/test.sh, which starts it."
        )
    });
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&conf)
}

/// The current payload of an AWS secret.
async fn aws_current(c: &aws_sdk_secretsmanager::Client, name: &str) -> String {
    c.get_secret_value()
        .secret_id(name)
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn vault_and_aws_mirrors_are_written_and_restored_from_the_primary() {
    let h = Harness::new(Seed::Demo).await;
    let (vault, kv_path) = primary_sink(&h, Primary::Vault).await;
    let (aws, secret) = primary_sink(&h, Primary::Aws).await;
    // The primary is the file sink; the mirrors are in Vault and in AWS.
    let policy = format!(
        "{}{}\n[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\nadopt = {}\n\
         mirrors = [{{ sink = \"vault\", path = \"{kv_path}\" }}, {{ sink = \"aws\", path = \"{secret}\" }}]\n",
        vault.replace("[sinks.primary]", "[sinks.vault]"),
        aws.replace("[sinks.primary]", "[sinks.aws]"),
        h.accounts_with_prefix("etl-legacy")[0].id
    );
    let engine = h.engine(&policy);
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(
        r.mirrors.iter().map(|m| m.state).collect::<Vec<_>>(),
        vec![MirrorState::Updated, MirrorState::Updated]
    );
    let bao = crate::vault::Bao::from_env();
    let primary: serde_json::Value = h.payload("etl.json").unwrap();
    let (data, _) = bao.read(&kv_path).await;
    assert_eq!(data, primary);
    let c = moto().await;
    let stored: serde_json::Value = serde_json::from_str(&aws_current(&c, &secret).await).unwrap();
    assert_eq!(stored, primary);
    h.client_for(&data).me().await.unwrap();

    // Both are damaged behind the rotator's back: something that is not a payload.
    let (st, body) = bao
        .call(
            reqwest::Method::POST,
            &format!("secret/data/{kv_path}"),
            Some(serde_json::json!({"data": {"note": "overwritten by hand"}})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    c.put_secret_value()
        .secret_id(&secret)
        .secret_string("not a payload")
        .send()
        .await
        .unwrap();
    let dry = engine
        .pass(&PassOptions {
            dry_run: true,
            ..Default::default()
        })
        .await;
    assert_eq!(
        dry[0].mirrors.iter().map(|m| m.state).collect::<Vec<_>>(),
        vec![MirrorState::Stale, MirrorState::Stale]
    );
    h.sim.clear_requests();
    let synced = engine.sync_mirrors(None).await;
    assert!(synced[0].errors.is_empty(), "{:?}", synced[0].errors);
    assert!(h.sim.requests().is_empty());
    let (data, _) = bao.read(&kv_path).await;
    assert_eq!(data, primary);
    let stored: serde_json::Value = serde_json::from_str(&aws_current(&c, &secret).await).unwrap();
    assert_eq!(stored, primary);
    // In sync now: the next sync writes nothing.
    let synced = engine.sync_mirrors(None).await;
    assert_eq!(
        synced[0].views.iter().map(|m| m.state).collect::<Vec<_>>(),
        vec![MirrorState::InSync, MirrorState::InSync]
    );
    h.assert_no_secret_leaked(&[&r]);
}
