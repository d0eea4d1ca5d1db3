//! The monitoring kit: config/prometheus/alerts.yaml passes `promtool check
//! rules` and its unit tests (`promtool test rules`: scripts/test.sh installs
//! promtool and sets MPR_TEST_PROMTOOL; without it these tests fail), every
//! metric an alert uses is one the rotator exports, and the PodMonitor
//! scrapes the rotator's port under the job name the alerts expect.

use std::path::PathBuf;
use std::process::Command;

use chrono::{TimeZone, Utc};
use mixpanel_rotator::metrics::Metrics;
use serde_json::Value;

fn config(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config").join(path)
}

fn promtool(args: &[&str]) -> String {
    let tool = std::env::var("MPR_TEST_PROMTOOL").unwrap_or_else(|_| {
        panic!("MPR_TEST_PROMTOOL is not set: run the tests with scripts/test.sh, which installs promtool")
    });
    let out = Command::new(tool)
        .args(args)
        .current_dir(config("prometheus"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The YAML documents of a file, as JSON (read with the venv's PyYAML).
fn yaml(path: &PathBuf) -> Vec<Value> {
    let python = std::env::var("MPR_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("MPR_TEST_PYTHON is not set: run the tests with scripts/test.sh"));
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_metric_an_alert_uses_is_exported() {
    let rules = yaml(&config("prometheus/alerts.yaml"));
    let exprs: Vec<String> = rules[0]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    // A daemon's registry with one mirrored integration that has rotated.
    let m = Metrics::new();
    m.integration("etl", true);
    let t = Utc.with_ymd_and_hms(2026, 12, 1, 4, 0, 0).unwrap();
    m.expiry("etl", t);
    m.next_rotation("etl", Some(t));
    m.mirror("etl", "pod", "etl.json", true, Some(true));
    m.clock_offset(Some(chrono::Duration::seconds(-1)));
    let exported = m.render();
    let mut used = 0;
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("mixpanel_rotator_") {
                used += 1;
                assert!(
                    exported.lines().any(|l| l.starts_with(word)),
                    "alert expression `{expr}` uses {word}, which the rotator does not export:\n{exported}"
                );
            }
        }
    }
    assert!(used >= 6, "the alerts use the rotator's metrics ({used})");
}

#[test]
fn the_pod_monitor_scrapes_the_rotator_under_the_alerts_job_name() {
    let pm = &yaml(&config("kubernetes/podmonitor.yaml"))[0];
    assert_eq!(pm["kind"], "PodMonitor");
    let deployment = yaml(&config("kubernetes/deployment.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let template = &deployment["spec"]["template"];
    assert_eq!(pm["metadata"]["namespace"], deployment["metadata"]["namespace"]);
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&template["metadata"]["labels"][k], v, "the selector matches the pods");
    }
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    let rotator = template["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mixpanel-rotator")
        .unwrap();
    assert!(
        rotator["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == endpoint["port"]),
        "the endpoint's port is the rotator's"
    );
    assert_eq!(endpoint["path"], "/metrics");
    let job = endpoint["relabelings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["targetLabel"] == "job")
        .unwrap()["replacement"]
        .as_str()
        .unwrap()
        .to_string();
    let alerts = std::fs::read_to_string(config("prometheus/alerts.yaml")).unwrap();
    assert!(
        alerts.contains(&format!("up{{job=\"{job}\"}}")),
        "the alerts expect job `{job}`"
    );
}
