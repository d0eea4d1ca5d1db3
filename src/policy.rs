//! The policy file: a typed TOML contract (`version = 1`) and its validation.
//!
//! Parsing happens in two steps: serde reads the file into the `*Config`
//! structs (unknown keys are errors, every error carries the key's path), then
//! [`Policy::from_config`] cross-checks the whole and resolves each
//! integration's effective settings (defaults overridden per integration).
//! Every error names the key, e.g. `` `integrations[1].ttl` ``.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

use crate::mixpanel::types::{ProjectGrant, Role};
use crate::secret::Secret;

/// Where the policy is read from when neither `--config` nor
/// `MIXPANEL_ROTATOR_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mixpanel-rotator/policy.toml";

/// An error in the policy: which key, what is wrong, and (in the message) what to do.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or an unknown key.
    #[error("`{key}`: {message}")]
    Parse { key: String, message: String },
    /// A value is well-formed but not acceptable.
    #[error("`{key}` {message}")]
    Invalid { key: String, message: String },
    /// Several errors at once.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PolicyError>),
}

impl PolicyError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Every individual error (flattening [`PolicyError::Many`]).
    pub fn all(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Many(v) => v.iter().flat_map(|e| e.all()).collect(),
            e => vec![e],
        }
    }
}

// ---------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------

/// A duration written as `30s`, `15m`, `24h`, `30d` (or a sum such as `1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `30s`, `15m`, `24h`, `30d`, `1h30m`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("`{s}` is not a duration: write a number and a unit, e.g. `30s`, `15m`, `24h`, `30d`");
        let s = s.trim();
        if s.is_empty() {
            return Err(err());
        }
        let mut total = Duration::zero();
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: i64 = digits.parse().map_err(|_| err())?;
            digits.clear();
            let unit = match c {
                's' => Duration::try_seconds(n),
                'm' => Duration::try_minutes(n),
                'h' => Duration::try_hours(n),
                'd' => Duration::try_days(n),
                _ => None,
            }
            .ok_or_else(err)?;
            total = total.checked_add(&unit).ok_or_else(err)?;
        }
        if !digits.is_empty() {
            return Err(err());
        }
        Ok(Self(total))
    }

    /// As a `std::time::Duration` (never negative).
    pub fn to_std(self) -> std::time::Duration {
        self.0.to_std().unwrap_or_default()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_duration(self.0))
    }
}

/// Formats a duration the way the policy writes it (`30d`, `1h30m`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.num_seconds();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
        secs = -secs;
    }
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(de::Error::custom)
    }
}

/// A standard 5-field cron expression (minute hour day-of-month month
/// day-of-week, POSIX weekdays: 0 or 7 = Sunday, 1 = Monday), evaluated in UTC.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl Schedule {
    /// Parses a 5-field cron line; seconds and years are rejected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let fields = s.split_whitespace().count();
        if !s.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "`{s}` has {fields} fields; write a standard 5-field cron line (minute hour day-of-month month day-of-week), e.g. `0 4 * * MON`"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(s)
            .map_err(|e| format!("`{s}` is not a valid cron line: {e}"))?;
        Ok(Self {
            text: s.to_string(),
            cron,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Schedule::parse(&s).map_err(de::Error::custom)
    }
}

/// A reference to a secret: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `{ env = "NAME" }`: the value of an environment variable of the rotator.
    Env(String),
    /// `{ file = "/path" }`: a file's contents (one trailing newline removed).
    File(PathBuf),
    /// `{ credential = "name" }`: a systemd credential, `$CREDENTIALS_DIRECTORY/name`
    /// (`LoadCredential=` / `SetCredentialEncrypted=` in the unit).
    Credential(String),
}

