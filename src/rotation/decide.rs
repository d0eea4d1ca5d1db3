//! Decide: from an [`Observation`], the time and what was asked, the whole
//! [`Plan`] of a pass for one integration. Every rule of the rotator lives
//! here (which accounts may be deleted and when, whether to rotate and why,
//! what the next payload remembers, what `--revoke-old` deletes, when the
//! next action is due, and when nothing may be done at all), so `plan`,
//! `status`, `validate --online`, the daemon's scheduler, the metrics and
//! the rotation itself read one answer. Pure: no I/O, so every rule is
//! unit-tested with fixed times.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Serialize, Serializer};

pub(crate) use super::observe::MixpanelClock;
use super::observe::{Observation, Published};
use crate::clock::{after, before, span_between};
use crate::mixpanel::types::{ProjectGrant, Role, ServiceAccount};
use crate::policy::{Integration, Policy, ProjectsSpec};
use crate::sink::RetiringAccount;
use crate::text::{format_duration, rfc3339};

/// Who the rotator is: what every decision needs besides the integration.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The lineage prefix (`namespace`).
    pub(crate) namespace: String,
    /// Every namespace whose lineage is this rotator's: `namespace`, then
    /// `previous_namespaces` (made once per policy, not per integration).
    pub(crate) namespaces: Vec<String>,
    /// The organization whose accounts are managed.
    pub(crate) organization_id: u64,
    /// The rotator's own username: never adopted, never deleted.
    pub(crate) rotator: String,
}

impl Scope {
    /// The scope of a policy.
    pub fn of(policy: &Policy) -> Self {
        Self {
            namespace: policy.namespace.clone(),
            namespaces: policy.lineage_namespaces(),
            organization_id: policy.mixpanel.organization_id,
            rotator: policy.mixpanel.username.clone(),
        }
    }
}

/// What was asked beyond the routine (`rotate-now [--revoke-old]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// Rotate whatever the state.
    pub(crate) force: bool,
    /// With `force`: delete the superseded accounts as soon as the new one is published.
    pub(crate) revoke_old: bool,
}

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
    Expired {
        /// When it expired.
        expires: DateTime<Utc>,
    },
    /// The published account expires within `renew_before`.
    ExpiresSoon {
        /// When it expires.
        expires: DateTime<Utc>,
    },
    /// A `schedule` slot (plus its jitter) has passed since the last rotation.
    Scheduled {
        /// The slot that passed.
        slot: DateTime<Utc>,
    },
}

impl fmt::Display for RotateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotateReason::Forced => write!(f, "rotation requested"),
            RotateReason::Bootstrap => write!(f, "nothing published yet"),
            RotateReason::CurrentMissing => write!(f, "the published account no longer exists in Mixpanel"),
            RotateReason::Expired { expires } => {
                write!(f, "the published account expired at {}", rfc3339(*expires))
            }
            RotateReason::ExpiresSoon { expires } => write!(
                f,
                "the published account expires at {}, within renew_before",
                rfc3339(*expires)
            ),
            RotateReason::Scheduled { slot } => write!(f, "schedule slot {} passed", rfc3339(*slot)),
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
    /// The integration is decommissioned (`retire --yes`).
    Retired,
}

impl DeleteReason {
    /// The name used in output, metrics and the audit trail.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Retiring => "retiring",
            DeleteReason::Orphan => "orphan",
            DeleteReason::Revoked => "revoked",
            DeleteReason::Retired => "retired",
        }
    }
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule that allows a deletion, and sets its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The payload's recorded predecessor (`previous_service_account_id`): `grace` after that publish.
    Grace,
    /// An entry of the payload's `retiring` list: its own `not_before`.
    NotBefore,
    /// Drain-aware: its grace has passed and its `last_used` has not moved for `delete_when_idle`.
    Idle,
    /// Drain-aware: `max_grace` after its successor was published, in use or not.
    MaxGrace,
    /// A lineage account neither published nor vouched for by the payload, never used after its
    /// own rotation's verification (Mixpanel's `last_used`): `orphan_after` after its creation.
    NeverUsed,
    /// A lineage account neither published nor vouched for, used after its verification but not
    /// for `grace` since (Mixpanel's `last_used`).
    Unused,
    /// A lineage account neither published nor vouched for, and expired: it authenticates nobody.
    Expired,
    /// `--revoke-old`: as soon as the new account is published.
    RevokeOld,
    /// A rotation failed before its publish: its own new account, at once.
    FailedRotation,
    /// `retire --yes`: every account of the integration, at once.
    Retire,
}

