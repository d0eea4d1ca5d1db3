//! Where the core meets an operator's world (issue 21): a Mixpanel clock
//! that disagrees with ours, an `orphan_after` too short to see a
//! consumer's use, an `adopt` pointing into another integration, a mirror
//! that cannot be written, aliases of one place, held locks, a stuck
//! audit file. Each test is the regression test of one finding: it failed
//! before the fix.

use chrono::Duration;
use mixpanel_rotator::rotation::{Cause, Report};
use mixpanel_rotator::simulator::Seed;

use crate::common::*;

/// A file sink of its own (a pod) with one integration `etl`.
fn pod(h: &Harness, name: &str, extra: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"file\"\ndir = \"{}\"\n[[integrations]]\nname = \"etl\"\nsink = \"{name}\"\npath = \"etl.json\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n{extra}\n",
        h.dir.path().join(name).display()
    )
}

fn read(h: &Harness, dir: &str, path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(h.dir.path().join(dir).join(path)).unwrap()).unwrap()
}

fn in_use_elsewhere(r: &Report, id: u64) -> bool {
    r.errors
        .iter()
        .any(|e| matches!(&e.cause, Cause::InUseElsewhere(u) if u.id == id))
}

/// Finding 5: with `orphan_after = "1m"` the own-use window was the whole
/// minute, so a consumer's use could never count: two pods with separate
/// primaries, each application using its credential every 10 s, and one
/// pod's live credential was deleted at 1 minute of age.
#[tokio::test]
async fn at_orphan_after_one_minute_a_consumer_using_its_credential_every_10s_keeps_it() {
    let h = Harness::new(Seed::Demo).await;
    let (a, b) = (
        h.engine(&pod(&h, "a", "orphan_after = \"1m\"")),
        h.engine(&pod(&h, "b", "orphan_after = \"1m\"")),
    );
    ok(&h.pass(&a).await);
    ok(&h.pass(&b).await);
    let (pa, pb) = (read(&h, "a", "etl.json"), read(&h, "b", "etl.json"));
    let ids = [&pa, &pb].map(|p| p["service_account_id"].as_u64().unwrap());
    // Each pod's application uses its credential every 10 s; both rotators
    // pass every 10 s, for three minutes.
    for _ in 0..18 {
        h.clock.advance(Duration::seconds(10));
        h.client_for(&pa).me().await.unwrap();
        h.client_for(&pb).me().await.unwrap();
        for engine in [&a, &b] {
            let r = h.pass(engine).await;
            assert!(r.deleted.is_empty(), "{:?}", r.deleted);
        }
    }
    for id in ids {
        assert!(h.sim.account(id).is_some(), "account {id} was deleted while in use");
    }
    let r = h.pass(&a).await;
    assert!(
        in_use_elsewhere(&r, ids[1]),
        "the other pod's account is reported: {:?}",
        r.errors
    );
}

