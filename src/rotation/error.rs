//! What can go wrong in a pass, typed: the step, the cause, and what was
//! done about it. The integration is named once, here, at the boundary;
//! a sink's name and path once, in [`Cause::Sink`].

use std::fmt;

use serde::{Serialize, Serializer};

use super::decide::{Blocked, DeleteReason, InUse};
use crate::mixpanel::MixpanelError;
use crate::mixpanel::types::{Grants, ProjectGrant};
use crate::policy::PolicyError;
use crate::sink::SinkError;
use crate::text::{format_duration, rfc3339};

/// The step a pass failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `GET` of the organization's service accounts.
    ListAccounts,
    /// Reading what the primary publishes.
    ReadSink,
    /// Checking, before any create, that the sink would take a publish.
    SinkCheck,
    /// Reading the memberships to give the new account.
    CopyMemberships,
    /// Creating the new account.
    Create,
    /// Reading the new account and its memberships back.
    ReadBack,
    /// Authenticating with the new credential.
    Verify,
    /// Publishing it (compare-and-swap).
    Publish,
    /// Deleting an old account.
    Delete,
    /// Checking the integration's accounts against what is published.
    CheckAccounts,
    /// Adding the memberships the new account lacks.
    AddMemberships,
    /// Opening the audit trail.
    Audit,
    /// Bringing a mirror up to date.
    Mirror,
}

impl Step {
    /// Whether the step belongs to a rotation (as opposed to observing or deleting).
    pub(crate) fn is_rotation(self) -> bool {
        matches!(
            self,
            Step::CopyMemberships | Step::Create | Step::ReadBack | Step::AddMemberships | Step::Verify | Step::Publish
        )
    }

    /// Whether failing at this step means Mixpanel or a sink could not be reached or read.
    pub(crate) fn is_observation(self) -> bool {
        matches!(self, Step::ListAccounts | Step::ReadSink)
    }
}

impl Step {
    /// Every step.
    pub const ALL: [Step; 13] = [
        Step::ListAccounts,
        Step::ReadSink,
        Step::SinkCheck,
        Step::CopyMemberships,
        Step::Create,
        Step::ReadBack,
        Step::Verify,
        Step::Publish,
        Step::Delete,
        Step::CheckAccounts,
        Step::AddMemberships,
        Step::Audit,
        Step::Mirror,
    ];

    /// The step as a stable snake_case word (the first part of an error's
    /// code in `-o json`).
    pub fn code(self) -> &'static str {
        match self {
            Step::ListAccounts => "list_accounts",
            Step::ReadSink => "read_sink",
            Step::SinkCheck => "sink_check",
            Step::CopyMemberships => "copy_memberships",
            Step::Create => "create",
            Step::ReadBack => "read_back",
            Step::Verify => "verify",
            Step::Publish => "publish",
            Step::Delete => "delete",
            Step::CheckAccounts => "check_accounts",
            Step::AddMemberships => "add_memberships",
            Step::Audit => "audit",
            Step::Mirror => "mirror",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ListAccounts => "listing service accounts",
            Step::ReadSink => "reading the published credential",
            Step::SinkCheck => "checking the sink",
            Step::CopyMemberships => "reading the memberships to copy",
            Step::Create => "creating the new account",
            Step::ReadBack => "reading the new account back",
            Step::Verify => "verifying the new credential",
            Step::Publish => "publishing",
            Step::Delete => "deleting an old account",
            Step::CheckAccounts => "checking the integration's accounts",
            Step::AddMemberships => "adding the missing memberships to the new account",
            Step::Audit => "opening the audit trail",
            Step::Mirror => "bringing a mirror up to date",
        })
    }
}