impl Rule {
    /// Whether a deletion by this rule is judged by Mixpanel's `last_used`
    /// (or its other timestamps) against our clock.
    pub(crate) fn rests_on_last_used(self) -> bool {
        matches!(self, Rule::Idle | Rule::NeverUsed | Rule::Unused | Rule::Expired)
    }
}

/// How long after its creation an account's use is put down to its own
/// rotation (create, read back, verify with retries), not to a consumer:
/// two minutes, or half of `orphan_after` if shorter, so that a consumer's
/// use always has at least half of `orphan_after` to show before a
/// never-used account may be deleted.
pub(crate) fn own_use_window(i: &Integration) -> Duration {
    i.orphan_after
        .checked_div(2)
        .unwrap_or_default()
        .min(Duration::minutes(2))
}

/// An account this integration owns that is not current, and when it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disposal {
    /// The account's id.
    pub id: u64,
    pub(crate) username: String,
    /// Why it goes.
    pub reason: DeleteReason,
    /// The rule that sets when.
    pub rule: Rule,
    /// When it may be deleted; `None`: not while the integration is blocked.
    pub due: Option<DateTime<Utc>>,
    /// The evidence of use: Mixpanel's `last_used` of the account, as observed.
    pub(crate) last_used: Option<DateTime<Utc>>,
}

impl Disposal {
    /// A deletion of `a` for `reason` by `rule`, due at `due`.
    pub(crate) fn of(a: &ServiceAccount, reason: DeleteReason, rule: Rule, due: DateTime<Utc>) -> Self {
        Self {
            id: a.id,
            username: a.username.clone(),
            reason,
            rule,
            due: Some(due),
            last_used: a.last_used,
        }
    }

    fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.due.is_some_and(|d| d <= now)
    }
}

/// Why nothing may be done for an integration until a person acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "blocked", rename_all = "snake_case")]
pub enum Blocked {
    /// The sink path holds another integration's or organization's payload.
    #[error("{0}")]
    SharedPath(Box<SharedPath>),
    /// The published account is neither of this integration's lineage nor `adopt`.
    #[error(
        "sink `{sink}` path `{path}` publishes account {id} ({username}), which is neither of this integration's lineage nor the account `{adopt_key}` names: the rotator never copies from, replaces or deletes an account it does not own. Restore the payload, or set `{adopt_key}` to that account if it is this integration's{hint}. Nothing is rotated or deleted"
    )]
    ForeignCurrent {
        /// The sink's name.
        sink: String,
        /// The path in it.
        path: String,
        /// The account published there.
        id: u64,
        /// Its username.
        username: String,
        /// The key of this integration's `adopt`.
        adopt_key: String,
        /// What else may explain it (a changed `namespace`), or nothing.
        hint: Hint,
    },
    /// Two integrations adopt the same account.
    #[error(
        "`{adopt_key}` and `{other_key}` name the same account ({id}): each account belongs to one integration; adopt it in one of them only. Nothing is rotated or deleted"
    )]
    AdoptShared {
        /// The key of this integration's `adopt`.
        adopt_key: String,
        /// The other integration's `adopt` key.
        other_key: String,
        /// The account both name.
        id: u64,
    },
    /// `adopt` names an account another integration publishes, vouches for
    /// or has in its lineage.
    #[error(
        "`{adopt_key}` names account {id} ({username}), and {claim}: each account belongs to one integration, and this one must never delete it. Remove `{adopt_key}` (or point it at the account this integration really uses). Nothing is rotated or deleted"
    )]
    AdoptClaimed {
        /// The key of this integration's `adopt`.
        adopt_key: String,
        /// The account it names.
        id: u64,
        /// Its username.
        username: String,
        /// Whose it is, and how.
        claim: super::claims::Claim,
    },
    /// `adopt` names the rotator's own account.
    #[error(
        "`{adopt_key}` names the rotator's own account ({username}): adopting it would delete the rotator's credential after `grace`; adopt the account the integration uses"
    )]
    OwnAccountAdopted {
        /// The key of this integration's `adopt`.
        adopt_key: String,
        /// The rotator's username.
        username: String,
    },
    /// Nothing is published and `adopt` matches no account.
    #[error(
        "nothing is published yet and `{adopt_key}` = {adopt} matches no account of the organization: fix `adopt`, or list the memberships in `{projects_key}`"
    )]
    AdoptNotFound {
        /// The key of this integration's `adopt`.
        adopt_key: String,
        /// What `adopt` says.
        adopt: String,
        /// The key of this integration's `projects`.
        projects_key: String,
    },
    /// Nothing is published, `projects = "copy"`, and there is no `adopt`.
    #[error(
        "nothing is published yet and `{projects_key}` is \"copy\", so there is nothing to copy from: set `{adopt_key}` to the account in use today, or list the memberships in `{projects_key}`"
    )]
    NothingToCopy {
        /// The key of this integration's `adopt`.
        adopt_key: String,
        /// The key of this integration's `projects`.
        projects_key: String,
    },
}

