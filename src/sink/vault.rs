//! The `vault` sink: HashiCorp Vault or OpenBao, KV version 2, through
//! `vaultrs`.
//!
//! - The payload is the secret's data at `{mount}/data/{path}`; publish is a
//!   check-and-set write (`cas` = the version read, `0` when nothing exists),
//!   so a lost race is a [`super::contract::SinkErrorKind::Conflict`].
//! - `custom_metadata` on `{mount}/metadata/{path}` records integration,
//!   rotation id, account id and expiry (never the secret).
//! - Auth: `token` (a reference; a Vault Agent token file works, it is re-read
//!   on re-login), `approle`, `kubernetes`. On 403 (token expired or revoked)
//!   the sink logs in again and retries once.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::Mutex;
use vaultrs::api::kv2::requests::{
    DeleteSecretMetadataRequest, ReadSecretRequest, SetSecretMetadataRequest, SetSecretRequestOptions,
};
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::contract::{Backend, Payload, Sink, SinkError, SinkErrorKind, Version};
use crate::secret::Secret;
use crate::values::{HumanDuration, Invalid, KeyError, SecretRef};

const K8S_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `[sinks.NAME] type = "vault"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSinkConfig {
    /// Vault's address, e.g. `https://vault.internal:8200` (http only to loopback).
    pub(crate) address: String,
    /// The KV v2 mount (default `secret`).
    #[serde(default = "default_mount")]
    pub(crate) mount: String,
    /// How to log in.
    pub auth: VaultAuth,
    /// Vault Enterprise / OpenBao namespace (sent as `X-Vault-Namespace`).
    pub(crate) namespace: Option<String>,
    /// PEM file of the CA that signed Vault's certificate.
    pub(crate) ca_cert: Option<PathBuf>,
    /// Timeout of one request (default `30s`).
    pub(crate) timeout: Option<HumanDuration>,
}

fn default_mount() -> String {
    "secret".into()
}

/// `auth = { method = ... }`
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum VaultAuth {
    /// A token, by reference (`{ env = "VAULT_TOKEN" }`, or a Vault Agent sink file).
    Token {
        /// The token, by reference; re-read at every login, so a Vault Agent's sink file works.
        token: SecretRef,
    },
    /// AppRole login.
    Approle {
        /// The role id, by reference.
        role_id: SecretRef,
        /// The secret id, by reference.
        secret_id: SecretRef,
        /// Auth mount (default `approle`).
        #[serde(default = "approle_mount")]
        mount: String,
    },
    /// Kubernetes login with the pod's service-account JWT.
    Kubernetes {
        /// The Vault role to log in as.
        role: String,
        /// The JWT file (default the pod's service-account token).
        #[serde(default = "k8s_jwt")]
        jwt_path: PathBuf,
        /// Auth mount (default `kubernetes`).
        #[serde(default = "k8s_mount")]
        mount: String,
    },
}

fn approle_mount() -> String {
    "approle".into()
}
fn k8s_mount() -> String {
    "kubernetes".into()
}
fn k8s_jwt() -> PathBuf {
    PathBuf::from(K8S_JWT)
}

impl Backend for VaultSinkConfig {
    fn check(&self) -> Result<(), KeyError> {
        crate::values::check_url(&self.address).map_err(|m| KeyError::new("address", m))?;
        if self.mount.is_empty() || self.mount.contains("..") {
            return Err(KeyError::new(
                "mount",
                format!("is `{}`: name the KV v2 mount, e.g. \"secret\"", self.mount),
            ));
        }
        if let VaultAuth::Kubernetes { role, .. } = &self.auth
            && role.is_empty()
        {
            return Err(KeyError::new("auth.role", "must name the Vault role to log in as"));
        }
        Ok(())
    }

