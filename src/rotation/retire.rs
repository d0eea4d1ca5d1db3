//! Decommissioning an integration (`retire`): every account of its lineage,
//! the account its `adopt` names and those its payload vouches for are
//! deleted (never one another integration publishes, vouches for or has in
//! its lineage, nor the rotator's own), then what its primary and mirrors
//! publish is removed (never a payload of another integration or
//! organization). Shown first; done only when asked
//! (`--yes`), audited. Removing an integration from the policy deletes
//! nothing: this is the only way the rotator forgets one.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::claims::Claims;
use super::decide::{DeleteReason, Disposal, Rule};
use super::engine::Engine;
use super::error::{Cause, Step, StepError};
use super::observe::Observation;
use crate::audit::{Action, AuditEvent, Outcome};
use crate::mixpanel::types::ServiceAccount;
use crate::policy::Integration;
use crate::sink::{Payload, Version};

/// A place a payload is published: the primary or a mirror.
#[derive(Debug, Clone, Serialize)]
pub struct Place {
    pub(crate) sink: String,
    pub(crate) path: String,
    /// Whether it is a mirror (else the primary).
    pub(crate) mirror: bool,
    /// Whether something is published there now.
    pub(crate) present: bool,
    /// Whose payload it holds, when not this integration's in this
    /// organization: it is left where it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) foreign: Option<String>,
}

/// An account `retire` deletes, and why it is this integration's.
#[derive(Debug, Clone, Serialize)]
pub struct Doomed {
    #[serde(flatten)]
    pub disposal: Disposal,
    pub(crate) why: String,
    /// Of the integration's lineage (found again by `retire` whatever the
    /// payloads say), rather than named by `adopt` or the payload.
    pub(crate) lineage: bool,
}

/// An account `retire` leaves alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub id: u64,
    pub(crate) username: String,
    pub why: String,
}

/// What `retire` deletes and removes, and what it leaves, with why.
#[derive(Debug, Clone, Serialize)]
pub struct RetirePlan {
    pub(crate) integration: String,
    pub(crate) at: DateTime<Utc>,
    /// Accounts to delete: the lineage's, the one `adopt` names, and those
    /// the integration's payload vouches for (its predecessor, `retiring`).
    pub delete: Vec<Doomed>,
    /// Accounts left alone, with why (another integration's, the rotator's).
    pub kept: Vec<Kept>,
    pub(crate) places: Vec<Place>,
    /// Whether each place holding this integration's payload may be
    /// removed, checked before anything is changed.
    pub(crate) checks: Vec<Check>,
}

/// Whether a place's payload may be removed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) sink: String,
    pub(crate) path: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

/// What `retire --yes` did.
#[derive(Debug, Clone, Serialize)]
pub struct Retired {
    pub plan: RetirePlan,
    pub deleted: Vec<u64>,
    pub removed: Vec<Place>,
    pub errors: Vec<String>,
}

/// The accounts `retire` would delete, with why each is `i`'s: its
/// lineage, the account `adopt` names, and those its own payload vouches
/// for (even when `adopt` is gone from the policy).
fn candidates<'a>(i: &Integration, obs: &'a Observation, own: Option<&Payload>) -> Vec<(&'a ServiceAccount, String)> {
    let mut out: Vec<(&ServiceAccount, String)> = obs
        .lineage
        .iter()
        .map(|(a, _)| (a, "of its lineage".to_string()))
        .collect();
    if let Some(a) = &obs.adopt_target {
        out.push((a, format!("the account `{}` names", i.key("adopt"))));
    }
    if let Some(p) = own {
        let vouched = p
            .previous_service_account_id
            .map(|id| (id, "its payload's predecessor (previous_service_account_id)"))
            .into_iter()
            .chain(
                p.retiring
                    .iter()
                    .map(|r| (r.id, "in its payload's `retiring` (not yet deleted)")),
            );
        for (id, why) in vouched {
            if let Some(a) = obs.all.get(id) {
                out.push((a, why.to_string()));
            }
        }
    }
    out
}

