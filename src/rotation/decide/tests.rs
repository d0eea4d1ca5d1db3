//! Every rule of [`decide`], with fixed times.

use super::*;
use crate::rotation::error::Step;
use crate::rotation::lineage::Lineage;
use crate::secret::Secret;
use crate::sink::{Payload, Version};
use chrono::Duration;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn integration(extra: &str) -> Integration {
    crate::policy::test_policy(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\nttl = \"30d\"\ngrace = \"24h\"\norphan_after = \"15m\"\n{extra}\n"
    ))
    .integrations[0]
        .clone()
}

fn scope() -> Scope {
    Scope {
        namespace: "mpr".into(),
        organization_id: 1,
        rotator: "rotator".into(),
    }
}

fn sa(id: u64, username: &str, expires: Option<DateTime<Utc>>) -> ServiceAccount {
    ServiceAccount {
        id,
        username: format!("{username}.abc123.mp-service-account"),
        last_used: None,
        expires,
        creator: None,
        created: None,
        user: None,
    }
}

fn payload(id: u64, rotated_at: DateTime<Utc>, expires: DateTime<Utc>, retiring: Vec<RetiringAccount>) -> Payload {
    Payload {
        username: "x".into(),
        secret: Secret::new("s"),
        service_account_id: id,
        organization_id: 1,
        integration: "etl".into(),
        expires: Some(expires),
        created: rotated_at,
        rotated_at,
        rotation_id: "r".into(),
        previous_service_account_id: None,
        projects: vec![],
        retiring,
    }
}

fn obs(i: &Integration, accounts: Vec<ServiceAccount>, p: Option<Payload>) -> Observation {
    Observation::new(i, "mpr", &accounts, p.map(|p| (p, Version("v".into()))))
}

fn plan(i: &Integration, o: &Observation, now: DateTime<Utc>) -> Plan {
    decide(i, &scope(), o, now, Request::default())
}

fn forced(i: &Integration, o: &Observation, now: DateTime<Utc>, revoke_old: bool) -> Plan {
    decide(
        i,
        &scope(),
        o,
        now,
        Request {
            force: true,
            revoke_old,
        },
    )
}

fn ids(v: &[Disposal]) -> Vec<(u64, DeleteReason, Rule)> {
    let mut out: Vec<_> = v.iter().map(|d| (d.id, d.reason, d.rule)).collect();
    out.sort_by_key(|x| x.0);
    out
}

fn reason(p: &Plan) -> Option<RotateReason> {
    p.rotate.as_ref().map(|r| r.reason.clone())
}

#[test]
fn quiet_when_fresh_and_next_rotation_is_expiry_minus_renew_before() {
    let i = integration("");
    let rot = t("2026-11-01T00:00:00Z");
    let exp = rot + Duration::days(30);
    let cur = sa(10, "mpr-etl-20261101T000000Z-aaaa", Some(exp));
    let o = obs(&i, vec![cur], Some(payload(10, rot, exp, vec![])));
    let d = plan(&i, &o, t("2026-11-10T00:00:00Z"));
    assert_eq!(d.rotate, None);
    assert!(d.delete_now.is_empty() && d.delete_later.is_empty());
    assert_eq!(d.deadlines.renew_at, Some(exp - Duration::days(10)));
    assert_eq!(d.next_rotation(), Some(exp - Duration::days(10)));
    assert_eq!(d.next_action(), d.next_rotation());
    // renew_before defaults to a third of ttl: 10 days before expiry it rotates.
    let d = plan(&i, &o, exp - Duration::days(10));
    assert_eq!(reason(&d), Some(RotateReason::ExpiresSoon { expires: exp }));
    assert!(d.deadlines.in_renewal(exp - Duration::days(10)));
    assert_eq!(d.next_rotation(), None, "due now, not later");
    let d = plan(&i, &o, exp);
    assert_eq!(reason(&d), Some(RotateReason::Expired { expires: exp }));
}

