//! The `aws-secrets-manager` sink, following AWS's own rotation protocol.
//!
//! - Read: `GetSecretValue` with `VersionStage = AWSCURRENT` (always explicit:
//!   moto answers with stale data without it; harmless on AWS). The version
//!   is the `VersionId`.
//! - Publish: `PutSecretValue` with `ClientRequestToken` = the rotation id and
//!   stage `AWSPENDING` (this moves the label off any leftover version of a
//!   crashed run), then `UpdateSecretVersionStage` moving `AWSCURRENT` to it
//!   with `RemoveFromVersionId` = the version read: that is the
//!   compare-and-swap, and a moved label is a [`super::contract::SinkErrorKind::Conflict`]. Then
//!   `AWSPENDING` is removed. AWS labels the old version `AWSPREVIOUS`.
//! - The secret is created on first publish (`CreateSecret`, optional KMS key
//!   and tags) if absent.
//! - Credentials: the standard AWS chain (environment, profile, web identity /
//!   IRSA, ECS, IMDS); `profile` picks a named profile.

#![warn(missing_docs)]

use std::collections::BTreeMap;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use serde::Deserialize;
use tokio::sync::OnceCell;

use std::sync::Arc;

use super::contract::{Backend, Payload, Sink, SinkError, Version};
use crate::values::{HumanDuration, Invalid, KeyError};

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
/// The version id (`ClientRequestToken`) of the placeholder that claims a
/// secret created empty beforehand; read as "nothing published".
const PLACEHOLDER: &str = "4d505200-0000-4000-8000-000000000000";
const PLACEHOLDER_BODY: &str = r#"{"mixpanel_rotator":"no credential published yet"}"#;

/// `[sinks.NAME] type = "aws-secrets-manager"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSinkConfig {
    /// AWS region, e.g. `us-east-1`.
    pub(crate) region: String,
    /// A named profile from the shared config files (default: the standard chain).
    pub(crate) profile: Option<String>,
    /// Another endpoint (tests, VPC endpoints); https, or http to loopback only.
    pub(crate) endpoint_url: Option<String>,
    /// KMS key for a secret the rotator creates (default: the account's `aws/secretsmanager` key).
    pub(crate) kms_key_id: Option<String>,
    /// Tags for a secret the rotator creates.
    #[serde(default)]
    pub(crate) tags: BTreeMap<String, String>,
    /// Timeout of one API call (default `30s`).
    pub(crate) timeout: Option<HumanDuration>,
}

impl Backend for AwsSinkConfig {
    fn check(&self) -> Result<(), KeyError> {
        let r = &self.region;
        if r.is_empty()
            || !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(KeyError::new(
                "region",
                format!("is `{r}`: write an AWS region such as \"us-east-1\""),
            ));
        }
        if let Some(u) = &self.endpoint_url {
            crate::values::check_url(u).map_err(|m| KeyError::new("endpoint_url", m))?;
        }
        Ok(())
    }

    /// The path is the secret's name.
    fn check_path(&self, path: &str) -> Result<(), Invalid> {
        let ok = !path.is_empty()
            && path.len() <= 512
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(Invalid(format!(
                "is `{path}`: use a secret name of letters, digits and /_+=.@- (at most 512 characters)"
            )))
        }
    }

    fn location(&self, path: &str) -> String {
        super::place::aws(
            &self.region,
            self.endpoint_url.as_deref(),
            self.profile.as_deref(),
            path,
        )
    }

    fn timeout(&self) -> Option<HumanDuration> {
        self.timeout
    }

    fn build(&self, name: &str) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(Arc::new(AwsSink::new(name, self.clone())))
    }
}

/// An AWS Secrets Manager sink.
pub(crate) struct AwsSink {
    name: String,
    config: AwsSinkConfig,
    client: OnceCell<Client>,
}

impl std::fmt::Debug for AwsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSink")
            .field("name", &self.name)
            .field("region", &self.config.region)
            .finish_non_exhaustive()
    }
}

/// The error code and message of an AWS call, never the request. An
/// unparsed 403 (an IAM denial answered in another format) counts as
/// `AccessDenied`; a call that got no answer says so.
/// The error code and message of a failed AWS call.
struct Parts {
    code: String,
    message: String,
}

/// The payload as the secret's string, in a buffer wiped on drop.
fn body(payload: &Payload) -> Result<zeroize::Zeroizing<String>, SinkError> {
    let json = payload.to_json()?;
    Ok(zeroize::Zeroizing::new(String::from_utf8(json.to_vec()).map_err(
        |e| SinkError::invalid(format!("payload is not UTF-8: {e}")),
    )?))
}