/// Whose payload `p` is, when it is not `i`'s in `organization`.
fn foreign(i: &Integration, organization: u64, p: &Payload) -> Option<String> {
    (!p.is_of(&i.name, organization)).then(|| {
        format!(
            "it holds the payload of integration `{}` in organization {}",
            p.integration, p.organization_id
        )
    })
}

impl Engine {
    /// What retiring `i` would delete and remove (reads only): every
    /// primary is read, so that no account another integration publishes,
    /// vouches for or has in its lineage is deleted on `i`'s behalf.
    pub async fn retire_plan(&self, i: &Integration) -> Result<RetirePlan, StepError> {
        let now = self.ctx.clock.now();
        let accounts = self
            .ctx
            .client
            .list_accounts()
            .await
            .map_err(|e| StepError::new(&i.name, Step::ListAccounts, Cause::Mixpanel(e)))?;
        let read = self.read_primary(i).await;
        let claims = self.claims(&[(i.name.as_str(), &read)].into()).await;
        let published = read?;
        let organization = self.ctx.scope.organization_id;
        let own_payload = published
            .as_ref()
            .filter(|(p, _)| foreign(i, organization, p).is_none());
        let obs = self.observe_with(i, &accounts, &claims, own_payload.cloned());
        let mut plan = RetirePlan {
            integration: i.name.clone(),
            at: now,
            delete: vec![],
            kept: vec![],
            places: self.places(i, organization, published.as_ref()).await,
            checks: vec![],
        };
        plan.checks = self.checks(&plan.places).await;
        for (a, why) in candidates(i, &obs, own_payload.map(|(p, _)| p)) {
            if plan.delete.iter().any(|d| d.disposal.id == a.id) || plan.kept.iter().any(|k| k.id == a.id) {
                continue;
            }
            match self.keep_reason(i, &obs, &claims, a) {
                Some(why) => plan.kept.push(Kept {
                    id: a.id,
                    username: a.username.clone(),
                    why,
                }),
                None => plan.delete.push(Doomed {
                    disposal: Disposal::of(a, DeleteReason::Retired, Rule::Retire, now),
                    why,
                    lineage: obs.lineage.iter().any(|(l, _)| l.id == a.id),
                }),
            }
        }
        Ok(plan)
    }