/// Finding 4: with the rotator's clock 10 minutes off Mixpanel's, a
/// retiring account under `delete_when_idle` used 6 s earlier was deleted,
/// and an unexplained account used 10 s before the pass was deleted as
/// never used. Now Mixpanel's clock is read from its answers' `Date`: 10
/// minutes apart, nothing judged by `last_used` is deleted, and the pass
/// says why; 90 s apart, the timestamps are read in our time.
#[tokio::test]
async fn with_mixpanel_10_minutes_behind_or_ahead_nothing_in_use_is_deleted() {
    for minutes in [-10i64, 10] {
        let h = Harness::new(Seed::Demo).await;
        let metrics = mixpanel_rotator::metrics::Metrics::shared();
        let idle = "orphan_after = \"1m\"\ngrace = \"1h\"\ndelete_when_idle = \"10m\"\nmax_grace = \"1d\"";
        let a = h.engine(&pod(&h, "a", idle)).with_metrics(metrics.clone());
        let b = h.engine(&pod(&h, "b", idle));
        ok(&h.pass(&a).await);
        let first = read(&h, "a", "etl.json");
        ok(&h.force(&a, "etl", false).await);
        ok(&h.pass(&b).await);
        let other = read(&h, "b", "etl.json");
        h.sim.set_clock_skew(Duration::minutes(minutes));
        // Past grace: the predecessor (used 6 s ago) and pod b's account
        // (used 10 s ago, never published by pod a) are in use.
        h.clock.advance(Duration::hours(2));
        h.client_for(&other).me().await.unwrap();
        h.clock.advance(Duration::seconds(4));
        h.client_for(&first).me().await.unwrap();
        h.clock.advance(Duration::seconds(6));
        // The first answer after the jump shows it; once the answers agree
        // (7 of them), the offset itself is reported.
        for n in 0..10 {
            let r = h.pass(&a).await;
            assert!(r.deleted.is_empty(), "skew {minutes}m: {:?}", r.deleted);
            let said = |s: &str| r.warnings.iter().any(|w| w.contains(s) && w.contains("NTP"));
            assert!(said("(a clock jumped)") || n > 0, "skew {minutes}m: {:?}", r.warnings);
            assert!(
                said(&format!(
                    "Mixpanel's clock is 10m {} this host's",
                    if minutes < 0 { "behind" } else { "ahead of" }
                )) || n < 7,
                "skew {minutes}m, pass {n}: {:?}",
                r.warnings
            );
        }
        let text = metrics.render();
        let offset: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("mixpanel_rotator_clock_offset_seconds{} "))
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap();
        assert!((offset - (minutes * 60) as f64).abs() <= 1.0, "{offset}");
        for p in [&first, &other] {
            h.client_for(p).me().await.unwrap();
        }
        // The predecessor still goes at `max_grace`, whatever the clocks say.
        h.clock.advance(Duration::days(1));
        let r = h.pass(&a).await;
        assert!(
            r.deleted
                .iter()
                .any(|d| Some(d.id) == first["service_account_id"].as_u64()),
            "skew {minutes}m: {:?}",
            r.deleted
        );
        assert!(h.sim.account(other["service_account_id"].as_u64().unwrap()).is_some());
        h.assert_no_secret_leaked(&[&r]);
    }
}

/// Within the bound (90 s), the offset is taken off Mixpanel's timestamps:
/// a use 6 s ago by Mixpanel's clock is a use 6 s ago, not 96 s.
#[tokio::test]
async fn a_small_clock_offset_is_corrected_not_refused() {
    let h = Harness::new(Seed::Demo).await;
    let a = h.engine(&pod(&h, "a", "orphan_after = \"1m\"\ngrace = \"1h\""));
    let b = h.engine(&pod(&h, "b", "orphan_after = \"1m\"\ngrace = \"1h\""));
    h.sim.set_clock_skew(Duration::seconds(-90));
    ok(&h.pass(&b).await);
    let other = read(&h, "b", "etl.json");
    ok(&h.pass(&a).await);
    h.clock.advance(Duration::minutes(59));
    h.client_for(&other).me().await.unwrap();
    h.clock.advance(Duration::seconds(6));
    let r = h.pass(&a).await;
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let id = other["service_account_id"].as_u64().unwrap();
    assert!(in_use_elsewhere(&r, id), "{:?}", r.errors);
    let u = r.plan.in_use.iter().find(|u| u.id == id).unwrap();
    // (to the second: `Date` has no finer resolution)
    let off = u.last_used - (h.clock_now() - Duration::seconds(6));
    assert!(off.abs() <= Duration::seconds(1), "read in our time: {off}");
    // An hour after that use, it is idle and goes.
    h.clock.advance(Duration::minutes(61));
    let r = h.pass(&a).await;
    assert!(r.deleted.iter().any(|d| d.id == id), "{:?}", r.deleted);
}

fn id_of(p: &serde_json::Value) -> u64 {
    p["service_account_id"].as_u64().unwrap()
}

