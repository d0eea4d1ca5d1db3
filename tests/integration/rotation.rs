//! The rotation protocol end to end against the simulator and the file sink.

use chrono::Duration;
use mixpanel_rotator::mixpanel::types::{ProjectRole, Role, TargetType};
use mixpanel_rotator::rotation::lineage::Lineage;
use mixpanel_rotator::rotation::{Cause, DeleteReason, PassOptions, RotateReason};
use mixpanel_rotator::simulator::Seed;

use crate::common::*;

fn legacy_id(h: &Harness) -> u64 {
    h.accounts_with_prefix("etl-legacy")[0].id
}

fn etl(extra: &str, h: &Harness) -> String {
    format!(
        r#"[[integrations]]
name = "etl"
sink = "local"
path = "etl.json"
role = "analyst"
adopt = {}
{extra}"#,
        legacy_id(h)
    )
}

#[tokio::test]
async fn full_rotation_into_file_sink_then_grace_deletes_old() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = legacy_id(&h);
    let engine = h.engine(&etl("", &h));

    let r = h.pass(&engine).await;
    ok(&r);
    let rot = r.rotated.clone().expect("a bootstrap rotation");
    assert_eq!(rot.reason, RotateReason::Bootstrap);
    assert_eq!(rot.previous_service_account_id, Some(legacy));

    // Lineage username, with Mixpanel's suffix.
    let lineage = Lineage::new("mpr", "etl");
    assert_eq!(lineage.parse(&rot.username), Some(t(START)), "{}", rot.username);
    assert!(rot.username.starts_with("mpr-etl-20261128T040000Z-"));
    assert!(rot.username.ends_with(".mp-service-account"));

    // Memberships = the old account's individual grants; the team grant is reported, not copied.
    let mut m = h.sim.memberships(rot.service_account_id);
    m.sort();
    assert_eq!(
        m,
        vec![
            (101, ProjectRole::Analyst, TargetType::Individual),
            (102, ProjectRole::Admin, TargetType::Individual)
        ]
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("project 103") && w.contains("`team` grant")),
        "{:?}",
        r.warnings
    );

    // Expires about now + ttl.
    let acct = h.sim.account(rot.service_account_id).unwrap();
    let expires = acct.expires.unwrap();
    assert!(
        (expires - (t(START) + Duration::days(30))).num_seconds().abs() <= 1,
        "{expires}"
    );

    // Verified with the new credential before publishing.
    let reqs = h.sim.requests();
    let verify = reqs
        .iter()
        .position(|q| q.path == "/me" && q.caller.as_deref() == Some(rot.username.as_str()) && q.status == Some(200));
    assert!(verify.is_some(), "GET /me with the new credential");

    // Payload fields.
    let p = h.payload("etl.json").unwrap();
    for key in [
        "username",
        "secret",
        "service_account_id",
        "organization_id",
        "integration",
        "expires",
        "created",
        "rotated_at",
        "rotation_id",
        "previous_service_account_id",
        "projects",
        "retiring",
    ] {
        assert!(p.get(key).is_some(), "payload lacks {key}");
    }
    assert_eq!(p["username"], rot.username);
    assert_eq!(p["service_account_id"], rot.service_account_id);
    assert_eq!(p["organization_id"], 1);
    assert_eq!(p["integration"], "etl");
    assert_eq!(p["previous_service_account_id"], legacy);
    assert_eq!(
        p["projects"],
        serde_json::json!([{"id": 101, "role": "analyst"}, {"id": 102, "role": "admin"}])
    );
    assert_eq!(p["retiring"][0]["id"], legacy);
    assert_eq!(p["rotation_id"].as_str().unwrap().len(), 36);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(h.creds_dir().join("etl.json")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The published credential works.
    let me = h.consumer("etl.json").me().await.unwrap();
    assert_eq!(me.project_ids(1), vec![101, 102]);

    // The old account is kept during grace...
    h.clock.advance(Duration::hours(23));
    let r = h.pass(&engine).await;
    ok(&r);
    assert!(r.rotated.is_none() && r.deleted.is_empty());
    assert!(
        h.sim.account(legacy).is_some(),
        "old account kept until grace has passed"
    );
    // ...and deleted by a later pass once it has passed.
    h.clock.advance(Duration::hours(1));
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(
        r.deleted.iter().map(|d| (d.id, d.reason)).collect::<Vec<_>>(),
        vec![(legacy, DeleteReason::Retiring)]
    );
    assert!(h.sim.account(legacy).is_none());
    assert!(
        h.sim.account(rot.service_account_id).is_some(),
        "the published account is never deleted"
    );
    // The credential still works.
    h.consumer("etl.json").me().await.unwrap();

    // A quiet pass: one account listing, nothing else at Mixpanel.
    h.sim.clear_requests();
    let r = h.pass(&engine).await;
    ok(&r);
    let reqs = h.sim.requests();
    assert_eq!(
        reqs.len(),
        1,
        "{:?}",
        reqs.iter().map(|q| (&q.method, &q.path)).collect::<Vec<_>>()
    );

    // Renewal: 10 days (a third of ttl) before expiry, it rotates again, and
    // the lineage predecessor retires after grace.
    h.clock.set(expires - Duration::days(10));
    let r2 = h.pass(&engine).await;
    ok(&r2);
    let rot2 = r2.rotated.clone().unwrap();
    assert!(
        matches!(rot2.reason, RotateReason::ExpiresSoon { .. }),
        "{:?}",
        rot2.reason
    );
    assert_eq!(
        h.payload("etl.json").unwrap()["previous_service_account_id"],
        rot.service_account_id
    );
    let mut m2 = h.sim.memberships(rot2.service_account_id);
    m2.sort();
    assert_eq!(m2, m, "memberships copied from the lineage account");
    h.clock.advance(Duration::hours(25));
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(
        r.deleted.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![rot.service_account_id]
    );
    let lineage_left: Vec<_> = h.accounts_with_prefix("mpr-etl-").into_iter().map(|a| a.id).collect();
    assert_eq!(lineage_left, vec![rot2.service_account_id]);
    h.assert_no_secret_leaked(&[&r, &r2]);
}