impl Blocked {
    /// What blocks, as a stable snake_case word (the last part of an
    /// error's code in `-o json`: `copy_memberships.blocked.adopt_not_found`).
    pub fn code(&self) -> &'static str {
        match self {
            Blocked::SharedPath(_) => "shared_path",
            Blocked::ForeignCurrent { .. } => "foreign_current",
            Blocked::AdoptShared { .. } => "adopt_shared",
            Blocked::AdoptClaimed { .. } => "adopt_claimed",
            Blocked::OwnAccountAdopted { .. } => "own_account_adopted",
            Blocked::AdoptNotFound { .. } => "adopt_not_found",
            Blocked::NothingToCopy { .. } => "nothing_to_copy",
        }
    }

    /// Every word [`Blocked::code`] may answer.
    pub const CODES: [&'static str; 7] = [
        "shared_path",
        "foreign_current",
        "adopt_shared",
        "adopt_claimed",
        "own_account_adopted",
        "adopt_not_found",
        "nothing_to_copy",
    ];
}

/// An optional addition to a message, boxed (errors stay small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Hint(pub Option<Box<String>>);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_deref().map_or("", String::as_str))
    }
}

/// A sink path that holds a payload of another integration or organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error(
    "sink `{sink}` path `{path}` holds the credential of integration `{found_integration}` in organization {found_organization}, not `{integration}` in {organization}: two integrations or policies share this path; give `{integration}` a path of its own (`{path_key}`). Nothing is rotated or deleted"
)]
pub struct SharedPath {
    pub(crate) sink: String,
    pub(crate) path: String,
    pub(crate) path_key: String,
    pub(crate) integration: String,
    pub(crate) organization: u64,
    /// The integration named in the payload found there.
    pub found_integration: String,
    pub(crate) found_organization: u64,
}

/// An account by id and username.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountRef {
    pub(crate) id: u64,
    pub(crate) username: String,
}

impl AccountRef {
    fn of(a: &ServiceAccount) -> Self {
        Self {
            id: a.id,
            username: a.username.clone(),
        }
    }
}

/// Where the new account's project memberships come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum MembershipSource {
    /// The policy's explicit `projects` list.
    Explicit {
        /// The memberships.
        grants: Vec<ProjectGrant>,
    },
    /// The individual grants of this account (the published or adopted one).
    CopyFrom {
        /// The account copied from.
        account: AccountRef,
    },
    /// The published account is gone: the memberships recorded at the last rotation.
    Recorded {
        /// The published account that no longer exists.
        gone: u64,
        /// The memberships its payload recorded.
        grants: Vec<ProjectGrant>,
    },
    /// Nothing is published and `adopt` is gone or unset (a wiped primary):
    /// the individual grants of the newest account of the lineage.
    Newest {
        /// The account copied from.
        account: AccountRef,
    },
}

fn duration_text<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// The rotation a pass makes, and everything it must know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationPlan {
    pub(crate) reason: RotateReason,
    /// The new account's memberships.
    pub(crate) memberships: MembershipSource,
    /// The account the new one replaces (the published or adopted one).
    pub(crate) replaces: Option<AccountRef>,
    /// The new account's username, `{namespace}-{integration}-<timestamp>-<hex>`.
    pub(crate) username_pattern: String,
    pub(crate) role: Role,
    #[serde(serialize_with = "duration_text")]
    pub(crate) ttl: Duration,
    #[serde(serialize_with = "duration_text")]
    pub(crate) grace: Duration,
    /// Entries of the payload's `retiring` list carried into the next payload.
    pub(crate) carried: Vec<RetiringAccount>,
    /// The replaced account, when it is not a lineage account (an adopted
    /// one): the next payload remembers it, or it would never be deleted.
    pub(crate) remember: Option<u64>,
    /// `--revoke-old` was asked: the next payload's entries are due at once.
    pub(crate) revoke_old: bool,
    /// `--revoke-old`: delete these as soon as the new account is published.
    pub(crate) revoke: Vec<Disposal>,
}

impl RotationPlan {
    /// The next payload's `retiring` list for a publish at `at`, leaving out
    /// what this pass has deleted already.
    pub(crate) fn retiring(&self, at: DateTime<Utc>, deleted: &[Disposal]) -> Vec<RetiringAccount> {
        let revoking = self.revoke_old;
        let mut out: Vec<RetiringAccount> = self
            .carried
            .iter()
            .filter(|r| !deleted.iter().any(|d| d.id == r.id))
            .map(|r| RetiringAccount {
                id: r.id,
                not_before: if revoking { at } else { r.not_before },
            })
            .collect();
        if let Some(id) = self.remember {
            let not_before = if revoking { at } else { after(at, self.grace) };
            out.push(RetiringAccount { id, not_before });
        }
        out
    }
}