/// An integration on the harness's file sink `local`.
fn on_local(name: &str, extra: &str) -> String {
    format!(
        "[[integrations]]\nname = \"{name}\"\nsink = \"local\"\npath = \"{name}.json\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n{extra}\n"
    )
}

/// Finding 2: integration `old` with `adopt` naming integration `ci`'s
/// published account. `retire old --yes` deleted it (its dry run listed it
/// without a warning) and `ci`'s consumers got 401. Now a pass blocks `old`
/// naming both, and `retire` keeps the account, saying whose it is.
#[tokio::test]
async fn an_adopt_naming_another_integrations_account_blocks_and_retire_keeps_it() {
    let h = Harness::new(Seed::Demo).await;
    ok(&h.pass(&h.engine(&on_local("ci", ""))).await);
    let ci = id_of(&h.payload("ci.json").unwrap());
    let both = format!("{}{}", on_local("ci", ""), on_local("old", &format!("adopt = {ci}")));
    let engine = h.engine(&both);
    let reports = engine.pass(&Default::default()).await;
    let old = reports.iter().find(|r| r.integration == "old").unwrap();
    let e = old.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains(&format!("`integrations[1].adopt` names account {ci}"))
            && e.contains("integration `ci` publishes it")
            && e.contains("Nothing is rotated or deleted"),
        "{e}"
    );
    assert!(old.deleted.is_empty() && old.rotated.is_none());
    let i = engine.policy().integration("old").unwrap().clone();
    let plan = engine.retire_plan(&i).await.unwrap();
    assert!(plan.delete.iter().all(|d| d.disposal.id != ci), "{plan:?}");
    let kept = plan.kept.iter().find(|k| k.id == ci).expect("kept, with why");
    assert!(kept.why.contains("integration `ci` publishes it"), "{}", kept.why);
    let done = engine.retire(&i, plan).await;
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    assert!(h.sim.account(ci).is_some());
    h.consumer("ci.json").me().await.unwrap();
    h.assert_no_secret_leaked(&[]);
}

/// The same through a payload claim: `ci` bootstrapped from the legacy
/// account and then dropped `adopt` (its payload still lists the legacy
/// account in `retiring`); `old` adopts it. Deleting it would cut off
/// `ci`'s consumers still on it during `grace`.
#[tokio::test]
async fn an_adopt_naming_an_account_another_payload_vouches_for_blocks_and_retire_keeps_it() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].id;
    ok(&h.pass(&h.engine(&on_local("ci", &format!("adopt = {legacy}")))).await);
    let both = format!(
        "{}{}",
        on_local("ci", ""),
        on_local("old", &format!("adopt = {legacy}"))
    );
    let engine = h.engine(&both);
    h.clock.advance(Duration::hours(1));
    let reports = engine.pass(&Default::default()).await;
    let old = reports.iter().find(|r| r.integration == "old").unwrap();
    let e = old.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains(&format!("names account {legacy}")) && e.contains("integration `ci` vouches for it"),
        "{e}"
    );
    let i = engine.policy().integration("old").unwrap().clone();
    let plan = engine.retire_plan(&i).await.unwrap();
    assert!(
        plan.kept.iter().any(|k| k.id == legacy && k.why.contains("`ci`")),
        "{plan:?}"
    );
    engine.retire(&i, plan).await;
    assert!(h.sim.account(legacy).is_some(), "ci's predecessor, in use during grace");
}