#[tokio::test]
async fn plan_makes_no_mutating_request() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(&etl("", &h));
    // Something to delete too: an old orphan of this lineage.
    let stale = Lineage::new("mpr", "etl").new_username(t(START) - Duration::hours(2));
    h.sim.add_account(&stale, Role::Consumer, None, &[]);
    h.sim.clear_requests();
    let reports = engine
        .pass(&PassOptions {
            dry_run: true,
            ..Default::default()
        })
        .await;
    let r = &reports[0];
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let mutating: Vec<_> = h.sim.requests().into_iter().filter(|q| q.is_mutating()).collect();
    assert!(mutating.is_empty(), "plan mutated: {mutating:?}");
    assert!(!h.sim.requests().is_empty());
    let text = mixpanel_rotator::render::plan_text(&reports);
    assert!(text.contains("rotate (nothing published yet)"), "{text}");
    assert!(text.contains("projects [101 analyst, 102 admin]"), "{text}");
    assert!(text.contains("orphan"), "{text}");
    assert!(h.payload("etl.json").is_none());
    assert_eq!(h.accounts_with_prefix("mpr-etl-").len(), 1);
    h.record(text);
    h.assert_no_secret_leaked(&[r]);
}

#[tokio::test]
async fn bootstrap_with_explicit_projects_and_no_adopt() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(
        r#"[[integrations]]
name = "ci"
sink = "local"
path = "ci.json"
projects = [{ id = 103, role = "consumer" }, { id = 101, role = "analyst" }]
"#,
    );
    let r = h.pass(&engine).await;
    ok(&r);
    let rot = r.rotated.clone().unwrap();
    assert_eq!(rot.previous_service_account_id, None);
    let mut m = h.sim.memberships(rot.service_account_id);
    m.sort();
    assert_eq!(
        m,
        vec![
            (101, ProjectRole::Analyst, TargetType::Individual),
            (103, ProjectRole::Consumer, TargetType::Individual)
        ]
    );
    assert!(h.accounts_with_prefix("etl-legacy").len() == 1, "nothing else touched");
    assert_eq!(h.payload("ci.json").unwrap()["retiring"], serde_json::json!([]));
    // A second pass is quiet.
    let r2 = h.pass(&engine).await;
    ok(&r2);
    assert!(r2.rotated.is_none() && r2.deleted.is_empty());
    h.assert_no_secret_leaked(&[&r, &r2]);
}

