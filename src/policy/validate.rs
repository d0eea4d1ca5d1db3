//! Cross-checks of a parsed policy, and each integration's effective
//! settings. Every problem is collected (not just the first) and names its
//! key; where a value is inherited, the message says from where.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Duration;

use super::error::PolicyError;
use super::file::{
    AdoptRef, DaemonConfig, DefaultsConfig, IntegrationConfig, MixpanelConfig, PolicyConfig, ProjectsSpec, SelfConfig,
};
use super::model::{Integration, MixpanelSettings, Policy, SELF_LINEAGE, SELF_NAME, Settings};
use crate::mixpanel::types::{ProjectRole, Role};
use crate::sink::SinkConfig;
use crate::text::format_duration;
use crate::values::{HumanDuration, check_url};

/// Checks `c` and resolves it into a [`Policy`]: the integrations of `c`,
/// then the `more` ones (`count` in all, to size the list), each resolved as
/// it comes so that a large policy is never held twice.
pub(super) fn resolve(
    mut c: PolicyConfig,
    count: usize,
    more: impl Iterator<Item = IntegrationConfig>,
) -> Result<Policy, PolicyError> {
    let mut errs = Vec::new();
    check_namespace("namespace", &c.namespace, &mut errs);
    for (n, ns) in c.previous_namespaces.iter().enumerate() {
        let key = format!("previous_namespaces[{n}]");
        check_namespace(&key, ns, &mut errs);
        if *ns == c.namespace || c.previous_namespaces.iter().take(n).any(|x| x == ns) {
            errs.push(PolicyError::invalid(
                key,
                format!("`{ns}` is listed twice (or is `namespace` itself)"),
            ));
        }
    }
    let mixpanel = mixpanel_settings(&c.mixpanel, &mut errs);
    check_sinks(&c.sinks, &mut errs);
    let mut unique = Unique::default();
    let mut integrations = Vec::with_capacity(count.saturating_add(1));
    if let Some(own) = c.mixpanel.own.take() {
        unique.destination(
            "mixpanel.self.sink",
            "mixpanel.self.path",
            (&own.sink, &own.path),
            &c.sinks,
            &mut errs,
        );
        let webhook = c.defaults.webhook.clone();
        integrations.push(resolve_self(own, &c.mixpanel.username, webhook, &mut errs));
    }
    let mut inherited = None;
    for (index, ic) in std::mem::take(&mut c.integrations).into_iter().chain(more).enumerate() {
        unique.check(index, &ic, &c.sinks, &mut errs);
        integrations.push(resolve_integration(index, ic, &c.defaults, &mut inherited, &mut errs));
    }
    drop(unique);
    let mirror_interval = daemon_settings(&c.daemon, &integrations, &mut errs);
    let stall_timeout = stall_timeout(&c.daemon, &mixpanel, &integrations, &mut errs);
    if !errs.is_empty() {
        return Err(if errs.len() == 1 {
            errs.remove(0)
        } else {
            PolicyError::Many(errs)
        });
    }
    Ok(Policy {
        namespace: c.namespace,
        previous_namespaces: c.previous_namespaces,
        listen: c.server.listen,
        resync_token: c.server.resync_token,
        audit_path: c.audit.path,
        resync_interval: c.daemon.resync_interval.map(|d| d.0).unwrap_or(Duration::minutes(10)),
        spread: c.daemon.spread.map(|d| d.0).unwrap_or(Duration::seconds(30)),
        mirror_interval,
        stall_timeout,
        mixpanel,
        sinks: c.sinks,
        integrations,
    })
}

/// Each sink's own keys, and its timeout.
fn check_sinks(sinks: &BTreeMap<String, SinkConfig>, errs: &mut Vec<PolicyError>) {
    for (name, sink) in sinks {
        if let Err(e) = sink.backend().check() {
            errs.push(PolicyError::invalid(format!("sinks.{name}.{}", e.key), e.message));
        }
        if let Some(t) = sink.backend().timeout() {
            at_most(&format!("sinks.{name}.timeout"), t.0, MAX_REQUEST_TIMEOUT, errs);
        }
    }
}

