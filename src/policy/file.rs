//! The policy file as written: the serde model of `version = 1`. Unknown
//! keys are errors; every user-facing field has its doc here, which is the
//! reference (README "Policy reference" repeats it for readers).
//!
//! The keys of `[defaults]` and the overrides of `[[integrations]]` are
//! declared once, in [`overridable!`], so their docs and types cannot drift
//! apart (`#[serde(flatten)]` would switch off `deny_unknown_fields`).

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::Duration;
use serde::Deserialize;
use serde::de::{self, SeqAccess, Visitor};

use crate::mixpanel::types::{ProjectGrant, Role};
use crate::sink::SinkConfig;
use crate::values::{HumanDuration, Schedule, SecretRef};

/// The policy file as written (after serde, before cross-checks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Format version; this build reads `1`.
    #[expect(
        dead_code,
        reason = "checked on the raw document, with its own message; declared so that unknown keys are refused"
    )]
    pub(crate) version: u32,
    /// Lineage prefix of every account this rotator creates (default `mpr`):
    /// 1-16 lowercase letters and digits; two rotators sharing an
    /// organization need different namespaces.
    #[serde(default = "default_namespace")]
    pub(crate) namespace: String,
    /// Namespaces this rotator used before `namespace` (after changing it):
    /// their lineage accounts are still this rotator's, so the ones the
    /// sinks publish or vouch for are rotated and retired as before, not
    /// left behind. New accounts always use `namespace`.
    #[serde(default)]
    pub(crate) previous_namespaces: Vec<String>,
    /// How to reach Mixpanel.
    pub(crate) mixpanel: MixpanelConfig,
    /// Settings every integration inherits.
    #[serde(default)]
    pub(crate) defaults: DefaultsConfig,
    /// Named places to publish credentials.
    #[serde(default)]
    pub(crate) sinks: BTreeMap<String, SinkConfig>,
    /// The managed integrations.
    #[serde(default)]
    pub(crate) integrations: Vec<IntegrationConfig>,
    /// The HTTP endpoints of `run` (metrics, health).
    #[serde(default)]
    pub(crate) server: ServerConfig,
    /// The scheduler of `run`.
    #[serde(default)]
    pub(crate) daemon: DaemonConfig,
    /// The audit trail.
    #[serde(default)]
    pub(crate) audit: AuditConfig,
}

fn default_namespace() -> String {
    "mpr".into()
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerConfig {
    /// Where `run` serves `/metrics`, `/healthz`, `/readyz`, `/startupz` and
    /// `POST /-/resync` (off when absent).
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// A bearer token `POST /-/resync` must carry (`{ file = ... }` or
    /// `{ env = ... }`); without it, whoever reaches the port may ask a
    /// re-read (harmless: at most one pass per 10 s, no rotation beyond the
    /// schedule).
    pub(crate) resync_token: Option<SecretRef>,
}

/// `[daemon]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DaemonConfig {
    /// How often `run` makes a full pass even when nothing is due, to notice
    /// changes made behind its back (default `10m`, at least `10s`).
    pub(crate) resync_interval: Option<HumanDuration>,
    /// Each instance waits a random part of this (fixed per process) after
    /// a rotation falls due, so that replicas sharing a primary do not all
    /// rotate at once: the later ones see the first one's publish (default
    /// `30s`, at most `1h`).
    pub(crate) spread: Option<HumanDuration>,
    /// How often `run` brings the integrations' `mirrors` up to date from
    /// their primaries, between passes: one primary read and one read per
    /// mirror, no Mixpanel call (default `1m`, from `5s` to `1h`).
    pub(crate) mirror_interval: Option<HumanDuration>,
    /// How long a pass or a mirror sync may go without finishing one
    /// integration before the daemon counts itself stuck: `/readyz` answers
    /// 503 and the systemd watchdog is no longer fed, so systemd restarts
    /// it (default `15m`, from `10s` to `1d`; longer than
    /// `mixpanel.verify_timeout` and every `on_rotate_timeout`).
    pub(crate) stall_timeout: Option<HumanDuration>,
}

/// `[audit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditConfig {
    /// Also append every audit event to this file, as JSON lines (mode 0600).
    pub(crate) path: Option<PathBuf>,
}

