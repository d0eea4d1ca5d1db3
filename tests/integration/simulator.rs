//! The simulator behaves like the API as published: status codes, shapes,
//! auth, strict bodies, faults.

use base64::Engine as _;
use chrono::Duration;
use mixpanel_rotator::mixpanel::types::*;
use mixpanel_rotator::mixpanel::{Client, ClientSettings, Credentials, MixpanelError};
use mixpanel_rotator::simulator::{Fault, FaultAction, Seed};
use serde_json::{Value, json};

use crate::common::*;

fn basic(c: &Credentials) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.secret.expose()))
    )
}

async fn raw(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    auth: Option<String>,
    body: Option<Value>,
) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = http.request(method, format!("{}{path}", h.sim.base_url()));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn client(h: &Harness, c: Credentials) -> Client {
    Client::new(ClientSettings {
        base_url: h.sim.base_url(),
        organization_id: 1,
        credentials: c,
        max_concurrency: 3,
        timeout: std::time::Duration::from_secs(5),
        retry: fast_retry(),
    })
    .unwrap()
}

#[tokio::test]
async fn create_is_201_with_suffix_and_token_and_bodies_are_strict() {
    let h = Harness::new(Seed::Demo).await;
    let admin = Some(basic(&h.sim.admin()));
    let path = "/organizations/1/service-accounts";
    let expires = (t(START) + Duration::days(1)).to_rfc3339();
    let (st, body) = raw(
        &h,
        reqwest::Method::POST,
        path,
        admin.clone(),
        Some(json!({"username": "etl-bot", "role": "analyst", "expires": expires, "projects": [{"id": 101, "role": "admin"}]})),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(body["status"], "ok");
    let u = body["results"]["username"].as_str().unwrap();
    assert!(u.starts_with("etl-bot.") && u.ends_with(".mp-service-account"), "{u}");
    assert_eq!(strip_mixpanel_suffix(u), "etl-bot");
    assert!(body["results"]["token"].as_str().unwrap().len() >= 32);
    let id = body["results"]["id"].as_u64().unwrap();
    assert_eq!(
        h.sim.memberships(id),
        vec![(101, ProjectRole::Admin, TargetType::Individual)]
    );

    let bad: Vec<(&str, Value)> = vec![
        ("unknown field", json!({"username": "x", "colour": "red"})),
        ("bad role", json!({"username": "x", "role": "superuser"})),
        (
            "past expires",
            json!({"username": "x", "expires": (t(START) - Duration::hours(1)).to_rfc3339()}),
        ),
        (
            "unknown project",
            json!({"username": "x", "projects": [{"id": 999, "role": "admin"}]}),
        ),
        ("missing username", json!({"role": "admin"})),
        (
            "project without role",
            json!({"username": "x", "projects": [{"id": 101}]}),
        ),
    ];
    for (what, b) in bad {
        let (st, body) = raw(&h, reqwest::Method::POST, path, admin.clone(), Some(b)).await;
        assert_eq!(st, 400, "{what}");
        assert_eq!(body["status"], "error", "{what}");
        assert!(body["error"].as_str().is_some(), "{what}");
    }
    let (st, _) = raw(
        &h,
        reqwest::Method::POST,
        "/organizations/1/service-accounts/add-to-project",
        admin.clone(),
        Some(json!({"projects": [{"id": 101, "role": "owner"}], "service_account_ids": [id], "extra": 1})),
    )
    .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn auth_rules() {
    let h = Harness::new(Seed::Demo).await;
    let admin = h.sim.admin();
    let list = "/organizations/1/service-accounts";
    assert_eq!(raw(&h, reqwest::Method::GET, list, None, None).await.0, 401);
    let wrong = Credentials {
        username: admin.username.clone(),
        secret: mixpanel_rotator::secret::Secret::new("nope"),
    };
    assert_eq!(
        raw(&h, reqwest::Method::GET, list, Some(basic(&wrong)), None).await.0,
        401
    );
    // Plain `user:secret` after `Basic ` is accepted too.
    let plain = format!("Basic {}:{}", admin.username, admin.secret.expose());
    assert_eq!(raw(&h, reqwest::Method::GET, list, Some(plain), None).await.0, 200);

    // Non-admins can read but not mutate.
    let (_, analyst) = h.sim.add_account(
        "reader",
        Role::Analyst,
        None,
        &[(101, ProjectRole::Analyst, TargetType::Individual)],
    );
    let c = client(&h, analyst);
    assert!(c.list_accounts().await.is_ok());
    let err = c
        .create_account(&CreateServiceAccount {
            username: "x".into(),
            role: None,
            expires: None,
            projects: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MixpanelError::Api { status: 403, .. }), "{err}");
    assert!(err.to_string().contains("admin or owner"));
    // /me lists only what the caller sees.
    assert_eq!(c.me().await.unwrap().project_ids(1), vec![101]);
    assert_eq!(
        client(&h, admin).me().await.unwrap().project_ids(1),
        vec![101, 102, 103, 201]
    );

    // 401 once expired.
    let (_, short) = h
        .sim
        .add_account("short", Role::Admin, Some(t(START) + Duration::hours(1)), &[]);
    let c = client(&h, short);
    assert!(c.me().await.is_ok());
    h.clock.advance(Duration::hours(1));
    assert!(matches!(
        c.me().await.unwrap_err(),
        MixpanelError::Api { status: 401, .. }
    ));
}

#[tokio::test]
async fn shapes_memberships_and_deletion() {
    let h = Harness::new(Seed::Demo).await;
    let c = client(&h, h.sim.admin());
    let legacy = h.accounts_with_prefix("etl-legacy")[0].clone();
    // get-service-account: a bare object, as in the published description.
    let (st, body) = raw(
        &h,
        reqwest::Method::GET,
        &format!("/organizations/1/service-accounts/{}", legacy.id),
        Some(basic(&h.sim.admin())),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(body["id"], legacy.id);
    assert!(body.get("results").is_none());
    assert_eq!(c.get_account(legacy.id).await.unwrap().id, legacy.id);

    let rows = c.list_project_members(103, None).await.unwrap();
    let row = rows.iter().find(|r| r.account.id == legacy.id).unwrap();
    assert_eq!(row.target_type, TargetType::Team);
    c.remove_from_projects(&RemoveFromProjects {
        projects: vec![ProjectRemoval {
            id: 101,
            service_account_ids: vec![legacy.id],
        }],
    })
    .await
    .unwrap();
    assert!(!h.sim.memberships(legacy.id).iter().any(|m| m.0 == 101));
    c.add_to_projects(&AddToProjects {
        projects: vec![ProjectGrant {
            id: 101,
            role: ProjectRole::Consumer,
        }],
        service_account_ids: vec![legacy.id],
    })
    .await
    .unwrap();
    assert!(
        h.sim
            .memberships(legacy.id)
            .contains(&(101, ProjectRole::Consumer, TargetType::Individual))
    );

    assert!(c.delete_account(legacy.id).await.unwrap());
    // Deleting it again: 404, which the client reports as "already gone".
    assert!(!c.delete_account(legacy.id).await.unwrap());
    assert_eq!(h.sim.requests().last().unwrap().status, Some(404));
    assert!(
        h.sim.memberships(legacy.id).is_empty(),
        "deletion removes every membership"
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_faults_run_out() {
    let h = Harness::new(Seed::Demo).await;
    let (st, _) = raw(
        &h,
        reqwest::Method::GET,
        "/organizations/1/service-accounts/",
        Some(basic(&h.sim.admin())),
        None,
    )
    .await;
    assert_eq!(st, 301);
    let c = client(&h, h.sim.admin());
    h.sim.inject(Fault::times("GET", "/me", FaultAction::Status(500), 2));
    // Retried (GET) through two 500s.
    assert!(c.me().await.is_ok());
    let statuses: Vec<_> = h
        .sim
        .requests()
        .iter()
        .filter(|q| q.path == "/me")
        .map(|q| q.status)
        .collect();
    assert_eq!(statuses, vec![Some(500), Some(500), Some(200)]);
    // A POST is not retried.
    h.sim.inject(Fault::once(
        "POST",
        "/organizations/*/service-accounts/add-to-project",
        FaultAction::Status(503),
    ));
    let err = c
        .add_to_projects(&AddToProjects {
            projects: vec![],
            service_account_ids: vec![],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MixpanelError::Api { status: 503, .. }));
    assert!(
        c.add_to_projects(&AddToProjects {
            projects: vec![],
            service_account_ids: vec![],
        })
        .await
        .is_ok()
    );
}

/// No account may create one with an organization role above its own; a
/// deleted account's secret stops authenticating at once.
#[tokio::test]
async fn creates_are_bounded_by_the_creators_role_and_deleted_secrets_fail_at_once() {
    let h = Harness::new(Seed::Demo).await;
    let admin = h.client_for(&json!({"username": h.sim.admin().username, "secret": h.sim.admin().secret.expose()}));
    let ask = |role| CreateServiceAccount {
        username: "made".into(),
        role: Some(role),
        expires: Some(h.clock_now() + Duration::days(1)),
        projects: None,
    };
    match admin.create_account(&ask(Role::Owner)).await {
        Err(MixpanelError::Api { status: 403, .. }) => {}
        other => panic!("an admin created an owner: {other:?}"),
    }
    admin
        .create_account(&ask(Role::Admin))
        .await
        .expect("an admin creates an admin");
    let (analyst, creds) = h.sim.add_account("analyst-bot", Role::Analyst, None, &[]);
    let as_analyst = h.client_for(&json!({"username": analyst.username, "secret": creds.secret.expose()}));
    as_analyst.me().await.expect("it authenticates");
    assert!(h.sim.delete_account(analyst.id));
    match as_analyst.me().await {
        Err(MixpanelError::Api { status: 401, .. }) => {}
        other => panic!("a deleted account authenticated: {other:?}"),
    }
}
