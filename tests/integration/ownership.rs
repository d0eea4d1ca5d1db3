//! Delete only what is provably ours and unused: a writable sink never
//! becomes the power to delete, a create answer is checked, two rotations
//! in one second keep their grace, a slow rotation never publishes a deleted
//! credential, the AWS empty-secret claim is a compare-and-swap, and an
//! unexplained lineage account is deleted only when idle. Each trigger runs
//! against every sink where it applies (file, a real OpenBao, a real moto).

use chrono::Duration;
use mixpanel_rotator::mixpanel::types::Role;
use mixpanel_rotator::rotation::lineage::new_rotation_id;
use mixpanel_rotator::rotation::{Blocked, Cause, Consequence, DeleteReason, Engine, PassOptions, Report, Rule, Step};
use mixpanel_rotator::simulator::{Fault, FaultAction, Gate, Quirks, Seed};
use mixpanel_rotator::sink::{Payload, RetiringAccount, SinkErrorKind};

use crate::common::*;

/// The policy of integration `etl` in sink `s` at `path`, adopting `etl-legacy`, plus `extra`.
fn etl(h: &Harness, backend: Backend, extra: &str) -> (String, String) {
    let (sink, path) = backend.sink(h);
    let text = format!(
        "{sink}\n[[integrations]]\nname = \"etl\"\nsink = \"s\"\npath = \"{path}\"\nrole = \"analyst\"\nadopt = {}\n{extra}",
        h.accounts_with_prefix("etl-legacy")[0].id
    );
    (text, path)
}

/// What whoever can write the sink does: edit the published payload, through the real backend.
async fn tamper(engine: &Engine, path: &str, edit: impl FnOnce(&mut Payload)) {
    let sink = engine.sink("s").unwrap();
    let (mut p, version) = sink.read_current(path).await.unwrap().expect("a published payload");
    edit(&mut p);
    p.rotation_id = new_rotation_id();
    sink.publish(path, &p, Some(&version)).await.unwrap();
}

async fn published(engine: &Engine, path: &str) -> Payload {
    engine.sink("s").unwrap().read_current(path).await.unwrap().unwrap().0
}

async fn dry_run(engine: &Engine) -> Report {
    engine
        .pass(&PassOptions {
            dry_run: true,
            ..Default::default()
        })
        .await
        .remove(0)
}

fn rotator_id(h: &Harness) -> u64 {
    let me = h.sim.admin().username;
    h.sim.accounts().into_iter().find(|a| a.username == me).unwrap().id
}

#[tokio::test]
async fn whoever_can_write_the_sink_cannot_make_the_rotator_delete_an_account_it_does_not_own() {
    for backend in ALL {
        let h = Harness::new(Seed::Demo).await;
        let (policy, path) = etl(&h, backend, "");
        let engine = h.engine(&policy);
        ok(&h.force(&engine, "etl", false).await);
        let me = rotator_id(&h);
        let (other, _) = h.sim.add_account("someone-elses-bot", Role::Admin, None, &[]);
        // `retiring` names the rotator's own account and a foreign one, due long ago.
        tamper(&engine, &path, |p| {
            for id in [me, other.id] {
                p.retiring.push(RetiringAccount {
                    id,
                    not_before: t("2020-01-01T00:00:00Z"),
                });
            }
        })
        .await;
        h.clock.advance(Duration::days(2));
        let r = h.pass(&engine).await;
        assert!(
            h.sim.account(me).is_some(),
            "{backend:?}: the rotator's own account was deleted"
        );
        assert!(
            h.sim.account(other.id).is_some(),
            "{backend:?}: a foreign account was deleted"
        );
        for id in [me, other.id] {
            assert!(
                r.warnings.iter().any(|w| w.contains(&format!("names account {id} "))
                    && w.contains(&format!("path `{path}`"))
                    && w.contains("ignored, never deleted")),
                "{backend:?}: {:?}",
                r.warnings
            );
        }
        assert!(r.errors.is_empty(), "{backend:?}: {:?}", r.errors);
        // The variant: the published account is set to a foreign one, then rotate-now.
        tamper(&engine, &path, |p| p.service_account_id = other.id).await;
        let r = h.force(&engine, "etl", true).await;
        assert!(
            matches!(&r.errors[0].cause, Cause::Blocked(Blocked::ForeignCurrent { id, .. }) if *id == other.id),
            "{backend:?}: {:?}",
            r.errors
        );
        assert!(r.rotated.is_none());
        h.clock.advance(Duration::days(2));
        h.pass(&engine).await;
        assert!(
            h.sim.account(other.id).is_some(),
            "{backend:?}: the foreign account was deleted"
        );
        assert!(h.sim.account(me).is_some());
        h.assert_no_secret_leaked(&[&r]);
    }
}

