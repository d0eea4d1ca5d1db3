//! The simulated organization: accounts, projects, memberships, and the
//! rules Mixpanel applies to requests on them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use crate::mixpanel::types::*;
use crate::secret::Secret;

/// An account of the simulated organization.
#[derive(Debug, Clone)]
pub struct SimAccount {
    pub(crate) id: u64,
    pub(crate) username: String,
    pub(crate) token: Secret,
    pub(crate) role: Role,
    pub(crate) expires: Option<DateTime<Utc>>,
    pub(crate) created: DateTime<Utc>,
    pub(crate) last_used: Option<DateTime<Utc>>,
    /// Uses not shown in `last_used` yet ([`Quirks::last_used_lag`]).
    pub(crate) pending_uses: Vec<DateTime<Utc>>,
    pub(crate) creator: u64,
    pub(crate) user: u64,
    /// The organization role as `/me` and the account list show it, when
    /// not the role's own name (real organizations have `"no role"`).
    pub(crate) role_label: Option<String>,
}

/// How timestamps are written in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamps {
    /// `2026-11-28T04:00:00Z`: the published description's form.
    Rfc3339,
    /// `2026-11-28T04:00:00`: no offset (seen in real `/me` answers).
    NoOffset,
    /// `2026-11-28 04:00:00`: a space and no offset (seen on other App API endpoints).
    Space,
}

impl Stamps {
    fn write(self, t: Option<DateTime<Utc>>) -> Value {
        let Some(t) = t else { return Value::Null };
        Value::String(match self {
            Stamps::Rfc3339 => crate::text::rfc3339(t),
            Stamps::NoOffset => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
            Stamps::Space => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        })
    }
}

impl SimAccount {
    /// The account as an answer shows it: the published description's shape
    /// (`published`), or what real Mixpanel sends (every field present,
    /// `null` when unset, the extra fields, timestamps in `stamps`).
    pub(crate) fn json(&self, published: bool, stamps: Stamps) -> Value {
        if published {
            return json!(self.public());
        }
        json!({
            "id": self.id,
            "username": self.username,
            "last_used": stamps.write(self.last_used),
            "expires": stamps.write(self.expires),
            "creator": self.creator,
            "creator_email": format!("user{}@example.com", self.creator),
            "creator_name": Value::Null,
            "created": stamps.write(Some(self.created)),
            "user": self.user,
            "role": self.role_label.clone().map_or_else(|| json!(self.role), |l| if l.is_empty() { Value::Null } else { json!(l) }),
        })
    }

    /// The account as the API lists it.
    pub(crate) fn public(&self) -> ServiceAccount {
        ServiceAccount {
            id: self.id,
            username: self.username.clone(),
            last_used: self.last_used,
            expires: self.expires,
            creator: Some(self.creator),
            created: Some(self.created),
            user: Some(self.user),
            last_used_unknown: false,
        }
    }
}

/// A membership of an account in a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SimMembership {
    pub(crate) role: ProjectRole,
    pub(crate) target_type: TargetType,
}

/// A project of the simulated organization.
#[derive(Debug, Clone)]
pub(crate) struct SimProject {
    pub(crate) id: u64,
    pub(crate) name: String,
    /// The region's domain (`mixpanel.com`, `eu.mixpanel.com`): project calls
    /// are answered only by that region's listener.
    pub(crate) domain: String,
    /// Memberships by account id.
    pub(crate) members: BTreeMap<u64, SimMembership>,
}

