//! One rotation, one step per method: choose the memberships, create the
//! account, read it back, verify the credential, publish it, and clean up on
//! failure. The new token exists once, in memory ([`NewAccount`]), between
//! create and publish; on any failure in that window the new account is
//! deleted (or, if even that fails, left to the next pass, which finds it by
//! its lineage name).

use std::time::Instant;

use chrono::{DateTime, SubsecRound as _, Utc};
use tracing::Instrument as _;

use super::context::Context;
use super::decide::{Deadlines, DeleteReason, Disposal, RotationPlan, Rule};
use super::echo::reported;
use super::error::{Cause, Consequence, Step, StepError};
use super::lineage::{Lineage, new_rotation_id};
use super::memberships::desired;
use super::observe::{MembershipCache, Observation};
use super::report::Rotated;
use crate::audit::{Action, AuditEvent, Outcome};
use crate::clock::{after, span_between};
use crate::failpoint;
use crate::mixpanel::types::{
    AddToProjects, CreateServiceAccount, Grants, OrgRole, ProjectGrant, ServiceAccount, TargetType,
    strip_mixpanel_suffix,
};
use crate::mixpanel::{Credentials, MixpanelError};
use crate::policy::Integration;
use crate::secret::Secret;
use crate::sink::{Payload, SinkErrorKind};
use crate::text::rfc3339;

/// A rotation in progress: what its steps share.
pub(super) struct Rotation<'a> {
    ctx: &'a Context,
    i: &'a Integration,
    obs: &'a Observation,
    plan: &'a RotationPlan,
    id: String,
    /// When it started, in whole seconds (Mixpanel's timestamps have no fractions).
    at: DateTime<Utc>,
    started: Instant,
    warnings: Vec<String>,
    /// The payload the primary holds, once this rotation has seen it change.
    primary: Option<Payload>,
}

/// The rotation's result (`None`: another instance rotated first, nothing
/// was created), what it warned about on the way, and what the primary was
/// seen to hold last when that changed in this rotation (for the mirrors).
pub(super) struct RotationOutcome {
    pub(crate) result: Result<Option<Rotated>, StepError>,
    pub(crate) warnings: Vec<String>,
    pub(crate) primary: Option<Payload>,
}

/// The new account between its creation and its publish: the only place its token lives.
struct NewAccount {
    account: ServiceAccount,
    creds: Credentials,
    desired: Vec<ProjectGrant>,
    /// The expiry asked for.
    asked: DateTime<Utc>,
    /// When create answered: a membership listing started later sees the account.
    created_at: Instant,
    /// The expiry Mixpanel recorded (or, if it ignored it, the one asked for).
    expires: Option<DateTime<Utc>>,
}

/// How a failure after create must be cleaned up.
enum Failure {
    /// Delete the new account: it was never published.
    DeleteNew(StepError),
    /// Leave it: it may have been published (the sink could not tell).
    KeepNew(StepError),
}

impl<'a> Rotation<'a> {
    /// A rotation of `i` following `plan`, starting now.
    pub(crate) fn new(ctx: &'a Context, i: &'a Integration, obs: &'a Observation, plan: &'a RotationPlan) -> Self {
        Self {
            ctx,
            i,
            obs,
            plan,
            id: new_rotation_id(),
            at: ctx.clock.now().trunc_subsecs(0),
            started: Instant::now(),
            warnings: vec![],
            primary: None,
        }
    }

    /// Runs every step, in one span carrying the integration and the rotation id.
    pub(crate) async fn run(mut self, cache: &MembershipCache, deleted: &[Disposal]) -> RotationOutcome {
        let span = tracing::info_span!("rotation", integration = %self.i.name, rotation_id = %self.id);
        let result = self.steps(cache, deleted).instrument(span).await;
        RotationOutcome {
            result,
            warnings: self.warnings,
            primary: self.primary,
        }
    }

