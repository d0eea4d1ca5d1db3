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
    let orphan_after = if extra.contains("orphan_after") {
        ""
    } else {
        "orphan_after = \"15m\"\n"
    };
    crate::policy::test_policy(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\nttl = \"30d\"\ngrace = \"24h\"\n{orphan_after}{extra}\n"
    ))
    .integrations[0]
        .clone()
}

fn scope() -> Scope {
    Scope {
        namespace: "mpr".into(),
        namespaces: vec!["mpr".into()],
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
        last_used_unknown: false,
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
    let accounts = std::sync::Arc::new(crate::rotation::observe::Accounts::new("mpr", accounts));
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

/// A lineage published at `rot`: its recorded predecessor (9), the
/// published account (10) and an orphan created an hour later (11).
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
        old: sa(9, "mpr-etl-20261028T040000Z-0001", Some(exp)),
        cur: sa(10, "mpr-etl-20261128T040000Z-0002", Some(exp)),
        orphan: sa(11, "mpr-etl-20261128T050000Z-0003", Some(exp)),
    }
}

/// The payload of `Lineage3`: 10 published, 9 its predecessor.
fn published3(l: &Lineage3, retiring: Vec<RetiringAccount>) -> Payload {
    let mut p = payload(10, l.rot, l.exp, retiring);
    p.previous_service_account_id = Some(9);
    p
}

#[test]
fn the_predecessor_after_grace_retiring_at_not_before_orphans_after_orphan_after() {
    let i = integration("");
    let l = lineage3();
    let (rot, foreign, other_ns) = (
        l.rot,
        sa(12, "etl-legacy", None),
        sa(13, "other-etl-20261028T040000Z-0004", None),
    );
    let adopted_before = sa(5, "legacy", None); // `adopt = 5`
    let retiring = vec![RetiringAccount {
        id: 5,
        not_before: rot + Duration::hours(1),
    }];
    let p = published3(&l, retiring);
    let o = obs(
        &i,
        vec![
            l.old.clone(),
            l.cur.clone(),
            l.orphan.clone(),
            foreign,
            other_ns,
            adopted_before,
        ],
        Some(p),
    );

    let d = plan(&i, &o, rot + Duration::minutes(30));
    assert!(d.delete_now.is_empty());
    assert_eq!(d.delete_later.len(), 3);
    assert_eq!(d.next_action(), Some(rot + Duration::hours(1)), "the earliest deletion");

    let d = plan(&i, &o, t("2026-11-28T05:20:00Z"));
    // The adopted account's own not_before (1h) and the orphan's 15 minutes have passed; the
    // predecessor waits for the 24h grace.
    assert_eq!(
        ids(&d.delete_now),
        vec![
            (5, DeleteReason::Retiring, Rule::NotBefore),
            (11, DeleteReason::Orphan, Rule::NeverUsed)
        ]
    );
    let d = plan(&i, &o, rot + Duration::hours(25));
    assert_eq!(
        ids(&d.delete_now),
        vec![
            (5, DeleteReason::Retiring, Rule::NotBefore),
            (9, DeleteReason::Retiring, Rule::Grace),
            (11, DeleteReason::Orphan, Rule::NeverUsed)
        ]
    );
    assert!(d.delete_later.is_empty() && d.in_use.is_empty() && d.ignored.is_empty());
    assert_eq!(d.pending(DeleteReason::Retiring), 2);
    assert_eq!(d.pending(DeleteReason::Orphan), 1);
}

