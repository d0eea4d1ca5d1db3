//! Whether what a pass puts in its reports (warnings, errors) is also
//! logged at its own level ([`PassOptions::log_reported`]). The daemon:
//! yes, nobody prints its reports, the log is where they are read. A
//! one-shot command prints its reports on stdout: there the same text is
//! logged at debug only, so it is never shown twice (results on stdout,
//! logs on stderr).
//!
//! The option is the pass's: [`scoped`] runs the pass with it, and every
//! [`reported!`] inside that pass (the engine spawns no task) reads it.
//! Outside a pass (a mirror sync between passes), reported text is logged.
//!
//! [`PassOptions::log_reported`]: super::PassOptions::log_reported

tokio::task_local! {
    static LOG_REPORTED: bool;
}

/// Runs `fut` (a pass) with its reported text logged at its level or not.
pub(super) async fn scoped<F: std::future::Future>(log_reported: bool, fut: F) -> F::Output {
    LOG_REPORTED.scope(log_reported, fut).await
}

/// Whether reported warnings and errors are logged at their level.
pub(crate) fn logs_reported() -> bool {
    LOG_REPORTED.try_with(|on| *on).unwrap_or(true)
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
