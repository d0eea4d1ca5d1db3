//! The engine: one reconcile pass over the selected integrations, and what
//! each integration's pass reports to the metrics and the hooks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::decide::{Blocked, MembershipSource, Plan, Request, Scope, decide};
use super::error::{Cause, Consequence, SetupError, Step, StepError};
use super::observe::{MembershipCache, Observation};
use super::report::{CurrentView, Report, Rotated};
use super::rotate::Rotation;
use crate::audit::{Action, Audit, AuditEvent, Outcome};
use crate::clock::SharedClock;
use crate::hooks::{EventKind, HookEvent};
use crate::metrics::Metrics;
use crate::mixpanel::types::{ProjectGrant, ServiceAccount, TargetType};
use crate::mixpanel::{Client, ClientSettings, Credentials, RetryPolicy};
use crate::policy::{Integration, Policy, PolicyError};
use crate::sink::{self, Sink, SinkError};

/// What to do in a pass.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Integrations to rotate whatever their state (`rotate-now`).
    pub force: BTreeSet<String>,
    /// After publishing a forced rotation, delete the old account at once.
    pub revoke_old: bool,
    /// Only these integrations (default: all).
    pub only: Option<BTreeSet<String>>,
    /// Observe and decide, but do nothing (`plan`, `status`).
    pub dry_run: bool,
    /// Cancelled when the daemon is stopping: no deletion or rotation starts
    /// after that; a rotation past its create runs to its end (published, or
    /// its new account deleted).
    pub stop: Option<CancellationToken>,
}

impl PassOptions {
    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(CancellationToken::is_cancelled)
    }

    /// What was asked for integration `name`.
    pub fn request_for(&self, name: &str) -> Request {
        let force = self.force.contains(name);
        Request {
            force,
            revoke_old: force && self.revoke_old,
        }
    }
}

/// The reconcile engine.
pub struct Engine {
    pub(super) policy: Arc<Policy>,
    pub(super) scope: Scope,
    pub(super) client: Client,
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    pub(super) clock: SharedClock,
    pub(super) verify_retry: RetryPolicy,
    metrics: Option<Arc<Metrics>>,
    audit: Arc<Audit>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// How long to keep retrying the verification of a new credential by default.
pub fn default_verify_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base: std::time::Duration::from_millis(500),
        cap: std::time::Duration::from_secs(5),
        max_retry_after: std::time::Duration::from_secs(30),
    }
}

impl Engine {
    /// Builds the engine for a policy: reads the rotator's secret, sets up
    /// the client and every sink.
    pub fn from_policy(policy: Arc<Policy>, clock: SharedClock) -> Result<Self, SetupError> {
        Self::with_retry(policy, clock, RetryPolicy::default(), default_verify_retry())
    }

    /// As [`Engine::from_policy`], with explicit retry policies for API
    /// calls and for verifying a new credential (tests use short ones).
    pub fn with_retry(
        policy: Arc<Policy>,
        clock: SharedClock,
        api: RetryPolicy,
        verify: RetryPolicy,
    ) -> Result<Self, SetupError> {
        let m = &policy.mixpanel;
        let secret = m.secret.resolve("mixpanel.secret").map_err(PolicyError::from)?;
        let client = Client::new(ClientSettings {
            base_url: m.base_url.clone(),
            organization_id: m.organization_id,
            credentials: Credentials {
                username: m.username.clone(),
                secret,
            },
            max_concurrency: m.max_concurrency,
            timeout: m.timeout,
            retry: api,
        })?;
        let mut sinks = BTreeMap::new();
        for (name, cfg) in &policy.sinks {
            let s = sink::build(name, cfg).map_err(|source| SetupError::Sink {
                name: name.clone(),
                source,
            })?;
            sinks.insert(name.clone(), s);
        }
        Ok(Self {
            audit: Arc::new(Audit::new(policy.audit_path.as_deref())),
            scope: Scope::of(&policy),
            policy,
            client,
            sinks,
            clock,
            verify_retry: verify,
            metrics: None,
        })
    }

    /// Records API requests, rotations and deletions in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.client = self.client.with_metrics(metrics.clone());
        self.metrics = Some(metrics);
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The Mixpanel client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The sink an integration publishes to.
    pub fn sink(&self, name: &str) -> Option<&Arc<dyn Sink>> {
        self.sinks.get(name)
    }

    /// The integration's sink, or why there is none.
    pub(super) fn sink_for(&self, i: &Integration) -> Result<&Arc<dyn Sink>, Cause> {
        // Policy validation guarantees every integration's sink exists.
        self.sinks.get(&i.sink).ok_or_else(|| Cause::Sink {
            sink: format!("sink `{}`", i.sink),
            path: i.path.clone(),
            source: SinkError::invalid("no such sink is defined"),
        })
    }

    /// A sink failure of `i`, with the sink's name and the path (added here, once).
    pub(super) fn sink_cause(&self, i: &Integration, source: SinkError) -> Cause {
        Cause::Sink {
            sink: self
                .sinks
                .get(&i.sink)
                .map(|s| s.describe())
                .unwrap_or_else(|| format!("sink `{}`", i.sink)),
            path: i.path.clone(),
            source,
        }
    }