/// Finding 8: `retire ci --yes` through an alias removed `etl`'s payload
/// (it never checked whose it was); and with `adopt` dropped after the
/// bootstrap, it left the legacy account the payload's `retiring` still
/// listed (no expiry, its secret still valid) and then removed the only
/// record of it.
#[tokio::test]
async fn retire_removes_only_its_own_payload_and_deletes_what_its_payload_vouches_for() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].id;
    ok(&h.pass(&h.engine(&on_local("etl", &format!("adopt = {legacy}")))).await);
    let etl = id_of(&h.payload("etl.json").unwrap());
    // Another policy whose `ci` points at etl's place.
    let alias = h.engine(&format!(
        "[sinks.alias]\ntype = \"file\"\ndir = \"{}/.\"\n{}",
        h.creds_dir().display(),
        on_local("ci", "").replace(
            "sink = \"local\"\npath = \"ci.json\"",
            "sink = \"alias\"\npath = \"etl.json\""
        )
    ));
    let i = alias.policy().integration("ci").unwrap().clone();
    let plan = alias.retire_plan(&i).await.unwrap();
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
    let text = mixpanel_rotator::render::retire_text(&plan, None);
    assert!(
        text.contains("leave the payload at sink `alias` path `etl.json`: it holds the payload of integration `etl`"),
        "{text}"
    );
    let done = alias.retire(&i, plan).await;
    assert!(done.removed.is_empty());
    assert!(h.payload("etl.json").is_some(), "etl's payload is still there");
    assert!(h.sim.account(etl).is_some());

    // `adopt` dropped (normal once bootstrapped): retire still deletes the
    // legacy account the payload vouches for, and says so first.
    let engine = h.engine(&on_local("etl", ""));
    let i = engine.policy().integration("etl").unwrap().clone();
    let plan = engine.retire_plan(&i).await.unwrap();
    let text = mixpanel_rotator::render::retire_text(&plan, None);
    assert!(
        text.contains(&format!("delete account {legacy} (")) && text.contains("its payload's predecessor"),
        "{text}"
    );
    let done = engine.retire(&i, plan).await;
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    assert!(h.sim.account(legacy).is_none());
    assert!(h.sim.account(etl).is_none());
    assert!(h.payload("etl.json").is_none());
}

/// Finding 3: a mirror that cannot be written keeps the old payload; the
/// pass reported the mirror's error and, after `grace`, deleted the old
/// account anyway, breaking the consumer reading the mirror. Now the
/// deletion waits while a mirror is stale, and at its bound (`max_grace`
/// past its due time) goes with an error naming the mirror, and a webhook.
#[tokio::test]
async fn a_stale_mirror_holds_the_deletion_of_the_credential_it_still_serves() {
    let h = Harness::new(Seed::Demo).await;
    let metrics = mixpanel_rotator::metrics::Metrics::shared();
    let (url, hooks) = crate::hooks::receiver().await;
    let url_file = h.dir.path().join("webhook.url");
    std::fs::write(&url_file, &url).unwrap();
    let pod = h.dir.path().join("pod");
    let policy = format!(
        "[sinks.pod]\ntype = \"file\"\ndir = \"{}\"\n{}",
        pod.display(),
        on_local(
            "etl",
            &format!(
                "grace = \"1h\"\nmax_grace = \"2d\"\nmirrors = [{{ sink = \"pod\", path = \"etl.json\" }}]\nwebhook = {{ url = {{ file = \"{}\" }} }}",
                url_file.display()
            )
        )
    );
    let engine = h.engine(&policy).with_metrics(metrics.clone());
    ok(&h.pass(&engine).await);
    let served = read(&h, "pod", "etl.json");
    // The mirror cannot be written any more (its lock file is a directory),
    // and still serves the first credential.
    let _ = std::fs::remove_file(pod.join("etl.json.lock"));
    std::fs::create_dir(pod.join("etl.json.lock")).unwrap();
    let r = h.force(&engine, "etl", false).await;
    assert!(r.rotated.is_some());
    assert_eq!(read(&h, "pod", "etl.json"), served, "the mirror is stale");
    h.clock.advance(Duration::hours(2));
    let r = h.pass(&engine).await;
    assert!(r.deleted.is_empty(), "{:?}", r.deleted);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains(&format!("account {} (", id_of(&served)))
                && w.contains("mirror sink `pod` path `etl.json` does not hold the current credential")),
        "{:?}",
        r.warnings
    );
    h.client_for(&served).me().await.unwrap();
    assert!(
        metrics
            .render()
            .contains("mixpanel_rotator_deletions_held_by_mirror_total{integration=\"etl\"} 1")
    );
    // At the bound (due + max_grace - grace), it goes, as an error with its webhook.
    h.clock.advance(Duration::days(2));
    let r = h.pass(&engine).await;
    assert!(r.deleted.iter().any(|d| d.id == id_of(&served)), "{:?}", r.deleted);
    let e = r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains(&format!("account {} was deleted at its bound", id_of(&served)))
            && e.contains("mirror sink `pod` path `etl.json` still does not hold the current credential"),
        "{e}"
    );
    let events = hooks.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|ev| ev["event"] == "mirror_failed"
                && ev["error"].as_str().unwrap().contains("was deleted at its bound")),
        "{events:?}"
    );
    // Fixed: the next rotation's predecessor goes at `grace`, as usual.
    std::fs::remove_dir(pod.join("etl.json.lock")).unwrap();
    let r = h.force(&engine, "etl", false).await;
    ok(&r);
    h.clock.advance(Duration::hours(2));
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.deleted.len(), 1, "{:?}", r.deleted);
    h.assert_no_secret_leaked(&[&r]);
}

