//! The `vault` sink against a real OpenBao dev server, started by
//! scripts/test.sh (MPR_TEST_BAO_ADDR, MPR_TEST_BAO_TOKEN_FILE). Without it
//! these tests fail: they never skip.

use std::path::PathBuf;

use chrono::Duration;
use mixpanel_rotator::simulator::Seed;
use serde_json::{Value, json};

use crate::common::*;

/// The OpenBao server of this test run, used with its root token for set-up.
pub struct Bao {
    pub addr: String,
    root: String,
    http: reqwest::Client,
}

impl Bao {
    pub fn from_env() -> Self {
        let addr = std::env::var("MPR_TEST_BAO_ADDR").unwrap_or_else(|_| {
            panic!("MPR_TEST_BAO_ADDR is not set: OpenBao is not running. Run the tests with scripts/test.sh, which starts it.")
        });
        let file = std::env::var("MPR_TEST_BAO_TOKEN_FILE").expect("MPR_TEST_BAO_TOKEN_FILE");
        let root = std::fs::read_to_string(file).unwrap().trim().to_string();
        Self {
            addr,
            root,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.root.clone(), method, path, body).await
    }

    /// The dev server's root token (a broad token, as some operators use).
    pub fn root_token(&self) -> String {
        self.root.clone()
    }

    pub async fn call_as(&self, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("OpenBao at {} is not reachable: {e}", self.addr));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A policy allowing the rotator what the README says it needs, under `prefix`.
    pub async fn rotator_policy(&self, name: &str, prefix: &str) {
        let hcl = format!(
            r#"path "secret/data/{prefix}/*" {{ capabilities = ["create", "update", "read"] }}
path "secret/metadata/{prefix}/*" {{ capabilities = ["create", "update", "read"] }}"#
        );
        self.acl_policy(name, &hcl).await;
    }

    /// Writes the ACL policy `name`.
    pub async fn acl_policy(&self, name: &str, hcl: &str) {
        let (st, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("sys/policies/acl/{name}"),
                Some(json!({"policy": hcl})),
            )
            .await;
        assert!(st < 300, "{st} {body}");
    }

    /// A token with `policies`.
    pub async fn token(&self, policies: &[&str]) -> String {
        let (st, body) = self
            .call(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({"policies": policies, "ttl": "1h"})),
            )
            .await;
        assert_eq!(st, 200, "{body}");
        body["auth"]["client_token"].as_str().unwrap().to_string()
    }

    pub async fn revoke(&self, token: &str) {
        let (st, body) = self
            .call(
                reqwest::Method::POST,
                "auth/token/revoke",
                Some(json!({"token": token})),
            )
            .await;
        assert!(st < 300, "{st} {body}");
    }

    /// The KV v2 secret at `path`: (data, version).
    pub async fn read(&self, path: &str) -> (Value, u64) {
        let (st, body) = self
            .call(reqwest::Method::GET, &format!("secret/data/{path}"), None)
            .await;
        assert_eq!(st, 200, "{body}");
        (
            body["data"]["data"].clone(),
            body["data"]["metadata"]["version"].as_u64().unwrap(),
        )
    }

    pub async fn metadata(&self, path: &str) -> Value {
        let (st, body) = self
            .call(reqwest::Method::GET, &format!("secret/metadata/{path}"), None)
            .await;
        assert_eq!(st, 200, "{body}");
        body["data"].clone()
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() as u32
}

fn write_secret(h: &Harness, name: &str, value: &str) -> PathBuf {
    let p = h.dir.path().join(name);
    std::fs::write(&p, value).unwrap();
    p
}

fn vault_sink(bao: &Bao, auth: &str) -> String {
    format!(
        "[sinks.vault]\ntype = \"vault\"\naddress = \"{}\"\nmount = \"secret\"\nauth = {auth}\n",
        bao.addr
    )
}

fn etl(h: &Harness, path: &str) -> String {
    format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"vault\"\npath = \"{path}\"\nrole = \"analyst\"\nadopt = {}\n",
        h.accounts_with_prefix("etl-legacy")[0].id
    )
}

