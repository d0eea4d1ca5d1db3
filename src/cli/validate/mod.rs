//! `validate`: the policy, its secrets and, with `--online`, Mixpanel, every
//! sink and each integration's readiness, as typed `Check`s (`checks`) printed as
//! they come or gathered into the JSON document.

mod account;
mod checks;
mod integration;

use super::setup::{engine, load_policy};
use crate::clock::SharedClock;
use crate::exit::Exit;
use crate::policy::Policy;
use account::{own_durable, own_expiry, regions, rotator_role};
use checks::Checks;
use integration::integration_checks;

/// How far `validate` goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Depth {
    /// The policy alone (`--policy-only`).
    PolicyOnly,
    /// The policy and every secret it refers to (the default).
    Secrets,
    /// All that, and Mixpanel and every sink (`--online`).
    Online,
}

impl Depth {
    pub(super) fn of(online: bool, policy_only: bool) -> Self {
        match (online, policy_only) {
            (true, _) => Depth::Online,
            (false, true) => Depth::PolicyOnly,
            (false, false) => Depth::Secrets,
        }
    }
}

pub(super) async fn validate(
    path: &std::path::Path,
    depth: Depth,
    accept_unexplained: bool,
    json: bool,
    clock: SharedClock,
) -> Result<Exit, Exit> {
    let online = depth == Depth::Online;
    let policy = load_policy(path)?;
    let mut checks = Checks::new(json);
    let summary = format!(
        "OK ({} integration(s), {} sink(s), namespace `{}`)",
        policy.integrations.len(),
        policy.sinks.len(),
        policy.namespace
    );
    if checks.json {
        checks.ok(&format!("policy {}", path.display()), &summary);
    } else {
        println!("policy {}: {summary}", path.display());
    }
    if depth == Depth::PolicyOnly {
        let detail = "not read (--policy-only): `validate` without it reads them";
        if checks.json {
            checks.warn("secrets", detail);
        } else {
            println!("secrets: {detail}");
        }
    } else {
        check_secrets(path, &policy, &mut checks)?;
        own_durable(&policy, &mut checks);
    }
    if !online {
        return Ok(checks.finish(path, online, clock.now()));
    }
    let engine = engine(policy, clock.clone())?;
    let client = engine.client();
    // With `[mixpanel.self]`: as the published own credential, if any.
    client.refresh().await;
    let own = engine.policy().own().is_some();
    let me = client.me().await.map_err(|e| e.to_string());
    checks.check(
        &format!("mixpanel {}", client.base_url()),
        me.clone().and_then(|me| rotator_role(client, &me, own)),
    );
    if let Ok(me) = &me {
        checks.check("mixpanel regions", regions(client, me));
    }
    if let Some(audit) = &engine.policy().audit_path {
        let writable = engine.audit_check();
        checks.check(&format!("audit {}", audit.display()), writable);
    }
    let accounts = client.list_accounts().await;
    checks.check("mixpanel list service accounts", listed(&accounts));
    if let Ok(accounts) = &accounts {
        own_expiry(&engine, accounts, clock.now(), &mut checks);
    }
    for i in &engine.policy().integrations {
        let seen = (me.as_ref().ok(), accounts.as_deref().ok());
        integration_checks(&engine, i, seen, accept_unexplained, &mut checks).await;
    }
    Ok(checks.finish(path, online, clock.now()))
}

/// The account listing, as a check.
fn listed(
    accounts: &Result<Vec<crate::mixpanel::ServiceAccount>, crate::mixpanel::MixpanelError>,
) -> Result<String, String> {
    accounts
        .as_ref()
        .map(|a| format!("{} service account(s) listed", a.len()))
        .map_err(|e| e.to_string())
}

/// Reads every secret the policy refers to (present, readable, not empty,
/// bounded), without printing any: the first run should not be the first
/// read. An error names the key, as policy errors do.
fn check_secrets(path: &std::path::Path, policy: &Policy, checks: &mut Checks) -> Result<(), Exit> {
    let refs = policy.secret_refs();
    let errors: Vec<_> = refs.iter().filter_map(|(key, r)| r.resolve(key).err()).collect();
    if errors.is_empty() {
        let detail = format!("{} reference(s) resolve (present, readable, not empty)", refs.len());
        if checks.json {
            checks.ok("secrets", &detail);
        } else {
            println!("secrets: {detail}");
        }
        return Ok(());
    }
    eprintln!("error: policy {}:", path.display());
    for e in &errors {
        eprintln!("  {e}");
    }
    Err(Exit::Usage)
}