    fn check_path(&self, path: &str) -> Result<(), Invalid> {
        if path.chars().any(char::is_control) {
            return Err(Invalid(
                "contains a control character (a NUL, a newline, ...): use a plain KV path".into(),
            ));
        }
        let ok = !path.is_empty()
            && !path.starts_with('/')
            && !path.ends_with('/')
            && path.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
        if ok {
            Ok(())
        } else {
            Err(Invalid(format!(
                "is `{path}`: use a KV path below the mount, e.g. \"mixpanel/etl\""
            )))
        }
    }

    fn location(&self, path: &str) -> String {
        super::place::vault(&self.address, self.namespace.as_deref(), &self.mount, path)
    }

    fn timeout(&self) -> Option<HumanDuration> {
        self.timeout
    }

    fn secret_refs(&self) -> Vec<(&'static str, SecretRef)> {
        match &self.auth {
            VaultAuth::Token { token } => vec![("auth.token", token.clone())],
            VaultAuth::Approle { role_id, secret_id, .. } => {
                vec![("auth.role_id", role_id.clone()), ("auth.secret_id", secret_id.clone())]
            }
            VaultAuth::Kubernetes { jwt_path, .. } => vec![("auth.jwt_path", SecretRef::File(jwt_path.clone()))],
        }
    }

    fn build(&self, name: &str) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(Arc::new(VaultSink::new(name, self.clone())?))
    }
}

/// A Vault KV v2 sink.
pub(crate) struct VaultSink {
    name: String,
    config: VaultSinkConfig,
    /// Logged-in client, created on first use and replaced on re-login.
    client: Mutex<Option<Arc<VaultClient>>>,
    /// For `sys/capabilities-self`, which `vaultrs` does not wrap.
    http: reqwest::Client,
    /// A healthcheck has logged in afresh once: the next ones use the
    /// client in use (a check per integration must not mint a token each).
    login_checked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for VaultSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSink")
            .field("name", &self.name)
            .field("address", &self.config.address)
            .finish_non_exhaustive()
    }
}

/// Whether the capabilities `caps` allow `capability` (`root` allows all).
fn grants(caps: &[String], capability: &str) -> bool {
    caps.iter().any(|x| x == capability || x == "root")
}

/// A failed Vault call: its HTTP status (`None`: no answer) and what it said.
struct Described {
    code: Option<u16>,
    text: String,
}

/// What went wrong, in words (the status decides whether logging in again
/// may help).
fn describe(e: &ClientError) -> Described {
    let (code, text) = match e {
        ClientError::APIError { code, errors } => (
            Some(*code),
            format!("HTTP {code}: {}", crate::text::server_text(&errors.join("; "))),
        ),
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => (Some(*code), format!("HTTP {code}")),
            other => (None, no_answer(other)),
        },
        other => (None, no_answer(other)),
    };
    Described { code, text }
}

/// A call that got no answer, in one line: the innermost cause (the SDK's
/// whole chain only at debug level) and what to check.
fn no_answer(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    tracing::debug!(error = ?e, "Vault call failed without an answer.");
    let timed_out = std::iter::successors(Some(e), |x| x.source()).any(|x| {
        x.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
    });
    if timed_out {
        "no answer from Vault within the sink's `timeout`".into()
    } else {
        format!(
            "no answer from Vault ({}): check the sink's `address` and the network path",
            crate::text::server_text(&cause.to_string())
        )
    }
}

/// The kind of a failure with HTTP status `code` (`None`: no answer).
fn error_of(code: Option<u16>, detail: String) -> SinkError {
    match code {
        Some(401 | 403) => SinkError::denied(detail),
        Some(404) => SinkError::not_found(detail),
        Some(c) if c < 500 && c != 408 && c != 429 => SinkError::invalid(detail),
        _ => SinkError::unavailable(detail),
    }
}

fn is_cas_conflict(e: &ClientError) -> bool {
    matches!(e, ClientError::APIError { code: 400, errors } if errors.iter().any(|m| m.contains("check-and-set")))
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(describe(e).code, Some(404))
}