/// A token-authenticated policy for a fresh KV prefix; returns (policy, kv path, token).
async fn token_setup(h: &Harness, bao: &Bao) -> (String, String, String) {
    let prefix = unique("t");
    bao.rotator_policy(&prefix, &prefix).await;
    let token = bao.token(&[&prefix]).await;
    let file = write_secret(h, "vault.token", &token);
    let path = format!("{prefix}/etl");
    let policy = format!(
        "{}\n{}",
        vault_sink(
            bao,
            &format!("{{ method = \"token\", token = {{ file = \"{}\" }} }}", file.display())
        ),
        etl(h, &path)
    );
    (policy, path, token)
}

/// A token that may read the path but not write it: `rotate-now` (and any
/// rotation) stops before create, so no account is created and deleted.
#[tokio::test]
async fn an_unwritable_sink_stops_a_rotation_before_any_mutating_call() {
    let h = Harness::new(Seed::Demo).await;
    let bao = Bao::from_env();
    let prefix = unique("ro");
    let hcl = format!(
        r#"path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}
path "secret/metadata/{prefix}/*" {{ capabilities = ["read"] }}"#
    );
    bao.acl_policy(&prefix, &hcl).await;
    let token = bao.token(&[&prefix]).await;
    let file = write_secret(&h, "vault-ro.token", &token);
    let policy = format!(
        "{}\n{}",
        vault_sink(
            &bao,
            &format!("{{ method = \"token\", token = {{ file = \"{}\" }} }}", file.display())
        ),
        etl(&h, &format!("{prefix}/etl"))
    );
    let engine = h.engine(&policy);
    h.sim.clear_requests();
    let r = h.force(&engine, "etl", false).await;
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.errors[0].step, mixpanel_rotator::rotation::Step::SinkCheck);
    let msg = r.errors[0].to_string();
    assert!(
        msg.contains("lacks create, update") && msg.contains("nothing was created"),
        "{msg}"
    );
    assert!(
        h.sim.requests().iter().all(|q| !q.is_mutating()),
        "no create, no delete: {:?}",
        h.sim.requests().iter().filter(|q| q.is_mutating()).collect::<Vec<_>>()
    );
    assert!(r.rotated.is_none());
}

/// `retire`'s removal from Vault: every version and the metadata go; the
/// rotator's usual policy (no `delete`) is refused with the missing right.
#[tokio::test]
async fn retire_removes_every_version_from_vault() {
    let h = Harness::new(Seed::Demo).await;
    let bao = Bao::from_env();
    let (policy, path, _) = token_setup(&h, &bao).await;
    let engine = h.engine(&policy);
    ok(&h.pass(&engine).await);
    let sink = engine.sink("vault").unwrap().clone();
    let refused = sink.remove(&path).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the token lacks `delete` on secret/metadata/"),
        "{refused}"
    );
    assert!(sink.read_current(&path).await.unwrap().is_some(), "nothing removed");
    // With `delete` on the metadata path (the root token here).
    let root = write_secret(
        &h,
        "root.token",
        &std::fs::read_to_string(std::env::var("MPR_TEST_BAO_TOKEN_FILE").unwrap()).unwrap(),
    );
    let root_policy = format!(
        "{}\n{}",
        vault_sink(
            &bao,
            &format!("{{ method = \"token\", token = {{ file = \"{}\" }} }}", root.display())
        ),
        etl(&h, &path)
    );
    let engine = h.engine(&root_policy);
    let sink = engine.sink("vault").unwrap().clone();
    assert!(sink.remove(&path).await.unwrap(), "removed");
    assert!(sink.read_current(&path).await.unwrap().is_none());
    let (st, _) = bao
        .call(reqwest::Method::GET, &format!("secret/metadata/{path}"), None)
        .await;
    assert_eq!(st, 404, "no version and no metadata left");
    assert!(!sink.remove(&path).await.unwrap(), "nothing left to remove");
}