/// `[mixpanel]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MixpanelConfig {
    /// `us`, `eu` or `in` (exclusive with `base_url`).
    pub(crate) region: Option<Region>,
    /// The API base including `/api/app` (https; http only to a loopback host).
    pub(crate) base_url: Option<String>,
    /// The organization whose service accounts are managed.
    pub(crate) organization_id: u64,
    /// The rotator's own service account (organization admin or owner).
    pub(crate) username: String,
    /// Its secret, by reference.
    pub(crate) secret: SecretRef,
    /// Concurrent requests to the Mixpanel host (default 3, 1-32).
    #[serde(default = "default_max_concurrency")]
    pub(crate) max_concurrency: usize,
    /// Timeout of one HTTP request (default `30s`).
    #[serde(default = "default_timeout")]
    pub(crate) timeout: HumanDuration,
    /// The API base of each region, by the `domain` `GET /me` gives its
    /// projects, e.g. `{ "eu.mixpanel.com" = "https://proxy.internal/eu/api/app" }`.
    /// Project-scoped calls go to their project's region: with `region`, to
    /// `https://{domain}/api/app` for Mixpanel's own domains; with
    /// `base_url`, to `base_url` unless the domain is mapped here.
    #[serde(default)]
    pub(crate) region_urls: BTreeMap<String, String>,
    /// How long to keep trying a new credential (`GET /me` with it, with
    /// capped backoff) before giving up and deleting the new account
    /// (default `60s`, `1s` to `10m`; never more than half of `orphan_after`).
    #[serde(default = "default_verify_timeout")]
    pub(crate) verify_timeout: HumanDuration,
    /// `[mixpanel.self]`: the rotator rotates its own account too;
    /// `username` and `secret` above are then only the seed, used until the
    /// first self-rotation is published.
    #[serde(default, rename = "self")]
    pub(crate) own: Option<SelfConfig>,
}

/// `[mixpanel.self]`: where the rotator's own credential is published, and
/// its lifecycle. The same payload as an integration's, rotated by the same
/// steps (lineage `{namespace}-rotator-...`, organization role `admin`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelfConfig {
    /// Which `[sinks.NAME]` holds the rotator's own payload.
    pub(crate) sink: String,
    /// Its path there (its own: no integration or mirror may use it).
    pub(crate) path: String,
    /// Lifetime of each own account (default `30d`).
    pub(crate) ttl: Option<HumanDuration>,
    /// Rotate when the own account expires within this (default: a third of `ttl`).
    pub(crate) renew_before: Option<HumanDuration>,
    /// How long the previous own account keeps working (default `1h`); it is
    /// deleted after that once idle (its `last_used`), so another instance
    /// still using it is never cut off.
    pub(crate) grace: Option<HumanDuration>,
    /// Optional cron schedule (UTC) of routine self-rotations.
    pub(crate) schedule: Option<Schedule>,
    /// Delay added to a scheduled slot, up to this (default `0s`).
    pub(crate) jitter: Option<HumanDuration>,
    /// Age at which an unpublished own account is deleted (default `15m`).
    pub(crate) orphan_after: Option<HumanDuration>,
}

fn default_verify_timeout() -> HumanDuration {
    HumanDuration(Duration::seconds(60))
}

fn default_max_concurrency() -> usize {
    3
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::seconds(30))
}

