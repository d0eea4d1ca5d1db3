//! Errors of the Mixpanel client.

/// A failed Mixpanel call: which endpoint, what happened, and a hint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MixpanelError {
    /// Mixpanel answered with an error status (`{"status":"error","error":..}`).
    #[error("Mixpanel {endpoint} answered HTTP {status}{}{}", said(.message), hint(*.status))]
    Api {
        /// The endpoint called (`create-service-account`).
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
        /// What the server said, cut to one masked line (may be empty).
        message: String,
    },
    /// No usable answer: connection refused or dropped, timeout.
    #[error("Mixpanel {endpoint}: no answer ({detail}); check the network path to the API host and `mixpanel.timeout`")]
    Transport {
        /// The endpoint called.
        endpoint: &'static str,
        /// What failed (connect, timeout, reset).
        detail: String,
        /// The connection could not be opened: the request was certainly not applied.
        connect: bool,
    },
    /// A redirect, which is never followed (a POST would turn into a GET).
    #[error(
        "Mixpanel {endpoint} answered HTTP {status} redirecting to {location}: redirects are not followed; check `mixpanel.region` / `mixpanel.base_url`"
    )]
    Redirect {
        /// The endpoint called.
        endpoint: &'static str,
        /// The redirect's status.
        status: u16,
        /// Where it pointed.
        location: String,
    },
    /// A success status with a body that does not parse.
    #[error("Mixpanel {endpoint} answered HTTP {status} with an unexpected body: {detail}")]
    Decode {
        /// The endpoint called.
        endpoint: &'static str,
        /// The success status that came with it.
        status: u16,
        /// What could not be decoded (never the body itself).
        detail: String,
    },
    /// Mixpanel asked to wait longer than the rotator waits (`Retry-After`):
    /// the call fails at once rather than holding the pass.
    #[error(
        "Mixpanel {endpoint} answered HTTP {status} asking to wait {}s (Retry-After), longer than the {}s the rotator waits for one call: not retried now; the next pass tries again",
        .wait.as_secs(), .max.as_secs()
    )]
    RetryAfterTooLong {
        /// The endpoint called.
        endpoint: &'static str,
        /// The status (429 or 503).
        status: u16,
        /// How long Mixpanel asked to wait.
        wait: std::time::Duration,
        /// The longest wait for one call.
        max: std::time::Duration,
    },
    /// A project is hosted on a domain that is not a known Mixpanel API host.
    #[error(
        "a project is hosted at `{domain}` (its `domain` in GET /me), which is not a Mixpanel API host this rotator knows (mixpanel.com, eu.mixpanel.com, in.mixpanel.com): map it to its API base in `mixpanel.region_urls`"
    )]
    UnknownRegion {
        /// The project's `domain`, as `/me` gives it.
        domain: String,
    },
    /// The client could not be built (TLS setup).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

/// `: what the server said` (already cut to one masked line), or nothing.
fn said(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => {
            " (the credential was refused: check `mixpanel.username` and `mixpanel.secret`, and whether the account has expired)"
        }
        403 => " (the rotator's account must be an organization admin or owner)",
        429 => {
            " (rate limited: reads and deletes are retried with backoff, a create or a membership change is not and the next pass tries again)"
        }
        _ => "",
    }
}

impl MixpanelError {
    /// Whether retrying the same request may succeed (408, 429, 5xx, transport).
    pub(crate) fn retryable(&self) -> bool {
        match self {
            MixpanelError::Api { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            MixpanelError::Transport { .. } => true,
            _ => false,
        }
    }

    /// Whether the request may have been applied even though it failed
    /// (a dropped connection, a timeout, a 5xx, an unreadable 2xx).
    pub(crate) fn maybe_applied(&self) -> bool {
        match self {
            MixpanelError::Api { status, .. } => *status >= 500 || *status == 408,
            MixpanelError::Transport { connect, .. } => !connect,
            MixpanelError::Decode { .. } => true,
            _ => false,
        }
    }

    /// The same error without the server's own words (for a webhook, which
    /// leaves the machine).
    pub(crate) fn without_server_text(&self) -> Self {
        match self {
            MixpanelError::Api { endpoint, status, .. } => MixpanelError::Api {
                endpoint,
                status: *status,
                message: String::new(),
            },
            other => other.clone(),
        }
    }

    /// What kind of failure this is, as a stable snake_case word (the last
    /// part of an error's code in `-o json`: `list_accounts.mixpanel.unauthorized`).
    pub fn code(&self) -> &'static str {
        match self {
            MixpanelError::Api { status, .. } => match status {
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                429 => "rate_limited",
                408 | 500.. => "unavailable",
                _ => "rejected",
            },
            MixpanelError::RetryAfterTooLong { .. } => "rate_limited",
            MixpanelError::Transport { .. } => "unreachable",
            MixpanelError::Redirect { .. } => "redirect",
            MixpanelError::Decode { .. } => "bad_answer",
            MixpanelError::UnknownRegion { .. } => "unknown_region",
            MixpanelError::Setup(_) => "setup",
        }
    }

    /// Every word [`MixpanelError::code`] may answer.
    pub const CODES: [&'static str; 11] = [
        "unauthorized",
        "forbidden",
        "not_found",
        "rate_limited",
        "unavailable",
        "rejected",
        "unreachable",
        "redirect",
        "bad_answer",
        "unknown_region",
        "setup",
    ];

    /// The HTTP status, when there was one.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            MixpanelError::Api { status, .. }
            | MixpanelError::Redirect { status, .. }
            | MixpanelError::RetryAfterTooLong { status, .. }
            | MixpanelError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}