    fn fail(&self, step: Step, cause: Cause) -> StepError {
        StepError::new(&self.i.name, step, cause)
    }

    fn warn(&mut self, w: String) {
        reported!(warn, "{w}");
        self.warnings.push(w);
    }

    async fn steps(&mut self, cache: &MembershipCache, deleted: &[Disposal]) -> Result<Option<Rotated>, StepError> {
        tracing::info!(reason = %self.plan.reason, "Rotating.");
        // Before anything is created: can the sink take the publish? (At
        // once with reading the memberships: no time added.)
        let (desired, writable) = tokio::join!(
            desired(self.ctx, self.i, &self.plan.memberships, cache, &mut self.warnings),
            sink_writable(self.ctx, self.i)
        );
        writable?;
        let desired = desired?;
        if self.i.is_self() {
            self.acting_admin().await?;
        }
        if desired.is_empty() && !self.i.is_self() {
            self.warnings.push(
                "the new account has no project memberships (the account it replaces had none that could be copied)"
                    .into(),
            );
        }
        if let Some(other) = self.rotated_elsewhere().await? {
            // Another instance sharing this sink rotated since the observation:
            // its credential stands, and creating another account would be waste.
            self.warn(format!(
                "another instance published rotation {other} since this pass looked; nothing is created"
            ));
            return Ok(None);
        }
        let mut new = self.create(desired).await?;
        let name = &self.i.name;
        failpoint::point("after_create", name).await;
        let done = async {
            // Independent once the account exists: read it back (its
            // `expires` and memberships) and prove its credential, at once;
            // the first failure stops the other.
            let checked = async {
                let back = self.read_back(&new, cache).await;
                failpoint::point("after_memberships", name).await;
                back
            };
            let verified = async {
                let v = self.verify(&new).await;
                failpoint::point("after_verify", name).await;
                v
            };
            tokio::try_join!(checked, verified)?;
            new.expires = self.expiry(&new, new.account.expires);
            if let Some(e) = self.too_slow() {
                return Err(Failure::DeleteNew(e));
            }
            failpoint::point("before_publish", name).await;
            self.publish(&new, deleted).await?;
            failpoint::point("after_publish", name).await;
            Ok(())
        };
        match done.await {
            Ok(()) => {
                tracing::info!(account_id = new.account.id, username = %new.account.username, "Rotation complete.");
                Ok(Some(self.rotated(new)))
            }
            Err(f) => Err(self.clean_up(&new, f).await),
        }
    }

    /// Right before create, a routine rotation re-reads the sink: if another
    /// instance sharing it published since the observation, this one stops
    /// (a forced rotation goes on: it was asked for).
    async fn rotated_elsewhere(&mut self) -> Result<Option<String>, StepError> {
        if self.plan.reason == super::decide::RotateReason::Forced {
            return Ok(None);
        }
        let sink = self.ctx.sink_for(self.i).map_err(|c| self.fail(Step::ReadSink, c))?;
        let now = sink
            .read_current(&self.i.path)
            .await
            .map_err(|e| self.fail(Step::ReadSink, self.ctx.sink_cause(self.i, e)))?;
        let seen = self.obs.published.as_ref().map(|p| p.payload.rotation_id.as_str());
        match now {
            Some((p, _)) if Some(p.rotation_id.as_str()) != seen => {
                let id = p.rotation_id.clone();
                self.primary = Some(p);
                Ok(Some(id))
            }
            _ => Ok(None),
        }
    }

    /// An audit event of this rotation's create of `username`.
    fn audit_create(&self, username: &str, outcome: Outcome, detail: Option<String>) {
        self.ctx.audit(AuditEvent {
            rotation_id: Some(&self.id),
            username: Some(username),
            detail,
            ..self.ctx.audit_event(&self.i.name, Action::Create, outcome)
        });
    }