impl SecretRef {
    /// Reads the secret. `key` names the policy key in errors.
    pub fn resolve(&self, key: &str) -> Result<Secret, PolicyError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                PolicyError::invalid(key, format!("refers to environment variable `{name}`, which is not set: export it, or use {{ file = \"...\" }}"))
            })?,
            SecretRef::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    PolicyError::invalid(
                        key,
                        format!("refers to systemd credential `{name}`, but $CREDENTIALS_DIRECTORY is not set: load it with LoadCredential={name}:/path in the unit"),
                    )
                })?;
                let path = PathBuf::from(dir).join(name);
                std::fs::read_to_string(&path).map_err(|e| {
                    PolicyError::invalid(key, format!("refers to systemd credential `{name}` ({}), which cannot be read: {e}", path.display()))
                })?
            }
            SecretRef::File(path) => std::fs::read_to_string(path).map_err(|e| {
                PolicyError::invalid(key, format!("refers to file {}, which cannot be read: {e}", path.display()))
            })?,
        };
        let value = zeroize::Zeroizing::new(value);
        let trimmed = value.strip_suffix('\n').unwrap_or(&value);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(PolicyError::invalid(key, "refers to an empty secret"));
        }
        Ok(Secret::new(trimmed))
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a secret reference: { env = \"NAME\" }, { file = \"/path\" } or { credential = \"name\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(
                    "secrets are never written inline in the policy (it gets copied, committed and printed): \
                     use { env = \"NAME\" } or { file = \"/path/to/secret\" }",
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let mut out = None;
                while let Some(k) = map.next_key::<String>()? {
                    if out.is_some() {
                        return Err(de::Error::custom(
                            "a secret reference has exactly one key: `env`, `file` or `credential`",
                        ));
                    }
                    out = Some(match k.as_str() {
                        "env" => SecretRef::Env(map.next_value()?),
                        "file" => SecretRef::File(map.next_value()?),
                        "credential" => {
                            let name: String = map.next_value()?;
                            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                                return Err(de::Error::custom(format!("`{name}` is not a systemd credential name")));
                            }
                            SecretRef::Credential(name)
                        }
                        other => return Err(de::Error::unknown_field(other, &["env", "file", "credential"])),
                    });
                }
                out.ok_or_else(|| {
                    de::Error::custom("empty secret reference: use { env = \"NAME\" } or { file = \"/path\" }")
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Which Mixpanel data-residency region's API host to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Eu,
    In,
}

impl Region {
    /// The API base URL of the region (including `/api/app`).
    pub fn base_url(self) -> &'static str {
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

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

/// The policy file as written (after serde, before cross-checks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Format version; this build reads `1`.
    pub version: u32,
    /// Lineage prefix of every account this rotator creates (default `mpr`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How to reach Mixpanel.
    pub mixpanel: MixpanelConfig,
    /// Settings every integration inherits.
    #[serde(default)]
    pub defaults: DefaultsConfig,
    /// Named places to publish credentials.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// The managed integrations.
    #[serde(default)]
    pub integrations: Vec<IntegrationConfig>,
    /// The HTTP endpoints of `run` (metrics, health).
    #[serde(default)]
    pub server: ServerConfig,
    /// The scheduler of `run`.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where `run` serves `/metrics`, `/healthz`, `/readyz` (off when absent).
    pub listen: Option<std::net::SocketAddr>,
}

/// `[daemon]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// How often `run` makes a full pass even when nothing is due, to notice
    /// changes made behind its back (default `10m`).
    pub resync_interval: Option<HumanDuration>,
}

fn default_namespace() -> String {
    "mpr".into()
}

/// `[mixpanel]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixpanelConfig {
    /// `us`, `eu` or `in` (exclusive with `base_url`).
    pub region: Option<Region>,
    /// The API base including `/api/app` (https; http only to a loopback host).
    pub base_url: Option<String>,
    /// The organization whose service accounts are managed.
    pub organization_id: u64,
    /// The rotator's own service account (organization admin or owner).
    pub username: String,
    /// Its secret, by reference.
    pub secret: SecretRef,
    /// Concurrent requests to the Mixpanel host (default 3).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Timeout of one HTTP request (default `30s`).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_max_concurrency() -> usize {
    3
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::seconds(30))
}

