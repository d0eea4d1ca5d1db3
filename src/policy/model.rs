//! The resolved policy: what the rest of the program reads, with every
//! default applied and every value checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::file::{AdoptRef, MirrorConfig, ProjectsSpec, WebhookConfig};
use crate::mixpanel::types::Role;
use crate::sink::SinkConfig;
use crate::values::{Schedule, SecretRef};

/// Where to reach Mixpanel, checked.
#[derive(Debug, Clone)]
pub struct MixpanelSettings {
    /// API base, without a trailing slash.
    pub base_url: String,
    pub(crate) organization_id: u64,
    pub(crate) username: String,
    /// `mixpanel.secret`: the rotator's own secret, by reference.
    pub secret: SecretRef,
    /// `mixpanel.max_concurrency`: requests in flight per API host.
    pub max_concurrency: usize,
    pub(crate) timeout: std::time::Duration,
    /// Where project-scoped calls go.
    pub(crate) project_hosts: crate::mixpanel::ProjectHosts,
    /// How long to keep trying a new credential.
    pub(crate) verify_timeout: std::time::Duration,
}

/// The name the rotator's own credential goes by (`[mixpanel.self]`): in
/// reports, metrics (`integration="(rotator)"`), the audit trail and its
/// payload. Not a valid integration name, so it can be no one else's.
pub const SELF_NAME: &str = "(rotator)";

/// The lineage of the rotator's own accounts: `{namespace}-rotator-...`
/// (`rotator` is therefore a reserved integration name).
pub(crate) const SELF_LINEAGE: &str = "rotator";

/// One integration with every default applied. Its inherited settings
/// ([`Settings`], read through `Deref`: `i.ttl`) are shared by every
/// integration that overrides none of them: a policy of 10,000 such
/// integrations holds one copy, not 10,000.
#[derive(Debug, Clone)]
pub struct Integration {
    /// Position in `[[integrations]]` (for error messages naming keys).
    pub(crate) index: usize,
    /// `name`: unique, part of every lineage username.
    pub name: String,
    /// `sink`: the `[sinks.NAME]` of the primary.
    pub sink: String,
    pub(crate) path: String,
    pub(crate) adopt: Option<AdoptRef>,
    pub(crate) on_rotate: Option<Vec<String>>,
    /// Copies of the credential written from the primary (`sink`, `path`).
    pub mirrors: Vec<MirrorConfig>,
    pub(crate) settings: Arc<Settings>,
    /// The rotator's own credential (`[mixpanel.self]`), not an integration.
    pub(crate) is_self: bool,
}

/// The keys of `[defaults]`, as one integration has them (its own value,
/// else the default's, else the built-in default).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `role`: the organization role of new accounts.
    pub role: Role,
    /// `projects`: the memberships of new accounts (a list, or copied).
    pub projects: ProjectsSpec,
    /// `ttl`: how long a new account lives.
    pub ttl: Duration,
    /// `renew_before`: rotate when the published account expires within this.
    pub renew_before: Duration,
    /// `schedule`: cron slots at which to rotate anyway.
    pub schedule: Option<Schedule>,
    /// `jitter`: a stable random delay added to each slot.
    pub jitter: Duration,
    /// `grace`: how long the previous account is kept after a rotation.
    pub grace: Duration,
    /// `orphan_after`: when an unpublished lineage account counts as a leftover.
    pub orphan_after: Duration,
    /// Drain-aware deletion (`None`: delete when `grace` ends).
    pub(crate) delete_when_idle: Option<Duration>,
    /// Hard cap of drain-aware deletion.
    pub(crate) max_grace: Duration,
    pub(crate) on_rotate_timeout: Duration,
    pub(crate) webhook: Option<WebhookConfig>,
}

impl std::ops::Deref for Integration {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl Integration {
    /// The policy key of one of this integration's fields.
    pub(crate) fn key(&self, field: &str) -> String {
        if self.is_self {
            return format!("mixpanel.self.{field}");
        }
        format!("integrations[{}].{field}", self.index)
    }

    /// Whether this is the rotator's own credential (`[mixpanel.self]`).
    pub fn is_self(&self) -> bool {
        self.is_self
    }

    /// The name in this integration's account usernames.
    pub(crate) fn lineage_name(&self) -> &str {
        if self.is_self { SELF_LINEAGE } else { &self.name }
    }