#[tokio::test]
async fn a_create_answered_with_another_account_touches_nothing_but_its_own_account() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].clone();
    let me = rotator_id(&h);
    for answered_with in [me, legacy.id] {
        h.sim.set_quirks(Quirks {
            create_answers_with: Some(answered_with),
            ..Default::default()
        });
        let (policy, _) = etl(&h, Backend::File, "");
        let engine = h.engine(&policy);
        let memberships_before = h.sim.memberships(answered_with);
        h.sim.clear_requests();
        let r = h.force(&engine, "etl", false).await;
        let e = &r.errors[0];
        assert_eq!(e.step, Step::Create);
        assert!(
            matches!(e.cause, Cause::UnexpectedCreate { id, .. } if id == answered_with),
            "{e}"
        );
        assert!(matches!(e.consequence, Some(Consequence::StrayDeleted { .. })), "{e}");
        assert!(
            h.accounts_with_prefix("mpr-etl-").is_empty(),
            "the account really created is deleted"
        );
        assert!(h.sim.account(answered_with).is_some());
        assert_eq!(h.sim.memberships(answered_with), memberships_before);
        // Nothing but create, the lookup by name and the delete of the real new account.
        let mutating: Vec<String> = h
            .sim
            .requests()
            .into_iter()
            .filter(|q| q.is_mutating())
            .map(|q| format!("{} {}", q.method, q.path))
            .collect();
        assert_eq!(mutating.len(), 2, "{mutating:?}");
        assert!(mutating[0].starts_with("POST") && mutating[1].starts_with("DELETE"));
        assert!(!mutating[1].ends_with(&format!("/{answered_with}")), "{mutating:?}");
        assert!(h.payload("etl.json").is_none());
    }
}

#[tokio::test]
async fn two_rotations_in_one_second_keep_the_predecessors_grace() {
    for backend in ALL {
        let h = Harness::new(Seed::Demo).await;
        let (policy, path) = etl(&h, backend, "grace = \"24h\"\norphan_after = \"1m\"\n");
        let engine = h.engine(&policy);
        ok(&h.force(&engine, "etl", false).await);
        let first = published(&engine, &path).await.service_account_id;
        ok(&h.force(&engine, "etl", false).await); // the same second
        let second = published(&engine, &path).await.service_account_id;
        assert_eq!(published(&engine, &path).await.previous_service_account_id, Some(first));
        let plan = dry_run(&engine).await;
        let d = plan.plan.delete_later.iter().find(|d| d.id == first).expect("planned");
        assert_eq!((d.reason, d.rule), (DeleteReason::Retiring, Rule::Grace), "{backend:?}");
        assert_eq!(d.due, Some(t(START) + Duration::hours(24)));
        let text = mixpanel_rotator::render::plan_text(&[plan]);
        assert!(
            text.contains(&format!("delete account {first} (")) && text.contains("retiring"),
            "{text}"
        );
        h.clock.advance(Duration::minutes(20));
        let r = h.pass(&engine).await;
        ok(&r);
        assert!(
            h.sim.account(first).is_some(),
            "{backend:?}: deleted as an orphan after orphan_after"
        );
        h.clock.advance(Duration::hours(24));
        let r = h.pass(&engine).await;
        ok(&r);
        assert!(r.deleted.iter().any(|d| d.id == first), "{backend:?}");
        assert!(h.sim.account(second).is_some());
    }
}

const EXPLICIT: &str = "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\norphan_after = \"1m\"\nprojects = [{ id = 101, role = \"analyst\" }]\n";

#[tokio::test]
async fn a_rotation_slower_than_orphan_after_never_publishes() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(EXPLICIT);
    let gate = Gate::new();
    h.sim
        .inject(Fault::once("GET", "/me", FaultAction::Hold(gate.clone())).from_callers("mpr-"));
    let slow = async {
        gate.arrived(1).await;
        // The verification takes 50 s; the publish deadline is 45 s (3/4 of 1m).
        h.clock.advance(Duration::seconds(50));
        gate.open();
    };
    let (r, ()) = tokio::join!(h.pass(&engine), slow);
    let e = &r.errors[0];
    assert_eq!(e.step, Step::Publish);
    assert!(matches!(e.cause, Cause::TooSlow { .. }), "{e}");
    assert!(matches!(e.consequence, Some(Consequence::NewDeleted { .. })), "{e}");
    assert!(h.payload("etl.json").is_none(), "nothing published");
    assert!(h.accounts_with_prefix("mpr-etl-").is_empty());
    // Within the deadline it publishes.
    let r = h.pass(&engine).await;
    ok(&r);
    h.consumer("etl.json").me().await.unwrap();
}