fn parts<E: ProvideErrorMetadata + std::error::Error + 'static>(e: &SdkError<E, HttpResponse>) -> Parts {
    let status = e.raw_response().map(|r| r.status().as_u16());
    if e.code().is_some() || status.is_some() {
        let (code, message) = match (e.code(), status) {
            (Some(code), _) => (
                code.to_string(),
                crate::text::server_text(e.message().unwrap_or("no message")),
            ),
            (None, Some(403)) => ("AccessDenied".into(), "HTTP 403".into()),
            (None, Some(s)) => ("HTTP".into(), format!("HTTP {s}")),
            (None, None) => ("HTTP".into(), String::new()),
        };
        return Parts { code, message };
    }
    // No answer: one line of what happened; the SDK's whole chain (a Rust
    // debug dump) only at debug level.
    tracing::debug!(error = %aws_sdk_secretsmanager::error::DisplayErrorContext(e), "AWS call failed without an answer.");
    let chain = crate::text::error_chain(e);
    let (code, message) = match e {
        _ if chain.contains("credential") => (
            "NoCredentials",
            "no AWS credentials found (environment, `profile` or AWS_PROFILE, IRSA, ECS, instance metadata): give the rotator an AWS identity".to_string(),
        ),
        SdkError::TimeoutError(_) => ("Timeout", "no answer within the sink's `timeout`".to_string()),
        SdkError::DispatchFailure(d) if d.is_timeout() => ("Timeout", "no answer within the sink's `timeout`".to_string()),
        SdkError::DispatchFailure(d) if d.is_io() => (
            "Unreachable",
            format!(
                "cannot reach Secrets Manager ({}): check `endpoint_url`, `region` and the network path",
                crate::text::server_text(last_cause(&chain))
            ),
        ),
        SdkError::ResponseError(_) => ("NoAnswer", "the answer could not be read".to_string()),
        _ => ("NoAnswer", crate::text::server_text(last_cause(&chain))),
    };
    Parts {
        code: code.to_string(),
        message,
    }
}

/// The innermost cause of a chain built by [`error_chain`].
fn last_cause(chain: &str) -> &str {
    chain.rsplit(": ").next().unwrap_or(chain)
}

