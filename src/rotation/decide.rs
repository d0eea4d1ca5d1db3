//! Decide: from an [`Observation`] and the time, what is due. Pure: no I/O,
//! so every rule is unit-tested with fixed times.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::observe::Observation;
use crate::mixpanel::types::ServiceAccount;
use crate::policy::{Integration, ProjectsSpec, format_duration};

/// Why a rotation happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RotateReason {
    /// Asked for (`rotate-now`).
    Forced,
    /// Nothing is published yet.
    Bootstrap,
    /// The published account no longer exists in Mixpanel.
    CurrentMissing,
    /// The published account has expired.
    Expired { expires: DateTime<Utc> },
    /// The published account expires within `renew_before`.
    ExpiresSoon { expires: DateTime<Utc> },
    /// A `schedule` slot (plus its jitter) has passed since the last rotation.
    Scheduled { slot: DateTime<Utc> },
}

impl fmt::Display for RotateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotateReason::Forced => write!(f, "rotation requested"),
            RotateReason::Bootstrap => write!(f, "nothing published yet"),
            RotateReason::CurrentMissing => write!(f, "the published account no longer exists in Mixpanel"),
            RotateReason::Expired { expires } => {
                write!(f, "the published account expired at {}", super::rfc3339(*expires))
            }
            RotateReason::ExpiresSoon { expires } => write!(
                f,
                "the published account expires at {}, within renew_before",
                super::rfc3339(*expires)
            ),
            RotateReason::Scheduled { slot } => write!(f, "schedule slot {} passed", super::rfc3339(*slot)),
        }
    }
}

/// Why an account is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteReason {
    /// Superseded, and its grace period has passed.
    Retiring,
    /// A lineage account that was never published (a rotation died) and is older than `orphan_after`.
    Orphan,
    /// Superseded and revoked at once (`--revoke-old`).
    Revoked,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeleteReason::Retiring => "retiring",
            DeleteReason::Orphan => "orphan",
            DeleteReason::Revoked => "revoked",
        })
    }
}

/// An account this integration owns that is not current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disposal {
    pub id: u64,
    pub username: String,
    pub reason: DeleteReason,
    /// When it may be deleted.
    pub due: DateTime<Utc>,
}

/// What a pass should do for one integration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decision {
    /// Accounts to delete now.
    pub delete_now: Vec<Disposal>,
    /// Accounts that will be deleted later.
    pub delete_later: Vec<Disposal>,
    /// Rotate now, and why.
    pub rotate: Option<RotateReason>,
    /// When the next rotation is due (expiry or schedule), if nothing is due now.
    pub next_rotation: Option<DateTime<Utc>>,
    /// A rotation is needed but impossible as configured (the message says what to do).
    pub blocked: Option<String>,
}