    /// Creates the account. Create is never retried: when its answer was
    /// lost, the account is looked for by its unique name and deleted.
    async fn create(&mut self, desired: Vec<ProjectGrant>) -> Result<NewAccount, StepError> {
        let username = Lineage::new(&self.ctx.scope.namespace, self.i.lineage_name()).new_username(self.at);
        let asked = after(self.at, self.plan.ttl);
        let body = CreateServiceAccount {
            username: username.clone(),
            role: Some(self.plan.role),
            expires: Some(asked),
            projects: Some(desired.clone()),
        };
        self.audit_create(&username, Outcome::Started, None);
        let created = match self.ctx.client.create_account(&body).await {
            Ok(c) => c,
            Err(e) => {
                // Audited whatever came of it: a lost answer may hide an account made.
                self.audit_create(&username, Outcome::Failed, Some(e.to_string()));
                let err = self.fail(Step::Create, Cause::Mixpanel(e.clone()));
                return Err(if e.maybe_applied() {
                    err.then(self.recover_lost_create(&username).await)
                } else {
                    err
                });
            }
        };
        let account = created.account;
        if strip_mixpanel_suffix(&account.username) != username || self.obs.all.get(account.id).is_some() {
            // Not the account asked for: never touch it. Ours, if it was
            // created, is found by its unique name and deleted.
            let cause = Cause::UnexpectedCreate {
                asked: username.clone(),
                id: account.id,
                username: account.username,
            };
            self.audit_create(&username, Outcome::Failed, Some(cause.to_string()));
            return Err(self
                .fail(Step::Create, cause)
                .then(self.recover_lost_create(&username).await));
        }
        self.ctx.audit(AuditEvent {
            rotation_id: Some(&self.id),
            account_id: Some(account.id),
            username: Some(&account.username),
            ..self.ctx.audit_event(&self.i.name, Action::Create, Outcome::Created)
        });
        Ok(NewAccount {
            creds: Credentials {
                username: account.username.clone(),
                secret: created.token,
            },
            account,
            desired,
            asked,
            created_at: Instant::now(),
            expires: None,
        })
    }

    /// After an ambiguous create failure: the account may exist, with its
    /// token lost. Find it by its unique username and delete it.
    async fn recover_lost_create(&self, username: &str) -> Consequence {
        let accounts = match self.ctx.client.list_accounts().await {
            Ok(a) => a,
            Err(e) => return Consequence::Unchecked { error: e.to_string() },
        };
        let Some(stray) = accounts.iter().find(|a| a.base_username() == username) else {
            return Consequence::NotCreated;
        };
        let d = Disposal::of(stray, DeleteReason::Orphan, Rule::FailedRotation, self.at);
        match self.ctx.delete(self.i, &d, None, Some(&self.id)).await {
            Ok(()) => Consequence::StrayDeleted { id: stray.id },
            Err(e) => Consequence::StrayDeleteFailed {
                id: stray.id,
                error: e.message(),
            },
        }
    }

    /// Reads the account back: is `expires` honoured, are the memberships there?
    /// Checks the new account's memberships (repaired once if short). Its
    /// `expires` is the one the create answered with: the account as
    /// Mixpanel recorded it, so no second read is needed.
    async fn read_back(&self, new: &NewAccount, cache: &MembershipCache) -> Result<(), Failure> {
        self.repair_memberships(new.account.id, &new.desired, cache, new.created_at)
            .await
            .map_err(Failure::DeleteNew)
    }

    /// The expiry to record: Mixpanel's, when it honoured the one asked for.
    fn expiry(&mut self, new: &NewAccount, recorded: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match recorded {
            Some(e) if e.signed_duration_since(new.asked).num_seconds().unsigned_abs() <= 60 => Some(e),
            other => {
                self.warn(format!(
                    "Mixpanel did not honour `expires` (asked {}, got {}): the account does not expire by itself; the rotator still rotates it on schedule",
                    rfc3339(new.asked),
                    other.map(rfc3339).unwrap_or_else(|| "none".into())
                ));
                other.or(Some(new.asked)).map(|e| e.min(new.asked))
            }
        }
    }