/// `[daemon] stall_timeout`: longer than any one step may legitimately
/// take (verifying a new credential, an `on_rotate` hook).
fn stall_timeout(
    d: &DaemonConfig,
    m: &MixpanelSettings,
    integrations: &[Integration],
    errs: &mut Vec<PolicyError>,
) -> Duration {
    let stall = d.stall_timeout.map(|d| d.0).unwrap_or(Duration::minutes(15));
    if stall < Duration::seconds(10) {
        errs.push(PolicyError::invalid("daemon.stall_timeout", "must be at least `10s`"));
    }
    at_most("daemon.stall_timeout", stall, Duration::days(1), errs);
    let verify = Duration::from_std(m.verify_timeout).unwrap_or(Duration::MAX);
    let longest = integrations
        .iter()
        .filter(|i| i.on_rotate.is_some())
        .map(|i| (i.key("on_rotate_timeout"), i.on_rotate_timeout))
        .chain([("mixpanel.verify_timeout".to_string(), verify)])
        .filter(|(_, t)| *t >= stall)
        .max_by_key(|(_, t)| *t);
    if let Some((key, t)) = longest {
        errs.push(PolicyError::invalid(
            "daemon.stall_timeout",
            format!(
                "is {}, not longer than `{key}` ({}): a step that long would count as stuck and the daemon would be restarted in the middle of it; raise `daemon.stall_timeout`",
                format_duration(stall),
                format_duration(t)
            ),
        ));
    }
    stall
}

/// Checks `[daemon]`, and each mirrored integration's `grace` against its
/// mirror interval; returns the mirror interval.
fn daemon_settings(d: &DaemonConfig, integrations: &[Integration], errs: &mut Vec<PolicyError>) -> Duration {
    if let Some(r) = d.resync_interval {
        if r.0 < Duration::seconds(10) {
            errs.push(PolicyError::invalid("daemon.resync_interval", "must be at least `10s`"));
        }
        at_most("daemon.resync_interval", r.0, MAX_RESYNC, errs);
    }
    if let Some(s) = d.spread {
        at_most("daemon.spread", s.0, MAX_SPREAD, errs);
    }
    if let Some(m) = d.mirror_interval {
        if m.0 < Duration::seconds(5) {
            errs.push(PolicyError::invalid("daemon.mirror_interval", "must be at least `5s`"));
        }
        at_most("daemon.mirror_interval", m.0, MAX_SPREAD, errs);
    }
    let mirror_interval = d.mirror_interval.map(|d| d.0).unwrap_or(Duration::minutes(1));
    for i in integrations
        .iter()
        .filter(|i| !i.mirrors.is_empty() && i.grace < mirror_interval)
    {
        errs.push(PolicyError::invalid(
            i.key("grace"),
            format!(
                "is {}, shorter than `daemon.mirror_interval` ({}): a mirror in another replica could still hold the old credential when its account is deleted; raise `grace` or lower `daemon.mirror_interval`",
                format_duration(i.grace),
                format_duration(mirror_interval)
            ),
        ));
    }
    mirror_interval
}

/// Names are part of usernames: lowercase letters, digits, single inner dashes.
fn is_valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn check_namespace(key: &str, namespace: &str, errs: &mut Vec<PolicyError>) {
    if !is_valid_name(namespace, 16) || namespace.contains('-') {
        errs.push(PolicyError::invalid(
            key,
            format!(
                "is `{namespace}`: use 1 to 16 lowercase letters and digits (no `-`, so two namespaces can never produce the same username)"
            ),
        ));
    }
}

fn base_url(m: &MixpanelConfig, errs: &mut Vec<PolicyError>) -> String {
    let err = match (&m.region, &m.base_url) {
        (Some(r), None) => return r.base_url().to_string(),
        (None, Some(u)) => match check_url(u) {
            Ok(u) => return u,
            Err(msg) => PolicyError::invalid("mixpanel.base_url", msg),
        },
        (Some(_), Some(_)) => PolicyError::invalid("mixpanel.base_url", "and `mixpanel.region` are both set: keep one"),
        (None, None) => PolicyError::invalid(
            "mixpanel.region",
            "is required (`us`, `eu` or `in`), or set `mixpanel.base_url`",
        ),
    };
    errs.push(err);
    String::new()
}

