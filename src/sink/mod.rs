//! Where credentials are published: one contract, one file per backend.
//!
//! A sink stores one [`Payload`] per integration path, and publishes with a
//! compare-and-swap against the [`Version`] read earlier: when someone else
//! published in between, `publish` fails with [`SinkErrorKind::Conflict`] and
//! the engine deletes its own new account.
//!
//! A backend is one file: its configuration (`[sinks.NAME]` of its `type`)
//! implements [`Backend`] (check, location, secret references, build) and
//! its sink implements [`Sink`]. It is registered once, below: a variant of
//! [`SinkConfig`] and its arm in [`SinkConfig::backend`]. Nothing else in the
//! crate names a backend (docs/architecture.md, "Where to add a sink").
//!
//! Errors carry a kind and the backend's own words; the sink's name and the
//! path are added once, by the engine, when it reports them.

pub(crate) mod aws;
mod contract;
pub(crate) mod file;
#[cfg(feature = "testing")]
pub mod memory;
pub(crate) mod place;
pub mod vault;

use std::sync::Arc;

use serde::Deserialize;

pub use self::contract::{Backend, Payload, RetiringAccount, Sink, SinkError, SinkErrorKind, Version};

/// `[sinks.NAME]`: one variant per backend, chosen by `type`. The registry
/// of backends: a new one is a variant here and an arm in [`Self::backend`].
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    /// A JSON file per integration under `dir`.
    File(file::FileSinkConfig),
    /// HashiCorp Vault / OpenBao KV v2.
    Vault(vault::VaultSinkConfig),
    /// AWS Secrets Manager.
    AwsSecretsManager(aws::AwsSinkConfig),
    /// A store in the process's memory, for tests (the `testing` feature:
    /// never in a release or a plain build).
    #[cfg(feature = "testing")]
    Memory(memory::MemorySinkConfig),
}

impl SinkConfig {
    /// The backend's configuration, behind the one contract every backend keeps.
    pub fn backend(&self) -> &dyn Backend {
        match self {
            SinkConfig::File(c) => c,
            SinkConfig::Vault(c) => c,
            SinkConfig::AwsSecretsManager(c) => c,
            #[cfg(feature = "testing")]
            SinkConfig::Memory(c) => c,
        }
    }
}

/// Builds the sink named `name` from its configuration.
pub fn build(name: &str, config: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
    config.backend().build(name)
}
