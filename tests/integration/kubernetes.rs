//! The Kubernetes manifests in config/kubernetes: each passes the API
//! schemas (kubernetes-validate, strict, from PyPI: scripts/test.sh installs
//! it and sets MPR_TEST_KUBERNETES_VALIDATE; without it these tests fail),
//! its policy loads, and the properties the README promises hold: replicas
//! share a non-file primary and mirror it into their own pod, the rotator is
//! a native sidecar with a startup and a liveness probe and no readiness
//! probe, and only the rotator's container sees a token or a secret.

use std::path::PathBuf;
use std::process::Command;

use mixpanel_rotator::policy::Policy;
use mixpanel_rotator::sink::SinkConfig;
use mixpanel_rotator::sink::vault::VaultAuth;
use serde_json::Value;

fn tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test.sh, which installs kubernetes-validate")
    })
}

fn manifest(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/kubernetes")
        .join(name)
}

/// The documents of a manifest, as JSON (read with the venv's PyYAML).
fn documents(name: &str) -> Vec<Value> {
    let out = Command::new(tool("MPR_TEST_PYTHON"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(manifest(name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn validate(name: &str, version: &str) -> std::process::Output {
    Command::new(tool("MPR_TEST_KUBERNETES_VALIDATE"))
        .args(["--strict", "--quiet", "-k", version])
        .arg(manifest(name))
        .output()
        .unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn policy_of(docs: &[Value]) -> Policy {
    let text = kind(docs, "ConfigMap")["data"]["policy.toml"].as_str().unwrap();
    Policy::parse(text).unwrap_or_else(|e| panic!("the ConfigMap's policy: {e}"))
}

/// Containers (and init containers) mounting the volume `volume`, with the mount.
fn mounts<'a>(pod: &'a Value, volume: &str) -> Vec<(&'a str, &'a Value)> {
    let mut out = vec![];
    for list in ["initContainers", "containers"] {
        for c in pod[list].as_array().into_iter().flatten() {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                if m["name"] == volume {
                    out.push((c["name"].as_str().unwrap(), m));
                }
            }
        }
    }
    out
}

/// The volume of `pod` whose definition has `key` (`projected`, `secret`, `emptyDir`).
fn volume_with<'a>(pod: &'a Value, key: &str) -> &'a str {
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| !v[key].is_null())
        .and_then(|v| v["name"].as_str())
        .unwrap_or_else(|| panic!("no {key} volume"))
}

/// The Vault Kubernetes-auth JWT path of the policy's vault sink.
fn jwt_path(p: &Policy) -> PathBuf {
    match p.sinks.get("vault") {
        Some(SinkConfig::Vault(v)) => match &v.auth {
            VaultAuth::Kubernetes { jwt_path, .. } => jwt_path.clone(),
            other => panic!("vault auth {other:?}"),
        },
        other => panic!("sink `vault` is {other:?}"),
    }
}

/// Only `container` mounts the projected token and the rotator's secret, at
/// the path the policy reads the JWT from.
fn only_the_rotator_sees_credentials(pod: &Value, policy: &Policy, container: &str) {
    assert_eq!(pod["automountServiceAccountToken"], false);
    let token = volume_with(pod, "projected");
    let src = &pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == token)
        .unwrap()["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(src["audience"], "vault");
    let mounted = mounts(pod, token);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].0, container);
    let at = PathBuf::from(mounted[0].1["mountPath"].as_str().unwrap()).join(src["path"].as_str().unwrap());
    assert_eq!(at, jwt_path(policy));
    let secret = volume_with(pod, "secret");
    let mounted = mounts(pod, secret);
    assert_eq!(
        mounted.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![container],
        "the rotator's secret"
    );
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    let names: Vec<String> = std::fs::read_dir(manifest(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        // A Prometheus Operator resource, not in the API schemas: its test is
        // in monitoring.rs (it must select these pods and their port).
        .filter(|n| n != "podmonitor.yaml")
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // 1.29: the first release with native sidecars on by default; 1.37: the newest schemas.
    for name in &names {
        for version in ["1.29.0", "1.37.0"] {
            let out = validate(name, version);
            assert!(
                out.status.success(),
                "{name} against Kubernetes {version}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The check sees the sidecar: 1.27 had no `restartPolicy` on containers.
    let out = validate("deployment.yaml", "1.27.0");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("'restartPolicy' was unexpected"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_deployment_shares_a_vault_primary_and_mirrors_it_into_each_pod() {
    let docs = documents("deployment.yaml");
    let policy = policy_of(&docs);
    assert_eq!(kind(&docs, "ServiceAccount")["automountServiceAccountToken"], false);
    let deploy = kind(&docs, "Deployment");
    assert!(deploy["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &deploy["spec"]["template"]["spec"];

    // The rotator: a native sidecar, started first, probed for start and life only.
    let sidecars: Vec<&Value> = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["restartPolicy"] == "Always")
        .collect();
    assert_eq!(sidecars.len(), 1);
    let rotator = sidecars[0];
    let name = rotator["name"].as_str().unwrap();
    assert_eq!(rotator["args"][0], "run");
    assert_eq!(rotator["startupProbe"]["httpGet"]["path"], "/startupz");
    assert_eq!(rotator["livenessProbe"]["httpGet"]["path"], "/healthz");
    for c in pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["containers"].as_array().unwrap())
    {
        assert!(c["readinessProbe"].is_null(), "{}: no readiness probe", c["name"]);
    }
    let port = rotator["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(policy.listen.map(|a| u64::from(a.port())), Some(port));
    only_the_rotator_sees_credentials(pod, &policy, name);

    // Every integration's primary is shared (never a file sink); the app reads a mirror.
    for i in &policy.integrations {
        assert!(
            !matches!(policy.sinks.get(&i.sink), Some(SinkConfig::File(_))),
            "{}: a file primary in a Deployment is one primary per replica",
            i.name
        );
    }
    let own = policy.own().expect("the rotator rotates its own credential");
    assert!(
        matches!(policy.sinks.get(&own.sink), Some(SinkConfig::Vault(_))),
        "the own credential is shared by the replicas"
    );
    let etl = policy.integration("etl").unwrap();
    assert_eq!(etl.mirrors.len(), 1);
    let dir = match policy.sinks.get(&etl.mirrors[0].sink) {
        Some(SinkConfig::File(f)) => f.dir.clone(),
        other => panic!("the mirror's sink is {other:?}"),
    };
    let shared = volume_with(pod, "emptyDir");
    let mounted = mounts(pod, shared);
    assert_eq!(mounted.len(), 2, "{mounted:?}");
    for (container, m) in &mounted {
        assert_eq!(
            m["mountPath"].as_str().map(PathBuf::from),
            Some(dir.clone()),
            "{container}"
        );
        assert_eq!(
            m["readOnly"] == true,
            *container != name,
            "{container}: only the rotator writes"
        );
    }
    let app = &pod["containers"][0];
    assert_eq!(
        app["env"][0]["value"].as_str().map(PathBuf::from),
        Some(dir.join(&etl.mirrors[0].path))
    );
    assert!(
        app["volumeMounts"].as_array().unwrap().len() == 1,
        "the app mounts the mirror alone"
    );
}

#[test]
fn the_cronjob_runs_one_reconcile_at_a_time() {
    let docs = documents("cronjob.yaml");
    let policy = policy_of(&docs);
    assert_eq!(kind(&docs, "ServiceAccount")["automountServiceAccountToken"], false);
    let cron = &kind(&docs, "CronJob")["spec"];
    assert_eq!(cron["concurrencyPolicy"], "Forbid");
    assert_eq!(cron["jobTemplate"]["spec"]["parallelism"], 1);
    let pod = &cron["jobTemplate"]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0]["args"], serde_json::json!(["reconcile"]));
    only_the_rotator_sees_credentials(pod, &policy, containers[0]["name"].as_str().unwrap());
    assert!(policy.integrations.len() >= 2);
    for i in &policy.integrations {
        assert!(
            matches!(policy.sinks.get(&i.sink), Some(SinkConfig::Vault(_))),
            "{}",
            i.name
        );
    }
}