/// The next schedule slot after the last rotation, and when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Slot {
    pub(crate) slot: DateTime<Utc>,
    /// The slot plus its jitter.
    pub(crate) fires_at: DateTime<Utc>,
}

/// When the published credential is next due for rotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Deadlines {
    /// The published account's expiry (the earlier of Mixpanel's and the payload's).
    pub(crate) expires: Option<DateTime<Utc>>,
    /// `expires` minus `renew_before`.
    pub(crate) renew_at: Option<DateTime<Utc>>,
    /// The next schedule slot after the last rotation.
    pub(crate) slot: Option<Slot>,
}

impl Deadlines {
    /// The deadlines of a credential that expires at `expires` and was
    /// rotated at `rotated_at`: the rule for "when is the next rotation".
    pub(crate) fn of(i: &Integration, expires: Option<DateTime<Utc>>, rotated_at: DateTime<Utc>) -> Self {
        let slot = i
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(rotated_at))
            .map(|slot| Slot {
                slot,
                fires_at: after(slot, i.jitter_for(slot)),
            });
        Self {
            expires,
            renew_at: expires.map(|e| before(e, i.renew_before)),
            slot,
        }
    }

    /// The earliest of `renew_at` and the slot's firing time.
    pub(crate) fn next_rotation(&self) -> Option<DateTime<Utc>> {
        [self.renew_at, self.slot.map(|s| s.fires_at)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the credential is within `renew_before` of its expiry at `now`.
    pub(crate) fn in_renewal(&self, now: DateTime<Utc>) -> bool {
        self.renew_at.is_some_and(|r| r <= now)
    }
}

/// What a pass does for one integration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Accounts to delete now.
    pub delete_now: Vec<Disposal>,
    /// Accounts to delete later.
    pub delete_later: Vec<Disposal>,
    /// The rotation to make now, if any.
    pub rotate: Option<Box<RotationPlan>>,
    /// When the published credential is due (empty when nothing is published).
    pub(crate) deadlines: Deadlines,
    /// Nothing may be done until a person acts (the message says what to do).
    pub(crate) blocked: Option<Box<Blocked>>,
    /// Lineage accounts neither published here nor vouched for, yet in use: kept, and reported.
    pub in_use: Vec<InUse>,
    /// Accounts the payload names that the rotator does not own: reported, never acted on.
    pub(crate) ignored: Vec<Ignored>,
    /// Deletions that rest on Mixpanel's `last_used` wait: its clock's
    /// offset from ours is unknown or larger than [`MAX_CLOCK_OFFSET`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) clock_held: Option<ClockHeld>,
}

/// Why deletions judged by `last_used` wait in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ClockHeld {
    #[serde(skip)]
    pub(crate) clock: MixpanelClock,
    /// Mixpanel's clock minus ours, in seconds (`None`: unknown).
    pub(crate) offset_seconds: Option<i64>,
    /// How many deletions wait for it.
    pub(crate) held: usize,
}

/// A lineage account in use that this integration's sink neither publishes
/// nor vouches for: most likely another rotator with the same namespace and
/// integration publishes it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InUse {
    /// The account's id.
    pub id: u64,
    pub(crate) username: String,
    /// Mixpanel's `last_used` (the time of the pass when Mixpanel sent one
    /// that could not be read: taken as in use).
    pub last_used: DateTime<Utc>,
    /// Whether Mixpanel's `last_used` could not be read.
    pub(crate) last_used_unknown: bool,
    /// When it is deleted if nobody uses it again (`last_used` + `grace`).
    pub(crate) idle_at: DateTime<Utc>,
}

/// Why an account named by the payload is not the rotator's to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NotOwned {
    /// It is the rotator's own account.
    Rotator,
    /// It is neither of this integration's lineage nor the account `adopt` names.
    Foreign,
}

/// An account named by the payload (in `field`) that is not the rotator's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Ignored {
    pub(crate) id: u64,
    pub(crate) username: String,
    /// `previous_service_account_id` or `retiring`.
    pub(crate) field: &'static str,
    pub(crate) why: NotOwned,
}

impl Plan {
    /// When the next rotation is due, if none is due now.
    pub(crate) fn next_rotation(&self) -> Option<DateTime<Utc>> {
        if self.rotate.is_some() || self.blocked.is_some() {
            return None;
        }
        self.deadlines.next_rotation()
    }