    /// The stable jitter of the schedule slot `slot`: the same integration and
    /// slot always get the same delay, within `[0, jitter)`.
    pub(crate) fn jitter_for(&self, slot: DateTime<Utc>) -> Duration {
        let span = self.jitter.num_seconds();
        if span <= 0 {
            return Duration::zero();
        }
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.name.bytes().chain(slot.timestamp().to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Duration::seconds(h.checked_rem(span.unsigned_abs()).unwrap_or(0) as i64)
    }
}

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace`: the first part of every lineage username.
    pub namespace: String,
    /// `previous_namespaces`: lineages that are still this rotator's.
    pub(crate) previous_namespaces: Vec<String>,
    /// `[server] listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// `[server] resync_token`.
    pub(crate) resync_token: Option<SecretRef>,
    /// `[daemon] resync_interval` (default 10 minutes).
    pub(crate) resync_interval: Duration,
    /// `[daemon] spread` (default 30 seconds).
    pub(crate) spread: Duration,
    /// `[daemon] mirror_interval` (default 1 minute).
    pub mirror_interval: Duration,
    /// `[daemon] stall_timeout` (default 15 minutes).
    pub(crate) stall_timeout: Duration,
    /// `[audit] path`.
    pub(crate) audit_path: Option<PathBuf>,
    /// `[mixpanel]`.
    pub mixpanel: MixpanelSettings,
    /// `[sinks.NAME]`, by name.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[[integrations]]`, in the policy's order.
    pub integrations: Vec<Integration>,
}

impl Policy {
    /// Every namespace whose lineage accounts are this rotator's: the
    /// current one first.
    pub(crate) fn lineage_namespaces(&self) -> Vec<String> {
        std::iter::once(self.namespace.clone())
            .chain(self.previous_namespaces.iter().cloned())
            .collect()
    }

    /// Every secret the policy refers to, with its key: the rotator's own
    /// secret, each sink's login material, each integration's webhook
    /// URL. For a preflight that reads each without printing it.
    pub(crate) fn secret_refs(&self) -> Vec<(String, SecretRef)> {
        let mut refs = vec![("mixpanel.secret".to_string(), self.mixpanel.secret.clone())];
        if let Some(t) = &self.resync_token {
            refs.push(("server.resync_token".to_string(), t.clone()));
        }
        for (name, sink) in &self.sinks {
            for (field, r) in sink.backend().secret_refs() {
                refs.push((format!("sinks.{name}.{field}"), r));
            }
        }
        for i in &self.integrations {
            if let Some(w) = &i.webhook {
                refs.push((i.key("webhook.url"), w.url.clone()));
            }
        }
        refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn jitter_is_stable_and_bounded() {
        let p = crate::policy::test_policy(
            "[[integrations]]\nname = \"etl\"\nsink = \"f\"\npath = \"etl.json\"\nadopt = 5\njitter = \"15m\"\n",
        );
        let i = &p.integrations[0];
        let slot = DateTime::parse_from_rfc3339("2026-11-30T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let j = i.jitter_for(slot);
        assert_eq!(j, i.jitter_for(slot));
        let mut distinct = BTreeSet::new();
        for k in 0..200 {
            let j = i.jitter_for(slot + Duration::days(7 * k));
            assert!(j >= Duration::zero() && j < Duration::minutes(15));
            distinct.insert(j);
        }
        assert!(distinct.len() > 50, "jitter should spread slots: {}", distinct.len());
    }

    /// Integrations that override nothing share one copy of their settings;
    /// one with an override has its own, with the override applied.
    #[test]
    fn settings_are_shared_by_integrations_that_override_nothing() {
        let p = crate::policy::test_policy(
            "[defaults]\nttl = \"20d\"\n\
             [[integrations]]\nname = \"a\"\nsink = \"f\"\npath = \"a.json\"\n\
             [[integrations]]\nname = \"b\"\nsink = \"f\"\npath = \"b.json\"\n\
             [[integrations]]\nname = \"c\"\nsink = \"f\"\npath = \"c.json\"\nttl = \"40d\"\n\
             [[integrations]]\nname = \"d\"\nsink = \"f\"\npath = \"d.json\"\n",
        );
        let [a, b, c, d] = &p.integrations[..] else {
            panic!("four integrations")
        };
        assert!(Arc::ptr_eq(&a.settings, &b.settings) && Arc::ptr_eq(&a.settings, &d.settings));
        assert!(!Arc::ptr_eq(&a.settings, &c.settings));
        assert_eq!(
            (a.ttl, d.ttl, c.ttl),
            (Duration::days(20), Duration::days(20), Duration::days(40))
        );
    }
}