/// Behaviours of real Mixpanel that the simulator can imitate on request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quirks {
    /// Ignore `projects` in the create body (the engine must repair with add-to-project).
    pub ignore_create_projects: bool,
    /// Ignore `expires` in the create body (a plan that does not honour it).
    pub ignore_expires: bool,
    /// Create the account, but answer with this other account's fields (a
    /// broken or hostile answer: the rotator must not trust it).
    pub create_answers_with: Option<u64>,
    /// List an organization admin's project membership as the
    /// organization-level grant of its role (`admin`, target type
    /// `organization`) instead of its own grant, as Mixpanel may.
    pub org_grant_hides_own: bool,
    /// Answer in the published description's shape (RFC 3339 timestamps,
    /// unset fields left out, no extra fields) instead of real Mixpanel's:
    /// for the conformance check against that description.
    pub published_shape: bool,
    /// Leave accounts created less than this long ago out of the account
    /// list (an eventually consistent list: a fresh account shows up late).
    pub list_hides_newer_than: Option<chrono::Duration>,
    /// Show a use in `last_used` only this long after it happened (usage
    /// statistics updated late).
    pub last_used_lag: Option<chrono::Duration>,
}

/// The organization and its rules.
#[derive(Debug)]
pub struct OrgState {
    pub(crate) org_id: u64,
    pub(crate) org_name: String,
    pub(crate) next_id: u64,
    pub(crate) accounts: BTreeMap<u64, SimAccount>,
    pub(crate) projects: BTreeMap<u64, SimProject>,
    pub(crate) quirks: Quirks,
    /// Every token ever issued, so tests can search their output for leaks.
    pub(crate) issued: Vec<Secret>,
    /// Some account has uses not shown yet ([`Quirks::last_used_lag`]).
    pub(crate) uses_pending: bool,
}

/// One request, as the organization's rules see it.
#[derive(Debug, Clone, Copy)]
pub struct SimRequest<'a> {
    pub(crate) method: &'a str,
    /// Below `/api/app`.
    pub(crate) path: &'a str,
    pub(crate) body: &'a [u8],
    /// The domain of the listener that received it (`mixpanel.com`, `eu.mixpanel.com`).
    pub(crate) region: &'a str,
}

/// An API answer: status and JSON body.
pub(crate) type Answer = (u16, Value);

pub(crate) fn error(status: u16, message: impl Into<String>) -> Answer {
    (status, json!({"status": "error", "error": message.into()}))
}

fn ok(results: Value) -> Answer {
    (200, json!({"status": "ok", "results": results}))
}

fn random_token(len: usize) -> String {
    crate::random::with(|r| r.sample_iter(&Alphanumeric).take(len).map(char::from).collect())
}

fn random_hex(len: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    crate::random::with(|r| {
        (0..len)
            .filter_map(|_| HEX.get(r.random_range(0..HEX.len())).map(|b| char::from(*b)))
            .collect()
    })
}

impl OrgState {
    /// An empty organization.
    pub(crate) fn new(org_id: u64, org_name: &str) -> Self {
        Self {
            org_id,
            org_name: org_name.into(),
            next_id: 1000,
            accounts: BTreeMap::new(),
            projects: BTreeMap::new(),
            quirks: Quirks::default(),
            issued: Vec::new(),
            uses_pending: false,
        }
    }

