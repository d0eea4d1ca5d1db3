//! The policy: a typed TOML contract (`version = 1`), its validation, and
//! the resolved model the rest of the program reads.
//!
//! - [`file`]: the file as written (serde; unknown keys are errors, every
//!   error carries the key's path);
//! - [`validate`]: the cross-checks, and each integration's effective
//!   settings (defaults overridden per integration);
//! - this module: the resolved [`Policy`] and [`Integration`], and loading.
//!
//! Every error names the key, e.g. `` `integrations[1].ttl` ``.

pub mod file;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};

pub use self::file::{AdoptRef, PolicyConfig, ProjectsSpec, Region, WebhookConfig};
use crate::mixpanel::types::Role;
use crate::sink::SinkConfig;
use crate::values::{KeyError, Schedule, SecretRef};

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
    #[error(transparent)]
    Invalid(#[from] KeyError),
    /// Several errors at once.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PolicyError>),
}

impl PolicyError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(KeyError::new(key, message))
    }

    /// Every individual error (flattening [`PolicyError::Many`]).
    pub fn all(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Many(v) => v.iter().flat_map(|e| e.all()).collect(),
            e => vec![e],
        }
    }
}

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
        check_version(text)?;
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
        validate::resolve(c)
    }

    /// The integration called `name`.
    pub fn integration(&self, name: &str) -> Option<&Integration> {
        self.integrations.iter().find(|i| i.name == name)
    }
}

/// Reads `version` first, so that a future format gets a clear message
/// instead of a list of unknown keys.
fn check_version(text: &str) -> Result<(), PolicyError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| PolicyError::Parse {
        key: "(file)".into(),
        message: format!("not valid TOML: {}", e.message()),
    })?;
    match table.get("version") {
        None => Err(PolicyError::invalid(
            "version",
            "is required: start the policy with `version = 1`",
        )),
        Some(toml::Value::Integer(1)) => Ok(()),
        Some(other) => Err(PolicyError::invalid(
            "version",
            format!("is {other}, but this build of mixpanel-rotator reads policy version 1"),
        )),
    }
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
    use std::collections::BTreeSet;

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
