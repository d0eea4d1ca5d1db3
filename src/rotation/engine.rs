//! The engine: one reconcile pass over the selected integrations, and what
//! each integration's pass reports to the metrics and the hooks.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::claims::{Claims, lineage_claim};
use super::context::Context;
use super::decide::{
    Blocked, Deadlines, DeleteReason, Disposal, NotOwned, Plan, Request, RotateReason, RotationPlan, Rule, Scope,
    decide,
};
use super::echo::reported;
use super::error::{Cause, Consequence, SetupError, Step, StepError};
use super::lineage::Lineage;
use super::memberships::desired;
use super::mirror::{self, MirrorState, MirrorSync, MirrorView};
use super::observe::{Accounts, MembershipCache, Observation};
use super::report::{CurrentView, Report, Rotated};
use super::rotate::Rotation;
use crate::clock::{SharedClock, after, span_between};
use crate::hooks::{EventKind, HookEvent};
use crate::metrics::Metrics;
use crate::mixpanel::types::ServiceAccount;
use crate::mixpanel::{Client, MixpanelError, RetryPolicy};
use crate::policy::{Integration, Policy};
use crate::sink::{Payload, Sink, Version};

/// What reading an integration's primary gave.
pub(super) type PrimaryRead = Result<Option<(Payload, Version)>, StepError>;

/// Integrations of one pass worked on at once: many, so that one read-back
/// listing of a project serves many rotations (at 64, a bootstrap of 10,000
/// took 4.5 times the CPU: each listing is of thousands of members). One
/// waiting for its turn or its sink read holds about 570 bytes.
const PASS_CONCURRENCY: usize = 512;

/// A pass over at most this many integrations reads every primary at once,
/// beside the account list; a larger one reads each when its turn comes, so
/// as not to hold them all.
const EARLY_READS: usize = 512;

/// Starts `start(input)` for each input, at most PASS_CONCURRENCY at a
/// time, and hands the outputs to `each` in the inputs' order. Each future
/// is made only when it starts (a pass's future holds the state of its
/// deepest step, kilobytes: making all of them first cost 36 MB at 10,000
/// integrations). A loop, not a stream adapter: that made the daemon's
/// future not `Send`.
async fn in_order<T, Fut: std::future::Future>(
    mut inputs: impl Iterator<Item = T>,
    mut start: impl FnMut(T) -> Fut,
    each: &mut (dyn FnMut(Fut::Output) + Send),
) {
    let mut running = futures_util::stream::FuturesOrdered::new();
    loop {
        while running.len() < PASS_CONCURRENCY {
            let Some(input) = inputs.next() else { break };
            running.push_back(start(input));
        }
        match running.next().await {
            Some(output) => each(output),
            None => return,
        }
    }
}

/// The primaries read with the account list (a small pass), then `None`
/// for every integration whose primary is read when its turn comes.
fn early_reads(reads: Vec<PrimaryRead>) -> impl Iterator<Item = Option<PrimaryRead>> {
    reads.into_iter().map(Some).chain(std::iter::repeat_with(|| None))
}

/// Account id -> (integration, its `adopt` key) of every integration adopting it.
type Adopters = std::collections::BTreeMap<u64, Vec<(String, String)>>;

/// One pass: what it was asked, its instant, and what it reads once and
/// every integration of it shares.
struct Pass<'a> {
    opts: &'a PassOptions,
    now: DateTime<Utc>,
    /// Who the rotator is in this pass (the account it acts as).
    scope: Scope,
    accounts: Arc<Accounts>,
    adopters: Adopters,
    /// Every primary's claims on accounts, read when some `adopt` names an
    /// existing account (`None`: none does, so no integration can reach
    /// another's accounts).
    claims: Option<Claims>,
    /// Project memberships, read at most once per project.
    cache: MembershipCache,
}

/// What to do in a pass.
#[derive(Debug, Clone)]
pub struct PassOptions {
    /// Integrations to rotate whatever their state (`rotate-now`).
    pub force: BTreeSet<String>,
    /// After publishing a forced rotation, delete the old account at once.
    pub revoke_old: bool,
    /// Only these integrations (default: all).
    pub only: Option<BTreeSet<String>>,
    /// Observe and decide, but do nothing (`plan`, `status`).
    pub dry_run: bool,
    /// Integrations in failure backoff, re-read in this pass (a resync
    /// asked over HTTP): their due rotation does not start.
    pub hold_rotation: BTreeSet<String>,
    /// Cancelled when the daemon is stopping: no deletion or rotation starts
    /// after that; a rotation past its create runs to its end (published, or
    /// its new account deleted).
    pub stop: Option<CancellationToken>,
    /// Whether the warnings and errors put in the reports are also logged
    /// at their level (default); a command that prints its reports logs
    /// them at debug only, so nothing is shown twice.
    pub log_reported: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        Self {
            force: BTreeSet::new(),
            revoke_old: false,
            only: None,
            dry_run: false,
            hold_rotation: BTreeSet::new(),
            stop: None,
            log_reported: true,
        }
    }
}