#[tokio::test]
async fn full_rotation_into_vault_versions_and_metadata() {
    let h = Harness::new(Seed::Demo).await;
    let bao = Bao::from_env();
    let (policy, path, token) = token_setup(&h, &bao).await;
    let engine = h.engine(&policy);
    let r = h.pass(&engine).await;
    ok(&r);
    let first = r.rotated.clone().unwrap();
    let (data, version) = bao.read(&path).await;
    assert_eq!(version, 1);
    assert_eq!(data["service_account_id"], first.service_account_id);
    assert_eq!(data["username"], first.username);
    // The stored payload authenticates against the simulator.
    let consumer = h.client_for(&data);
    assert_eq!(consumer.me().await.unwrap().project_ids(1), vec![101, 102]);
    let meta = bao.metadata(&path).await;
    assert_eq!(meta["custom_metadata"]["integration"], "etl");
    assert_eq!(
        meta["custom_metadata"]["service_account_id"],
        first.service_account_id.to_string()
    );
    assert_eq!(meta["custom_metadata"]["rotation_id"], first.rotation_id);
    assert!(
        !meta.to_string().contains(data["secret"].as_str().unwrap()),
        "no secret in metadata"
    );

    h.clock.advance(Duration::hours(1));
    let r2 = h.force(&engine, "etl", false).await;
    ok(&r2);
    let second = r2.rotated.clone().unwrap();
    let (data, version) = bao.read(&path).await;
    assert_eq!(version, 2);
    assert_eq!(data["previous_service_account_id"], first.service_account_id);
    h.client_for(&data).me().await.unwrap();
    // Quiet pass: read, nothing written.
    let r3 = h.pass(&engine).await;
    ok(&r3);
    assert!(r3.rotated.is_none());
    assert_eq!(bao.read(&path).await.1, 2);
    assert_ne!(second.service_account_id, first.service_account_id);
    h.assert_no_secret_leaked_with(&[&r, &r2, &r3], &[&token]);
}

#[tokio::test]
async fn vault_cas_race_one_wins_loser_deletes_its_account() {
    let h = Harness::new(Seed::Demo).await;
    let bao = Bao::from_env();
    let (policy, path, token) = token_setup(&h, &bao).await;
    let a = h.engine(&policy);
    let b = h.engine(&policy);
    let r = h.pass(&a).await;
    ok(&r);
    let (winner, loser) = h.race(&a, &b).await;
    let (data, version) = bao.read(&path).await;
    assert_eq!(version, 2);
    assert_eq!(
        data["service_account_id"],
        winner.rotated.as_ref().unwrap().service_account_id
    );
    h.assert_no_secret_leaked_with(&[&winner, &loser], &[&token]);
}

