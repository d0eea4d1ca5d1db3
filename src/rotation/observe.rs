//! Observe: what the sink has published and which accounts exist. A quiet
//! pass costs one account listing (shared by every integration) plus one sink
//! read per integration; project memberships are read only when needed, once
//! per project per pass ([`MembershipCache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::OnceCell;

use super::lineage::Lineage;
use crate::mixpanel::types::{ProjectMember, ServiceAccount, strip_mixpanel_suffix};
use crate::mixpanel::{Client, MixpanelError};
use crate::policy::{AdoptRef, Integration};
use crate::sink::{Payload, Version};

/// The largest disagreement between Mixpanel's clock and ours under which
/// `last_used` is trusted to say an account is idle.
pub(crate) const MAX_CLOCK_OFFSET: Duration = Duration::minutes(2);

/// Mixpanel's clock as a pass sees it: its offset from ours (Mixpanel's
/// minus ours), from the `Date` of its answers. Mixpanel's timestamps
/// (`last_used`, `created`, `expires`) are read in our time by taking the
/// offset off; when it is unknown or larger than [`MAX_CLOCK_OFFSET`], no
/// deletion rests on `last_used` (the idle rules wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MixpanelClock {
    /// `None`: no answer carried a readable `Date`.
    pub(crate) offset: Option<Duration>,
    /// How far apart the recent answers' offsets are: beyond
    /// [`MAX_CLOCK_OFFSET`], a clock jumped and the offset is not trusted
    /// until the answers agree again.
    pub(crate) spread: Duration,
}

impl MixpanelClock {
    /// A Mixpanel whose clock agrees with ours.
    pub(crate) fn agreeing() -> Self {
        Self {
            offset: Some(Duration::zero()),
            spread: Duration::zero(),
        }
    }

    /// The offset, when it is known, steady, and small enough to judge
    /// idleness by.
    pub(crate) fn trusted(&self) -> Option<Duration> {
        self.offset
            .filter(|o| o.abs() <= MAX_CLOCK_OFFSET && self.spread <= MAX_CLOCK_OFFSET)
    }

    /// A Mixpanel timestamp in our time (the offset taken off, when known).
    pub(crate) fn local(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        crate::clock::before(t, self.offset.unwrap_or_default())
    }

    /// What is wrong with it, and what to do; `None` when it is trusted.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.trusted().is_some() {
            return None;
        }
        let what = "deletions judged by last_used (unexplained lineage accounts, delete_when_idle) wait";
        let fix = "fix this host's time synchronisation (NTP)";
        let text = crate::text::format_duration;
        Some(match self.offset {
            None => format!(
                "Mixpanel's answers carry no readable Date header, so its clock cannot be compared with this host's: {what}"
            ),
            Some(_) if self.spread > MAX_CLOCK_OFFSET => format!(
                "Mixpanel's recent answers put its clock up to {} apart from this host's (a clock jumped): {what} until they agree; {fix}",
                text(self.spread)
            ),
            Some(o) => format!(
                "Mixpanel's clock is {} {} this host's (more than {}): {what} until they agree; {fix}",
                // In seconds: `Date` has no finer resolution.
                text(Duration::seconds(o.num_seconds().saturating_abs())),
                if o > Duration::zero() { "ahead of" } else { "behind" },
                text(MAX_CLOCK_OFFSET),
            ),
        })
    }
}

/// The published payload and the version it was read at.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) payload: Payload,
    pub(crate) version: Version,
}

/// One integration's view of the world at the start of a pass.
#[derive(Debug, Clone)]
pub struct Observation {
    /// What the sink holds.
    pub(crate) published: Option<Published>,
    /// The published account as Mixpanel lists it (`None`: deleted behind our back).
    pub(crate) current: Option<ServiceAccount>,
    /// Every account of this integration's lineage, with its lineage timestamp.
    pub(crate) lineage: Vec<(ServiceAccount, DateTime<Utc>)>,
    /// The account named by `adopt`, when nothing is published yet (to bootstrap from).
    pub(crate) adopted: Option<ServiceAccount>,
    /// The account named by `adopt`, whatever is published (one the rotator may delete).
    pub(crate) adopt_target: Option<ServiceAccount>,
    /// The `adopt` key of another integration naming the same account, if any.
    pub(crate) adopt_shared_with: Option<String>,
    /// Another integration's claim on the account `adopt` names (it
    /// publishes it, vouches for it, or has it in its lineage), if any.
    pub(crate) adopt_claimed_by: Option<super::claims::Claim>,
    /// Integrations whose primary could not be read, so that their claims
    /// on the account `adopt` names are unknown: it is not deleted.
    pub(crate) adopt_unverified: Vec<String>,
    /// Every account of the organization (to resolve ids in the payload's
    /// `retiring`), indexed once per pass and shared by every integration.
    pub(crate) all: Arc<Accounts>,
    /// Mixpanel's clock against ours, as the pass measured it.
    pub(crate) mixpanel_clock: MixpanelClock,
    /// Nothing is published yet, and the integration just moved here (a
    /// reload changed its sink or path): what its old place holds. Its
    /// published account is the one the first rotation here replaces, and
    /// what it vouches for is carried into the new payload: nothing the old
    /// place still serves becomes an unexplained account.
    pub(crate) inherited: Option<Payload>,
}

