//! Observe: what the sink has published and which accounts exist. A quiet
//! pass costs one account listing (shared by every integration) plus one sink
//! read per integration; project memberships are read only when needed, once
//! per project per pass ([`MembershipCache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;

use super::lineage::Lineage;
use crate::mixpanel::types::{ProjectMember, ServiceAccount};
use crate::mixpanel::{Client, MixpanelError};
use crate::policy::{AdoptRef, Integration};
use crate::sink::{Payload, Version};

/// The published payload and the version it was read at.
#[derive(Debug, Clone)]
pub struct Published {
    pub payload: Payload,
    pub version: Version,
}

/// One integration's view of the world at the start of a pass.
#[derive(Debug, Clone)]
pub struct Observation {
    /// What the sink holds.
    pub published: Option<Published>,
    /// The published account as Mixpanel lists it (`None`: deleted behind our back).
    pub current: Option<ServiceAccount>,
    /// Every account of this integration's lineage, with its lineage timestamp.
    pub lineage: Vec<(ServiceAccount, DateTime<Utc>)>,
    /// The account named by `adopt`, when nothing is published yet (to bootstrap from).
    pub adopted: Option<ServiceAccount>,
    /// The account named by `adopt`, whatever is published (one the rotator may delete).
    pub adopt_target: Option<ServiceAccount>,
    /// The `adopt` key of another integration naming the same account, if any.
    pub adopt_shared_with: Option<String>,
    /// Every account of the organization (to resolve ids in the payload's `retiring`).
    pub all: Vec<ServiceAccount>,
}

impl Observation {
    /// Builds the observation from the shared account list and the sink read.
    pub fn new(
        integration: &Integration,
        namespace: &str,
        accounts: &[ServiceAccount],
        published: Option<(Payload, Version)>,
    ) -> Self {
        let lineage_of = Lineage::new(namespace, &integration.name);
        let published = published.map(|(payload, version)| Published { payload, version });
        let current = published
            .as_ref()
            .and_then(|p| accounts.iter().find(|a| a.id == p.payload.service_account_id).cloned());
        let lineage = accounts
            .iter()
            .filter_map(|a| lineage_of.parse(&a.username).map(|t| (a.clone(), t)))
            .collect();
        let adopt_target = integration
            .adopt
            .as_ref()
            .and_then(|a| resolve_adopt(a, accounts))
            .cloned();
        Self {
            adopt_shared_with: None,
            adopted: adopt_target.clone().filter(|_| published.is_none()),
            adopt_target,
            published,
            current,
            lineage,
            all: accounts.to_vec(),
        }
    }
}

/// The account an `adopt` names (by id, or by username with or without
/// Mixpanel's suffix).
pub fn resolve_adopt<'a>(adopt: &AdoptRef, accounts: &'a [ServiceAccount]) -> Option<&'a ServiceAccount> {
    match adopt {
        AdoptRef::Id(id) => accounts.iter().find(|a| a.id == *id),
        AdoptRef::Username(u) => accounts
            .iter()
            .find(|a| a.username == *u || a.base_username() == u.as_str()),
    }
}

/// Project memberships read during one pass, shared by every integration.
#[derive(Debug, Default)]
pub struct MembershipCache {
    /// The organization's projects the rotator sees, with their region's domain.
    projects: OnceCell<Vec<(u64, Option<String>)>>,
    members: Mutex<HashMap<u64, Arc<OnceCell<Vec<ProjectMember>>>>>,
}

impl MembershipCache {
    /// The organization's projects the rotator can see (from `GET /me`),
    /// with the domain of each one's region.
    pub async fn projects_with_domains(&self, client: &Client) -> Result<Vec<(u64, Option<String>)>, MixpanelError> {
        self.projects
            .get_or_try_init(|| async { Ok(client.me().await?.projects_of(client.organization_id())) })
            .await
            .cloned()
    }

    /// The organization's projects the rotator can see.
    pub async fn projects(&self, client: &Client) -> Result<Vec<u64>, MixpanelError> {
        Ok(self
            .projects_with_domains(client)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The region's domain of `project` (`None`: not listed by `/me`, or no domain).
    pub async fn domain_of(&self, client: &Client, project: u64) -> Result<Option<String>, MixpanelError> {
        Ok(self
            .projects_with_domains(client)
            .await?
            .into_iter()
            .find(|(id, _)| *id == project)
            .and_then(|(_, d)| d))
    }

    /// The members of `project`, read at most once per pass, from its region.
    pub async fn members(&self, client: &Client, project: u64) -> Result<Vec<ProjectMember>, MixpanelError> {
        let cell = {
            let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(project).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let domain = self.domain_of(client, project).await?;
            client.list_project_members(project, domain.as_deref()).await
        })
        .await
        .cloned()
    }

    /// Every membership of `account` in the visible projects: (project, row).
    pub async fn memberships_of(
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
                rows.into_iter()
                    .filter(|r| r.account.id == account)
                    .map(move |r| (p, r))
            })
            .collect())
    }
}
