//! The checks of `validate`, typed: each is named, has a status, and says
//! what was found; printed as they come (text) or gathered into the JSON
//! document.

use std::io::Write as _;

use crate::exit::Exit;

/// How a check of `validate` came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CheckStatus {
    /// Passed.
    Ok,
    /// Not a failure, but something to act on soon.
    Warn,
    /// Failed: `validate` exits 1.
    Fail,
}

impl CheckStatus {
    /// The tag a text line starts with.
    pub(super) fn tag(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        }
    }
}

/// One check of `validate`: what was checked, how it came out, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) status: CheckStatus,
    pub(crate) detail: String,
}

/// The checks of `validate`: printed as they come (text), or kept for the
/// JSON document.
pub(super) struct Checks {
    failed: bool,
    pub(super) json: bool,
    entries: Vec<Check>,
}

impl Checks {
    pub(super) fn new(json: bool) -> Self {
        Self {
            failed: false,
            json,
            entries: vec![],
        }
    }

    pub(super) fn record(&mut self, status: CheckStatus, what: &str, detail: &str) {
        self.failed |= status == CheckStatus::Fail;
        if self.json {
            self.entries.push(Check {
                name: what.to_string(),
                status,
                detail: detail.to_string(),
            });
        } else {
            println!("{}  {what}: {detail}", status.tag());
        }
    }

    /// Passed.
    pub(super) fn ok(&mut self, what: &str, detail: &str) {
        self.record(CheckStatus::Ok, what, detail);
    }

    /// Not a failure, but something to act on soon.
    pub(super) fn warn(&mut self, what: &str, detail: &str) {
        self.record(CheckStatus::Warn, what, detail);
    }

    /// Ok with its detail, or failed with its error.
    pub(super) fn check<E: std::fmt::Display>(&mut self, what: &str, result: Result<String, E>) {
        match result {
            Ok(detail) => self.ok(what, &detail),
            Err(e) => self.record(CheckStatus::Fail, what, &e.to_string()),
        }
    }

    /// The JSON document (`docs/output.schema.json`), when asked for.
    pub(super) fn finish(self, path: &std::path::Path, online: bool, at: chrono::DateTime<chrono::Utc>) -> Exit {
        if self.json {
            let doc = serde_json::json!({
                "version": 1,
                "command": "validate",
                "at": crate::text::rfc3339(at),
                "ok": !self.failed,
                "policy": path.display().to_string(),
                "online": online,
                "checks": self.entries,
            });
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut out, &doc);
            let _ = writeln!(out);
        }
        Exit::from_failure(self.failed)
    }
}