/// Decides what to do. `forced`: `rotate-now` was asked for.
pub fn decide(i: &Integration, obs: &Observation, now: DateTime<Utc>, forced: bool) -> Decision {
    let mut d = Decision::default();
    let current_id = obs.published.as_ref().map(|p| p.payload.service_account_id);

    // Accounts to dispose of. Only the lineage and the payload's `retiring`
    // entries are candidates, and the published account never is.
    let mut disposals: Vec<Disposal> = Vec::new();
    if let Some(p) = &obs.published {
        let cur_ts = obs
            .lineage
            .iter()
            .find(|(a, _)| Some(a.id) == current_id)
            .map(|(_, t)| *t)
            .unwrap_or(p.payload.created);
        for (a, ts) in &obs.lineage {
            if Some(a.id) == current_id {
                continue;
            }
            if *ts < cur_ts {
                disposals.push(disposal(
                    a,
                    DeleteReason::Retiring,
                    drained(i, a, p.payload.rotated_at + i.grace),
                ));
            } else {
                disposals.push(disposal(a, DeleteReason::Orphan, *ts + i.orphan_after));
            }
        }
        for r in &p.payload.retiring {
            if Some(r.id) == current_id || disposals.iter().any(|x| x.id == r.id) {
                continue;
            }
            if let Some(a) = obs.all.iter().find(|a| a.id == r.id) {
                disposals.push(disposal(a, DeleteReason::Retiring, drained(i, a, r.not_before)));
            }
        }
    } else {
        for (a, ts) in &obs.lineage {
            disposals.push(disposal(a, DeleteReason::Orphan, *ts + i.orphan_after));
        }
    }
    for x in disposals {
        if x.due <= now {
            d.delete_now.push(x)
        } else {
            d.delete_later.push(x)
        }
    }

    // Rotation.
    match &obs.published {
        None => {
            let explicit = matches!(i.projects, ProjectsSpec::Explicit(_));
            match (&i.adopt, &obs.adopted) {
                (Some(_), Some(_)) => d.rotate = Some(RotateReason::Bootstrap),
                (Some(a), None) if !explicit => {
                    d.blocked = Some(format!(
                        "nothing is published yet and `{}` = {a} matches no account in organization: fix `adopt`, or list the memberships in `{}`",
                        i.key("adopt"),
                        i.key("projects")
                    ))
                }
                (None, _) if !explicit => {
                    d.blocked = Some(format!(
                        "nothing is published yet and `{}` is \"copy\", so there is nothing to copy from: set `{}` to the account in use today, or list the memberships in `{}`",
                        i.key("projects"),
                        i.key("adopt"),
                        i.key("projects")
                    ))
                }
                _ => d.rotate = Some(RotateReason::Bootstrap),
            }
        }
        Some(p) => {
            let expires = match (obs.current.as_ref().and_then(|c| c.expires), p.payload.expires) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let renew_at = expires.map(|e| e - i.renew_before);
            let slot = i
                .schedule
                .as_ref()
                .and_then(|s| s.next_after(p.payload.rotated_at))
                .map(|slot| (slot, slot + i.jitter_for(slot)));
            d.rotate = if forced {
                Some(RotateReason::Forced)
            } else if obs.current.is_none() {
                Some(RotateReason::CurrentMissing)
            } else if let Some(e) = expires.filter(|e| *e <= now) {
                Some(RotateReason::Expired { expires: e })
            } else if let Some(e) = expires.filter(|_| renew_at.is_some_and(|r| r <= now)) {
                Some(RotateReason::ExpiresSoon { expires: e })
            } else if let Some((slot, _)) = slot.filter(|(_, at)| *at <= now) {
                Some(RotateReason::Scheduled { slot })
            } else {
                None
            };
            if d.rotate.is_none() {
                d.next_rotation = [renew_at, slot.map(|(_, at)| at)].into_iter().flatten().min();
            }
        }
    }
    if forced && d.rotate.is_none() && d.blocked.is_none() {
        d.rotate = Some(RotateReason::Forced);
    }
    if obs.published.is_none() && !d.delete_now.is_empty() {
        // Nothing published, yet lineage accounts exist: a rotation died before
        // its first publish, or the sink was emptied while consumers still hold
        // one of these credentials. The two cannot be told apart, so be gentle:
        // when bootstrapping, they become older than the new current account and
        // so retire after `grace`; when blocked, nothing is touched until a
        // person fixes the policy.
        let until = if d.rotate.is_some() {
            now + i.grace
        } else {
            DateTime::<Utc>::MAX_UTC
        };
        for mut x in std::mem::take(&mut d.delete_now) {
            x.due = x.due.max(until);
            d.delete_later.push(x);
        }
    }
    d
}

/// Drain-aware deletion: with `delete_when_idle`, a retiring account whose
/// grace ended at `grace_end` goes only once its `last_used` has not advanced
/// for that long, and at the latest `max_grace` after its successor was
/// published.
fn drained(i: &Integration, a: &ServiceAccount, grace_end: DateTime<Utc>) -> DateTime<Utc> {
    let Some(idle) = i.delete_when_idle else {
        return grace_end;
    };
    let cap = grace_end + (i.max_grace - i.grace);
    let idle_since = a.last_used.map(|t| t + idle).unwrap_or(grace_end);
    grace_end.max(idle_since).min(cap)
}