#[test]
fn the_earlier_of_mixpanels_and_the_payloads_expiry_counts() {
    let i = integration("");
    let rot = t("2026-11-01T00:00:00Z");
    let exp = rot + Duration::days(30);
    let cur = sa(10, "mpr-etl-20261101T000000Z-aaaa", Some(exp - Duration::days(5)));
    let o = obs(&i, vec![cur], Some(payload(10, rot, exp, vec![])));
    let d = plan(&i, &o, rot);
    assert_eq!(d.deadlines.expires, Some(exp - Duration::days(5)));
}

/// A lineage published at `rot`: its predecessor (9), the published account
/// (10) and an orphan created an hour later (11).
struct Lineage3 {
    rot: DateTime<Utc>,
    exp: DateTime<Utc>,
    old: ServiceAccount,
    cur: ServiceAccount,
    orphan: ServiceAccount,
}

fn lineage3() -> Lineage3 {
    let rot = t("2026-11-28T04:00:00Z");
    let exp = rot + Duration::days(30);
    Lineage3 {
        rot,
        exp,
        old: sa(9, "mpr-etl-20261028T040000Z-0001", Some(rot)),
        cur: sa(10, "mpr-etl-20261128T040000Z-0002", Some(exp)),
        orphan: sa(11, "mpr-etl-20261128T050000Z-0003", Some(exp)),
    }
}

#[test]
fn retiring_after_grace_orphans_after_orphan_after_never_current_or_foreign() {
    let i = integration("");
    let Lineage3 {
        rot,
        exp,
        old,
        cur,
        orphan,
    } = lineage3();
    let foreign = sa(12, "etl-legacy", None);
    let other_ns = sa(13, "other-etl-20261028T040000Z-0004", None);
    let adopted_before = sa(14, "legacy", None);
    let retiring = vec![RetiringAccount {
        id: 14,
        not_before: rot + Duration::hours(1),
    }];
    let p = payload(10, rot, exp, retiring);
    let o = obs(&i, vec![old, cur, orphan, foreign, other_ns, adopted_before], Some(p));

    let d = plan(&i, &o, rot + Duration::minutes(30));
    assert!(d.delete_now.is_empty());
    assert_eq!(d.delete_later.len(), 3);
    assert_eq!(d.next_action(), Some(rot + Duration::hours(1)), "the earliest deletion");

    let d = plan(&i, &o, t("2026-11-28T05:20:00Z"));
    // The adopted account's own not_before (1h) and the orphan's 15 minutes have passed; the
    // lineage predecessor waits for the 24h grace.
    assert_eq!(
        ids(&d.delete_now),
        vec![
            (11, DeleteReason::Orphan, Rule::OrphanAfter),
            (14, DeleteReason::Retiring, Rule::NotBefore)
        ]
    );
    let d = plan(&i, &o, rot + Duration::hours(25));
    assert_eq!(
        ids(&d.delete_now),
        vec![
            (9, DeleteReason::Retiring, Rule::Grace),
            (11, DeleteReason::Orphan, Rule::OrphanAfter),
            (14, DeleteReason::Retiring, Rule::NotBefore)
        ]
    );
    assert!(d.delete_later.is_empty());
    assert_eq!(d.pending(DeleteReason::Retiring), 2);
    assert_eq!(d.pending(DeleteReason::Orphan), 1);
}

#[test]
fn drain_aware_deletion_waits_for_idle_up_to_max_grace() {
    let i = integration("delete_when_idle = \"1h\"\nmax_grace = \"3d\"");
    let rot = t("2026-11-28T04:00:00Z");
    let exp = rot + Duration::days(30);
    let cur = sa(10, "mpr-etl-20261128T040000Z-0002", Some(exp));
    let mut old = sa(9, "mpr-etl-20261028T040000Z-0001", Some(exp));
    let o = |old: &ServiceAccount| obs(&i, vec![old.clone(), cur.clone()], Some(payload(10, rot, exp, vec![])));
    // Never used: it goes when grace ends.
    let d = plan(&i, &o(&old), rot + Duration::hours(24));
    assert_eq!(ids(&d.delete_now), vec![(9, DeleteReason::Retiring, Rule::Idle)]);
    // Used 30 minutes before grace ends: an hour after that use.
    old.last_used = Some(rot + Duration::minutes(23 * 60 + 30));
    let d = plan(&i, &o(&old), rot + Duration::hours(24));
    assert_eq!(d.delete_later[0].due, Some(rot + Duration::minutes(24 * 60 + 30)));
    assert_eq!(d.delete_later[0].rule, Rule::Idle);
    // In use for days: at max_grace, busy or not.
    old.last_used = Some(rot + Duration::days(3));
    let d = plan(&i, &o(&old), rot + Duration::days(3));
    assert_eq!(ids(&d.delete_now), vec![(9, DeleteReason::Retiring, Rule::MaxGrace)]);
    assert_eq!(d.delete_now[0].due, Some(rot + Duration::days(3)));
}