/// Finding 10: a held lock on a mirror's `.lock` file (anyone who can write
/// the directory can take one) blocked the pass with no timeout: no
/// integration was served. Now a lock wait is bounded: that mirror fails,
/// saying who to look for, and every other integration is served.
#[tokio::test]
async fn a_lock_held_by_another_process_fails_that_mirror_and_the_pass_goes_on() {
    let h = Harness::new(Seed::Demo).await;
    let pod = h.dir.path().join("pod");
    let policy = format!(
        "[sinks.pod]\ntype = \"file\"\ndir = \"{}\"\n{}{}",
        pod.display(),
        on_local("etl", "mirrors = [{ sink = \"pod\", path = \"etl.json\" }]"),
        on_local("ci", "")
    );
    let engine = h.engine(&policy);
    std::fs::create_dir_all(&pod).unwrap();
    let lock = std::fs::File::create(pod.join("etl.json.lock")).unwrap();
    lock.lock().unwrap();
    let started = std::time::Instant::now();
    let reports = engine.pass(&Default::default()).await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    let (etl, ci) = (&reports[0], &reports[1]);
    ok(ci);
    assert!(h.payload("ci.json").is_some() && h.payload("etl.json").is_some());
    let e = etl.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains("another process has held it for more than 10s") && e.contains("fuser"),
        "{e}"
    );
    drop(lock);
    let synced = engine.sync_mirrors(None).await;
    assert!(synced[0].views[0].state.up_to_date());
}

/// Finding 10: an `[audit] path` that is a FIFO with no reader hung
/// `reconcile` (SIGTERM ignored); the audit path followed symlinks and kept
/// a pre-created 0666 file as it was. Now it is opened without following
/// links and without blocking, refused when not a regular file, and an
/// existing file open to others is narrowed to 0600.
#[tokio::test]
async fn the_audit_path_is_a_regular_file_of_its_own_never_a_fifo_or_a_link() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Harness::new(Seed::Demo).await;
    let fifo = h.dir.path().join("audit.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let link = h.dir.path().join("audit.link");
    std::os::unix::fs::symlink(h.dir.path().join("elsewhere.log"), &link).unwrap();
    for (path, says) in [
        (&fifo, "not a regular file"),
        (&link, "symbolic link"),
        (&h.dir.path().to_path_buf(), "Is a directory"),
    ] {
        let engine = h.engine(&format!(
            "[audit]\npath = \"{}\"\n{}",
            path.display(),
            on_local("etl", "")
        ));
        let started = std::time::Instant::now();
        let r = h.pass(&engine).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let e = r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
        assert!(
            e.contains("cannot open the audit file") && e.contains(says),
            "{path:?}: {e}"
        );
        assert!(
            h.payload("etl.json").is_none(),
            "nothing is done without the audit trail"
        );
    }
    assert!(
        !h.dir.path().join("elsewhere.log").exists(),
        "the link was not followed"
    );
    let open = h.dir.path().join("audit.log");
    std::fs::write(&open, b"").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let engine = h.engine(&format!(
        "[audit]\npath = \"{}\"\n{}",
        open.display(),
        on_local("etl", "")
    ));
    ok(&h.pass(&engine).await);
    assert_eq!(std::fs::metadata(&open).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&open)
            .unwrap()
            .contains("\"action\":\"create\"")
    );
}