    /// The desired grants `account` lacks, read from each project's members
    /// (every project at once; a listing that started after `since`, the
    /// moment the account was known to exist, may serve several rotations).
    async fn missing(
        &self,
        account: u64,
        desired: &[ProjectGrant],
        cache: &MembershipCache,
        since: Instant,
    ) -> Result<Vec<ProjectGrant>, StepError> {
        let lists = futures_util::future::try_join_all(desired.iter().map(|g| async move {
            let rows = cache
                .fresh_members(&self.ctx.client, g.id, since)
                .await
                .map_err(|e| self.fail(Step::ReadBack, Cause::Project { id: g.id, source: e }))?;
            failpoint::point("after_member_list", &self.i.name).await;
            Ok::<_, StepError>(rows)
        }))
        .await?;
        let mut missing = Vec::new();
        for (g, rows) in desired.iter().zip(lists) {
            // Access parity (README, "Compatibility with Mixpanel"): its own
            // grant with exactly the desired role, or an organization-level
            // grant (from its organization role, which no project call can
            // change) that gives at least that role.
            let ok = rows.iter().any(|r| {
                r.account.id == account
                    && match r.target_type {
                        TargetType::Individual => r.role == g.role,
                        TargetType::Organization => r.role.covers(&g.role),
                        TargetType::Team | TargetType::Other(_) => false,
                    }
            });
            if !ok {
                missing.push(g.clone());
            }
        }
        Ok(missing)
    }

