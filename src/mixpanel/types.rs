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
    /// Owns the organization or project.
    Owner,
    /// Administers it.
    Admin,
    /// Reads and analyzes data.
    Analyst,
    /// Reads data only.
    Consumer,
}

impl Role {
    /// The role as Mixpanel writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Consumer => "consumer",
        }
    }

    /// Whether this organization role may create, delete and re-assign service accounts.
    pub(crate) fn can_manage_accounts(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service account as listed by Mixpanel. Decoded leniently
/// ([`super::lenient`]): ids as numbers or numeric strings, any field `null`,
/// timestamps in the forms Mixpanel really sends; only `id` and `username`
/// are required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct ServiceAccount {
    /// The account's id.
    pub id: u64,
    /// Its username (`name.suffix.mp-service-account`).
    pub username: String,
    // The published description has no nullable fields, so absent values
    // are left out when serialising.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When it last authenticated, if Mixpanel knows.
    pub last_used: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When it expires (`None`: never).
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The user who created it.
    pub creator: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When it was created.
    pub created: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The user record behind it.
    pub user: Option<u64>,
    /// Mixpanel sent a `last_used` this client cannot read: whether the
    /// account is in use is unknown, so it is taken as in use.
    #[serde(skip)]
    pub last_used_unknown: bool,
}

impl TryFrom<serde_json::Value> for ServiceAccount {
    type Error = String;

    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        use super::lenient::{Stamp, id_of, string_of};
        let o = v.as_object().ok_or("a service account is not a JSON object")?;
        let last_used = Stamp::of("last_used", o.get("last_used"));
        Ok(Self {
            id: id_of(o.get("id")).ok_or("a service account has no usable `id`")?,
            username: string_of(o.get("username"))
                .filter(|u| !u.is_empty())
                .ok_or("a service account has no `username`")?,
            last_used_unknown: last_used == Stamp::Unreadable,
            last_used: last_used.at(),
            expires: Stamp::of("expires", o.get("expires")).at(),
            creator: id_of(o.get("creator")),
            created: Stamp::of("created", o.get("created")).at(),
            user: id_of(o.get("user")),
        })
    }
}

impl ServiceAccount {
    /// The username without Mixpanel's `.xxxxxx.mp-service-account` suffix.
    pub(crate) fn base_username(&self) -> &str {
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

/// A project role: one of Mixpanel's four, or a custom role (Enterprise
/// plans let organizations define their own, by name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProjectRole {
    /// Owns the project.
    Owner,
    /// Administers it.
    Admin,
    /// Reads and analyzes its data.
    Analyst,
    /// Reads its data only.
    Consumer,
    /// A role outside the four, as Mixpanel names it.
    Custom(String),
}

impl ProjectRole {
    /// Reads a role name: the four known ones (any case), else a custom one.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
            return Err(format!(
                "`{}` is not a role name (1 to 64 printable characters)",
                crate::text::server_text(s)
            ));
        }
        Ok(match t.to_ascii_lowercase().as_str() {
            "owner" => ProjectRole::Owner,
            "admin" => ProjectRole::Admin,
            "analyst" => ProjectRole::Analyst,
            "consumer" => ProjectRole::Consumer,
            _ => ProjectRole::Custom(t.to_string()),
        })
    }

    /// The role as Mixpanel writes it.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            ProjectRole::Owner => "owner",
            ProjectRole::Admin => "admin",
            ProjectRole::Analyst => "analyst",
            ProjectRole::Consumer => "consumer",
            ProjectRole::Custom(s) => s,
        }
    }

    /// The rank of a known role (a custom role's rights are unknown).
    fn rank(&self) -> Option<u8> {
        match self {
            ProjectRole::Owner => Some(4),
            ProjectRole::Admin => Some(3),
            ProjectRole::Analyst => Some(2),
            ProjectRole::Consumer => Some(1),
            ProjectRole::Custom(_) => None,
        }
    }

    /// Whether holding this role gives at least the access of `want`: a
    /// known role covers itself and the known roles below it; a custom
    /// role covers only itself.
    pub(crate) fn covers(&self, want: &ProjectRole) -> bool {
        match (self.rank(), want.rank()) {
            (Some(have), Some(want)) => have >= want,
            _ => self == want,
        }
    }

    /// Whether this is a custom role.
    pub(crate) fn is_custom(&self) -> bool {
        matches!(self, ProjectRole::Custom(_))
    }
}

