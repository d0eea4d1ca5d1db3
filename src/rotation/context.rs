//! What every step of a pass shares: the policy, who the rotator is, the
//! Mixpanel client, the sinks, the clock, the metrics and the audit trail.
//! Built once per policy; the engine and each rotation borrow it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::decide::Scope;
use super::error::{Cause, SetupError};
use crate::audit::{Action, Audit, AuditEvent, Outcome};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::mixpanel::client::CredentialSource;
use crate::mixpanel::{Client, ClientSettings, Credentials, RetryPolicy};
use crate::policy::{Integration, Policy, PolicyError, SELF_NAME};
use crate::sink::{self, Sink, SinkError};

/// The rotator's own payload (`[mixpanel.self]`), read again after a 401
/// and at the start of each pass. Only an account of the rotator's own
/// lineage is taken: a payload edited to name another account is not
/// used (the self-rotation is blocked by the same rule as an integration's).
struct OwnCredential {
    sink: Arc<dyn Sink>,
    path: String,
    organization: u64,
    lineages: Vec<super::lineage::Lineage>,
    clock: SharedClock,
    /// `[mixpanel] username`/`secret`: used while nothing usable is published.
    seed: Credentials,
}

#[async_trait::async_trait]
impl CredentialSource for OwnCredential {
    async fn current(&self) -> Option<Credentials> {
        let payload = match self.sink.read_current(&self.path).await {
            Ok(Some((p, _))) => p,
            Ok(None) => return Some(self.seed.clone()),
            Err(e) => {
                tracing::warn!(
                    "Cannot read the rotator's own credential ({} path `{}`): {e}",
                    self.sink.describe(),
                    self.path
                );
                return None;
            }
        };
        if !payload.is_of(SELF_NAME, self.organization) {
            return None;
        }
        // An expired one would lock the rotator out: the seed is used
        // instead (put a new admin account there to recover), and the pass
        // replaces the expired account.
        if let Some(e) = payload.expires.filter(|e| *e <= self.clock.now()) {
            tracing::warn!(
                account_id = payload.service_account_id,
                "The rotator's published credential expired at {}: `[mixpanel] username`/`secret` are used instead.",
                crate::text::rfc3339(e)
            );
            return Some(self.seed.clone());
        }
        if !self.lineages.iter().any(|l| l.parse(&payload.username).is_some()) {
            tracing::warn!(
                account_id = payload.service_account_id,
                "The rotator's own payload names an account outside its lineage: not used."
            );
            return None;
        }
        Some(Credentials {
            username: payload.username.clone(),
            secret: payload.secret.clone(),
        })
    }
}

/// The services of a pass.
pub(crate) struct Context {
    pub(crate) policy: Arc<Policy>,
    pub(crate) scope: Scope,
    pub(crate) client: Client,
    pub(crate) sinks: BTreeMap<String, Arc<dyn Sink>>,
    pub(crate) clock: SharedClock,
    /// How long to keep trying a new credential before giving up.
    pub(crate) verify_retry: RetryPolicy,
    pub(crate) metrics: Option<Arc<Metrics>>,
    audit: Audit,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Reads the rotator's secret, sets up the client and every sink.
    pub(crate) fn new(
        policy: Arc<Policy>,
        clock: SharedClock,
        api: RetryPolicy,
        verify: RetryPolicy,
    ) -> Result<Self, SetupError> {
        let m = &policy.mixpanel;
        let secret = m.secret.resolve("mixpanel.secret").map_err(PolicyError::from)?;
        let seed = Credentials {
            username: m.username.clone(),
            secret,
        };
        let client = Client::new(ClientSettings {
            base_url: m.base_url.clone(),
            organization_id: m.organization_id,
            credentials: seed.clone(),
            max_concurrency: m.max_concurrency,
            timeout: m.timeout,
            retry: api,
        })?
        .with_project_hosts(m.project_hosts.clone())?
        .with_clock(clock.clone());
        let mut sinks = BTreeMap::new();
        for (name, cfg) in &policy.sinks {
            let s = sink::build(name, cfg).map_err(|source| SetupError::Sink {
                name: name.clone(),
                source,
            })?;
            sinks.insert(name.clone(), s);
        }
        let own = policy.own();
        let client = match own.and_then(|i| Some((i, sinks.get(&i.sink)?))) {
            Some((i, sink)) => client.with_credential_source(Arc::new(OwnCredential {
                sink: sink.clone(),
                path: i.path.clone(),
                organization: m.organization_id,
                lineages: policy
                    .lineage_namespaces()
                    .iter()
                    .map(|ns| super::lineage::Lineage::new(ns, i.lineage_name()))
                    .collect(),
                clock: clock.clone(),
                seed,
            })),
            None => client,
        };
        Ok(Self {
            audit: Audit::new(policy.audit_path.as_deref()),
            scope: Scope::of(&policy),
            policy,
            client,
            sinks,
            clock,
            verify_retry: verify,
            metrics: None,
        })
    }

    /// The integration's sink, or why there is none.
    pub(crate) fn sink_for(&self, i: &Integration) -> Result<&Arc<dyn Sink>, Cause> {
        // Policy validation guarantees every integration's sink exists.
        self.sinks.get(&i.sink).ok_or_else(|| Cause::Sink {
            sink: format!("sink `{}`", i.sink),
            path: i.path.clone(),
            source: SinkError::invalid("no such sink is defined"),
        })
    }

    /// A sink failure of `i`, with the sink's name and the path (added here, once).
    pub(crate) fn sink_cause(&self, i: &Integration, source: SinkError) -> Cause {
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

    /// Whether the audit trail can be written (checked before any mutation).
    pub(crate) fn audit_writable(&self) -> Result<(), crate::audit::AuditError> {
        self.audit.ensure_writable()
    }

    /// Whether the audit trail could be written, changing nothing.
    pub(crate) fn audit_check(&self) -> Result<String, crate::audit::AuditError> {
        self.audit.check()
    }

    /// Writes one audit event.
    pub(crate) fn audit(&self, e: AuditEvent<'_>) {
        self.audit.record(&e);
    }

    /// An audit event of `integration`, now; callers fill in the rest.
    pub(crate) fn audit_event<'a>(&self, integration: &'a str, action: Action, outcome: Outcome) -> AuditEvent<'a> {
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
