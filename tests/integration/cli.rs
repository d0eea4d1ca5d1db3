//! The real binary, run as a subprocess against the in-process simulator:
//! exit codes, output, and no secret in anything it prints.

use std::path::Path;
use std::process::Output;

use mixpanel_rotator::simulator::Seed;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_mixpanel-rotator");

async fn run(h: &Harness, config: &Path, args: &[&str]) -> Output {
    h.run_bin(config, args, &[]).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn etl(h: &Harness) -> String {
    format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\nadopt = \"{}\"\n",
        h.accounts_with_prefix("etl-legacy")[0]
            .username
            .split('.')
            .next()
            .unwrap()
    )
}

#[tokio::test]
async fn validate_exit_codes_and_messages() {
    let h = Harness::realtime(Seed::Demo).await;
    let good = h.policy_file(&etl(&h));
    let o = run(&h, &good, &["validate"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("OK (1 integration(s)"), "{}", stdout(&o));

    let o = run(&h, &good, &["validate", "--online"]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("ok    mixpanel"), "{text}");
    assert!(text.contains("role `admin`"), "{text}");
    // The regions it will talk to: the home one at base_url, the EU one at its mapped URL.
    let eu = h.sim.region_url("eu.mixpanel.com").unwrap();
    assert!(
        text.contains(&format!(
            "ok    mixpanel regions: eu.mixpanel.com: 1 project(s), at {eu}; mixpanel.com: 3 project(s), at {}",
            h.sim.base_url()
        )),
        "{text}"
    );
    assert!(
        text.contains("nothing published yet; the first pass bootstraps it"),
        "{text}"
    );

    // A wrong secret: exit 1 and one clear line.
    std::fs::write(h.dir.path().join("admin.secret"), "wrong").unwrap();
    let o = run(&h, &good, &["validate", "--online"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAIL  mixpanel") && stdout(&o).contains("HTTP 401"),
        "{}",
        stdout(&o)
    );
    std::fs::write(h.dir.path().join("admin.secret"), h.sim.admin().secret.expose()).unwrap();

    // Bootstrap impossible: copy without adopt.
    let bad = h.policy_file("[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\n");
    let o = run(&h, &bad, &["validate", "--online"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("`integrations[0].adopt`"), "{}", stdout(&o));

    // An invalid policy: exit 2, the key named.
    let invalid = h.policy_file(&format!("{}ttl = \"1d\"\nrenew_before = \"2d\"\n", etl(&h)));
    let o = run(&h, &invalid, &["validate"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`integrations[0].ttl`"), "{}", stderr(&o));

    // A missing file: exit 2.
    let o = run(&h, Path::new("/nonexistent/policy.toml"), &["validate"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/policy.toml"));
    // Bad usage: exit 2.
    let o = run(&h, &good, &["rotate-now"]).await;
    assert_eq!(o.status.code(), Some(2));
    let o = run(&h, &good, &["rotate-now", "nope"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no integration `nope`"), "{}", stderr(&o));
    h.assert_no_secret_leaked(&[]);
}

#[tokio::test]
async fn plan_rotate_status_reconcile_through_the_binary() {
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(&etl(&h));

    h.sim.clear_requests();
    let o = run(&h, &cfg, &["plan"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("rotate (nothing published yet)"), "{}", stdout(&o));
    assert!(stdout(&o).contains("nothing was changed"));
    assert!(
        h.sim.requests().iter().all(|q| !q.is_mutating()),
        "plan made a mutating request"
    );
    assert!(h.payload("etl.json").is_none());

    // Debug logs in JSON: the most verbose output there is, still no secret.
    let o = run(
        &h,
        &cfg,
        &["--log-format", "json", "--log-level", "debug", "rotate-now", "etl"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("etl: rotated (nothing published yet)"),
        "{}",
        stdout(&o)
    );
    let log = stderr(&o);
    let first = log
        .lines()
        .find(|l| l.contains("Rotating."))
        .expect("a rotation log line");
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(v["span"]["integration"], "etl");
    assert!(v["span"]["rotation_id"].as_str().is_some());
    assert!(h.payload("etl.json").is_some());

    let o = run(&h, &cfg, &["status"]).await;
    assert_eq!(o.status.code(), Some(0));
    let table = stdout(&o);
    assert!(table.starts_with("INTEGRATION"), "{table}");
    assert!(table.contains("etl") && table.contains(" ok"), "{table}");

    let o = run(&h, &cfg, &["status", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["integrations"][0]["name"], "etl");
    let later = &v["integrations"][0]["actions"][0];
    assert_eq!(
        (later["kind"].as_str(), later["reason"].as_str()),
        (Some("delete"), Some("retiring"))
    );

    let o = run(&h, &cfg, &["reconcile"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("etl: up to date"), "{}", stdout(&o));

    // rotate-now --dry-run: the plan of that rotation, and no mutating call.
    let before = h.payload("etl.json").unwrap();
    h.sim.clear_requests();
    let o = run(&h, &cfg, &["rotate-now", "--dry-run", "--revoke-old", "etl"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("rotate (rotation requested)"), "{text}");
    let current = before["service_account_id"].as_u64().unwrap();
    assert!(
        text.contains(&format!("delete account {current} (")) && text.contains("as soon as the new one is published"),
        "--revoke-old shows in the plan: {text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    assert!(
        h.sim.requests().iter().all(|q| !q.is_mutating()),
        "--dry-run made a mutating request"
    );
    assert_eq!(h.payload("etl.json").unwrap()["rotation_id"], before["rotation_id"]);

    // A failing rotation: exit 1, the error names integration and step.
    h.sim.inject(mixpanel_rotator::simulator::Fault::always(
        "POST",
        "/organizations/1/service-accounts",
        mixpanel_rotator::simulator::FaultAction::Status(500),
    ));
    let o = run(&h, &cfg, &["rotate-now", "--all"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("integration `etl`: creating the new account failed"),
        "{}",
        stdout(&o)
    );
    h.assert_no_secret_leaked(&[]);
}

/// Offline `validate` (the unit's `ExecStartPre`) reads every secret the
/// policy refers to: a missing one fails now, naming its key, not at the
/// first rotation. Nothing of a secret is printed.
#[tokio::test]
async fn offline_validate_resolves_every_secret_reference() {
    let h = Harness::realtime(Seed::Demo).await;
    let good = h.policy(&etl(&h));
    let admin = h.dir.path().join("admin.secret");
    let admin_line = format!("secret = {{ file = \"{}\" }}", admin.display());
    assert!(good.contains(&admin_line));
    let empty = h.dir.path().join("empty.secret");
    std::fs::write(&empty, "\n").unwrap();
    let huge = h.dir.path().join("huge.secret");
    std::fs::write(&huge, "x".repeat(100 * 1024)).unwrap();
    let cases = [
        (
            "secret = { env = \"MPR_TEST_SURELY_UNSET_SECRET\" }".to_string(),
            "`mixpanel.secret`",
            "not set",
        ),
        (
            format!("secret = {{ file = \"{}\" }}", h.dir.path().join("missing").display()),
            "`mixpanel.secret`",
            "cannot be read",
        ),
        (
            format!("secret = {{ file = \"{}\" }}", empty.display()),
            "`mixpanel.secret`",
            "empty",
        ),
        (
            format!("secret = {{ file = \"{}\" }}", huge.display()),
            "`mixpanel.secret`",
            "larger than",
        ),
    ];
    for (line, key, why) in cases {
        let cfg = h.dir.path().join("secret-case.toml");
        std::fs::write(&cfg, good.replace(&admin_line, &line)).unwrap();
        let o = run(&h, &cfg, &["validate"]).await;
        assert_eq!(o.status.code(), Some(2), "{line}: {}{}", stdout(&o), stderr(&o));
        assert!(
            stderr(&o).contains(key) && stderr(&o).contains(why),
            "{line}: {}",
            stderr(&o)
        );
    }
    // A webhook URL is a secret too, named by its integration's key.
    let cfg = h.dir.path().join("webhook-case.toml");
    std::fs::write(
        &cfg,
        format!("{good}webhook = {{ url = {{ env = \"MPR_TEST_SURELY_UNSET_WEBHOOK\" }} }}\n"),
    )
    .unwrap();
    let o = run(&h, &cfg, &["validate"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("`integrations[0].webhook.url`"), "{}", stderr(&o));
    // All present: OK, and the count, never a value.
    let cfg = h.policy_file(&etl(&h));
    let o = run(&h, &cfg, &["validate"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("secrets: 1 reference(s) resolve"), "{}", stdout(&o));

    // --policy-only: a policy away from its secrets (a Kubernetes-auth Vault
    // sink outside a pod, a missing secret file) is checked, not its secrets.
    let away = h.dir.path().join("away.toml");
    std::fs::write(
        &away,
        format!(
            "{}[sinks.vault]\ntype = \"vault\"\naddress = \"https://vault.example:8200\"\nauth = {{ method = \"kubernetes\", role = \"rotator\", jwt_path = \"{}\" }}\n",
            good.replace(&admin_line, &format!("secret = {{ file = \"{}\" }}", h.dir.path().join("missing").display())),
            h.dir.path().join("no-pod-token").display()
        ),
    )
    .unwrap();
    let o = run(&h, &away, &["validate"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("jwt_path"), "{}", stderr(&o));
    let o = run(&h, &away, &["validate", "--policy-only"]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("secrets: not read (--policy-only)"),
        "{}",
        stdout(&o)
    );
    let o = run(&h, &away, &["validate", "--policy-only", "-o", "json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc = assert_schema(&stdout(&o));
    assert!(
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "secrets" && c["status"] == "warn"),
        "{doc}"
    );
    // A broken policy still fails; --policy-only and --online exclude each other.
    std::fs::write(&away, format!("{}\nnot toml", std::fs::read_to_string(&away).unwrap())).unwrap();
    assert_eq!(
        run(&h, &away, &["validate", "--policy-only"]).await.status.code(),
        Some(2)
    );
    let o = run(&h, &cfg, &["validate", "--policy-only", "--online"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    h.assert_no_secret_leaked(&[]);
}

/// `validate --online` fails on what would make the first rotation fail:
/// a project that does not exist (or that the rotator cannot see), an audit
/// file that cannot be written.
#[tokio::test]
async fn online_validate_names_unseen_projects_and_an_unwritable_audit_path() {
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 101, role = \"analyst\" }, { id = 999, role = \"analyst\" }]\n",
    );
    let o = run(&h, &cfg, &["validate", "--online"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(
        text.contains("FAIL  etl: projects") && text.contains("`integrations[0].projects`") && text.contains("999"),
        "{text}"
    );
    assert!(!text.contains("101,"), "only the unseen project is named: {text}");
    // Every project visible: that check passes.
    let cfg = h.policy_file(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 101, role = \"analyst\" }]\n",
    );
    let o = run(&h, &cfg, &["validate", "--online"]).await;
    assert!(
        stdout(&o).contains("ok    etl: projects: 1 project(s)"),
        "{}",
        stdout(&o)
    );

    // An audit file in a directory that does not exist and cannot be made.
    let text = h.policy(
        "[audit]\npath = \"/proc/no-such-dir/audit.jsonl\"\n[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 101, role = \"analyst\" }]\n",
    );
    let cfg = h.dir.path().join("audit-case.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = run(&h, &cfg, &["validate", "--online"]).await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("FAIL  audit /proc/no-such-dir/audit.jsonl"),
        "{}",
        stdout(&o)
    );
}

/// `-c` before or after the command; not offered where no policy is read;
/// a TOML syntax error shows where, with the line.
#[tokio::test]
async fn conventional_config_flag_and_located_syntax_errors() {
    let h = Harness::realtime(Seed::Demo).await;
    let good = h.policy_file(&etl(&h));
    for args in [
        vec!["-c", good.to_str().unwrap(), "validate"],
        vec!["validate", "-c", good.to_str().unwrap()],
        vec!["validate", "--config", good.to_str().unwrap()],
    ] {
        let o = tokio::process::Command::new(BIN).args(&args).output().await.unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    for args in [vec!["demo", "--config", "x"], vec!["--config", "x", "simulator"]] {
        let o = tokio::process::Command::new(BIN).args(&args).output().await.unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("--config"), "{args:?}: {}", stderr(&o));
    }
    // Completions and the manual page come from the binary itself.
    for shell in ["bash", "zsh", "fish"] {
        let o = bare(&["completions", shell]).await;
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(
            stdout(&o).contains("rotate-now") && stdout(&o).contains("dry-run"),
            "{shell}: {}",
            stdout(&o)
        );
    }
    let o = bare(&["man"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(".TH mixpanel-rotator 1"), "{}", stdout(&o));
    // One page per command with --dir, their paths on stdout.
    let man = h.dir.path().join("man1");
    std::fs::create_dir(&man).unwrap();
    let o = bare(&["man", "--dir", man.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for command in [
        "",
        "-run",
        "-validate",
        "-plan",
        "-rotate-now",
        "-reconcile",
        "-status",
        "-retire",
    ] {
        let page = man.join(format!("mixpanel-rotator{command}.1"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(text.contains(&format!(".TH mixpanel-rotator{command} 1")), "{text}");
        assert!(stdout(&o).contains(&page.display().to_string()), "{}", stdout(&o));
    }
    let rotate_now = std::fs::read_to_string(man.join("mixpanel-rotator-rotate-now.1")).unwrap();
    assert!(
        rotate_now.contains("revoke\\-old"),
        "the command's own options: {rotate_now}"
    );
    // A directory that cannot be made (below a file): said, with what to do.
    let o = bare(&["man", "--dir", "/dev/null/man1"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot create /dev/null/man1 (`--dir`)") && stderr(&o).contains("name a directory"),
        "{}",
        stderr(&o)
    );
    let o = bare(&["--version"]).await;
    assert!(stdout(&o).contains("(commit "), "{}", stdout(&o));
    let broken = h.dir.path().join("broken.toml");
    std::fs::write(&broken, "version = 1\n[mixpanel]\nbase_url = \"http://x\n").unwrap();
    let o = run(&h, &broken, &["validate"]).await;
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("not valid TOML (line 3, column"), "{err}");
    assert!(err.contains("3 | base_url = \"http://x"), "the offending line: {err}");
    assert!(err.contains("^"), "{err}");
    let typed = h.dir.path().join("typed.toml");
    std::fs::write(
        &typed,
        h.policy(&etl(&h))
            .replace("organization_id = 1", "organization_id = \"one\""),
    )
    .unwrap();
    let o = run(&h, &typed, &["validate"]).await;
    assert!(
        stderr(&o).contains("`mixpanel.organization_id`") && stderr(&o).contains("(line 5, column"),
        "{}",
        stderr(&o)
    );
}

/// `retire` shows what it will delete and changes nothing; with `--yes` no
/// account of the lineage, no adopted account and no payload (primary and
/// mirror) is left, and nothing else is touched. Removing an integration
/// from the policy alone deletes nothing.
#[tokio::test]
async fn retire_shows_then_removes_every_trace_of_an_integration() {
    let h = Harness::realtime(Seed::Demo).await;
    let legacy = h.accounts_with_prefix("etl-legacy")[0].id;
    let mirror = "mirrors = [{ sink = \"pod\", path = \"etl-copy.json\" }]\n";
    let pod = h.dir.path().join("pod");
    let sinks = format!("[sinks.pod]\ntype = \"file\"\ndir = \"{}\"\n", pod.display());
    let cfg = h.policy_file(&format!("{sinks}{}{mirror}", etl(&h)));
    let o = run(&h, &cfg, &["rotate-now", "etl"]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = run(&h, &cfg, &["rotate-now", "etl"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let lineage: Vec<u64> = h.accounts_with_prefix("mpr-etl-").iter().map(|a| a.id).collect();
    assert_eq!(lineage.len(), 2, "two rotations, the first kept for grace");
    assert!(pod.join("etl-copy.json").exists());
    let status = assert_schema(&stdout(&run(&h, &cfg, &["status", "-o", "json"]).await));
    let m = &status["integrations"][0]["mirrors"][0];
    assert_eq!(
        (m["sink"].as_str(), m["state"].as_str()),
        (Some("pod"), Some("in_sync")),
        "{status}"
    );
    let others: Vec<u64> = h
        .sim
        .accounts()
        .iter()
        .map(|a| a.id)
        .filter(|id| !lineage.contains(id) && *id != legacy)
        .collect();

    // Removing it from the policy and running a pass deletes nothing of it.
    let without = h.policy_file(
        "[[integrations]]\nname = \"ci\"\nsink = \"local\"\npath = \"ci.json\"\nprojects = [{ id = 101, role = \"consumer\" }]\n",
    );
    let o = run(&h, &without, &["reconcile"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    for id in lineage.iter().chain([&legacy]) {
        assert!(
            h.sim.account(*id).is_some(),
            "account {id} deleted by a policy without etl"
        );
    }
    let others: Vec<u64> = others
        .into_iter()
        .chain(h.accounts_with_prefix("mpr-ci-").iter().map(|a| a.id))
        .collect();

    // Without --yes: the list, and nothing changed.
    h.sim.clear_requests();
    let o = run(&h, &cfg, &["retire", "etl"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for id in lineage.iter().chain([&legacy]) {
        assert!(text.contains(&format!("delete account {id} (")), "{id}: {text}");
    }
    assert!(
        text.contains("remove the payload at sink `local` path `etl.json`"),
        "{text}"
    );
    assert!(
        text.contains("remove the mirror's payload at sink `pod` path `etl-copy.json`"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    assert!(h.sim.requests().iter().all(|q| !q.is_mutating()));
    assert!(h.payload("etl.json").is_some());

    // With --yes: every trace gone, audited; nothing else touched.
    let o = run(&h, &cfg, &["retire", "etl", "--yes"]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("retired: now remove `etl` from the policy"),
        "{}",
        stdout(&o)
    );
    assert!(h.accounts_with_prefix("mpr-etl-").is_empty());
    assert!(h.sim.account(legacy).is_none());
    assert!(h.payload("etl.json").is_none());
    assert!(!pod.join("etl-copy.json").exists());
    for id in &others {
        assert!(h.sim.account(*id).is_some(), "account {id} is not etl's and must stay");
    }
    let log = stderr(&o);
    assert!(
        log.contains("action=\"delete\"") && log.contains("reason=\"retired\""),
        "{log}"
    );
    assert!(log.contains("action=\"remove\""), "{log}");
    // Again: nothing left to do.
    let o = run(&h, &cfg, &["retire", "etl", "--yes"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("no account and no payload left"), "{}", stdout(&o));
    h.assert_no_secret_leaked(&[]);
}

/// The binary with `args` alone (no policy, no environment changes).
async fn bare(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN).args(args).output().await.unwrap()
}

/// Checks `doc` against docs/output.schema.json with the venv's jsonschema.
pub fn assert_schema(doc: &str) -> serde_json::Value {
    use std::io::Write as _;
    let python = std::env::var("MPR_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("MPR_TEST_PYTHON is not set: run the tests with scripts/test.sh"));
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/output.schema.json");
    let mut child = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, jsonschema; jsonschema.validate(json.load(sys.stdin), json.load(open(sys.argv[1])))",
        ])
        .arg(schema)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(doc.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{doc}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(doc).unwrap()
}

/// Every `-o json` output follows docs/output.schema.json, and what `plan`
/// (or `rotate-now --dry-run`) names is exactly what `rotate-now` then
/// creates and deletes.
#[tokio::test]
async fn json_output_follows_its_schema_and_the_plan_names_what_is_done() {
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(&etl(&h));
    let ids = |doc: &serde_json::Value, kind: &str, done: bool| -> Vec<u64> {
        let mut v: Vec<u64> = doc["integrations"][0]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == kind && a["done"] == done)
            .filter_map(|a| a["account_id"].as_u64())
            .collect();
        v.sort_unstable();
        v
    };
    // Bootstrap: the plan's create, then the one rotate-now makes.
    let plan = assert_schema(&stdout(&run(&h, &cfg, &["plan", "-o", "json"]).await));
    assert_eq!(plan["command"], "plan");
    assert_eq!(plan["integrations"][0]["state"], "due");
    let create = &plan["integrations"][0]["actions"][0];
    assert_eq!(
        (create["kind"].as_str(), create["done"].as_bool()),
        (Some("create"), Some(false))
    );
    let pattern = create["username_pattern"].as_str().unwrap().to_string();
    let prefix = pattern.split("<timestamp>").next().unwrap().to_string();
    let done = assert_schema(&stdout(&run(&h, &cfg, &["rotate-now", "etl", "-o", "json"]).await));
    assert_eq!(done["integrations"][0]["state"], "rotated");
    let made = &done["integrations"][0]["actions"][0];
    assert_eq!(
        (made["kind"].as_str(), made["done"].as_bool()),
        (Some("create"), Some(true))
    );
    assert!(
        made["username"].as_str().unwrap().starts_with(&prefix),
        "{made} vs {pattern}"
    );
    assert_eq!(
        ids(&plan, "delete", false),
        ids(&done, "delete", true),
        "no deletion planned, none done"
    );

    // --revoke-old: the dry run names the accounts; the real run deletes exactly those.
    let dry = assert_schema(&stdout(
        &run(
            &h,
            &cfg,
            &["rotate-now", "etl", "--revoke-old", "--dry-run", "-o", "json"],
        )
        .await,
    ));
    let planned = ids(&dry, "delete", false);
    assert!(!planned.is_empty(), "{dry}");
    let o = run(&h, &cfg, &["rotate-now", "etl", "--revoke-old", "-o", "json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = assert_schema(&stdout(&o));
    assert_eq!(ids(&done, "delete", true), planned, "{done}");
    for id in &planned {
        assert!(h.sim.account(*id).is_none());
    }

    // validate, offline and online; a failing check in the document.
    for args in [
        vec!["validate", "-o", "json"],
        vec!["validate", "--online", "-o", "json"],
    ] {
        let o = run(&h, &cfg, &args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}{}", stdout(&o), stderr(&o));
        let doc = assert_schema(&stdout(&o));
        assert_eq!(
            (doc["command"].as_str(), doc["ok"].as_bool()),
            (Some("validate"), Some(true)),
            "{doc}"
        );
        let checks = doc["checks"].as_array().unwrap();
        assert!(
            checks.iter().any(|c| c["name"] == "secrets" && c["status"] == "ok"),
            "{doc}"
        );
    }
    let unseen = h.policy_file(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 999, role = \"analyst\" }]\n",
    );
    let o = run(&h, &unseen, &["validate", "--online", "-o", "json"]).await;
    assert_eq!(o.status.code(), Some(1));
    let doc = assert_schema(&stdout(&o));
    assert_eq!(doc["ok"], false);
    assert!(
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "fail" && c["name"] == "etl: projects"),
        "{doc}"
    );

    // status and reconcile, and the old `status --json` spelling.
    for args in [
        vec!["status", "-o", "json"],
        vec!["status", "--json"],
        vec!["reconcile", "-o", "json"],
    ] {
        let doc = assert_schema(&stdout(&run(&h, &cfg, &args).await));
        assert_eq!(doc["integrations"][0]["current"]["exists"], true, "{args:?}: {doc}");
        assert_eq!(doc["ok"], true, "{args:?}: {doc}");
    }

    // A failure carries its stable code beside the human message.
    h.sim.inject(mixpanel_rotator::simulator::Fault::always(
        "GET",
        "/organizations/1/service-accounts",
        mixpanel_rotator::simulator::FaultAction::Status(401),
    ));
    let o = run(&h, &cfg, &["status", "-o", "json"]).await;
    assert_eq!(o.status.code(), Some(1));
    let doc = assert_schema(&stdout(&o));
    let e = &doc["integrations"][0]["errors"][0];
    assert_eq!(e["code"], "list_accounts.mixpanel.unauthorized", "{doc}");
    assert_eq!(e["step"], "listing service accounts", "{doc}");
    assert!(e["message"].as_str().unwrap().contains("HTTP 401"), "{doc}");
    h.assert_no_secret_leaked(&[]);
}

/// docs/output.schema.json lists exactly the parts an error code is made
/// of (the steps, the Mixpanel and sink kinds, what blocks, the rotator's
/// own causes): a new one cannot be added in the code and forgotten there.
#[test]
fn the_schema_lists_every_part_of_every_error_code() {
    use mixpanel_rotator::mixpanel::MixpanelError;
    use mixpanel_rotator::rotation::{Blocked, Cause, Step};
    use mixpanel_rotator::sink::SinkErrorKind;
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/output.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let parts = &schema["$defs"]["error_code"]["x-parts"];
    let listed = |key: &str| -> Vec<String> {
        parts[key]
            .as_array()
            .unwrap_or_else(|| panic!("x-parts.{key}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(listed("step"), own(&Step::ALL.map(Step::code)));
    assert_eq!(listed("mixpanel"), own(&MixpanelError::CODES));
    assert_eq!(listed("sink"), own(&SinkErrorKind::ALL.map(SinkErrorKind::code)));
    assert_eq!(listed("blocked"), own(&Blocked::CODES));
    assert_eq!(listed("own"), own(&Cause::OWN_CODES));
    // The pattern is made of the same lists.
    let alt = |v: Vec<String>| v.join("|");
    let pattern = format!(
        "^({})\\.(mixpanel\\.({})|sink\\.({})|blocked\\.({})|({}))$",
        alt(listed("step")),
        alt(listed("mixpanel")),
        alt(listed("sink")),
        alt(listed("blocked")),
        alt(listed("own"))
    );
    assert_eq!(schema["$defs"]["error_code"]["pattern"], pattern.as_str());
}

/// A warning is printed once: in the report on stdout, not again in the log
/// on stderr (the daemon, which prints no report, logs it).
#[tokio::test]
async fn a_warning_is_printed_once() {
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(&etl(&h));
    let o = run(&h, &cfg, &["rotate-now", "etl"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let needle = "a grant that cannot be copied";
    assert_eq!(stdout(&o).matches(needle).count(), 1, "{}", stdout(&o));
    assert!(!stderr(&o).contains(needle), "logged too: {}", stderr(&o));
}

/// `rotate-now` into a file sink that cannot be written (sysfs: not even
/// root creates a file there) stops before create: no mutating request.
#[tokio::test]
async fn rotate_now_into_an_unwritable_file_sink_makes_no_mutating_call() {
    let h = Harness::realtime(Seed::Demo).await;
    let text = h
        .policy("[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 101, role = \"consumer\" }]\n")
        .replace(&format!("dir = \"{}\"", h.creds_dir().display()), "dir = \"/sys/kernel/mm\"");
    assert!(text.contains("/sys/kernel/mm"));
    let cfg = h.dir.path().join("unwritable.toml");
    std::fs::write(&cfg, text).unwrap();
    h.sim.clear_requests();
    let o = run(&h, &cfg, &["rotate-now", "etl"]).await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("checking the sink failed") && out.contains("nothing was created"),
        "{out}"
    );
    let mutating: Vec<_> = h.sim.requests().into_iter().filter(|q| q.is_mutating()).collect();
    assert!(mutating.is_empty(), "{mutating:?}");
}

/// The rotator never rotates its own account: `validate --online` says when
/// it expires, and warns a month ahead.
#[tokio::test]
async fn online_validate_warns_when_the_rotators_own_account_expires_soon() {
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(&etl(&h));
    let o = run(&h, &cfg, &["validate", "--online"]).await;
    assert!(
        stdout(&o).contains("ok    the rotator's own account: ") && stdout(&o).contains("does not expire"),
        "{}",
        stdout(&o)
    );
    let soon = h.clock_now() + chrono::Duration::days(10);
    let (_, creds) = h.sim.add_account(
        "rotator-2",
        mixpanel_rotator::mixpanel::types::Role::Admin,
        Some(soon),
        &[(
            101,
            mixpanel_rotator::mixpanel::ProjectRole::Admin,
            mixpanel_rotator::mixpanel::TargetType::Individual,
        )],
    );
    let secret = h.dir.path().join("rotator-2.secret");
    std::fs::write(&secret, creds.secret.expose()).unwrap();
    let text = h
        .policy(&etl(&h))
        .replace(&h.sim.admin().username, &creds.username)
        .replace(
            &h.dir.path().join("admin.secret").display().to_string(),
            &secret.display().to_string(),
        );
    let cfg = h.dir.path().join("rotator-2.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = run(&h, &cfg, &["validate", "--online"]).await;
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "WARN  the rotator's own account: `{}` expires at",
            creds.username
        )) && out.contains("create its replacement now"),
        "{out}"
    );
    h.assert_no_secret_leaked(&[]);
}

#[tokio::test]
async fn config_path_from_environment() {
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(&etl(&h));
    let o = tokio::process::Command::new(BIN)
        .arg("validate")
        .env("MIXPANEL_ROTATOR_CONFIG", &cfg)
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(&cfg.display().to_string()));
}

/// Under journald (`$JOURNAL_STREAM` names stderr), lines carry a `<N>`
/// priority and no timestamp of their own; elsewhere they keep both.
#[tokio::test]
async fn logs_fit_journald_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt as _;
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(&etl(&h));
    // Not blocking: the simulator answers on this test's runtime.
    let run_with = async |journal: Option<String>| {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["--config", cfg.to_str().unwrap(), "--log-level", "debug", "plan"])
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap());
        let meta = std::fs::metadata(log.path()).unwrap();
        match journal {
            Some(v) => cmd.env("JOURNAL_STREAM", v),
            None => cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
        };
        let status = cmd.status().await.unwrap();
        (status, std::fs::read_to_string(log.path()).unwrap())
    };
    let (status, journal) = run_with(None).await;
    assert!(status.success(), "{journal}");
    let lines: Vec<&str> = journal.lines().filter(|l| l.starts_with('<')).collect();
    assert!(!lines.is_empty(), "no journald line: {journal}");
    for l in &lines {
        let prio = &l[..3];
        assert!(["<3>", "<4>", "<6>", "<7>"].contains(&prio), "{l}");
        assert!(!l.contains(" INFO ") && !l.contains(" DEBUG "), "level word kept: {l}");
        assert!(!l[3..].starts_with("20"), "own timestamp kept: {l}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("<7>")),
        "debug lines are priority 7: {journal}"
    );
    // A JOURNAL_STREAM that is not stderr (inherited, then redirected): the usual lines.
    let (_, plain) = run_with(Some("1:1".into())).await;
    assert!(!plain.lines().any(|l| l.starts_with('<')), "{plain}");
    assert!(
        plain.lines().any(|l| l.starts_with("20") && l.contains("DEBUG")),
        "{plain}"
    );
}

#[tokio::test]
async fn demo_runs_end_to_end() {
    let o = tokio::process::Command::new(BIN)
        .args(["demo", "--grace", "1s"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("SIMULATOR"));
    assert!(out.contains("\"secret\": \"**REDACTED**\""), "{out}");
    assert!(out.contains("The published credential authenticates"));
    assert!(out.contains("is deleted: no stray account is left behind"));
}

#[tokio::test]
async fn simulator_refuses_non_loopback() {
    let o = bare(&["simulator", "--listen", "0.0.0.0:0"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a loopback address"), "{}", stderr(&o));
}

#[tokio::test]
async fn simulator_subcommand_serves_a_policy_and_stops_on_sigint() {
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("sim.secret");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "simulator",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "demo",
            "--admin-secret-file",
        ])
        .arg(&secret)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while let Some(line) = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert!(printed.contains("SIMULATOR (not Mixpanel"), "{printed}");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!printed.contains(std::fs::read_to_string(&secret).unwrap().trim()));
    // The printed snippet is a working [mixpanel] section.
    let start = printed.find("[mixpanel]").unwrap();
    let end = printed[start..].find("\n\n").unwrap() + start;
    let adopt = printed
        .lines()
        .find(|l| l.starts_with("An account to adopt: "))
        .unwrap();
    let adopt = adopt
        .trim_start_matches("An account to adopt: ")
        .split('#')
        .next()
        .unwrap()
        .trim();
    let policy = format!(
        "version = 1\n{}\n[sinks.local]\ntype = \"file\"\ndir = \"{}\"\n[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\n{adopt}\n",
        &printed[start..end],
        dir.path().join("creds").display()
    );
    let cfg = dir.path().join("policy.toml");
    std::fs::write(&cfg, policy).unwrap();
    let o = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["rotate-now", "etl"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // SIGINT stops it and removes the secret file.
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!secret.exists());
}

#[tokio::test]
async fn unbounded_or_special_secret_files_are_refused_at_once() {
    let h = Harness::realtime(Seed::Demo).await;
    let secret = h.dir.path().join("admin.secret").display().to_string();
    let big = h.dir.path().join("big.secret");
    std::fs::write(&big, vec![b'x'; 100 * 1024]).unwrap();
    for (file, why) in [
        ("/dev/zero".to_string(), "not a regular file"),
        (big.display().to_string(), "larger than 64 KiB"),
    ] {
        let cfg = h.dir.path().join("hostile.toml");
        std::fs::write(&cfg, h.policy(&etl(&h)).replace(&secret, &file)).unwrap();
        let started = std::time::Instant::now();
        let o = run(&h, &cfg, &["rotate-now", "etl"]).await;
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("`mixpanel.secret`") && stderr(&o).contains(why),
            "{}",
            stderr(&o)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    // A policy file that never ends is refused too, not read into memory.
    let o = h.run_bin(Path::new("/dev/zero"), &["validate"], &[]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("larger than 4 MiB"), "{}", stderr(&o));
}

/// Issue 22, point 8: messages that stopped short now say what to do next.
#[tokio::test]
async fn first_week_messages_say_what_to_do_next() {
    let h = Harness::new(Seed::Demo).await;
    // No policy where it is looked for: how to name one.
    let missing = h.dir.path().join("nosuch/policy.toml");
    let o = tokio::process::Command::new(BIN)
        .arg("plan")
        .env("MIXPANEL_ROTATOR_CONFIG", &missing)
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("cannot read policy") && e.contains("--config PATH") && e.contains("MIXPANEL_ROTATOR_CONFIG"),
        "{e}"
    );
    // `man --dir` into a directory that does not exist yet: made.
    let mandir = h.dir.path().join("man/man1");
    let o = bare(&["man", "--dir", mandir.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(mandir.join("mixpanel-rotator.1").exists());
    // A cron field out of range says which and what the range is.
    let cfg = h.policy_file(&format!("{}schedule = \"0 25 * * *\"\n", etl(&h)));
    let o = run(&h, &cfg, &["validate", "--policy-only"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the hour field `25` has 25, out of range: hours are 0 to 23"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("Component error"));
    // The demo's warnings are in its story (stdout), not repeated as logs.
    let o = bare(&["demo"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("warning:"), "{}", stdout(&o));
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
    // The simulator's secret file goes when it is stopped, by SIGTERM too.
    let mut sim = tokio::process::Command::new(BIN)
        .args(["simulator", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sim.stdout.take().unwrap());
    let mut file = None;
    for _ in 0..40 {
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt as _;
        lines.read_line(&mut line).await.unwrap();
        if let Some(p) = line.trim().strip_prefix("secret = { file = \"") {
            file = Some(std::path::PathBuf::from(p.trim_end_matches("\" }")));
        }
        if line.starts_with("Ctrl-C stops it") {
            break;
        }
    }
    let file = file.expect("the simulator names its secret file");
    assert!(file.exists());
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &sim.id().unwrap().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sim.wait())
        .await
        .unwrap();
    assert!(!file.exists(), "{file:?} left behind");
}

/// Every file and directory below `dir`, with its mode.
fn tree(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path().display().to_string(), m.permissions().mode()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Issue 22, point 5: `validate --online` created the file sink's
/// directory and an empty audit file. Now it checks without writing.
#[tokio::test]
async fn validate_online_changes_nothing_on_disk() {
    let h = Harness::realtime(Seed::Demo).await;
    let audit = h.dir.path().join("audit/trail.jsonl");
    std::fs::create_dir(h.dir.path().join("audit")).unwrap();
    let cfg = h.policy_file(&format!("[audit]\npath = \"{}\"\n{}", audit.display(), etl(&h)));
    let before = tree(h.dir.path());
    let o = run(&h, &cfg, &["validate", "--online"]).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("does not exist yet; the first publish creates it in"),
        "{text}"
    );
    assert!(text.contains("does not exist yet; created 0600 in"), "{text}");
    assert_eq!(tree(h.dir.path()), before, "validate --online wrote something");
    assert!(!h.creds_dir().exists() && !audit.exists());
}

/// Issue 22, point 6: a credential file made world-readable only got a
/// log line ("rewritten at the next rotation", weeks away) and `status` and
/// `reconcile` said ok; with `mode = "0640"` the directory the rotator made
/// was 0700, so the group could never reach the file. Now the next pass
/// sets the mode back (a warning and a counter), and the directory is 0750.
#[tokio::test]
async fn a_credential_files_mode_is_set_back_and_the_group_can_reach_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Harness::realtime(Seed::Demo).await;
    let cfg = h.policy_file(&etl(&h));
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("dir = \"{}\"\n", h.creds_dir().display()),
        &format!("dir = \"{}\"\nmode = \"0640\"\n", h.creds_dir().display()),
    );
    std::fs::write(&cfg, text).unwrap();
    assert_eq!(run(&h, &cfg, &["reconcile"]).await.status.code(), Some(0));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&h.creds_dir()), 0o750, "the group reaches the file");
    let file = h.creds_dir().join("etl.json");
    assert_eq!(mode(&file), 0o640);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&h, &cfg, &["status"]).await;
    assert!(
        stdout(&o)
            .contains("the credential file's mode is 0644, not the sink's `mode` 0640: set back at the next pass"),
        "{}",
        stdout(&o)
    );
    assert_eq!(mode(&file), 0o644, "status changes nothing");
    let o = run(&h, &cfg, &["reconcile"]).await;
    assert!(
        format!("{}{}", stdout(&o), stderr(&o))
            .contains("the credential file's mode was 0644, not the sink's `mode` 0640: set back"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(mode(&file), 0o640);
}

/// Issue 22, point 7: a copy of a working policy with another sink
/// directory ("try a sink first") said `ok ... nothing published yet`, and
/// `plan` listed the first policy's live credential for deletion without a
/// word. Now both name it, and `validate --online` fails on it unless told
/// the accounts are this rotator's own leftovers.
#[tokio::test]
async fn a_second_policy_over_the_same_organization_names_the_first_ones_credential() {
    let h = Harness::realtime(Seed::Demo).await;
    let first = h.policy_file(&etl(&h));
    assert_eq!(run(&h, &first, &["reconcile"]).await.status.code(), Some(0));
    let live = h.payload("etl.json").unwrap()["service_account_id"].as_u64().unwrap();
    let trial = h.dir.path().join("trial");
    let second = h.policy_file(&format!(
        "[sinks.trial]\ntype = \"file\"\ndir = \"{}\"\n{}",
        trial.display(),
        etl(&h).replace("sink = \"local\"", "sink = \"trial\"")
    ));
    let o = run(&h, &second, &["validate", "--online"]).await;
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains(&format!("account {live} (")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("another rotator") && line.contains("`namespace`") && line.contains("--accept-unexplained"),
        "{line}"
    );
    let o = run(&h, &second, &["validate", "--online", "--accept-unexplained"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("account {live} (")));
    let o = run(&h, &second, &["plan"]).await;
    assert!(
        stdout(&o).contains(&format!("account {live} (")) && stdout(&o).contains("another rotator"),
        "{}",
        stdout(&o)
    );
    assert!(h.sim.account(live).is_some());
}
