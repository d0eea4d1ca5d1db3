//! Hooks (`on_rotate`, `webhook`) and the audit file, through the real binary.

use std::sync::{Arc, Mutex};

use mixpanel_rotator::simulator::{Fault, FaultAction, Seed};
use serde_json::Value;

use crate::common::*;

/// A webhook receiver: every JSON body POSTed to it.
pub async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook/T000/B000",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook/T000/B000", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn hooks_get_the_documented_environment_never_the_secret() {
    let h = Harness::realtime(Seed::Demo).await;
    let (url, got) = receiver().await;
    let url_file = h.dir.path().join("webhook.url");
    std::fs::write(&url_file, &url).unwrap();
    let dir = h.dir.path().display().to_string();
    let audit = h.dir.path().join("audit.jsonl");
    let cfg = h.dir.path().join("hooks.toml");
    // The rotator's own secret comes from its environment here: the hook must not inherit it.
    let text = h
        .policy(&format!(
            "[audit]\npath = \"{}\"\n\
             [[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nadopt = {}\n\
             on_rotate = [\"/bin/sh\", \"-c\", \"env > {dir}/hook.env; printf '%s\\\\n' \\\"$@\\\" > {dir}/hook.args\", \"hook\", \"--flag\"]\n\
             webhook = {{ url = {{ file = \"{}\" }} }}\n",
            audit.display(),
            h.accounts_with_prefix("etl-legacy")[0].id,
            url_file.display()
        ))
        .replace(
            &format!("secret = {{ file = \"{}\" }}", h.dir.path().join("admin.secret").display()),
            "secret = { env = \"MIXPANEL_ROTATOR_SECRET\" }",
        );
    std::fs::write(&cfg, text).unwrap();
    let admin = h.sim.admin().secret.expose().to_string();
    let o = h
        .run_bin(
            &cfg,
            &["rotate-now", "etl"],
            &[("MIXPANEL_ROTATOR_SECRET", admin.as_str())],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let p = h.payload("etl.json").unwrap();

    let env = std::fs::read_to_string(h.dir.path().join("hook.env")).unwrap();
    let args = std::fs::read_to_string(h.dir.path().join("hook.args")).unwrap();
    for want in [
        "MPR_EVENT=rotated".to_string(),
        "MPR_INTEGRATION=etl".to_string(),
        format!("MPR_SERVICE_ACCOUNT_ID={}", p["service_account_id"]),
        format!("MPR_USERNAME={}", p["username"].as_str().unwrap()),
        format!("MPR_EXPIRES={}", p["expires"].as_str().unwrap()),
        format!("MPR_ROTATION_ID={}", p["rotation_id"].as_str().unwrap()),
        "MPR_SINK=local".to_string(),
        "MPR_PATH=etl.json".to_string(),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} missing from the hook's environment:\n{env}"
        );
    }
    assert_eq!(args, "--flag\n");
    assert!(
        !env.contains("MIXPANEL_ROTATOR_SECRET"),
        "the rotator's environment leaked into the hook"
    );
    for s in h.sim.issued_secrets() {
        assert!(
            !env.contains(s.expose()) && !args.contains(s.expose()),
            "a secret reached the hook"
        );
    }

    // The webhook: Slack-compatible text plus fields, no secret, no URL in logs.
    let events = got.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "rotated");
    assert_eq!(events[0]["integration"], "etl");
    assert_eq!(events[0]["service_account_id"], p["service_account_id"]);
    assert!(events[0]["text"].as_str().unwrap().contains("`etl` rotated"));
    for s in h.sim.issued_secrets() {
        assert!(!events[0].to_string().contains(s.expose()));
    }

    // The audit file: one JSON line per mutating call, no secret.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["action"].as_str().unwrap(), l["outcome"].as_str().unwrap()))
        .collect();
    // The create twice: before the call (write-ahead: a process killed
    // during it leaves it in the trail), and its outcome.
    assert_eq!(
        actions,
        vec![("create", "started"), ("create", "created"), ("publish", "published")]
    );
    assert_eq!(lines[2]["previous_account_id"], p["previous_service_account_id"]);
    assert_eq!(lines[0]["rotation_id"], p["rotation_id"]);
    assert_eq!(lines[1]["rotation_id"], p["rotation_id"]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&audit).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A failed rotation is reported to the webhook too.
    h.sim.inject(Fault::always(
        "POST",
        "/organizations/1/service-accounts",
        FaultAction::Status(500),
    ));
    let o = h
        .run_bin(
            &cfg,
            &["rotate-now", "etl"],
            &[("MIXPANEL_ROTATOR_SECRET", admin.as_str())],
        )
        .await;
    assert_eq!(o.status.code(), Some(1));
    let events = got.lock().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["event"], "rotation_failed");
    assert!(
        events[1]["error"]
            .as_str()
            .unwrap()
            .contains("creating the new account failed")
    );
    let mut all = std::fs::read_to_string(&audit).unwrap();
    all.push_str(&std::fs::read_to_string(h.dir.path().join("hook.env")).unwrap());
    h.record(all);
    h.assert_no_secret_leaked_with(&[], &[&url]);
}