fn mixpanel_settings(m: &MixpanelConfig, errs: &mut Vec<PolicyError>) -> MixpanelSettings {
    let base_url = base_url(m, errs);
    if m.organization_id == 0 {
        errs.push(PolicyError::invalid(
            "mixpanel.organization_id",
            "must be your organization's id (a positive integer)",
        ));
    }
    if m.username.trim().is_empty() {
        errs.push(PolicyError::invalid(
            "mixpanel.username",
            "must be the rotator's service account username",
        ));
    }
    if m.max_concurrency == 0 || m.max_concurrency > 32 {
        errs.push(PolicyError::invalid(
            "mixpanel.max_concurrency",
            "must be between 1 and 32",
        ));
    }
    if m.timeout.0 < Duration::seconds(1) {
        errs.push(PolicyError::invalid("mixpanel.timeout", "must be at least `1s`"));
    }
    at_most("mixpanel.timeout", m.timeout.0, MAX_REQUEST_TIMEOUT, errs);
    let mut urls = std::collections::BTreeMap::new();
    for (domain, url) in &m.region_urls {
        let key = format!("mixpanel.region_urls.\"{domain}\"");
        let d = domain.trim().to_ascii_lowercase();
        if d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
            errs.push(PolicyError::invalid(
                key.clone(),
                "must be keyed by a project domain as GET /me reports it, e.g. `eu.mixpanel.com`",
            ));
        }
        match check_url(url) {
            Ok(u) => {
                urls.insert(d, u);
            }
            Err(msg) => errs.push(PolicyError::invalid(key, msg)),
        }
    }
    if m.verify_timeout.0 < Duration::seconds(1) {
        errs.push(PolicyError::invalid("mixpanel.verify_timeout", "must be at least `1s`"));
    }
    at_most("mixpanel.verify_timeout", m.verify_timeout.0, MAX_REQUEST_TIMEOUT, errs);
    MixpanelSettings {
        verify_timeout: m.verify_timeout.to_std(),
        project_hosts: crate::mixpanel::ProjectHosts {
            regional: m.region.is_some(),
            urls,
        },
        base_url,
        organization_id: m.organization_id,
        username: m.username.clone(),
        secret: m.secret.clone(),
        max_concurrency: m.max_concurrency,
        timeout: m.timeout.to_std(),
    }
}

/// What must be unique across integrations: names, (sink, path), `adopt`s.
#[derive(Default)]
struct Unique {
    names: BTreeSet<String>,
    adopted: BTreeMap<String, usize>,
    /// Where each primary and mirror lands, and the key that put it there.
    destinations: BTreeMap<String, String>,
}

impl Unique {
    fn check(
        &mut self,
        i: usize,
        ic: &IntegrationConfig,
        sinks: &BTreeMap<String, SinkConfig>,
        errs: &mut Vec<PolicyError>,
    ) {
        let key = |f: &str| format!("integrations[{i}].{f}");
        if ic.name == SELF_LINEAGE {
            errs.push(PolicyError::invalid(
                key("name"),
                "`rotator` is reserved: it is the lineage of the rotator's own accounts (`[mixpanel.self]`); choose another name",
            ));
        } else if !is_valid_name(&ic.name, MAX_INTEGRATION_NAME) {
            errs.push(PolicyError::invalid(
                key("name"),
                format!("is `{}`: use 1 to {MAX_INTEGRATION_NAME} lowercase letters, digits and single dashes (it becomes part of account usernames)", ic.name),
            ));
        } else if !self.names.insert(ic.name.clone()) {
            errs.push(PolicyError::invalid(
                key("name"),
                format!("`{}` is used by another integration: names must be unique", ic.name),
            ));
        }
        self.destination(&key("sink"), &key("path"), (&ic.sink, &ic.path), sinks, errs);
        for (m, mirror) in ic.mirrors.iter().enumerate() {
            let mkey = |f: &str| format!("integrations[{i}].mirrors[{m}].{f}");
            self.destination(&mkey("sink"), &mkey("path"), (&mirror.sink, &mirror.path), sinks, errs);
        }
        if let Some(a) = &ic.adopt
            && let Some(j) = self.adopted.insert(a.to_string(), i)
        {
            errs.push(PolicyError::invalid(
                key("adopt"),
                format!("`{a}` is also adopted by `integrations[{j}]`"),
            ));
        }
    }