/// `[defaults]`: every key can be overridden per integration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    /// Lifetime of each new account (default `30d`).
    pub ttl: Option<HumanDuration>,
    /// Rotate when the current account expires within this (default: a third of `ttl`).
    pub renew_before: Option<HumanDuration>,
    /// Optional cron schedule (UTC) of routine rotations.
    pub schedule: Option<Schedule>,
    /// Deterministic delay added to scheduled rotations, up to this (default `0s`).
    pub jitter: Option<HumanDuration>,
    /// How long the old account lives on after its successor is published (default `24h`).
    pub grace: Option<HumanDuration>,
    /// Age after which an unpublished lineage account is deleted (default `15m`).
    pub orphan_after: Option<HumanDuration>,
    /// Organization role of new accounts (default `consumer`).
    pub role: Option<Role>,
    /// `"copy"` (default) or an explicit list of project grants.
    pub projects: Option<ProjectsSpec>,
    /// Drain-aware deletion: after `grace`, delete the old account only once
    /// its `last_used` has not advanced for this long (off by default).
    pub delete_when_idle: Option<HumanDuration>,
    /// With `delete_when_idle`: delete anyway this long after the successor
    /// was published (default `7d`).
    pub max_grace: Option<HumanDuration>,
    /// A webhook notified of rotations and failures.
    pub webhook: Option<WebhookConfig>,
    /// Timeout of the `on_rotate` command (default `30s`).
    pub on_rotate_timeout: Option<HumanDuration>,
}

/// `webhook = { url = { env = "SLACK_WEBHOOK_URL" } }`: the URL is a secret
/// (a Slack incoming-webhook URL is a credential), so it is a reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: SecretRef,
    /// Timeout of one POST (default `10s`).
    pub timeout: Option<HumanDuration>,
}

/// `[audit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Also append every audit event to this file, as JSON lines (mode 0600).
    pub path: Option<PathBuf>,
}

/// `[sinks.NAME]`: one variant per backend, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    /// A JSON file per integration under `dir`.
    File(crate::sink::file::FileSinkConfig),
    /// HashiCorp Vault / OpenBao KV v2.
    Vault(crate::sink::vault::VaultSinkConfig),
    /// AWS Secrets Manager.
    AwsSecretsManager(crate::sink::aws::AwsSinkConfig),
}

impl SinkConfig {
    /// Checks a sink's own keys; returns the failing field and message.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self {
            SinkConfig::File(c) => c.check(),
            SinkConfig::Vault(c) => c.check(),
            SinkConfig::AwsSecretsManager(c) => c.check(),
        }
    }

    /// Checks an integration's `path` for this kind of sink.
    pub fn check_path(&self, path: &str) -> Result<(), String> {
        match self {
            SinkConfig::File(_) => crate::sink::file::FileSinkConfig::check_path(path),
            SinkConfig::Vault(_) => crate::sink::vault::VaultSinkConfig::check_path(path),
            SinkConfig::AwsSecretsManager(_) => crate::sink::aws::AwsSinkConfig::check_path(path),
        }
    }
}

/// `[[integrations]]`. The overridable keys repeat [`DefaultsConfig`]'s on
/// purpose: `#[serde(flatten)]` would switch off `deny_unknown_fields`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    /// Unique name; part of every lineage username.
    pub name: String,
    /// Which `[sinks.NAME]` receives the credential.
    pub sink: String,
    /// KV path, secret name or file name inside the sink.
    pub path: String,
    pub role: Option<Role>,
    pub projects: Option<ProjectsSpec>,
    /// Account to take over when nothing is published yet.
    pub adopt: Option<AdoptRef>,
    pub ttl: Option<HumanDuration>,
    pub renew_before: Option<HumanDuration>,
    pub schedule: Option<Schedule>,
    pub jitter: Option<HumanDuration>,
    pub grace: Option<HumanDuration>,
    pub orphan_after: Option<HumanDuration>,
    pub delete_when_idle: Option<HumanDuration>,
    pub max_grace: Option<HumanDuration>,
    /// A command run after each successful publish: an argv list, no shell.
    pub on_rotate: Option<Vec<String>>,
    pub on_rotate_timeout: Option<HumanDuration>,
    pub webhook: Option<WebhookConfig>,
}

