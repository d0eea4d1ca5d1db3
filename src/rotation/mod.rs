//! The reconcile engine: for each integration, observe (sink + account
//! list), decide (pure, in [`decide`]), act (delete what is due, rotate).
//! Running a pass twice does no harm; no local state is kept.

mod act;
pub mod decide;
pub mod lineage;
pub mod observe;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::clock::SharedClock;
use crate::mixpanel::types::ProjectGrant;
use crate::mixpanel::{Client, ClientSettings, Credentials, MixpanelError, RetryPolicy};
use crate::policy::{Integration, Policy, PolicyError};
use crate::sink::{self, Sink, SinkError};
pub use act::{grants_text, rfc3339};
pub use decide::{Decision, DeleteReason, Disposal, RotateReason, decide};
pub use observe::{MembershipCache, Observation};

/// The step a rotation failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    ListAccounts,
    ReadSink,
    SinkCheck,
    CopyMemberships,
    Create,
    ReadBack,
    Verify,
    Publish,
    Delete,
}

impl Step {
    /// Whether the step belongs to a rotation (as opposed to observing or deleting).
    pub fn is_rotation(self) -> bool {
        matches!(
            self,
            Step::CopyMemberships | Step::Create | Step::ReadBack | Step::Verify | Step::Publish
        )
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
        })
    }
}

/// A failure: which integration, at which step, what happened and what to do.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("integration `{integration}`: {step} failed: {message}")]
pub struct StepError {
    pub integration: String,
    pub step: Step,
    pub message: String,
}

impl StepError {
    fn new(i: &Integration, step: Step, message: impl fmt::Display) -> Self {
        Self {
            integration: i.name.clone(),
            step,
            message: message.to_string(),
        }
    }
}