impl From<Role> for ProjectRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Owner => ProjectRole::Owner,
            Role::Admin => ProjectRole::Admin,
            Role::Analyst => ProjectRole::Analyst,
            Role::Consumer => ProjectRole::Consumer,
        }
    }
}

impl fmt::Display for ProjectRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProjectRole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProjectRole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ProjectRole::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A project membership to give an account: `{"id": 456, "role": "admin"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectGrant {
    /// The project's id.
    pub id: u64,
    /// The role in it.
    pub role: ProjectRole,
}

/// A list of grants for people: `[101 analyst, 102 admin]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grants<'a>(pub &'a [ProjectGrant]);

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
    /// The new account's username (Mixpanel adds its suffix).
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// Its organization role.
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// When it expires (`None`: never).
    pub expires: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// Project memberships given at creation.
    pub projects: Option<Vec<ProjectGrant>>,
}

/// The create response: the account and its secret, returned exactly once.
#[derive(Debug, Deserialize)]
pub struct CreatedServiceAccount {
    #[serde(flatten)]
    pub(crate) account: ServiceAccount,
    pub(crate) token: Secret,
}

/// Body of `POST .../service-accounts/add-to-project`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddToProjects {
    /// The memberships to add.
    pub projects: Vec<ProjectGrant>,
    /// The accounts to add them to.
    pub service_account_ids: Vec<u64>,
}

/// One project of `remove-from-project`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRemoval {
    /// The project's id.
    pub id: u64,
    /// The accounts to remove from it.
    pub service_account_ids: Vec<u64>,
}

/// Body of `POST .../service-accounts/remove-from-project` (note the nested shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveFromProjects {
    /// The projects and the accounts to remove from each.
    pub projects: Vec<ProjectRemoval>,
}

/// How an account came to be a member of a project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetType {
    /// Granted to the account itself: can be copied with add-to-project.
    Individual,
    /// Through a team: cannot be re-created by this API.
    Team,
    /// Through an organization-wide grant: cannot be re-created by this API.
    Organization,
    /// A kind of grant this client does not know: never copied.
    Other(String),
}

impl TargetType {
    fn parse(s: &str) -> Self {
        match s {
            "individual" => TargetType::Individual,
            "team" => TargetType::Team,
            "organization" => TargetType::Organization,
            other => TargetType::Other(other.to_string()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            TargetType::Individual => "individual",
            TargetType::Team => "team",
            TargetType::Organization => "organization",
            TargetType::Other(s) => s,
        }
    }
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TargetType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TargetType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(TargetType::parse(&String::deserialize(d)?))
    }
}

/// A row of `GET /projects/{project}/service-accounts`: the account and its
/// role there. A row without a role or a grant type is skipped by the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct ProjectMember {
    #[serde(flatten)]
    /// The member account.
    pub account: ServiceAccount,
    pub(crate) role: ProjectRole,
    /// How it became a member.
    pub target_type: TargetType,
}

impl TryFrom<serde_json::Value> for ProjectMember {
    type Error = String;

    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        use super::lenient::string_of;
        let role = string_of(v.get("role")).ok_or("a membership row has no `role`")?;
        let target_type = string_of(v.get("target_type")).ok_or("a membership row has no `target_type`")?;
        Ok(Self {
            role: ProjectRole::parse(&role)?,
            target_type: TargetType::parse(&target_type),
            account: ServiceAccount::try_from(v)?,
        })
    }
}

/// An organization role as `/me` reports it: only owner and admin may
/// manage service accounts; anything else (`"member"`, `"no role"`,
/// `"billing admin"`) may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OrgRole {
    Owner,
    Admin,
    Other(String),
}

impl OrgRole {
    /// Whether this role may create, delete and re-assign service accounts.
    pub(crate) fn can_manage_accounts(&self) -> bool {
        matches!(self, OrgRole::Owner | OrgRole::Admin)
    }
}

