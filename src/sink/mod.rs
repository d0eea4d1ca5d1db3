//! Where credentials are published: one contract, one file per backend.
//!
//! A sink stores one [`Payload`] per integration path, and publishes with a
//! compare-and-swap against the [`Version`] read earlier: when someone else
//! published in between, `publish` fails with [`SinkErrorKind::Conflict`] and
//! the engine deletes its own new account.
//!
//! Adding a backend is one new file (its config struct with `check` and
//! `check_path`, and its [`Sink`] impl), one [`SinkConfig`] variant, and one
//! arm in each match below.
//!
//! Errors carry a kind and the backend's own words; the sink's name and the
//! path are added once, by the engine, when it reports them.

pub mod aws;
mod contract;
pub mod file;
pub mod place;
pub mod vault;

use std::sync::Arc;

use serde::Deserialize;

use crate::values::KeyError;

pub use self::contract::{Payload, RetiringAccount, Sink, SinkError, SinkErrorKind, Version};

/// `[sinks.NAME]`: one variant per backend, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    /// A JSON file per integration under `dir`.
    File(file::FileSinkConfig),
    /// HashiCorp Vault / OpenBao KV v2.
    Vault(vault::VaultSinkConfig),
    /// AWS Secrets Manager.
    AwsSecretsManager(aws::AwsSinkConfig),
}

impl SinkConfig {
    /// Checks a sink's own keys; the error names the key below `[sinks.NAME]`.
    pub fn check(&self) -> Result<(), KeyError> {
        match self {
            SinkConfig::File(c) => c.check(),
            SinkConfig::Vault(c) => c.check(),
            SinkConfig::AwsSecretsManager(c) => c.check(),
        }
    }

    /// Where `path` lands, whatever the sink is called, in one canonical
    /// spelling ([`place`]): two integrations must never share one (a second
    /// sink over the same directory, the same Vault mount, the same AWS
    /// account and region, is the same place, however it is written).
    pub fn location(&self, path: &str) -> String {
        match self {
            SinkConfig::File(c) => format!("file {}", place::file(&c.dir, path).display()),
            SinkConfig::Vault(c) => place::vault(&c.address, c.namespace.as_deref(), &c.mount, path),
            SinkConfig::AwsSecretsManager(c) => {
                place::aws(&c.region, c.endpoint_url.as_deref(), c.profile.as_deref(), path)
            }
        }
    }

    /// The sink's request timeout, if it has one.
    pub fn timeout(&self) -> Option<crate::values::HumanDuration> {
        match self {
            SinkConfig::File(_) => None,
            SinkConfig::Vault(c) => c.timeout,
            SinkConfig::AwsSecretsManager(c) => c.timeout,
        }
    }

    /// Checks an integration's `path` for this kind of sink.
    pub fn check_path(&self, path: &str) -> Result<(), String> {
        match self {
            SinkConfig::File(_) => file::FileSinkConfig::check_path(path),
            SinkConfig::Vault(_) => vault::VaultSinkConfig::check_path(path),
            SinkConfig::AwsSecretsManager(_) => aws::AwsSinkConfig::check_path(path),
        }
    }
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
