//! The memberships a new account gets, read from Mixpanel when they are
//! copied (once per project per pass, through the [`MembershipCache`]).

use super::context::Context;
use super::decide::MembershipSource;
use super::error::{Cause, Step, StepError};
use super::observe::MembershipCache;
use crate::mixpanel::types::{ProjectGrant, TargetType};
use crate::policy::Integration;

/// The memberships a new account gets from `source`; team and
/// organization grants cannot be copied and become warnings.
pub async fn desired(
    ctx: &Context,
    i: &Integration,
    source: &MembershipSource,
    cache: &MembershipCache,
    warnings: &mut Vec<String>,
) -> Result<Vec<ProjectGrant>, StepError> {
    let src = match source {
        MembershipSource::Explicit { grants } => return Ok(grants.clone()),
        MembershipSource::Recorded { gone, grants } => {
            warnings.push(format!(
                "account {gone} is gone from Mixpanel; the new account gets the memberships recorded at the last rotation"
            ));
            return Ok(grants.clone());
        }
        MembershipSource::CopyFrom { account } => account,
        MembershipSource::Newest { account } => {
            warnings.push(format!(
                "nothing is published and no account to adopt: the new account gets the memberships of the newest account of the lineage, {} ({}); the older ones are deleted once unused",
                account.id, account.username
            ));
            account
        }
    };
    let rows = cache
        .memberships_of(&ctx.client, src.id)
        .await
        .map_err(|e| StepError::new(&i.name, Step::CopyMemberships, Cause::Account { id: src.id, source: e }))?;
    let mut out = Vec::new();
    for (project, row) in rows {
        if row.target_type == TargetType::Individual {
            out.push(ProjectGrant {
                id: project,
                role: row.role,
            });
            continue;
        }
        let w = format!(
            "project {project}: {} has role `{}` there through a {} grant, which cannot be copied: grant it to the new account yourself, or list the project in `{}`",
            src.username,
            row.role,
            row.target_type,
            i.key("projects")
        );
        tracing::warn!(integration = %i.name, project, "{w}");
        warnings.push(w);
    }
    out.sort();
    out.dedup_by_key(|g| g.id);
    Ok(out)
}
