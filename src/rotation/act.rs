//! Act: delete what is due, and rotate. The new token exists once, in
//! memory, between create and publish; on any failure in that window the new
//! account is deleted (or, if even that fails, left to the next pass, which
//! finds it by its lineage name).

use std::collections::BTreeSet;

use chrono::{DateTime, SubsecRound as _, Utc};
use tracing::Instrument as _;

use super::decide::{DeleteReason, Disposal, RotateReason, relative};
use super::lineage::{Lineage, new_rotation_id};
use super::observe::{MembershipCache, Observation};
use super::{Engine, Report, Rotated, Step, StepError};
use crate::audit::AuditEvent;
use crate::mixpanel::types::*;
use crate::mixpanel::{Credentials, MixpanelError};
use crate::policy::{Integration, ProjectsSpec, format_duration};
use crate::secret::Secret;
use crate::sink::{Payload, RetiringAccount, SinkError};

/// How a failure after create must be cleaned up.
enum Failure {
    /// Delete the new account: it was never published.
    DeleteNew(StepError),
    /// Leave it: it may have been published (the sink could not tell).
    KeepNew(StepError),
}

/// Accounts deleted and errors from revoking old accounts.
pub(super) type Revoked = (Vec<Disposal>, Vec<StepError>);

impl Engine {
    /// Deletes one account, refusing the published one.
    pub(super) async fn delete(
        &self,
        i: &Integration,
        d: &Disposal,
        protected: Option<u64>,
        rotation_id: Option<&str>,
    ) -> Result<(), StepError> {
        if Some(d.id) == protected {
            // decide() never proposes the published account; this is the last line of defence.
            return Err(StepError::new(
                i,
                Step::Delete,
                format!(
                    "refused to delete account {} because it is the published credential",
                    d.id
                ),
            ));
        }
        match self.client.delete_account(d.id).await {
            Ok(existed) => {
                self.audit.record(&AuditEvent {
                    reason: Some(d.reason.to_string()),
                    ..self.audit_event(
                        i,
                        rotation_id,
                        "delete",
                        Some(d.id),
                        Some(&d.username),
                        if existed { "deleted" } else { "already_gone" },
                    )
                });
                Ok(())
            }
            Err(e) => Err({
                self.audit.record(&AuditEvent {
                    reason: Some(d.reason.to_string()),
                    detail: Some(e.to_string()),
                    ..self.audit_event(i, rotation_id, "delete", Some(d.id), Some(&d.username), "failed")
                });
                StepError::new(
                    i,
                    Step::Delete,
                    format!(
                        "account {} ({}, {}): {e}; the next pass tries again",
                        d.id, d.username, d.reason
                    ),
                )
            }),
        }
    }