    /// When something is next due: a rotation or a deletion.
    pub(crate) fn next_action(&self) -> Option<DateTime<Utc>> {
        self.delete_later
            .iter()
            .filter_map(|d| d.due)
            .chain(self.next_rotation())
            .min()
    }

    /// The accounts waiting for deletion (now or later) for `reason`.
    pub(crate) fn pending(&self, reason: DeleteReason) -> usize {
        self.delete_now
            .iter()
            .chain(&self.delete_later)
            .filter(|d| d.reason == reason)
            .count()
    }
}

/// The unexplained lineage accounts `plan` would delete that another
/// rotator (a second policy with the same `namespace`) may publish: younger
/// than `orphan_after` + `grace`, or used after their own verification.
/// The idle rule keeps those in use; one whose consumer has not used it yet
/// cannot be told from a leftover, so a pre-flight names them.
pub(crate) fn maybe_elsewhere<'p>(
    i: &Integration,
    obs: &Observation,
    plan: &'p Plan,
    now: DateTime<Utc>,
) -> Vec<&'p Disposal> {
    let young_since = before(now, i.orphan_after.checked_add(&i.grace).unwrap_or(Duration::MAX));
    plan.delete_now
        .iter()
        .chain(&plan.delete_later)
        .filter(|d| d.reason == DeleteReason::Orphan && d.rule != Rule::Expired)
        .filter(|d| {
            let born = obs.lineage.iter().find(|(a, _)| a.id == d.id);
            let last = born.map(|(a, ts)| births(a, *ts, &obs.mixpanel_clock).1);
            d.rule == Rule::Unused || last.is_some_and(|b| b > young_since)
        })
        .collect()
}

/// Decides what a pass does for `i`, given what was observed at `now`.
pub fn decide(i: &Integration, scope: &Scope, obs: &Observation, now: DateTime<Utc>, req: Request) -> Plan {
    if let Some(blocked) = refuse(i, scope, obs) {
        return Plan {
            blocked: Some(Box::new(blocked)),
            ..Plan::default()
        };
    }
    let mut plan = Plan::default();
    let reason = match &obs.published {
        None => bootstrap(i, obs).map(|()| Some(RotateReason::Bootstrap)),
        Some(p) => {
            let expires = match (obs.current.as_ref().and_then(|c| c.expires), p.payload.expires) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            plan.deadlines = Deadlines::of(i, expires, p.payload.rotated_at);
            Ok(due_reason(obs, &plan.deadlines, now, req.force))
        }
    };
    let reason = reason.unwrap_or_else(|b| {
        plan.blocked = Some(Box::new(b));
        None
    });
    let owners = Owners { i, scope, obs };
    let sweep = owners.sweep(now);
    let trusted = obs.mixpanel_clock.trusted().is_some();
    let mut held: usize = 0;
    for mut d in sweep.disposals {
        if !trusted && d.rule.rests_on_last_used() {
            d.due = None;
            held = held.saturating_add(1);
        }
        if !obs.adopt_unverified.is_empty() && obs.adopt_target.as_ref().is_some_and(|a| a.id == d.id) {
            d.due = None;
        }
        if d.is_due(now) {
            plan.delete_now.push(d);
        } else {
            plan.delete_later.push(d);
        }
    }
    plan.in_use = sweep.in_use;
    plan.ignored = sweep.ignored;
    if held > 0 {
        plan.clock_held = Some(ClockHeld {
            clock: obs.mixpanel_clock,
            offset_seconds: obs.mixpanel_clock.offset.map(|o| o.num_seconds()),
            held,
        });
    }
    plan.rotate = reason.map(|reason| Box::new(owners.rotation(reason, now, req)));
    plan
}