/// Declares the keys of `[defaults]` once, and `[[integrations]]` as its own
/// keys plus the same overrides.
macro_rules! overridable {
    ($( $(#[$meta:meta])* $field:ident : $ty:ty, )*) => {
        /// `[defaults]`: every key can be overridden per integration.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct DefaultsConfig {
            $( $(#[$meta])* pub $field: Option<$ty>, )*
        }

        /// `[[integrations]]`: one consumer of a credential. Every key of
        /// `[defaults]` may be set here too, for this integration alone.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct IntegrationConfig {
            /// Unique name; part of every lineage username (1-32 lowercase
            /// letters, digits, single dashes).
            pub(crate) name: String,
            /// Which `[sinks.NAME]` receives the credential.
            pub(crate) sink: String,
            /// KV path, secret name or file name inside the sink.
            pub(crate) path: String,
            /// The account in use today (id, or username with or without
            /// Mixpanel's suffix), taken over when nothing is published yet.
            pub(crate) adopt: Option<AdoptRef>,
            /// A command run after each successful publish: an argv list, no shell.
            pub(crate) on_rotate: Option<Vec<String>>,
            /// Local copies of the credential (a pod's `emptyDir`, say):
            /// written from the primary (`sink` and `path`) after each
            /// publish and brought up to date at every pass. They are never
            /// read to decide anything.
            #[serde(default)]
            pub(crate) mirrors: Vec<MirrorConfig>,
            $( $(#[$meta])* pub $field: Option<$ty>, )*
        }

        impl IntegrationConfig {
            /// Whether it sets none of the keys of `[defaults]`.
            pub(crate) fn overrides_nothing(&self) -> bool {
                $( self.$field.is_none() && )* true
            }
        }
    };
}

overridable! {
    /// Organization role of new accounts (default `consumer`).
    role: Role,
    /// `"copy"` (default: the current or adopted account's individual
    /// grants) or an explicit list of project grants.
    projects: ProjectsSpec,
    /// Lifetime (`expires`) of each new account (default `30d`).
    ttl: HumanDuration,
    /// Rotate when the current account expires within this (default: a
    /// third of `ttl`); shorter than `ttl`.
    renew_before: HumanDuration,
    /// Optional standard 5-field cron schedule (UTC) of routine rotations.
    schedule: Schedule,
    /// Delay added to a scheduled slot, up to this, the same for a given
    /// integration and slot (default `0s`).
    jitter: HumanDuration,
    /// How long the old account keeps working after its successor is
    /// published (default `24h`); shorter than `ttl`.
    grace: HumanDuration,
    /// Age at which an unpublished lineage account is deleted (default
    /// `15m`, at least `1m`).
    orphan_after: HumanDuration,
    /// Drain-aware deletion: after `grace`, delete the old account only once
    /// its `last_used` has not advanced for this long (off by default).
    delete_when_idle: HumanDuration,
    /// With `delete_when_idle`: delete anyway this long after the successor
    /// was published (default `7d`); not shorter than `grace`.
    max_grace: HumanDuration,
    /// A webhook notified of rotations and failures.
    webhook: WebhookConfig,
    /// How long `on_rotate` may run before it is killed (default `30s`).
    on_rotate_timeout: HumanDuration,
}

/// `mirrors = [{ sink = "pod", path = "etl.json" }]`: one copy of an
/// integration's credential.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Which `[sinks.NAME]` holds the copy (usually a `file` sink).
    pub sink: String,
    /// File name, KV path or secret name inside that sink.
    pub path: String,
}

/// `webhook = { url = { env = "SLACK_WEBHOOK_URL" } }`: the URL is a secret
/// (a Slack incoming-webhook URL is a credential), so it is a reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL, by reference.
    pub(crate) url: SecretRef,
    /// Timeout of one POST (default `10s`).
    pub(crate) timeout: Option<HumanDuration>,
}

/// Which Mixpanel data-residency region's API host to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// `mixpanel.com`
    Us,
    /// `eu.mixpanel.com`
    Eu,
    /// `in.mixpanel.com`
    In,
}

impl Region {
    /// The API base URL of the region (including `/api/app`).
    pub(crate) fn base_url(self) -> &'static str {
        match self {
            Region::Us => "https://mixpanel.com/api/app",
            Region::Eu => "https://eu.mixpanel.com/api/app",
            Region::In => "https://in.mixpanel.com/api/app",
        }
    }
}

/// Where a new account's project memberships come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProjectsSpec {
    /// `"copy"`: the current (or adopted) account's individual grants.
    #[default]
    Copy,
    /// An explicit list, `[{ id = 456, role = "admin" }]`.
    Explicit(Vec<ProjectGrant>),
}

impl<'de> Deserialize<'de> for ProjectsSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProjectsSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"copy\" or a list of { id = N, role = \"...\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ProjectsSpec, E> {
                match s {
                    "copy" => Ok(ProjectsSpec::Copy),
                    other => Err(E::custom(format!(
                        "`{other}` is not a projects mode: write \"copy\" or a list such as [{{ id = 456, role = \"analyst\" }}]"
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProjectsSpec, A::Error> {
                let mut v = Vec::new();
                while let Some(g) = seq.next_element::<ProjectGrant>()? {
                    v.push(g);
                }
                Ok(ProjectsSpec::Explicit(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The account an integration takes over when nothing is published yet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "an account id (integer) or username (string)")]
pub enum AdoptRef {
    /// By id.
    Id(u64),
    /// By username (with or without Mixpanel's `.xxxx.mp-service-account` suffix).
    Username(String),
}

impl fmt::Display for AdoptRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdoptRef::Id(id) => write!(f, "{id}"),
            AdoptRef::Username(u) => write!(f, "{u}"),
        }
    }
}