    /// Runs the sink's healthcheck for one integration; `None` when healthy.
    pub async fn sink_check(&self, integration: &str) -> Option<StepError> {
        let i = self.policy.integration(integration)?;
        let fail = |cause| Some(StepError::new(&i.name, Step::SinkCheck, cause));
        match self.sink_for(i) {
            Err(c) => fail(c),
            Ok(sink) => match sink.healthcheck(&i.path).await {
                Ok(_) => None,
                Err(e) => fail(self.sink_cause(i, e)),
            },
        }
    }

    /// Reads what the integration's sink has published, and builds its observation.
    pub async fn observe(&self, i: &Integration, accounts: &[ServiceAccount]) -> Result<Observation, StepError> {
        let fail = |cause| StepError::new(&i.name, Step::ReadSink, cause).then(Consequence::NothingTouched);
        let sink = self.sink_for(i).map_err(fail)?;
        let published = sink
            .read_current(&i.path)
            .await
            .map_err(|e| fail(self.sink_cause(i, e)))?;
        Ok(Observation::new(i, &self.scope.namespace, accounts, published))
    }

    /// The plan for `i` now, as a pass would make it.
    pub fn decide(&self, i: &Integration, obs: &Observation, req: Request) -> Plan {
        decide(i, &self.scope, obs, self.clock.now(), req)
    }