/// Refusals that stop everything: a payload that is not ours, a published
/// account that is not ours, or adopting the rotator itself.
fn refuse(i: &Integration, scope: &Scope, obs: &Observation) -> Option<Blocked> {
    if let Some(p) = &obs.published
        && !p.payload.is_of(&i.name, scope.organization_id)
    {
        return Some(Blocked::SharedPath(Box::new(SharedPath {
            sink: i.sink.clone(),
            path: i.path.clone(),
            path_key: i.key("path"),
            integration: i.name.clone(),
            organization: scope.organization_id,
            found_integration: p.payload.integration.clone(),
            found_organization: p.payload.organization_id,
        })));
    }
    if let (Some(other_key), Some(a)) = (&obs.adopt_shared_with, &obs.adopt_target) {
        return Some(Blocked::AdoptShared {
            adopt_key: i.key("adopt"),
            other_key: other_key.clone(),
            id: a.id,
        });
    }
    if let (Some(claim), Some(a)) = (&obs.adopt_claimed_by, &obs.adopt_target) {
        return Some(Blocked::AdoptClaimed {
            adopt_key: i.key("adopt"),
            id: a.id,
            username: a.username.clone(),
            claim: claim.clone(),
        });
    }
    let owners = Owners { i, scope, obs };
    if let Some(c) = &obs.current
        && owners.owns(c).is_err()
    {
        // `{namespace}-{integration}-...` under another namespace: most
        // likely `namespace` was changed.
        let base = crate::mixpanel::types::strip_mixpanel_suffix(&c.username);
        let hint = base
            .split_once('-')
            .filter(|(ns, _)| super::lineage::Lineage::new(ns, i.lineage_name()).parse(&c.username).is_some())
                .map(|(ns, _)| {
                format!(
                    "; it is of this integration's lineage under namespace `{ns}`: if that was this rotator's `namespace`, list it in `previous_namespaces`"
                )
            })
            .map(Box::new);
        return Some(Blocked::ForeignCurrent {
            sink: i.sink.clone(),
            path: i.path.clone(),
            id: c.id,
            username: c.username.clone(),
            adopt_key: i.key("adopt"),
            hint: Hint(hint),
        });
    }
    let a = obs.adopted.as_ref()?;
    // The rotator's own credential adopts the account it acts as (the seed):
    // that is how it takes it over.
    (scope.is_rotator(a) && !i.is_self()).then(|| Blocked::OwnAccountAdopted {
        adopt_key: i.key("adopt"),
        username: a.username.clone(),
    })
}

impl Scope {
    /// Whether `a` is the rotator's own account.
    pub(crate) fn is_rotator(&self, a: &ServiceAccount) -> bool {
        a.username == self.rotator || a.base_username() == self.rotator
    }
}

/// Nothing published: bootstrapping needs explicit projects, an account to
/// adopt, or (a wiped primary) an account of the lineage to copy from.
fn bootstrap(i: &Integration, obs: &Observation) -> Result<(), Blocked> {
    if matches!(i.projects, ProjectsSpec::Explicit(_)) || obs.adopted.is_some() || newest(obs).is_some() {
        return Ok(());
    }
    Err(match &i.adopt {
        Some(a) => Blocked::AdoptNotFound {
            adopt_key: i.key("adopt"),
            adopt: a.to_string(),
            projects_key: i.key("projects"),
        },
        None => Blocked::NothingToCopy {
            adopt_key: i.key("adopt"),
            projects_key: i.key("projects"),
        },
    })
}

/// Whether a published credential is due for rotation, and why.
fn due_reason(obs: &Observation, d: &Deadlines, now: DateTime<Utc>, force: bool) -> Option<RotateReason> {
    if force {
        Some(RotateReason::Forced)
    } else if obs.current.is_none() {
        Some(RotateReason::CurrentMissing)
    } else if let Some(expires) = d.expires.filter(|e| *e <= now) {
        Some(RotateReason::Expired { expires })
    } else if let Some(expires) = d.expires.filter(|_| d.in_renewal(now)) {
        Some(RotateReason::ExpiresSoon { expires })
    } else {
        d.slot
            .filter(|s| s.fires_at <= now)
            .map(|s| RotateReason::Scheduled { slot: s.slot })
    }
}

/// An account the payload vouches for, and from when it may go.
struct Vouched {
    id: u64,
    not_before: DateTime<Utc>,
    rule: Rule,
    field: &'static str,
}

/// What a sweep of the integration's accounts finds.
#[derive(Default)]
struct Sweep {
    disposals: Vec<Disposal>,
    in_use: Vec<InUse>,
    ignored: Vec<Ignored>,
}

/// Who owns what, for one integration: the rules of ownership.
struct Owners<'a> {
    i: &'a Integration,
    scope: &'a Scope,
    obs: &'a Observation,
}

