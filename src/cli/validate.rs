//! `validate`: the policy, its secrets and, with `--online`, Mixpanel, every
//! sink and each integration's readiness, as typed [`Check`]s printed as
//! they come or gathered into the JSON document.

use std::io::Write as _;

use super::setup::{engine, load_policy};
use crate::clock::SharedClock;
use crate::exit::Exit;
use crate::policy::Policy;
use crate::rotation::{Engine, Request};

/// How a check of `validate` came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CheckStatus {
    /// Passed.
    Ok,
    /// Not a failure, but something to act on soon.
    Warn,
    /// Failed: `validate` exits 1.
    Fail,
}

impl CheckStatus {
    /// The tag a text line starts with.
    fn tag(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        }
    }
}

/// One check of `validate`: what was checked, how it came out, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) status: CheckStatus,
    pub(crate) detail: String,
}

/// The checks of `validate`: printed as they come (text), or kept for the
/// JSON document.
struct Checks {
    failed: bool,
    json: bool,
    entries: Vec<Check>,
}

impl Checks {
    fn new(json: bool) -> Self {
        Self {
            failed: false,
            json,
            entries: vec![],
        }
    }

    fn record(&mut self, status: CheckStatus, what: &str, detail: &str) {
        self.failed |= status == CheckStatus::Fail;
        if self.json {
            self.entries.push(Check {
                name: what.to_string(),
                status,
                detail: detail.to_string(),
            });
        } else {
            println!("{}  {what}: {detail}", status.tag());
        }
    }

    /// Passed.
    fn ok(&mut self, what: &str, detail: &str) {
        self.record(CheckStatus::Ok, what, detail);
    }

    /// Not a failure, but something to act on soon.
    fn warn(&mut self, what: &str, detail: &str) {
        self.record(CheckStatus::Warn, what, detail);
    }

    /// Ok with its detail, or failed with its error.
    fn check<E: std::fmt::Display>(&mut self, what: &str, result: Result<String, E>) {
        match result {
            Ok(detail) => self.ok(what, &detail),
            Err(e) => self.record(CheckStatus::Fail, what, &e.to_string()),
        }
    }

    /// The JSON document (`docs/output.schema.json`), when asked for.
    fn finish(self, path: &std::path::Path, online: bool, at: chrono::DateTime<chrono::Utc>) -> Exit {
        if self.json {
            let doc = serde_json::json!({
                "version": 1,
                "command": "validate",
                "at": crate::text::rfc3339(at),
                "ok": !self.failed,
                "policy": path.display().to_string(),
                "online": online,
                "checks": self.entries,
            });
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut out, &doc);
            let _ = writeln!(out);
        }
        Exit::from_failure(self.failed)
    }
}

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

/// When the rotator's own account expires. With `[mixpanel.self]` the
/// rotator replaces it; without, a person must, in time (README, "The
/// rotator's own credential").
fn own_expiry(
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

/// `validate --online` for one integration: its sink and mirrors, its
/// explicit projects, whether a pass could rotate it.
async fn integration_checks(
    engine: &Engine,
    i: &crate::policy::Integration,
    (me, accounts): (Option<&crate::mixpanel::Me>, Option<&[crate::mixpanel::ServiceAccount]>),
    accept_unexplained: bool,
    checks: &mut Checks,
) {
    if let Some(sink) = engine.sink(&i.sink) {
        let health = sink.healthcheck(&i.path).await.map_err(|e| e.to_string());
        checks.check(&format!("{}: {}", i.name, sink.describe()), health);
    }
    for m in &i.mirrors {
        let Some(mirror) = engine.sink(&m.sink) else { continue };
        let health = mirror.healthcheck(&m.path).await.map_err(|e| e.to_string());
        checks.check(
            &format!("{}: mirror {} path `{}`", i.name, mirror.describe(), m.path),
            health,
        );
    }
    if let (Some(me), crate::policy::ProjectsSpec::Explicit(grants)) = (me, &i.projects) {
        checks.check(
            &format!("{}: projects", i.name),
            explicit_projects(engine.client(), me, i, grants),
        );
    }
    if let Some(accounts) = accounts {
        let (readiness, elsewhere) = readiness(engine, i, accounts).await;
        checks.check(&format!("{}: rotation readiness", i.name), readiness);
        let what = format!("{}: accounts other rotators may publish", i.name);
        for w in elsewhere {
            if accept_unexplained {
                checks.warn(&what, &w);
            } else {
                checks.check(
                    &what,
                    Err(format!(
                        "{w} (if they are this rotator's own leftovers: `validate --online --accept-unexplained`)"
                    )),
                );
            }
        }
    }
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

/// The rotator's own credential (`[mixpanel.self]`) must outlive a reboot:
/// once the seed is deleted, its payload is the only copy.
fn own_durable(policy: &Policy, checks: &mut Checks) {
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

/// Whether the rotator's own account may create and delete service accounts.
fn rotator_role(client: &crate::mixpanel::Client, me: &crate::mixpanel::Me, own: bool) -> Result<String, String> {
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

/// Whether every project an integration names exists and is visible to the
/// rotator's account (a rotation into an unseen project fails after create).
fn explicit_projects(
    client: &crate::mixpanel::Client,
    me: &crate::mixpanel::Me,
    i: &crate::policy::Integration,
    grants: &[crate::mixpanel::ProjectGrant],
) -> Result<String, String> {
    let visible = me.project_ids(client.organization_id());
    let unseen: Vec<String> = grants
        .iter()
        .filter(|g| !visible.contains(&g.id))
        .map(|g| g.id.to_string())
        .collect();
    if unseen.is_empty() {
        return Ok(format!("{} project(s), each visible to the rotator", grants.len()));
    }
    Err(format!(
        "`{}` names project(s) {} that do not exist in organization {} or are not visible to the rotator's account: fix the ids, or give the rotator's account access to them",
        i.key("projects"),
        unseen.join(", "),
        client.organization_id()
    ))
}

/// The regions the organization's projects are in, and where their calls go.
fn regions(client: &crate::mixpanel::Client, me: &crate::mixpanel::Me) -> Result<String, String> {
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

/// Whether a pass could work on `i`: the same observation and plan as a
/// pass; and the unexplained accounts it would delete that another
/// rotator may publish.
async fn readiness(
    engine: &Engine,
    i: &crate::policy::Integration,
    accounts: &[crate::mixpanel::ServiceAccount],
) -> (Result<String, String>, Vec<String>) {
    let obs = match engine.observe(i, accounts).await {
        Ok(o) => o,
        Err(e) => return (Err(e.message()), vec![]),
    };
    let plan = engine.decide(i, &obs, Request::default());
    let elsewhere = crate::rotation::engine::elsewhere_warnings(i, &obs, &plan, engine.now());
    let readiness = match plan.blocked {
        Some(b) => Err(b.to_string()),
        None if obs.published.is_some() => Ok("credential published".into()),
        None => Ok("nothing published yet; the first pass bootstraps it".into()),
    };
    (readiness, elsewhere)
}
