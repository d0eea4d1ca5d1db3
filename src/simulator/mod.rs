//! A stateful **simulator** of Mixpanel's Service Accounts API. It is not
//! Mixpanel: it keeps one organization in memory and applies the rules the
//! rotator relies on (Mixpanel's username suffix, 201 on create, strict
//! bodies, Basic auth, admin rights for mutations, 401 after `expires`), so the
//! rotator can be tested and tried without touching a real organization.
//!
//! Tests program faults per method and path (a status N times, latency, 429
//! with `Retry-After`, "commit then drop the connection") and assert on the
//! request log.

mod delay;
mod server;
mod shared;
pub(crate) mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use self::shared::Shared;
pub use self::shared::{Fault, FaultAction, Gate, GateState, LoggedRequest};
pub use self::state::{OrgState, Quirks, SimAccount, SimRequest, Stamps};
use crate::clock::SharedClock;
use crate::mixpanel::Credentials;
use crate::mixpanel::types::{ProjectRole, Role, ServiceAccount, TargetType};
use crate::secret::Secret;

/// The organization a simulator starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Seed {
    /// Organization 1 with an admin account (`rotator`) and three projects.
    Empty,
    /// As `empty`, plus `etl-legacy`: an analyst account with individual
    /// grants on projects 101 and 102 and a team grant on 103; and what real
    /// organizations have: a project (201) in the EU region, served by a
    /// second listener; an account with a custom project role; the admin
    /// listed in every project through an organization-level grant; an
    /// account whose organization role is `"no role"`.
    Demo,
}