#[tokio::test]
async fn revoke_old_deletes_the_old_account_at_once() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = legacy_id(&h);
    let engine = h.engine(&etl("", &h));
    let r = h.force(&engine, "etl", true).await;
    ok(&r);
    assert!(h.sim.account(legacy).is_none(), "adopted account revoked at once");
    assert_eq!(
        r.deleted.iter().map(|d| (d.id, d.reason)).collect::<Vec<_>>(),
        vec![(legacy, DeleteReason::Revoked)]
    );
    let first = r.rotated.unwrap().service_account_id;

    // Again, now replacing a lineage account.
    h.clock.advance(Duration::minutes(5));
    let r = h.force(&engine, "etl", true).await;
    ok(&r);
    let second = r.rotated.clone().unwrap().service_account_id;
    assert!(h.sim.account(first).is_none());
    assert!(h.sim.account(second).is_some());
    assert_eq!(h.accounts_with_prefix("mpr-etl-").len(), 1);
    h.consumer("etl.json").me().await.unwrap();
    h.assert_no_secret_leaked(&[&r]);
}

#[tokio::test]
async fn current_deleted_behind_our_back_is_rotated_next_pass() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(&etl("", &h));
    let r = h.pass(&engine).await;
    ok(&r);
    let first = r.rotated.unwrap();
    assert!(h.sim.delete_account(first.service_account_id));
    h.clock.advance(Duration::minutes(1));
    let r = h.pass(&engine).await;
    ok(&r);
    let second = r.rotated.clone().unwrap();
    assert_eq!(second.reason, RotateReason::CurrentMissing);
    let mut m = h.sim.memberships(second.service_account_id);
    m.sort();
    // Taken from the payload's recorded projects.
    assert_eq!(
        m,
        vec![
            (101, ProjectRole::Analyst, TargetType::Individual),
            (102, ProjectRole::Admin, TargetType::Individual)
        ]
    );
    assert!(r.warnings.iter().any(|w| w.contains("gone from Mixpanel")));
    h.consumer("etl.json").me().await.unwrap();
    h.assert_no_secret_leaked(&[&r]);
}

#[tokio::test]
async fn expires_not_honoured_is_reported_and_rotation_still_scheduled() {
    let h = Harness::new(Seed::Demo).await;
    h.sim.set_quirks(mixpanel_rotator::simulator::Quirks {
        ignore_expires: true,
        ..Default::default()
    });
    let engine = h.engine(&etl("", &h));
    let r = h.pass(&engine).await;
    ok(&r);
    assert!(
        r.warnings.iter().any(|w| w.contains("did not honour `expires`")),
        "{:?}",
        r.warnings
    );
    // The payload still records when we want it replaced, so renewal happens.
    h.clock.advance(Duration::days(21));
    let r = h.pass(&engine).await;
    ok(&r);
    assert!(matches!(r.rotated.unwrap().reason, RotateReason::ExpiresSoon { .. }));
}

#[tokio::test]
async fn two_rotators_racing_one_wins_the_loser_deletes_its_account() {
    let h = Harness::new(Seed::Demo).await;
    let a = h.engine(&etl("", &h));
    let b = h.engine(&etl("", &h));
    let r = h.pass(&a).await;
    ok(&r);
    let (winner, loser) = h.race(&a, &b).await;
    let won = winner.rotated.as_ref().unwrap().service_account_id;
    assert_eq!(h.payload("etl.json").unwrap()["service_account_id"], won);
    assert!(h.sim.account(won).is_some());
    h.assert_no_secret_leaked(&[&winner, &loser]);
}

#[tokio::test]
async fn an_adopted_account_superseded_twice_within_grace_is_still_deleted() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = legacy_id(&h);
    let engine = h.engine(&etl("", &h));
    let r = h.pass(&engine).await;
    ok(&r);
    let first = r.rotated.unwrap().service_account_id;
    h.clock.advance(Duration::hours(2));
    let r = h.force(&engine, "etl", false).await;
    ok(&r);
    let second = r.rotated.unwrap().service_account_id;
    // The adopted account is carried forward in `retiring`, with its own deadline.
    let p = h.payload("etl.json").unwrap();
    assert_eq!(p["retiring"][0]["id"], legacy);
    assert_eq!(p["retiring"][0]["not_before"], "2026-11-29T04:00:00Z");
    h.clock.advance(Duration::hours(22)); // 24h after the first publish
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.deleted.iter().map(|d| d.id).collect::<Vec<_>>(), vec![legacy]);
    assert!(
        h.sim.account(first).is_some(),
        "its successor's grace runs from the second publish"
    );
    h.clock.advance(Duration::hours(2));
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.deleted.iter().map(|d| d.id).collect::<Vec<_>>(), vec![first]);
    assert!(h.sim.account(second).is_some());
}

