//! The contract every sink implements ([`Sink`]), what it stores
//! ([`Payload`]), and how it fails ([`SinkError`]): the part of a sink that
//! does not depend on any backend.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::mixpanel::types::ProjectGrant;
use crate::secret::Secret;
use crate::values::{HumanDuration, Invalid, KeyError, SecretRef};

/// A non-lineage account still to delete once `not_before` has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringAccount {
    /// The account.
    pub id: u64,
    /// When it may be deleted.
    pub not_before: DateTime<Utc>,
}

/// What a sink stores: identical JSON in every sink. `username` + `secret`
/// are what a consumer uses for Basic auth; the rest is bookkeeping the
/// rotator reads back (it keeps no local state).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    /// The account's username (Basic auth).
    pub username: String,
    #[serde(serialize_with = "crate::secret::serialize_exposed")]
    /// Its secret (Basic auth); serialized as is, only into a sink.
    pub secret: Secret,
    /// The account's id.
    pub service_account_id: u64,
    /// The organization it belongs to.
    pub organization_id: u64,
    /// The integration that published it.
    pub integration: String,
    /// When the account expires.
    pub expires: Option<DateTime<Utc>>,
    /// When the account was created.
    pub created: DateTime<Utc>,
    /// When it was published.
    pub rotated_at: DateTime<Utc>,
    /// The rotation that published it.
    pub rotation_id: String,
    /// The account it replaced (kept for `grace`).
    pub previous_service_account_id: Option<u64>,
    #[serde(default)]
    /// The memberships it was given.
    pub projects: Vec<ProjectGrant>,
    #[serde(default)]
    /// Other accounts still to delete (an adopted one, say).
    pub retiring: Vec<RetiringAccount>,
}

impl Payload {
    /// Whether this is the payload of `integration` in `organization_id`
    /// (a place may hold another's: two spellings of one place, a second
    /// policy): only then may it be acted on, copied or removed.
    pub(crate) fn is_of(&self, integration: &str, organization_id: u64) -> bool {
        self.integration == integration && self.organization_id == organization_id
    }

    /// The payload as JSON, in a buffer wiped on drop.
    pub(crate) fn to_json(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, SinkError> {
        let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(1024));
        serde_json::to_writer_pretty(&mut *buf, self)
            .map_err(|e| SinkError::invalid(format!("cannot encode the payload: {e}")))?;
        buf.push(b'\n');
        Ok(buf)
    }

    /// Parses a stored payload. The error never echoes the input.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, SinkError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let e = e.into_inner();
            // Never the serde text itself: it may quote a stored value (a secret).
            let what = match e.classify() {
                serde_json::error::Category::Io => "I/O error".to_string(),
                serde_json::error::Category::Syntax => "not JSON".to_string(),
                serde_json::error::Category::Eof => "truncated".to_string(),
                serde_json::error::Category::Data => match e.to_string().strip_prefix("missing field `") {
                    Some(rest) => format!("no field `{}`", rest.split('`').next().unwrap_or_default()),
                    None if field != "." => format!("field `{field}` has the wrong type or value"),
                    None => "not a JSON object of the payload's fields".to_string(),
                },
            };
            SinkError::corrupt(format!(
                "the stored value is not a mixpanel-rotator payload (line {}, column {}: {what}): this place holds something else; give the integration a `path` of its own (or remove what is there if it is a leftover); to take over an account already in use, name it in `adopt`",
                e.line(),
                e.column()
            ))
        })
    }
}

/// The version a payload was read at, for compare-and-swap. Opaque: each
/// sink decides what it holds (a KV version, a version id, a rotation id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version(pub String);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of failure a sink reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkErrorKind {
    /// Someone else published since the version was read.
    Conflict,
    /// Something the operation needs does not exist (a mount, a secret).
    NotFound,
    /// The backend refused the rotator's identity or permissions.
    Denied,
    /// The backend could not be reached or failed; trying again may work.
    Unavailable,
    /// What is stored is not a payload this rotator understands.
    Corrupt,
    /// The request or the configuration is wrong (a bad CA file, a bad path).
    Invalid,
}