impl Blocked {
    /// The step a blocked integration reports as failed.
    pub(crate) fn step(&self) -> Step {
        match self {
            Blocked::SharedPath(_) | Blocked::ForeignCurrent { .. } => Step::ReadSink,
            _ => Step::CopyMemberships,
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// A Mixpanel call failed.
    #[error("{0}")]
    Mixpanel(MixpanelError),
    /// A Mixpanel call about one account failed.
    #[error("account {id}: {source}")]
    Account {
        /// The account.
        id: u64,
        /// Mixpanel's failure.
        source: MixpanelError,
    },
    /// A Mixpanel call about one project failed.
    #[error("project {id}: {source}")]
    Project {
        /// The project.
        id: u64,
        /// Mixpanel's failure.
        source: MixpanelError,
    },
    /// A sink operation failed.
    #[error("{sink} path `{path}`: {source}")]
    Sink {
        /// The sink as [`crate::sink::Sink::describe`] says it.
        sink: String,
        /// The path in the sink.
        path: String,
        /// The sink's failure.
        source: SinkError,
    },
    /// Nothing may be done until the policy or the sink is fixed.
    #[error("{0}")]
    Blocked(Blocked),
    /// Adding the missing memberships failed.
    #[error("adding memberships {} to account {account}: {source}", Grants(.missing))]
    AddMemberships {
        /// The new account.
        account: u64,
        /// The memberships it lacks.
        missing: Vec<ProjectGrant>,
        /// Mixpanel's failure.
        source: MixpanelError,
    },
    /// Memberships are still missing after the repair.
    #[error("account {account} still lacks memberships {} after repair", Grants(.missing))]
    MembershipsMissing {
        /// The new account.
        account: u64,
        /// The memberships it still lacks.
        missing: Vec<ProjectGrant>,
    },
    /// The new credential authenticates but does not see the organization.
    #[error("the new credential works but does not see organization {organization}")]
    WrongOrganization {
        /// The organization it should see.
        organization: u64,
    },
    /// The new credential was still refused after every attempt.
    #[error(
        "{last} (GET /me with the new credential, {attempts} attempts over {}; Mixpanel may take longer to accept a new account: raise `mixpanel.verify_timeout`)",
        format_duration(*.over)
    )]
    NotAccepted {
        /// How many times it was tried.
        attempts: u32,
        /// From the first attempt to the last answer.
        over: chrono::Duration,
        /// The last refusal.
        last: Box<Cause>,
    },
    /// Deleting an old account failed.
    #[error("account {id} ({username}, {reason}): {source}; the next pass tries again")]
    Delete {
        /// The account.
        id: u64,
        /// Its username.
        username: String,
        /// Why it was to go.
        reason: DeleteReason,
        /// Mixpanel's failure.
        source: MixpanelError,
    },
    /// A lineage account in use that this integration's sink neither publishes nor vouches for.
    #[error(
        "account {} ({}) is in use but not published here ({}): another rotator with the same namespace and integration probably publishes it elsewhere. Share one primary sink between them (each may keep a local copy with `mirrors`), or give each rotator its own `namespace`. It is kept, and deleted once unused for `grace` (at {} if nobody uses it again)",
        .0.id, .0.username, used(&.0), rfc3339(.0.idle_at)
    )]
    InUseElsewhere(InUse),
    /// An account the payload vouches for, deleted at its bound although a
    /// mirror still does not hold the current credential.
    #[error(
        "account {id} was deleted at its bound (`max_grace` past its due time) although mirror {mirrors} still does not hold the current credential: consumers reading that mirror may now fail. Fix the mirror (see its own error) so it holds the primary's payload"
    )]
    StaleMirror {
        /// The account deleted.
        id: u64,
        /// The mirrors still behind, in words.
        mirrors: String,
    },
    /// Mixpanel answered a create with an account that is not the one asked for.
    #[error(
        "Mixpanel answered the create of `{asked}` with account {id} ({username}), which is not a new account of that name: nothing is done with it"
    )]
    UnexpectedCreate {
        /// The username asked for.
        asked: String,
        /// The account Mixpanel answered with.
        id: u64,
        /// Its username.
        username: String,
    },
    /// The rotation ran past its publish deadline.
    #[error(
        "the rotation took {}, past its publish deadline ({} after its create, three quarters of `orphan_after`): another rotator may already treat the new account as an orphan, so it is not published. If Mixpanel is this slow, raise `orphan_after`",
        format_duration(*.took), format_duration(*.deadline)
    )]
    TooSlow {
        /// How long the rotation took.
        took: chrono::Duration,
        /// Its publish deadline.
        deadline: chrono::Duration,
    },
    /// Copy mode, and `/me` shows no project to copy from.
    #[error(
        "Mixpanel's GET /me lists no project of organization {organization} for the rotator's account, so the memberships of account {account} cannot be copied (an empty copy is never published): check that the rotator's account is an organization admin or owner, or list the projects in `{key}`"
    )]
    NoProjectsVisible {
        /// The organization.
        organization: u64,
        /// The account whose memberships were to be copied.
        account: u64,
        /// The `projects` key to set instead.
        key: String,
    },
    /// The audit trail cannot be written.
    #[error("{0}")]
    Audit(crate::audit::AuditError),
    /// The rotator's own credential must be an organization admin's: the
    /// account it acts as, or its new one, is not.
    #[error(
        "account {account} has the organization role `{role}`, not `admin`: the rotator's own credential is rotated only by an admin, into an admin (an owner is never re-created, and nothing else may create an admin). Use an admin service account as `[mixpanel] username`/`secret`"
    )]
    NotAdmin {
        /// The account.
        account: String,
        /// Its organization role, as `/me` says it.
        role: String,
    },
    /// The published account was about to be deleted (the last line of defence).
    #[error("refused to delete account {id} because it is the published credential (or the one this rotator acts as)")]
    Protected {
        /// The published account.
        id: u64,
    },
}