#[tokio::test]
async fn an_emptied_sink_does_not_delete_live_lineage_accounts_early() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(&etl("", &h));
    let r = h.pass(&engine).await;
    ok(&r);
    let live = r.rotated.unwrap().service_account_id;
    // Its consumer uses it; then someone empties the sink.
    h.clock.advance(Duration::hours(1));
    h.consumer("etl.json").me().await.unwrap();
    std::fs::remove_file(h.creds_dir().join("etl.json")).unwrap();
    let engine = h.engine(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 101, role = \"analyst\" }]\n",
    );
    let r = h.pass(&engine).await;
    assert_eq!(r.rotated.as_ref().unwrap().reason, RotateReason::Bootstrap);
    assert!(h.sim.account(live).is_some(), "in use: not deleted as an orphan");
    let in_use = |r: &mixpanel_rotator::rotation::Report| {
        r.errors
            .iter()
            .any(|e| matches!(&e.cause, Cause::InUseElsewhere(u) if u.id == live))
    };
    assert!(in_use(&r), "reported: {:?}", r.errors);
    assert!(r.errors[0].to_string().contains("in use but not published here"));
    // Unused since: deleted once unused for `grace` (24h after its last use).
    h.clock.advance(Duration::hours(23) + Duration::minutes(59));
    let r = h.pass(&engine).await;
    assert!(h.sim.account(live).is_some(), "kept while used within grace");
    assert!(in_use(&r));
    h.clock.advance(Duration::minutes(2));
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.deleted.iter().map(|d| d.id).collect::<Vec<_>>(), vec![live]);
}

#[tokio::test]
async fn drain_aware_deletion_waits_for_the_old_account_to_go_idle_up_to_max_grace() {
    let h = Harness::new(Seed::Demo).await;
    let grants = [(101, ProjectRole::Analyst, TargetType::Individual)];
    let (old_a, creds_a) = h.sim.add_account("etl-a", Role::Analyst, None, &grants);
    let (old_b, creds_b) = h.sim.add_account("etl-b", Role::Analyst, None, &grants);
    let engine = h.engine(&format!(
        "[defaults]\ngrace = \"24h\"\ndelete_when_idle = \"1h\"\nmax_grace = \"3d\"\n\
         [[integrations]]\nname = \"a\"\nsink = \"local\"\npath = \"a.json\"\nadopt = {}\n\
         [[integrations]]\nname = \"b\"\nsink = \"local\"\npath = \"b.json\"\nadopt = {}\n",
        old_a.id, old_b.id
    ));
    let as_client = |c: &mixpanel_rotator::mixpanel::Credentials| {
        mixpanel_rotator::mixpanel::Client::new(mixpanel_rotator::mixpanel::ClientSettings {
            base_url: h.sim.base_url(),
            organization_id: 1,
            credentials: c.clone(),
            max_concurrency: 1,
            timeout: std::time::Duration::from_secs(5),
            retry: fast_retry(),
        })
        .unwrap()
    };
    let (ca, cb) = (as_client(&creds_a), as_client(&creds_b));
    for r in engine.pass(&PassOptions::default()).await {
        ok(&r);
    }
    // `a`'s old account is still used half an hour before grace ends; `b`'s
    // keeps being used, every 30 minutes, for days.
    h.clock.advance(Duration::minutes(23 * 60 + 30));
    ca.me().await.unwrap();
    cb.me().await.unwrap();
    h.clock.advance(Duration::minutes(30)); // grace has ended
    engine.pass(&PassOptions::default()).await;
    assert!(h.sim.account(old_a.id).is_some(), "used 30 minutes ago: kept");
    cb.me().await.unwrap();
    h.clock.advance(Duration::minutes(31));
    let reports = engine.pass(&PassOptions::default()).await;
    assert!(h.sim.account(old_a.id).is_none(), "idle for an hour: deleted");
    assert!(reports.iter().any(|r| r.deleted.iter().any(|d| d.id == old_a.id)));
    assert!(h.sim.account(old_b.id).is_some(), "used 31 minutes ago: kept");
    // `b`: deleted at the hard cap, 3 days after the publish, busy or not.
    let mut t = Duration::minutes(24 * 60 + 31);
    while t < Duration::days(3) - Duration::minutes(30) {
        cb.me().await.unwrap();
        h.clock.advance(Duration::minutes(30));
        t += Duration::minutes(30);
        engine.pass(&PassOptions::default()).await;
        assert!(h.sim.account(old_b.id).is_some(), "still in use at +{t}: kept");
    }
    h.clock.advance(Duration::days(3) - t);
    engine.pass(&PassOptions::default()).await;
    assert!(h.sim.account(old_b.id).is_none(), "max_grace reached: deleted");
}

