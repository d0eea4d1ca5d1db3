//! Decommissioning an integration (`retire`): every account of its lineage
//! and the account its `adopt` names are deleted, then what its primary
//! and mirrors publish is removed. Shown first; done only when asked
//! (`--yes`), audited. Removing an integration from the policy deletes
//! nothing: this is the only way the rotator forgets one.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::decide::{DeleteReason, Disposal, Rule};
use super::engine::Engine;
use super::error::{Cause, Step, StepError};
use crate::audit::{Action, AuditEvent, Outcome};
use crate::mixpanel::types::strip_mixpanel_suffix;
use crate::policy::Integration;

/// A place a payload is published: the primary or a mirror.
#[derive(Debug, Clone, Serialize)]
pub struct Place {
    pub sink: String,
    pub path: String,
    /// Whether it is a mirror (else the primary).
    pub mirror: bool,
    /// Whether something is published there now.
    pub present: bool,
}

/// What `retire` deletes and removes, and what it leaves, with why.
#[derive(Debug, Clone, Serialize)]
pub struct RetirePlan {
    pub integration: String,
    pub at: DateTime<Utc>,
    /// Accounts to delete: the lineage's, and the one `adopt` names.
    pub delete: Vec<Disposal>,
    /// Accounts left alone, with why (shared with another integration).
    pub kept: Vec<(u64, String, String)>,
    pub places: Vec<Place>,
}

/// What `retire --yes` did.
#[derive(Debug, Clone, Serialize)]
pub struct Retired {
    pub plan: RetirePlan,
    pub deleted: Vec<u64>,
    pub removed: Vec<Place>,
    pub errors: Vec<String>,
}

impl Engine {
    /// What retiring `i` would delete and remove (reads only).
    pub async fn retire_plan(&self, i: &Integration) -> Result<RetirePlan, StepError> {
        let now = self.ctx.clock.now();
        let accounts = self
            .ctx
            .client
            .list_accounts()
            .await
            .map_err(|e| StepError::new(&i.name, Step::ListAccounts, Cause::Mixpanel(e)))?;
        let obs = self.observe(i, &accounts).await?;
        let rotator = strip_mixpanel_suffix(&self.ctx.scope.rotator);
        let mine = |a: &crate::mixpanel::ServiceAccount| strip_mixpanel_suffix(&a.username) != rotator;
        let mut delete: Vec<Disposal> = obs
            .lineage
            .iter()
            .map(|(a, _)| a)
            .filter(|a| mine(a))
            .map(|a| Disposal::of(a, DeleteReason::Retired, Rule::Retire, now))
            .collect();
        let mut kept = vec![];
        if let Some(a) = &obs.adopt_target
            && !delete.iter().any(|d| d.id == a.id)
        {
            match &obs.adopt_shared_with {
                Some(other) => kept.push((a.id, a.username.clone(), format!("also named by `{other}`"))),
                None if !mine(a) => kept.push((a.id, a.username.clone(), "the rotator's own account".into())),
                None => delete.push(Disposal::of(a, DeleteReason::Retired, Rule::Retire, now)),
            }
        }
        let mut places = vec![Place {
            sink: i.sink.clone(),
            path: i.path.clone(),
            mirror: false,
            present: obs.published.is_some(),
        }];
        for m in &i.mirrors {
            let sink = self.ctx.sinks.get(&m.sink);
            let present = match sink {
                Some(s) => s.read_current(&m.path).await.map(|p| p.is_some()).unwrap_or(true),
                None => false,
            };
            places.push(Place {
                sink: m.sink.clone(),
                path: m.path.clone(),
                mirror: true,
                present,
            });
        }
        Ok(RetirePlan {
            integration: i.name.clone(),
            at: now,
            delete,
            kept,
            places,
        })
    }

    /// Carries out `plan`: the accounts first, then, only once every one is
    /// gone, the payloads (a failed delete leaves the payload a consumer may
    /// still use; running `retire` again finishes the job).
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
        for d in &out.plan.delete {
            match self.ctx.delete(i, d, None, None).await {
                Ok(()) => out.deleted.push(d.id),
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        if !out.errors.is_empty() {
            return out;
        }
        for p in out.plan.places.clone() {
            let Some(sink) = self.ctx.sinks.get(&p.sink) else {
                continue;
            };
            let event = |outcome| AuditEvent {
                detail: Some(format!("sink `{}` path `{}`", p.sink, p.path)),
                reason: Some("retired".into()),
                ..self.ctx.audit_event(&i.name, Action::Remove, outcome)
            };
            match sink.remove(&p.path).await {
                Ok(true) => {
                    self.ctx.audit(event(Outcome::Deleted));
                    out.removed.push(p);
                }
                Ok(false) => {}
                Err(e) => {
                    self.ctx.audit(event(Outcome::Failed));
                    out.errors.push(format!(
                        "integration `{}`: removing the payload at sink `{}` path `{}` failed: {e}",
                        i.name, p.sink, p.path
                    ));
                }
            }
        }
        out
    }
}