impl SinkErrorKind {
    /// The kind as a stable snake_case word (the last part of an error's
    /// code in `-o json`: `publish.sink.conflict`).
    pub fn code(self) -> &'static str {
        match self {
            SinkErrorKind::Conflict => "conflict",
            SinkErrorKind::NotFound => "not_found",
            SinkErrorKind::Denied => "denied",
            SinkErrorKind::Unavailable => "unavailable",
            SinkErrorKind::Corrupt => "corrupt",
            SinkErrorKind::Invalid => "invalid",
        }
    }

    /// Every kind.
    pub const ALL: [SinkErrorKind; 6] = [
        SinkErrorKind::Conflict,
        SinkErrorKind::NotFound,
        SinkErrorKind::Denied,
        SinkErrorKind::Unavailable,
        SinkErrorKind::Corrupt,
        SinkErrorKind::Invalid,
    ];
}

/// A sink failure: its kind and the backend's words (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SinkError {
    /// What kind of failure.
    pub kind: SinkErrorKind,
    pub(crate) detail: String,
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SinkErrorKind::Conflict => write!(f, "another rotator published first ({})", self.detail),
            _ => f.write_str(&self.detail),
        }
    }
}

impl SinkError {
    fn new(kind: SinkErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// [`SinkErrorKind::Conflict`].
    pub(crate) fn conflict(detail: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Conflict, detail)
    }

    /// [`SinkErrorKind::NotFound`].
    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::NotFound, detail)
    }

    /// [`SinkErrorKind::Denied`].
    pub(crate) fn denied(detail: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Denied, detail)
    }

    /// [`SinkErrorKind::Unavailable`].
    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Unavailable, detail)
    }

    /// [`SinkErrorKind::Corrupt`].
    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Corrupt, detail)
    }

    /// [`SinkErrorKind::Invalid`].
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Invalid, detail)
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        self.kind == SinkErrorKind::Unavailable
    }

    /// The same error with `context` in front of its detail.
    pub(crate) fn context(self, context: impl fmt::Display) -> Self {
        Self {
            kind: self.kind,
            detail: format!("{context}: {}", self.detail),
        }
    }
}

/// The configuration side of a backend (`[sinks.NAME]` of its `type`):
/// what the policy checks at load, and what builds the [`Sink`]. Each
/// backend's configuration implements it in the backend's own file; the
/// backend is registered once, as a variant of `SinkConfig` (in `sink/mod.rs`).
pub trait Backend: fmt::Debug + Send + Sync {
    /// Checks the sink's own keys; the error names the key below `[sinks.NAME]`.
    fn check(&self) -> Result<(), KeyError>;

    /// Checks an integration's `path` for this kind of sink (the caller
    /// names the key).
    fn check_path(&self, path: &str) -> Result<(), Invalid>;

    /// Where `path` lands, whatever the sink is called, in one canonical
    /// spelling (`sink::place`): two integrations must never share one
    /// (a second sink over the same directory, the same Vault mount, the
    /// same AWS account and region, is the same place, however written).
    fn location(&self, path: &str) -> String;

    /// The timeout of one request, when the backend has one.
    fn timeout(&self) -> Option<HumanDuration> {
        None
    }

    /// The secrets the configuration refers to (login material), each with
    /// its key below `[sinks.NAME]`: a preflight reads each without
    /// printing it.
    fn secret_refs(&self) -> Vec<(&'static str, SecretRef)> {
        Vec::new()
    }

    /// The sink called `name`.
    fn build(&self, name: &str) -> Result<Arc<dyn Sink>, SinkError>;