#[test]
fn the_payload_never_makes_the_rotator_delete_an_account_it_does_not_own() {
    let i = integration("");
    let l = lineage3();
    let rotator = sa(1, "rotator", None);
    let foreign = sa(12, "etl-legacy", None);
    let lookalike = sa(13, "other-etl-20261028T040000Z-0004", None);
    let long_ago = t("2020-01-01T00:00:00Z");
    let retiring = [1, 12, 13]
        .map(|id| RetiringAccount {
            id,
            not_before: long_ago,
        })
        .to_vec();
    for previous in [1, 12, 13] {
        let mut p = published3(&l, retiring.clone());
        p.previous_service_account_id = Some(previous);
        let accounts = vec![l.cur.clone(), rotator.clone(), foreign.clone(), lookalike.clone()];
        let o = obs(&i, accounts, Some(p));
        for d in [
            plan(&i, &o, l.rot + Duration::days(40)),
            forced(&i, &o, l.rot + Duration::days(40), true),
        ] {
            let touched: Vec<u64> = d.delete_now.iter().chain(&d.delete_later).map(|x| x.id).collect();
            assert!(touched.is_empty(), "previous {previous}: {touched:?}");
            let mut ignored: Vec<(u64, NotOwned)> = d.ignored.iter().map(|x| (x.id, x.why)).collect();
            ignored.sort_by_key(|x| x.0);
            assert_eq!(
                ignored,
                vec![(1, NotOwned::Rotator), (12, NotOwned::Foreign), (13, NotOwned::Foreign)],
                "previous {previous}"
            );
            let rp = d.rotate.expect("the rotation itself goes on");
            assert!(rp.revoke.iter().all(|x| x.id == 10), "{:?}", rp.revoke);
            assert!(rp.carried.is_empty() && rp.remember.is_none(), "{rp:?}");
        }
    }
}

#[test]
fn a_published_account_the_rotator_does_not_own_blocks_everything() {
    let i = integration("");
    let l = lineage3();
    for foreign in [sa(12, "etl-legacy", None), sa(1, "rotator", None)] {
        let mut p = published3(&l, vec![]);
        p.service_account_id = foreign.id;
        let o = obs(&i, vec![l.old.clone(), foreign.clone(), l.orphan.clone()], Some(p));
        let d = forced(&i, &o, l.rot + Duration::days(40), true);
        assert!(
            matches!(d.blocked.as_deref(), Some(Blocked::ForeignCurrent { id, .. }) if *id == foreign.id),
            "{:?}",
            d.blocked
        );
        assert!(d.rotate.is_none() && d.delete_now.is_empty() && d.delete_later.is_empty());
    }
    // The account `adopt` names may be published (a hand-written migration).
    let mut p = published3(&l, vec![]);
    p.service_account_id = 5;
    let o = obs(&i, vec![sa(5, "legacy", None)], Some(p));
    assert_eq!(plan(&i, &o, l.rot).blocked, None);
}

#[test]
fn two_rotations_in_one_second_retire_the_predecessor_after_grace_never_as_an_orphan() {
    let i = integration("");
    let at = t("2026-11-28T04:00:00Z");
    let first = sa(9, "mpr-etl-20261128T040000Z-0001", Some(at + Duration::days(30)));
    let second = sa(10, "mpr-etl-20261128T040000Z-0002", Some(at + Duration::days(30)));
    // Both the same second; the second's hex happens to sort before or after the first's.
    for (a, b) in [(first.clone(), second.clone()), (second.clone(), first.clone())] {
        let mut p = payload(b.id, at, at + Duration::days(30), vec![]);
        p.previous_service_account_id = Some(a.id);
        let o = obs(&i, vec![a.clone(), b.clone()], Some(p));
        let d = plan(&i, &o, at + Duration::minutes(20));
        assert_eq!(ids(&d.delete_later), vec![(a.id, DeleteReason::Retiring, Rule::Grace)]);
        assert_eq!(d.delete_later[0].due, Some(at + Duration::hours(24)));
        assert!(d.delete_now.is_empty());
    }
}

