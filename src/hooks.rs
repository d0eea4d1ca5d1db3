//! Hooks run after a rotation: `on_rotate` (a command, argv list, no shell)
//! and `webhook` (a JSON POST, Slack-compatible `text` plus structured
//! fields). Neither ever receives the secret; a failing hook is logged and
//! counted and never undoes the rotation.

use std::process::Stdio;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::policy::Integration;
use crate::text::rfc3339;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    /// A new credential was published.
    Rotated,
    /// A rotation failed; the published credential is still valid for a while.
    RotationFailed,
    /// A rotation failed and the published credential expires within `renew_before`.
    Expiring,
    /// A mirror could not be brought up to date from the primary.
    MirrorFailed,
}

/// The facts a hook gets (never the secret).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HookEvent {
    pub(crate) event: EventKind,
    pub(crate) integration: String,
    pub(crate) rotation_id: Option<String>,
    pub(crate) service_account_id: Option<u64>,
    pub(crate) username: Option<String>,
    pub(crate) previous_service_account_id: Option<u64>,
    pub(crate) expires: Option<DateTime<Utc>>,
    pub(crate) sink: String,
    pub(crate) path: String,
    pub(crate) error: Option<String>,
    /// The failure's stable code (`publish.sink.conflict`), as in `-o json`.
    pub(crate) error_code: Option<String>,
}

impl HookEvent {
    /// A one-line summary, for Slack's `text`.
    pub(crate) fn text(&self) -> String {
        let exp = self.expires.map(rfc3339).unwrap_or_else(|| "unknown".into());
        match self.event {
            EventKind::Rotated => format!(
                ":white_check_mark: mixpanel-rotator: `{}` rotated to service account {} ({}), expires {exp}.",
                self.integration,
                self.service_account_id.map(|i| i.to_string()).unwrap_or_default(),
                self.username.as_deref().unwrap_or("")
            ),
            EventKind::RotationFailed => format!(
                ":warning: mixpanel-rotator: rotating `{}` failed: {}",
                self.integration,
                self.error.as_deref().unwrap_or("unknown error")
            ),
            EventKind::Expiring => format!(
                ":rotating_light: mixpanel-rotator: rotating `{}` keeps failing and its credential expires {exp}: {}",
                self.integration,
                self.error.as_deref().unwrap_or("unknown error")
            ),
            EventKind::MirrorFailed => format!(
                ":warning: mixpanel-rotator: a mirror of `{}` is not up to date: {}",
                self.integration,
                self.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}

/// Why a hook failed (never undoing the rotation: a warning of the pass).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    /// The command could not be started.
    #[error("`on_rotate` {cmd}: cannot start: {source}")]
    Start { cmd: String, source: std::io::Error },
    /// Waiting for the command failed.
    #[error("`on_rotate` {cmd}: {source}")]
    Wait { cmd: String, source: std::io::Error },
    /// The command ran past `on_rotate_timeout` and was killed.
    #[error("`on_rotate` {cmd}: still running after {secs}s; killed (`on_rotate_timeout`)")]
    TimedOut { cmd: String, secs: u64 },
    /// The command exited with a failure: its status and the end of its stderr.
    #[error("`on_rotate` {cmd} exited with {status}: {stderr}")]
    Exited {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// The webhook's URL (a secret reference) cannot be read.
    #[error(transparent)]
    Url(#[from] crate::values::KeyError),
    /// The request could not be made (the URL is never in it).
    #[error("webhook of `{integration}`: {detail}")]
    Send { integration: String, detail: String },
    /// The webhook answered with an error status.
    #[error("webhook of `{integration}` answered HTTP {status}")]
    Status { integration: String, status: u16 },
}

/// Runs `on_rotate`, if set. The child gets a clean environment: `PATH` and
/// the `MPR_*` variables below, nothing of the rotator's own (which may hold
/// its secret).
pub(crate) async fn on_rotate(i: &Integration, ev: &HookEvent) -> Result<(), HookError> {
    let Some(argv) = &i.on_rotate else { return Ok(()) };
    let Some((cmd, args)) = argv.split_first() else {
        return Ok(());
    };
    let timeout = i
        .on_rotate_timeout
        .to_std()
        .unwrap_or(std::time::Duration::from_secs(30));
    let cmd_name = || cmd.to_string();
    let child = command(cmd, args, ev).spawn().map_err(|source| HookError::Start {
        cmd: cmd_name(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(source)) => {
            return Err(HookError::Wait {
                cmd: cmd_name(),
                source,
            });
        }
        Err(_) => {
            return Err(HookError::TimedOut {
                cmd: cmd_name(),
                secs: timeout.as_secs(),
            });
        }
    };
    if out.status.success() {
        tracing::info!(integration = %i.name, command = %cmd, stdout = %tail(&out.stdout), "on_rotate hook succeeded.");
        Ok(())
    } else {
        Err(HookError::Exited {
            cmd: cmd_name(),
            status: out.status,
            stderr: tail(&out.stderr),
        })
    }
}

/// The hook's command: argv, a clean environment with the event's facts, no stdin.
fn command(cmd: &str, args: &[String], ev: &HookEvent) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(cmd);
    c.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("MPR_EVENT", "rotated")
        .env("MPR_INTEGRATION", &ev.integration)
        .env("MPR_SINK", &ev.sink)
        .env("MPR_PATH", &ev.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(v) = &ev.rotation_id {
        c.env("MPR_ROTATION_ID", v);
    }
    if let Some(v) = ev.service_account_id {
        c.env("MPR_SERVICE_ACCOUNT_ID", v.to_string());
    }
    if let Some(v) = &ev.username {
        c.env("MPR_USERNAME", v);
    }
    if let Some(v) = ev.expires {
        c.env("MPR_EXPIRES", rfc3339(v));
    }
    if let Some(v) = ev.previous_service_account_id {
        c.env("MPR_PREVIOUS_SERVICE_ACCOUNT_ID", v.to_string());
    }
    c
}

/// The last 500 characters of a child's output.
fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    s.char_indices()
        .rev()
        .nth(500)
        .map(|(i, _)| &s[i..])
        .unwrap_or(s)
        .to_string()
}

/// POSTs the event to the integration's webhook, if set.
pub(crate) async fn webhook(i: &Integration, ev: &HookEvent) -> Result<(), HookError> {
    let Some(w) = &i.webhook else { return Ok(()) };
    let url = w.url.resolve(&i.key("webhook.url"))?;
    let failed = |detail: String| HookError::Send {
        integration: i.name.clone(),
        detail,
    };
    let timeout = w
        .timeout
        .map(|t| t.to_std())
        .unwrap_or(std::time::Duration::from_secs(10));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut body = serde_json::to_value(ev).map_err(|e| failed(e.to_string()))?;
    if let Some(o) = body.as_object_mut() {
        o.insert("text".into(), serde_json::Value::String(ev.text()));
    }
    // The URL is a credential: errors are reported without it.
    let resp = client
        .post(url.expose())
        .json(&body)
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(HookError::Status {
            integration: i.name.clone(),
            status: resp.status().as_u16(),
        })
    }
}
