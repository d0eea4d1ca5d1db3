//! What a pass did for one integration: the plan it followed and what came
//! of it. Commands render it, the daemon schedules from it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::decide::{Disposal, Plan, RotateReason};
use super::error::StepError;
use super::mirror::MirrorView;
use super::observe::Observation;
use crate::mixpanel::types::ProjectGrant;
use crate::policy::Integration;

/// The published account, as a report shows it (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct CurrentView {
    /// The account published.
    pub service_account_id: u64,
    pub(crate) username: String,
    pub(crate) expires: Option<DateTime<Utc>>,
    pub(crate) rotated_at: DateTime<Utc>,
    pub(crate) rotation_id: String,
    /// Whether the account still exists in Mixpanel (`None`: Mixpanel was
    /// not reached; the rest is what the sink holds).
    pub exists: Option<bool>,
}

impl CurrentView {
    /// The published account of an observation, with the expiry the plan uses.
    pub(crate) fn of(obs: &Observation, plan: &Plan) -> Option<Self> {
        obs.published.as_ref().map(|p| CurrentView {
            service_account_id: p.payload.service_account_id,
            username: p.payload.username.clone(),
            expires: plan.deadlines.expires.or(p.payload.expires),
            rotated_at: p.payload.rotated_at,
            rotation_id: p.payload.rotation_id.clone(),
            exists: Some(obs.current.is_some()),
        })
    }

    /// What the sink publishes, when Mixpanel could not be reached.
    pub(crate) fn published(payload: &crate::sink::Payload) -> Self {
        CurrentView {
            service_account_id: payload.service_account_id,
            username: payload.username.clone(),
            expires: payload.expires,
            rotated_at: payload.rotated_at,
            rotation_id: payload.rotation_id.clone(),
            exists: None,
        }
    }
}

/// A completed rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// The rotation's id (in the payload, the audit trail and the hooks).
    pub rotation_id: String,
    /// Why it rotated.
    pub reason: RotateReason,
    /// The new account.
    pub service_account_id: u64,
    /// Its username.
    pub username: String,
    /// When it expires.
    pub expires: Option<DateTime<Utc>>,
    pub(crate) projects: Vec<ProjectGrant>,
    /// The account it replaced.
    pub previous_service_account_id: Option<u64>,
    /// When the new credential is due for rotation (same rule as the plan's).
    pub(crate) next_rotation: Option<DateTime<Utc>>,
    /// When it was published (the payload's `rotated_at`).
    pub(crate) rotated_at: DateTime<Utc>,
    /// From the start of the rotation to its publish.
    pub(crate) duration_seconds: f64,
}

/// An integration's state after a pass, in one word (`state` in `-o json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Published, nothing due.
    Ok,
    /// A rotation is due (a plan, or a pass that did not rotate).
    Due,
    /// Rotated in this pass.
    Rotated,
    /// Nothing published yet, nothing due.
    Unpublished,
    /// The pass failed for it.
    Failed,
    /// Nothing is done until a person acts ([`super::decide::Blocked`]).
    Blocked,
}

/// One integration's outcome of a pass.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The integration's name.
    pub integration: String,
    pub(crate) sink: String,
    pub(crate) path: String,
    /// When the pass observed the world and made its plan.
    pub(crate) at: DateTime<Utc>,
    /// What the primary publishes, if anything.
    pub current: Option<CurrentView>,
    /// What the pass decided.
    pub plan: Plan,
    /// A dry run's answer to "which memberships would the new account get".
    pub(crate) preview: Option<Vec<ProjectGrant>>,
    /// Accounts deleted in this pass.
    pub deleted: Vec<Disposal>,
    /// Boxed: most reports have none, and a pass over 10,000 integrations keeps every report.
    pub rotated: Option<Box<Rotated>>,
    /// Each mirror, after the pass.
    pub mirrors: Vec<MirrorView>,
    /// What to act on soon; the pass did not fail.
    pub warnings: Vec<String>,
    /// What failed.
    pub errors: Vec<StepError>,
}

impl Report {
    /// The integration's state after this pass.
    pub(crate) fn state(&self) -> State {
        if self.plan.blocked.is_some() {
            State::Blocked
        } else if self.failed() {
            State::Failed
        } else if self.rotated.is_some() {
            State::Rotated
        } else if self.plan.rotate.is_some() {
            State::Due
        } else if self.current.is_none() {
            State::Unpublished
        } else {
            State::Ok
        }
    }

    /// An empty report for `i`, at `at`.
    pub(crate) fn new(i: &Integration, at: DateTime<Utc>) -> Self {
        Self {
            integration: i.name.clone(),
            sink: i.sink.clone(),
            path: i.path.clone(),
            at,
            current: None,
            plan: Plan::default(),
            preview: None,
            deleted: vec![],
            rotated: None,
            mirrors: vec![],
            warnings: vec![],
            errors: vec![],
        }
    }

    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }

    /// When the integration's credential is next due for rotation: the new
    /// credential's after a rotation, else the plan's.
    pub(crate) fn next_rotation(&self) -> Option<DateTime<Utc>> {
        match &self.rotated {
            Some(r) => r.next_rotation,
            None => self.plan.next_rotation(),
        }
    }

    /// Whether the pass reached Mixpanel and the sink.
    pub fn reached_everything(&self) -> bool {
        !self.errors.iter().any(|e| e.step.is_observation())
    }
}
