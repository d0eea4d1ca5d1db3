//! The checks of the rotator's own account: its role, the regions it
//! sees, when it expires, and (`[mixpanel.self]`) where its credential is kept.

use super::checks::{CheckStatus, Checks};
use crate::policy::Policy;
use crate::rotation::Engine;

/// Whether the rotator's own account may create and delete service accounts.
pub(super) fn rotator_role(
    client: &crate::mixpanel::Client,
    me: &crate::mixpanel::Me,
    own: bool,
) -> Result<String, String> {
    let org = client.organization_id();
    let Some(o) = me.organization(org) else {
        return Err(format!(
            "the rotator's account does not belong to organization {org}: check `mixpanel.organization_id`"
        ));
    };
    match &o.role {
        Some(r) if own && *r != crate::mixpanel::types::OrgRole::Admin => Err(format!(
            "the rotator's account has role `{r}` in organization {org}; with `[mixpanel.self]` it must be an organization admin (an owner is never re-created as its successor)"
        )),
        Some(r) if r.can_manage_accounts() => Ok(format!("authenticated; role `{r}` in organization {org}")),
        Some(r) => Err(format!(
            "the rotator's account has role `{r}` in organization {org}; it must be an organization admin or owner to create and delete service accounts"
        )),
        None => Err(format!(
            "Mixpanel reports no role for the rotator's account in organization {org}; it must be an organization admin or owner to create and delete service accounts"
        )),
    }
}

/// The regions the organization's projects are in, and where their calls go.
pub(super) fn regions(client: &crate::mixpanel::Client, me: &crate::mixpanel::Me) -> Result<String, String> {
    let mut by_domain: std::collections::BTreeMap<Option<String>, usize> = std::collections::BTreeMap::new();
    for (_, d) in me.projects_of(client.organization_id()) {
        let n = by_domain.entry(d).or_default();
        *n = n.saturating_add(1);
    }
    if by_domain.is_empty() {
        return Err("GET /me lists no project of the organization: copying memberships is impossible".into());
    }
    let mut parts = vec![];
    for (domain, n) in by_domain {
        let name = domain.clone().unwrap_or_else(|| "(no domain)".into());
        let base = client.project_base(domain.as_deref()).map_err(|e| e.to_string())?;
        parts.push(format!("{name}: {n} project(s), at {base}"));
    }
    Ok(parts.join("; "))
}

/// When the rotator's own account expires. With `[mixpanel.self]` the
/// rotator replaces it; without, a person must, in time (README, "The
/// rotator's own credential").
pub(super) fn own_expiry(
    engine: &Engine,
    accounts: &[crate::mixpanel::ServiceAccount],
    now: chrono::DateTime<chrono::Utc>,
    checks: &mut Checks,
) {
    let me = &*engine.client().username();
    let what = "the rotator's own account";
    let Some(own) = accounts.iter().find(|a| a.username == me) else {
        checks.warn(
            what,
            &format!(
                "`{me}` is not in the list of service accounts (a user, not a service account?): its expiry is unknown"
            ),
        );
        return;
    };
    if engine.policy().own().is_some() {
        let seed = me == engine.policy().mixpanel.username;
        let detail = match (seed, own.expires) {
            (true, _) => format!("`{me}` is the seed: the first pass replaces it (`[mixpanel.self]`)"),
            (false, Some(t)) => format!(
                "`{me}`, rotated by this rotator (`[mixpanel.self]`), expires at {}",
                crate::text::rfc3339(t)
            ),
            (false, None) => format!("`{me}`, rotated by this rotator (`[mixpanel.self]`)"),
        };
        return checks.ok(what, &detail);
    }
    match own.expires {
        None => checks.ok(
            what,
            &format!("`{me}` does not expire (give it an expiry, and replace it before then)"),
        ),
        Some(t) if t <= crate::clock::after(now, chrono::Duration::days(30)) => checks.warn(
            what,
            &format!(
                "`{me}` expires at {} ({}): create its replacement now (README, \"The rotator's own credential\")",
                crate::text::rfc3339(t),
                crate::text::relative(t, now)
            ),
        ),
        Some(t) => checks.ok(what, &format!("`{me}` expires at {}", crate::text::rfc3339(t))),
    }
}

/// The rotator's own credential (`[mixpanel.self]`) must outlive a reboot:
/// once the seed is deleted, its payload is the only copy.
pub(super) fn own_durable(policy: &Policy, checks: &mut Checks) {
    let Some(own) = policy.own() else { return };
    let Some(sink) = policy.sinks.get(&own.sink) else {
        return;
    };
    let what = "mixpanel.self.sink";
    match sink.backend().durable() {
        Ok(()) => checks.ok(what, &format!("`{}` keeps the rotator's own credential across restarts", own.sink)),
        Err(e) => checks.record(
            CheckStatus::Fail,
            what,
            &format!(
                "`{}` would lose the rotator's own credential, its only copy once the seed is deleted: {e}; keep it on disk (the systemd units' /var/lib/mixpanel-rotator) or in Vault or AWS",
                own.sink
            ),
        ),
    }
}