    /// The memberships the new account gets.
    async fn desired_memberships(
        &self,
        i: &Integration,
        obs: &Observation,
        cache: &MembershipCache,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<ProjectGrant>, StepError> {
        let ProjectsSpec::Explicit(list) = &i.projects else {
            let source = obs.current.as_ref().or(obs.adopted.as_ref());
            let Some(src) = source else {
                return match &obs.published {
                    Some(p) => {
                        warnings.push(format!(
                            "account {} is gone from Mixpanel; the new account gets the memberships recorded at the last rotation",
                            p.payload.service_account_id
                        ));
                        Ok(p.payload.projects.clone())
                    }
                    None => Err(StepError::new(
                        i,
                        Step::CopyMemberships,
                        "no account to copy memberships from",
                    )),
                };
            };
            let rows = cache
                .memberships_of(&self.client, src.id)
                .await
                .map_err(|e| StepError::new(i, Step::CopyMemberships, format!("account {}: {e}", src.id)))?;
            let mut out = Vec::new();
            for (project, row) in rows {
                if row.target_type == TargetType::Individual {
                    out.push(ProjectGrant {
                        id: project,
                        role: row.role,
                    });
                } else {
                    let w = format!(
                        "project {project}: {} has role `{}` there through a {} grant, which cannot be copied: grant it to the new account yourself, or list the project in `{}`",
                        src.username,
                        row.role,
                        row.target_type,
                        i.key("projects")
                    );
                    tracing::warn!(integration = %i.name, project, "{w}");
                    warnings.push(w);
                }
            }
            out.sort();
            out.dedup_by_key(|g| g.id);
            return Ok(out);
        };
        Ok(list.clone())
    }

    /// Rotates one integration. Returns the rotation and what `--revoke-old` deleted.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn rotate(
        &self,
        i: &Integration,
        obs: &Observation,
        reason: RotateReason,
        revoke_old: bool,
        deleted: &[Disposal],
        cache: &MembershipCache,
        warnings: &mut Vec<String>,
    ) -> Result<(Rotated, Revoked), StepError> {
        let rotation_id = new_rotation_id();
        let started = std::time::Instant::now();
        let span = tracing::info_span!("rotation", integration = %i.name, rotation_id = %rotation_id);
        async {
            tracing::info!(reason = %reason, "Rotating.");
            let desired = self.desired_memberships(i, obs, cache, warnings).await?;
            if desired.is_empty() {
                warnings.push("the new account has no project memberships (the account it replaces had none that could be copied)".into());
            }
            // Whole seconds: Mixpanel's timestamps have no fractions.
            let now = self.clock.now().trunc_subsecs(0);
            let username = Lineage::new(&self.policy.namespace, &i.name).new_username(now);
            let expires = now + i.ttl;
            let body = CreateServiceAccount {
                username: username.clone(),
                role: Some(i.role),
                expires: Some(expires),
                projects: Some(desired.clone()),
            };
            let created = match self.client.create_account(&body).await {
                Ok(c) => c,
                Err(e) => {
                    let mut msg = e.to_string();
                    if e.maybe_applied() {
                        msg.push_str(&self.recover_lost_create(i, &username, &rotation_id).await);
                    }
                    return Err(StepError::new(i, Step::Create, msg));
                }
            };
            let new = created.account;
            self.audit.record(&self.audit_event(i, Some(&rotation_id), "create", Some(new.id), Some(&new.username), "created"));
            let creds = Credentials {
                username: new.username.clone(),
                secret: created.token,
            };
            match self.finish(i, obs, &rotation_id, &new, creds, expires, &desired, revoke_old, deleted, now, warnings).await {
                Ok((payload_expires, previous)) => {
                    let rotated = Rotated {
                        rotation_id: rotation_id.clone(),
                        reason,
                        service_account_id: new.id,
                        username: new.username.clone(),
                        expires: payload_expires,
                        projects: desired,
                        previous_service_account_id: previous,
                    };
                    if let Some(m) = &self.metrics {
                        m.rotation_done(&i.name, started.elapsed().as_secs_f64(), now);
                    }
                    let revoked = if revoke_old { self.revoke_old(i, obs, new.id, &rotation_id).await } else { (vec![], vec![]) };
                    tracing::info!(account_id = new.id, username = %new.username, "Rotation complete.");
                    Ok((rotated, revoked))
                }
                Err(Failure::DeleteNew(e)) => {
                    let d = Disposal {
                        id: new.id,
                        username: new.username.clone(),
                        reason: DeleteReason::Orphan,
                        due: now,
                    };
                    let mut e = e;
                    match self.delete(i, &d, obs.published.as_ref().map(|p| p.payload.service_account_id), Some(&rotation_id)).await {
                        Ok(()) => e.message.push_str(&format!("; the new account {} was deleted, nothing changed", new.id)),
                        Err(de) => e.message.push_str(&format!(
                            "; deleting the new account {} failed too ({}): the next pass deletes it as an orphan once `orphan_after` has passed",
                            new.id, de.message
                        )),
                    }
                    Err(e)
                }
                Err(Failure::KeepNew(e)) => Err(e),
            }
        }
        .instrument(span)
        .await
    }