#[test]
fn an_unexplained_lineage_account_is_deleted_only_when_idle() {
    let i = integration("");
    let l = lineage3();
    let created = t("2026-11-28T05:00:00Z"); // the orphan's lineage time
    let now = created + Duration::hours(3);
    let with_use = |used: Option<DateTime<Utc>>| {
        let mut a = l.orphan.clone();
        a.last_used = used;
        obs(&i, vec![l.cur.clone(), a], Some(published3(&l, vec![])))
    };
    // Used only by its own verification: an orphan, deleted after orphan_after.
    let d = plan(&i, &with_use(Some(created + Duration::seconds(20))), now);
    assert_eq!(ids(&d.delete_now), vec![(11, DeleteReason::Orphan, Rule::NeverUsed)]);
    assert_eq!(
        d.delete_now[0].last_used,
        Some(created + Duration::seconds(20)),
        "the evidence"
    );
    assert!(d.in_use.is_empty());
    // Used since (by a consumer of another rotator): kept and reported, until unused for grace.
    let used = created + Duration::hours(2);
    let d = plan(&i, &with_use(Some(used)), now);
    assert!(d.delete_now.iter().all(|x| x.id != 11));
    assert_eq!(ids(&d.delete_later), vec![(11, DeleteReason::Orphan, Rule::Unused)]);
    assert_eq!(d.delete_later[0].due, Some(used + Duration::hours(24)));
    assert_eq!(
        d.in_use,
        vec![InUse {
            id: 11,
            username: l.orphan.username.clone(),
            last_used: used,
            last_used_unknown: false,
            idle_at: used + Duration::hours(24)
        }]
    );
    let d = plan(&i, &with_use(Some(used)), used + Duration::hours(24));
    let now_ids: Vec<_> = ids(&d.delete_now).into_iter().filter(|x| x.0 == 11).collect();
    assert_eq!(now_ids, vec![(11, DeleteReason::Orphan, Rule::Unused)]);
    assert!(d.in_use.is_empty());
    // Young and already in use: reported, not deleted.
    let d = plan(
        &i,
        &with_use(Some(created + Duration::minutes(5))),
        created + Duration::minutes(6),
    );
    assert!(d.delete_now.is_empty());
    assert_eq!(d.in_use.len(), 1);
    // Expired: it authenticates nobody, so it goes, used or not.
    let mut expired = l.orphan.clone();
    expired.last_used = Some(now - Duration::minutes(1));
    expired.expires = Some(now - Duration::minutes(2));
    let o = obs(
        &i,
        vec![l.old.clone(), l.cur.clone(), expired],
        Some(published3(&l, vec![])),
    );
    let d = plan(&i, &o, now);
    assert_eq!(ids(&d.delete_now), vec![(11, DeleteReason::Orphan, Rule::Expired)]);
    assert!(d.in_use.is_empty());
    // An older lineage account the payload does not vouch for follows the same rule.
    let mut p = published3(&l, vec![]);
    p.previous_service_account_id = None;
    let o = obs(&i, vec![l.old.clone(), l.cur.clone()], Some(p));
    assert_eq!(
        ids(&plan(&i, &o, now).delete_now),
        vec![(9, DeleteReason::Orphan, Rule::NeverUsed)]
    );
}