    /// Checks one place an integration writes its credential (its primary,
    /// or a mirror): the sink exists, the path suits it, and nothing else in
    /// the policy writes there.
    fn destination(
        &mut self,
        sink_key: &str,
        path_key: &str,
        (sink, path): (&str, &str),
        sinks: &BTreeMap<String, SinkConfig>,
        errs: &mut Vec<PolicyError>,
    ) {
        let Some(s) = sinks.get(sink) else {
            let defined = if sinks.is_empty() {
                "none".to_string()
            } else {
                sinks.keys().cloned().collect::<Vec<_>>().join(", ")
            };
            errs.push(PolicyError::invalid(
                sink_key,
                format!("is `{sink}`, but there is no `[sinks.{sink}]`; defined sinks: {defined}"),
            ));
            return;
        };
        let s = s.backend();
        if let Err(msg) = s.check_path(path) {
            errs.push(PolicyError::invalid(path_key, msg));
        }
        if let Some(other) = self.destinations.insert(s.location(path), path_key.to_string()) {
            errs.push(PolicyError::invalid(
                path_key,
                format!(
                    "is the same place as `{other}` (the same sink, or another sink over the same directory, mount or account): every primary and every mirror needs its own path"
                ),
            ));
        }
    }
}

/// The longest `ttl`: ten years. `renew_before` and `grace` are shorter than it.
pub(crate) const MAX_TTL: Duration = Duration::days(3650);

/// The longest integration name (bytes; it becomes part of account usernames).
pub(crate) const MAX_INTEGRATION_NAME: usize = 32;
/// The longest `orphan_after`.
pub(crate) const MAX_ORPHAN_AFTER: Duration = Duration::days(30);
/// The longest `jitter` of a schedule slot.
pub(crate) const MAX_JITTER: Duration = Duration::days(30);
/// The longest `delete_when_idle` and `max_grace`.
pub(crate) const MAX_DRAIN: Duration = Duration::days(365);
/// The longest `on_rotate_timeout`.
pub(crate) const MAX_HOOK_TIMEOUT: Duration = Duration::hours(1);
/// The longest timeout of one request (`mixpanel.timeout`, a webhook's, a sink's).
pub(crate) const MAX_REQUEST_TIMEOUT: Duration = Duration::minutes(10);
/// The longest `[daemon] spread` and `[daemon] mirror_interval`.
pub(crate) const MAX_SPREAD: Duration = Duration::hours(1);
/// The longest `[daemon] resync_interval`.
pub(crate) const MAX_RESYNC: Duration = Duration::days(30);

/// Every duration has an upper bound: beyond it the dates it makes are
/// meaningless (and would overflow the calendar).
fn at_most(key: &str, value: Duration, max: Duration, errs: &mut Vec<PolicyError>) {
    if value > max {
        errs.push(PolicyError::invalid(
            key,
            format!(
                "is {}: it may be at most `{}`",
                format_duration(value),
                format_duration(max)
            ),
        ));
    }
}

/// An effective duration and the key it came from (for messages).
struct Picked {
    value: Duration,
    from: String,
}

/// Picks an integration's own value, else the default's, else `fallback`.
fn pick(
    prefix: &str,
    own: Option<HumanDuration>,
    def: Option<HumanDuration>,
    field: &str,
    fallback: Duration,
) -> Picked {
    match (own, def) {
        (Some(v), _) => Picked {
            value: v.0,
            from: format!("{prefix}.{field}"),
        },
        (None, Some(v)) => Picked {
            value: v.0,
            from: format!("defaults.{field}"),
        },
        (None, None) => Picked {
            value: fallback,
            from: format!("{field} (default)"),
        },
    }
}

/// The effective durations of one integration.
struct Durations {
    ttl: Picked,
    renew_before: Picked,
    grace: Picked,
    orphan_after: Picked,
    jitter: Picked,
    max_grace: Picked,
    delete_when_idle: Option<Duration>,
    on_rotate_timeout: Picked,
}

impl Durations {
    fn pick(i: &str, ic: &IntegrationConfig, d: &DefaultsConfig) -> Self {
        let ttl = pick(i, ic.ttl, d.ttl, "ttl", Duration::days(30));
        let third = ttl.value.checked_div(3).unwrap_or_default();
        Self {
            renew_before: pick(i, ic.renew_before, d.renew_before, "renew_before", third),
            ttl,
            grace: pick(i, ic.grace, d.grace, "grace", Duration::hours(24)),
            orphan_after: pick(
                i,
                ic.orphan_after,
                d.orphan_after,
                "orphan_after",
                Duration::minutes(15),
            ),
            jitter: pick(i, ic.jitter, d.jitter, "jitter", Duration::zero()),
            max_grace: pick(i, ic.max_grace, d.max_grace, "max_grace", Duration::days(7)),
            delete_when_idle: ic.delete_when_idle.or(d.delete_when_idle).map(|d| d.0),
            on_rotate_timeout: pick(
                i,
                ic.on_rotate_timeout,
                d.on_rotate_timeout,
                "on_rotate_timeout",
                Duration::seconds(30),
            ),
        }
    }