    /// Whether what it stores outlives a reboot of this host (the
    /// rotator's own credential must: once its seed is deleted it is the
    /// only copy). Asked of the machine, so not at policy load.
    fn durable(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

/// The contract every sink implements. `path` is the integration's `path`.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// A short description for messages, e.g. ``file sink `local` (/run/x)``.
    fn describe(&self) -> String;

    /// The published payload and its version, or `None` when nothing is published yet.
    async fn read_current(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError>;

    /// Publishes `payload` if the stored version is still `expected`
    /// (`None`: nothing may be stored yet). Returns the new version.
    async fn publish(&self, path: &str, payload: &Payload, expected: Option<&Version>) -> Result<Version, SinkError>;

    /// Writes `payload` whatever is stored, atomically (a reader sees the old
    /// payload or the new one, never a mix). For mirrors only: a copy that
    /// decides nothing, rewritten from the primary whenever it differs.
    async fn overwrite(&self, path: &str, payload: &Payload) -> Result<Version, SinkError>;

    /// Whether the sink is reachable and writable for `path`.
    async fn healthcheck(&self, path: &str) -> Result<String, SinkError>;

    /// Whether a publish to `path` can succeed, as far as the backend lets
    /// one know without writing it: checked before any account is created,
    /// so that an unwritable sink costs no create and delete. Cheaper than
    /// `healthcheck` where it can be (no new login).
    async fn writable(&self, path: &str) -> Result<(), SinkError> {
        self.healthcheck(path).await.map(|_| ())
    }

    /// Removes what is published at `path` (`retire`): `Ok(false)` when
    /// nothing was there. Never used by a pass.
    async fn remove(&self, path: &str) -> Result<bool, SinkError>;

    /// Whether `remove(path)` would be allowed, asked without removing
    /// (`retire` checks every place before it changes anything): what was
    /// checked. Backends that cannot tell say so, and `retire` removes the
    /// payloads before it deletes any account.
    async fn removable(&self, _path: &str) -> Result<String, SinkError> {
        Ok("not checkable beforehand: removed before any account is deleted".into())
    }

    /// Whether the last read of `path` found it with other permissions than
    /// the sink's own (a file's mode); with `fix`, they are set back. What
    /// was found, when it differed. Sinks without such permissions: never.
    async fn mode_drift(&self, _path: &str, _fix: bool) -> Result<Option<String>, SinkError> {
        Ok(None)
    }
}

/// A payload of integration `etl`, for the sinks' unit tests.
#[cfg(test)]
pub(super) fn sample_payload(rotation: &str) -> Payload {
    let t = chrono::DateTime::parse_from_rfc3339("2026-11-28T04:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    Payload {
        username: "mpr-etl-x.abc.mp-service-account".into(),
        secret: Secret::new("s3cr3t-value"),
        service_account_id: 7,
        organization_id: 1,
        integration: "etl".into(),
        expires: Some(t),
        created: t,
        rotated_at: t,
        rotation_id: rotation.into(),
        previous_service_account_id: None,
        projects: vec![],
        retiring: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(SinkError::unavailable("down").retryable());
        for e in [
            SinkError::conflict("x"),
            SinkError::not_found("x"),
            SinkError::denied("x"),
            SinkError::corrupt("x"),
            SinkError::invalid("x"),
        ] {
            assert!(!e.retryable(), "{e:?}");
        }
    }

    #[test]
    fn a_stored_payload_is_never_echoed() {
        let e = Payload::from_json(br#"{"secret": "hunter2-secret"}"#).unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Corrupt);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // It names what is wrong, and what to do.
        assert!(e.to_string().contains("no field `username`"), "{e}");
        assert!(
            e.to_string().contains("give the integration a `path` of its own") && e.to_string().contains("`adopt`")
        );
        let e = Payload::from_json(br#"{"username": "u", "secret": 12345678, "service_account_id": 1}"#).unwrap_err();
        assert!(e.to_string().contains("field `secret` has the wrong type"), "{e}");
        assert!(!e.to_string().contains("12345678"), "{e}");
    }
}
