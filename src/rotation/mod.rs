//! The reconcile engine. For each integration a pass observes (the sink and
//! the shared account list, [`observe`]), decides (pure: the whole [`Plan`],
//! [`decide`](mod@decide)), and acts: it deletes what is due (`delete`) and makes the
//! planned rotation, one step at a time (`rotate`). Running a pass twice
//! does no harm; no local state is kept.
//!
//! - [`engine`]: the engine, a pass, and what it reports to metrics and hooks;
//! - [`error`]: typed failures ([`Step`], [`Cause`], [`Consequence`]);
//! - `report`: what a pass did ([`Report`]);
//! - [`lineage`]: the usernames this rotator owns;
//! - `mirror`: copies of the credential, written from the primary.

pub(crate) mod claims;
mod context;
pub mod decide;
mod delete;
pub(crate) mod echo;
pub mod engine;
pub mod error;
pub mod lineage;
mod memberships;
pub(crate) mod mirror;
pub mod observe;
pub(crate) mod report;
pub(crate) mod retire;
mod rotate;

pub use decide::{
    Blocked, DeleteReason, Disposal, MembershipSource, Plan, Request, RotateReason, RotationPlan, Rule, Scope, decide,
};
pub use engine::{Engine, PassOptions};
pub use error::{Cause, Consequence, ErrorCode, SetupError, Step, StepError};
pub use mirror::{MirrorState, MirrorSync, MirrorView};
pub use observe::{MembershipCache, Observation};
pub use report::{CurrentView, Report, Rotated, State};