impl fmt::Display for OrgRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrgRole::Owner => "owner",
            OrgRole::Admin => "admin",
            OrgRole::Other(s) => s,
        })
    }
}

impl Serialize for OrgRole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OrgRole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "owner" => OrgRole::Owner,
            "admin" => OrgRole::Admin,
            _ => OrgRole::Other(s),
        })
    }
}

/// An organization as listed by `GET /me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MeOrganization {
    #[serde(default, deserialize_with = "super::lenient::opt_id")]
    pub(crate) id: Option<u64>,
    #[serde(default, deserialize_with = "super::lenient::opt_string")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "opt_org_role")]
    pub(crate) role: Option<OrgRole>,
}

fn opt_org_role<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<OrgRole>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => OrgRole::deserialize(serde_json::Value::String(s)).ok(),
        _ => None,
    })
}

/// A project as listed by `GET /me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MeProject {
    #[serde(default, deserialize_with = "super::lenient::opt_string")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::opt_id")]
    pub(crate) organization_id: Option<u64>,
    /// The project's regional host, e.g. `eu.mixpanel.com`.
    #[serde(default, deserialize_with = "super::lenient::opt_string")]
    pub(crate) domain: Option<String>,
}

/// `GET /me`: what the calling account can see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    #[serde(default)]
    pub(crate) organizations: BTreeMap<String, MeOrganization>,
    #[serde(default)]
    pub(crate) projects: BTreeMap<String, MeProject>,
    #[serde(default, deserialize_with = "super::lenient::opt_string")]
    pub(crate) user_email: Option<String>,
}

impl Me {
    /// The organization `org`, as the caller sees it.
    pub(crate) fn organization(&self, org: u64) -> Option<&MeOrganization> {
        self.organizations
            .iter()
            .find(|(k, o)| o.id == Some(org) || **k == org.to_string())
            .map(|(_, o)| o)
    }

    /// Whether the caller belongs to organization `org`.
    pub(crate) fn sees(&self, org: u64) -> bool {
        self.organization(org).is_some()
    }

    /// The projects of organization `org` that the caller sees: id and domain.
    pub(crate) fn projects_of(&self, org: u64) -> Vec<(u64, Option<String>)> {
        let mut out: Vec<(u64, Option<String>)> = self
            .projects
            .iter()
            .filter(|(_, p)| p.organization_id == Some(org))
            .filter_map(|(k, p)| Some((k.parse().ok()?, p.domain.clone())))
            .collect();
        out.sort();
        out
    }