    /// One reconcile pass over the selected integrations, concurrently (the
    /// client's concurrency limit bounds the load on Mixpanel).
    pub async fn pass(&self, opts: &PassOptions) -> Vec<Report> {
        let now = self.clock.now();
        let selected: Vec<&Integration> = self
            .policy
            .integrations
            .iter()
            .filter(|i| opts.only.as_ref().is_none_or(|o| o.contains(&i.name)))
            .collect();
        let accounts = match self.client.list_accounts().await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "Cannot list service accounts; nothing is done in this pass.");
                return selected
                    .iter()
                    .map(|i| {
                        let mut r = Report::new(i, now);
                        r.errors
                            .push(StepError::new(&i.name, Step::ListAccounts, Cause::Mixpanel(e.clone())));
                        self.record(&r);
                        r
                    })
                    .collect();
            }
        };
        let cache = MembershipCache::default();
        futures_util::future::join_all(
            selected
                .into_iter()
                .map(|i| self.integration_pass(i, &accounts, &cache, opts, now)),
        )
        .await
    }

    async fn integration_pass(
        &self,
        i: &Integration,
        accounts: &[ServiceAccount],
        cache: &MembershipCache,
        opts: &PassOptions,
        now: DateTime<Utc>,
    ) -> Report {
        let mut report = Report::new(i, now);
        match self.observe(i, accounts).await {
            Err(e) => report.errors.push(e),
            Ok(obs) => {
                let plan = decide(i, &self.scope, &obs, now, opts.request_for(&i.name));
                if !matches!(plan.blocked, Some(Blocked::SharedPath(_))) {
                    report.current = CurrentView::of(&obs, &plan);
                }
                if let Some(b) = &plan.blocked {
                    report
                        .errors
                        .push(StepError::new(&i.name, b.step(), Cause::Blocked(b.clone())));
                }
                if opts.dry_run {
                    self.preview(i, &plan, cache, &mut report).await;
                } else if opts.stopping() {
                    report.warnings.push("shutting down: nothing started".into());
                } else {
                    self.act(i, &obs, &plan, cache, opts, &mut report).await;
                }
                report.plan = plan;
            }
        }
        self.record(&report);
        report
    }

    /// A dry run: which memberships the planned rotation would give (reads only).
    async fn preview(&self, i: &Integration, plan: &Plan, cache: &MembershipCache, report: &mut Report) {
        let Some(rp) = &plan.rotate else { return };
        match self
            .desired_memberships(i, &rp.memberships, cache, &mut report.warnings)
            .await
        {
            Ok(g) => report.preview = Some(g),
            Err(e) => report.errors.push(e),
        }
    }

    /// Carries out the plan: deletions due, then the rotation, its
    /// `--revoke-old` deletions and its hooks.
    async fn act(
        &self,
        i: &Integration,
        obs: &Observation,
        plan: &Plan,
        cache: &MembershipCache,
        opts: &PassOptions,
        report: &mut Report,
    ) {
        let protected = obs.published.as_ref().map(|p| p.payload.service_account_id);
        for d in &plan.delete_now {
            match self.delete(i, d, protected, None).await {
                Ok(()) => report.deleted.push(d.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        let Some(rp) = plan.rotate.as_ref().filter(|_| !opts.stopping()) else {
            return;
        };
        let outcome = Rotation::new(self, i, obs, rp).run(cache, &report.deleted).await;
        report.warnings.extend(outcome.warnings);
        let event = match outcome.result {
            Ok(rotated) => {
                let new_id = rotated.service_account_id;
                for d in rp.revoke.iter().filter(|d| d.id != new_id) {
                    match self.delete(i, d, Some(new_id), Some(&rotated.rotation_id)).await {
                        Ok(()) => report.deleted.push(d.clone()),
                        Err(e) => report.errors.push(e),
                    }
                }
                let ev = rotated_event(i, &rotated);
                report.rotated = Some(rotated);
                ev
            }
            Err(e) => {
                // The published credential is still good for a while: say how long.
                let kind = if plan.deadlines.in_renewal(report.at) {
                    EventKind::Expiring
                } else {
                    EventKind::RotationFailed
                };
                let ev = failed_event(i, kind, report.current.as_ref(), &e);
                report.errors.push(e);
                ev
            }
        };
        self.run_hooks(i, &event, &mut report.warnings).await;
    }

    /// The memberships a new account gets from `source`; team and
    /// organization grants cannot be copied and become warnings.
    pub(super) async fn desired_memberships(
        &self,
        i: &Integration,
        source: &MembershipSource,
        cache: &MembershipCache,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<ProjectGrant>, StepError> {
        let src = match source {
            MembershipSource::Explicit { grants } => return Ok(grants.clone()),
            MembershipSource::Recorded { gone, grants } => {
                warnings.push(format!(
                    "account {gone} is gone from Mixpanel; the new account gets the memberships recorded at the last rotation"
                ));
                return Ok(grants.clone());
            }
            MembershipSource::CopyFrom { account } => account,
        };
        let rows = cache
            .memberships_of(&self.client, src.id)
            .await
            .map_err(|e| StepError::new(&i.name, Step::CopyMemberships, Cause::Account { id: src.id, source: e }))?;
        let mut out = Vec::new();
        for (project, row) in rows {
            if row.target_type == TargetType::Individual {
                out.push(ProjectGrant {
                    id: project,
                    role: row.role,
                });
                continue;
            }
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
        out.sort();
        out.dedup_by_key(|g| g.id);
        Ok(out)
    }

    /// Runs the integration's hooks; a failure is a warning, never an error.
    async fn run_hooks(&self, i: &Integration, ev: &HookEvent, warnings: &mut Vec<String>) {
        let mut results = vec![("webhook", crate::hooks::webhook(i, ev).await)];
        if ev.event == EventKind::Rotated {
            results.insert(0, ("on_rotate", crate::hooks::on_rotate(i, ev).await));
        }
        for (hook, r) in results {
            if let Err(msg) = r {
                tracing::warn!(integration = %i.name, hook, "Hook failed (the rotation stands): {msg}");
                if let Some(m) = &self.metrics {
                    m.hook_failure(&i.name, hook);
                }
                warnings.push(format!("{hook} hook failed (the rotation stands): {msg}"));
            }
        }
    }

    /// Records one integration's pass in the metrics.
    fn record(&self, r: &Report) {
        let Some(m) = &self.metrics else { return };
        let i = r.integration.as_str();
        m.pass(i, !r.failed());
        if let Some(rot) = &r.rotated {
            m.rotation(i, true);
            m.rotation_done(i, rot.duration_seconds, rot.rotated_at);
            if let Some(e) = rot.expires {
                m.expiry(i, e);
            }
        } else if r.errors.iter().any(|e| e.step.is_rotation()) {
            m.rotation(i, false);
        } else if let Some(e) = r.current.as_ref().and_then(|c| c.expires) {
            m.expiry(i, e);
        }
        for d in &r.deleted {
            m.deleted(i, d.reason.as_str());
        }
        m.next_rotation(i, r.next_rotation());
    }

    /// Writes one audit event.
    pub(super) fn audit(&self, e: AuditEvent<'_>) {
        self.audit.record(&e);
    }

    /// An audit event of `integration`, now; callers fill in the rest.
    pub(super) fn audit_event<'a>(&self, integration: &'a str, action: Action, outcome: Outcome) -> AuditEvent<'a> {
        AuditEvent {
            at: self.clock.now(),
            integration,
            rotation_id: None,
            action,
            account_id: None,
            previous_account_id: None,
            username: None,
            reason: None,
            outcome,
            detail: None,
        }
    }
}

/// What the hooks learn of a rotation (never the secret).
fn rotated_event(i: &Integration, r: &Rotated) -> HookEvent {
    HookEvent {
        event: EventKind::Rotated,
        integration: i.name.clone(),
        rotation_id: Some(r.rotation_id.clone()),
        service_account_id: Some(r.service_account_id),
        username: Some(r.username.clone()),
        previous_service_account_id: r.previous_service_account_id,
        expires: r.expires,
        sink: i.sink.clone(),
        path: i.path.clone(),
        error: None,
    }
}

/// What the hooks learn of a failed rotation: the credential still in use, and the error.
fn failed_event(i: &Integration, kind: EventKind, current: Option<&CurrentView>, e: &StepError) -> HookEvent {
    HookEvent {
        event: kind,
        integration: i.name.clone(),
        rotation_id: None,
        service_account_id: current.map(|c| c.service_account_id),
        username: current.map(|c| c.username.clone()),
        previous_service_account_id: None,
        expires: current.and_then(|c| c.expires),
        sink: i.sink.clone(),
        path: i.path.clone(),
        error: Some(e.to_string()),
    }
}