// ---------------------------------------------------------------------------
// The checked policy
// ---------------------------------------------------------------------------

/// Where to reach Mixpanel, checked.
#[derive(Debug, Clone)]
pub struct MixpanelSettings {
    /// API base, without a trailing slash.
    pub base_url: String,
    pub organization_id: u64,
    pub username: String,
    pub secret: SecretRef,
    pub max_concurrency: usize,
    pub timeout: std::time::Duration,
}

/// One integration with every default applied.
#[derive(Debug, Clone)]
pub struct Integration {
    /// Position in `[[integrations]]` (for error messages naming keys).
    pub index: usize,
    pub name: String,
    pub sink: String,
    pub path: String,
    pub role: Role,
    pub projects: ProjectsSpec,
    pub adopt: Option<AdoptRef>,
    pub ttl: Duration,
    pub renew_before: Duration,
    pub schedule: Option<Schedule>,
    pub jitter: Duration,
    pub grace: Duration,
    pub orphan_after: Duration,
    /// Drain-aware deletion (`None`: delete when `grace` ends).
    pub delete_when_idle: Option<Duration>,
    /// Hard cap of drain-aware deletion.
    pub max_grace: Duration,
    pub on_rotate: Option<Vec<String>>,
    pub on_rotate_timeout: Duration,
    pub webhook: Option<WebhookConfig>,
}

impl Integration {
    /// The policy key of one of this integration's fields.
    pub fn key(&self, field: &str) -> String {
        format!("integrations[{}].{field}", self.index)
    }

    /// The stable jitter of the schedule slot `slot`: the same integration and
    /// slot always get the same delay, within `[0, jitter)`.
    pub fn jitter_for(&self, slot: DateTime<Utc>) -> Duration {
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
        Duration::seconds((h % span as u64) as i64)
    }
}

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub namespace: String,
    /// `[server] listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// `[daemon] resync_interval` (default 10 minutes).
    pub resync_interval: Duration,
    /// `[audit] path`.
    pub audit_path: Option<PathBuf>,
    pub mixpanel: MixpanelSettings,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub integrations: Vec<Integration>,
}

/// Which config file to read: `--config`, else `MIXPANEL_ROTATOR_CONFIG`, else the default.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("MIXPANEL_ROTATOR_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