impl VaultSink {
    /// A Vault sink called `name`.
    pub(crate) fn new(name: &str, config: VaultSinkConfig) -> Result<Self, SinkError> {
        let timeout = config
            .timeout
            .map(|t| t.to_std())
            .unwrap_or(std::time::Duration::from_secs(30));
        let mut http = crate::http::builder([config.address.as_str()])
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca_cert {
            // Its own TLS set-up: the platform's roots plus this CA.
            http = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none());
            let pem = crate::bounded::read_file(ca, crate::bounded::DOCUMENT_MAX, true)
                .map_err(|e| SinkError::invalid(format!("cannot read `sinks.{name}.ca_cert` {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| SinkError::invalid(format!("`sinks.{name}.ca_cert` {} is not PEM: {e}", ca.display())))?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| SinkError::invalid(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            name: name.into(),
            config,
            client: Mutex::new(None),
            login_checked: std::sync::atomic::AtomicBool::new(false),
            http,
        })
    }

    /// The token may not remove `path` (every version and the metadata).
    fn lacks_delete(&self, path: &str) -> SinkError {
        let meta = format!("{}/metadata/{path}", self.config.mount);
        SinkError::denied(format!(
            "the token lacks `delete` on {meta}, which `retire` needs to remove every version and the metadata: grant it in the token's Vault policy for the retire (README, \"vault\" sink)"
        ))
    }

    fn err(&self, what: &str, path: &str, e: &ClientError) -> SinkError {
        let Described { code, text } = describe(e);
        let hint = match code {
            Some(403) => ": the token lacks permission or was revoked; check the Vault policy (README, \"vault\" sink)",
            Some(401) => ": not logged in; check `auth`",
            _ => "",
        };
        let detail = format!("{what} {}/data/{path}: {text}{hint}", self.config.mount);
        error_of(code, detail)
    }

    /// A vaultrs client on this sink's own HTTP client (one connection pool
    /// and TLS set-up for every login), carrying `token`.
    fn base_client(&self, token: &str) -> Result<VaultClient, SinkError> {
        let mut b = VaultClientSettingsBuilder::default();
        b.address(self.config.address.as_str()).token(token).verify(true);
        if let Some(t) = self.config.timeout {
            b.timeout(Some(t.to_std()));
        } else {
            b.timeout(Some(std::time::Duration::from_secs(30)));
        }
        if let Some(ns) = &self.config.namespace {
            b.namespace(Some(ns.clone()));
        }
        if let Some(ca) = &self.config.ca_cert {
            b.ca_certs(vec![ca.display().to_string()]);
        }
        let settings = b
            .build()
            .map_err(|e| SinkError::invalid(format!("bad settings: {e}")))?;
        Ok(VaultClient {
            middle: vaultrs::api::EndpointMiddleware {
                token: settings.token.clone(),
                version: format!("v{}", settings.version),
                wrap: None,
                namespace: settings.namespace.clone(),
            },
            http: rustify::clients::reqwest::Client::new(settings.address.as_str(), self.http.clone()),
            settings,
        })
    }

    /// Logs in with the configured method; returns a client carrying the token.
    async fn login(&self) -> Result<VaultClient, SinkError> {
        let key = |f: &str| format!("sinks.{}.auth.{f}", self.name);
        let fail = |m: String| SinkError::invalid(format!("login failed: {m}"));
        let refused = |what: String, e: &ClientError| {
            let Described { code, text } = describe(e);
            error_of(code, format!("login failed: {what}: {text}"))
        };
        match &self.config.auth {
            VaultAuth::Token { token } => {
                let t = token.resolve(&key("token")).map_err(|e| fail(e.to_string()))?;
                self.base_client(t.expose())
            }
            VaultAuth::Approle {
                role_id,
                secret_id,
                mount,
            } => {
                let role = role_id.resolve(&key("role_id")).map_err(|e| fail(e.to_string()))?;
                let sid = secret_id.resolve(&key("secret_id")).map_err(|e| fail(e.to_string()))?;
                let mut c = self.base_client("")?;
                let auth = vaultrs::auth::approle::login(&c, mount, role.expose(), sid.expose())
                    .await
                    .map_err(|e| refused(format!("AppRole at auth/{mount}"), &e))?;
                let token = Secret::new(auth.client_token);
                c.set_token(token.expose());
                Ok(c)
            }
            VaultAuth::Kubernetes { role, jwt_path, mount } => {
                let jwt = SecretRef::File(jwt_path.clone())
                    .resolve(&key("jwt_path"))
                    .map_err(|e| fail(e.to_string()))?;
                let mut c = self.base_client("")?;
                let auth = vaultrs::auth::kubernetes::login(&c, mount, role, jwt.expose())
                    .await
                    .map_err(|e| refused(format!("Kubernetes role `{role}` at auth/{mount}"), &e))?;
                let token = Secret::new(auth.client_token);
                c.set_token(token.expose());
                Ok(c)
            }
        }
    }

    /// Writes the payload at `path` if the stored version is still `cas` (0: nothing).
    async fn set(&self, path: &str, payload: &Payload, cas: u32) -> Result<Version, SinkError> {
        let mount = self.config.mount.as_str();
        let json = payload.to_json()?;
        let data: serde_json::Value = serde_json::from_slice(&json).map_err(|e| SinkError::invalid(e.to_string()))?;
        let data = &data;
        let result = self
            .run(|c| async move {
                vaultrs::kv2::set_with_options(&*c, mount, path, data, SetSecretRequestOptions { cas }).await
            })
            .await;
        match result {
            Ok(m) => Ok(Version(m.version.to_string())),
            Err(Fail::Api(e)) if is_cas_conflict(&e) => Err(SinkError::conflict(format!(
                "{mount}/data/{path} is no longer at version {cas}"
            ))),
            Err(Fail::Api(e)) => Err(self.err("cannot write", path, &e)),
            Err(Fail::Login(e)) => Err(e),
        }
    }

    /// Bookkeeping for people browsing Vault, after a write (best effort:
    /// the payload is written already).
    async fn tag(&self, path: &str, payload: &Payload) {
        let mount = self.config.mount.as_str();
        let meta: HashMap<String, String> = [
            ("integration", payload.integration.clone()),
            ("rotation_id", payload.rotation_id.clone()),
            ("service_account_id", payload.service_account_id.to_string()),
            ("username", payload.username.clone()),
            ("expires", payload.expires.map(crate::text::rfc3339).unwrap_or_default()),
            ("managed_by", "mixpanel-rotator".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let meta = &meta;
        let r = self
            .run(|c| async move {
                let endpoint = SetSecretMetadataRequest::builder()
                    .mount(mount)
                    .path(path)
                    .custom_metadata(meta.clone())
                    .build()
                    .map_err(|_| ClientError::InvalidUpdateParameter)?;
                vaultrs::api::exec_with_empty(&*c, endpoint).await
            })
            .await;
        if let Err(Fail::Api(e)) = &r {
            tracing::warn!(sink = %self.name, path, error = %describe(e).text, "Written, but could not set custom_metadata (needs update on the metadata path).");
        }
    }

    /// The client in use, logging in first if there is none yet.
    async fn logged_in(&self) -> Result<Arc<VaultClient>, SinkError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.login().await?);
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs `op` with a logged-in client; on 403 (token expired or revoked)
    /// logs in again and retries once.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, Fail>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let client = self.logged_in().await.map_err(Fail::Login)?;
        match op(client.clone()).await {
            Err(e) if describe(&e).code == Some(403) => {
                tracing::info!(sink = %self.name, "Vault answered 403; logging in again and retrying once.");
                let fresh = self.replace_client(&client).await.map_err(Fail::Login)?;
                op(fresh).await.map_err(Fail::Api)
            }
            other => other.map_err(Fail::Api),
        }
    }

    /// A client in place of `stale`, which Vault refused: the one another
    /// task logged in with meanwhile, else a fresh login.
    async fn replace_client(&self, stale: &Arc<VaultClient>) -> Result<Arc<VaultClient>, SinkError> {
        let mut guard = self.client.lock().await;
        match guard.as_ref() {
            Some(c) if !Arc::ptr_eq(c, stale) => Ok(c.clone()),
            _ => {
                let c = Arc::new(self.login().await?);
                *guard = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// The capabilities on `path` of the token in use (a login only if
    /// there is none yet), and that client.
    async fn caps_in_use(&self, path: &str) -> Result<(Arc<VaultClient>, Vec<String>), SinkError> {
        let client = self.logged_in().await?;
        let mut caps = self
            .capabilities(&client, &[path.to_string()])
            .await
            .map_err(|e| e.context("checking the token"))?;
        Ok((client, caps.remove(path).unwrap_or_default()))
    }

    /// The token's capabilities on `paths`. The first check on this sink
    /// logs in afresh (proving the login works, for `validate --online`);
    /// later ones, concurrent ones included, use the client in use, and log
    /// in again once if Vault answers 403: a check per integration must not
    /// mint a token each.
    async fn checked_capabilities(&self, paths: &[String]) -> Result<HashMap<String, Vec<String>>, SinkError> {
        use std::sync::atomic::Ordering;
        let (client, fresh) = {
            let mut guard = self.client.lock().await;
            match guard.as_ref() {
                Some(c) if self.login_checked.load(Ordering::SeqCst) => (c.clone(), false),
                _ => {
                    let c = Arc::new(self.login().await?);
                    *guard = Some(c.clone());
                    self.login_checked.store(true, Ordering::SeqCst);
                    (c, true)
                }
            }
        };
        match self.capabilities(&client, paths).await {
            // A token just logged in with is not logged in with again.
            Err(e) if e.kind == SinkErrorKind::Denied && !fresh => {
                let fresh = self.replace_client(&client).await?;
                self.capabilities(&fresh, paths).await
            }
            other => other,
        }
    }

    async fn capabilities(
        &self,
        client: &VaultClient,
        paths: &[String],
    ) -> Result<HashMap<String, Vec<String>>, SinkError> {
        let body = serde_json::json!({ "paths": paths });
        let (status, body) = self
            .sys(client, reqwest::Method::POST, "sys/capabilities-self", Some(&body))
            .await?;
        if !(200..300).contains(&status) {
            return Err(match status {
                403 => SinkError::denied(format!(
                    "HTTP 403: the token is invalid, expired or revoked; renew it or fix `sinks.{}.auth`",
                    self.name
                )),
                code => error_of(Some(code), format!("HTTP {code}")),
            });
        }
        let data = body.get("data").unwrap_or(&body);
        Ok(paths
            .iter()
            .map(|p| {
                let caps = data
                    .get(p)
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                (p.clone(), caps)
            })
            .collect())
    }

    /// The mount that serves `path` is the configured one, and KV version 2
    /// (`sys/internal/ui/mounts/{mount}/data/{path}`, which a token with
    /// rights on the path may read): a broad token passes the capability
    /// check on a mount that does not exist.
    async fn mount_check(&self, client: &VaultClient, path: &str) -> Result<(), SinkError> {
        let mount = self.config.mount.trim_matches('/');
        let key = format!("sinks.{}.mount", self.name);
        let (status, body) = self
            .sys(
                client,
                reqwest::Method::GET,
                &format!("sys/internal/ui/mounts/{mount}/data/{path}"),
                None,
            )
            .await?;
        match status {
            200..=299 => {}
            403 | 404 => {
                return Err(SinkError::not_found(format!(
                    "no mount `{mount}` serves {mount}/data/{path} (or the token may not use it): check `{key}` against `bao secrets list` / `vault secrets list`"
                )));
            }
            code => return Err(error_of(Some(code), format!("HTTP {code} from sys/internal/ui/mounts"))),
        }
        let data = body.get("data").unwrap_or(&body);
        let text = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let (kind, version, served) = (
            text(data.get("type")),
            text(data.get("options").and_then(|o| o.get("version"))),
            text(data.get("path")),
        );
        if served.trim_matches('/') != mount {
            return Err(SinkError::not_found(format!(
                "`{key}` is `{mount}`, but {mount}/data/{path} is served by mount `{}`: set `{key}` to it",
                served.trim_matches('/')
            )));
        }
        if kind != "kv" || version != "2" {
            return Err(SinkError::invalid(format!(
                "mount `{mount}` is of type `{kind}`{}, not KV version 2: the rotator needs a KV v2 mount (`bao secrets enable -version=2 -path={mount} kv`)",
                if version.is_empty() {
                    String::new()
                } else {
                    format!(" version {version}")
                }
            )));
        }
        Ok(())
    }

    /// A call to Vault's own API (`sys/...`, which `vaultrs` does not
    /// wrap): its status and its JSON (`null` when there is none).
    async fn sys(
        &self,
        client: &VaultClient,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), SinkError> {
        let url = format!("{}/v1/{path}", self.config.address.trim_end_matches('/'));
        let mut token = reqwest::header::HeaderValue::from_str(&client.settings().token)
            .map_err(|_| SinkError::invalid("the token is not a valid header value"))?;
        token.set_sensitive(true);
        let mut req = self.http.request(method, url).header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(ns) = &self.config.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        let resp = req.send().await.map_err(|e| SinkError::unavailable(no_answer(&e)))?;
        let status = resp.status().as_u16();
        let bytes = crate::bounded::read_body(resp, crate::bounded::DOCUMENT_MAX)
            .await
            .map_err(|e| match e {
                crate::bounded::BodyError::TooLarge { max } => {
                    SinkError::unavailable(format!("the answer is larger than {}", crate::bounded::size(max)))
                }
                crate::bounded::BodyError::Transport(e) => {
                    SinkError::unavailable(format!("cannot read the answer: {e}"))
                }
            })?;
        if !(200..300).contains(&status) {
            return Ok((status, serde_json::Value::Null));
        }
        let body =
            serde_json::from_slice(&bytes).map_err(|e| SinkError::unavailable(format!("unexpected answer: {e}")))?;
        Ok((status, body))
    }
}

/// A failed Vault operation.
enum Fail {
    Login(SinkError),
    Api(ClientError),
}

#[async_trait::async_trait]
impl Sink for VaultSink {
    fn describe(&self) -> String {
        format!(
            "vault sink `{}` ({}, mount `{}`)",
            self.name, self.config.address, self.config.mount
        )
    }

    async fn read_current(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError> {
        let mount = self.config.mount.as_str();
        let result = self
            .run(|c| async move {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(path)
                    .build()
                    .map_err(|_| ClientError::InvalidUpdateParameter)?;
                vaultrs::api::exec_with_result(&*c, endpoint).await
            })
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(Fail::Api(e)) if is_not_found(&e) => return Ok(None),
            Err(Fail::Api(e)) => return Err(self.err("cannot read", path, &e)),
            Err(Fail::Login(e)) => return Err(e),
        };
        let bytes =
            zeroize::Zeroizing::new(serde_json::to_vec(&resp.data).map_err(|e| SinkError::corrupt(e.to_string()))?);
        let payload =
            Payload::from_json(&bytes).map_err(|e| e.context(format!("{}/data/{path}", self.config.mount)))?;
        Ok(Some((payload, Version(resp.metadata.version.to_string()))))
    }

    async fn publish(&self, path: &str, payload: &Payload, expected: Option<&Version>) -> Result<Version, SinkError> {
        let cas: u32 = match expected {
            None => 0,
            Some(v) => {
                v.0.parse()
                    .map_err(|_| SinkError::invalid(format!("version `{v}` is not a KV version")))?
            }
        };
        crate::failpoint::point("publish_before_cas", &payload.integration).await;
        let version = self.set(path, payload, cas).await?;
        crate::failpoint::point("publish_after_cas", &payload.integration).await;
        self.tag(path, payload).await;
        Ok(version)
    }

    async fn overwrite(&self, path: &str, payload: &Payload) -> Result<Version, SinkError> {
        // With the current version as `cas`, so that a mount with
        // `cas_required` accepts it; a writer in between makes it fail, and
        // the next pass tries again.
        let mount = self.config.mount.as_str();
        let current = self
            .run(|c| async move { vaultrs::kv2::read_metadata(&*c, mount, path).await })
            .await;
        let cas = match current {
            Ok(m) => m.current_version.try_into().unwrap_or(u32::MAX),
            Err(Fail::Api(e)) if is_not_found(&e) => 0,
            Err(Fail::Api(e)) => return Err(self.err("cannot read the metadata of", path, &e)),
            Err(Fail::Login(e)) => return Err(e),
        };
        let version = self.set(path, payload, cas).await?;
        self.tag(path, payload).await;
        Ok(version)
    }

    async fn remove(&self, path: &str) -> Result<bool, SinkError> {
        if self.read_current(path).await?.is_none() {
            return Ok(false);
        }
        let mount = self.config.mount.as_str();
        // Every version and the metadata (needs `delete` on the metadata path).
        let r = self
            .run(|c| async move {
                let endpoint = DeleteSecretMetadataRequest::builder()
                    .mount(mount)
                    .path(path)
                    .build()
                    .map_err(|_| ClientError::InvalidUpdateParameter)?;
                vaultrs::api::exec_with_empty(&*c, endpoint).await
            })
            .await;
        match r {
            Ok(()) => Ok(true),
            Err(Fail::Api(e)) if describe(&e).code == Some(403) => Err(self.lacks_delete(path)),
            Err(Fail::Api(e)) => Err(self.err("cannot delete", path, &e)),
            Err(Fail::Login(e)) => Err(e),
        }
    }

    async fn removable(&self, path: &str) -> Result<String, SinkError> {
        let meta = format!("{}/metadata/{path}", self.config.mount);
        let (_, caps) = self.caps_in_use(&meta).await?;
        if grants(&caps, "delete") {
            Ok(format!("the token may delete {meta}"))
        } else {
            Err(self.lacks_delete(path))
        }
    }

    async fn writable(&self, path: &str) -> Result<(), SinkError> {
        let data_path = format!("{}/data/{path}", self.config.mount);
        // The client in use (a login only if there is none yet): one
        // capabilities call, not a login per rotation.
        let (client, caps) = self.caps_in_use(&data_path).await?;
        let missing: Vec<&str> = ["create", "update"].into_iter().filter(|c| !grants(&caps, c)).collect();
        if missing.is_empty() {
            // A broad token passes the capability check on any path: the
            // mount itself must exist before an account is created.
            return self.mount_check(&client, path).await;
        }
        Err(SinkError::denied(format!(
            "the token lacks {} on {data_path}: grant them in its Vault policy (README, \"vault\" sink)",
            missing.join(", ")
        )))
    }

    async fn healthcheck(&self, path: &str) -> Result<String, SinkError> {
        let data_path = format!("{}/data/{path}", self.config.mount);
        let meta_path = format!("{}/metadata/{path}", self.config.mount);
        let paths = [data_path.clone(), meta_path.clone()];
        let caps = self
            .checked_capabilities(&paths)
            .await
            .map_err(|e| e.context("checking the token"))?;
        let has = |p: &str, c: &str| caps.get(p).is_some_and(|v| grants(v, c));
        let missing: Vec<&str> = ["create", "update", "read"]
            .into_iter()
            .filter(|c| !has(&data_path, c))
            .collect();
        if !missing.is_empty() {
            return Err(SinkError::denied(format!(
                "the token lacks {} on {data_path}: grant them in its Vault policy (README, \"vault\" sink)",
                missing.join(", ")
            )));
        }
        let client = self.logged_in().await?;
        self.mount_check(&client, path).await?;
        let mut out = format!(
            "logged in; mount `{}` is KV version 2; create, update, read on {data_path}",
            self.config.mount.trim_matches('/')
        );
        if !has(&meta_path, "update") && !has(&meta_path, "create") {
            out.push_str(&format!(
                " (no update on {meta_path}: custom_metadata will not be written)"
            ));
        }
        Ok(out)
    }
}