/// Setting the engine up failed (secret unreadable, sink unusable).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Mixpanel(#[from] MixpanelError),
    #[error("sink `{name}`: {source}")]
    Sink {
        name: String,
        #[source]
        source: SinkError,
    },
}

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
    /// Set when the daemon is stopping: no deletion or rotation starts after
    /// it is set; a rotation past its create runs to its end (published, or
    /// its new account deleted).
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl PassOptions {
    fn stopping(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The published account, as a report shows it (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct CurrentView {
    pub service_account_id: u64,
    pub username: String,
    pub expires: Option<DateTime<Utc>>,
    pub rotated_at: DateTime<Utc>,
    pub rotation_id: String,
    /// Whether the account still exists in Mixpanel.
    pub exists: bool,
}

/// A completed rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    pub rotation_id: String,
    pub reason: RotateReason,
    pub service_account_id: u64,
    pub username: String,
    pub expires: Option<DateTime<Utc>>,
    pub projects: Vec<ProjectGrant>,
    pub previous_service_account_id: Option<u64>,
}

/// One integration's outcome of a pass.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub integration: String,
    pub sink: String,
    pub path: String,
    pub current: Option<CurrentView>,
    pub decision: Decision,
    /// Accounts deleted in this pass.
    pub deleted: Vec<Disposal>,
    pub rotated: Option<Rotated>,
    /// What a dry run would do, one line per action.
    pub plan: Vec<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<StepError>,
}

impl Report {
    fn new(i: &Integration) -> Self {
        Self {
            integration: i.name.clone(),
            sink: i.sink.clone(),
            path: i.path.clone(),
            current: None,
            decision: Decision::default(),
            deleted: vec![],
            rotated: None,
            plan: vec![],
            warnings: vec![],
            errors: vec![],
        }
    }

    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// The reconcile engine.
pub struct Engine {
    policy: Arc<Policy>,
    client: Client,
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    clock: SharedClock,
    verify_retry: RetryPolicy,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    audit: Arc<crate::audit::Audit>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine for a policy: reads the rotator's secret, sets up
    /// the client and every sink.
    pub fn from_policy(policy: Arc<Policy>, clock: SharedClock) -> Result<Self, SetupError> {
        Self::with_retry(
            policy,
            clock,
            RetryPolicy::default(),
            RetryPolicy {
                max_attempts: 6,
                base: std::time::Duration::from_millis(500),
                cap: std::time::Duration::from_secs(5),
                max_retry_after: std::time::Duration::from_secs(30),
            },
        )
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
        let secret = m.secret.resolve("mixpanel.secret")?;
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
        let audit = Arc::new(crate::audit::Audit::new(policy.audit_path.as_deref()));
        let mut sinks = BTreeMap::new();
        for (name, cfg) in &policy.sinks {
            let s = sink::build(name, cfg).map_err(|source| SetupError::Sink {
                name: name.clone(),
                source,
            })?;
            sinks.insert(name.clone(), s);
        }
        Ok(Self {
            policy,
            client,
            sinks,
            clock,
            verify_retry: verify,
            metrics: None,
            audit,
        })
    }

    /// Records API requests, rotations and deletions in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
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

    /// Runs the sink's healthcheck for one integration; `None` when healthy.
    pub async fn sink_check(&self, integration: &str) -> Option<StepError> {
        let i = self.policy.integration(integration)?;
        let sink = self.sinks.get(&i.sink)?;
        match sink.healthcheck(&i.path).await {
            Ok(_) => None,
            Err(e) => Some(StepError::new(i, Step::SinkCheck, format!("{}: {e}", sink.describe()))),
        }
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
                        let mut r = Report::new(i);
                        r.errors.push(StepError::new(i, Step::ListAccounts, &e));
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
        accounts: &[crate::mixpanel::ServiceAccount],
        cache: &MembershipCache,
        opts: &PassOptions,
        now: DateTime<Utc>,
    ) -> Report {
        let mut report = Report::new(i);
        let Some(sink) = self.sinks.get(&i.sink) else {
            // Policy validation guarantees every integration's sink exists.
            report
                .errors
                .push(StepError::new(i, Step::ReadSink, format!("no sink `{}`", i.sink)));
            return report;
        };
        let published = match sink.read_current(&i.path).await {
            Ok(p) => p,
            Err(e) => {
                report.errors.push(StepError::new(
                    i,
                    Step::ReadSink,
                    format!(
                        "{} path `{}`: {e}; nothing is rotated or deleted until it can be read",
                        sink.describe(),
                        i.path
                    ),
                ));
                return report;
            }
        };
        if let Some((p, _)) = &published
            && (p.integration != i.name || p.organization_id != self.client.organization_id())
        {
            report.errors.push(StepError::new(
                i,
                Step::ReadSink,
                format!(
                    "{} path `{}` holds the credential of integration `{}` in organization {}, not `{}` in {}: \
                     two integrations or policies share this path; give `{}` a path of its own. Nothing is rotated or deleted",
                    sink.describe(),
                    i.path,
                    p.integration,
                    p.organization_id,
                    i.name,
                    self.client.organization_id(),
                    i.key("path")
                ),
            ));
            return report;
        }
        let obs = Observation::new(i, &self.policy.namespace, accounts, published);
        if let Some(a) = &obs.adopted
            && (a.username == self.policy.mixpanel.username || a.base_username() == self.policy.mixpanel.username)
        {
            report.errors.push(StepError::new(
                i,
                Step::CopyMemberships,
                format!(
                    "`{}` names the rotator's own account ({}): adopting it would delete the rotator's credential after `grace`; adopt the account the integration uses",
                    i.key("adopt"),
                    a.username
                ),
            ));
            return report;
        }
        report.current = obs.published.as_ref().map(|p| CurrentView {
            service_account_id: p.payload.service_account_id,
            username: p.payload.username.clone(),
            expires: obs.current.as_ref().and_then(|c| c.expires).or(p.payload.expires),
            rotated_at: p.payload.rotated_at,
            rotation_id: p.payload.rotation_id.clone(),
            exists: obs.current.is_some(),
        });
        let forced = opts.force.contains(&i.name);
        let decision = decide(i, &obs, now, forced);
        if let Some(b) = &decision.blocked {
            report.errors.push(StepError::new(i, Step::CopyMemberships, b));
        }
        if opts.dry_run {
            self.describe_plan(i, &obs, &decision, cache, now, &mut report).await;
            report.decision = decision;
            return report;
        }
        if opts.stopping() {
            report.warnings.push("shutting down: nothing started".into());
            report.decision = decision;
            return report;
        }
        let protected = obs.published.as_ref().map(|p| p.payload.service_account_id);
        for d in &decision.delete_now {
            match self.delete(i, d, protected, None).await {
                Ok(()) => report.deleted.push(d.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        if let Some(reason) = decision.rotate.clone().filter(|_| !opts.stopping()) {
            let revoke = forced && opts.revoke_old;
            match self
                .rotate(i, &obs, reason, revoke, &report.deleted, cache, &mut report.warnings)
                .await
            {
                Ok((rotated, revoked)) => {
                    let ev = crate::hooks::HookEvent {
                        event: crate::hooks::EventKind::Rotated,
                        integration: i.name.clone(),
                        rotation_id: Some(rotated.rotation_id.clone()),
                        service_account_id: Some(rotated.service_account_id),
                        username: Some(rotated.username.clone()),
                        previous_service_account_id: rotated.previous_service_account_id,
                        expires: rotated.expires,
                        sink: i.sink.clone(),
                        path: i.path.clone(),
                        error: None,
                    };
                    report.rotated = Some(rotated);
                    report.deleted.extend(revoked.0);
                    report.errors.extend(revoked.1);
                    self.run_hooks(i, &ev, true, &mut report.warnings).await;
                }
                Err(e) => {
                    // The published credential is still good for a while: say how long.
                    let expires = report.current.as_ref().and_then(|c| c.expires);
                    let expiring = expires.is_some_and(|x| x - i.renew_before <= now);
                    let ev = crate::hooks::HookEvent {
                        event: if expiring {
                            crate::hooks::EventKind::Expiring
                        } else {
                            crate::hooks::EventKind::RotationFailed
                        },
                        integration: i.name.clone(),
                        rotation_id: None,
                        service_account_id: report.current.as_ref().map(|c| c.service_account_id),
                        username: report.current.as_ref().map(|c| c.username.clone()),
                        previous_service_account_id: None,
                        expires,
                        sink: i.sink.clone(),
                        path: i.path.clone(),
                        error: Some(e.to_string()),
                    };
                    report.errors.push(e);
                    self.run_hooks(i, &ev, false, &mut report.warnings).await;
                }
            }
        }
        report.decision = decision;
        report
    }

    /// Runs the integration's hooks; a failure is a warning, never an error.
    async fn run_hooks(
        &self,
        i: &Integration,
        ev: &crate::hooks::HookEvent,
        rotated: bool,
        warnings: &mut Vec<String>,
    ) {
        let mut results = vec![("webhook", crate::hooks::webhook(i, ev).await)];
        if rotated {
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
}