fn is_valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Whether a URL host is a loopback address (plain http is allowed only there).
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Policy {
    /// Reads and checks the policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks policy text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        // Read `version` first, so that a future format gets a clear message
        // instead of a list of unknown keys.
        let table: toml::Table = toml::from_str(text).map_err(|e| PolicyError::Parse {
            key: "(file)".into(),
            message: format!("not valid TOML: {}", e.message()),
        })?;
        match table.get("version") {
            None => {
                return Err(PolicyError::invalid(
                    "version",
                    "is required: start the policy with `version = 1`",
                ));
            }
            Some(toml::Value::Integer(1)) => {}
            Some(other) => {
                return Err(PolicyError::invalid(
                    "version",
                    format!("is {other}, but this build of mixpanel-rotator reads policy version 1"),
                ));
            }
        }
        let de = toml::Deserializer::parse(text).map_err(|e| PolicyError::Parse {
            key: "(file)".into(),
            message: e.message().to_string(),
        })?;
        let config: PolicyConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            PolicyError::Parse {
                key,
                message: inner.message().to_string(),
            }
        })?;
        Self::from_config(config)
    }

    /// Cross-checks a parsed policy and resolves every integration.
    pub fn from_config(c: PolicyConfig) -> Result<Self, PolicyError> {
        let mut errs = Vec::new();

        if !is_valid_name(&c.namespace, 16) || c.namespace.contains('-') {
            errs.push(PolicyError::invalid(
                "namespace",
                format!(
                    "is `{}`: use 1 to 16 lowercase letters and digits (no `-`, so two namespaces can never produce the same username)",
                    c.namespace
                ),
            ));
        }

        // [mixpanel]
        let m = &c.mixpanel;
        let base_url = match (&m.region, &m.base_url) {
            (Some(_), Some(_)) => {
                errs.push(PolicyError::invalid(
                    "mixpanel.base_url",
                    "and `mixpanel.region` are both set: keep one",
                ));
                String::new()
            }
            (None, None) => {
                errs.push(PolicyError::invalid(
                    "mixpanel.region",
                    "is required (`us`, `eu` or `in`), or set `mixpanel.base_url`",
                ));
                String::new()
            }
            (Some(r), None) => r.base_url().to_string(),
            (None, Some(u)) => match check_url(u) {
                Ok(u) => u,
                Err(msg) => {
                    errs.push(PolicyError::invalid("mixpanel.base_url", msg));
                    String::new()
                }
            },
        };
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

        // [sinks]
        for (name, sink) in &c.sinks {
            if let Err((field, msg)) = sink.check() {
                errs.push(PolicyError::invalid(format!("sinks.{name}.{field}"), msg));
            }
        }

        // [[integrations]]
        let d = &c.defaults;
        let mut names = BTreeSet::new();
        let mut adopted: BTreeMap<String, usize> = BTreeMap::new();
        let mut destinations: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut integrations = Vec::new();
        for (i, ic) in c.integrations.iter().enumerate() {
            let key = |f: &str| format!("integrations[{i}].{f}");
            if !is_valid_name(&ic.name, 32) {
                errs.push(PolicyError::invalid(
                    key("name"),
                    format!("is `{}`: use 1 to 32 lowercase letters, digits and single dashes (it becomes part of account usernames)", ic.name),
                ));
            } else if !names.insert(ic.name.clone()) {
                errs.push(PolicyError::invalid(
                    key("name"),
                    format!("`{}` is used by another integration: names must be unique", ic.name),
                ));
            }
            match c.sinks.get(&ic.sink) {
                None => errs.push(PolicyError::invalid(
                    key("sink"),
                    format!(
                        "is `{}`, but there is no `[sinks.{}]`; defined sinks: {}",
                        ic.sink,
                        ic.sink,
                        if c.sinks.is_empty() {
                            "none".to_string()
                        } else {
                            c.sinks.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    ),
                )),
                Some(s) => {
                    if let Err(msg) = s.check_path(&ic.path) {
                        errs.push(PolicyError::invalid(key("path"), msg));
                    }
                    if let Some(j) = destinations.insert((ic.sink.clone(), ic.path.clone()), i) {
                        errs.push(PolicyError::invalid(key("path"), format!("is also used by `integrations[{j}]` in the same sink: each integration needs its own path")));
                    }
                }
            }
            if let Some(a) = &ic.adopt
                && let Some(j) = adopted.insert(a.to_string(), i)
            {
                errs.push(PolicyError::invalid(
                    key("adopt"),
                    format!("`{a}` is also adopted by `integrations[{j}]`"),
                ));
            }

            // Effective values and where they came from, for messages.
            let pick = |own: Option<HumanDuration>,
                        def: Option<HumanDuration>,
                        field: &str,
                        fallback: Duration|
             -> (Duration, String) {
                match (own, def) {
                    (Some(v), _) => (v.0, key(field)),
                    (None, Some(v)) => (v.0, format!("defaults.{field}")),
                    (None, None) => (fallback, format!("{field} (default)")),
                }
            };
            let (ttl, ttl_key) = pick(ic.ttl, d.ttl, "ttl", Duration::days(30));
            let (renew_before, rb_key) = pick(ic.renew_before, d.renew_before, "renew_before", ttl / 3);
            let (grace, grace_key) = pick(ic.grace, d.grace, "grace", Duration::hours(24));
            let (orphan_after, oa_key) = pick(ic.orphan_after, d.orphan_after, "orphan_after", Duration::minutes(15));
            let (jitter, jitter_key) = pick(ic.jitter, d.jitter, "jitter", Duration::zero());
            let schedule = ic.schedule.clone().or_else(|| d.schedule.clone());

            if ttl < Duration::minutes(1) {
                errs.push(PolicyError::invalid(
                    ttl_key.clone(),
                    format!("is {}: must be at least `1m`", format_duration(ttl)),
                ));
            }
            if ttl <= renew_before {
                errs.push(PolicyError::invalid(
                    key("ttl"),
                    format!(
                        "({}, from `{ttl_key}`) must be longer than `renew_before` ({}, from `{rb_key}`), or every new account would be due for renewal at once",
                        format_duration(ttl),
                        format_duration(renew_before)
                    ),
                ));
            }
            if grace >= ttl {
                errs.push(PolicyError::invalid(
                    key("grace"),
                    format!(
                        "({}, from `{grace_key}`) must be shorter than `ttl` ({}, from `{ttl_key}`): the old account would expire before its grace ends",
                        format_duration(grace),
                        format_duration(ttl)
                    ),
                ));
            }
            for (v, k) in [
                (renew_before, &rb_key),
                (grace, &grace_key),
                (orphan_after, &oa_key),
                (jitter, &jitter_key),
            ] {
                if v < Duration::zero() {
                    errs.push(PolicyError::invalid(k.clone(), "must not be negative"));
                }
            }
            if orphan_after < Duration::minutes(1) {
                errs.push(PolicyError::invalid(
                    oa_key.clone(),
                    "must be at least `1m`, so a rotation in flight in another rotator is never mistaken for an orphan",
                ));
            }
            let projects = ic.projects.clone().or_else(|| d.projects.clone()).unwrap_or_default();
            if let ProjectsSpec::Explicit(list) = &projects {
                let mut seen = BTreeSet::new();
                for g in list {
                    if !seen.insert(g.id) {
                        errs.push(PolicyError::invalid(
                            key("projects"),
                            format!("lists project {} twice", g.id),
                        ));
                    }
                }
            }
            let delete_when_idle = ic.delete_when_idle.or(d.delete_when_idle).map(|d| d.0);
            let (max_grace, mg_key) = pick(ic.max_grace, d.max_grace, "max_grace", Duration::days(7));
            if delete_when_idle.is_some() && max_grace < grace {
                errs.push(PolicyError::invalid(
                    mg_key,
                    format!(
                        "({}) must not be shorter than `grace` ({}, from `{grace_key}`)",
                        format_duration(max_grace),
                        format_duration(grace)
                    ),
                ));
            }
            if let Some(argv) = &ic.on_rotate
                && argv.first().is_none_or(|a| a.is_empty())
            {
                errs.push(PolicyError::invalid(
                    key("on_rotate"),
                    "must name a command: an argv list such as [\"systemctl\", \"reload\", \"etl.service\"] (no shell)",
                ));
            }
            let (on_rotate_timeout, _) = pick(
                ic.on_rotate_timeout,
                d.on_rotate_timeout,
                "on_rotate_timeout",
                Duration::seconds(30),
            );
            integrations.push(Integration {
                index: i,
                name: ic.name.clone(),
                sink: ic.sink.clone(),
                path: ic.path.clone(),
                role: ic.role.or(d.role).unwrap_or(Role::Consumer),
                projects,
                adopt: ic.adopt.clone(),
                ttl,
                renew_before,
                schedule,
                jitter,
                grace,
                orphan_after,
                delete_when_idle,
                max_grace,
                on_rotate: ic.on_rotate.clone(),
                on_rotate_timeout,
                webhook: ic.webhook.clone().or_else(|| d.webhook.clone()),
            });
        }

        if let Some(r) = c.daemon.resync_interval
            && r.0 < Duration::seconds(10)
        {
            errs.push(PolicyError::invalid("daemon.resync_interval", "must be at least `10s`"));
        }
        if !errs.is_empty() {
            return Err(if errs.len() == 1 {
                errs.remove(0)
            } else {
                PolicyError::Many(errs)
            });
        }
        Ok(Policy {
            namespace: c.namespace,
            listen: c.server.listen,
            audit_path: c.audit.path.clone(),
            resync_interval: c.daemon.resync_interval.map(|d| d.0).unwrap_or(Duration::minutes(10)),
            mixpanel: MixpanelSettings {
                base_url,
                organization_id: m.organization_id,
                username: m.username.clone(),
                secret: m.secret.clone(),
                max_concurrency: m.max_concurrency,
                timeout: m.timeout.to_std(),
            },
            sinks: c.sinks,
            integrations,
        })
    }

    /// The integration called `name`.
    pub fn integration(&self, name: &str) -> Option<&Integration> {
        self.integrations.iter().find(|i| i.name == name)
    }
}