impl Owners<'_> {
    /// Whether the rotator may delete `a`: an account of this integration's
    /// lineage, or the one `adopt` names; never the rotator's own, except
    /// by its own credential's rotation (which takes it over: the account
    /// it acts as is still refused at the delete, until it has switched).
    fn owns(&self, a: &ServiceAccount) -> Result<(), NotOwned> {
        if self.scope.is_rotator(a) && !self.i.is_self() {
            Err(NotOwned::Rotator)
        } else if self.obs.lineage.iter().any(|(l, _)| l.id == a.id)
            || self.obs.adopt_target.as_ref().is_some_and(|t| t.id == a.id)
        {
            Ok(())
        } else {
            Err(NotOwned::Foreign)
        }
    }

    fn account(&self, id: u64) -> Option<&ServiceAccount> {
        self.obs.all.get(id)
    }

    fn current_id(&self) -> Option<u64> {
        self.obs.record().map(|p| p.service_account_id)
    }

    /// The accounts the payload vouches for: its recorded predecessor, then
    /// its `retiring` entries.
    fn vouched(&self) -> Vec<Vouched> {
        let Some(p) = self.obs.record() else { return vec![] };
        let predecessor = p.previous_service_account_id.map(|id| Vouched {
            id,
            not_before: after(p.rotated_at, self.i.grace),
            rule: Rule::Grace,
            field: "previous_service_account_id",
        });
        let retiring = p.retiring.iter().map(|r| Vouched {
            id: r.id,
            not_before: r.not_before,
            rule: Rule::NotBefore,
            field: "retiring",
        });
        predecessor
            .into_iter()
            .chain(retiring)
            .filter(|v| Some(v.id) != self.current_id())
            .collect()
    }

    /// Every account this integration may delete, with its rule, time and
    /// evidence; those in use but unexplained; payload entries not ours.
    fn sweep(&self, now: DateTime<Utc>) -> Sweep {
        let mut out = Sweep::default();
        for v in self.vouched() {
            let Some(a) = self.account(v.id) else { continue };
            if out.disposals.iter().any(|d| d.id == a.id) || out.ignored.iter().any(|x| x.id == a.id) {
                continue;
            }
            match self.owns(a) {
                Ok(()) => out
                    .disposals
                    .push(retiring(self.i, a, v.not_before, v.rule, &self.obs.mixpanel_clock)),
                Err(why) => out.ignored.push(Ignored {
                    id: a.id,
                    username: a.username.clone(),
                    field: v.field,
                    why,
                }),
            }
        }
        for (a, ts) in &self.obs.lineage {
            let explained = Some(a.id) == self.current_id() || out.disposals.iter().any(|d| d.id == a.id);
            if explained || (self.scope.is_rotator(a) && !self.i.is_self()) {
                continue;
            }
            let (d, in_use) = unexplained(self.i, a, *ts, now, &self.obs.mixpanel_clock);
            out.disposals.push(d);
            out.in_use.extend(in_use);
        }
        out
    }

    /// The rotation: where memberships come from, what it replaces, what the
    /// next payload vouches for, and what `--revoke-old` deletes.
    fn rotation(&self, reason: RotateReason, now: DateTime<Utc>, req: Request) -> RotationPlan {
        let (i, obs) = (self.i, self.obs);
        let replaced = obs.current.as_ref().or(obs.adopted.as_ref());
        let mut carried: Vec<RetiringAccount> = Vec::new();
        for v in self.vouched() {
            let owned = self.account(v.id).is_some_and(|a| self.owns(a).is_ok());
            if owned && !carried.iter().any(|r| r.id == v.id) {
                carried.push(RetiringAccount {
                    id: v.id,
                    not_before: v.not_before,
                });
            }
        }
        let is_lineage = |id: u64| obs.lineage.iter().any(|(a, _)| a.id == id);
        let remember = replaced
            .map(|a| a.id)
            .filter(|id| !is_lineage(*id) && !carried.iter().any(|r| r.id == *id));
        let revoke_old = req.force && req.revoke_old;
        let revoke = if revoke_old {
            let revoked = |a: &ServiceAccount| Disposal::of(a, DeleteReason::Revoked, Rule::RevokeOld, now);
            let mut v: Vec<Disposal> = replaced.map(revoked).into_iter().collect();
            v.extend(carried.iter().filter_map(|r| self.account(r.id)).map(revoked));
            v.sort_by_key(|d| d.id);
            v.dedup_by_key(|d| d.id);
            v
        } else {
            vec![]
        };
        RotationPlan {
            memberships: memberships(i, obs),
            replaces: replaced.map(AccountRef::of),
            username_pattern: format!("{}-{}-<timestamp>-<hex>", self.scope.namespace, i.lineage_name()),
            role: i.role,
            ttl: i.ttl,
            grace: i.grace,
            revoke_old,
            revoke,
            carried,
            remember,
            reason,
        }
    }
}