#[test]
fn bootstrap_needs_adopt_or_explicit_projects() {
    let i = integration("");
    let now = t("2026-11-28T04:00:00Z");
    let d = plan(&i, &obs(&i, vec![sa(5, "etl-legacy", None)], None), now);
    assert_eq!(reason(&d), Some(RotateReason::Bootstrap));
    let rp = d.rotate.unwrap();
    assert_eq!(rp.replaces.as_ref().map(|a| a.id), Some(5));
    assert_eq!(rp.remember, Some(5), "an adopted account is remembered in the payload");
    let d = plan(&i, &obs(&i, vec![], None), now);
    assert!(
        matches!(&d.blocked, Some(Blocked::AdoptNotFound { adopt_key, .. }) if adopt_key == "integrations[0].adopt"),
        "{:?}",
        d.blocked
    );
    assert_eq!(d.rotate, None);
    assert_eq!(d.next_rotation(), None);
    let mut no_adopt = integration("");
    no_adopt.adopt = None;
    let d = forced(&no_adopt, &obs(&no_adopt, vec![], None), now, false);
    assert!(
        matches!(d.blocked, Some(Blocked::NothingToCopy { .. })),
        "{:?}",
        d.blocked
    );
    assert!(
        d.blocked
            .as_ref()
            .unwrap()
            .to_string()
            .contains("`integrations[0].projects` is \"copy\"")
    );
    assert_eq!(d.rotate, None, "forcing does not bypass a blocked bootstrap");
    let explicit = integration("projects = [{ id = 101, role = \"analyst\" }]");
    let d = plan(&explicit, &obs(&explicit, vec![], None), now);
    assert_eq!(reason(&d), Some(RotateReason::Bootstrap));
    assert_eq!(d.rotate.unwrap().replaces, None);
}

#[test]
fn nothing_published_lineage_accounts_get_grace_not_orphan_treatment() {
    let i = integration("");
    let now = t("2026-11-28T04:00:00Z");
    let leftover = sa(20, "mpr-etl-20261101T000000Z-0009", None);
    let young = sa(21, "mpr-etl-20261128T035500Z-000a", None);
    let legacy = sa(5, "etl-legacy", None);
    let d = plan(&i, &obs(&i, vec![leftover.clone(), young.clone(), legacy], None), now);
    assert_eq!(reason(&d), Some(RotateReason::Bootstrap));
    assert!(d.delete_now.is_empty());
    assert_eq!(
        ids(&d.delete_later),
        vec![
            (20, DeleteReason::Orphan, Rule::BootstrapGrace),
            (21, DeleteReason::Orphan, Rule::OrphanAfter)
        ]
    );
    assert_eq!(d.delete_later[0].due, Some(now + Duration::hours(24)));
    // Blocked (nothing to adopt): nothing is deleted at all.
    let d = plan(&i, &obs(&i, vec![leftover], None), now);
    assert!(d.blocked.is_some());
    assert!(d.delete_now.is_empty());
    assert_eq!(d.delete_later[0].rule, Rule::Blocked);
    assert_eq!(d.delete_later[0].due, None);
    assert_eq!(d.next_action(), None);
}

