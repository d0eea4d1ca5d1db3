//! The memberships a new account gets, read from Mixpanel when they are
//! copied (once per project per pass, through the [`MembershipCache`]).

use super::context::Context;
use super::decide::MembershipSource;
use super::echo::reported;
use super::error::{Cause, Step, StepError};
use super::observe::MembershipCache;
use crate::mixpanel::types::{ProjectGrant, ProjectMember, ProjectRole, TargetType};
use crate::policy::Integration;

/// The memberships a new account gets from `source`; team and
/// organization grants cannot be copied and become warnings.
pub(crate) async fn desired(
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
    projects_visible(ctx, i, src.id, cache).await?;
    let rows = cache
        .memberships_of(&ctx.client, src.id)
        .await
        .map_err(|e| StepError::new(&i.name, Step::CopyMemberships, Cause::Account { id: src.id, source: e }))?;
    let mut out = Vec::new();
    for (project, row) in rows {
        let why = match copyable(&row) {
            Ok(role) => {
                out.push(ProjectGrant { id: project, role });
                continue;
            }
            Err(why) => why,
        };
        let w = format!(
            "project {project}: {} ({}) has role `{}` there through a `{}` grant, {why} `{}`",
            src.username,
            src.id,
            row.role,
            row.target_type,
            i.key("projects")
        );
        reported!(warn, integration = %i.name, project, account_id = src.id, "{w}");
        warnings.push(w);
    }
    out.sort();
    out.dedup_by_key(|g| g.id);
    Ok(out)
}

/// The role a membership row gives the new account, or why it is not copied.
fn copyable(row: &ProjectMember) -> Result<ProjectRole, &'static str> {
    match (&row.target_type, &row.role) {
        (TargetType::Individual, ProjectRole::Custom(_)) => {
            Err("a custom role, which is never copied blindly (its rights cannot be checked here): list the project in")
        }
        (TargetType::Individual, role) => Ok(role.clone()),
        (TargetType::Other(_), _) => {
            Err("a kind of grant this rotator does not know, which is never copied: list the project in")
        }
        (TargetType::Team | TargetType::Organization, _) => {
            Err("a grant that cannot be copied: grant it to the new account yourself, or list the project in")
        }
    }
}

/// Copy mode needs at least one visible project to look in: an empty copy
/// would be a guess, and is never published.
async fn projects_visible(
    ctx: &Context,
    i: &Integration,
    account: u64,
    cache: &MembershipCache,
) -> Result<(), StepError> {
    let projects = cache
        .projects(&ctx.client)
        .await
        .map_err(|e| StepError::new(&i.name, Step::CopyMemberships, Cause::Mixpanel(e)))?;
    if projects.is_empty() {
        return Err(StepError::new(
            &i.name,
            Step::CopyMemberships,
            Cause::NoProjectsVisible {
                organization: ctx.scope.organization_id,
                account,
                key: i.key("projects"),
            },
        ));
    }
    Ok(())
}