    /// After an ambiguous create failure: the account may exist, with its token
    /// lost. Find it by its unique username and delete it.
    async fn recover_lost_create(&self, i: &Integration, username: &str, rotation_id: &str) -> String {
        let accounts = match self.client.list_accounts().await {
            Ok(a) => a,
            Err(e) => {
                return format!(
                    "; could not check whether it was created anyway ({e}): the next pass deletes it as an orphan if it was"
                );
            }
        };
        let Some(stray) = accounts.iter().find(|a| a.base_username() == username) else {
            return "; it was not created".into();
        };
        let d = Disposal {
            id: stray.id,
            username: stray.username.clone(),
            reason: DeleteReason::Orphan,
            due: self.clock.now(),
        };
        match self.delete(i, &d, None, Some(rotation_id)).await {
            Ok(()) => format!(
                "; it had been created anyway (account {}) and was deleted, since its token was lost",
                stray.id
            ),
            Err(e) => format!(
                "; it had been created anyway (account {}) and deleting it failed ({}): the next pass deletes it as an orphan",
                stray.id, e.message
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        i: &Integration,
        obs: &Observation,
        rotation_id: &str,
        new: &ServiceAccount,
        creds: Credentials,
        expires: DateTime<Utc>,
        desired: &[ProjectGrant],
        revoke_old: bool,
        deleted: &[Disposal],
        now: DateTime<Utc>,
        warnings: &mut Vec<String>,
    ) -> Result<(Option<DateTime<Utc>>, Option<u64>), Failure> {
        // Read back: expiry honoured?
        let back =
            self.client.get_account(new.id).await.map_err(|e| {
                Failure::DeleteNew(StepError::new(i, Step::ReadBack, format!("account {}: {e}", new.id)))
            })?;
        let actual_expires = match back.expires {
            Some(e) if (e - expires).num_seconds().abs() <= 60 => Some(e),
            other => {
                let w = format!(
                    "Mixpanel did not honour `expires` (asked {}, got {}): the account does not expire by itself; the rotator still rotates it on schedule",
                    rfc3339(expires),
                    other.map(rfc3339).unwrap_or_else(|| "none".into())
                );
                tracing::warn!(account_id = new.id, "{w}");
                warnings.push(w);
                other.or(Some(expires)).map(|e| e.min(expires))
            }
        };
        // Memberships equal to the desired set, repaired once if not.
        self.check_memberships(i, new.id, desired, true)
            .await
            .map_err(Failure::DeleteNew)?;
        // Prove the credential works.
        self.verify(i, &creds).await.map_err(Failure::DeleteNew)?;
        tracing::info!(account_id = new.id, "New credential verified.");

        // Publish (the commit point).
        let previous = obs.current.as_ref().or(obs.adopted.as_ref()).map(|a| a.id);
        let not_before = if revoke_old { now } else { now + i.grace };
        let deleted_ids: BTreeSet<u64> = deleted.iter().map(|d| d.id).collect();
        let mut retiring: Vec<RetiringAccount> = obs
            .published
            .iter()
            .flat_map(|p| p.payload.retiring.iter())
            .filter(|r| !deleted_ids.contains(&r.id) && obs.all.iter().any(|a| a.id == r.id))
            .map(|r| RetiringAccount {
                id: r.id,
                not_before: if revoke_old { now } else { r.not_before },
            })
            .collect();
        let lineage = Lineage::new(&self.policy.namespace, &i.name);
        if let Some(old) = obs.current.as_ref().or(obs.adopted.as_ref()) {
            // A lineage account is found again by its name; any other (the
            // adopted one) must be remembered in the payload to be deleted.
            if lineage.parse(&old.username).is_none() && !retiring.iter().any(|r| r.id == old.id) {
                retiring.push(RetiringAccount { id: old.id, not_before });
            }
        }
        let payload = Payload {
            username: creds.username.clone(),
            secret: Secret::clone(&creds.secret),
            service_account_id: new.id,
            organization_id: self.client.organization_id(),
            integration: i.name.clone(),
            expires: actual_expires,
            created: new.created.unwrap_or(now),
            rotated_at: now,
            rotation_id: rotation_id.to_string(),
            previous_service_account_id: previous,
            projects: desired.to_vec(),
            retiring,
        };
        let sink = self
            .sinks
            .get(&i.sink)
            .ok_or_else(|| Failure::DeleteNew(StepError::new(i, Step::Publish, format!("no sink `{}`", i.sink))))?;
        let expected = obs.published.as_ref().map(|p| &p.version);
        match sink.publish(&i.path, &payload, expected).await {
            Ok(version) => {
                self.audit.record(&AuditEvent {
                    previous_account_id: previous,
                    detail: Some(format!("sink `{}` path `{}` version {version}", i.sink, i.path)),
                    ..self.audit_event(
                        i,
                        Some(rotation_id),
                        "publish",
                        Some(new.id),
                        Some(&new.username),
                        "published",
                    )
                });
                Ok((actual_expires, previous))
            }
            Err(SinkError::Conflict(m)) => Err(Failure::DeleteNew(StepError::new(
                i,
                Step::Publish,
                format!("{}: another rotator published first ({m})", sink.describe()),
            ))),
            Err(e) => {
                // Did the write land anyway? Only delete the new account if it surely did not.
                match sink.read_current(&i.path).await {
                    Ok(Some((p, _))) if p.rotation_id == rotation_id => {
                        tracing::warn!(error = %e, "Publish reported an error but the credential is published.");
                        Ok((actual_expires, previous))
                    }
                    Ok(_) => Err(Failure::DeleteNew(StepError::new(
                        i,
                        Step::Publish,
                        format!("{}: {e}", sink.describe()),
                    ))),
                    Err(re) => Err(Failure::KeepNew(StepError::new(
                        i,
                        Step::Publish,
                        format!(
                            "{}: {e}; reading it back failed too ({re}), so the new account {} is kept (it may be published); the next pass sorts it out",
                            sink.describe(),
                            new.id
                        ),
                    ))),
                }
            }
        }
    }

    /// Compares the account's memberships with `desired`; adds what is
    /// missing (once, when `repair`) and checks again.
    async fn check_memberships(
        &self,
        i: &Integration,
        account: u64,
        desired: &[ProjectGrant],
        repair: bool,
    ) -> Result<(), StepError> {
        let mut missing = Vec::new();
        for g in desired {
            let rows = self
                .client
                .list_project_members(g.id)
                .await
                .map_err(|e| StepError::new(i, Step::ReadBack, format!("project {}: {e}", g.id)))?;
            let ok = rows
                .iter()
                .any(|r| r.account.id == account && r.role == g.role && r.target_type == TargetType::Individual);
            if !ok {
                missing.push(*g);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if !repair {
            return Err(StepError::new(
                i,
                Step::ReadBack,
                format!(
                    "account {account} still lacks memberships {} after repair",
                    grants_text(&missing)
                ),
            ));
        }
        tracing::warn!(account_id = account, missing = %grants_text(&missing), "Memberships missing after create; adding them.");
        self.client
            .add_to_projects(&AddToProjects {
                projects: missing.clone(),
                service_account_ids: vec![account],
            })
            .await
            .map_err(|e| {
                StepError::new(
                    i,
                    Step::ReadBack,
                    format!("adding memberships {} to account {account}: {e}", grants_text(&missing)),
                )
            })?;
        self.audit.record(&AuditEvent {
            detail: Some(grants_text(&missing)),
            ..self.audit_event(i, None, "add_to_project", Some(account), None, "added")
        });
        Box::pin(self.check_memberships(i, account, desired, false)).await
    }

    /// Proves the new credential works: `GET /me` with it, with retries (a
    /// fresh account may take a moment to be accepted).
    async fn verify(&self, i: &Integration, creds: &Credentials) -> Result<(), StepError> {
        let client = self
            .client
            .with_credentials(creds)
            .map_err(|e| StepError::new(i, Step::Verify, e))?;
        let org = self.client.organization_id();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match client.me().await {
                Ok(me)
                    if me.organizations.values().any(|o| o.id == org)
                        || me.organizations.contains_key(&org.to_string()) =>
                {
                    return Ok(());
                }
                Ok(_) => format!("the new credential works but does not see organization {org}"),
                Err(e @ MixpanelError::Api { status: 401 | 403, .. }) => e.to_string(),
                Err(e) if e.retryable() => e.to_string(),
                Err(e) => return Err(StepError::new(i, Step::Verify, e)),
            };
            if attempt >= self.verify_retry.max_attempts {
                return Err(StepError::new(
                    i,
                    Step::Verify,
                    format!("{err} (after {attempt} attempts)"),
                ));
            }
            tracing::debug!(attempt, error = %err, "New credential not accepted yet; retrying.");
            tokio::time::sleep(self.verify_retry.delay(attempt, None)).await;
        }
    }

    /// `--revoke-old`: delete the superseded account(s) at once.
    async fn revoke_old(
        &self,
        i: &Integration,
        obs: &Observation,
        new_id: u64,
        rotation_id: &str,
    ) -> (Vec<Disposal>, Vec<StepError>) {
        let now = self.clock.now();
        let mut targets: Vec<Disposal> = Vec::new();
        let lineage = Lineage::new(&self.policy.namespace, &i.name);
        if let Some(old) = obs.current.as_ref().or(obs.adopted.as_ref()) {
            targets.push(Disposal {
                id: old.id,
                username: old.username.clone(),
                reason: DeleteReason::Revoked,
                due: now,
            });
        }
        // Older lineage accounts and remembered retiring ones go too; orphans
        // (possibly another rotator's work in flight) keep their own rule.
        let cur_ts = obs.current.as_ref().and_then(|c| lineage.parse(&c.username));
        for (a, ts) in &obs.lineage {
            if cur_ts.is_some_and(|c| *ts < c) {
                targets.push(Disposal {
                    id: a.id,
                    username: a.username.clone(),
                    reason: DeleteReason::Revoked,
                    due: now,
                });
            }
        }
        for r in obs.published.iter().flat_map(|p| p.payload.retiring.iter()) {
            if let Some(a) = obs.all.iter().find(|a| a.id == r.id) {
                targets.push(Disposal {
                    id: a.id,
                    username: a.username.clone(),
                    reason: DeleteReason::Revoked,
                    due: now,
                });
            }
        }
        targets.sort_by_key(|d| d.id);
        targets.dedup_by_key(|d| d.id);
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for d in targets.into_iter().filter(|d| d.id != new_id) {
            match self.delete(i, &d, Some(new_id), Some(rotation_id)).await {
                Ok(()) => done.push(d),
                Err(e) => errors.push(e),
            }
        }
        (done, errors)
    }

    /// Fills a dry run's report: what a pass would do, with no mutating call.
    pub(super) async fn describe_plan(
        &self,
        i: &Integration,
        obs: &Observation,
        d: &super::Decision,
        cache: &MembershipCache,
        now: DateTime<Utc>,
        report: &mut Report,
    ) {
        for x in &d.delete_now {
            report
                .plan
                .push(format!("delete account {} ({}): {}", x.id, x.username, x.reason));
        }
        if let Some(reason) = &d.rotate {
            let desired = match self.desired_memberships(i, obs, cache, &mut report.warnings).await {
                Ok(g) => grants_text(&g),
                Err(e) => {
                    report.errors.push(e);
                    "(unknown: see error)".into()
                }
            };
            report.plan.push(format!(
                "rotate ({reason}): create {}-{}-<timestamp>-<hex> with role `{}`, expires {} (ttl {}), projects {desired}; verify it; publish to sink `{}` at `{}`",
                self.policy.namespace,
                i.name,
                i.role,
                rfc3339(now + i.ttl),
                format_duration(i.ttl),
                i.sink,
                i.path
            ));
            if let Some(old) = obs.current.as_ref().or(obs.adopted.as_ref()) {
                report.plan.push(format!(
                    "keep the old account {} ({}) for `grace` ({}), then delete it",
                    old.id,
                    old.username,
                    format_duration(i.grace)
                ));
            }
        } else if d.blocked.is_none() {
            match d.next_rotation {
                Some(t) => report.plan.push(format!(
                    "no rotation due; next at {} ({})",
                    rfc3339(t),
                    relative(t, now)
                )),
                None => report.plan.push("no rotation due".into()),
            }
        }
        for x in &d.delete_later {
            let when = if x.due == DateTime::<Utc>::MAX_UTC {
                "once the policy is fixed (nothing is deleted while blocked)".to_string()
            } else {
                format!("at {} ({})", rfc3339(x.due), relative(x.due, now))
            };
            report.plan.push(format!(
                "later: delete account {} ({}, {}) {when}",
                x.id, x.username, x.reason
            ));
        }
    }
}

impl Engine {
    fn audit_event<'a>(
        &self,
        i: &'a Integration,
        rotation_id: Option<&'a str>,
        action: &'a str,
        account_id: Option<u64>,
        username: Option<&'a str>,
        outcome: &'a str,
    ) -> AuditEvent<'a> {
        AuditEvent {
            at: self.clock.now(),
            integration: &i.name,
            rotation_id,
            action,
            account_id,
            previous_account_id: None,
            username,
            reason: None,
            outcome,
            detail: None,
        }
    }
}

/// A time as RFC 3339 in whole seconds, `2026-11-28T04:00:00Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `[101 analyst, 102 admin]`
pub fn grants_text(g: &[ProjectGrant]) -> String {
    let parts: Vec<String> = g.iter().map(|g| format!("{} {}", g.id, g.role)).collect();
    format!("[{}]", parts.join(", "))
}
