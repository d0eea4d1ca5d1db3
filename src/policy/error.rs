//! Errors of the policy: which key, what is wrong, and what to do.

use std::path::PathBuf;

use crate::values::KeyError;

/// An error in the policy: which key, what is wrong, and (in the message) what to do.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}{}", io_hint(source))]
    Io {
        /// The policy file.
        path: PathBuf,
        #[source]
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or an unknown key.
    #[error("`{key}`: {message}")]
    Parse {
        /// The key, as far as the parser knows it.
        key: String,
        /// What is wrong (never a value that could be a secret).
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error(transparent)]
    Invalid(#[from] KeyError),
    /// Several errors at once.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PolicyError>),
}

/// What to do when the policy cannot be read.
fn io_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "; name the policy with `--config PATH` (`-c PATH`) or the MIXPANEL_ROTATOR_CONFIG environment variable, or write one there (README, \"Using it with your organization\"; `mixpanel-rotator demo` needs none)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; run as a user that can read it (the service's user is a member of its group), or name another with `--config PATH`"
        }
        _ => "",
    }
}

impl PolicyError {
    pub(super) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
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