/// The evidence of use, in words.
fn used(u: &InUse) -> String {
    if u.last_used_unknown {
        "Mixpanel's last_used could not be read, so it is taken as in use".into()
    } else {
        format!("Mixpanel's last_used: {}", rfc3339(u.last_used))
    }
}

/// A failure's stable code: `{step}.{cause}`, where the cause is
/// `mixpanel.{kind}`, `sink.{kind}`, `blocked.{what}`, or one word of the
/// rotator's own (`delete.protected`). What scripts and the
/// Troubleshooting page match on; the human message may change, the code
/// does not (docs/output.schema.json lists every part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub(crate) step: Step,
    /// `mixpanel`, `sink` or `blocked`, when the cause is one of theirs.
    pub(crate) source: Option<&'static str>,
    pub(crate) kind: &'static str,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Some(source) => write!(f, "{}.{source}.{}", self.step.code(), self.kind),
            None => write!(f, "{}.{}", self.step.code(), self.kind),
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Cause {
    /// The cause part of the failure's code: its source (if another
    /// system's) and its kind.
    pub fn code(&self) -> (Option<&'static str>, &'static str) {
        match self {
            Cause::Mixpanel(e)
            | Cause::Account { source: e, .. }
            | Cause::Project { source: e, .. }
            | Cause::AddMemberships { source: e, .. }
            | Cause::Delete { source: e, .. } => (Some("mixpanel"), e.code()),
            Cause::Sink { source, .. } => (Some("sink"), source.kind.code()),
            Cause::Blocked(b) => (Some("blocked"), b.code()),
            Cause::MembershipsMissing { .. } => (None, "memberships_missing"),
            Cause::WrongOrganization { .. } => (None, "wrong_organization"),
            Cause::NotAccepted { .. } => (None, "not_accepted"),
            Cause::InUseElsewhere(_) => (None, "in_use_elsewhere"),
            Cause::StaleMirror { .. } => (None, "stale_mirror"),
            Cause::UnexpectedCreate { .. } => (None, "unexpected_create"),
            Cause::TooSlow { .. } => (None, "too_slow"),
            Cause::NoProjectsVisible { .. } => (None, "no_projects_visible"),
            Cause::Audit(_) => (None, "audit_unwritable"),
            Cause::Protected { .. } => (None, "protected"),
            Cause::NotAdmin { .. } => (None, "not_admin"),
        }
    }

    /// Every word of the rotator's own causes ([`Cause::code`] without a source).
    pub const OWN_CODES: [&'static str; 11] = [
        "memberships_missing",
        "wrong_organization",
        "not_accepted",
        "in_use_elsewhere",
        "stale_mirror",
        "unexpected_create",
        "too_slow",
        "no_projects_visible",
        "audit_unwritable",
        "protected",
        "not_admin",
    ];

    /// The same cause without any Mixpanel server text.
    pub(crate) fn without_server_text(&self) -> Self {
        let quiet = MixpanelError::without_server_text;
        match self {
            Cause::Mixpanel(e) => Cause::Mixpanel(quiet(e)),
            Cause::Account { id, source } => Cause::Account {
                id: *id,
                source: quiet(source),
            },
            Cause::Project { id, source } => Cause::Project {
                id: *id,
                source: quiet(source),
            },
            Cause::AddMemberships {
                account,
                missing,
                source,
            } => Cause::AddMemberships {
                account: *account,
                missing: missing.clone(),
                source: quiet(source),
            },
            Cause::NotAccepted { attempts, over, last } => Cause::NotAccepted {
                attempts: *attempts,
                over: *over,
                last: Box::new(last.without_server_text()),
            },
            Cause::Delete {
                id,
                username,
                reason,
                source,
            } => Cause::Delete {
                id: *id,
                username: username.clone(),
                reason: *reason,
                source: quiet(source),
            },
            other => other.clone(),
        }
    }

    /// The sink error, if this is one.
    pub fn sink_error(&self) -> Option<&SinkError> {
        match self {
            Cause::Sink { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What was done after the failure, or what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consequence {
    /// The sink could not be read: the integration is left alone.
    NothingTouched,
    /// A check before create failed: nothing was created.
    NothingCreated,
    /// Create failed and the account was not created.
    NotCreated,
    /// Create failed, yet the account had been created; it was found and deleted.
    StrayDeleted {
        /// The account.
        id: u64,
    },
    /// As `StrayDeleted`, but deleting it failed.
    StrayDeleteFailed {
        /// The account.
        id: u64,
        /// Why deleting it failed.
        error: String,
    },
    /// Whether create took effect could not be checked.
    Unchecked {
        /// Why it could not be checked.
        error: String,
    },
    /// The new account was deleted: nothing changed.
    NewDeleted {
        /// The new account.
        id: u64,
    },
    /// Deleting the new account failed: the next pass deletes it as an orphan.
    NewDeleteFailed {
        /// The new account.
        id: u64,
        /// Why deleting it failed.
        error: String,
    },
    /// The publish may have landed (the sink could not be read back): the new account is kept.
    NewKept {
        /// The new account.
        id: u64,
        /// Why the sink could not be read back.
        read_error: String,
    },
    /// A mirror failed: it keeps what it held, nothing else was touched.
    MirrorLeft,
}

impl fmt::Display for Consequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consequence::NothingTouched => write!(f, "; nothing is rotated or deleted until it can be read"),
            Consequence::NothingCreated => write!(f, "; nothing was created (the check runs before create)"),
            Consequence::NotCreated => write!(
                f,
                "; no account of that name was found afterwards (if the create still lands, the next pass deletes it as an orphan once `orphan_after` has passed)"
            ),
            Consequence::StrayDeleted { id } => write!(
                f,
                "; it had been created anyway (account {id}) and was deleted, since its token was lost"
            ),
            Consequence::StrayDeleteFailed { id, error } => write!(
                f,
                "; it had been created anyway (account {id}) and deleting it failed ({error}): the next pass deletes it as an orphan"
            ),
            Consequence::Unchecked { error } => write!(
                f,
                "; could not check whether it was created anyway ({error}): the next pass deletes it as an orphan if it was"
            ),
            Consequence::NewDeleted { id } => write!(f, "; the new account {id} was deleted, nothing changed"),
            Consequence::NewDeleteFailed { id, error } => write!(
                f,
                "; deleting the new account {id} failed too ({error}): the next pass deletes it as an orphan once `orphan_after` has passed"
            ),
            Consequence::MirrorLeft => write!(
                f,
                "; the mirror keeps what it held (a whole payload, never part of one), the primary and the accounts are untouched, and the next pass writes it again"
            ),
            Consequence::NewKept { id, read_error } => write!(
                f,
                "; reading it back failed too ({read_error}), so the new account {id} is kept (it may be published); the next pass sorts it out"
            ),
        }
    }
}

/// A failure: which integration, at which step, why, and what was done about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("integration `{integration}`: {step} failed: {}", self.message())]
pub struct StepError {
    pub(crate) integration: String,
    /// The step it failed at.
    pub step: Step,
    /// Why.
    pub cause: Cause,
    /// What was done about it, if anything.
    pub consequence: Option<Consequence>,
}

impl StepError {
    /// A failure of `integration` at `step`.
    pub(crate) fn new(integration: &str, step: Step, cause: Cause) -> Self {
        Self {
            integration: integration.to_string(),
            step,
            cause,
            consequence: None,
        }
    }

    /// The same failure, with what was done about it.
    pub(crate) fn then(mut self, consequence: Consequence) -> Self {
        self.consequence = Some(consequence);
        self
    }

    /// The failure as a webhook may carry it off the machine: no Mixpanel
    /// server text, and credential-looking runs masked in what remains.
    pub(crate) fn for_webhook(&self) -> String {
        let quiet = Self {
            cause: self.cause.without_server_text(),
            consequence: None,
            ..self.clone()
        };
        crate::text::mask_credentials(&quiet.to_string())
    }

    /// The failure's stable code (`publish.sink.conflict`).
    pub fn code(&self) -> ErrorCode {
        let (source, kind) = self.cause.code();
        ErrorCode {
            step: self.step,
            source,
            kind,
        }
    }

    /// The cause and its consequence, without the integration and step.
    pub fn message(&self) -> String {
        match &self.consequence {
            Some(c) => format!("{}{c}", self.cause),
            None => self.cause.to_string(),
        }
    }
}

impl Serialize for StepError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("StepError", 4)?;
        st.serialize_field("integration", &self.integration)?;
        st.serialize_field("step", &self.step)?;
        st.serialize_field("code", &self.code())?;
        st.serialize_field("message", &self.message())?;
        st.end()
    }
}

/// Setting the engine up failed (secret unreadable, sink unusable).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    /// The policy refers to something that cannot be read.
    Policy(#[from] PolicyError),
    #[error(transparent)]
    /// The Mixpanel client cannot be set up.
    Mixpanel(#[from] MixpanelError),
    #[error("sink `{name}`: {source}")]
    /// A sink cannot be set up.
    Sink {
        /// The sink's name.
        name: String,
        #[source]
        /// Why.
        source: SinkError,
    },
}

#[cfg(test)]
mod tests;