/// A lineage account that the sink neither publishes nor vouches for: it
/// is deleted only when idle, by Mixpanel's `last_used` (principle 6). Never
/// used after its own rotation's verification: `orphan_after` after its
/// creation (a rotation elsewhere may still be in flight until then). Used
/// since: once unused for `grace`; until then it is in use, kept and
/// reported. Expired: at once, since it authenticates nobody.
///
/// Mixpanel's timestamps are read in our time (`clock`). Its birth is told
/// by two clocks: the lineage timestamp (the creating host's) and
/// Mixpanel's `created`; each is used in the direction that keeps: the
/// earlier ends its own-use window (a use after it is a consumer's), the
/// later starts the `orphan_after` count.
fn unexplained(
    i: &Integration,
    a: &ServiceAccount,
    ts: DateTime<Utc>,
    now: DateTime<Utc>,
    clock: &MixpanelClock,
) -> (Disposal, Option<InUse>) {
    let local = |t: Option<DateTime<Utc>>| t.map(|t| clock.local(t));
    if let Some(e) = local(a.expires).filter(|e| *e <= now) {
        return (Disposal::of(a, DeleteReason::Orphan, Rule::Expired, e), None);
    }
    let (first, last) = births(a, ts, clock);
    let settled = after(last, i.orphan_after);
    // An unreadable `last_used` is taken as a use now: kept while unknown.
    let last_used = if a.last_used_unknown {
        Some(now)
    } else {
        local(a.last_used)
    };
    match last_used.filter(|u| *u > after(first, own_use_window(i))) {
        None => (Disposal::of(a, DeleteReason::Orphan, Rule::NeverUsed, settled), None),
        Some(used) => {
            let idle_at = after(used, i.grace);
            let in_use = (idle_at > now).then(|| InUse {
                id: a.id,
                username: a.username.clone(),
                last_used: used,
                last_used_unknown: a.last_used_unknown,
                idle_at,
            });
            (
                Disposal::of(a, DeleteReason::Orphan, Rule::Unused, settled.max(idle_at)),
                in_use,
            )
        }
    }
}

/// A lineage account's birth by its two clocks (its lineage timestamp, the
/// creating host's; Mixpanel's `created`, read in our time): the earlier and
/// the later, each used in the direction that keeps the account.
fn births(a: &ServiceAccount, ts: DateTime<Utc>, clock: &MixpanelClock) -> (DateTime<Utc>, DateTime<Utc>) {
    match a.created.map(|c| clock.local(c)) {
        Some(c) => (ts.min(c), ts.max(c)),
        None => (ts, ts),
    }
}

/// A retiring account whose grace ends at `grace_end` by `rule`. With
/// `delete_when_idle`, it goes only once its `last_used` has not advanced for
/// that long, and at the latest `max_grace` after its successor was published.
fn retiring(
    i: &Integration,
    a: &ServiceAccount,
    grace_end: DateTime<Utc>,
    rule: Rule,
    clock: &MixpanelClock,
) -> Disposal {
    let Some(idle) = i.delete_when_idle else {
        return Disposal::of(a, DeleteReason::Retiring, rule, grace_end);
    };
    let cap = after(grace_end, span_between(i.max_grace, i.grace));
    // An unreadable `last_used`, or a Mixpanel clock too far from ours to
    // read it by: not provably idle, so the cap decides.
    if a.last_used_unknown || clock.trusted().is_none() {
        return Disposal::of(a, DeleteReason::Retiring, Rule::MaxGrace, cap.max(grace_end));
    }
    let idle_since = match a.last_used {
        Some(t) => after(clock.local(t), idle),
        None => grace_end,
    };
    let due = grace_end.max(idle_since);
    if due > cap {
        Disposal::of(a, DeleteReason::Retiring, Rule::MaxGrace, cap)
    } else {
        Disposal::of(a, DeleteReason::Retiring, Rule::Idle, due)
    }
}

fn memberships(i: &Integration, obs: &Observation) -> MembershipSource {
    if let ProjectsSpec::Explicit(grants) = &i.projects {
        return MembershipSource::Explicit { grants: grants.clone() };
    }
    match (obs.current.as_ref().or(obs.adopted.as_ref()), &obs.published) {
        (Some(a), _) => MembershipSource::CopyFrom {
            account: AccountRef::of(a),
        },
        (None, Some(Published { payload, .. })) => MembershipSource::Recorded {
            gone: payload.service_account_id,
            grants: payload.projects.clone(),
        },
        (None, None) => match newest(obs) {
            Some(a) => MembershipSource::Newest {
                account: AccountRef::of(a),
            },
            // bootstrap() blocks this case; an empty explicit list is what it would mean.
            None => MembershipSource::Explicit { grants: vec![] },
        },
    }
}

/// The newest account of the lineage (by its lineage time, then id): what
/// a wiped primary bootstraps from when `adopt` is gone or was never set.
fn newest(obs: &Observation) -> Option<&ServiceAccount> {
    obs.lineage.iter().max_by_key(|(a, ts)| (*ts, a.id)).map(|(a, _)| a)
}

#[cfg(test)]
mod tests;