#[tokio::test]
async fn a_failing_hook_does_not_fail_the_rotation() {
    let h = Harness::new(Seed::Demo).await;
    let engine = h.engine(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nadopt = {}\n\
         on_rotate = [\"/bin/sh\", \"-c\", \"echo broken >&2; exit 3\"]\n\
         webhook = {{ url = {{ env = \"MPR_TEST_UNSET_WEBHOOK_URL\" }} }}\n",
        h.accounts_with_prefix("etl-legacy")[0].id
    ));
    let r = h.pass(&engine).await;
    ok(&r);
    assert!(r.rotated.is_some());
    assert!(h.payload("etl.json").is_some());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("on_rotate hook failed") && w.contains("broken")),
        "{:?}",
        r.warnings
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("webhook hook failed")),
        "{:?}",
        r.warnings
    );
    // A hung hook is killed at its timeout.
    let engine = h.engine(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nadopt = {}\n\
         on_rotate = [\"/bin/sleep\", \"30\"]\non_rotate_timeout = \"1s\"\n",
        h.accounts_with_prefix("etl-legacy")[0].id
    ));
    let started = std::time::Instant::now();
    let r = h.force(&engine, "etl", false).await;
    ok(&r);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(r.warnings.iter().any(|w| w.contains("killed")), "{:?}", r.warnings);
}

#[tokio::test]
async fn a_server_error_echoing_a_secret_never_reaches_any_output() {
    let h = Harness::new(Seed::Demo).await;
    let (url, got) = receiver().await;
    let url_file = h.dir.path().join("webhook.url");
    std::fs::write(&url_file, &url).unwrap();
    // The server echoes a credential (here the rotator's own secret) in its error text, over several lines.
    let leaked = h.sim.admin().secret.expose().to_string();
    h.sim.inject(Fault::always(
        "POST",
        "/organizations/1/service-accounts",
        FaultAction::Error {
            status: 400,
            message: format!("bad request from {leaked}\nAuthorization: Basic {leaked}\ntrace: ..."),
        },
    ));
    let engine = h.engine(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n\
         webhook = {{ url = {{ file = \"{}\" }} }}\n",
        url_file.display()
    ));
    let r = h.pass(&engine).await;
    let e = r.errors[0].to_string();
    assert!(e.contains("answered HTTP 400: bad request from [masked]"), "{e}");
    assert!(!e.contains("Authorization"), "one line only: {e}");
    let events = got.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    let hook = events[0].to_string();
    assert!(
        hook.contains("answered HTTP 400") && !hook.contains("bad request"),
        "no server text in the webhook: {hook}"
    );
    for text in [e, hook, h.logs.text()] {
        assert!(!text.contains(&leaked), "the echoed secret leaked");
    }
    h.record(events[0].to_string());
    h.assert_no_secret_leaked(&[&r]);
}