/// Checks a service URL: https, or plain http only to a loopback host; returns it without a trailing slash.
pub fn check_url(u: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("`{u}` is not a URL: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => {
            return Err(format!(
                "`{u}` uses plain http to a non-loopback host: secrets would cross the network in clear; use https"
            ));
        }
        s => return Err(format!("`{u}` has scheme `{s}`: use https")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{u}` must not have a query or fragment"));
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// A policy for unit tests: a US organization, a file sink `f`, and `integrations`.
#[cfg(test)]
pub(crate) fn test_policy(integrations: &str) -> Policy {
    let text = format!(
        "version = 1\n[mixpanel]\nregion = \"us\"\norganization_id = 1\nusername = \"u\"\nsecret = {{ env = \"X\" }}\n\
         [sinks.f]\ntype = \"file\"\ndir = \"/tmp\"\n{integrations}"
    );
    match Policy::parse(&text) {
        Ok(p) => p,
        Err(e) => panic!("test policy: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(HumanDuration::parse("30s").map(|d| d.0), Ok(Duration::seconds(30)));
        assert_eq!(HumanDuration::parse("15m").map(|d| d.0), Ok(Duration::minutes(15)));
        assert_eq!(HumanDuration::parse("24h").map(|d| d.0), Ok(Duration::hours(24)));
        assert_eq!(HumanDuration::parse("30d").map(|d| d.0), Ok(Duration::days(30)));
        assert_eq!(HumanDuration::parse("1h30m").map(|d| d.0), Ok(Duration::minutes(90)));
        for bad in ["", "30", "d", "3x", "1.5h", "-1h", "h30"] {
            assert!(HumanDuration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::minutes(90)), "1h30m");
        assert_eq!(format_duration(Duration::days(30)), "30d");
    }

    #[test]
    fn schedule_is_standard_five_field_cron() {
        let s = Schedule::parse("0 4 * * MON").unwrap();
        // 2026-11-28 is a Saturday; the next Monday is 2026-11-30.
        let t = DateTime::parse_from_rfc3339("2026-11-28T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(s.next_after(t).unwrap().to_rfc3339(), "2026-11-30T04:00:00+00:00");
        // POSIX numbering: 1 is Monday too.
        let s1 = Schedule::parse("0 4 * * 1").unwrap();
        assert_eq!(s1.next_after(t), s.next_after(t));
        assert!(Schedule::parse("0 0 4 * * MON").is_err(), "seconds are rejected");
        assert!(Schedule::parse("0 4 * *").is_err());
        assert!(Schedule::parse("61 4 * * *").is_err());
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let p = test_policy(
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
}
