use super::*;
use crate::mixpanel::MixpanelError;
use crate::rotation::{Cause, DeleteReason, Disposal, Plan, Rule, Step, StepError};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn report(name: &str, plan: Plan) -> Report {
    let p = crate::policy::test_policy(&format!(
        "[[integrations]]\nname = \"{name}\"\nsink = \"f\"\npath = \"{name}.json\"\nadopt = 5\n"
    ));
    let mut r = Report::new(&p.integrations[0], t("2026-11-28T04:00:00Z"));
    r.plan = plan;
    r
}

fn failed(mut r: Report) -> Report {
    let e = MixpanelError::Transport {
        endpoint: "create-service-account",
        detail: "x".into(),
        connect: true,
    };
    r.errors
        .push(StepError::new(&r.integration.clone(), Step::Create, Cause::Mixpanel(e)));
    r
}

/// A retiring account due at `at`.
fn retiring_at(at: DateTime<Utc>) -> Disposal {
    Disposal {
        id: 1,
        username: "u".into(),
        reason: DeleteReason::Retiring,
        rule: Rule::Grace,
        due: Some(at),
        last_used: None,
    }
}

fn plan_next(at: DateTime<Utc>) -> Plan {
    let mut p = Plan::default();
    p.deadlines.renew_at = Some(at);
    p
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
        next_due(&report("etl", Plan::default()), now, 0, &Timing::resync(resync), 0.5),
        now + resync
    );
    // A rotation due in 5 minutes (expiry - renew_before, or a slot + jitter).
    let r = report("etl", plan_next(now + Duration::minutes(5)));
    assert_eq!(
        next_due(&r, now, 0, &Timing::resync(resync), 0.5),
        now + Duration::minutes(5)
    );
    // A grace end or an orphan deadline in 2 minutes.
    let mut p = plan_next(now + Duration::days(3));
    p.delete_later.push(retiring_at(now + Duration::minutes(2)));
    let r = report("etl", p);
    assert_eq!(
        next_due(&r, now, 0, &Timing::resync(resync), 0.5),
        now + Duration::minutes(2)
    );
    // A failure: back off, whatever else is pending.
    let r = failed(r);
    assert_eq!(
        next_due(&r, now, 1, &Timing::resync(resync), 0.5),
        now + Duration::seconds(30)
    );
    assert_eq!(
        next_due(&r, now, 3, &Timing::resync(resync), 0.5),
        now + Duration::seconds(120)
    );
    // Deadlines in the past never make it spin.
    let r = report("etl", plan_next(now - Duration::hours(1)));
    assert_eq!(next_due(&r, now, 0, &Timing::resync(resync), 0.5), now + MIN_SLEEP);
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
    let bad = failed(report("etl", Plan::default()));
    let good = report("ci", plan_next(now + Duration::seconds(10)));
    s.update(
        &[bad.clone(), good],
        now,
        &Timing::resync(Duration::minutes(10)),
        &Default::default(),
    );
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
    assert_eq!(s.wake_at(now, Duration::minutes(10)), now + Duration::seconds(10));
    // Consecutive failures double the delay, up to the cap.
    for _ in 0..12 {
        s.update(
            std::slice::from_ref(&bad),
            now,
            &Timing::resync(Duration::minutes(10)),
            &Default::default(),
        );
    }
    let etl = s.due_of("etl").unwrap();
    assert!(etl <= now + BACKOFF_CAP && etl >= now + Duration::minutes(48), "{etl}");
    // Success resets the count.
    s.update(
        &[report("etl", Plan::default())],
        now,
        &Timing::resync(Duration::minutes(10)),
        &Default::default(),
    );
    assert_eq!(s.due_of("etl"), Some(now + Duration::minutes(10)));
}

#[test]
fn wake_at_is_bounded_by_min_sleep_and_resync() {
    let p =
        crate::policy::test_policy("[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\n");
    let now = t("2026-11-28T04:00:00Z");
    let mut s = Scheduler::default();
    s.reset(&p, now);
    assert_eq!(
        s.wake_at(now, Duration::minutes(10)),
        now + MIN_SLEEP,
        "due now: the shortest sleep"
    );
    s.update(
        &[report("etl", plan_next(now + Duration::days(3)))],
        now,
        &Timing::resync(Duration::minutes(10)),
        &Default::default(),
    );
    assert_eq!(s.wake_at(now, Duration::minutes(10)), now + Duration::minutes(10));
}

#[test]
fn a_failing_integration_backs_off_but_never_past_its_own_next_deadline() {
    let now = t("2026-11-28T04:00:00Z");
    let resync = Duration::minutes(10);
    // Deep in backoff (about an hour), with a deletion due in 5 minutes: woken for the deletion.
    let failing = failed(report("etl", plan_next(now + Duration::minutes(5))));
    assert_eq!(
        next_due(&failing, now, 12, &Timing::resync(resync), 0.5),
        now + Duration::minutes(5)
    );
    // A deadline already past (the rotation that keeps failing) never makes it spin.
    let failing = failed(report("etl", plan_next(now - Duration::minutes(5))));
    assert_eq!(
        next_due(&failing, now, 1, &Timing::resync(resync), 0.5),
        now + Duration::seconds(30)
    );
}

#[test]
fn each_instance_wakes_for_a_rotation_after_its_own_offset_never_for_a_deletion() {
    let now = t("2026-11-28T04:00:00Z");
    let timing = Timing {
        resync: Duration::hours(1),
        offset: Duration::seconds(17),
    };
    let r = report("etl", plan_next(now + Duration::minutes(5)));
    assert_eq!(
        next_due(&r, now, 0, &timing, 0.5),
        now + Duration::minutes(5) + Duration::seconds(17)
    );
    let mut p = Plan::default();
    p.delete_later.push(retiring_at(now + Duration::minutes(2)));
    assert_eq!(
        next_due(&report("etl", p), now, 0, &timing, 0.5),
        now + Duration::minutes(2)
    );
}