#[test]
fn drain_aware_deletion_waits_for_idle_up_to_max_grace() {
    let i = integration("delete_when_idle = \"1h\"\nmax_grace = \"3d\"");
    let l = lineage3();
    let rot = l.rot;
    let mut old = l.old.clone();
    let o = |old: &ServiceAccount| obs(&i, vec![old.clone(), l.cur.clone()], Some(published3(&l, vec![])));
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
        matches!(d.blocked.as_deref(), Some(Blocked::AdoptNotFound { adopt_key, .. }) if adopt_key == "integrations[0].adopt"),
        "{:?}",
        d.blocked
    );
    assert_eq!(d.rotate, None);
    assert_eq!(d.next_rotation(), None);
    let mut no_adopt = integration("");
    no_adopt.adopt = None;
    let d = forced(&no_adopt, &obs(&no_adopt, vec![], None), now, false);
    assert!(
        matches!(d.blocked.as_deref(), Some(Blocked::NothingToCopy { .. })),
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
fn a_wiped_primary_bootstraps_from_the_newest_lineage_account_and_the_old_ones_follow_the_idle_rule() {
    let i = integration(""); // `adopt = 5`, which is gone
    let now = t("2026-11-28T04:00:00Z");
    let mut leftover = sa(20, "mpr-etl-20261101T000000Z-0009", None);
    let young = sa(21, "mpr-etl-20261128T035500Z-000a", None);
    let d = plan(&i, &obs(&i, vec![leftover.clone(), young.clone()], None), now);
    assert_eq!(d.blocked, None, "not blocked: there is a lineage to copy from");
    let rp = d.rotate.clone().expect("a bootstrap");
    assert_eq!(rp.reason, RotateReason::Bootstrap);
    assert_eq!(
        rp.memberships,
        MembershipSource::Newest {
            account: AccountRef::of(&young)
        }
    );
    assert_eq!(rp.replaces, None);
    assert_eq!(ids(&d.delete_now), vec![(20, DeleteReason::Orphan, Rule::NeverUsed)]);
    assert_eq!(ids(&d.delete_later), vec![(21, DeleteReason::Orphan, Rule::NeverUsed)]);
    // Still in use (a consumer holds the old credential): kept and reported.
    leftover.last_used = Some(now - Duration::hours(1));
    let d = plan(&i, &obs(&i, vec![leftover.clone()], None), now);
    assert!(d.delete_now.is_empty());
    assert_eq!(d.in_use.len(), 1);
    // No lineage and nothing to adopt: blocked, as before.
    let d = plan(&i, &obs(&i, vec![], None), now);
    assert!(matches!(d.blocked.as_deref(), Some(Blocked::AdoptNotFound { .. })));
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
        role: Role::Analyst.into(),
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
                role: Role::Consumer.into()
            }]
        }
    );
}

#[test]
fn the_next_payload_vouches_for_the_predecessor_and_carries_retiring_forward() {
    let i = integration("");
    let l = lineage3();
    let kept = RetiringAccount {
        id: 5,
        not_before: l.rot + Duration::hours(1),
    };
    let gone = RetiringAccount {
        id: 15,
        not_before: l.rot,
    };
    let p = published3(&l, vec![kept.clone(), gone]);
    let o = obs(&i, vec![l.old.clone(), l.cur.clone(), sa(5, "legacy", None)], Some(p));
    let at = l.rot + Duration::hours(2);
    let rp = forced(&i, &o, at, false).rotate.unwrap();
    let predecessor = RetiringAccount {
        id: 9,
        not_before: l.rot + Duration::hours(24),
    };
    assert_eq!(
        rp.carried,
        vec![predecessor.clone(), kept.clone()],
        "entries whose account is gone are dropped"
    );
    assert_eq!(
        rp.remember, None,
        "the replaced lineage account is the next payload's predecessor"
    );
    assert_eq!(rp.replaces.as_ref().map(|a| a.id), Some(10));
    assert_eq!(rp.retiring(at, &[]), vec![predecessor.clone(), kept.clone()]);
    // What this pass deleted is not carried.
    let deleted = Disposal {
        id: 5,
        username: "legacy".into(),
        reason: DeleteReason::Retiring,
        rule: Rule::NotBefore,
        due: Some(at),
        last_used: None,
    };
    assert_eq!(rp.retiring(at, &[deleted]), vec![predecessor]);
    // --revoke-old: everything is due at once.
    let rp = forced(&i, &o, at, true).rotate.unwrap();
    assert_eq!(
        rp.retiring(at, &[]),
        vec![
            RetiringAccount { id: 9, not_before: at },
            RetiringAccount { id: 5, not_before: at }
        ]
    );
}