#[tokio::test]
async fn an_account_deleted_while_its_rotation_runs_is_never_published() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(EXPLICIT);
    let gate = Gate::new();
    h.sim
        .inject(Fault::once("GET", "/me", FaultAction::Hold(gate.clone())).from_callers("mpr-"));
    let other_rotator = async {
        gate.arrived(1).await;
        let new = h.accounts_with_prefix("mpr-etl-")[0].id;
        assert!(h.sim.delete_account(new));
        gate.open();
    };
    let (r, ()) = tokio::join!(h.pass(&engine), other_rotator);
    // Its credential is refused, or its memberships (read back at the same
    // time) are found gone: either way it is not published.
    let e = &r.errors[0];
    assert!(
        matches!(e.cause, Cause::NotAccepted { .. }) || matches!(e.step, Step::ReadBack | Step::AddMemberships),
        "{e}"
    );
    assert!(h.payload("etl.json").is_none(), "nothing published");
}

#[tokio::test]
async fn a_crash_between_verify_and_publish_leaves_an_orphan_deleted_after_orphan_after() {
    let h = Harness::new(Seed::Demo).await;
    // Its own integration name: failpoints are armed per integration, and
    // other tests run `etl` in this process at the same time.
    let policy = EXPLICIT
        .replace("\"etl\"", "\"verified\"")
        .replace("etl.json", "verified.json");
    let engine = h.engine(&policy);
    // Crash right before the publish, once the new credential is verified.
    let mut trip = mixpanel_rotator::failpoint::arm("before_publish", "verified");
    let opts = PassOptions::default();
    let pass = engine.pass(&opts);
    let new = tokio::select! {
        _ = pass => panic!("the pass was to be cut short"),
        () = trip.hit() => h.accounts_with_prefix("mpr-verified-")[0].id,
    }; // the pass future is dropped here: no clean-up code runs, as in a SIGKILL
    drop(trip); // the restarted rotator runs to its end
    assert!(h.payload("verified.json").is_none());
    assert!(
        h.sim.account(new).unwrap().last_used.is_some(),
        "used by its verification"
    );
    let engine = h.engine(&policy);
    h.sim.clear_faults();
    let plan = dry_run(&engine).await;
    let d = plan.plan.delete_later.iter().find(|d| d.id == new).expect("an orphan");
    assert_eq!(d.rule, Rule::NeverUsed);
    let text = mixpanel_rotator::render::plan_text(std::slice::from_ref(&plan));
    assert!(
        text.contains("never used after its own verification (last_used 2026-11-28T04:00:00Z)"),
        "{text}"
    );
    h.clock.advance(Duration::minutes(1));
    let r = h.pass(&engine).await;
    ok(&r);
    assert!(r.deleted.iter().any(|d| d.id == new && d.rule == Rule::NeverUsed));
    assert!(h.sim.account(new).is_none());
}

#[tokio::test]
async fn two_rotators_on_separate_sinks_never_delete_each_others_credentials_in_use() {
    let h = Harness::new(Seed::Demo).await;
    let pod = |name: &str| {
        format!(
            "[sinks.{name}]\ntype = \"file\"\ndir = \"{}\"\n[[integrations]]\nname = \"etl\"\nsink = \"{name}\"\npath = \"etl.json\"\norphan_after = \"1m\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n",
            h.dir.path().join(name).display()
        )
    };
    let (a, b) = (h.engine(&pod("a")), h.engine(&pod("b")));
    ok(&h.pass(&a).await);
    ok(&h.pass(&b).await);
    let read = |name: &str| {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(h.dir.path().join(name).join("etl.json")).unwrap())
            .unwrap()
    };
    let (pa, pb) = (read("a"), read("b"));
    let ids = [&pa, &pb].map(|p| p["service_account_id"].as_u64().unwrap());
    // Both applications use their credential, and both rotators keep passing, for 3 x orphan_after.
    h.clock.advance(Duration::seconds(60));
    for _ in 0..7 {
        h.clock.advance(Duration::seconds(30));
        h.client_for(&pa).me().await.unwrap();
        h.client_for(&pb).me().await.unwrap();
        for (engine, other) in [(&a, ids[1]), (&b, ids[0])] {
            let r = h.pass(engine).await;
            assert!(r.failed(), "the other pod's account in use is an error");
            assert!(
                r.errors
                    .iter()
                    .any(|e| matches!(&e.cause, Cause::InUseElsewhere(u) if u.id == other)
                        && e.to_string().contains("in use but not published here")
                        && e.to_string().contains("`namespace`")),
                "{:?}",
                r.errors
            );
            assert!(r.deleted.is_empty());
        }
        for id in ids {
            assert!(h.sim.account(id).is_some(), "account {id} was deleted while in use");
        }
    }
    h.client_for(&pa).me().await.unwrap();
    h.client_for(&pb).me().await.unwrap();
}

