//! Whether what a pass puts in its reports (warnings, errors) is also
//! logged at its own level. The daemon: yes, nobody prints its reports, the
//! log is where they are read. A one-shot command prints its reports on
//! stdout: there the same text is logged at debug only, so it is never
//! shown twice (results on stdout, logs on stderr).

use std::sync::atomic::{AtomicBool, Ordering};

static LOG_REPORTED: AtomicBool = AtomicBool::new(true);

/// Sets whether reported warnings and errors are logged at their level.
pub fn log_reported(on: bool) {
    LOG_REPORTED.store(on, Ordering::Relaxed);
}

/// Whether reported warnings and errors are logged at their level.
pub fn logs_reported() -> bool {
    LOG_REPORTED.load(Ordering::Relaxed)
}

/// `reported!(warn, fields..., "message")`: a log event for text that also
/// goes into a report, at `warn`/`error` when [`logs_reported`], else at debug.
macro_rules! reported {
    (warn, $($arg:tt)*) => {
        if $crate::rotation::echo::logs_reported() {
            tracing::warn!($($arg)*)
        } else {
            tracing::debug!($($arg)*)
        }
    };
    (error, $($arg:tt)*) => {
        if $crate::rotation::echo::logs_reported() {
            tracing::error!($($arg)*)
        } else {
            tracing::debug!($($arg)*)
        }
    };
}
pub(crate) use reported;