/// Finding 10: under 429 with a long `Retry-After`, each call waited 4 x
/// 60 s while `/readyz` stayed green, and `verify_timeout` did not bound
/// verification (`rotate-now` took 483 s). Now a `Retry-After` beyond the
/// bound fails the call at once, and verification stops at
/// `verify_timeout` in wall time.
#[tokio::test]
async fn a_long_retry_after_fails_at_once_and_verify_timeout_is_wall_time() {
    use mixpanel_rotator::simulator::{Fault, FaultAction};
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(&on_local("etl", ""));
    h.sim.inject(Fault::once(
        "GET",
        "/organizations/1/service-accounts",
        FaultAction::RateLimit { retry_after_secs: 3600 },
    ));
    let started = std::time::Instant::now();
    let r = h.pass(&engine).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let e = r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains("asking to wait 3600s (Retry-After), longer than the 5s"),
        "{e}"
    );
    // Verification: every GET /me of the new account answers after 4 s;
    // `verify_timeout = "2s"` ends it at 2 s, and the new account is deleted.
    let engine = engine_of(
        &h,
        &h.policy(&on_local("etl", ""))
            .replace("[mixpanel]\n", "[mixpanel]\nverify_timeout = \"2s\"\n"),
    );
    h.sim.inject(
        Fault::always("GET", "/me", FaultAction::Latency(std::time::Duration::from_secs(4))).from_callers("mpr-"),
    );
    let started = std::time::Instant::now();
    let r = h.pass(&engine).await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    let e = r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains("no answer within `mixpanel.verify_timeout`") && e.contains("was deleted"),
        "{e}"
    );
    assert!(h.accounts_with_prefix("mpr-etl-").is_empty());
}

/// `[server] resync_token`: for deployments that expose the port, a resync
/// request must carry it; `rotate-now` beside the daemon sends it.
#[tokio::test]
async fn with_a_resync_token_only_requests_that_carry_it_are_taken() {
    use mixpanel_rotator::secret::Secret;
    use mixpanel_rotator::server::{Health, serve, tell_daemon};
    let health = std::sync::Arc::new(Health::default());
    *health.resync_token.lock().unwrap() = Some(Secret::new("s3cret-resync-token"));
    let metrics = mixpanel_rotator::metrics::Metrics::shared();
    let (addr, _task) = serve("127.0.0.1:0".parse().unwrap(), metrics, health.clone())
        .await
        .unwrap();
    let url = format!("http://{addr}/-/resync");
    let client = reqwest::Client::new();
    let r = client.post(&url).body("etl\n").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().contains("resync_token"));
    let r = client
        .post(&url)
        .header("Authorization", "Bearer wrong")
        .body("etl\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(health.resync.take().is_empty());
    tell_daemon(addr, Some(&Secret::new("s3cret-resync-token")), &["etl"]).await;
    assert_eq!(health.resync.take(), ["etl".to_string()].into());
    // No token set: anyone on the port may ask (what it can cause is bounded).
    *health.resync_token.lock().unwrap() = None;
    tell_daemon(addr, None, &["ci"]).await;
    assert_eq!(health.resync.take(), ["ci".to_string()].into());
}

