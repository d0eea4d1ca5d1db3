//! The process exit status, shared by every command (0 success, 1 a rotation
//! or check failed, 2 bad usage or an invalid policy).

/// Exit status of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Ok = 0,
    /// A rotation or a check failed.
    Failed = 1,
    /// Bad usage or an invalid policy.
    Usage = 2,
}

impl Exit {
    /// `Failed` if `failed`, else `Ok`.
    pub(crate) fn from_failure(failed: bool) -> Self {
        if failed { Exit::Failed } else { Exit::Ok }
    }
}