impl PassOptions {
    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(CancellationToken::is_cancelled)
    }

    /// What was asked for integration `name`.
    pub(crate) fn request_for(&self, name: &str) -> Request {
        let force = self.force.contains(name);
        Request {
            force,
            revoke_old: force && self.revoke_old,
        }
    }
}

/// The reconcile engine.
#[derive(Debug)]
pub struct Engine {
    pub(super) ctx: Context,
    /// Integrations a reload moved (sink, sink kind or path), with what
    /// their old place held: see [`Observation::inherited`].
    inherited: std::collections::BTreeMap<String, Payload>,
}

/// How long to keep retrying the verification of a new credential by default.
pub(crate) fn default_verify_retry() -> RetryPolicy {
    // Bounded by `mixpanel.verify_timeout` (default 60 s) rather than a count.
    RetryPolicy {
        max_attempts: 1000,
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
        Ok(Self {
            ctx: Context::new(policy, clock, api, verify)?,
            inherited: Default::default(),
        })
    }

    /// Where this policy puts each integration's primary, in canonical form.
    pub(crate) fn primary_places(&self) -> std::collections::BTreeMap<String, String> {
        let p = &self.ctx.policy;
        p.integrations
            .iter()
            .filter_map(|i| Some((i.name.clone(), p.sinks.get(&i.sink)?.backend().location(&i.path))))
            .collect()
    }

    /// What each integration of `old` (the engine of the policy before a
    /// reload) that this policy moves to another place published at its old
    /// place; carried into this engine, so that nothing the old place still
    /// serves becomes an unexplained account (it is replaced by the first
    /// rotation at the new place, then deleted after `grace`). Returns the
    /// integrations carried over.
    pub(crate) async fn carry_over(&mut self, old: &Engine) -> Vec<String> {
        let (before, now) = (old.primary_places(), self.primary_places());
        let organization = self.ctx.scope.organization_id;
        let mut carried = vec![];
        for i in &old.ctx.policy.integrations {
            let moved = match (before.get(&i.name), now.get(&i.name)) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            };
            // Still nothing published at its new place: keep what the old
            // engine had carried.
            let payload = if moved {
                match old.read_primary(i).await {
                    Ok(Some((p, _))) => Some(p),
                    Ok(None) => None,
                    Err(e) => {
                        reported!(warn, integration = %i.name, "The integration moved, and its old place cannot be read ({e}): the accounts it published there follow the idle rule");
                        None
                    }
                }
            } else {
                old.inherited.get(&i.name).cloned()
            };
            if let Some(p) = payload.filter(|p| p.is_of(&i.name, organization)) {
                carried.push(i.name.clone());
                self.inherited.insert(i.name.clone(), p);
            }
        }
        carried
    }

    /// Records API requests, rotations and deletions in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        for i in &self.ctx.policy.integrations {
            metrics.integration(&i.name, !i.mirrors.is_empty());
        }
        self.ctx.client = self.ctx.client.with_metrics(metrics.clone());
        self.ctx.metrics = Some(metrics);
        self
    }

    /// The time, by the engine's clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.ctx.clock.now()
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.ctx.policy
    }

    /// Whether the `[audit] path` could be appended to, changing nothing
    /// (`validate --online`).
    pub(crate) fn audit_check(&self) -> Result<String, crate::audit::AuditError> {
        self.ctx.audit_check()
    }

    /// The Mixpanel client.
    pub fn client(&self) -> &Client {
        &self.ctx.client
    }

    /// The sink an integration publishes to.
    pub fn sink(&self, name: &str) -> Option<&Arc<dyn Sink>> {
        self.ctx.sinks.get(name)
    }

    /// Runs the sink's healthcheck for one integration; `None` when healthy.
    pub(crate) async fn sink_check(&self, integration: &str) -> Option<StepError> {
        let i = self.ctx.policy.integration(integration)?;
        let fail = |cause| Some(StepError::new(&i.name, Step::SinkCheck, cause));
        match self.ctx.sink_for(i) {
            Err(c) => fail(c),
            Ok(sink) => match sink.healthcheck(&i.path).await {
                Ok(_) => None,
                Err(e) => fail(self.ctx.sink_cause(i, e)),
            },
        }
    }

    /// Reads what the integration's sink has published, and builds its observation.
    pub(crate) async fn observe(&self, i: &Integration, accounts: &[ServiceAccount]) -> Result<Observation, StepError> {
        let accounts = Arc::new(Accounts::in_namespaces(&self.ctx.scope.namespaces, accounts.to_vec()));
        let published = self.read_primary(i).await?;
        Ok(self.observation(i, &accounts, &self.adopters(&accounts), None, published))
    }

    /// The observation of `i` from a listing, the policy's claims and what
    /// its primary holds (read by the caller).
    pub(super) fn observe_with(
        &self,
        i: &Integration,
        accounts: &[ServiceAccount],
        claims: &Claims,
        published: Option<(Payload, Version)>,
    ) -> Observation {
        let accounts = Arc::new(Accounts::in_namespaces(&self.ctx.scope.namespaces, accounts.to_vec()));
        self.observation(i, &accounts, &self.adopters(&accounts), Some(claims), published)
    }

    /// Every primary's claims on accounts: the reads a pass made already
    /// (`known`, by integration name), and the others, PASS_CONCURRENCY at
    /// a time.
    pub(super) async fn claims<'a>(&'a self, known: &std::collections::HashMap<&str, &PrimaryRead>) -> Claims {
        let mut claims = Claims::default();
        let mut record = |name: &str, read: &PrimaryRead| match read {
            Ok(Some((p, _))) => claims.add(name, p),
            Ok(None) => {}
            Err(_) => claims.unread(name),
        };
        let mut rest = vec![];
        for i in &self.ctx.policy.integrations {
            match known.get(i.name.as_str()) {
                Some(read) => record(&i.name, read),
                None => rest.push(i),
            }
        }
        let read = |i: &'a Integration| async move { (i, Box::pin(self.read_primary(i)).await) };
        in_order(rest.into_iter(), read, &mut |(i, read)| record(&i.name, &read)).await;
        claims
    }

    /// Which integrations' `adopt` names each account (by id): built once
    /// per pass, so that an account adopted twice (by id in one integration,
    /// by username in another, which load-time checks cannot see) is found
    /// without a scan per integration.
    fn adopters(&self, accounts: &Accounts) -> Adopters {
        let mut out = Adopters::new();
        for j in &self.ctx.policy.integrations {
            if let Some(a) = j.adopt.as_ref().and_then(|a| accounts.resolve(a)) {
                out.entry(a.id).or_default().push((j.name.clone(), j.key("adopt")));
            }
        }
        out
    }

    /// What the integration's primary holds.
    pub(super) async fn read_primary(&self, i: &Integration) -> PrimaryRead {
        let fail = |cause| StepError::new(&i.name, Step::ReadSink, cause).then(Consequence::NothingTouched);
        let sink = self.ctx.sink_for(i).map_err(fail)?;
        sink.read_current(&i.path)
            .await
            .map_err(|e| fail(self.ctx.sink_cause(i, e)))
    }

    fn observation(
        &self,
        i: &Integration,
        accounts: &Arc<Accounts>,
        adopters: &Adopters,
        claims: Option<&Claims>,
        published: Option<(Payload, Version)>,
    ) -> Observation {
        let mut obs = Observation::in_namespaces(i, &self.ctx.scope.namespaces, accounts, published);
        obs.mixpanel_clock = self.mixpanel_clock();
        if let Some(old) = self.inherited.get(&i.name) {
            obs.inherit(old.clone());
        }
        obs.adopt_shared_with = obs.adopt_target.as_ref().and_then(|mine| {
            adopters
                .get(&mine.id)?
                .iter()
                .find(|(name, _)| *name != i.name)
                .map(|(_, key)| key.clone())
        });
        if let Some(t) = &obs.adopt_target {
            let policy = &self.ctx.policy;
            match claims {
                Some(c) => {
                    obs.adopt_claimed_by = c.other(policy, t, &i.name);
                    obs.adopt_unverified = c.unknown_besides(&i.name);
                }
                None => obs.adopt_claimed_by = lineage_claim(policy, t, &i.name),
            }
        }
        obs
    }

    /// The plan for `i` now, as a pass would make it.
    pub fn decide(&self, i: &Integration, obs: &Observation, req: Request) -> Plan {
        decide(i, &self.scope(), obs, self.ctx.clock.now(), req)
    }

    /// One reconcile pass over the selected integrations, concurrently (the
    /// client's concurrency limit bounds the load on Mixpanel): every
    /// report, in the policy's order.
    pub async fn pass(&self, opts: &PassOptions) -> Vec<Report> {
        // Exactly sized: a pass over 10,000 integrations keeps every report.
        let mut out = Vec::with_capacity(self.selected(opts).count());
        self.pass_each(opts, &mut |r| out.push(r)).await;
        out
    }

    /// The integrations a pass works on, in the policy's order.
    fn selected<'a>(&'a self, opts: &'a PassOptions) -> impl Iterator<Item = &'a Integration> {
        self.ctx
            .policy
            .integrations
            .iter()
            .filter(|i| opts.only.as_ref().is_none_or(|o| o.contains(&i.name)))
    }

    /// [`Engine::pass`], handing each report to `each` as soon as it and
    /// those before it are done: a caller that renders and drops them holds
    /// a few hundred reports at a time, not one per integration.
    pub(crate) async fn pass_each(&self, opts: &PassOptions, each: &mut (dyn FnMut(Report) + Send)) {
        super::echo::scoped(opts.log_reported, self.pass_scoped(opts, each)).await;
    }

    /// [`Engine::pass_each`], its reported text logged as `opts` says.
    async fn pass_scoped(&self, opts: &PassOptions, each: &mut (dyn FnMut(Report) + Send)) {
        // The rotator's own credential as published now (another instance
        // may have rotated it): before any Mixpanel call of this pass.
        self.ctx.client.refresh().await;
        let now = self.ctx.clock.now();
        let selected: Vec<&Integration> = self.selected(opts).collect();
        if !opts.dry_run
            && let Err(e) = self.ctx.audit_writable()
        {
            reported!(error, "{e}");
            return self.all_failed(&selected, now, Step::Audit, &Cause::Audit(e), each);
        }
        // At once: the account list, the primaries (when there are few: a
        // large pass reads each as it gets to it, so as not to hold them
        // all), and (when a rotation is asked for) the projects to copy
        // memberships from.
        let cache = MembershipCache::default();
        let early = selected.len() <= EARLY_READS;
        let reads = futures_util::future::join_all(
            selected
                .iter()
                .filter(|_| early)
                .map(|i| async { self.read_primary(i).await }),
        );
        let prefetch = async {
            if !opts.force.is_empty() && !opts.dry_run {
                // A failure is met again, and reported, where it matters.
                let _ = cache.projects(&self.ctx.client).await;
            }
        };
        let (listed, reads, ()) = tokio::join!(self.ctx.client.list_accounts(), reads, prefetch);
        let accounts = match listed {
            Ok(a) => a,
            Err(e) => {
                reported!(error, error = %e, "Cannot list service accounts; nothing is done in this pass.");
                return self.unreached(selected, reads, now, &Cause::Mixpanel(e), each).await;
            }
        };
        self.check_clock();
        let accounts = Arc::new(Accounts::in_namespaces(&self.ctx.scope.namespaces, accounts));
        let adopters = self.adopters(&accounts);
        let claims = if adopters.is_empty() {
            None
        } else {
            let known = selected.iter().map(|i| i.name.as_str()).zip(reads.iter()).collect();
            Some(self.claims(&known).await)
        };
        let pass = Pass {
            opts,
            now,
            scope: self.scope(),
            adopters,
            claims,
            accounts,
            cache,
        };
        self.integrations(selected, reads, &pass, each).await;
    }

    /// Who the rotator is now: the policy's scope, with the account this
    /// process acts as (the seed, or its own published credential).
    fn scope(&self) -> Scope {
        Scope {
            rotator: self.ctx.client.username().to_string(),
            ..self.ctx.scope.clone()
        }
    }

    /// Mixpanel's clock against ours, as its recent answers show it.
    fn mixpanel_clock(&self) -> super::decide::MixpanelClock {
        super::decide::MixpanelClock {
            offset: self.ctx.client.clock_offset(),
            spread: self.ctx.client.clock_spread(),
        }
    }

    /// Mixpanel's clock against ours, after the account listing: in the
    /// metrics, and a warning when deletions judged by `last_used` must
    /// wait for it.
    fn check_clock(&self) {
        let clock = self.mixpanel_clock();
        if let Some(m) = &self.ctx.metrics {
            m.clock_offset(clock.offset);
        }
        if let Some(problem) = clock.problem() {
            reported!(
                warn,
                offset_seconds = clock.offset.map(|o| o.num_seconds()),
                "{problem}"
            );
        }
    }

    /// Each integration's pass, in order, at most PASS_CONCURRENCY at a
    /// time (the client's per-host limit bounds the load on Mixpanel; this
    /// bounds the memory of a pass over thousands of integrations).
    async fn integrations(
        &self,
        selected: Vec<&Integration>,
        reads: Vec<PrimaryRead>,
        pass: &Pass<'_>,
        each: &mut (dyn FnMut(Report) + Send),
    ) {
        let inputs = selected.into_iter().zip(early_reads(reads));
        in_order(inputs, |(i, read)| self.read_and_pass(i, read, pass), each).await;
    }

    /// One integration's pass, reading its primary first unless it was read
    /// with the account list.
    async fn read_and_pass(&self, i: &Integration, read: Option<PrimaryRead>, pass: &Pass<'_>) -> Report {
        // Both boxed, each only while it runs: an integration waiting for
        // its turn or its sink read holds a few hundred bytes, not the
        // kilobytes of a pass's deepest state.
        let read = match read {
            Some(r) => r,
            None => Box::pin(self.read_primary(i)).await,
        };
        Box::pin(self.integration_pass(i, read, pass)).await
    }

    /// A pass that could not list the accounts: the failure for each
    /// integration, with what its sink publishes (its expiry and next
    /// rotation are known without Mixpanel: monitoring does not go blind
    /// when Mixpanel does).
    async fn unreached(
        &self,
        selected: Vec<&Integration>,
        reads: Vec<PrimaryRead>,
        now: DateTime<Utc>,
        cause: &Cause,
        each: &mut (dyn FnMut(Report) + Send),
    ) {
        // The primaries not read yet are read PASS_CONCURRENCY at a time, in
        // order (with Mixpanel down, 10,000 Vault reads one after the other
        // would hold the pass for minutes).
        let inputs = selected.into_iter().zip(early_reads(reads));
        let read = |(i, read)| async move {
            match read {
                Some(r) => (i, r),
                None => (i, Box::pin(self.read_primary(i)).await),
            }
        };
        in_order(inputs, read, &mut |(i, read)| {
            let mut r = Report::new(i, now);
            r.errors
                .push(StepError::new(&i.name, Step::ListAccounts, cause.clone()));
            match read {
                Ok(Some((p, _))) => {
                    r.plan.deadlines = Deadlines::of(i, p.expires, p.rotated_at);
                    r.current = Some(CurrentView::published(&p));
                }
                Ok(None) => {}
                Err(e) => r.errors.push(e),
            }
            self.record(&r);
            each(r);
        })
        .await;
    }

    /// A pass that stopped before any integration's own work: the same
    /// failure for each.
    fn all_failed(
        &self,
        selected: &[&Integration],
        now: DateTime<Utc>,
        step: Step,
        cause: &Cause,
        each: &mut (dyn FnMut(Report) + Send),
    ) {
        for i in selected {
            let mut r = Report::new(i, now);
            r.errors.push(StepError::new(&i.name, step, cause.clone()));
            self.record(&r);
            each(r);
        }
    }

    async fn integration_pass(&self, i: &Integration, read: PrimaryRead, pass: &Pass<'_>) -> Report {
        let (opts, now, cache) = (pass.opts, pass.now, &pass.cache);
        let mut report = Report::new(i, now);
        let observed = match read.map(|p| self.observation(i, &pass.accounts, &pass.adopters, pass.claims.as_ref(), p))
        {
            Ok(obs) => confirm_current(obs, &self.ctx.client, i, &self.ctx.scope.namespaces).await,
            Err(e) => Err(e),
        };
        match observed {
            Err(e) => report.errors.push(e),
            Ok(obs) => {
                let mut plan = decide(i, &pass.scope, &obs, now, opts.request_for(&i.name));
                if !matches!(plan.blocked.as_deref(), Some(Blocked::SharedPath(_))) {
                    report.current = CurrentView::of(&obs, &plan);
                }
                if let Some(b) = &plan.blocked {
                    report
                        .errors
                        .push(StepError::new(&i.name, b.step(), Cause::Blocked((**b).clone())));
                }
                self.report_ownership(i, &plan, &mut report);
                let mut changed = None;
                if opts.dry_run {
                    report.warnings.extend(elsewhere_warnings(i, &obs, &plan, now));
                    Box::pin(self.preview(i, &plan, cache, &mut report)).await;
                } else if opts.stopping() {
                    report.warnings.push("shutting down: nothing started".into());
                } else {
                    let primary = obs.published.as_ref().map(|p| &p.payload);
                    Box::pin(self.hold_for_mirrors(i, primary, &mut plan, now, &mut report)).await;
                    // Boxed: a rotation's state is large, and a pass holds one
                    // future per integration (10,000 of them stay small).
                    changed = Box::pin(self.act(i, &obs, &plan, pass, &mut report)).await;
                }
                let refused = matches!(
                    plan.blocked.as_deref(),
                    Some(Blocked::SharedPath(_) | Blocked::ForeignCurrent { .. })
                );
                let primary = changed.or_else(|| obs.published.map(|p| p.payload));
                Box::pin(self.mirror(i, primary.as_ref().filter(|_| !refused), opts, &mut report)).await;
                self.check_modes(i, !opts.dry_run, &mut report).await;
                report.plan = plan;
            }
        }
        self.record(&report);
        report
    }

    /// Mirrors hold deletion: before an account the payload vouches for is
    /// deleted, every mirror is brought up to date; while one does not hold
    /// the primary's payload, its consumers may still use the old account,
    /// so the deletion waits, until `max_grace` past its due time. Then it
    /// is deleted anyway, as an error of the pass naming the stale mirror
    /// (with its webhook).
    async fn hold_for_mirrors(
        &self,
        i: &Integration,
        primary: Option<&Payload>,
        plan: &mut Plan,
        now: DateTime<Utc>,
        report: &mut Report,
    ) {
        let vouched = |d: &Disposal| d.reason == DeleteReason::Retiring;
        if i.mirrors.is_empty() || !plan.delete_now.iter().any(vouched) {
            return;
        }
        let synced = mirror::sync(&self.ctx, i, primary, true).await;
        let stale: Vec<String> = synced
            .views
            .iter()
            .filter(|v| !v.state.up_to_date())
            .map(|v| format!("sink `{}` path `{}`", v.sink, v.path))
            .collect();
        if stale.is_empty() {
            return;
        }
        let stale = stale.join(", ");
        let extra = span_between(i.max_grace, i.grace).max(chrono::Duration::zero());
        let (due, rest): (Vec<Disposal>, Vec<Disposal>) = std::mem::take(&mut plan.delete_now)
            .into_iter()
            .partition(|d| !vouched(d));
        plan.delete_now = due;
        for mut d in rest {
            let cap = if d.rule == Rule::MaxGrace {
                d.due.unwrap_or(now)
            } else {
                after(d.due.unwrap_or(now), extra)
            };
            if cap <= now {
                let e = StepError::new(
                    &i.name,
                    Step::Delete,
                    Cause::StaleMirror {
                        id: d.id,
                        mirrors: stale.clone(),
                    },
                );
                reported!(error, integration = %i.name, account_id = d.id, "{e}");
                let ev = failed_event(i, EventKind::MirrorFailed, report.current.as_ref(), &e);
                self.run_hooks(i, &ev, &mut report.warnings).await;
                report.errors.push(e);
                plan.delete_now.push(d);
            } else {
                let w = format!(
                    "account {} ({}) is kept although due: mirror {stale} does not hold the current credential, so its consumers may still use it; deleted once the mirror is up to date, or at {} anyway",
                    d.id,
                    d.username,
                    crate::text::rfc3339(cap)
                );
                reported!(warn, integration = %i.name, account_id = d.id, "{w}");
                report.warnings.push(w);
                if let Some(m) = &self.ctx.metrics {
                    m.held_by_mirror(&i.name);
                }
                d.due = Some(cap);
                plan.delete_later.push(d);
            }
        }
    }

    /// A credential file (primary or mirror) found with other permissions
    /// than its sink's `mode` is set back (`fix`, a pass) or said to be
    /// (a dry run): a warning of the pass either way, and a counter.
    async fn check_modes(&self, i: &Integration, fix: bool, report: &mut Report) {
        let places = std::iter::once((&i.sink, &i.path)).chain(i.mirrors.iter().map(|m| (&m.sink, &m.path)));
        for (sink_name, path) in places {
            let Some(sink) = self.ctx.sinks.get(sink_name) else {
                continue;
            };
            let w = match sink.mode_drift(path, fix).await {
                Ok(None) => continue,
                Ok(Some(found)) if fix => {
                    if let Some(m) = &self.ctx.metrics {
                        m.mode_repaired(&i.name);
                    }
                    format!(
                        "{} path `{path}`: the credential file's mode was {found}: set back",
                        sink.describe()
                    )
                }
                Ok(Some(found)) => format!(
                    "{} path `{path}`: the credential file's mode is {found}: set back at the next pass",
                    sink.describe()
                ),
                Err(e) => format!("{} path `{path}`: its mode cannot be set back: {e}", sink.describe()),
            };
            reported!(warn, integration = %i.name, "{w}");
            report.warnings.push(w);
        }
    }

    /// Brings the integration's mirrors up to date with what the primary
    /// holds (a dry run only reads them); a failure is an error of the
    /// pass, with its webhook.
    async fn mirror(&self, i: &Integration, primary: Option<&Payload>, opts: &PassOptions, report: &mut Report) {
        if i.mirrors.is_empty() {
            return;
        }
        let synced = mirror::sync(&self.ctx, i, primary, !opts.dry_run).await;
        report.mirrors = synced.views;
        if let (Some(e), false) = (synced.errors.first(), opts.dry_run) {
            let ev = failed_event(i, EventKind::MirrorFailed, report.current.as_ref(), e);
            self.run_hooks(i, &ev, &mut report.warnings).await;
        }
        report.errors.extend(synced.errors);
    }

    /// The gauges a pass sets from what the primaries publish (expiry, next
    /// rotation), set from the primaries alone, with no Mixpanel call: at a
    /// daemon's start, before its first pass (which waits its share of
    /// `spread`), so a restart does not look like an outage on dashboards.
    pub(crate) async fn prime_gauges<'a>(&'a self) {
        let Some(m) = &self.ctx.metrics else { return };
        let read = |i: &'a Integration| async move { (i, Box::pin(self.read_primary(i)).await) };
        in_order(self.ctx.policy.integrations.iter(), read, &mut |(i, read)| {
            if let Ok(Some((p, _))) = read
                && p.is_of(&i.name, self.ctx.scope.organization_id)
            {
                if let Some(e) = p.expires {
                    m.expiry(&i.name, e);
                }
                m.next_rotation(&i.name, Deadlines::of(i, p.expires, p.rotated_at).next_rotation());
            }
        })
        .await;
    }

    /// Brings the mirrors of the selected integrations up to date from their
    /// primaries, between passes: one primary read and one read per mirror,
    /// no Mixpanel call, never a rotation or a deletion.
    pub async fn sync_mirrors(&self, only: Option<&BTreeSet<String>>) -> Vec<MirrorSync> {
        let selected = self
            .ctx
            .policy
            .integrations
            .iter()
            .filter(|i| !i.mirrors.is_empty() && only.is_none_or(|o| o.contains(&i.name)));
        let synced = futures_util::future::join_all(selected.map(|i| async move {
            match self.read_primary(i).await {
                Ok(p) => mirror::sync(&self.ctx, i, p.map(|(p, _)| p).as_ref(), true).await,
                Err(e) => mirror::unread(i, e.then(Consequence::MirrorLeft)),
            }
        }))
        .await;
        for s in &synced {
            self.record_mirrors(&s.integration, &s.views);
        }
        synced
    }

    /// The mirrors' states in the metrics.
    fn record_mirrors(&self, integration: &str, views: &[MirrorView]) {
        let Some(m) = &self.ctx.metrics else { return };
        for v in views {
            let wrote = match v.state {
                MirrorState::Updated => Some(true),
                MirrorState::Failed => Some(false),
                _ => None,
            };
            m.mirror(integration, &v.sink, &v.path, v.state.up_to_date(), wrote);
        }
    }

    /// Unexplained accounts in use are errors; payload entries naming
    /// accounts that are not ours are warnings (with the sink and path);
    /// deletions waiting for Mixpanel's clock are warnings.
    fn report_ownership(&self, i: &Integration, plan: &Plan, report: &mut Report) {
        if let Some(c) = &plan.clock_held {
            report.warnings.push(format!(
                "{} deletion(s) judged by Mixpanel's last_used wait: {}",
                c.held,
                c.clock.problem().unwrap_or_default()
            ));
        }
        for u in &plan.in_use {
            let e = StepError::new(&i.name, Step::CheckAccounts, Cause::InUseElsewhere(u.clone()));
            reported!(warn, integration = %i.name, account_id = u.id, "{e}");
            report.errors.push(e);
        }
        for x in &plan.ignored {
            let whose = match x.why {
                NotOwned::Rotator => "the rotator's own account",
                NotOwned::Foreign => "neither of this integration's lineage nor the account `adopt` names",
            };
            let sink = self.ctx.sinks.get(&i.sink).map(|s| s.describe()).unwrap_or_default();
            let w = format!(
                "{sink} path `{}`: the payload's `{}` names account {} ({}), which is {whose}: ignored, never deleted; someone who can write the sink may have edited it",
                i.path, x.field, x.id, x.username
            );
            reported!(warn, integration = %i.name, account_id = x.id, "{w}");
            report.warnings.push(w);
        }
    }

    /// A dry run: which memberships the planned rotation would give (reads only).
    async fn preview(&self, i: &Integration, plan: &Plan, cache: &MembershipCache, report: &mut Report) {
        let Some(rp) = &plan.rotate else { return };
        match desired(&self.ctx, i, &rp.memberships, cache, &mut report.warnings).await {
            Ok(g) => report.preview = Some(g),
            Err(e) => report.errors.push(e),
        }
    }

    /// Carries out the plan: deletions due, then the rotation, its
    /// `--revoke-old` deletions and its hooks. Returns what the primary
    /// holds when that changed in this pass (for the mirrors).
    async fn act(
        &self,
        i: &Integration,
        obs: &Observation,
        plan: &Plan,
        pass: &Pass<'_>,
        report: &mut Report,
    ) -> Option<Payload> {
        let opts = pass.opts;
        let protected = obs.record().map(|p| p.service_account_id);
        for d in &plan.delete_now {
            match self.ctx.delete(i, d, protected, None).await {
                Ok(()) => report.deleted.push(d.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        let rp = plan.rotate.as_ref().filter(|_| !opts.stopping())?;
        if opts.hold_rotation.contains(&i.name) {
            report.warnings.push(format!(
                "a rotation is due ({}), but `{}` is in failure backoff: this pass was asked by `POST /-/resync` and only re-reads it; the rotation is tried again when the backoff ends",
                rp.reason, i.name
            ));
            return None;
        }
        if let Some(held) = held_for_leftovers(i, plan, rp, report) {
            report.warnings.push(held);
            return None;
        }
        let outcome = Rotation::new(&self.ctx, i, obs, rp)
            .run(&pass.cache, &report.deleted)
            .await;
        report.warnings.extend(outcome.warnings);
        let event = match outcome.result {
            Ok(None) => return outcome.primary, // another instance rotated first: its hooks ran there
            Ok(Some(rotated)) => {
                if i.is_self() {
                    // Published: from now on this process acts as the new
                    // account (the old one stays valid for `grace`).
                    self.switch_to_own(outcome.primary.as_ref());
                }
                let new_id = rotated.service_account_id;
                for d in rp.revoke.iter().filter(|d| d.id != new_id) {
                    match self.ctx.delete(i, d, Some(new_id), Some(&rotated.rotation_id)).await {
                        Ok(()) => report.deleted.push(d.clone()),
                        Err(e) => report.errors.push(e),
                    }
                }
                let ev = rotated_event(i, &rotated);
                report.rotated = Some(Box::new(rotated));
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
        crate::failpoint::point("before_hooks", &i.name).await;
        self.run_hooks(i, &event, &mut report.warnings).await;
        outcome.primary
    }

    /// Acts as the rotator's own credential just published.
    fn switch_to_own(&self, published: Option<&Payload>) {
        let Some(p) = published else { return };
        let creds = crate::mixpanel::Credentials {
            username: p.username.clone(),
            secret: p.secret.clone(),
        };
        if let Err(e) = self.ctx.client.switch_to(&creds) {
            tracing::error!("The rotator's new credential was published but cannot be used by this process: {e}");
        }
    }

    /// Runs the integration's hooks; a failure is a warning, never an error.
    async fn run_hooks(&self, i: &Integration, ev: &HookEvent, warnings: &mut Vec<String>) {
        let mut results = vec![("webhook", crate::hooks::webhook(i, ev).await)];
        if ev.event == EventKind::Rotated {
            results.insert(0, ("on_rotate", crate::hooks::on_rotate(i, ev).await));
        }
        for (hook, r) in results {
            if let Err(msg) = r {
                reported!(warn, integration = %i.name, hook, "Hook failed (the rotation stands): {msg}");
                if let Some(m) = &self.ctx.metrics {
                    m.hook_failure(&i.name, hook);
                }
                warnings.push(format!("{hook} hook failed (the rotation stands): {msg}"));
            }
        }
    }

    /// Records one integration's pass in the metrics.
    fn record(&self, r: &Report) {
        let Some(m) = &self.ctx.metrics else { return };
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
        // Due now or failing: the time it was due (in the past), so that
        // "overdue" can be alerted on; absent only when nothing is published.
        let next = match &r.rotated {
            Some(rot) => rot.next_rotation,
            None => r.plan.deadlines.next_rotation(),
        };
        m.next_rotation(i, next);
        if r.reached_everything() {
            m.in_use_elsewhere(i, r.plan.in_use.len());
        }
        self.record_mirrors(i, &r.mirrors);
    }
}

/// What a pre-flight (`plan`, `status`, `validate --online`) says of each
/// unexplained lineage account another rotator may publish
/// ([`super::decide::maybe_elsewhere`]).
pub(crate) fn elsewhere_warnings(i: &Integration, obs: &Observation, plan: &Plan, now: DateTime<Utc>) -> Vec<String> {
    super::decide::maybe_elsewhere(i, obs, plan, now)
        .into_iter()
        .map(|d| {
            format!(
                "account {} ({}) is of this lineage but not published by this policy's sink: if another rotator (another policy with the same `namespace`) publishes it, this one would delete it {}; give each policy its own `namespace`, or share one primary",
                d.id,
                d.username,
                d.due.map_or("once the policy is fixed".into(), |t| format!("at {} unless it is in use then", crate::text::rfc3339(t)))
            )
        })
        .collect()
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
        error_code: None,
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
        error: Some(e.for_webhook()),
        error_code: Some(e.code().to_string()),
    }
}

/// Why a due rotation waits: accounts earlier attempts left (orphans) could
/// not be deleted in this pass (Mixpanel refuses deletes), and another
/// attempt would leave one more, at every pass, while that lasts. It does
/// not wait when the credential is missing or expired, when asked for, or
/// in the last half of `renew_before`.
fn held_for_leftovers(i: &Integration, plan: &Plan, rp: &RotationPlan, report: &Report) -> Option<String> {
    let stuck = plan
        .delete_now
        .iter()
        .filter(|d| d.reason == DeleteReason::Orphan && !report.deleted.iter().any(|x| x.id == d.id))
        .count();
    let late = |expires: DateTime<Utc>| {
        expires.signed_duration_since(report.at) < i.renew_before.checked_div(2).unwrap_or_default()
    };
    let urgent = match &rp.reason {
        RotateReason::ExpiresSoon { expires } => late(*expires),
        RotateReason::Scheduled { .. } => plan.deadlines.expires.is_some_and(late),
        _ => true,
    };
    (stuck > 0 && !urgent).then(|| {
        format!(
            "a rotation is due ({}), but {stuck} account(s) earlier attempts left could not be deleted: it waits for them, so a Mixpanel refusing deletes does not collect one more account at every pass (it goes ahead anyway in the last half of `renew_before`)",
            rp.reason
        )
    })
}

/// Mixpanel's account list may leave out an account created moments ago
/// (it is eventually consistent): a published account missing from it is
/// asked for by id before it is taken for deleted. Taken from the list
/// alone, a lagging list made every pass replace the account the last one
/// published, an account a second.
async fn confirm_current(
    mut obs: Observation,
    client: &Client,
    i: &Integration,
    namespaces: &[String],
) -> Result<Observation, StepError> {
    let Some(id) = obs
        .published
        .as_ref()
        .map(|p| p.payload.service_account_id)
        .filter(|_| obs.current.is_none())
    else {
        return Ok(obs);
    };
    match client.get_account(id).await {
        Ok(a) => {
            tracing::info!(
                integration = %i.name,
                account_id = id,
                "The published account is missing from Mixpanel's account list but exists (the list lags); it stays."
            );
            // Of the lineage too (the list is where the lineage comes from).
            let created = namespaces
                .iter()
                .find_map(|ns| Lineage::new(ns, i.lineage_name()).parse(&a.username));
            if let Some(t) = created
                && !obs.lineage.iter().any(|(l, _)| l.id == a.id)
            {
                obs.lineage.push((a.clone(), t));
            }
            obs.current = Some(a);
            Ok(obs)
        }
        Err(MixpanelError::Api { status: 404, .. }) => Ok(obs),
        Err(e) => {
            Err(StepError::new(&i.name, Step::ListAccounts, Cause::Mixpanel(e)).then(Consequence::NothingTouched))
        }
    }
}