fn disposal(a: &ServiceAccount, reason: DeleteReason, due: DateTime<Utc>) -> Disposal {
    Disposal {
        id: a.id,
        username: a.username.clone(),
        reason,
        due,
    }
}

/// "in 3d4h" / "2h ago", for people.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = t - now;
    let rounded = chrono::Duration::seconds(if d.num_seconds().abs() > 3600 {
        d.num_minutes() * 60
    } else {
        d.num_seconds()
    });
    if d >= chrono::Duration::zero() {
        format!("in {}", format_duration(rounded))
    } else {
        format!("{} ago", format_duration(-rounded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::lineage::Lineage;
    use crate::secret::Secret;
    use crate::sink::{Payload, RetiringAccount, Version};
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

    #[test]
    fn quiet_when_fresh_and_next_rotation_is_expiry_minus_renew_before() {
        let i = integration("");
        let rot = t("2026-11-01T00:00:00Z");
        let exp = rot + Duration::days(30);
        let cur = sa(10, "mpr-etl-20261101T000000Z-aaaa", Some(exp));
        let o = obs(&i, vec![cur], Some(payload(10, rot, exp, vec![])));
        let d = decide(&i, &o, t("2026-11-10T00:00:00Z"), false);
        assert_eq!(d.rotate, None);
        assert!(d.delete_now.is_empty() && d.delete_later.is_empty());
        assert_eq!(d.next_rotation, Some(exp - Duration::days(10)));
        // renew_before defaults to a third of ttl: 10 days before expiry it rotates.
        let d = decide(&i, &o, exp - Duration::days(10), false);
        assert_eq!(d.rotate, Some(RotateReason::ExpiresSoon { expires: exp }));
        let d = decide(&i, &o, exp, false);
        assert_eq!(d.rotate, Some(RotateReason::Expired { expires: exp }));
    }

    #[test]
    fn retiring_after_grace_orphans_after_orphan_after_never_current_or_foreign() {
        let i = integration("");
        let rot = t("2026-11-28T04:00:00Z");
        let exp = rot + Duration::days(30);
        let old = sa(9, "mpr-etl-20261028T040000Z-0001", Some(rot));
        let cur = sa(10, "mpr-etl-20261128T040000Z-0002", Some(exp));
        let orphan = sa(11, "mpr-etl-20261128T050000Z-0003", Some(exp));
        let foreign = sa(12, "etl-legacy", None);
        let other_ns = sa(13, "other-etl-20261028T040000Z-0004", None);
        let adopted_before = sa(14, "legacy", None);
        let p = payload(
            10,
            rot,
            exp,
            vec![RetiringAccount {
                id: 14,
                not_before: rot + Duration::hours(1),
            }],
        );
        let o = obs(&i, vec![old, cur, orphan, foreign, other_ns, adopted_before], Some(p));

        let d = decide(&i, &o, rot + Duration::minutes(30), false);
        assert!(d.delete_now.is_empty());
        assert_eq!(d.delete_later.len(), 3);

        let d = decide(&i, &o, t("2026-11-28T05:20:00Z"), false);
        let now_ids: Vec<u64> = d.delete_now.iter().map(|x| x.id).collect();
        // The adopted account's own not_before (1h) and the orphan's 15 minutes have passed; the
        // lineage predecessor waits for the 24h grace.
        assert_eq!(now_ids, vec![11, 14]);
        let d = decide(&i, &o, rot + Duration::hours(25), false);
        let mut ids: Vec<(u64, DeleteReason)> = d.delete_now.iter().map(|x| (x.id, x.reason)).collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![
                (9, DeleteReason::Retiring),
                (11, DeleteReason::Orphan),
                (14, DeleteReason::Retiring)
            ]
        );
        assert!(d.delete_later.is_empty());
    }

    #[test]
    fn bootstrap_needs_adopt_or_explicit_projects() {
        let i = integration("");
        let now = t("2026-11-28T04:00:00Z");
        let d = decide(&i, &obs(&i, vec![sa(5, "etl-legacy", None)], None), now, false);
        assert_eq!(d.rotate, Some(RotateReason::Bootstrap));
        let d = decide(&i, &obs(&i, vec![], None), now, false);
        assert!(
            d.blocked.as_deref().unwrap().contains("`integrations[0].adopt`"),
            "{:?}",
            d.blocked
        );
        assert_eq!(d.rotate, None);
        let mut no_adopt = integration("");
        no_adopt.adopt = None;
        let d = decide(&no_adopt, &obs(&no_adopt, vec![], None), now, true);
        assert!(
            d.blocked
                .as_deref()
                .unwrap()
                .contains("`integrations[0].projects` is \"copy\"")
        );
        assert_eq!(d.rotate, None, "forcing does not bypass a blocked bootstrap");
        let explicit = integration("projects = [{ id = 101, role = \"analyst\" }]");
        let d = decide(&explicit, &obs(&explicit, vec![], None), now, false);
        assert_eq!(d.rotate, Some(RotateReason::Bootstrap));
    }

    #[test]
    fn nothing_published_lineage_accounts_get_grace_not_orphan_treatment() {
        let i = integration("");
        let now = t("2026-11-28T04:00:00Z");
        let leftover = sa(20, "mpr-etl-20261101T000000Z-0009", None);
        let legacy = sa(5, "etl-legacy", None);
        let d = decide(&i, &obs(&i, vec![leftover.clone(), legacy], None), now, false);
        assert_eq!(d.rotate, Some(RotateReason::Bootstrap));
        assert!(d.delete_now.is_empty());
        assert_eq!(d.delete_later[0].due, now + Duration::hours(24));
        // Blocked (nothing to adopt): nothing is deleted at all.
        let d = decide(&i, &obs(&i, vec![leftover], None), now, false);
        assert!(d.blocked.is_some());
        assert!(d.delete_now.is_empty());
    }

    #[test]
    fn missing_current_and_schedule() {
        let i = integration("schedule = \"0 4 * * MON\"\njitter = \"15m\"");
        let rot = t("2026-11-28T04:00:00Z"); // a Saturday
        let exp = rot + Duration::days(30);
        let p = payload(10, rot, exp, vec![]);
        let cur = sa(10, "mpr-etl-20261128T040000Z-0002", Some(exp));
        let d = decide(&i, &obs(&i, vec![], Some(p.clone())), rot, false);
        assert_eq!(d.rotate, Some(RotateReason::CurrentMissing));
        let o = obs(&i, vec![cur], Some(p));
        let slot = t("2026-11-30T04:00:00Z");
        let at = slot + i.jitter_for(slot);
        let d = decide(&i, &o, rot + Duration::hours(1), false);
        assert_eq!(d.next_rotation, Some(at));
        let d = decide(&i, &o, at, false);
        assert_eq!(d.rotate, Some(RotateReason::Scheduled { slot }));
        // Slots missed for weeks still give one rotation (for the first missed slot).
        let d = decide(&i, &o, t("2026-12-15T00:00:00Z"), false);
        assert_eq!(d.rotate, Some(RotateReason::Scheduled { slot }));
        let d = decide(&i, &o, rot + Duration::hours(1), true);
        assert_eq!(d.rotate, Some(RotateReason::Forced));
    }

    #[test]
    fn lineage_helper_matches_usernames_used_here() {
        assert!(
            Lineage::new("mpr", "etl")
                .parse("mpr-etl-20261128T040000Z-0002")
                .is_some()
        );
    }
}