    /// Why `retire` must leave `a` alone, if it must.
    fn keep_reason(&self, i: &Integration, obs: &Observation, claims: &Claims, a: &ServiceAccount) -> Option<String> {
        if self.ctx.scope.is_rotator(a) {
            return Some("the rotator's own account".into());
        }
        if let Some(c) = claims.other(&self.ctx.policy, a, &i.name) {
            return Some(format!("{c}: never deleted on `{}`'s behalf", i.name));
        }
        if obs.adopt_target.as_ref().is_some_and(|t| t.id == a.id)
            && let Some(other) = &obs.adopt_shared_with
        {
            return Some(format!("also named by `{other}`"));
        }
        let unknown = claims.unknown_besides(&i.name);
        let lineage = obs.lineage.iter().any(|(l, _)| l.id == a.id);
        (!lineage && !unknown.is_empty()).then(|| {
            format!(
                "the primaries of {} cannot be read, so whether they use it is unknown: run `retire` again once they can be",
                unknown.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Whether each place holding this integration's payload may be removed.
    async fn checks(&self, places: &[Place]) -> Vec<Check> {
        let mut out = vec![];
        for p in places.iter().filter(|p| p.present && p.foreign.is_none()) {
            let Some(sink) = self.ctx.sinks.get(&p.sink) else {
                continue;
            };
            let (ok, detail) = match sink.removable(&p.path).await {
                Ok(d) => (true, d),
                Err(e) => (false, e.to_string()),
            };
            out.push(Check {
                sink: p.sink.clone(),
                path: p.path.clone(),
                ok,
                detail,
            });
        }
        out
    }

    /// The integration's primary and mirrors, with what each holds.
    async fn places(&self, i: &Integration, organization: u64, primary: Option<&(Payload, Version)>) -> Vec<Place> {
        let mut places = vec![Place {
            sink: i.sink.clone(),
            path: i.path.clone(),
            mirror: false,
            present: primary.is_some(),
            foreign: primary.and_then(|(p, _)| foreign(i, organization, p)),
        }];
        for m in &i.mirrors {
            let read = match self.ctx.sinks.get(&m.sink) {
                Some(s) => s.read_current(&m.path).await.map(|p| p.map(|(p, _)| p)),
                None => Ok(None),
            };
            places.push(Place {
                sink: m.sink.clone(),
                path: m.path.clone(),
                mirror: true,
                // Unreadable: assumed present, so that `--yes` tries (and says why it cannot).
                present: !matches!(read, Ok(None)),
                foreign: read.ok().flatten().and_then(|p| foreign(i, organization, &p)),
            });
        }
        places
    }

    /// Carries out `plan`: nothing unless every place passed its check;
    /// then the payloads (primary and mirrors), and only once they are all
    /// gone, the accounts. A failure stops there: a half-done retire leaves
    /// accounts, which `retire` finds again by their lineage, never a
    /// payload naming deleted accounts.
    pub async fn retire(&self, i: &Integration, plan: RetirePlan) -> Retired {
        let mut out = Retired {
            plan,
            deleted: vec![],
            removed: vec![],
            errors: vec![],
        };
        if let Err(e) = self.ctx.audit_writable() {
            out.errors
                .push(StepError::new(&i.name, Step::Audit, Cause::Audit(e)).to_string());
            return out;
        }
        for c in out.plan.checks.iter().filter(|c| !c.ok) {
            out.errors.push(format!(
                "integration `{}`: sink `{}` path `{}`: {}; nothing was changed",
                i.name, c.sink, c.path, c.detail
            ));
        }
        if !out.errors.is_empty() {
            return out;
        }
        for p in out.plan.places.clone() {
            match self.remove_place(i, &p).await {
                Ok(true) => out.removed.push(p),
                Ok(false) => {}
                Err(e) => out.errors.push(e),
            }
        }
        if !out.errors.is_empty() {
            out.errors.push(format!(
                "integration `{}`: no account was deleted; run `retire {}` again once the payloads can be removed",
                i.name, i.name
            ));
            return out;
        }
        for d in &out.plan.delete {
            match self.ctx.delete(i, &d.disposal, None, None).await {
                Ok(()) => out.deleted.push(d.disposal.id),
                Err(e) if d.lineage => out.errors.push(e.to_string()),
                // Its payload is gone: say how to find it again.
                Err(e) => out.errors.push(format!(
                    "{e}; nothing records account {} any more: run `retire` again with `adopt = {}` on `{}`, or delete it in Mixpanel",
                    d.disposal.id, d.disposal.id, i.name
                )),
            }
        }
        out
    }

    /// Removes the payload at `p`, unless it is another's (read again at
    /// the last moment): whether one was removed.
    async fn remove_place(&self, i: &Integration, p: &Place) -> Result<bool, String> {
        let Some(sink) = self.ctx.sinks.get(&p.sink) else {
            return Ok(false);
        };
        if p.foreign.is_some() || !p.present {
            return Ok(false);
        }
        if let Ok(Some((now_there, _))) = sink.read_current(&p.path).await
            && let Some(whose) = foreign(i, self.ctx.scope.organization_id, &now_there)
        {
            return Err(format!(
                "integration `{}`: the payload at sink `{}` path `{}` was left: {whose}",
                i.name, p.sink, p.path
            ));
        }
        let event = |outcome| AuditEvent {
            detail: Some(format!("sink `{}` path `{}`", p.sink, p.path)),
            reason: Some("retired".into()),
            ..self.ctx.audit_event(&i.name, Action::Remove, outcome)
        };
        match sink.remove(&p.path).await {
            Ok(true) => {
                self.ctx.audit(event(Outcome::Deleted));
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                self.ctx.audit(event(Outcome::Failed));
                Err(format!(
                    "integration `{}`: removing the payload at sink `{}` path `{}` failed: {e}",
                    i.name, p.sink, p.path
                ))
            }
        }
    }
}
