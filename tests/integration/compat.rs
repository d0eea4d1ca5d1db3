//! Real Mixpanel data: full rotations against the simulator in its default,
//! realistic shape (`null`s, extra fields, timestamps without an offset or
//! with a space, custom project roles, organization-level grants, projects in
//! two regions on two listeners).

use mixpanel_rotator::mixpanel::types::{ProjectRole, Role, TargetType};
use mixpanel_rotator::simulator::{EU_PROJECT, Quirks, Seed};

use crate::common::*;

/// Project calls of the log: (project path, region of the listener, status).
fn project_calls(h: &Harness) -> Vec<(String, String, Option<u16>)> {
    h.sim
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/projects/"))
        .map(|q| (q.path, q.region, q.status))
        .collect()
}

#[tokio::test]
async fn copy_across_two_regions_skips_custom_roles_and_organization_grants_with_warnings() {
    let h = Harness::new(Seed::Demo).await;
    let (src, _) = h.sim.add_account(
        "etl-src",
        Role::Analyst,
        None,
        &[
            (101, ProjectRole::Analyst, TargetType::Individual),
            (102, ProjectRole::Custom("Data Steward".into()), TargetType::Individual),
            (103, ProjectRole::Admin, TargetType::Organization),
            (EU_PROJECT, ProjectRole::Consumer, TargetType::Individual),
        ],
    );
    // And one row of a kind of grant nobody documented.
    h.sim.add_account(
        "someone",
        Role::Consumer,
        None,
        &[(103, ProjectRole::Consumer, TargetType::Other("workspace".into()))],
    );
    let engine = h.engine(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\nadopt = {}\n",
        src.id
    ));
    h.sim.clear_requests();
    let r = h.pass(&engine).await;
    ok(&r);
    let new = r.rotated.as_ref().unwrap().service_account_id;
    let mut m = h.sim.memberships(new);
    m.sort();
    assert_eq!(
        m,
        vec![
            (101, ProjectRole::Analyst, TargetType::Individual),
            (EU_PROJECT, ProjectRole::Consumer, TargetType::Individual),
        ],
        "both regions' individual grants, nothing else"
    );
    let warned = |needles: &[&str]| r.warnings.iter().any(|w| needles.iter().all(|n| w.contains(n)));
    assert!(
        warned(&[
            "project 102",
            "`Data Steward`",
            "custom role",
            "never copied blindly",
            "`integrations[0].projects`"
        ]),
        "{:?}",
        r.warnings
    );
    assert!(
        warned(&["project 103", "`admin`", "`organization` grant", "cannot be copied"]),
        "{:?}",
        r.warnings
    );
    // Each project's calls reached its own region's listener, and only it.
    let calls = project_calls(&h);
    for (path, region, status) in &calls {
        let want = if path.starts_with(&format!("/projects/{EU_PROJECT}/")) {
            "eu.mixpanel.com"
        } else {
            "mixpanel.com"
        };
        assert_eq!(region, want, "{path}");
        assert_eq!(*status, Some(200), "{path}");
    }
    assert!(calls.iter().any(|c| c.1 == "eu.mixpanel.com"), "{calls:?}");
    assert!(calls.iter().any(|c| c.1 == "mixpanel.com"), "{calls:?}");
    // The new credential works, and the old account is retired as usual.
    h.consumer("etl.json").me().await.unwrap();
    h.assert_no_secret_leaked(&[&r]);
}

#[tokio::test]
async fn a_project_call_on_the_wrong_region_fails_and_nothing_is_created() {
    let h = Harness::new(Seed::Demo).await;
    let (src, _) = h.sim.add_account(
        "etl-src",
        Role::Analyst,
        None,
        &[(EU_PROJECT, ProjectRole::Consumer, TargetType::Individual)],
    );
    // A policy that forgets the EU region: its project is asked of the home host.
    let text = h
        .policy(&format!(
            "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nadopt = {}\n",
            src.id
        ))
        .lines()
        .filter(|l| !l.starts_with("region_urls"))
        .collect::<Vec<_>>()
        .join("\n");
    let policy = mixpanel_rotator::policy::Policy::parse(&text).unwrap();
    let engine = mixpanel_rotator::rotation::Engine::with_retry(
        std::sync::Arc::new(policy),
        std::sync::Arc::new(h.clock.clone()),
        fast_retry(),
        fast_retry(),
    )
    .unwrap();
    let before = h.sim.accounts().len();
    let r = h.pass(&engine).await;
    assert!(r.failed());
    let e = r.errors[0].to_string();
    assert!(e.contains("hosted in eu.mixpanel.com"), "{e}");
    assert_eq!(h.sim.accounts().len(), before, "nothing created");
}

#[tokio::test]
async fn an_organization_level_grant_that_covers_the_desired_role_is_access_parity() {
    let h = Harness::new(Seed::Demo).await;
    // Mixpanel lists an admin's memberships as its organization-level grant.
    h.sim.set_quirks(Quirks {
        org_grant_hides_own: true,
        ..Default::default()
    });
    let engine = h.engine(
        "[[integrations]]\nname = \"ops\"\nsink = \"local\"\npath = \"ops.json\"\nrole = \"admin\"\nprojects = [{ id = 101, role = \"analyst\" }, { id = 102, role = \"Data Steward\" }]\n",
    );
    let r = h.pass(&engine).await;
    // 101: `admin` at organization level covers `analyst`. 102: a custom role
    // is never assumed covered, and the organization row hides the own one.
    assert!(r.rotated.is_none());
    let e = r.errors[0].to_string();
    assert!(e.contains("still lacks memberships [102 Data Steward]"), "{e}");
    assert!(e.contains("was deleted, nothing changed"), "{e}");
    let engine = h.engine(
        "[[integrations]]\nname = \"ops\"\nsink = \"local\"\npath = \"ops.json\"\nrole = \"admin\"\nprojects = [{ id = 101, role = \"analyst\" }, { id = 102, role = \"admin\" }]\n",
    );
    let r = h.pass(&engine).await;
    ok(&r);
    assert!(r.rotated.is_some());
}

#[tokio::test]
async fn the_account_list_really_has_loose_timestamps_and_rotation_works_on_it() {
    let h = Harness::new(Seed::Demo).await;
    let admin = h.sim.admin();
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/organizations/1/service-accounts", h.sim.base_url()))
        .basic_auth(&admin.username, Some(admin.secret.expose()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = body["results"].as_array().unwrap();
    let legacy = rows
        .iter()
        .find(|a| a["username"].as_str().unwrap().starts_with("etl-legacy"))
        .unwrap();
    let created = legacy["created"].as_str().unwrap();
    assert!(!created.ends_with('Z') && !created.contains('+'), "{created}");
    assert!(legacy["last_used"].is_null() && legacy["expires"].is_null());
    assert!(legacy.get("creator_email").is_some());
    assert!(rows.iter().any(|a| a["role"] == "no role"));
    // A rotation, its grace, and the deletion of the old account, on that data.
    let engine = h.engine(&format!(
        "[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nrole = \"analyst\"\ngrace = \"1h\"\nadopt = {}\n",
        legacy["id"]
    ));
    ok(&h.pass(&engine).await);
    h.clock.advance(chrono::Duration::hours(2));
    let r = h.pass(&engine).await;
    ok(&r);
    assert_eq!(r.deleted.len(), 1, "{:?}", r.plan);
    assert!(h.accounts_with_prefix("etl-legacy").is_empty());
}