#[tokio::test]
async fn a_wiped_primary_with_adopt_gone_bootstraps_from_the_newest_lineage_account() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = legacy_id(&h);
    let engine = h.engine(&etl("grace = \"1h\"\n", &h));
    ok(&h.pass(&engine).await);
    let live = h.payload("etl.json").unwrap()["service_account_id"].as_u64().unwrap();
    h.clock.advance(Duration::hours(2));
    ok(&h.pass(&engine).await);
    assert!(h.sim.account(legacy).is_none(), "`adopt` is gone now");
    // The consumer uses the credential; then the primary is wiped.
    h.consumer("etl.json").me().await.unwrap();
    std::fs::remove_file(h.creds_dir().join("etl.json")).unwrap();
    let plan = engine
        .pass(&PassOptions {
            dry_run: true,
            ..Default::default()
        })
        .await;
    let text = mixpanel_rotator::render::plan_text(&plan);
    assert!(
        text.contains(&format!("memberships of the newest account of the lineage, {live}")),
        "{text}"
    );
    assert!(
        text.contains("keep account") && text.contains("in use but not published here"),
        "{text}"
    );
    let r = h.pass(&engine).await;
    let rotated = r.rotated.clone().expect("bootstrapped, not blocked");
    assert_eq!(rotated.reason, RotateReason::Bootstrap);
    let mut m = h.sim.memberships(rotated.service_account_id);
    m.sort();
    assert_eq!(
        m,
        vec![
            (101, ProjectRole::Analyst, TargetType::Individual),
            (102, ProjectRole::Admin, TargetType::Individual)
        ],
        "the newest lineage account's memberships"
    );
    assert!(h.sim.account(live).is_some(), "in use: kept");
    // Deleted once unused for `grace`.
    h.clock.advance(Duration::hours(1) + Duration::minutes(1));
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.deleted.iter().map(|d| d.id).collect::<Vec<_>>(), vec![live]);
    h.consumer("etl.json").me().await.unwrap();
}

#[tokio::test]
async fn replicas_sharing_a_primary_create_one_account_per_due_rotation() {
    let h = Harness::new(Seed::Demo).await;
    let (a, b) = (h.engine(&etl("", &h)), h.engine(&etl("", &h)));
    ok(&h.pass(&a).await);
    let expires = h
        .sim
        .account(h.payload("etl.json").unwrap()["service_account_id"].as_u64().unwrap())
        .unwrap()
        .expires
        .unwrap();
    // Both replicas find the credential due; B is slower, and A publishes while B prepares.
    h.clock.set(expires - Duration::days(10));
    h.sim.clear_requests();
    let gate = mixpanel_rotator::simulator::Gate::new();
    h.sim.inject(mixpanel_rotator::simulator::Fault::once(
        "GET",
        "/me",
        mixpanel_rotator::simulator::FaultAction::Hold(gate.clone()),
    ));
    let first = async {
        gate.arrived(1).await; // B has observed, and waits before its create
        let ra = h.pass(&a).await;
        ok(&ra);
        assert!(ra.rotated.is_some());
        gate.open();
    };
    let (rb, ()) = tokio::join!(h.pass(&b), first);
    ok(&rb);
    assert!(rb.rotated.is_none());
    assert!(
        rb.warnings
            .iter()
            .any(|w| w.contains("another instance published rotation")),
        "{:?}",
        rb.warnings
    );
    let created = h
        .sim
        .requests()
        .iter()
        .filter(|q| q.method == "POST" && q.path == "/organizations/1/service-accounts")
        .count();
    println!("accounts created for one due rotation by two replicas: {created}");
    assert_eq!(created, 1);
    h.consumer("etl.json").me().await.unwrap();
}