    /// The ids of the projects of organization `org` that the caller sees.
    pub fn project_ids(&self, org: u64) -> Vec<u64> {
        self.projects_of(org).into_iter().map(|(id, _)| id).collect()
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

    use crate::mixpanel::client::decode;
    use crate::mixpanel::lenient::List;
    use reqwest::StatusCode;

    /// A list-service-accounts answer shaped like the evidence in
    /// `shared/mixpanel-api.md` ("What real responses look like").
    const REAL_LIST: &str = r#"{"status":"ok","results":[
        {"id":1001,"username":"etl.95a0b8.mp-service-account","last_used":"2026-07-03T09:21:27","expires":null,"creator":7,"creator_email":"a@example.com","creator_name":null,"created":"2022-02-15 12:00:00","user":9,"role":null},
        {"id":"1002","username":"ci.1a2b3c.mp-service-account","last_used":null,"expires":"2026-12-31 23:59:59.500","creator":"7","created":"2022-02-15T12:00:00.123456","user":null,"role":"admin"},
        {"id":1003,"username":"odd.000000.mp-service-account","last_used":"last tuesday","expires":12345,"created":"2022-02-15T12:00:00+01:00"},
        {"id":null,"username":"no-id"},
        {"id":1005}
    ]}"#;

    #[test]
    fn a_real_account_list_decodes_row_by_row() {
        let got: List<ServiceAccount> = decode("list", StatusCode::OK, None, REAL_LIST.as_bytes()).unwrap();
        let ids: Vec<u64> = got.0.iter().map(|a| a.id).collect();
        assert_eq!(ids, vec![1001, 1002, 1003], "rows without id or username are skipped");
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let [a, b, c] = [&got.0[0], &got.0[1], &got.0[2]];
        assert_eq!(a.last_used, Some(t("2026-07-03T09:21:27Z")));
        assert_eq!(a.created, Some(t("2022-02-15T12:00:00Z")));
        assert_eq!(a.expires, None);
        assert!(!a.last_used_unknown);
        assert_eq!(b.creator, Some(7));
        assert_eq!(b.expires.map(|e| e.timestamp_subsec_millis()), Some(500));
        assert_eq!(c.created, Some(t("2022-02-15T11:00:00Z")));
        assert_eq!(
            (c.last_used, c.last_used_unknown),
            (None, true),
            "unreadable: unknown, not never"
        );
        assert_eq!(c.expires, None);
    }

    #[test]
    fn membership_rows_with_custom_roles_and_unknown_grants_decode() {
        let body = r#"{"status":"ok","results":[
            {"id":1,"username":"a.x.mp-service-account","role":"Data Steward","target_type":"individual","role_order":null,"hasSensitiveAccess":null,"email":null},
            {"id":2,"username":"b.x.mp-service-account","role":"admin","target_type":"workspace"},
            {"id":3,"username":"c.x.mp-service-account","role":null,"target_type":"individual"},
            {"id":4,"username":"d.x.mp-service-account","role":"Consumer","target_type":"organization","created":"2022-02-15 12:00:00"}
        ]}"#;
        let got: List<ProjectMember> = decode("members", StatusCode::OK, None, body.as_bytes()).unwrap();
        assert_eq!(got.0.len(), 3, "the row without a role is skipped, the others kept");
        assert_eq!(got.0[0].role, ProjectRole::Custom("Data Steward".into()));
        assert_eq!(got.0[1].target_type, TargetType::Other("workspace".into()));
        assert_eq!(got.0[2].role, ProjectRole::Consumer);
        assert_eq!(got.0[2].target_type, TargetType::Organization);
    }

    #[test]
    fn me_decodes_loose_values_and_refuses_a_broken_shape() {
        let body = r#"{"status":"ok","results":{
            "organizations":{"123":{"id":"123","name":null,"role":"no role","date_joined_iso":"2026-07-03T09:21:27"}},
            "projects":{"456":{"name":"Web","organization_id":123,"domain":"eu.mixpanel.com"},"457":{"organization_id":null}},
            "user_email":null}}"#;
        let me: Me = decode("me", StatusCode::OK, None, body.as_bytes()).unwrap();
        let org = me.organization(123).unwrap();
        assert_eq!(org.role, Some(OrgRole::Other("no role".into())));
        assert!(!org.role.as_ref().unwrap().can_manage_accounts());
        assert_eq!(me.projects_of(123), vec![(456, Some("eu.mixpanel.com".into()))]);
        // A `results` that is not a /me is an error, never an empty one.
        let broken = r#"{"status":"ok","results":{"organizations":"none","projects":[]}}"#;
        let e = decode::<Me>("me", StatusCode::OK, None, broken.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("not what this client expects"), "{e}");
    }

    #[test]
    fn roles_compare_as_access() {
        use ProjectRole::*;
        assert!(Admin.covers(&Analyst) && Admin.covers(&Admin) && Owner.covers(&Consumer));
        assert!(!Analyst.covers(&Admin));
        let steward = Custom("Data Steward".into());
        assert!(steward.covers(&steward.clone()));
        assert!(!Admin.covers(&steward) && !steward.covers(&Consumer));
        assert_eq!(ProjectRole::parse("ANALYST").unwrap(), Analyst);
        assert!(ProjectRole::parse("  ").is_err());
        for (s, can) in [
            ("owner", true),
            ("Admin", true),
            ("member", false),
            ("billing admin", false),
        ] {
            let r: OrgRole = serde_json::from_value(serde_json::json!(s)).unwrap();
            assert_eq!(r.can_manage_accounts(), can, "{s}");
        }
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
