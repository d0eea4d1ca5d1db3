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
    let _own = OWN_CREDENTIAL.blocking_lock();
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

/// Two instances share the own payload in Vault. One self-rotates and, past
/// grace, deletes the account the other still acts as: the other's next
/// call gets a 401, re-reads the payload once, and succeeds with the new
/// credential; its next pass fails nothing.
#[tokio::test]
async fn an_instance_that_missed_a_self_rotation_recovers_on_its_next_call() {
    let _own = OWN_CREDENTIAL.lock().await;
    let h = Harness::new(Seed::Demo).await;
    let (policy, path) = with_self(&h, Backend::Vault, "grace = \"1h\"\n");
    let a = h.engine(&policy);
    let b = h.engine(&policy);
    pass(&a, &PassOptions::default()).await;
    pass(&b, &PassOptions::default()).await;
    let first = own_payload(&a, &path).await;
    assert_eq!(
        *b.client().username(),
        first.username,
        "b took the published credential"
    );

    pass(&a, &force_self()).await;
    let second = own_payload(&a, &path).await;
    h.clock.advance(Duration::minutes(130));
    pass(&a, &PassOptions::default()).await;
    assert!(
        h.sim.account(first.service_account_id).is_none(),
        "a deleted the first own account"
    );

    // b still acts as the deleted account: refused once, then the new one.
    assert_eq!(*b.client().username(), first.username);
    h.sim.clear_requests();
    b.client().list_accounts().await.expect("recovered");
    let statuses: Vec<(Option<u16>, Option<String>)> =
        h.sim.requests().into_iter().map(|r| (r.status, r.caller)).collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses[0].0, Some(401));
    assert_eq!(statuses[1], (Some(200), Some(second.username.clone())));
    assert_eq!(*b.client().username(), second.username);
    pass(&b, &PassOptions::default()).await;
    h.assert_no_secret_leaked(&[]);
}