/// A running simulator.
pub struct Simulator {
    shared: Arc<Mutex<Shared>>,
    /// The given clock, skewed by [`Simulator::set_clock_skew`]: Mixpanel's.
    clock: SharedClock,
    skewed: crate::clock::SkewedClock,
    addr: SocketAddr,
    /// Listeners of the other regions, by domain.
    regions: std::collections::BTreeMap<String, SocketAddr>,
    admin: Credentials,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The simulated organization's id.
pub(crate) const ORG_ID: u64 = 1;

/// The region of the main listener.
pub(crate) const HOME_REGION: &str = "mixpanel.com";

/// The EU project of the `demo` seed.
pub const EU_PROJECT: u64 = 201;

fn project(org: &mut OrgState, id: u64, name: &str, domain: &str) {
    org.projects.insert(
        id,
        state::SimProject {
            id,
            name: name.into(),
            domain: domain.into(),
            members: Default::default(),
        },
    );
}

/// The organization of a seed, as real ones look: besides the accounts the
/// seed is about, a custom project role, organization-level grants (the
/// admin appears in every project's list through its organization role), an
/// organization role `"no role"`, and a project in another region.
fn seeded(seed: Seed, now: DateTime<Utc>) -> OrgState {
    let mut org = OrgState::new(ORG_ID, "Simulated Org");
    for (id, name) in [(101, "Web"), (102, "Mobile"), (103, "Warehouse")] {
        project(&mut org, id, name, HOME_REGION);
    }
    let admin = org.insert_account("rotator", Role::Admin, None, now);
    if seed == Seed::Demo {
        project(&mut org, EU_PROJECT, "Web EU", "eu.mixpanel.com");
        let created = crate::clock::before(now, chrono::Duration::days(400));
        let legacy = org.insert_account("etl-legacy", Role::Analyst, None, created);
        org.grant(101, legacy.id, Role::Analyst, TargetType::Individual);
        org.grant(102, legacy.id, Role::Admin, TargetType::Individual);
        org.grant(103, legacy.id, Role::Consumer, TargetType::Team);
        let steward = org.insert_account("data-steward", Role::Consumer, None, created);
        org.grant(
            101,
            steward.id,
            ProjectRole::Custom("Data Steward".into()),
            TargetType::Individual,
        );
        org.grant(EU_PROJECT, steward.id, Role::Consumer, TargetType::Individual);
        let billing = org.insert_account("billing-export", Role::Consumer, None, created);
        if let Some(a) = org.accounts.get_mut(&billing.id) {
            a.role_label = Some("no role".into());
        }
        for p in [101, 102, 103, EU_PROJECT] {
            org.grant(p, admin.id, Role::Admin, TargetType::Organization);
        }
    }
    org
}

impl Simulator {
    /// Starts a simulator on `addr` (use port 0 for a free port), and one
    /// more listener, on the same IP and a free port, for each other region
    /// the seed has projects in ([`Simulator::region_url`]).
    pub async fn start(seed: Seed, clock: SharedClock, addr: SocketAddr) -> std::io::Result<Self> {
        let skewed = crate::clock::SkewedClock::new(clock);
        let clock: SharedClock = Arc::new(skewed.clone());
        let org = seeded(seed, clock.now());
        let mut domains: Vec<String> = org.projects.values().map(|p| p.domain.clone()).collect();
        domains.sort();
        domains.dedup();
        let admin = org
            .accounts
            .values()
            .find(|a| a.username.starts_with("rotator."))
            .map(|a| Credentials {
                username: a.username.clone(),
                secret: a.token.clone(),
            })
            .ok_or_else(|| std::io::Error::other("the seed has no rotator account"))?;
        let shared = Arc::new(Mutex::new(Shared {
            org,
            faults: Vec::new(),
            log: Vec::new(),
            latency: None,
            stopped: false,
        }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut tasks = vec![tokio::spawn(server::serve(
            listener,
            shared.clone(),
            clock.clone(),
            HOME_REGION.into(),
        ))];
        let mut regions = std::collections::BTreeMap::new();
        for d in domains.into_iter().filter(|d| d != HOME_REGION) {
            let l = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
            regions.insert(d.clone(), l.local_addr()?);
            tasks.push(tokio::spawn(server::serve(l, shared.clone(), clock.clone(), d)));
        }
        Ok(Self {
            shared,
            clock,
            skewed,
            addr,
            regions,
            admin,
            tasks,
        })
    }

    /// The API base URL of another region's listener (`eu.mixpanel.com`),
    /// for `mixpanel.region_urls`.
    pub fn region_url(&self, domain: &str) -> Option<String> {
        self.regions.get(domain).map(|a| format!("http://{a}/api/app"))
    }

    /// `region_urls = { ... }` for a policy's `[mixpanel]`: every other
    /// region's listener (an empty line when there is none).
    pub fn region_urls_toml(&self) -> String {
        let pairs: Vec<String> = self
            .region_urls()
            .into_iter()
            .map(|(d, u)| format!("\"{d}\" = \"{u}\""))
            .collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("region_urls = {{ {} }}", pairs.join(", "))
        }
    }

    /// Every other region's domain and API base URL.
    pub(crate) fn region_urls(&self) -> Vec<(String, String)> {
        self.regions
            .iter()
            .map(|(d, a)| (d.clone(), format!("http://{a}/api/app")))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listening address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL, for `mixpanel.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/app", self.addr)
    }

    /// The simulated organization's id.
    pub(crate) fn organization_id(&self) -> u64 {
        ORG_ID
    }

    /// The admin account the rotator uses.
    pub fn admin(&self) -> Credentials {
        self.admin.clone()
    }

    /// Adds an account (`base` gets Mixpanel's suffix) with memberships.
    pub fn add_account(
        &self,
        base: &str,
        role: Role,
        expires: Option<DateTime<Utc>>,
        grants: &[(u64, ProjectRole, TargetType)],
    ) -> (ServiceAccount, Credentials) {
        let now = self.clock.now();
        let mut s = self.lock();
        let a = s.org.insert_account(base, role, expires, now);
        for (p, r, t) in grants {
            s.org.grant(*p, a.id, r.clone(), t.clone());
        }
        (
            a.public(),
            Credentials {
                username: a.username,
                secret: a.token,
            },
        )
    }

    /// Deletes an account behind the rotator's back.
    pub fn delete_account(&self, id: u64) -> bool {
        self.lock().org.remove_account(id)
    }

    /// Every account.
    pub fn accounts(&self) -> Vec<ServiceAccount> {
        self.lock().org.accounts.values().map(SimAccount::public).collect()
    }

    /// One account.
    pub fn account(&self, id: u64) -> Option<ServiceAccount> {
        self.lock().org.accounts.get(&id).map(SimAccount::public)
    }

    /// An account's memberships: (project, role, grant type).
    pub fn memberships(&self, account: u64) -> Vec<(u64, ProjectRole, TargetType)> {
        let s = self.lock();
        s.org
            .projects
            .values()
            .filter_map(|p| {
                p.members
                    .get(&account)
                    .map(|m| (p.id, m.role.clone(), m.target_type.clone()))
            })
            .collect()
    }

    /// Gives `account` an individual membership of `project` (as someone
    /// in Mixpanel's settings would).
    pub fn grant(&self, project: u64, account: u64, role: ProjectRole) {
        self.lock().org.grant(project, account, role, TargetType::Individual);
    }

    /// Programs a fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes the faults equal to `fault`, however many times they have
    /// left.
    pub fn remove_fault(&self, fault: &Fault) {
        self.lock().faults.retain(|f| !f.same_as(fault));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Stops answering, as a Mixpanel that is down: new connections are
    /// refused (the listeners close) and requests on connections still open
    /// get no answer (the connection closes). For tests of "Mixpanel is
    /// unreachable".
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.lock().stopped = true;
    }

    /// Sets Mixpanel's clock ahead of (positive) or behind the clock the
    /// simulator was started with: its timestamps (`created`, `last_used`)
    /// and its answers' `Date` headers follow.
    pub fn set_clock_skew(&self, skew: chrono::Duration) {
        self.skewed.set_skew(skew);
    }

    /// Delays every answer by `base` plus a random part of `jitter` (a
    /// network and a Mixpanel at a distance), on every listener.
    pub(crate) fn set_latency(&self, base: std::time::Duration, jitter: std::time::Duration) {
        self.lock().latency = Some((base, jitter)).filter(|(b, j)| !b.is_zero() || !j.is_zero());
    }

    /// Sets behaviours of real Mixpanel to imitate.
    pub fn set_quirks(&self, q: Quirks) {
        self.lock().org.quirks = q;
    }

    /// The request log.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// The request log, emptied.
    pub fn take_requests(&self) -> Vec<LoggedRequest> {
        std::mem::take(&mut self.lock().log)
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.lock().log.clear();
    }

    /// Every token the simulator ever issued (to search output for leaks).
    pub fn issued_secrets(&self) -> Vec<Secret> {
        self.lock().org.issued.clone()
    }
}
