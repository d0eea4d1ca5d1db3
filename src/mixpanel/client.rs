//! The HTTP client of the Service Accounts API.
//!
//! - Basic auth with the configured account; the secret only ever goes into
//!   the `Authorization` header (marked sensitive).
//! - A per-host concurrency limit shared by every clone and every credential.
//! - GET and DELETE are retried on 408/429/5xx and transport errors with
//!   capped exponential backoff and full jitter, honouring `Retry-After`.
//!   POSTs are never retried: create is not idempotent (the engine recovers by
//!   lineage name), and membership changes are re-checked by reading back.
//! - Redirects are never followed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::Rng as _;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Serialize;

use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::error::MixpanelError;
use super::lenient::List;
use super::types::*;
use crate::secret::Secret;
use crate::text::error_chain;

/// A service account's credentials.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The service account's username (`...mp-service-account`).
    pub username: String,
    /// Its secret.
    pub secret: Secret,
}

/// Backoff of retried requests.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Delay before the first retry (doubled each time, with full jitter).
    pub base: Duration,
    /// Upper bound of one computed backoff delay.
    pub cap: Duration,
    /// The longest `Retry-After` waited for; a longer one fails the call at
    /// once (and the waits of one call together stay under twice this).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): full jitter over a
    /// capped exponential, or the server's `Retry-After` when it gave one.
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let ceiling = exp.min(self.cap);
        let ms = ceiling.as_millis() as u64;
        // Full jitter, but never less than half the ceiling so retries do not bunch at zero.
        let half = ms / 2;
        Duration::from_millis(half.saturating_add(rand::rng().random_range(0..=half)))
    }
}

/// Mixpanel's API hosts, by the `domain` `/me` gives each project.
pub const MIXPANEL_DOMAINS: [&str; 3] = ["mixpanel.com", "eu.mixpanel.com", "in.mixpanel.com"];

/// Where project-scoped calls (`/projects/{id}/...`) go: each project is
/// served by its own region's host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectHosts {
    /// `mixpanel.region` was set: a project on a known Mixpanel domain is
    /// reached at `https://{domain}/api/app`. Off (`mixpanel.base_url`): at
    /// the base URL, unless `urls` maps its domain.
    pub(crate) regional: bool,
    /// Domain -> API base (`mixpanel.region_urls`), before anything else.
    pub(crate) urls: std::collections::BTreeMap<String, String>,
}

/// Everything a client needs.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// API base including `/api/app`, no trailing slash.
    pub base_url: String,
    /// The organization every call is about.
    pub organization_id: u64,
    /// The rotator's own account.
    pub credentials: Credentials,
    /// Requests in flight at once, per API host.
    pub max_concurrency: usize,
    /// Timeout of one request.
    pub timeout: Duration,
    /// How failed reads and deletes are retried.
    pub retry: RetryPolicy,
}

/// Who the client acts as: a username and its `Authorization` header.
#[derive(Clone)]
struct Identity {
    username: Arc<str>,
    auth: HeaderValue,
}

impl Identity {
    fn of(c: &Credentials) -> Result<Self, MixpanelError> {
        Ok(Self {
            username: Arc::from(c.username.as_str()),
            auth: auth_header(c)?,
        })
    }
}

/// Where the rotator's current credential can be read again (its own
/// payload, `[mixpanel.self]`): after a 401, a client asks it once, and
/// retries once with what it gives when that is another account (an
/// instance that missed a self-rotation recovers by itself).
#[async_trait::async_trait]
pub(crate) trait CredentialSource: Send + Sync {
    /// The credential to use now, if one is published.
    async fn current(&self) -> Option<Credentials>;
}

/// A Mixpanel API client. Cheap to clone; clones share the connection pool,
/// the concurrency limit and the identity (switched for every clone at once
/// when the rotator's own credential is rotated).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: Arc<str>,
    org: u64,
    identity: Arc<std::sync::RwLock<Identity>>,
    /// Re-read on a 401 (`None`: no `[mixpanel.self]`, or a verifying clone).
    source: Option<Arc<dyn CredentialSource>>,
    /// One limit per API host (a region's host is another host).
    limits: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>>,
    max_concurrency: usize,
    retry: RetryPolicy,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    hosts: Arc<ProjectHosts>,
    /// Of one request.
    timeout: Duration,
    /// For `Retry-After` given as a date, and to read Mixpanel's clock.
    clock: crate::clock::SharedClock,
    /// Mixpanel's clock, from its answers' `Date` (shared by every clone).
    server_clock: Arc<super::server_clock::ServerClock>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("organization_id", &self.org)
            .field("username", &self.username())
            .finish_non_exhaustive()
    }
}