    /// Memberships equal to the desired set, repaired once if not.
    async fn repair_memberships(
        &self,
        account: u64,
        desired: &[ProjectGrant],
        cache: &MembershipCache,
        since: Instant,
    ) -> Result<(), StepError> {
        let missing = self.missing(account, desired, cache, since).await?;
        if missing.is_empty() {
            return Ok(());
        }
        tracing::warn!(account_id = account, missing = %Grants(&missing), "Memberships missing after create; adding them.");
        let body = AddToProjects {
            projects: missing.clone(),
            service_account_ids: vec![account],
        };
        self.ctx.audit(AuditEvent {
            account_id: Some(account),
            detail: Some(Grants(&missing).to_string()),
            ..self
                .ctx
                .audit_event(&self.i.name, Action::AddToProject, Outcome::Started)
        });
        if let Err(source) = self.ctx.client.add_to_projects(&body).await {
            self.ctx.audit(AuditEvent {
                account_id: Some(account),
                detail: Some(source.to_string()),
                ..self
                    .ctx
                    .audit_event(&self.i.name, Action::AddToProject, Outcome::Failed)
            });
            return Err(self.fail(
                Step::AddMemberships,
                Cause::AddMemberships {
                    account,
                    missing,
                    source,
                },
            ));
        }
        self.ctx.audit(AuditEvent {
            account_id: Some(account),
            detail: Some(Grants(&missing).to_string()),
            ..self.ctx.audit_event(&self.i.name, Action::AddToProject, Outcome::Added)
        });
        let missing = self.missing(account, desired, cache, Instant::now()).await?;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(self.fail(Step::ReadBack, Cause::MembershipsMissing { account, missing }))
        }
    }

    /// Proves the new credential works: `GET /me` with it, with retries (a
    /// fresh account may take a moment to be accepted).
    /// The rotator's own credential is rotated only by an organization
    /// admin (an owner is never re-created as one, and nothing else may
    /// create an admin): checked with `GET /me`, before anything is created.
    async fn acting_admin(&self) -> Result<(), StepError> {
        let org = self.ctx.client.organization_id();
        let fail = |cause| {
            self.fail(Step::CopyMemberships, cause)
                .then(Consequence::NothingCreated)
        };
        let me = self.ctx.client.me().await.map_err(|e| fail(Cause::Mixpanel(e)))?;
        match me.organization(org).and_then(|o| o.role.as_ref()) {
            Some(OrgRole::Admin) => Ok(()),
            other => Err(fail(Cause::NotAdmin {
                account: self.ctx.client.username().to_string(),
                role: other.map_or_else(|| "none".to_string(), ToString::to_string),
            })),
        }
    }

    async fn verify(&self, new: &NewAccount) -> Result<(), Failure> {
        let fail = |cause| Failure::DeleteNew(self.fail(Step::Verify, cause));
        let client = self
            .ctx
            .client
            .with_credentials(&new.creds)
            .map_err(|e| fail(Cause::Mixpanel(e)))?;
        let organization = self.ctx.client.organization_id();
        let retry = &self.ctx.verify_retry;
        // `mixpanel.verify_timeout`, and never more than half of
        // `orphan_after` (the publish deadline is three quarters of it).
        let budget = self.ctx.policy.mixpanel.verify_timeout.min(
            self.i
                .orphan_after
                .to_std()
                .unwrap_or_default()
                .checked_div(2)
                .unwrap_or_default(),
        );
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            // The budget is wall time: one call (with its own retries) never
            // runs past it.
            let left = budget.saturating_sub(started.elapsed());
            let answer = tokio::time::timeout(left, client.me()).await.unwrap_or_else(|_| {
                Err(MixpanelError::Transport {
                    endpoint: "me",
                    detail: "no answer within `mixpanel.verify_timeout`".into(),
                    connect: false,
                })
            });
            let last = match answer {
                Ok(me) if self.i.is_self() && me.sees(organization) && !is_admin(&me, organization) => {
                    return Err(fail(Cause::NotAdmin {
                        account: new.creds.username.clone(),
                        role: me
                            .organization(organization)
                            .and_then(|o| o.role.as_ref())
                            .map_or_else(|| "none".to_string(), ToString::to_string),
                    }));
                }
                Ok(me) if me.sees(organization) => {
                    tracing::info!(account_id = new.account.id, "New credential verified.");
                    return Ok(());
                }
                Ok(_) => Cause::WrongOrganization { organization },
                Err(e @ MixpanelError::Api { status: 401 | 403, .. }) => Cause::Mixpanel(e),
                Err(e) if e.retryable() => Cause::Mixpanel(e),
                Err(e) => return Err(fail(Cause::Mixpanel(e))),
            };
            let delay = retry.delay(attempt, None);
            if attempt >= retry.max_attempts || started.elapsed().saturating_add(delay) > budget {
                return Err(fail(Cause::NotAccepted {
                    attempts: attempt,
                    over: chrono::Duration::from_std(started.elapsed()).unwrap_or_default(),
                    last: Box::new(last),
                }));
            }
            tracing::debug!(attempt, error = %last, "New credential not accepted yet; retrying.");
            tokio::time::sleep(delay).await;
        }
    }

    /// A rotation never publishes past its own orphan deadline: other
    /// rotators delete an unpublished lineage account `orphan_after` after
    /// its creation (the margin of a quarter of it covers clock skew between
    /// hosts and the publish itself).
    fn too_slow(&self) -> Option<StepError> {
        let quarter = self.i.orphan_after.checked_div(4).unwrap_or_default();
        let deadline = span_between(self.i.orphan_after, quarter);
        let took = self.ctx.clock.now().signed_duration_since(self.at);
        // That the account still exists was proven by the verification just
        // made: a deleted account's credential authenticates nobody.
        (took > deadline).then(|| self.fail(Step::Publish, Cause::TooSlow { took, deadline }))
    }

    /// Publishes the new credential with compare-and-swap: the commit point.
    async fn publish(&mut self, new: &NewAccount, deleted: &[Disposal]) -> Result<(), Failure> {
        let i = self.i;
        let sink = self
            .ctx
            .sink_for(i)
            .map_err(|c| Failure::DeleteNew(self.fail(Step::Publish, c)))?;
        let payload = Payload {
            username: new.creds.username.clone(),
            secret: Secret::clone(&new.creds.secret),
            service_account_id: new.account.id,
            organization_id: self.ctx.scope.organization_id,
            integration: i.name.clone(),
            expires: new.expires,
            created: new.account.created.unwrap_or(self.at),
            rotated_at: self.at,
            rotation_id: self.id.clone(),
            previous_service_account_id: self.plan.replaces.as_ref().map(|a| a.id),
            projects: new.desired.clone(),
            retiring: self.plan.retiring(self.at, deleted),
        };
        let expected = self.obs.published.as_ref().map(|p| &p.version);
        let e = match sink.publish(&i.path, &payload, expected).await {
            Ok(version) => {
                self.ctx.audit(AuditEvent {
                    rotation_id: Some(&self.id),
                    account_id: Some(new.account.id),
                    username: Some(&new.account.username),
                    previous_account_id: payload.previous_service_account_id,
                    detail: Some(format!("sink `{}` path `{}` version {version}", i.sink, i.path)),
                    ..self.ctx.audit_event(&i.name, Action::Publish, Outcome::Published)
                });
                self.primary = Some(payload);
                return Ok(());
            }
            Err(e) => e,
        };
        let failed = self.fail(Step::Publish, self.ctx.sink_cause(i, e.clone()));
        if e.kind == SinkErrorKind::Conflict {
            return Err(Failure::DeleteNew(failed));
        }
        // Did the write land anyway? Only delete the new account if it surely did not.
        match sink.read_current(&i.path).await {
            Ok(Some((p, _))) if p.rotation_id == self.id => {
                tracing::warn!(error = %e, "Publish reported an error but the credential is published.");
                self.primary = Some(p);
                Ok(())
            }
            Ok(_) => Err(Failure::DeleteNew(failed)),
            Err(re) => Err(Failure::KeepNew(failed.then(Consequence::NewKept {
                id: new.account.id,
                read_error: re.to_string(),
            }))),
        }
    }

    /// After a failure past create: delete the new account unless it may be published.
    async fn clean_up(&self, new: &NewAccount, failure: Failure) -> StepError {
        let e = match failure {
            Failure::KeepNew(e) => return e,
            Failure::DeleteNew(e) => e,
        };
        let id = new.account.id;
        let d = Disposal::of(&new.account, DeleteReason::Orphan, Rule::FailedRotation, self.at);
        let protected = self.obs.published.as_ref().map(|p| p.payload.service_account_id);
        match self.ctx.delete(self.i, &d, protected, Some(&self.id)).await {
            Ok(()) => e.then(Consequence::NewDeleted { id }),
            Err(de) => e.then(Consequence::NewDeleteFailed {
                id,
                error: de.message(),
            }),
        }
    }

    fn rotated(&self, new: NewAccount) -> Rotated {
        Rotated {
            rotation_id: self.id.clone(),
            reason: self.plan.reason.clone(),
            service_account_id: new.account.id,
            username: new.account.username,
            expires: new.expires,
            projects: new.desired,
            previous_service_account_id: self.plan.replaces.as_ref().map(|a| a.id),
            next_rotation: Deadlines::of(self.i, new.expires, self.at).next_rotation(),
            rotated_at: self.at,
            duration_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Whether the integration's sink would take a publish; the error says
/// nothing was created.
async fn sink_writable(ctx: &Context, i: &Integration) -> Result<(), StepError> {
    let fail = |cause| StepError::new(&i.name, Step::SinkCheck, cause).then(Consequence::NothingCreated);
    let sink = ctx.sink_for(i).map_err(fail)?;
    sink.writable(&i.path).await.map_err(|e| fail(ctx.sink_cause(i, e)))
}

/// Whether `me` is an admin of organization `org`.
fn is_admin(me: &crate::mixpanel::Me, org: u64) -> bool {
    matches!(me.organization(org).and_then(|o| o.role.as_ref()), Some(OrgRole::Admin))
}
