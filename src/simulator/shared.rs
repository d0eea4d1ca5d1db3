//! What the simulator's server and its handle share: the organization, the
//! programmed faults and the request log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::state::OrgState;

/// What a fault does to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer this status with an error body, without doing anything.
    Status(u16),
    /// Answer this status with this `error` text (a server that echoes too much).
    Error {
        /// The HTTP status.
        status: u16,
        /// The `error` text.
        message: String,
    },
    /// Wait, then handle the request normally.
    Latency(Duration),
    /// Answer 429 with `Retry-After: secs`.
    RateLimit {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// Apply the request, then drop the connection without answering.
    CommitThenDrop,
    /// Wait at the gate until it is opened, then handle the request normally.
    Hold(Gate),
}

/// Where held requests wait ([`FaultAction::Hold`]): a test knows when a
/// request has arrived, does what it must, then lets it through. No timing.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<GateState>>);

/// How many requests reached a gate, and whether it is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateState {
    pub(crate) arrived: u32,
    pub(crate) open: bool,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(GateState::default())))
    }

    /// Waits until at least `n` requests have reached the gate.
    pub async fn arrived(&self, n: u32) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|s| s.arrived >= n).await;
    }

    /// Opens the gate: held requests and later ones go through.
    pub fn open(&self) {
        self.0.send_modify(|s| s.open = true);
    }

    pub(super) async fn hold(&self) {
        let mut rx = self.0.subscribe();
        self.0.send_modify(|s| s.arrived = s.arrived.saturating_add(1));
        let _ = rx.wait_for(|s| s.open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

/// A programmed fault: requests with `method` and a path matching `path`
/// (below `/api/app`; `*` matches one segment) get `action`, `times` times
/// (`None`: always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) action: FaultAction,
    pub(crate) times: Option<u32>,
    /// Only requests whose Basic-auth username starts with this (`None`: any).
    pub(crate) caller_prefix: Option<String>,
}

impl Fault {
    /// A fault on `method path` applied once.
    pub fn once(method: &str, path: &str, action: FaultAction) -> Self {
        Self::times(method, path, action, 1)
    }

    /// A fault applied `n` times.
    pub fn times(method: &str, path: &str, action: FaultAction, n: u32) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            action,
            times: Some(n),
            caller_prefix: None,
        }
    }

    /// A fault applied to every matching request.
    pub fn always(method: &str, path: &str, action: FaultAction) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            action,
            times: None,
            caller_prefix: None,
        }
    }

    /// The same fault, only for callers whose username starts with `prefix`
    /// (e.g. `mpr-`: the new credential's own calls, not the rotator's).
    pub fn from_callers(mut self, prefix: &str) -> Self {
        self.caller_prefix = Some(prefix.to_string());
        self
    }

    /// The same fault, whatever its count left.
    pub(super) fn same_as(&self, other: &Fault) -> bool {
        self.method == other.method
            && self.path == other.path
            && self.action == other.action
            && self.caller_prefix == other.caller_prefix
    }

    pub(super) fn matches(&self, method: &str, path: &str, caller: Option<&str>) -> bool {
        if self.method != method || self.times == Some(0) {
            return false;
        }
        if let Some(p) = &self.caller_prefix
            && !caller.is_some_and(|c| c.starts_with(p.as_str()))
        {
            return false;
        }
        let want: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let got: Vec<&str> = path.trim_matches('/').split('/').collect();
        want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| *w == "*" || w == g)
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// The HTTP method.
    pub method: String,
    /// Path below `/api/app`, without the query.
    pub path: String,
    /// The answered status; `None` when the connection was dropped.
    pub status: Option<u16>,
    /// The authenticated caller's username, if any.
    pub caller: Option<String>,
    /// When it arrived (monotonic, for timing assertions).
    pub received: Instant,
    /// The simulator clock's time when it arrived.
    pub at: DateTime<Utc>,
    /// The region of the listener that received it (`mixpanel.com`, `eu.mixpanel.com`).
    pub region: String,
}

impl LoggedRequest {
    /// Whether the request could change the organization.
    pub fn is_mutating(&self) -> bool {
        self.method != "GET" && self.method != "HEAD"
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) org: OrgState,
    pub(crate) faults: Vec<Fault>,
    pub(crate) log: Vec<LoggedRequest>,
    /// Added to every answer: a base delay and a random extra up to the second.
    pub(crate) latency: Option<(std::time::Duration, std::time::Duration)>,
    /// `Simulator::stop` was called: every request on a connection
    /// still open is dropped unanswered.
    pub(crate) stopped: bool,
}