/// Finding 1: two spellings of one place passed the load-time check, and a
/// mirror sync overwrote another integration's primary (no copy of its
/// secret left anywhere). Within one policy the spellings are now refused at
/// load (property-tested in `src/tests.rs`); across policies, or through a
/// link made later, a write never lands over another integration's payload.
#[tokio::test]
async fn a_mirror_never_writes_over_another_integrations_payload() {
    let h = Harness::new(Seed::Demo).await;
    let alias = format!(
        "[sinks.alias]\ntype = \"file\"\ndir = \"{}/.\"\n",
        h.creds_dir().display()
    );
    // One policy: refused at load, naming both keys.
    let text = h.policy(&format!(
        "{alias}{}{}",
        on_local("etl", ""),
        on_local("ci", "mirrors = [{ sink = \"alias\", path = \"etl.json\" }]")
    ));
    let e = mixpanel_rotator::policy::Policy::parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("`integrations[1].mirrors[0].path`") && e.contains("is the same place as `integrations[0].path`"),
        "{e}"
    );
    // Two policies: `etl` in one, `ci` mirrored onto etl's file in the other.
    ok(&h.pass(&h.engine(&on_local("etl", ""))).await);
    let etl = std::fs::read(h.creds_dir().join("etl.json")).unwrap();
    let ci = h.engine(&format!(
        "{alias}{}",
        on_local("ci", "mirrors = [{ sink = \"alias\", path = \"etl.json\" }]")
    ));
    let r = h.pass(&ci).await;
    let e = r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains("it holds the payload of integration `etl` in organization 1, not `ci`'s"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(h.creds_dir().join("etl.json")).unwrap(),
        etl,
        "etl's payload untouched"
    );
    h.consumer("etl.json").me().await.unwrap();
}

/// An engine of a whole policy text, on the harness's clock.
fn engine_of(h: &Harness, text: &str) -> mixpanel_rotator::rotation::Engine {
    mixpanel_rotator::rotation::Engine::with_retry(
        std::sync::Arc::new(mixpanel_rotator::policy::Policy::parse(text).unwrap_or_else(|e| panic!("{e}"))),
        std::sync::Arc::new(h.clock.clone()),
        fast_retry(),
        fast_retry(),
    )
    .unwrap()
}

/// Finding 11: after a namespace change the old predecessor was never
/// deleted and `plan` stopped showing it. Now the published account under
/// the old namespace blocks with the fix in the message, and with the old
/// namespace in `previous_namespaces` every account of the old lineage is
/// rotated and retired as before.
#[tokio::test]
async fn after_a_namespace_change_the_old_lineage_is_still_retired() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(&on_local("etl", "grace = \"1h\""));
    ok(&h.pass(&engine).await);
    ok(&h.force(&engine, "etl", false).await);
    let (first, second) = (
        id_of(&h.payload("etl.json").unwrap()),
        h.accounts_with_prefix("mpr-etl-").len(),
    );
    assert_eq!(second, 2, "the published account and its predecessor");
    let renamed = h
        .policy(&on_local("etl", "grace = \"1h\""))
        .replace("version = 1\n", "version = 1\nnamespace = \"team\"\n");
    let r = h.pass(&engine_of(&h, &renamed)).await;
    let e = r.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        e.contains("under namespace `mpr`") && e.contains("`previous_namespaces`"),
        "{e}"
    );
    assert!(r.deleted.is_empty() && r.rotated.is_none());
    let both = renamed.replace(
        "namespace = \"team\"\n",
        "namespace = \"team\"\nprevious_namespaces = [\"mpr\"]\n",
    );
    let engine = engine_of(&h, &both);
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(
        r.plan.delete_later.len(),
        1,
        "the old predecessor is shown: {:?}",
        r.plan
    );
    // A rotation under the new namespace; both old accounts go after grace.
    let r = h.force(&engine, "etl", false).await;
    ok(&r);
    assert!(r.rotated.as_ref().unwrap().username.starts_with("team-etl-"));
    h.clock.advance(Duration::hours(2));
    ok(&h.pass(&engine).await);
    assert!(
        h.accounts_with_prefix("mpr-etl-").is_empty(),
        "{:?}",
        h.accounts_with_prefix("mpr-etl-")
    );
    assert!(h.sim.account(first).is_none());
    h.consumer("etl.json").me().await.unwrap();
}