/// The moto server's Secrets Manager client.
async fn aws() -> aws_sdk_secretsmanager::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(env("MPR_TEST_MOTO_URL"))
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&conf)
}

#[tokio::test]
async fn aws_eight_rotators_racing_on_a_secret_created_empty_exactly_one_wins_every_time() {
    let h = Harness::new(Seed::Demo).await;
    let c = aws().await;
    for round in 0..4 {
        let (policy, path) = etl(&h, Backend::Aws, "");
        c.create_secret().name(&path).send().await.unwrap(); // by Terraform, say: no value
        let engines: Vec<Engine> = (0..8).map(|_| h.engine(&policy)).collect();
        let reports = futures_util::future::join_all(engines.iter().map(|e| h.force(e, "etl", false))).await;
        let winners: Vec<&Report> = reports.iter().filter(|r| r.rotated.is_some()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            reports.iter().map(|r| &r.errors).collect::<Vec<_>>()
        );
        for r in reports.iter().filter(|r| r.rotated.is_none()) {
            let e = &r.errors[0];
            assert_eq!(
                e.cause.sink_error().map(|s| s.kind),
                Some(SinkErrorKind::Conflict),
                "round {round}: {e}"
            );
            let Some(Consequence::NewDeleted { id }) = e.consequence else {
                panic!("round {round}: the loser's account is not deleted: {e}")
            };
            assert!(h.sim.account(id).is_none());
        }
        let current = published(&engines[0], &path).await;
        assert_eq!(
            current.service_account_id,
            winners[0].rotated.as_ref().unwrap().service_account_id
        );
        // Each round starts a fresh lineage timestamp.
        h.clock.advance(Duration::days(40));
    }
}

#[tokio::test]
async fn one_account_adopted_twice_by_id_and_by_username_blocks_both() {
    let h = Harness::new(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].clone();
    let engine = h.engine(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nadopt = {}\n\
         [[integrations]]\nname = \"etl2\"\nsink = \"local\"\npath = \"etl2.json\"\nadopt = \"etl-legacy\"\n",
        legacy.id
    ));
    h.sim.clear_requests();
    let reports = engine.pass(&PassOptions::default()).await;
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(
            matches!(&r.errors[0].cause, Cause::Blocked(Blocked::AdoptShared { id, .. }) if *id == legacy.id),
            "{:?}",
            r.errors
        );
        assert!(r.rotated.is_none());
    }
    assert!(h.sim.requests().iter().all(|q| !q.is_mutating()));
}

/// A store that stops answering (the in-memory store told to fail, as a
/// Vault or AWS outage would): the pass fails at its first read with a
/// stable code, makes no mutating call, and the store keeps what it held.
#[tokio::test]
async fn a_store_that_stops_answering_is_read_sink_unavailable_and_nothing_changes() {
    let h = Harness::new(Seed::Demo).await;
    let (policy, path) = etl(&h, Backend::Memory, "");
    let engine = h.engine(&policy);
    ok(&h.force(&engine, "etl", false).await);
    let name = policy
        .split("store = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let store = mixpanel_rotator::sink::memory::store(name);
    let before = store.raw(&path).expect("published");
    store.fail_with(Some(SinkErrorKind::Unavailable));
    h.sim.clear_requests();
    let r = h.force(&engine, "etl", false).await;
    let codes: Vec<String> = r.errors.iter().map(|e| e.code().to_string()).collect();
    assert_eq!(codes, ["read_sink.sink.unavailable"], "{:?}", r.errors);
    assert!(h.sim.requests().iter().all(|q| !q.is_mutating()));
    store.fail_with(None);
    assert_eq!(store.raw(&path).unwrap(), before);
    assert_eq!(store.paths(), [path]);
}