/// The organization's accounts as one pass read them, indexed once: by id,
/// by username without Mixpanel's suffix, and by the integration whose
/// lineage their username looks like. Building an integration's
/// observation then costs its own accounts, not the whole list.
#[derive(Debug, Default)]
pub struct Accounts {
    list: Vec<ServiceAccount>,
    by_id: HashMap<u64, usize>,
    by_base: HashMap<String, usize>,
    /// Integration name -> accounts whose username has that lineage's shape
    /// (confirmed exactly by [`Lineage::parse`]).
    by_integration: HashMap<String, Vec<usize>>,
}

impl Accounts {
    /// Indexes `list` for lineages under `namespace`.
    pub fn new(namespace: &str, list: Vec<ServiceAccount>) -> Self {
        Self::in_namespaces(&[namespace.to_string()], list)
    }

    /// Indexes `list` for lineages under any of `namespaces`.
    pub(crate) fn in_namespaces(namespaces: &[String], list: Vec<ServiceAccount>) -> Self {
        let mut me = Self {
            list,
            ..Self::default()
        };
        for (n, a) in me.list.iter().enumerate() {
            me.by_id.insert(a.id, n);
            me.by_base.entry(a.base_username().to_string()).or_insert(n);
            if let Some(integration) = namespaces
                .iter()
                .find_map(|ns| super::lineage::integration_of(ns, &a.username))
            {
                me.by_integration.entry(integration.to_string()).or_default().push(n);
            }
        }
        me
    }

    /// Every account.
    pub fn list(&self) -> &[ServiceAccount] {
        &self.list
    }

    /// The account with id `id`.
    pub(crate) fn get(&self, id: u64) -> Option<&ServiceAccount> {
        self.by_id.get(&id).and_then(|n| self.list.get(*n))
    }

    /// The account `adopt` names (by id, or by username with or without
    /// Mixpanel's suffix).
    pub(crate) fn resolve(&self, adopt: &AdoptRef) -> Option<&ServiceAccount> {
        match adopt {
            AdoptRef::Id(id) => self.get(*id),
            AdoptRef::Username(u) => {
                let n = self.by_base.get(strip_mixpanel_suffix(u))?;
                self.list
                    .get(*n)
                    .filter(|a| a.username == *u || a.base_username() == u.as_str())
            }
        }
    }

    /// The accounts that may be of `integration`'s lineage.
    fn lineage_candidates(&self, integration: &str) -> impl Iterator<Item = &ServiceAccount> {
        self.by_integration
            .get(integration)
            .into_iter()
            .flatten()
            .filter_map(|n| self.list.get(*n))
    }
}

impl Observation {
    /// The payload that speaks for the integration: the published one, or,
    /// while nothing is published at a place the integration just moved to,
    /// the one its old place holds (carried over by a reload).
    pub(crate) fn record(&self) -> Option<&Payload> {
        self.published.as_ref().map(|p| &p.payload).or(self.inherited.as_ref())
    }

    /// Nothing is published here yet: `old` is what the integration's old
    /// place holds (see [`Observation::inherited`]).
    pub(crate) fn inherit(&mut self, old: Payload) {
        if self.published.is_none() {
            self.current = self.all.get(old.service_account_id).cloned();
            self.inherited = Some(old);
        }
    }

    /// Builds the observation from the pass's account index and the sink read.
    pub fn new(
        integration: &Integration,
        namespace: &str,
        accounts: &Arc<Accounts>,
        published: Option<(Payload, Version)>,
    ) -> Self {
        Self::in_namespaces(integration, &[namespace.to_string()], accounts, published)
    }

    /// As [`Observation::new`], with the lineages of every one of `namespaces`.
    pub(crate) fn in_namespaces(
        integration: &Integration,
        namespaces: &[String],
        accounts: &Arc<Accounts>,
        published: Option<(Payload, Version)>,
    ) -> Self {
        let lineages: Vec<Lineage> = namespaces
            .iter()
            .map(|ns| Lineage::new(ns, integration.lineage_name()))
            .collect();
        let published = published.map(|(payload, version)| Published { payload, version });
        let current = published
            .as_ref()
            .and_then(|p| accounts.get(p.payload.service_account_id).cloned());
        let lineage = accounts
            .lineage_candidates(integration.lineage_name())
            .filter_map(|a| {
                lineages
                    .iter()
                    .find_map(|l| l.parse(&a.username))
                    .map(|t| (a.clone(), t))
            })
            .collect();
        let adopt_target = integration.adopt.as_ref().and_then(|a| accounts.resolve(a)).cloned();
        Self {
            adopt_shared_with: None,
            adopt_claimed_by: None,
            adopt_unverified: vec![],
            adopted: adopt_target.clone().filter(|_| published.is_none()),
            adopt_target,
            published,
            current,
            lineage,
            all: accounts.clone(),
            mixpanel_clock: MixpanelClock::agreeing(),
            inherited: None,
        }
    }
}

