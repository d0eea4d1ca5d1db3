//! Request and response bodies of the Service Accounts API.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// An organization or project role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Analyst,
    Consumer,
}

impl Role {
    /// The role as Mixpanel writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Consumer => "consumer",
        }
    }

    /// Whether this organization role may create, delete and re-assign service accounts.
    pub fn can_manage_accounts(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service account as listed by Mixpanel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub id: u64,
    pub username: String,
    // Mixpanel may send `null`; the published description has no nullable
    // fields, so absent values are left out when serialising (the simulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u64>,
}

impl ServiceAccount {
    /// The username without Mixpanel's `.xxxxxx.mp-service-account` suffix.
    pub fn base_username(&self) -> &str {
        strip_mixpanel_suffix(&self.username)
    }
}

/// Strips Mixpanel's `.{random}.mp-service-account` suffix, if present.
pub fn strip_mixpanel_suffix(username: &str) -> &str {
    if let Some(rest) = username.strip_suffix(".mp-service-account")
        && let Some(dot) = rest.rfind('.')
    {
        return &username[..dot];
    }
    username
}

/// A project membership to give an account: `{"id": 456, "role": "admin"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectGrant {
    pub id: u64,
    pub role: Role,
}

/// A list of grants for people: `[101 analyst, 102 admin]`.
#[derive(Debug, Clone, Copy)]
pub struct Grants<'a>(pub &'a [ProjectGrant]);

impl fmt::Display for Grants<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (n, g) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", g.id, g.role)?;
        }
        f.write_str("]")
    }
}

/// Body of `POST /organizations/{org}/service-accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub projects: Option<Vec<ProjectGrant>>,
}

/// The create response: the account and its secret, returned exactly once.
#[derive(Debug, Deserialize)]
pub struct CreatedServiceAccount {
    #[serde(flatten)]
    pub account: ServiceAccount,
    pub token: Secret,
}

/// Body of `POST .../service-accounts/add-to-project`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddToProjects {
    pub projects: Vec<ProjectGrant>,
    pub service_account_ids: Vec<u64>,
}

/// One project of `remove-from-project`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRemoval {
    pub id: u64,
    pub service_account_ids: Vec<u64>,
}

/// Body of `POST .../service-accounts/remove-from-project` (note the nested shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveFromProjects {
    pub projects: Vec<ProjectRemoval>,
}

/// How an account came to be a member of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    /// Granted to the account itself: can be copied with add-to-project.
    Individual,
    /// Through a team: cannot be re-created by this API.
    Team,
    /// Through an organization-wide grant: cannot be re-created by this API.
    Organization,
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetType::Individual => "individual",
            TargetType::Team => "team",
            TargetType::Organization => "organization",
        })
    }
}

/// A row of `GET /projects/{project}/service-accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectMember {
    #[serde(flatten)]
    pub account: ServiceAccount,
    pub role: Role,
    pub target_type: TargetType,
    #[serde(default, rename = "hasSensitiveAccess")]
    pub has_sensitive_access: Option<bool>,
    #[serde(default)]
    pub role_order: Option<i64>,
    #[serde(default)]
    pub email: Option<String>,
}

/// An organization as listed by `GET /me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeOrganization {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
}

/// A project as listed by `GET /me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeProject {
    #[serde(default)]
    pub name: Option<String>,
    pub organization_id: u64,
    #[serde(default)]
    pub domain: Option<String>,
}

/// `GET /me`: what the calling account can see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    #[serde(default)]
    pub organizations: BTreeMap<String, MeOrganization>,
    #[serde(default)]
    pub projects: BTreeMap<String, MeProject>,
    #[serde(default)]
    pub user_email: Option<String>,
}

impl Me {
    /// Whether the caller belongs to organization `org`.
    pub fn sees(&self, org: u64) -> bool {
        self.organizations.values().any(|o| o.id == org) || self.organizations.contains_key(&org.to_string())
    }

    /// The ids of the projects of organization `org` that the caller sees.
    pub fn project_ids(&self, org: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .projects
            .iter()
            .filter(|(_, p)| p.organization_id == org)
            .filter_map(|(k, _)| k.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_is_stripped() {
        assert_eq!(strip_mixpanel_suffix("etl-bot.95a0b8.mp-service-account"), "etl-bot");
        assert_eq!(strip_mixpanel_suffix("etl-bot"), "etl-bot");
        assert_eq!(strip_mixpanel_suffix("mp-service-account"), "mp-service-account");
    }

    #[test]
    fn create_response_never_prints_token() {
        let c: CreatedServiceAccount = serde_json::from_str(
            r#"{"id":1,"username":"a.b.mp-service-account","token":"tok-123","created":"2026-01-01T00:00:00Z","expires":null,"last_used":null,"creator":2,"user":3}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("tok-123"));
        assert_eq!(c.token.expose(), "tok-123");
    }
}