impl AwsSink {
    /// An AWS sink called `name`.
    pub(crate) fn new(name: &str, config: AwsSinkConfig) -> Self {
        Self {
            name: name.into(),
            config,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let timeout = self
                    .config
                    .timeout
                    .map(|t| t.to_std())
                    .unwrap_or(std::time::Duration::from_secs(30));
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.config.region.clone()))
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(timeout)
                            .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
                            .build(),
                    );
                if let Some(p) = &self.config.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(u) = &self.config.endpoint_url {
                    loader = loader.endpoint_url(u);
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    fn fail(&self, what: &str, path: &str, code: &str, message: &str) -> SinkError {
        let detail = |hint: &str| match code {
            "NoCredentials" | "Unreachable" | "Timeout" | "NoAnswer" => {
                format!("{what} `{path}` failed: {message}{hint}")
            }
            _ => format!("{what} `{path}` failed: {code}: {message}{hint}"),
        };
        match code {
            "AccessDeniedException" | "AccessDenied" => SinkError::denied(detail(&format!(
                ": the rotator's AWS identity lacks secretsmanager:{what} on `{path}`; grant the IAM policy in the README (\"aws-secrets-manager\" sink)"
            ))),
            "UnrecognizedClientException" | "InvalidSignatureException" | "ExpiredTokenException" => {
                SinkError::denied(detail(
                    ": the AWS credentials were refused; check the credential chain (environment, `profile`, IRSA, instance role)",
                ))
            }
            "ResourceNotFoundException" => SinkError::not_found(detail("")),
            "NoCredentials" => SinkError::denied(detail("")),
            "ThrottlingException" | "TooManyRequestsException" => {
                SinkError::unavailable(detail(" (throttled by AWS: the next pass tries again)"))
            }
            "NoAnswer" | "Unreachable" | "Timeout" | "HTTP" | "InternalServiceError" | "ServiceUnavailable" => {
                SinkError::unavailable(detail(""))
            }
            _ => SinkError::invalid(detail("")),
        }
    }

    /// `GetSecretValue` found no `AWSCURRENT` value: nothing is published
    /// when the secret does not exist or has no version (created empty).
    /// A version staged `AWSCURRENT` whose value cannot be read is not
    /// "nothing": taking it for that would bootstrap over a credential in
    /// use, so it is an error (moto's `RotateSecret` without a Lambda leaves
    /// a secret that way).
    async fn no_current_value(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError> {
        let described = match self.client().await.describe_secret().secret_id(path).send().await {
            Ok(d) => d,
            Err(e) => {
                let Parts { code, message } = parts(&e);
                if code == "ResourceNotFoundException" {
                    return Ok(None);
                }
                return Err(self.fail("DescribeSecret", path, &code, &message));
            }
        };
        let current = described.version_ids_to_stages().and_then(|m| {
            m.iter()
                .find(|(v, stages)| v.as_str() != PLACEHOLDER && stages.iter().any(|s| s == CURRENT))
                .map(|(v, _)| v.clone())
        });
        match current {
            None => Ok(None),
            Some(v) => Err(SinkError::corrupt(format!(
                "`{path}` has version {v} staged AWSCURRENT, but GetSecretValue finds no value for it; nothing is rotated or deleted until AWSCURRENT can be read (was the secret rotated by Secrets Manager itself?)"
            ))),
        }
    }

    fn sdk_fail<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        what: &str,
        path: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> SinkError {
        let Parts { code, message } = parts(e);
        self.fail(what, path, &code, &message)
    }

    /// Removes `AWSPENDING` from `version` (best effort: a leftover label
    /// never blocks the next rotation, which moves it).
    async fn drop_pending(&self, path: &str, version: &str) {
        let r = self
            .client()
            .await
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(PENDING)
            .remove_from_version_id(version)
            .send()
            .await;
        if let Err(e) = r {
            let Parts { code, message } = parts(&e);
            tracing::warn!(sink = %self.name, path, code, message, "Could not remove AWSPENDING; the next rotation moves it.");
        }
    }

    /// First publish: create the secret, or fill one created empty (by Terraform, say).
    async fn create(&self, path: &str, payload: &Payload, body: &str) -> Result<Version, SinkError> {
        let client = self.client().await;
        let mut req = client
            .create_secret()
            .name(path)
            .client_request_token(&payload.rotation_id)
            .secret_string(body)
            .description(format!(
                "Mixpanel service-account credential of integration `{}`, managed by mixpanel-rotator",
                payload.integration
            ));
        if let Some(k) = &self.config.kms_key_id {
            req = req.kms_key_id(k);
        }
        for (k, v) in &self.config.tags {
            req = req.tags(aws_sdk_secretsmanager::types::Tag::builder().key(k).value(v).build());
        }
        match req.send().await {
            Ok(out) => return Ok(Version(out.version_id().unwrap_or(&payload.rotation_id).to_string())),
            Err(e) => {
                let Parts { code, message } = parts(&e);
                if code != "ResourceExistsException" {
                    return Err(self.fail("CreateSecret", path, &code, &message));
                }
            }
        }
        // It exists. If something is current, someone published first.
        let described = client
            .describe_secret()
            .secret_id(path)
            .send()
            .await
            .map_err(|e| self.sdk_fail("DescribeSecret", path, &e))?;
        let current = described.version_ids_to_stages().and_then(|m| {
            m.iter()
                .find(|(_, stages)| stages.iter().any(|s| s == CURRENT))
                .map(|(v, _)| v.clone())
        });
        match current.as_deref() {
            Some(PLACEHOLDER) => {}
            Some(_) => {
                return Err(SinkError::conflict(format!(
                    "`{path}` was published by someone else since it was read"
                )));
            }
            None => {
                // Created empty beforehand. Every rotator puts the same
                // placeholder with the same token: AWS keeps the first and
                // ignores the others, so all of them then race through the
                // compare-and-swap below, and exactly one wins.
                client
                    .put_secret_value()
                    .secret_id(path)
                    .client_request_token(PLACEHOLDER)
                    .secret_string(PLACEHOLDER_BODY)
                    .version_stages(CURRENT)
                    .send()
                    .await
                    .map_err(|e| self.sdk_fail("PutSecretValue", path, &e))?;
            }
        }
        self.swap(path, payload, body, &Version(PLACEHOLDER.into())).await
    }

    /// The compare-and-swap: the new version as AWSPENDING, then AWSCURRENT
    /// moved to it from the version read; a moved label is a conflict.
    async fn swap(&self, path: &str, payload: &Payload, body: &str, expected: &Version) -> Result<Version, SinkError> {
        let client = self.client().await;
        // 1. The new version, labelled AWSPENDING (moving the label off any leftover).
        let put = client
            .put_secret_value()
            .secret_id(path)
            .client_request_token(&payload.rotation_id)
            .secret_string(body)
            .version_stages(PENDING)
            .send()
            .await
            .map_err(|e| self.sdk_fail("PutSecretValue", path, &e))?;
        let new_version = put.version_id().unwrap_or(&payload.rotation_id).to_string();
        crate::failpoint::point("publish_before_cas", &payload.integration).await;
        // 2. The compare-and-swap: move AWSCURRENT from the version read to the new one.
        let moved = client
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(CURRENT)
            .move_to_version_id(&new_version)
            .remove_from_version_id(&expected.0)
            .send()
            .await;
        if let Err(e) = moved {
            let Parts { code, message } = parts(&e);
            self.drop_pending(path, &new_version).await;
            if code == "InvalidParameterException" || code == "InvalidRequestException" {
                // AWSCURRENT is no longer on the version read: someone else published.
                return Err(SinkError::conflict(format!(
                    "AWSCURRENT of `{path}` moved since version {expected} was read ({message})"
                )));
            }
            return Err(self.fail("UpdateSecretVersionStage", path, &code, &message));
        }
        crate::failpoint::point("publish_after_cas", &payload.integration).await;
        // 3. Tidy: the new version is current, no longer pending.
        self.drop_pending(path, &new_version).await;
        Ok(Version(new_version))
    }
}

#[async_trait::async_trait]
impl Sink for AwsSink {
    fn describe(&self) -> String {
        format!("aws-secrets-manager sink `{}` ({})", self.name, self.config.region)
    }

    async fn read_current(&self, path: &str) -> Result<Option<(Payload, Version)>, SinkError> {
        let out = match self
            .client()
            .await
            .get_secret_value()
            .secret_id(path)
            .version_stage(CURRENT)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                let Parts { code, message } = parts(&e);
                if code == "ResourceNotFoundException" {
                    return self.no_current_value(path).await;
                }
                return Err(self.fail("GetSecretValue", path, &code, &message));
            }
        };
        if out.version_id() == Some(PLACEHOLDER) {
            return Ok(None);
        }
        let Some(body) = out.secret_string() else {
            return Err(SinkError::corrupt(format!(
                "`{path}` holds a binary secret, not a mixpanel-rotator payload"
            )));
        };
        let payload = Payload::from_json(body.as_bytes()).map_err(|e| e.context(format!("`{path}`")))?;
        let version = out
            .version_id()
            .ok_or_else(|| SinkError::corrupt(format!("`{path}` has no version id")))?;
        Ok(Some((payload, Version(version.to_string()))))
    }

    async fn publish(&self, path: &str, payload: &Payload, expected: Option<&Version>) -> Result<Version, SinkError> {
        let body = body(payload)?;
        let Some(expected) = expected else {
            return self.create(path, payload, &body).await;
        };
        self.swap(path, payload, &body, expected).await
    }

    async fn remove(&self, path: &str) -> Result<bool, SinkError> {
        // With AWS's recovery window (7 days): restorable by a person.
        match self
            .client()
            .await
            .delete_secret()
            .secret_id(path)
            .recovery_window_in_days(7)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let Parts { code, message } = parts(&e);
                if code == "ResourceNotFoundException" {
                    return Ok(false);
                }
                Err(self.fail("DeleteSecret", path, &code, &message))
            }
        }
    }

    async fn overwrite(&self, path: &str, payload: &Payload) -> Result<Version, SinkError> {
        let body = body(payload)?;
        // A fresh token per write: a version with the same token and body
        // would be ignored by AWS, and AWSCURRENT left where it is.
        let token = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        let put = self
            .client()
            .await
            .put_secret_value()
            .secret_id(path)
            .client_request_token(&token)
            .secret_string(body.as_str())
            .send()
            .await;
        match put {
            Ok(out) => Ok(Version(out.version_id().unwrap_or(&token).to_string())),
            Err(e) => {
                let Parts { code, message } = parts(&e);
                if code == "ResourceNotFoundException" {
                    return self.create(path, payload, &body).await;
                }
                Err(self.fail("PutSecretValue", path, &code, &message))
            }
        }
    }

    async fn healthcheck(&self, path: &str) -> Result<String, SinkError> {
        match self.client().await.describe_secret().secret_id(path).send().await {
            Ok(d) => {
                let versions = d.version_ids_to_stages().map(|m| m.len()).unwrap_or(0);
                Ok(format!("secret `{path}` exists ({versions} version(s))"))
            }
            Err(e) => {
                let Parts { code, message } = parts(&e);
                if code == "ResourceNotFoundException" {
                    Ok(format!(
                        "secret `{path}` does not exist yet; the first rotation creates it (needs secretsmanager:CreateSecret)"
                    ))
                } else {
                    Err(self.fail("DescribeSecret", path, &code, &message))
                }
            }
        }
    }
}