#[tokio::test]
async fn approle_login() {
    let h = Harness::new(Seed::Demo).await;
    let bao = Bao::from_env();
    let mount = unique("approle");
    let (st, body) = bao
        .call(
            reqwest::Method::POST,
            &format!("sys/auth/{mount}"),
            Some(json!({"type": "approle"})),
        )
        .await;
    assert!(st < 300, "{st} {body}");
    let prefix = unique("a");
    bao.rotator_policy(&prefix, &prefix).await;
    let (st, body) = bao
        .call(
            reqwest::Method::POST,
            &format!("auth/{mount}/role/rotator"),
            // Three logins in all (below): the pass's, its write check's,
            // and the first check of a second process.
            Some(json!({"token_policies": [prefix], "token_ttl": "10m", "secret_id_num_uses": 3})),
        )
        .await;
    assert!(st < 300, "{st} {body}");
    let (_, body) = bao
        .call(
            reqwest::Method::GET,
            &format!("auth/{mount}/role/rotator/role-id"),
            None,
        )
        .await;
    let role_id = body["data"]["role_id"].as_str().unwrap().to_string();
    let (_, body) = bao
        .call(
            reqwest::Method::POST,
            &format!("auth/{mount}/role/rotator/secret-id"),
            None,
        )
        .await;
    let secret_id = body["data"]["secret_id"].as_str().unwrap().to_string();
    let rf = write_secret(&h, "role_id", &role_id);
    let sf = write_secret(&h, "secret_id", &secret_id);
    let path = format!("{prefix}/etl");
    let policy = format!(
        "{}\n{}",
        vault_sink(
            &bao,
            &format!(
                "{{ method = \"approle\", role_id = {{ file = \"{}\" }}, secret_id = {{ file = \"{}\" }}, mount = \"{mount}\" }}",
                rf.display(),
                sf.display()
            )
        ),
        etl(&h, &path)
    );
    let engine = h.engine(&policy);
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(bao.read(&path).await.1, 1);
    // Healthchecks (`status`, the write check before each rotation) use
    // the token in use: one per integration must not mint a token each.
    for _ in 0..5 {
        let check = engine.sink("vault").unwrap().healthcheck(&path).await;
        assert!(check.is_ok(), "{check:?}");
    }
    // Nor do the concurrent first checks of another process: one logs in.
    let other = h.engine(&policy);
    let sink = other.sink("vault").unwrap();
    let checks = futures_util::future::join_all((0..8).map(|_| sink.healthcheck(&path))).await;
    assert!(checks.iter().all(Result::is_ok), "{checks:?}");
    h.assert_no_secret_leaked_with(&[&r], &[&secret_id]);
}

#[tokio::test]
async fn token_revoked_then_replaced_in_its_file_logs_in_again() {
    let h = Harness::new(Seed::Demo).await;
    let bao = Bao::from_env();
    let (policy, path, token) = token_setup(&h, &bao).await;
    let engine = h.engine(&policy);
    let r = h.pass(&engine).await;
    ok(&r);
    // Vault Agent renews: the old token is revoked and a new one written to the file.
    bao.revoke(&token).await;
    let prefix = path.split('/').next().unwrap();
    let fresh = bao.token(&[prefix]).await;
    write_secret(&h, "vault.token", &fresh);
    h.clock.advance(Duration::hours(1));
    let r2 = h.force(&engine, "etl", false).await;
    ok(&r2);
    assert_eq!(bao.read(&path).await.1, 2);
    assert!(h.logs.text().contains("logging in again"), "re-login logged");
    // A revoked token with no replacement: a clear error, nothing half-done.
    bao.revoke(&fresh).await;
    h.clock.advance(Duration::hours(1));
    let r3 = h.force(&engine, "etl", false).await;
    assert!(!r3.errors.is_empty());
    assert!(r3.errors[0].message().contains("403"), "{}", r3.errors[0]);
    assert_eq!(bao.read(&path).await.1, 2);
    h.assert_no_secret_leaked_with(&[&r, &r2, &r3], &[&token, &fresh]);
}

