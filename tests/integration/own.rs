//! The rotator rotates its own credential (`[mixpanel.self]`): the seed in
//! `[mixpanel]` is used until the first self-rotation is published, then the
//! published credential is, by every later call of the process; the seed
//! and each previous own account are deleted only after `grace`, once idle;
//! integrations keep rotating throughout. For every sink backend.

use chrono::Duration;
use mixpanel_rotator::policy::SELF_NAME;
use mixpanel_rotator::rotation::{Engine, PassOptions, Report};
use mixpanel_rotator::simulator::Seed;
use mixpanel_rotator::sink::Payload;

use crate::common::*;

/// A policy whose own credential lives in sink `s` (of `backend`) at its
/// path, with integration `etl` in the file sink `local`; and that path.
fn with_self(h: &Harness, backend: Backend, own: &str) -> (String, String) {
    let (sink, path) = backend.sink(h);
    let text = format!(
        "{sink}\n[mixpanel.self]\nsink = \"s\"\npath = \"{path}\"\n{own}\n\
         [[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n"
    );
    (text, path)
}

async fn pass(engine: &Engine, opts: &PassOptions) -> Vec<Report> {
    let reports = engine.pass(opts).await;
    for r in &reports {
        assert!(r.errors.is_empty(), "{}: {:#?}", r.integration, r.errors);
    }
    reports
}

async fn own_payload(engine: &Engine, path: &str) -> Payload {
    engine
        .sink("s")
        .unwrap()
        .read_current(path)
        .await
        .unwrap()
        .expect("the own payload")
        .0
}

/// The caller of every Mixpanel call made since the log was cleared,
/// except the proofs that an integration's new credential works (made as it).
fn callers(h: &Harness) -> Vec<String> {
    h.sim
        .requests()
        .into_iter()
        .filter_map(|r| r.caller)
        .filter(|c| !c.starts_with("mpr-etl-"))
        .collect()
}

fn force_self() -> PassOptions {
    PassOptions {
        force: [SELF_NAME.to_string()].into(),
        ..Default::default()
    }
}

#[test]
fn seed_then_two_self_rotations_on_every_sink() {
    in_parallel(ALL, |backend| async move {
        let h = Harness::new(Seed::Demo).await;
        let seed = h.sim.admin().username;
        let seed_id = h.sim.accounts().into_iter().find(|a| a.username == seed).unwrap().id;
        let (policy, path) = with_self(&h, backend, "grace = \"1h\"\n");
        let engine = h.engine(&policy);

        // The first pass bootstraps the own credential (and the integration).
        let r = pass(&engine, &PassOptions::default()).await;
        assert_eq!(r[0].integration, SELF_NAME, "{backend:?}: the own row comes first");
        let first = own_payload(&engine, &path).await;
        assert!(
            first.username.starts_with("mpr-rotator-"),
            "{backend:?}: {}",
            first.username
        );
        assert_eq!(first.integration, SELF_NAME);
        assert!(
            h.sim.account(seed_id).is_some(),
            "{backend:?}: the seed is kept for grace"
        );
        assert!(
            h.payload("etl.json").is_some(),
            "{backend:?}: the integration rotated too"
        );

        // From now on, every call is made as the new account.
        h.sim.clear_requests();
        h.clock.advance(Duration::minutes(10));
        pass(&engine, &PassOptions::default()).await;
        let who = callers(&h);
        assert!(
            !who.is_empty() && who.iter().all(|c| *c == first.username),
            "{backend:?}: {who:?}"
        );
        assert!(h.sim.account(seed_id).is_some(), "{backend:?}: still within grace");

        // Past grace and idle: the seed goes.
        h.clock.advance(Duration::minutes(70));
        pass(&engine, &PassOptions::default()).await;
        assert!(
            h.sim.account(seed_id).is_none(),
            "{backend:?}: the seed is deleted after grace"
        );

        // A second self-rotation; integrations keep rotating.
        let r = pass(&engine, &force_self()).await;
        assert!(r[0].rotated.is_some(), "{backend:?}");
        let second = own_payload(&engine, &path).await;
        assert_ne!(second.service_account_id, first.service_account_id);
        assert_eq!(second.previous_service_account_id, Some(first.service_account_id));
        h.sim.clear_requests();
        let r = pass(
            &engine,
            &PassOptions {
                force: ["etl".to_string()].into(),
                ..Default::default()
            },
        )
        .await;
        assert!(
            r[1].rotated.is_some(),
            "{backend:?}: etl rotates with the new credential"
        );
        let who = callers(&h);
        assert!(who.iter().all(|c| *c == second.username), "{backend:?}: {who:?}");
        assert!(h.sim.account(first.service_account_id).is_some(), "{backend:?}: grace");
        h.clock.advance(Duration::minutes(130));
        pass(&engine, &PassOptions::default()).await;
        assert!(
            h.sim.account(first.service_account_id).is_none(),
            "{backend:?}: the first own account is deleted after grace"
        );
        // The credential in the sink authenticates; nothing leaked.
        let consumer = serde_json::json!({"username": second.username, "secret": second.secret.expose()});
        h.client_for(&consumer).me().await.unwrap();
        h.assert_no_secret_leaked(&[]);
    });
}