    /// The settings of an integration with these durations.
    fn settings(
        &self,
        role: Role,
        projects: ProjectsSpec,
        schedule: Option<crate::values::Schedule>,
        webhook: Option<super::file::WebhookConfig>,
    ) -> Settings {
        Settings {
            role,
            projects,
            ttl: self.ttl.value,
            renew_before: self.renew_before.value,
            schedule,
            jitter: self.jitter.value,
            grace: self.grace.value,
            orphan_after: self.orphan_after.value,
            delete_when_idle: self.delete_when_idle,
            max_grace: self.max_grace.value,
            on_rotate_timeout: self.on_rotate_timeout.value,
            webhook,
        }
    }

    /// The relations between durations; `key` names the integration's keys.
    fn check(&self, key: &dyn Fn(&str) -> String, errs: &mut Vec<PolicyError>) {
        let (ttl, rb, grace) = (&self.ttl, &self.renew_before, &self.grace);
        let f = format_duration;
        if ttl.value < Duration::minutes(1) {
            errs.push(PolicyError::invalid(
                ttl.from.clone(),
                format!("is {}: must be at least `1m`", f(ttl.value)),
            ));
        }
        if ttl.value <= rb.value {
            errs.push(PolicyError::invalid(
                key("ttl"),
                format!(
                    "({}, from `{}`) must be longer than `renew_before` ({}, from `{}`), or every new account would be due for renewal at once",
                    f(ttl.value), ttl.from, f(rb.value), rb.from
                ),
            ));
        }
        if grace.value >= ttl.value {
            errs.push(PolicyError::invalid(
                key("grace"),
                format!(
                    "({}, from `{}`) must be shorter than `ttl` ({}, from `{}`): the old account would expire before its grace ends",
                    f(grace.value), grace.from, f(ttl.value), ttl.from
                ),
            ));
        }
        for p in [rb, grace, &self.orphan_after, &self.jitter] {
            if p.value < Duration::zero() {
                errs.push(PolicyError::invalid(p.from.clone(), "must not be negative"));
            }
        }
        for (p, max) in [
            (ttl, MAX_TTL),
            (&self.orphan_after, MAX_ORPHAN_AFTER),
            (&self.jitter, MAX_JITTER),
            (&self.max_grace, MAX_DRAIN),
            (&self.on_rotate_timeout, MAX_HOOK_TIMEOUT),
        ] {
            at_most(&p.from, p.value, max, errs);
        }
        if let Some(idle) = self.delete_when_idle {
            at_most(&key("delete_when_idle"), idle, MAX_DRAIN, errs);
        }
        if self.orphan_after.value < Duration::minutes(1) {
            errs.push(PolicyError::invalid(
                self.orphan_after.from.clone(),
                "must be at least `1m`, so a rotation in flight in another rotator is never mistaken for an orphan",
            ));
        }
        if self.delete_when_idle.is_some() && self.max_grace.value < grace.value {
            errs.push(PolicyError::invalid(
                self.max_grace.from.clone(),
                format!(
                    "({}) must not be shorter than `grace` ({}, from `{}`)",
                    f(self.max_grace.value),
                    f(grace.value),
                    grace.from
                ),
            ));
        }
    }
}

/// Why `owner` is refused for a service account.
const NO_OWNER: &str = "which Mixpanel does not allow for service accounts (a client whose tests run against the real API reports it): use `admin`";

fn check_projects(projects: Option<&ProjectsSpec>, key: &dyn Fn(&str) -> String, errs: &mut Vec<PolicyError>) {
    if let Some(ProjectsSpec::Explicit(list)) = projects {
        let mut seen = BTreeSet::new();
        for g in list {
            if !seen.insert(g.id) {
                errs.push(PolicyError::invalid(
                    key("projects"),
                    format!("lists project {} twice", g.id),
                ));
            }
            if g.role == ProjectRole::Owner {
                errs.push(PolicyError::invalid(
                    key("projects"),
                    format!("gives project {} the role `owner`, {NO_OWNER}", g.id),
                ));
            }
        }
    }
}