    /// Adds an account directly (test set-up); returns it with its token.
    pub(crate) fn insert_account(
        &mut self,
        base: &str,
        role: Role,
        expires: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> SimAccount {
        self.next_id = self.next_id.saturating_add(1);
        let token = Secret::new(random_token(32));
        self.issued.push(token.clone());
        let acct = SimAccount {
            id: self.next_id,
            username: format!("{base}.{}.mp-service-account", random_hex(6)),
            token,
            role,
            expires,
            created: now,
            last_used: None,
            pending_uses: Vec::new(),
            creator: 42,
            user: self.next_id.saturating_add(500_000),
            role_label: None,
        };
        self.accounts.insert(acct.id, acct.clone());
        acct
    }

    /// Grants `account` a membership in `project`.
    pub(crate) fn grant(&mut self, project: u64, account: u64, role: impl Into<ProjectRole>, target_type: TargetType) {
        let role = role.into();
        if let Some(p) = self.projects.get_mut(&project) {
            p.members.insert(account, SimMembership { role, target_type });
        }
    }

    /// Deletes an account and its memberships.
    pub(crate) fn remove_account(&mut self, id: u64) -> bool {
        for p in self.projects.values_mut() {
            p.members.remove(&id);
        }
        self.accounts.remove(&id).is_some()
    }

    /// Checks Basic credentials; returns the caller's id or a 401.
    pub(crate) fn authenticate(&mut self, username: &str, secret: &str, now: DateTime<Utc>) -> Result<u64, Answer> {
        let found = self
            .accounts
            .values_mut()
            .find(|a| a.username == username && a.token.expose() == secret);
        match found {
            None => Err(error(401, "Invalid credentials")),
            Some(a) if a.expires.is_some_and(|e| e <= now) => Err(error(401, "Service account has expired")),
            Some(a) => {
                if self.quirks.last_used_lag.is_some() {
                    a.pending_uses.push(now);
                    self.uses_pending = true;
                } else {
                    a.last_used = Some(now);
                }
                Ok(a.id)
            }
        }
    }

    fn require_admin(&self, caller: u64) -> Result<(), Answer> {
        match self.accounts.get(&caller) {
            Some(a) if a.role.can_manage_accounts() => Ok(()),
            _ => Err(error(
                403,
                "User does not have permissions to manage service accounts in this organization",
            )),
        }
    }

    fn check_org(&self, org: u64) -> Result<(), Answer> {
        if org == self.org_id {
            Ok(())
        } else {
            Err(error(404, "Organization not found"))
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
        serde_json::from_slice(body).map_err(|e| error(400, format!("Invalid request body: {e}")))
    }

    fn check_projects(&self, ids: impl IntoIterator<Item = u64>) -> Result<(), Answer> {
        for id in ids {
            if !self.projects.contains_key(&id) {
                return Err(error(400, format!("Project {id} does not exist in this organization")));
            }
        }
        Ok(())
    }

    /// Shows in `last_used` the uses older than [`Quirks::last_used_lag`].
    pub(crate) fn settle_uses(&mut self, now: DateTime<Utc>) {
        if !self.uses_pending {
            return;
        }
        let lag = self.quirks.last_used_lag.unwrap_or_default();
        let shown = crate::clock::before(now, lag);
        let mut left = false;
        for a in self.accounts.values_mut() {
            if a.pending_uses.is_empty() {
                continue;
            }
            if let Some(latest) = a.pending_uses.iter().filter(|u| **u <= shown).max().copied() {
                a.last_used = a.last_used.max(Some(latest));
            }
            a.pending_uses.retain(|u| *u > shown);
            left |= !a.pending_uses.is_empty();
        }
        self.uses_pending = left;
    }

    /// Dispatches one authenticated request. `path` is below `/api/app`.
    pub(crate) fn handle(&mut self, caller: u64, req: &SimRequest<'_>, now: DateTime<Utc>) -> Answer {
        match self.route(caller, req, now) {
            Ok(a) | Err(a) => a,
        }
    }

    fn route(&mut self, caller: u64, req: &SimRequest<'_>, now: DateTime<Utc>) -> Result<Answer, Answer> {
        let SimRequest {
            method,
            path,
            body,
            region,
        } = *req;
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| error(404, "Not found"));
        let allowed = allowed_methods(&segs);
        if !allowed.is_empty() && !allowed.contains(&method) {
            return Err(error(
                405,
                format!("Method not allowed; allowed: {}", allowed.join(", ")),
            ));
        }
        match (method, segs.as_slice()) {
            ("GET", ["me"]) => Ok(self.me(caller)),
            ("GET", ["organizations", org, "service-accounts"]) => {
                self.check_org(num(org)?)?;
                Ok(self.list_accounts(now))
            }
            ("POST", ["organizations", org, "service-accounts"]) => {
                self.check_org(num(org)?)?;
                self.require_admin(caller)?;
                self.create(caller, body, now)
            }
            ("POST", ["organizations", org, "service-accounts", "add-to-project"]) => {
                self.check_org(num(org)?)?;
                self.require_admin(caller)?;
                self.add_to_project(body)
            }
            ("POST", ["organizations", org, "service-accounts", "remove-from-project"]) => {
                self.check_org(num(org)?)?;
                self.require_admin(caller)?;
                self.remove_from_project(body)
            }
            ("GET", ["organizations", org, "service-accounts", id]) => {
                self.check_org(num(org)?)?;
                // The published description shows a bare object here.
                match self.accounts.get(&num(id)?) {
                    Some(a) => Ok((200, a.json(self.quirks.published_shape, Stamps::NoOffset))),
                    None => Err(error(404, "Service account not found")),
                }
            }
            ("DELETE", ["organizations", org, "service-accounts", id]) => {
                self.check_org(num(org)?)?;
                self.require_admin(caller)?;
                if self.remove_account(num(id)?) {
                    Ok((200, json!({"status": "ok"})))
                } else {
                    Err(error(404, "Service account not found"))
                }
            }
            ("GET", ["projects", project, "service-accounts"]) => self.project_members(caller, num(project)?, region),
            _ => Err(error(404, "Not found")),
        }
    }

    fn list_accounts(&self, now: DateTime<Utc>) -> Answer {
        let published = self.quirks.published_shape;
        let listed_from = self.quirks.list_hides_newer_than.map(|d| crate::clock::before(now, d));
        ok(Value::Array(
            self.accounts
                .values()
                .filter(|a| listed_from.is_none_or(|t| a.created <= t))
                .map(|a| a.json(published, Stamps::NoOffset))
                .collect(),
        ))
    }

    fn add_to_project(&mut self, body: &[u8]) -> Result<Answer, Answer> {
        let req: AddToProjects = Self::parse(body)?;
        self.check_projects(req.projects.iter().map(|p| p.id))?;
        for id in &req.service_account_ids {
            if !self.accounts.contains_key(id) {
                return Err(error(400, format!("Service account {id} does not exist")));
            }
        }
        for p in &req.projects {
            for sa in &req.service_account_ids {
                self.grant(p.id, *sa, p.role.clone(), TargetType::Individual);
            }
        }
        Ok((200, json!({"status": "ok"})))
    }

    fn remove_from_project(&mut self, body: &[u8]) -> Result<Answer, Answer> {
        let req: RemoveFromProjects = Self::parse(body)?;
        self.check_projects(req.projects.iter().map(|p| p.id))?;
        for p in &req.projects {
            if let Some(proj) = self.projects.get_mut(&p.id) {
                for sa in &p.service_account_ids {
                    proj.members.remove(sa);
                }
            }
        }
        Ok((200, json!({"status": "ok"})))
    }

    fn project_members(&self, caller: u64, pid: u64, region: &str) -> Result<Answer, Answer> {
        let caller_admin = self.require_admin(caller).is_ok();
        let Some(p) = self.projects.get(&pid) else {
            return Err(error(404, "Project not found"));
        };
        if p.domain != region {
            // Real Mixpanel's answer to a project call on another region's
            // host is not documented; this one is explicit.
            return Err(error(
                400,
                format!("Project {pid} is hosted in {}; call that region's host", p.domain),
            ));
        }
        if !caller_admin && !p.members.contains_key(&caller) {
            return Err(error(403, "User does not have access to this project"));
        }
        let rows: Vec<Value> = p
            .members
            .iter()
            .filter_map(|(id, m)| {
                let a = self.accounts.get(id)?;
                let published = self.quirks.published_shape;
                // The published description's role enum cannot express a
                // custom role: in its shape, such rows are left out.
                if published && m.role.is_custom() {
                    return None;
                }
                let mut row = a.json(published, Stamps::Space);
                let obj = row.as_object_mut()?;
                let (role, target) = if self.quirks.org_grant_hides_own && a.role == Role::Admin {
                    (ProjectRole::Admin, TargetType::Organization)
                } else {
                    (m.role.clone(), m.target_type.clone())
                };
                obj.insert("role".into(), json!(role));
                obj.insert("target_type".into(), json!(target));
                obj.insert("hasSensitiveAccess".into(), json!(false));
                obj.insert("role_order".into(), json!(role_order(&role)));
                obj.insert("email".into(), json!(format!("{}@serviceaccount.mixpanel.com", a.id)));
                Some(row)
            })
            .collect();
        Ok(ok(Value::Array(rows)))
    }

    fn me(&self, caller: u64) -> Answer {
        let Some(acct) = self.accounts.get(&caller) else {
            return error(401, "Invalid credentials");
        };
        let admin = acct.role.can_manage_accounts();
        let projects: serde_json::Map<String, Value> = self
            .projects
            .values()
            .filter(|p| admin || p.members.contains_key(&caller))
            .map(|p| {
                (
                    p.id.to_string(),
                    json!({"name": p.name, "organization_id": self.org_id, "domain": p.domain, "timezone": "UTC"}),
                )
            })
            .collect();
        ok(json!({
            "organizations": { self.org_id.to_string(): {"id": self.org_id, "name": self.org_name, "role": acct.role_label.clone().unwrap_or_else(|| acct.role.to_string())} },
            "projects": projects,
            "user_email": format!("{}@serviceaccount.mixpanel.com", acct.id),
            "user_name": acct.username,
            "date_joined_iso": Stamps::NoOffset.write(Some(acct.created)),
        }))
    }

    fn create(&mut self, caller: u64, body: &[u8], now: DateTime<Utc>) -> Result<Answer, Answer> {
        let req: CreateServiceAccount = Self::parse(body)?;
        let base = req.username.trim();
        if base.is_empty() {
            return Err(error(400, "username is required"));
        }
        if base.len() > 128 {
            return Err(error(400, "username is too long"));
        }
        if req.expires.is_some_and(|e| e <= now) {
            return Err(error(400, "expires must be in the future"));
        }
        let projects = req.projects.clone().unwrap_or_default();
        self.check_projects(projects.iter().map(|p| p.id))?;
        let role = req.role.unwrap_or(Role::Consumer);
        // No account may create one with an organization role above its own
        // (`Role` orders owner first).
        if let Some(c) = self.accounts.get(&caller)
            && role < c.role
        {
            return Err(error(
                403,
                format!(
                    "a service account with role {} cannot create one with role {role}",
                    c.role
                ),
            ));
        }
        let expires = if self.quirks.ignore_expires { None } else { req.expires };
        let mut acct = self.insert_account(base, role, expires, now);
        acct.creator = self.accounts.get(&caller).map(|a| a.user).unwrap_or(42);
        if let Some(a) = self.accounts.get_mut(&acct.id) {
            a.creator = acct.creator;
        }
        if !self.quirks.ignore_create_projects {
            for p in &projects {
                self.grant(p.id, acct.id, p.role.clone(), TargetType::Individual);
            }
        }
        let published = self.quirks.published_shape;
        let mut results = self
            .quirks
            .create_answers_with
            .and_then(|id| self.accounts.get(&id))
            .map(|a| a.json(published, Stamps::Rfc3339))
            .unwrap_or_else(|| acct.json(published, Stamps::Rfc3339));
        if let Some(obj) = results.as_object_mut() {
            obj.insert("token".into(), json!(acct.token.expose()));
        }
        Ok((201, json!({"status": "ok", "results": results})))
    }
}

/// The methods a known path accepts (empty: no such path).
pub(crate) fn allowed_methods(segs: &[&str]) -> &'static [&'static str] {
    match segs {
        ["me"] => &["GET"],
        ["organizations", _, "service-accounts"] => &["GET", "POST"],
        [
            "organizations",
            _,
            "service-accounts",
            "add-to-project" | "remove-from-project",
        ] => &["POST"],
        ["organizations", _, "service-accounts", _] => &["GET", "DELETE"],
        ["projects", _, "service-accounts"] => &["GET"],
        _ => &[],
    }
}

fn role_order(r: &ProjectRole) -> Option<i64> {
    match r {
        ProjectRole::Owner => Some(0),
        ProjectRole::Admin => Some(1),
        ProjectRole::Analyst => Some(2),
        ProjectRole::Consumer => Some(3),
        ProjectRole::Custom(_) => None,
    }
}