/// Project memberships read during one pass, shared by every integration.
#[derive(Debug, Default)]
pub struct MembershipCache {
    /// The organization's projects the rotator sees, with their region's domain.
    projects: OnceCell<Vec<(u64, Option<String>)>>,
    members: Mutex<HashMap<u64, Arc<OnceCell<Members>>>>,
    /// The latest read-back listing of each project (see [`MembershipCache::fresh_members`]).
    fresh: Mutex<HashMap<u64, Arc<Listing>>>,
}

/// A project's members, shared (a project may list thousands).
type Members = Arc<Vec<ProjectMember>>;

/// One listing of a project's members, started at `started`.
#[derive(Debug)]
struct Listing {
    started: std::time::Instant,
    rows: OnceCell<Result<Arc<Vec<ProjectMember>>, MixpanelError>>,
}

impl MembershipCache {
    /// The organization's projects the rotator can see (from `GET /me`),
    /// with the domain of each one's region.
    pub(crate) async fn projects_with_domains(
        &self,
        client: &Client,
    ) -> Result<Vec<(u64, Option<String>)>, MixpanelError> {
        self.projects
            .get_or_try_init(|| async { Ok(client.me().await?.projects_of(client.organization_id())) })
            .await
            .cloned()
    }

    /// The organization's projects the rotator can see.
    pub(crate) async fn projects(&self, client: &Client) -> Result<Vec<u64>, MixpanelError> {
        Ok(self
            .projects_with_domains(client)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The region's domain of `project` (`None`: not listed by `/me`, or no domain).
    pub(crate) async fn domain_of(&self, client: &Client, project: u64) -> Result<Option<String>, MixpanelError> {
        Ok(self
            .projects_with_domains(client)
            .await?
            .into_iter()
            .find(|(id, _)| *id == project)
            .and_then(|(_, d)| d))
    }

    /// The members of `project`, read at most once per pass, from its
    /// region (shared, never copied: a project may list thousands).
    pub(crate) async fn members(
        &self,
        client: &Client,
        project: u64,
    ) -> Result<Arc<Vec<ProjectMember>>, MixpanelError> {
        let cell = {
            let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(project).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let domain = self.domain_of(client, project).await?;
            Ok(Arc::new(client.list_project_members(project, domain.as_deref()).await?))
        })
        .await
        .cloned()
    }

    /// The members of `project` as listed by a request that started after
    /// `since` (the moment a new account was known to exist). At most one
    /// such listing of a project is in flight: a rotation that finds one
    /// that started too early waits for it to end, and then joins the next,
    /// which serves every rotation that waited. Rotations of one pass into
    /// one project then share listings instead of each listing every member
    /// (a list that grows with them).
    pub(crate) async fn fresh_members(
        &self,
        client: &Client,
        project: u64,
        since: std::time::Instant,
    ) -> Result<Arc<Vec<ProjectMember>>, MixpanelError> {
        loop {
            let (listing, fits) = {
                let mut m = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
                match m.get(&project) {
                    Some(l) if l.started >= since => (l.clone(), true),
                    Some(l) if !l.rows.initialized() => (l.clone(), false),
                    _ => {
                        let l = Arc::new(Listing {
                            started: std::time::Instant::now(),
                            rows: OnceCell::new(),
                        });
                        m.insert(project, l.clone());
                        (l, true)
                    }
                }
            };
            let rows = listing
                .rows
                .get_or_init(|| async {
                    let domain = self.domain_of(client, project).await?;
                    Ok(Arc::new(client.list_project_members(project, domain.as_deref()).await?))
                })
                .await;
            if fits {
                return rows.clone();
            }
        }
    }

    /// Every membership of `account` in the visible projects: (project, row).
    pub(crate) async fn memberships_of(
        &self,
        client: &Client,
        account: u64,
    ) -> Result<Vec<(u64, ProjectMember)>, MixpanelError> {
        let projects = self.projects(client).await?;
        let lists = futures_util::future::try_join_all(projects.iter().map(|p| self.members(client, *p))).await?;
        Ok(projects
            .into_iter()
            .zip(lists)
            .flat_map(|(p, rows)| {
                rows.iter()
                    .filter(|r| r.account.id == account)
                    .map(|r| (p, r.clone()))
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}