#[tokio::test]
async fn validate_online_with_good_and_bad_vault_tokens() {
    let h = Harness::realtime(Seed::Demo).await;
    let bao = Bao::from_env();
    let (policy, _path, token) = token_setup(&h, &bao).await;
    let cfg = h.policy_file(&policy);
    let o = h.run_bin(&cfg, &["validate", "--online"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ok    etl: vault sink `vault`"), "{out}");
    bao.revoke(&token).await;
    let o = h.run_bin(&cfg, &["validate", "--online"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    let fail: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fail.iter()
            .any(|l| l.contains("vault sink `vault`") && l.contains("403") && l.contains("sinks.vault.auth")),
        "{out}"
    );
    h.assert_no_secret_leaked_with(&[], &[&token]);
}

/// Kubernetes auth needs a Kubernetes API (TokenReview) behind Vault, which
/// this machine does not have; so this checks the login request the sink
/// sends, against a recording endpoint, and that the token it gets back is
/// the one it then uses.
#[tokio::test]
async fn kubernetes_login_sends_the_pod_jwt_and_uses_the_returned_token() {
    use std::sync::{Arc, Mutex};
    /// (path, body, X-Vault-Token) of each request.
    type Seen = Arc<Mutex<Vec<(String, Value, Option<String>)>>>;
    let seen: Seen = Arc::default();
    let rec = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let rec = rec.clone();
        async move {
            let path = req.uri().path().to_string();
            let token = req.headers().get("x-vault-token").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            rec.lock().unwrap().push((path.clone(), body, token));
            let answer = if path.ends_with("/login") {
                json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false, "data": null, "warnings": null, "wrap_info": null,
                    "auth": {"client_token": "k8s-issued-token", "accessor": "a", "policies": [], "token_policies": [],
                    "metadata": null, "lease_duration": 600, "renewable": true, "entity_id": "e", "token_type": "service", "orphan": true}})
            } else if path.starts_with("/v1/sys/internal/ui/mounts/") {
                json!({"data": {"type": "kv", "options": {"version": "2"}, "path": "secret/"}})
            } else {
                json!({"data": {"secret/data/mixpanel/etl": ["create", "update", "read"], "secret/metadata/mixpanel/etl": ["update"]}})
            };
            axum::Json(answer)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("token");
    std::fs::write(&jwt, "eyJhbGciOiJSUzI1NiJ9.pod-jwt.sig\n").unwrap();
    let cfg: mixpanel_rotator::sink::SinkConfig = toml::from_str(&format!(
        "type = \"vault\"\naddress = \"http://{addr}\"\nauth = {{ method = \"kubernetes\", role = \"mixpanel-rotator\", jwt_path = \"{}\", mount = \"k8s-prod\" }}\n",
        jwt.display()
    ))
    .unwrap();
    let sink = mixpanel_rotator::sink::build("vault", &cfg).unwrap();
    let msg = sink.healthcheck("mixpanel/etl").await.unwrap();
    assert!(msg.contains("create, update, read"), "{msg}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, "/v1/auth/k8s-prod/login");
    assert_eq!(
        seen[0].1,
        json!({"role": "mixpanel-rotator", "jwt": "eyJhbGciOiJSUzI1NiJ9.pod-jwt.sig"})
    );
    assert_eq!(seen[1].0, "/v1/sys/capabilities-self");
    assert_eq!(seen[1].2.as_deref(), Some("k8s-issued-token"));
    assert_eq!(seen[2].0, "/v1/sys/internal/ui/mounts/secret/data/mixpanel/etl");
    assert_eq!(seen[2].2.as_deref(), Some("k8s-issued-token"));
}

#[tokio::test]
async fn the_binary_at_trace_level_never_logs_a_secret_and_status_checks_the_sink() {
    let h = Harness::realtime(Seed::Demo).await;
    let bao = Bao::from_env();
    let (policy, path, token) = token_setup(&h, &bao).await;
    let cfg = h.policy_file(&policy);
    // Nothing is published yet: reading the path is a 404, which vaultrs and
    // rustify log at ERROR; the default filter keeps that out of the way
    // (with RUST_LOG=info it shows).
    let o = h.run_bin(&cfg, &["plan"], &[]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("ERROR"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = h.run_bin(&cfg, &["plan"], &[("RUST_LOG", "info")]).await;
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ERROR"),
        "the filter is what hides them"
    );
    // Trace: the most verbose output there is, vaultrs, rustify, reqwest and hyper included.
    let o = h.run_bin(&cfg, &["rotate-now", "etl"], &[("RUST_LOG", "trace")]).await;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("TRACE") && err.contains("rustify"),
        "trace logs were produced"
    );
    assert_eq!(bao.read(&path).await.1, 1);
    let o = h.run_bin(&cfg, &["--log-level", "debug", "status"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    bao.revoke(&token).await;
    let o = h.run_bin(&cfg, &["status"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("error:") && out.contains("403"), "{out}");
    h.assert_no_secret_leaked_with(&[], &[&token]);
}

/// The README's Vault Agent template block, for the secret at `path`,
/// rendered into `destination`, its `exec` appending a line to `marker`.
fn readme_agent_template(path: &str, destination: &std::path::Path, marker: &std::path::Path) -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```hcl\ntemplate {")
        .expect("the README's Vault Agent template");
    let block = &readme[start + "```hcl\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    let mut out = block.to_string();
    for (from, to) in [
        ("secret/data/mixpanel/etl", format!("secret/data/{path}")),
        ("/run/etl/mixpanel.json", destination.display().to_string()),
        (
            r#"["systemctl", "reload", "etl.service"]"#,
            format!(r#"["/bin/sh", "-c", "echo reload >> {}"]"#, marker.display()),
        ),
    ] {
        assert!(
            out.contains(from),
            "the README's template no longer has {from}: {block}"
        );
        out = out.replace(from, &to);
    }
    out
}

/// The README's Vault Agent recipe, run by a real OpenBao Agent with a
/// consumer's read-only token: the first publish and each rotation after it
/// are rendered into the consumer's file (0600, exactly the published
/// payload), and its `exec` runs once per change, not on renders that
/// change nothing.
#[tokio::test]
async fn the_readme_vault_agent_template_renders_each_rotation_and_runs_its_exec() {
    let h = Harness::new(Seed::Demo).await;
    let bao = Bao::from_env();
    let agent = std::env::var("MPR_TEST_BAO").unwrap_or_else(|_| {
        panic!("MPR_TEST_BAO is not set: the `bao` binary (its agent) is needed. Run the tests with scripts/test.sh.")
    });
    let (policy, path, _) = token_setup(&h, &bao).await;
    let engine = h.engine(&policy);
    ok(&h.pass(&engine).await);

    let prefix = path.split('/').next().unwrap().to_string();
    let reader = format!("{prefix}-reader");
    let hcl = format!(r#"path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}"#);
    bao.acl_policy(&reader, &hcl).await;
    let token_file = write_secret(&h, "consumer.token", &bao.token(&[&reader]).await);
    let destination = h.dir.path().join("mixpanel.json");
    let marker = h.dir.path().join("reloads");
    let config = h.dir.path().join("agent.hcl");
    std::fs::write(
        &config,
        format!(
            "vault {{\n  address = \"{}\"\n}}\nauto_auth {{\n  method {{\n    type = \"token_file\"\n    config = {{ token_file_path = \"{}\" }}\n  }}\n}}\n\
             template_config {{\n  static_secret_render_interval = \"1s\"\n}}\n{}",
            bao.addr,
            token_file.display(),
            readme_agent_template(&path, &destination, &marker)
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(&agent)
        .args(["agent", "-config"])
        .arg(&config)
        .env_remove("BAO_TOKEN")
        .env_remove("VAULT_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(h.dir.path().join("agent.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Waits until the consumer's file holds what the primary publishes.
    let rendered = async |want: &Value| {
        for _ in 0..300 {
            if let Ok(text) = std::fs::read_to_string(&destination)
                && serde_json::from_str::<Value>(&text).ok().as_ref() == Some(want)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(h.dir.path().join("agent.log")).unwrap_or_default();
        panic!("the agent did not render the published payload in 30 s; its log:\n{log}");
    };
    let reloads = || std::fs::read_to_string(&marker).unwrap_or_default().lines().count();

    let (first, _) = bao.read(&path).await;
    rendered(&first).await;
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&destination).unwrap().permissions().mode() & 0o777,
        0o600
    );
    h.client_for(&first).me().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        reloads(),
        1,
        "one exec for the first render, none for renders that change nothing"
    );

    h.clock.advance(Duration::hours(1));
    let r = h.force(&engine, "etl", false).await;
    ok(&r);
    let (second, _) = bao.read(&path).await;
    assert_ne!(second["username"], first["username"]);
    rendered(&second).await;
    h.client_for(&second).me().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(reloads(), 2, "one exec per rotation");
    child.kill().await.unwrap();
}

/// Issue 22, point 4: with a broad (root) token, `mount = "kv"` where no
/// such mount exists passed `validate --online`, and `rotate-now` then
/// created an account, got 404 on publish and deleted it. Now the mount is
/// checked (it exists, serves the path, is KV version 2): `validate` fails
/// naming the key, and `rotate-now` stops before any create.
#[tokio::test]
async fn a_wrong_mount_with_a_root_token_fails_validate_and_creates_nothing() {
    let h = Harness::realtime(Seed::Demo).await;
    let bao = Bao::from_env();
    let root = write_secret(&h, "root.token", &bao.root_token());
    let sink = vault_sink(
        &bao,
        &format!("{{ method = \"token\", token = {{ file = \"{}\" }} }}", root.display()),
    )
    .replace("mount = \"secret\"", "mount = \"kv\"");
    let cfg = h.policy_file(&format!("{sink}\n{}", etl(&h, &unique("mixpanel/etl"))));
    let o = h.run_bin(&cfg, &["validate", "--online"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("no mount `kv` serves") && l.contains("sinks.vault.mount")),
        "{out}"
    );
    h.sim.clear_requests();
    let o = h.run_bin(&cfg, &["rotate-now", "etl"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(h.sim.requests().iter().all(|q| !q.is_mutating()), "no account created");
    // The right mount: the check says what it found.
    let good = h.policy_file(&format!(
        "{}\n{}",
        sink.replace("mount = \"kv\"", "mount = \"secret\""),
        etl(&h, &unique("mixpanel/etl"))
    ));
    let o = h.run_bin(&good, &["validate", "--online"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("mount `secret` is KV version 2"), "{out}");
    h.assert_no_secret_leaked_with(&[], &[&bao.root_token()]);
}

/// Issue 22, point 3 (Vault's side): a dead address said "Error sending
/// HTTP request". Now: what happened and what to check, in one line.
#[tokio::test]
async fn a_dead_vault_address_says_what_to_check_in_one_short_line() {
    let h = Harness::realtime(Seed::Demo).await;
    let token = write_secret(&h, "dead.token", "not-a-real-token");
    let sink = format!(
        "[sinks.vault]\ntype = \"vault\"\naddress = \"http://127.0.0.1:9\"\nmount = \"secret\"\nauth = {{ method = \"token\", token = {{ file = \"{}\" }} }}\n",
        token.display()
    );
    let cfg = h.policy_file(&format!("{sink}\n{}", etl(&h, "mixpanel/etl")));
    let o = h.run_bin(&cfg, &["validate", "--online"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let l = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("etl:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        l.contains("no answer from Vault (Connection refused") && l.contains("`address`"),
        "{l}"
    );
    assert!(l.chars().count() <= 300, "{} chars: {l}", l.chars().count());
}

/// Issue 22, point 2: with the README's least-privilege Vault policy (no
/// `delete` on metadata), `retire --yes` deleted the accounts, then failed
/// with a 403 naming the data path: the payload was left naming deleted
/// accounts. Now `retire` checks every place first (its dry run shows it),
/// and with a failed check changes nothing.
#[tokio::test]
async fn retire_with_a_token_lacking_delete_deletes_no_account() {
    let h = Harness::realtime(Seed::Demo).await;
    let bao = Bao::from_env();
    let (policy, path, token) = token_setup(&h, &bao).await;
    let cfg = h.policy_file(&policy);
    assert_eq!(h.run_bin(&cfg, &["reconcile"], &[]).await.status.code(), Some(0));
    let accounts = h.sim.accounts().len();
    let o = h.run_bin(&cfg, &["retire", "etl"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "check sink `vault` path `{path}`: FAILED, nothing will be changed"
        )) && out.contains(&format!("the token lacks `delete` on secret/metadata/{path}")),
        "{out}"
    );
    let o = h.run_bin(&cfg, &["retire", "etl", "--yes"], &[]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(h.sim.accounts().len(), accounts, "no account deleted");
    let (st, _) = bao
        .call(reqwest::Method::GET, &format!("secret/data/{path}"), None)
        .await;
    assert_eq!(st, 200, "the payload is still there");
    h.assert_no_secret_leaked_with(&[], &[&token]);
}