/// The checks of one integration's settings (each error names the key
/// the value came from); its effective durations and role.
fn check_integration(
    prefix: &str,
    ic: &IntegrationConfig,
    d: &DefaultsConfig,
    errs: &mut Vec<PolicyError>,
) -> (Durations, Role) {
    let key = |f: &str| format!("{prefix}.{f}");
    let t = Durations::pick(prefix, ic, d);
    t.check(&key, errs);
    check_projects(ic.projects.as_ref().or(d.projects.as_ref()), &key, errs);
    let role = ic.role.or(d.role).unwrap_or(Role::Consumer);
    if role == Role::Owner {
        let at = if ic.role.is_some() {
            key("role")
        } else {
            "defaults.role".into()
        };
        errs.push(PolicyError::invalid(at, format!("is `owner`, {NO_OWNER}")));
    }
    let webhook_key = if ic.webhook.is_some() {
        key("webhook.timeout")
    } else {
        "defaults.webhook.timeout".into()
    };
    if let Some(t) = ic.webhook.as_ref().or(d.webhook.as_ref()).and_then(|w| w.timeout) {
        at_most(&webhook_key, t.0, MAX_REQUEST_TIMEOUT, errs);
    }
    if let Some(argv) = &ic.on_rotate
        && argv.first().is_none_or(|a| a.is_empty())
    {
        errs.push(PolicyError::invalid(
            key("on_rotate"),
            "must name a command: an argv list such as [\"systemctl\", \"reload\", \"etl.service\"] (no shell)",
        ));
    }
    (t, role)
}

/// The rotator's own credential (`[mixpanel.self]`) as an integration:
/// organization role `admin`, memberships copied from the account in use
/// (the seed, `mixpanel.username`, adopted by the first self-rotation), and
/// drain-aware deletion of the previous account (`delete_when_idle` =
/// `grace`): an instance still using it is never cut off.
/// `[defaults] webhook` is told of its rotations and failures too.
fn resolve_self(
    own: SelfConfig,
    seed: &str,
    webhook: Option<super::file::WebhookConfig>,
    errs: &mut Vec<PolicyError>,
) -> Integration {
    let grace = own.grace.unwrap_or(HumanDuration(Duration::hours(1)));
    let ic = IntegrationConfig {
        name: SELF_NAME.to_string(),
        sink: own.sink,
        path: own.path,
        adopt: Some(AdoptRef::Username(seed.to_string())),
        on_rotate: None,
        mirrors: Vec::new(),
        role: Some(Role::Admin),
        projects: Some(ProjectsSpec::Copy),
        ttl: own.ttl,
        renew_before: own.renew_before,
        schedule: own.schedule,
        jitter: own.jitter,
        grace: Some(grace),
        orphan_after: own.orphan_after,
        delete_when_idle: Some(grace),
        max_grace: None,
        webhook: None,
        on_rotate_timeout: None,
    };
    let (t, role) = check_integration("mixpanel.self", &ic, &DefaultsConfig::default(), errs);
    let settings = Arc::new(t.settings(role, ProjectsSpec::Copy, ic.schedule, webhook));
    Integration {
        index: 0,
        name: ic.name,
        sink: ic.sink,
        path: ic.path,
        adopt: ic.adopt,
        on_rotate: None,
        mirrors: Vec::new(),
        settings,
        is_self: true,
    }
}

/// One integration resolved; `inherited` is the settings of those that
/// override nothing (made by the first of them, then shared).
fn resolve_integration(
    index: usize,
    ic: IntegrationConfig,
    d: &DefaultsConfig,
    inherited: &mut Option<Arc<Settings>>,
    errs: &mut Vec<PolicyError>,
) -> Integration {
    let prefix = format!("integrations[{index}]");
    let (t, role) = check_integration(&prefix, &ic, d, errs);
    let overrides_nothing = ic.overrides_nothing();
    let settings = match inherited {
        Some(shared) if overrides_nothing => shared.clone(),
        _ => {
            let own = Arc::new(t.settings(
                role,
                ic.projects.or_else(|| d.projects.clone()).unwrap_or_default(),
                ic.schedule.or_else(|| d.schedule.clone()),
                ic.webhook.or_else(|| d.webhook.clone()),
            ));
            if overrides_nothing {
                *inherited = Some(own.clone());
            }
            own
        }
    };
    Integration {
        index,
        name: ic.name,
        sink: ic.sink,
        path: ic.path,
        adopt: ic.adopt,
        on_rotate: ic.on_rotate,
        mirrors: ic.mirrors,
        settings,
        is_self: false,
    }
}