#[test]
fn missing_current_and_schedule() {
    let i = integration("schedule = \"0 4 * * MON\"\njitter = \"15m\"");
    let rot = t("2026-11-28T04:00:00Z"); // a Saturday
    let exp = rot + Duration::days(30);
    let p = payload(10, rot, exp, vec![]);
    let cur = sa(10, "mpr-etl-20261128T040000Z-0002", Some(exp));
    let d = plan(&i, &obs(&i, vec![], Some(p.clone())), rot);
    assert_eq!(reason(&d), Some(RotateReason::CurrentMissing));
    let o = obs(&i, vec![cur], Some(p));
    let slot = t("2026-11-30T04:00:00Z");
    let at = slot + i.jitter_for(slot);
    let d = plan(&i, &o, rot + Duration::hours(1));
    assert_eq!(d.deadlines.slot, Some(Slot { slot, fires_at: at }));
    assert_eq!(d.next_rotation(), Some(at));
    let d = plan(&i, &o, at);
    assert_eq!(reason(&d), Some(RotateReason::Scheduled { slot }));
    // Slots missed for weeks still give one rotation (for the first missed slot).
    let d = plan(&i, &o, t("2026-12-15T00:00:00Z"));
    assert_eq!(reason(&d), Some(RotateReason::Scheduled { slot }));
    let d = forced(&i, &o, rot + Duration::hours(1), false);
    assert_eq!(reason(&d), Some(RotateReason::Forced));
}

#[test]
fn memberships_come_from_the_policy_the_current_account_or_the_payload() {
    let rot = t("2026-11-28T04:00:00Z");
    let exp = rot + Duration::days(30);
    let i = integration("");
    let cur = sa(10, "mpr-etl-20261128T040000Z-0002", Some(exp));
    let mut p = payload(10, rot, exp, vec![]);
    p.projects = vec![ProjectGrant {
        id: 101,
        role: Role::Analyst,
    }];
    let d = forced(&i, &obs(&i, vec![cur.clone()], Some(p.clone())), rot, false);
    assert_eq!(
        d.rotate.unwrap().memberships,
        MembershipSource::CopyFrom {
            account: AccountRef::of(&cur)
        }
    );
    let d = plan(&i, &obs(&i, vec![], Some(p.clone())), rot);
    assert_eq!(
        d.rotate.unwrap().memberships,
        MembershipSource::Recorded {
            gone: 10,
            grants: p.projects.clone()
        }
    );
    let explicit = integration("projects = [{ id = 103, role = \"consumer\" }]");
    let d = forced(&explicit, &obs(&explicit, vec![cur], Some(p)), rot, false);
    assert_eq!(
        d.rotate.unwrap().memberships,
        MembershipSource::Explicit {
            grants: vec![ProjectGrant {
                id: 103,
                role: Role::Consumer
            }]
        }
    );
}

#[test]
fn the_next_payload_carries_retiring_forward_and_remembers_an_adopted_account() {
    let i = integration("");
    let rot = t("2026-11-28T04:00:00Z");
    let exp = rot + Duration::days(30);
    let cur = sa(10, "legacy-b", Some(exp)); // an adopted, non-lineage account is published
    let kept = RetiringAccount {
        id: 14,
        not_before: rot + Duration::hours(1),
    };
    let gone = RetiringAccount {
        id: 15,
        not_before: rot,
    };
    let p = payload(10, rot, exp, vec![kept.clone(), gone]);
    let o = obs(&i, vec![cur, sa(14, "legacy-a", None)], Some(p));
    let at = rot + Duration::hours(2);
    let rp = forced(&i, &o, at, false).rotate.unwrap();
    assert_eq!(
        rp.carried,
        vec![kept.clone()],
        "entries whose account is gone are dropped"
    );
    assert_eq!(rp.remember, Some(10));
    assert_eq!(
        rp.retiring(at, &[]),
        vec![
            kept.clone(),
            RetiringAccount {
                id: 10,
                not_before: at + Duration::hours(24)
            }
        ]
    );
    // What this pass deleted is not carried.
    let deleted = Disposal {
        id: 14,
        username: "legacy-a".into(),
        reason: DeleteReason::Retiring,
        rule: Rule::NotBefore,
        due: Some(at),
    };
    assert_eq!(
        rp.retiring(at, &[deleted]),
        vec![RetiringAccount {
            id: 10,
            not_before: at + Duration::hours(24)
        }]
    );
    // --revoke-old: everything is due at once.
    let rp = forced(&i, &o, at, true).rotate.unwrap();
    assert_eq!(
        rp.retiring(at, &[]),
        vec![
            RetiringAccount { id: 14, not_before: at },
            RetiringAccount { id: 10, not_before: at }
        ]
    );
}

