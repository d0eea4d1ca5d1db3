//! The audit trail: every mutating call (create, delete, add to project,
//! publish) is one structured event with target `audit`, and optionally one
//! JSON line appended to `[audit] path` (created 0600).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The mutating call an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// A service account was created.
    Create,
    /// A service account was deleted.
    Delete,
    /// Project memberships were added to an account.
    AddToProject,
    /// A credential was published to a sink.
    Publish,
    /// A mirror was brought up to date from the primary.
    Mirror,
    /// A published credential was removed from a sink (`retire`).
    Remove,
}

/// How the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Written before the call (write-ahead): a process killed during the
    /// call, or before its outcome is written, still leaves the call in the
    /// trail.
    Started,
    Created,
    Deleted,
    /// A delete found the account already gone.
    AlreadyGone,
    Added,
    Published,
    Failed,
}

impl Action {
    /// The name used in logs and the audit file.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Delete => "delete",
            Action::AddToProject => "add_to_project",
            Action::Publish => "publish",
            Action::Mirror => "mirror",
            Action::Remove => "remove",
        }
    }
}

impl Outcome {
    /// The name used in logs and the audit file.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Created => "created",
            Outcome::Deleted => "deleted",
            Outcome::AlreadyGone => "already_gone",
            Outcome::Added => "added",
            Outcome::Published => "published",
            Outcome::Failed => "failed",
        }
    }
}

/// One mutating call and its outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditEvent<'a> {
    pub(crate) at: DateTime<Utc>,
    pub(crate) integration: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rotation_id: Option<&'a str>,
    pub(crate) action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) account_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) previous_account_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    pub(crate) outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// Where audit events go.
#[derive(Debug, Default)]
pub(crate) struct Audit {
    path: Option<PathBuf>,
    /// Opened on the first event, so read-only commands (`plan`, `status`)
    /// neither create the file nor need to be allowed to write it.
    file: Mutex<Option<std::fs::File>>,
}

/// The audit trail cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot open the audit file {} (`audit.path`): {reason}{}",
    .path.display(),
    if *.before_change { "; nothing is changed until it can be written" } else { "" }
)]
pub struct AuditError {
    pub(crate) path: std::path::PathBuf,
    /// The system's words (an I/O error).
    pub(crate) reason: String,
    /// Raised before a change, which therefore did not happen.
    pub(crate) before_change: bool,
}

impl Audit {
    /// Events go to the log, and to `path` when given.
    pub(crate) fn new(path: Option<&Path>) -> Self {
        Self {
            path: path.map(Path::to_path_buf),
            file: Mutex::new(None),
        }
    }

    /// Opens the audit file (creating it 0600) if there is one, so that a
    /// command that will mutate fails before its first mutation when the
    /// trail cannot be written: audit is a promise, not a best effort.
    pub(crate) fn ensure_writable(&self) -> Result<(), AuditError> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let f = open(path).map_err(|e| AuditError {
                path: path.clone(),
                reason: e.to_string(),
                before_change: true,
            })?;
            *guard = Some(f);
        }
        Ok(())
    }

    /// Whether the trail could be written, changing nothing (for
    /// `validate --online`): an existing file is opened for appending (never
    /// created, never narrowed); a missing one needs a writable directory.
    pub(crate) fn check(&self) -> Result<String, AuditError> {
        use std::os::unix::fs::PermissionsExt as _;
        let Some(path) = &self.path else {
            return Ok("none".into());
        };
        let fail = |e: std::io::Error| AuditError {
            path: path.clone(),
            reason: e.to_string(),
            before_change: false,
        };
        match std::fs::symlink_metadata(path) {
            Ok(_) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(fail)?;
                let meta = f.metadata().map_err(fail)?;
                if !meta.file_type().is_file() {
                    return Err(fail(std::io::Error::other("it is not a regular file")));
                }
                let mode = meta.permissions().mode() & 0o777;
                Ok(if mode & 0o077 != 0 {
                    format!("can be appended to (mode {mode:04o}: narrowed to 0600 at the first change)")
                } else {
                    "can be appended to".into()
                })
            }
            Err(_) => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                crate::bounded::writable_dir(dir).map_err(fail)?;
                Ok(format!(
                    "does not exist yet; created 0600 in {} at the first change",
                    dir.display()
                ))
            }
        }
    }

    /// Records one event.
    pub(crate) fn record(&self, e: &AuditEvent<'_>) {
        tracing::info!(
            target: "audit",
            integration = e.integration,
            rotation_id = e.rotation_id,
            action = e.action.as_str(),
            account_id = e.account_id,
            previous_account_id = e.previous_account_id,
            username = e.username,
            reason = e.reason.as_deref(),
            outcome = e.outcome.as_str(),
            detail = e.detail.as_deref(),
            "Audit: {} {}.",
            e.action.as_str(),
            e.outcome.as_str()
        );
        let Some(path) = &self.path else { return };
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match open(path) {
                Ok(f) => *guard = Some(f),
                Err(err) => {
                    tracing::error!(path = %path.display(), error = %err, "Cannot open the audit file (`audit.path`).");
                    return;
                }
            }
        }
        if let Some(f) = guard.as_mut()
            && let Err(err) = f.write_all(&line).and_then(|_| f.flush())
        {
            tracing::error!(path = %path.display(), error = %err, "Cannot append to the audit file.");
        }
    }
}

/// Opens the audit file for appending: created 0600; never through a
/// symbolic link; never a FIFO, device or directory (a FIFO without a
/// reader would block the process, SIGTERM included); an existing file
/// others can read or write is narrowed to 0600 first.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt as _;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                std::io::Error::other("it is a symbolic link, which is never followed: name the file itself")
            }
            Some(libc::ENXIO) => std::io::Error::other("it is a FIFO or socket, not a regular file"),
            _ => e,
        })?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file (a FIFO, a device or a directory): name a regular file",
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            std::io::Error::other(format!(
                "it is open to other users (mode {mode:04o}) and cannot be narrowed to 0600: {e}"
            ))
        })?;
        tracing::warn!(path = %path.display(), mode = format!("{mode:04o}"), "The audit file was open to other users; its mode is now 0600.");
    }
    Ok(f)
}
