//! Where credentials are published: one contract, one file per backend.
//!
//! A sink stores one [`Payload`] per integration path, and publishes with a
//! compare-and-swap against the [`Version`] read earlier: when someone else
//! published in between, `publish` fails with [`SinkError::Conflict`] and the
//! engine deletes its own new account. Adding a backend is one new file, one
//! [`crate::policy::SinkConfig`] variant and one arm in [`build`].

pub mod aws;
pub mod file;
pub mod vault;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::mixpanel::types::ProjectGrant;
use crate::policy::SinkConfig;
use crate::secret::Secret;

/// A non-lineage account still to delete once `not_before` has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringAccount {
    pub id: u64,
    pub not_before: DateTime<Utc>,
}

/// What a sink stores: identical JSON in every sink. `username` + `secret`
/// are what a consumer uses for Basic auth; the rest is bookkeeping the
/// rotator reads back (it keeps no local state).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    pub username: String,
    #[serde(serialize_with = "crate::secret::serialize_exposed")]
    pub secret: Secret,
    pub service_account_id: u64,
    pub organization_id: u64,
    pub integration: String,
    pub expires: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
    pub rotated_at: DateTime<Utc>,
    pub rotation_id: String,
    pub previous_service_account_id: Option<u64>,
    #[serde(default)]
    pub projects: Vec<ProjectGrant>,
    #[serde(default)]
    pub retiring: Vec<RetiringAccount>,
}

impl Payload {
    /// The payload as JSON, in a buffer wiped on drop.
    pub fn to_json(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, SinkError> {
        let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(1024));
        serde_json::to_writer_pretty(&mut *buf, self)
            .map_err(|e| SinkError::Backend(format!("cannot encode the payload: {e}")))?;
        buf.push(b'\n');
        Ok(buf)
    }

    /// Parses a stored payload. The error never echoes the input.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SinkError> {
        serde_json::from_slice(bytes).map_err(|e| {
            SinkError::Corrupt(format!(
                "the stored payload is not a mixpanel-rotator payload (line {}, column {}: {})",
                e.line(),
                e.column(),
                e.classify_name()
            ))
        })
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// The version a payload was read at, for compare-and-swap. Opaque: each
/// sink decides what it holds (a KV version, a version id, a rotation id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version(pub String);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sink failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Someone else published since the version was read.
    #[error("compare-and-swap lost: {0}")]
    Conflict(String),
    /// What is stored is not a payload this rotator understands.
    #[error("{0}")]
    Corrupt(String),
    /// The backend refused or failed.
    #[error("{0}")]
    Backend(String),
}

/// The contract every sink implements. `path` is the integration's `path`.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// A short description for messages, e.g. `file sink "local" (/run/x)`.
    fn describe(&self) -> String;

    /// The published payload and its version, or `None` when nothing is published yet.
    async fn read_current(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError>;

    /// Publishes `payload` if the stored version is still `expected`
    /// (`None`: nothing may be stored yet). Returns the new version.
    async fn publish(&self, path: &str, payload: &Payload, expected: Option<&Version>) -> Result<Version, SinkError>;

    /// Whether the sink is reachable and writable for `path`.
    async fn healthcheck(&self, path: &str) -> Result<String, SinkError>;
}

/// Builds the sink named `name` from its configuration (the one place that
/// chooses a backend by type).
pub fn build(name: &str, config: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
    Ok(match config {
        SinkConfig::File(c) => Arc::new(file::FileSink::new(name, c.clone())),
        SinkConfig::Vault(c) => Arc::new(vault::VaultSink::new(name, c.clone())?),
        SinkConfig::AwsSecretsManager(c) => Arc::new(aws::AwsSink::new(name, c.clone())),
    })
}