/// The HTTP client for `urls` (TLS only when one of them is https).
fn http_client<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    timeout: Duration,
) -> Result<reqwest::Client, MixpanelError> {
    crate::http::builder(urls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("mixpanel-rotator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| MixpanelError::Setup(e.to_string()))
}

fn auth_header(c: &Credentials) -> Result<HeaderValue, MixpanelError> {
    let raw = zeroize::Zeroizing::new(format!("{}:{}", c.username, c.secret.expose()));
    let encoded = zeroize::Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
    ));
    let mut v = HeaderValue::from_str(&encoded).map_err(|_| {
        MixpanelError::Setup("the username or secret contains characters not allowed in an HTTP header".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Client {
    /// Builds a client.
    pub fn new(s: ClientSettings) -> Result<Self, MixpanelError> {
        let http = http_client([s.base_url.as_str()], s.timeout)?;
        Ok(Self {
            http,
            timeout: s.timeout,
            base_url: Arc::from(s.base_url.trim_end_matches('/')),
            org: s.organization_id,
            identity: Arc::new(std::sync::RwLock::new(Identity::of(&s.credentials)?)),
            source: None,
            limits: Arc::default(),
            max_concurrency: s.max_concurrency.max(1),
            retry: s.retry,
            metrics: None,
            hosts: Arc::new(ProjectHosts::default()),
            clock: Arc::new(crate::clock::SystemClock),
            server_clock: Arc::default(),
        })
    }

    /// Sends project-scoped calls to each project's region (see [`ProjectHosts`]).
    pub(crate) fn with_project_hosts(mut self, hosts: ProjectHosts) -> Result<Self, MixpanelError> {
        // A client built for an `http://` base has no TLS: rebuilt when a
        // region may be reached over https (one built for https has it).
        let https_region = hosts.regional || hosts.urls.values().any(|u| !u.starts_with("http://"));
        if self.base_url.starts_with("http://") && https_region {
            let urls = std::iter::once(&*self.base_url)
                .chain(hosts.urls.values().map(String::as_str))
                .chain(hosts.regional.then_some("https://"));
            self.http = http_client(urls, self.timeout)?;
        }
        self.hosts = Arc::new(hosts);
        Ok(self)
    }

    /// Reads the time from `clock` (a `Retry-After` date).
    pub(crate) fn with_clock(mut self, clock: crate::clock::SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The API base of a project hosted at `domain` (as `/me` reports it;
    /// `None`: the organization's base URL).
    pub(crate) fn project_base(&self, domain: Option<&str>) -> Result<String, MixpanelError> {
        let Some(d) = domain.map(str::trim).filter(|d| !d.is_empty()) else {
            return Ok(self.base_url.to_string());
        };
        let d = d.to_ascii_lowercase();
        if let Some(u) = self.hosts.urls.get(&d) {
            return Ok(u.trim_end_matches('/').to_string());
        }
        if !MIXPANEL_DOMAINS.contains(&d.as_str()) {
            return Err(MixpanelError::UnknownRegion {
                domain: crate::text::server_text(&d),
            });
        }
        Ok(if self.hosts.regional {
            format!("https://{d}/api/app")
        } else {
            self.base_url.to_string()
        })
    }

    /// Counts every request in `metrics` (`api_requests_total{endpoint,status}`).
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The same client (pool, limit, retries) acting as another account:
    /// used to prove a new credential works.
    pub(crate) fn with_credentials(&self, c: &Credentials) -> Result<Self, MixpanelError> {
        Ok(Self {
            identity: Arc::new(std::sync::RwLock::new(Identity::of(c)?)),
            source: None,
            ..self.clone()
        })
    }

    /// Re-reads the credential from `source` after a 401 (see [`CredentialSource`]).
    pub(crate) fn with_credential_source(mut self, source: Arc<dyn CredentialSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// The identity in use now.
    fn identity(&self) -> Identity {
        self.identity
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The username every call is made as now.
    pub fn username(&self) -> Arc<str> {
        self.identity().username
    }

    /// Acts as `c` from now on, in this client and every clone of it (the
    /// rotator's own credential was rotated). Whether it changed.
    pub(crate) fn switch_to(&self, c: &Credentials) -> Result<bool, MixpanelError> {
        let next = Identity::of(c)?;
        let mut id = self.identity.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *id.username == *next.username {
            return Ok(false);
        }
        tracing::info!(from = %id.username, to = %next.username, "Mixpanel calls now use the rotator's new credential.");
        *id = next;
        Ok(true)
    }

    /// Reads the credential source (if any) and switches to what it holds:
    /// at the start of a pass, so that a credential rotated by another
    /// instance is used before any call. Whether it changed.
    pub(crate) async fn refresh(&self) -> bool {
        let Some(source) = &self.source else { return false };
        match source.current().await {
            Some(c) => self.switch_to(&c).unwrap_or_else(|e| {
                tracing::warn!("The rotator's published credential cannot be used: {e}");
                false
            }),
            None => false,
        }
    }

    /// The concurrency limit of the host of `base`.
    fn limit_for(&self, base: &str) -> Arc<Semaphore> {
        let host = reqwest::Url::parse(base)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_else(|| base.to_string());
        let mut m = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(host)
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_concurrency)))
            .clone()
    }

    /// Mixpanel's clock minus ours, from the `Date` of its recent answers
    /// (`None`: no answer carried one yet).
    pub(crate) fn clock_offset(&self) -> Option<chrono::Duration> {
        self.server_clock.offset()
    }

    /// How far apart the offsets of Mixpanel's recent answers are (a clock
    /// that jumped shows here first).
    pub(crate) fn clock_spread(&self) -> chrono::Duration {
        self.server_clock.spread()
    }

    /// The organization this client manages.
    pub(crate) fn organization_id(&self) -> u64 {
        self.org
    }

    /// The API base URL.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /organizations/{org}/service-accounts`
    pub async fn list_accounts(&self) -> Result<Vec<ServiceAccount>, MixpanelError> {
        let path = format!("/organizations/{}/service-accounts", self.org);
        self.call::<List<ServiceAccount>>(Method::GET, &path, None::<&()>, "list-service-accounts")
            .await
            .map(|l| l.0)
    }

    /// `GET /organizations/{org}/service-accounts/{id}` (bare or wrapped body).
    pub async fn get_account(&self, id: u64) -> Result<ServiceAccount, MixpanelError> {
        let path = format!("/organizations/{}/service-accounts/{id}", self.org);
        self.call(Method::GET, &path, None::<&()>, "get-service-account").await
    }

    /// `POST /organizations/{org}/service-accounts`: never retried.
    pub async fn create_account(&self, body: &CreateServiceAccount) -> Result<CreatedServiceAccount, MixpanelError> {
        let path = format!("/organizations/{}/service-accounts", self.org);
        self.call(Method::POST, &path, Some(body), "create-service-account")
            .await
    }

    /// `DELETE /organizations/{org}/service-accounts/{id}`. Returns `false`
    /// when the account was already gone (404).
    pub async fn delete_account(&self, id: u64) -> Result<bool, MixpanelError> {
        let path = format!("/organizations/{}/service-accounts/{id}", self.org);
        match self
            .call::<serde::de::IgnoredAny>(Method::DELETE, &path, None::<&()>, "delete-service-account")
            .await
        {
            Ok(_) => Ok(true),
            Err(MixpanelError::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST .../service-accounts/add-to-project`
    pub async fn add_to_projects(&self, body: &AddToProjects) -> Result<(), MixpanelError> {
        let path = format!("/organizations/{}/service-accounts/add-to-project", self.org);
        self.call::<serde::de::IgnoredAny>(Method::POST, &path, Some(body), "add-to-project")
            .await
            .map(|_| ())
    }

    /// `POST .../service-accounts/remove-from-project`
    pub async fn remove_from_projects(&self, body: &RemoveFromProjects) -> Result<(), MixpanelError> {
        let path = format!("/organizations/{}/service-accounts/remove-from-project", self.org);
        self.call::<serde::de::IgnoredAny>(Method::POST, &path, Some(body), "remove-from-project")
            .await
            .map(|_| ())
    }

    /// `GET /projects/{project}/service-accounts`, on the host of the
    /// project's region (`domain`, as `/me` reports it).
    pub async fn list_project_members(
        &self,
        project: u64,
        domain: Option<&str>,
    ) -> Result<Vec<ProjectMember>, MixpanelError> {
        let base = self.project_base(domain)?;
        let path = format!("/projects/{project}/service-accounts");
        self.call_on::<List<ProjectMember>>(&base, Method::GET, &path, None::<&()>, "list-project-service-accounts")
            .await
            .map(|l| l.0)
    }

    /// `GET /me?include_workspace_users=false`: who the caller is and what it sees.
    pub async fn me(&self) -> Result<Me, MixpanelError> {
        self.call(Method::GET, "/me?include_workspace_users=false", None::<&()>, "me")
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        endpoint: &'static str,
    ) -> Result<T, MixpanelError> {
        let base = self.base_url.clone();
        self.call_on(&base, method, path, body, endpoint).await
    }

    async fn call_on<T: DeserializeOwned>(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        endpoint: &'static str,
    ) -> Result<T, MixpanelError> {
        let retries = method == Method::GET || method == Method::DELETE;
        let mut attempt = 0u32;
        let mut waited = Duration::ZERO;
        let mut refreshed = false;
        loop {
            attempt = attempt.saturating_add(1);
            let used = self.identity();
            let Attempt { result, retry_after } = self.once(base, &method, path, body, endpoint, &used).await;
            match result {
                Ok(v) => return Ok(v),
                // Refused: the credential may have been rotated by another
                // instance (and its old account deleted). Read it again,
                // once; retry once if it is another account. A 401 is never
                // applied, so a create or a delete may be retried too.
                Err(MixpanelError::Api { status: 401, .. })
                    if !refreshed && (self.username() != used.username || self.refresh().await) =>
                {
                    refreshed = true;
                    tracing::info!(
                        endpoint,
                        "Refused with the previous credential; retrying with the rotator's current one."
                    );
                }
                Err(e) if retries && e.retryable() && attempt < self.retry.max_attempts => {
                    let max = self.retry.max_retry_after;
                    if let Some(wait) =
                        retry_after.filter(|w| *w > max || waited.saturating_add(*w) > max.saturating_mul(2))
                    {
                        return Err(MixpanelError::RetryAfterTooLong {
                            endpoint,
                            status: e.status().unwrap_or(429),
                            wait,
                            max,
                        });
                    }
                    let delay = self.retry.delay(attempt, retry_after);
                    waited = waited.saturating_add(delay);
                    tracing::debug!(endpoint, attempt, delay_ms = delay.as_millis() as u64, error = %e, "Retrying Mixpanel request.");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn once<T: DeserializeOwned>(
        &self,
        base: &str,
        method: &Method,
        path: &str,
        body: Option<&impl Serialize>,
        endpoint: &'static str,
        identity: &Identity,
    ) -> Attempt<T> {
        // The semaphore is never closed, so acquire only fails if it were; then run unlimited.
        let limit = self.limit_for(base);
        let _permit = limit.acquire().await.ok();
        let started = Instant::now();
        let resp = match self.send(base, method, path, body, endpoint, identity).await {
            Ok(r) => r,
            Err(e) => {
                return Attempt {
                    result: Err(e),
                    retry_after: None,
                };
            }
        };
        let status = resp.status();
        if let Some(m) = &self.metrics {
            m.api_request(endpoint, status.as_u16());
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let now = self.clock.now();
        if let Some(date) = header(reqwest::header::DATE) {
            self.server_clock.record(&date, now);
        }
        let retry_after = header(RETRY_AFTER).and_then(|v| retry_after(&v, now));
        let location = header(reqwest::header::LOCATION);
        let result = match crate::bounded::read_body(resp, crate::bounded::DOCUMENT_MAX).await {
            Ok(bytes) => decode(endpoint, status, location, &bytes),
            Err(crate::bounded::BodyError::TooLarge { max }) => Err(MixpanelError::Decode {
                endpoint,
                status: status.as_u16(),
                detail: format!(
                    "the answer is larger than {}, so it was not read",
                    crate::bounded::size(max)
                ),
            }),
            Err(crate::bounded::BodyError::Transport(e)) => Err(MixpanelError::Transport {
                endpoint,
                detail: format!("the response was cut off: {}", error_chain(&e)),
                connect: false,
            }),
        };
        tracing::debug!(
            endpoint,
            method = %method,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Mixpanel request done."
        );
        Attempt { result, retry_after }
    }

    /// Sends one request; a request that got no answer is a transport error.
    async fn send(
        &self,
        base: &str,
        method: &Method,
        path: &str,
        body: Option<&impl Serialize>,
        endpoint: &'static str,
        identity: &Identity,
    ) -> Result<reqwest::Response, MixpanelError> {
        let url = format!("{base}{path}");
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(AUTHORIZATION, identity.auth.clone());
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.map_err(|e| {
            let detail = if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                format!("cannot connect: {}", error_chain(&e))
            } else {
                format!("connection failed: {}", error_chain(&e))
            };
            tracing::debug!(endpoint, method = %method, "Mixpanel request failed: {detail}");
            if let Some(m) = &self.metrics {
                m.api_request(endpoint, 0);
            }
            MixpanelError::Transport {
                endpoint,
                detail,
                connect: e.is_connect(),
            }
        })
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (RFC 9110), as a
/// delay from `now` (a date in the past: retry at once).
fn retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(at.signed_duration_since(now).to_std().unwrap_or_default())
}

/// One attempt's outcome, and the server's `Retry-After` if it gave one.
struct Attempt<T> {
    result: Result<T, MixpanelError>,
    retry_after: Option<Duration>,
}

/// What an error answer says, whatever its shape: `{"error": ..}`,
/// `{"detail": ..}`, `{"message": ..}`, an HTML page from a proxy (its
/// title, or its text), or plain text. The caller cuts it to one masked line.
fn error_text(bytes: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return ["error", "detail", "message"].iter().find_map(|k| match v.get(k)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        });
    }
    let text = String::from_utf8_lossy(bytes);
    let lower = text.to_ascii_lowercase();
    if lower.contains("<html") || lower.contains("<!doctype") {
        let title = lower
            .find("<title>")
            .zip(lower.find("</title>"))
            .and_then(|(a, b)| text.get(a.saturating_add(7)..b));
        let shown = title.map(str::to_string).unwrap_or_else(|| strip_tags(&text));
        return Some(format!("(an HTML page) {}", shown.trim())).filter(|s| s.len() > 14);
    }
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The text of an HTML page, tags removed, whitespace collapsed.
fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes an answer of `endpoint` (public for the benchmarks).
pub fn decode<T: DeserializeOwned>(
    endpoint: &'static str,
    status: StatusCode,
    location: Option<String>,
    bytes: &[u8],
) -> Result<T, MixpanelError> {
    let code = status.as_u16();
    if status.is_redirection() {
        return Err(MixpanelError::Redirect {
            endpoint,
            status: code,
            location: location.unwrap_or_else(|| "(no Location)".into()),
        });
    }
    if !status.is_success() {
        let message = error_text(bytes).unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        return Err(MixpanelError::Api {
            endpoint,
            status: code,
            message: crate::text::server_text(&message),
        });
    }
    // Every endpoint wraps its result as {"status":"ok","results":..}, except
    // get-service-account in the published description: accept both shapes.
    // When `results` is there it must decode: an answer that does not is an
    // error, never silently an empty value.
    // Mutations answer {"status":"ok"} and nothing else; an empty body is taken as `null`.
    let bytes = if bytes.is_empty() { b"null".as_slice() } else { bytes };
    let not_json = |e: serde_json::Error| MixpanelError::Decode {
        endpoint,
        status: code,
        // Deliberately not echoing the body: a create response carries a token.
        detail: format!("not the expected JSON (line {}, column {})", e.line(), e.column()),
    };
    // The common case, straight from the bytes: a `results` that decodes
    // (no tree of the whole answer: a list of 10,000 accounts is megabytes).
    #[derive(serde::Deserialize)]
    struct Envelope<T> {
        #[serde(default, deserialize_with = "super::lenient::opt_string")]
        status: Option<String>,
        #[serde(default = "Option::default")]
        results: Option<T>,
    }
    match serde_json::from_slice::<Envelope<T>>(bytes) {
        Ok(Envelope { status: Some(s), .. }) if s == "error" => {
            return Err(MixpanelError::Decode {
                endpoint,
                status: code,
                detail: "status is \"error\" on a success code".into(),
            });
        }
        Ok(Envelope { results: Some(r), .. }) => return Ok(r),
        // A bare answer, or one that does not decode: read it again as a
        // tree, which tells the two apart and says what is wrong.
        _ => {}
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(not_json)?;
    if value.get("status").and_then(serde_json::Value::as_str) == Some("error") {
        return Err(MixpanelError::Decode {
            endpoint,
            status: code,
            detail: "status is \"error\" on a success code".into(),
        });
    }
    let results = match value.as_object_mut().and_then(|o| o.remove("results")) {
        Some(r) => r,
        None => value,
    };
    T::deserialize(results).map_err(|e| MixpanelError::Decode {
        endpoint,
        status: code,
        detail: format!("its results are not what this client expects ({})", shape_error(&e)),
    })
}

/// A decode error without any value from the body (which may hold a secret):
/// serde's own words name fields and types, never values, except for
/// `invalid value: string "..."`, which is cut.
fn shape_error(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(": string \"") {
        Some(i) => format!("{} (value withheld)", s.get(..i).unwrap_or_default()),
        None => crate::text::server_text(&s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            let d = p.delay(attempt, None);
            assert!(d <= p.cap, "{attempt}: {d:?}");
        }
        assert!(p.delay(1, None) <= Duration::from_millis(250));
        assert_eq!(p.delay(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            p.max_retry_after,
            "never more than the bound"
        );
    }

    #[test]
    fn decodes_both_shapes_and_errors() {
        let sa = r#"{"id":7,"username":"x","last_used":null,"expires":null,"creator":1,"created":"2026-01-01T00:00:00Z","user":2}"#;
        let bare: ServiceAccount = decode("get", StatusCode::OK, None, sa.as_bytes()).unwrap();
        let wrapped: ServiceAccount = decode(
            "get",
            StatusCode::OK,
            None,
            format!(r#"{{"status":"ok","results":{sa}}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(bare, wrapped);
        let err = decode::<ServiceAccount>(
            "get",
            StatusCode::FORBIDDEN,
            None,
            br#"{"status":"error","error":"nope"}"#,
        )
        .unwrap_err();
        assert!(matches!(err, MixpanelError::Api { status: 403, ref message, .. } if message == "nope"));
        assert!(err.to_string().contains("admin or owner"));
        let err = decode::<ServiceAccount>("get", StatusCode::MOVED_PERMANENTLY, Some("/x/".into()), b"").unwrap_err();
        assert!(matches!(err, MixpanelError::Redirect { .. }));
        let _: serde::de::IgnoredAny = decode("delete", StatusCode::OK, None, br#"{"status":"ok"}"#).unwrap();
    }

    #[test]
    fn error_bodies_of_any_shape_give_one_line() {
        let said = |body: &str| {
            decode::<ServiceAccount>("get", StatusCode::BAD_GATEWAY, None, body.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(said(r#"{"detail":"Not allowed here"}"#).contains(": Not allowed here"));
        assert!(said(r#"{"status":"error","error":"nope"}"#).contains(": nope"));
        assert!(said("upstream timed out\nsecond line").ends_with(": upstream timed out"));
        let html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad</h1></body></html>";
        assert!(
            said(html).contains(": (an HTML page) 502 Bad Gateway"),
            "{}",
            said(html)
        );
        assert!(said("").contains("HTTP 502"));
        // A credential-looking run in an error body is masked.
        assert!(said(r#"{"detail":"bad token q8ZrT2vX9LmP4wKd7NfY3bHc"}"#).contains("[masked]"));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn project_calls_go_to_their_region() {
        let settings = |base: &str| ClientSettings {
            base_url: base.into(),
            organization_id: 1,
            credentials: Credentials {
                username: "u".into(),
                secret: Secret::new("s"),
            },
            max_concurrency: 1,
            timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
        };
        let regional = Client::new(settings("https://mixpanel.com/api/app"))
            .unwrap()
            .with_project_hosts(ProjectHosts {
                regional: true,
                urls: [("in.mixpanel.com".to_string(), "https://proxy/in/api/app".to_string())].into(),
            })
            .unwrap();
        assert_eq!(
            regional.project_base(Some("eu.mixpanel.com")).unwrap(),
            "https://eu.mixpanel.com/api/app"
        );
        assert_eq!(
            regional.project_base(Some("EU.mixpanel.com")).unwrap(),
            "https://eu.mixpanel.com/api/app"
        );
        assert_eq!(
            regional.project_base(Some("in.mixpanel.com")).unwrap(),
            "https://proxy/in/api/app"
        );
        assert_eq!(regional.project_base(None).unwrap(), "https://mixpanel.com/api/app");
        let e = regional.project_base(Some("evil.example.com")).unwrap_err();
        assert!(e.to_string().contains("`mixpanel.region_urls`"), "{e}");
        let fixed = Client::new(settings("http://127.0.0.1:9/api/app")).unwrap();
        assert_eq!(
            fixed.project_base(Some("eu.mixpanel.com")).unwrap(),
            "http://127.0.0.1:9/api/app"
        );
    }

    #[test]
    fn decode_error_does_not_echo_the_body() {
        let err = decode::<CreatedServiceAccount>(
            "create",
            StatusCode::CREATED,
            None,
            br#"{"results":{"token":"sekrit-abc"}}"#,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("sekrit-abc"));
    }
}