#[test]
fn revoke_old_targets_the_replaced_account_and_what_the_payload_vouches_for_never_orphans() {
    let i = integration("");
    let l = lineage3();
    let legacy = sa(5, "legacy", None);
    let p = published3(
        &l,
        vec![RetiringAccount {
            id: 5,
            not_before: l.rot + Duration::hours(24),
        }],
    );
    let o = obs(
        &i,
        vec![l.old.clone(), l.cur.clone(), l.orphan.clone(), legacy],
        Some(p),
    );
    let now = l.rot + Duration::hours(2);
    let rp = forced(&i, &o, now, true).rotate.unwrap();
    assert_eq!(
        ids(&rp.revoke),
        vec![
            (5, DeleteReason::Revoked, Rule::RevokeOld),
            (9, DeleteReason::Revoked, Rule::RevokeOld),
            (10, DeleteReason::Revoked, Rule::RevokeOld)
        ]
    );
    assert!(rp.revoke.iter().all(|x| x.due == Some(now)));
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
        assert!(matches!(*b, Blocked::SharedPath(_)), "{b:?}");
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
    assert!(matches!(*b, Blocked::OwnAccountAdopted { .. }), "{b:?}");
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

#[test]
fn a_consumers_use_always_has_half_of_orphan_after_to_show() {
    // orphan_after = 1m: the account's own rotation owns its first 30 s.
    let i = integration("orphan_after = \"1m\"");
    assert_eq!(own_use_window(&i), Duration::seconds(30));
    assert_eq!(own_use_window(&integration("")), Duration::minutes(2));
    let born = t("2026-11-28T04:00:00Z");
    let mut other = sa(20, "mpr-etl-20261128T040000Z-0009", None);
    other.created = Some(born);
    // A consumer uses it every 10 s: at 60 s its last use was at 50 s.
    other.last_used = Some(born + Duration::seconds(50));
    let d = plan(&i, &obs(&i, vec![other.clone()], None), born + Duration::seconds(60));
    assert!(d.delete_now.is_empty(), "{:?}", d.delete_now);
    assert_eq!(d.in_use.len(), 1);
    // Used only by its own verification (within 30 s): deleted at 1 minute.
    other.last_used = Some(born + Duration::seconds(25));
    let d = plan(&i, &obs(&i, vec![other], None), born + Duration::seconds(60));
    assert_eq!(ids(&d.delete_now), vec![(20, DeleteReason::Orphan, Rule::NeverUsed)]);
}

/// An observation whose Mixpanel clock is `offset` from ours.
fn skewed(i: &Integration, accounts: Vec<ServiceAccount>, p: Option<Payload>, offset: Option<Duration>) -> Observation {
    let mut o = obs(i, accounts, p);
    o.mixpanel_clock = MixpanelClock {
        offset,
        spread: Duration::zero(),
    };
    o
}

#[test]
fn mixpanels_timestamps_are_read_in_our_time_and_a_clock_too_far_holds_idle_deletions() {
    let now = t("2026-11-28T04:10:00Z");
    let i = integration("");
    // Another rotator's account, created 10 minutes ago by our clock and
    // used 10 s ago; Mixpanel's own stamps are `offset` from ours.
    let unexplained = |offset: Duration| {
        let mut a = sa(20, "mpr-etl-20261128T040000Z-0009", None);
        a.created = Some(t("2026-11-28T04:00:00Z") + offset);
        a.last_used = Some(now - Duration::seconds(10) + offset);
        a
    };
    for minutes in [-10, 10] {
        let offset = Duration::minutes(minutes);
        // Known, and read through: in use, kept.
        let o = skewed(&i, vec![unexplained(offset)], None, Some(offset));
        let d = plan(&i, &o, now + Duration::minutes(20));
        assert!(d.delete_now.is_empty(), "offset {minutes}m: {:?}", d.delete_now);
        assert_eq!(
            d.clock_held.map(|c| c.held),
            Some(1),
            "offset {minutes}m: beyond 2 minutes, held"
        );
        assert_eq!(d.delete_later[0].due, None);
        assert_eq!(d.next_action(), None, "a held deletion does not wake the daemon");
        // Never used, 30 minutes old: still held while the clocks disagree.
        let mut never = unexplained(offset);
        never.last_used = None;
        let d = plan(
            &i,
            &skewed(&i, vec![never], None, Some(offset)),
            now + Duration::minutes(20),
        );
        assert!(d.delete_now.is_empty());
        // Unknown offset: held too.
        let d = plan(
            &i,
            &skewed(&i, vec![unexplained(offset)], None, None),
            now + Duration::hours(48),
        );
        assert!(d.delete_now.is_empty() && d.clock_held.is_some());
    }
    // 90 s apart (within the bound): judged in our time. Used 10 s ago by
    // Mixpanel's clock, so in use now; idle `grace` after that use.
    let offset = Duration::seconds(90);
    let o = skewed(&i, vec![unexplained(offset)], None, Some(offset));
    let d = plan(&i, &o, now);
    assert!(d.delete_now.is_empty() && d.clock_held.is_none());
    assert_eq!(d.in_use[0].last_used, now - Duration::seconds(10));
    assert_eq!(
        d.delete_later[0].due,
        Some(now - Duration::seconds(10) + Duration::hours(24))
    );
    // Had Mixpanel's stamps been read as ours, the use would have looked
    // 100 s older, and with Mixpanel behind, a fresh use would look old.
    let o = skewed(&i, vec![unexplained(-offset)], None, Some(-offset));
    assert_eq!(plan(&i, &o, now).in_use[0].last_used, now - Duration::seconds(10));
}

#[test]
fn a_retiring_account_under_delete_when_idle_waits_for_max_grace_while_the_clocks_disagree() {
    let i = integration("delete_when_idle = \"1h\"\nmax_grace = \"3d\"");
    let l = lineage3();
    let mut old = l.old.clone();
    // Used 6 s ago by Mixpanel's clock, which is 10 minutes behind ours.
    let now = l.rot + Duration::hours(25);
    old.last_used = Some(now - Duration::minutes(10) - Duration::seconds(6));
    let o = skewed(
        &i,
        vec![old, l.cur.clone()],
        Some(published3(&l, vec![])),
        Some(Duration::minutes(-10)),
    );
    let d = plan(&i, &o, now);
    assert!(d.delete_now.is_empty());
    assert_eq!(ids(&d.delete_later), vec![(9, DeleteReason::Retiring, Rule::MaxGrace)]);
    assert_eq!(d.delete_later[0].due, Some(l.rot + Duration::days(3)));
}

#[test]
fn the_lineage_timestamp_and_mixpanels_created_each_count_in_the_direction_that_keeps() {
    let i = integration("orphan_after = \"15m\"");
    let now = t("2026-11-28T04:10:00Z");
    // The creating host's clock ran 10 minutes ahead: its lineage time says
    // 04:10, Mixpanel's `created` says 04:00; a consumer used it at 04:05.
    let mut a = sa(20, "mpr-etl-20261128T041000Z-0009", None);
    a.created = Some(t("2026-11-28T04:00:00Z"));
    a.last_used = Some(t("2026-11-28T04:05:00Z"));
    let d = plan(&i, &obs(&i, vec![a.clone()], None), now);
    assert_eq!(
        d.in_use.len(),
        1,
        "the use at 04:05 is after the earlier birth's window"
    );
    // Never used: `orphan_after` counts from the later birth (04:10).
    a.last_used = None;
    let d = plan(&i, &obs(&i, vec![a], None), t("2026-11-28T04:20:00Z"));
    assert!(d.delete_now.is_empty());
    assert_eq!(d.delete_later[0].due, Some(t("2026-11-28T04:25:00Z")));
}