#[test]
fn revoke_old_targets_the_replaced_older_lineage_and_retiring_never_orphans() {
    let i = integration("");
    let Lineage3 {
        rot,
        exp,
        old,
        cur,
        orphan,
    } = lineage3();
    let legacy = sa(14, "legacy", None);
    let p = payload(
        10,
        rot,
        exp,
        vec![RetiringAccount {
            id: 14,
            not_before: rot + Duration::hours(24),
        }],
    );
    let o = obs(&i, vec![old, cur, orphan, legacy], Some(p));
    let now = rot + Duration::hours(2);
    let d = forced(&i, &o, now, true);
    let rp = d.rotate.unwrap();
    assert_eq!(
        ids(&rp.revoke),
        vec![
            (9, DeleteReason::Revoked, Rule::RevokeOld),
            (10, DeleteReason::Revoked, Rule::RevokeOld),
            (14, DeleteReason::Revoked, Rule::RevokeOld)
        ]
    );
    assert!(rp.revoke.iter().all(|x| x.due == Some(now)));
    assert_eq!(rp.remember, None, "a lineage account is found again by its name");
    // Without --revoke-old nothing is revoked; without force, --revoke-old means nothing.
    assert!(forced(&i, &o, now, false).rotate.unwrap().revoke.is_empty());
    let quiet = decide(
        &i,
        &scope(),
        &o,
        now,
        Request {
            force: false,
            revoke_old: true,
        },
    );
    assert_eq!(quiet.rotate, None);
}

#[test]
fn a_payload_of_another_integration_or_organization_blocks_everything() {
    let i = integration("");
    let rot = t("2026-11-28T04:00:00Z");
    let exp = rot + Duration::days(30);
    let stale = sa(9, "mpr-etl-20261028T040000Z-0001", Some(rot));
    for (integration, org) in [("ci", 1), ("etl", 2)] {
        let mut p = payload(10, rot, exp, vec![]);
        p.integration = integration.into();
        p.organization_id = org;
        let d = forced(
            &i,
            &obs(&i, vec![stale.clone()], Some(p)),
            rot + Duration::days(40),
            true,
        );
        let b = d.blocked.clone().expect("blocked");
        assert!(matches!(b, Blocked::SharedPath(_)), "{b:?}");
        assert_eq!(b.step(), Step::ReadSink);
        assert!(
            b.to_string()
                .contains(&format!("holds the credential of integration `{integration}`")),
            "{b}"
        );
        assert!(d.rotate.is_none() && d.delete_now.is_empty() && d.delete_later.is_empty());
    }
}

#[test]
fn adopting_the_rotators_own_account_blocks_everything() {
    let i = integration("");
    let mut s = scope();
    s.rotator = "etl-legacy".into();
    let d = decide(
        &i,
        &s,
        &obs(&i, vec![sa(5, "etl-legacy", None)], None),
        t(START),
        Request::default(),
    );
    let b = d.blocked.expect("blocked");
    assert!(matches!(b, Blocked::OwnAccountAdopted { .. }), "{b:?}");
    assert!(b.to_string().contains("rotator's own account"));
    assert!(d.rotate.is_none());
}

const START: &str = "2026-11-28T04:00:00Z";

#[test]
fn deadlines_after_a_rotation_follow_the_same_rule() {
    let i = integration("schedule = \"0 4 * * MON\"");
    let rot = t("2026-11-28T04:00:00Z");
    let d = Deadlines::of(&i, Some(rot + Duration::days(30)), rot);
    assert_eq!(d.renew_at, Some(rot + Duration::days(20)));
    assert_eq!(
        d.next_rotation(),
        Some(t("2026-11-30T04:00:00Z")),
        "the slot comes first"
    );
    assert_eq!(Deadlines::of(&integration(""), None, rot).next_rotation(), None);
}

#[test]
fn lineage_helper_matches_usernames_used_here() {
    assert!(
        Lineage::new("mpr", "etl")
            .parse("mpr-etl-20261128T040000Z-0002")
            .is_some()
    );
}