/// A payload edited to name an account the rotator does not own (whoever
/// can write the sink): the credential is not taken, nothing is deleted,
/// only the self-rotation is blocked; the integrations go on.
#[tokio::test]
async fn a_hostile_own_payload_deletes_nothing_and_blocks_only_the_self_rotation() {
    let _own = OWN_CREDENTIAL.lock().await;
    let h = Harness::new(Seed::Demo).await;
    let (policy, path) = with_self(&h, Backend::File, "grace = \"1h\"\n");
    let engine = h.engine(&policy);
    pass(&engine, &PassOptions::default()).await;
    let mine = own_payload(&engine, &path).await;
    let (other, secret) = h.sim.add_account(
        "someone-elses-bot",
        mixpanel_rotator::mixpanel::types::Role::Admin,
        None,
        &[],
    );
    let sink = engine.sink("s").unwrap();
    let (mut p, version) = sink.read_current(&path).await.unwrap().unwrap();
    p.username = other.username.clone();
    p.service_account_id = other.id;
    p.secret = secret.secret;
    sink.publish(&path, &p, Some(&version)).await.unwrap();
    let before: Vec<u64> = h.sim.accounts().iter().map(|a| a.id).collect();

    h.clock.advance(Duration::hours(2));
    let reports = engine
        .pass(&PassOptions {
            force: [SELF_NAME.to_string(), "etl".to_string()].into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        *engine.client().username(),
        mine.username,
        "the edited credential is not used"
    );
    let own = &reports[0];
    let codes: Vec<String> = own.errors.iter().map(|e| e.code().to_string()).collect();
    assert_eq!(codes, ["read_sink.blocked.foreign_current"], "{:#?}", own.errors);
    assert!(
        reports[1].errors.is_empty() && reports[1].rotated.is_some(),
        "{:#?}",
        reports[1]
    );
    for id in &before {
        assert!(h.sim.account(*id).is_some(), "account {id} was deleted");
    }
}

/// A crash (the pass dropped at a failpoint, as SIGKILL) at every step of
/// a self-rotation, for every sink; then a restarted process: its credential
/// in the sink authenticates, exactly one own account is left, nothing else
/// was touched, the next pass completes.
#[tokio::test]
async fn a_crash_at_every_step_of_a_self_rotation_leaves_a_working_own_credential() {
    let _own = OWN_CREDENTIAL.lock().await;
    // One after the other: failpoints are armed per integration name, and
    // every case's own credential is `(rotator)`.
    for backend in ALL {
        for point in crate::crashes::POINTS {
            own_crash(backend, point).await;
        }
    }
}

async fn own_crash(backend: Backend, point: &'static str) {
    use mixpanel_rotator::failpoint;
    use mixpanel_rotator::rotation::lineage::Lineage;
    let case = format!("{backend:?} at {point}");
    let h = Harness::new(Seed::Demo).await;
    let foreign = [
        h.sim
            .add_account(
                "someone-elses-bot",
                mixpanel_rotator::mixpanel::types::Role::Admin,
                None,
                &[],
            )
            .0
            .id,
        h.accounts_with_prefix("etl-legacy")[0].id,
    ];
    // The seed has an individual grant: copied to each own account, so the
    // membership steps are crossed too.
    let seed = h
        .sim
        .accounts()
        .into_iter()
        .find(|a| a.username == h.sim.admin().username)
        .unwrap();
    h.sim
        .grant(101, seed.id, mixpanel_rotator::mixpanel::types::ProjectRole::Analyst);
    let (sink, path) = backend.sink(&h);
    let policy = format!("{sink}\n[mixpanel.self]\nsink = \"s\"\npath = \"{path}\"\norphan_after = \"1m\"\n");
    let engine = h.engine(&policy);
    ok(&h.pass(&engine).await);
    // Something for the pass to delete first: a leftover of an earlier crash.
    let stale = Lineage::new("mpr", "rotator").new_username(t(START) - Duration::hours(1));
    h.sim
        .add_account(&stale, mixpanel_rotator::mixpanel::types::Role::Admin, None, &[]);
    h.clock.advance(Duration::minutes(2));
    let mut trip = failpoint::arm(point, SELF_NAME);
    let opts = force_self();
    tokio::select! {
        _ = engine.pass(&opts) => panic!("{case}: the failpoint was never reached"),
        () = trip.hit() => {}
    }
    drop(trip);
    drop(engine);

    let engine = h.engine(&policy);
    let last = h.settle(&engine).await;
    let dir = matches!(backend, Backend::File).then(|| h.dir.path().join("s"));
    let s = Settled {
        case: &case,
        sink: "s",
        path: &path,
        lineage: "mpr-rotator-",
        others: &foreign,
        dir,
    };
    h.assert_settled(&engine, &last, s).await;
    // The process acts as what the sink holds, with the seed's grant.
    let own = own_payload(&engine, &path).await;
    assert_eq!(*engine.client().username(), own.username, "{case}");
    assert!(
        h.sim
            .memberships(own.service_account_id)
            .iter()
            .any(|(p, _, _)| *p == 101),
        "{case}: the seed's grant was copied"
    );
}

/// The command line: `rotate-now --self` (and its refusal without
/// `[mixpanel.self]`), the own row in `status -o json` (`"self": true`,
/// schema-checked), and `validate --online` passing without a warning
/// about the rotator's own account.
#[tokio::test]
async fn the_command_line_rotates_and_shows_the_own_credential() {
    let h = Harness::realtime(Seed::Demo).await;
    let (text, path) = with_self(&h, Backend::File, "");
    let cfg = h.policy_file(&text);
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    h.sim.clear_requests();
    let o = h.run_bin(&cfg, &["rotate-now", "--self", "--dry-run"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out(&o).contains(SELF_NAME) && out(&o).contains("mpr-rotator-<timestamp>"),
        "{}",
        out(&o)
    );
    assert!(
        h.sim.requests().iter().all(|q| !q.is_mutating()),
        "--dry-run changed something"
    );
    let o = h.run_bin(&cfg, &["rotate-now", "--self", "-o", "json"], &[]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        out(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let doc = crate::cli::assert_schema(&out(&o));
    let rows = doc["integrations"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the own credential: {doc}");
    assert_eq!(
        (rows[0]["name"].as_str(), rows[0]["self"].as_bool()),
        (Some(SELF_NAME), Some(true))
    );
    assert_eq!(rows[0]["state"], "rotated");
    let own = std::fs::read_to_string(h.dir.path().join("s").join(&path)).unwrap();
    assert!(own.contains("\"mpr-rotator-"), "{own}");

    let o = h.run_bin(&cfg, &["status", "-o", "json"], &[]).await;
    let doc = crate::cli::assert_schema(&out(&o));
    assert_eq!(doc["integrations"][0]["self"], true, "{doc}");
    assert_eq!(doc["integrations"][1]["self"], false, "{doc}");
    let o = h.run_bin(&cfg, &["status"], &[]).await;
    assert!(out(&o).contains(SELF_NAME), "{}", out(&o));

    let o = h.run_bin(&cfg, &["validate", "--online", "-o", "json"], &[]).await;
    let doc = crate::cli::assert_schema(&out(&o));
    let own_check = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "the rotator's own account")
        .cloned()
        .unwrap_or_default();
    assert_eq!(own_check["status"], "ok", "{doc}");
    assert!(
        own_check["detail"]
            .as_str()
            .unwrap()
            .contains("rotated by this rotator"),
        "{doc}"
    );

    let o = h.run_bin(&cfg, &["retire", SELF_NAME], &[]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is the rotator's own credential"));

    let plain = h.policy_file("[[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nprojects = [{ id = 101, role = \"analyst\" }]\n");
    let o = h.run_bin(&plain, &["rotate-now", "--self"], &[]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no `[mixpanel.self]`"));
    h.assert_no_secret_leaked(&[]);
}

/// `[mixpanel.self]` gets a place of its own, and `rotator` is reserved.
#[tokio::test]
async fn the_own_place_and_lineage_are_refused_to_anyone_else() {
    let h = Harness::new(Seed::Demo).await;
    let err = |rest: &str| {
        mixpanel_rotator::policy::Policy::parse(&h.policy(rest))
            .unwrap_err()
            .all()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let shared = err("[mixpanel.self]\nsink = \"local\"\npath = \"own.json\"\n\
         [[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"./own.json\"\nadopt = 5\n");
    assert!(
        shared.contains("`integrations[0].path`") && shared.contains("mixpanel.self.path"),
        "{shared}"
    );
    let mirror = err("[mixpanel.self]\nsink = \"local\"\npath = \"own.json\"\n\
         [[integrations]]\nname = \"etl\"\nsink = \"local\"\npath = \"etl.json\"\nadopt = 5\nmirrors = [{ sink = \"local\", path = \"own.json\" }]\n");
    assert!(mirror.contains("mirrors[0].path"), "{mirror}");
    let reserved = err("[[integrations]]\nname = \"rotator\"\nsink = \"local\"\npath = \"r.json\"\nadopt = 5\n");
    assert!(reserved.contains("`rotator` is reserved"), "{reserved}");
    let keys =
        err("[mixpanel.self]\nsink = \"local\"\npath = \"own.json\"\nttl = \"1h\"\ngrace = \"2h\"\nrole = \"owner\"\n");
    assert!(keys.contains("mixpanel.self"), "{keys}");
}

/// `rotate-now --self --revoke-old` (a leaked own credential): the new own
/// account is published and used, and the old one is deleted at once.
#[tokio::test]
async fn revoke_old_deletes_the_previous_own_account_at_once() {
    let _own = OWN_CREDENTIAL.lock().await;
    let h = Harness::new(Seed::Demo).await;
    let (policy, path) = with_self(&h, Backend::Memory, "");
    let engine = h.engine(&policy);
    pass(&engine, &PassOptions::default()).await;
    let first = own_payload(&engine, &path).await;
    let r = pass(
        &engine,
        &PassOptions {
            revoke_old: true,
            ..force_self()
        },
    )
    .await;
    let second = own_payload(&engine, &path).await;
    assert!(
        r[0].deleted.iter().any(|d| d.id == first.service_account_id),
        "{:#?}",
        r[0]
    );
    assert!(h.sim.account(first.service_account_id).is_none());
    assert_eq!(*engine.client().username(), second.username);
    h.sim.clear_requests();
    pass(&engine, &PassOptions::default()).await;
    assert!(callers(&h).iter().all(|c| *c == second.username));
}

/// An owner (or any non-admin) as the account in use: the own credential
/// is not rotated (an owner is never re-created as its successor), nothing
/// is created, the integrations go on.
#[tokio::test]
async fn an_owner_seed_is_reported_and_not_rotated() {
    let _own = OWN_CREDENTIAL.lock().await;
    use mixpanel_rotator::mixpanel::types::Role;
    let h = Harness::new(Seed::Demo).await;
    let (owner, creds) = h.sim.add_account("owner-bot", Role::Owner, None, &[]);
    std::fs::write(h.dir.path().join("owner.secret"), creds.secret.expose()).unwrap();
    let (text, _) = with_self(&h, Backend::File, "");
    let full = h
        .policy(&text)
        .replace(&h.sim.admin().username, &owner.username)
        .replace("admin.secret", "owner.secret");
    let engine = Engine::with_retry(
        std::sync::Arc::new(mixpanel_rotator::policy::Policy::parse(&full).unwrap()),
        std::sync::Arc::new(h.clock.clone()),
        fast_retry(),
        fast_retry(),
    )
    .unwrap();
    h.sim.clear_requests();
    let reports = engine.pass(&PassOptions::default()).await;
    let codes: Vec<String> = reports[0].errors.iter().map(|e| e.code().to_string()).collect();
    assert_eq!(codes, ["copy_memberships.not_admin"], "{:#?}", reports[0]);
    assert!(reports[0].errors[0].to_string().contains("role `owner`"));
    assert!(
        h.sim.accounts().iter().all(|a| !a.username.starts_with("mpr-rotator-")),
        "nothing created"
    );
    assert!(
        reports[1].errors.is_empty() && reports[1].rotated.is_some(),
        "etl goes on"
    );
}

/// The own credential is the only copy once the seed is deleted: `validate`
/// refuses a sink that loses it at reboot (a directory on tmpfs, such as
/// /dev/shm; the in-memory store), and passes one on disk.
#[tokio::test]
async fn validate_refuses_an_own_sink_that_does_not_survive_a_reboot() {
    let h = Harness::realtime(Seed::Demo).await;
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm is a tmpfs on Linux");
    let volatile = h.policy_file(&format!(
        "[sinks.shm]\ntype = \"file\"\ndir = \"{}\"\n[mixpanel.self]\nsink = \"shm\"\npath = \"rotator.json\"\n",
        shm.path().join("state").display()
    ));
    let o = h.run_bin(&volatile, &["validate"], &[]).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("mixpanel.self.sink") && text.contains("memory file system"),
        "{text}"
    );
    let durable = h.policy_file("[mixpanel.self]\nsink = \"local\"\npath = \"rotator.json\"\n");
    let o = h.run_bin(&durable, &["validate"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
}
