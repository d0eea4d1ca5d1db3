//! A crash at every step boundary of a rotation, for every sink: the
//! rotation stops for good at a failpoint (the future is dropped, no
//! clean-up code runs, as with SIGKILL), then a fresh engine (a restarted
//! process) runs passes past `orphan_after` and `grace`. Afterwards the
//! published credential authenticates, exactly one lineage account remains,
//! nothing outside the lineage was touched, and no temporary file is left.

use chrono::Duration;
use mixpanel_rotator::failpoint;
use mixpanel_rotator::mixpanel::types::Role;
use mixpanel_rotator::rotation::PassOptions;
use mixpanel_rotator::rotation::lineage::Lineage;
use mixpanel_rotator::simulator::Seed;

use crate::common::*;

/// Every boundary a test can crash a rotation at (src/failpoint.rs's users).
pub const POINTS: &[&str] = &[
    "before_delete",
    "after_delete",
    "after_create",
    "after_member_list",
    "after_memberships",
    "after_verify",
    "before_publish",
    "publish_before_cas",
    "publish_after_cas",
    "after_publish",
    "before_hooks",
];

#[test]
fn a_crash_at_every_step_boundary_of_every_sink_leaves_one_working_credential_and_nothing_else() {
    in_parallel(ALL, |backend| async move {
        for point in POINTS {
            crash_case(backend, point).await;
        }
    });
}

async fn crash_case(backend: Backend, point: &'static str) {
    let case = format!("{backend:?} at {point}");
    // One integration name per sink: failpoints are armed per integration,
    // and the sinks' cases run in parallel.
    let name = format!("crash-{}", format!("{backend:?}").to_lowercase());
    let h = Harness::new(Seed::Demo).await;
    let foreign = [
        h.sim.add_account("someone-elses-bot", Role::Admin, None, &[]).0.id,
        h.accounts_with_prefix("etl-legacy")[0].id,
    ];
    let (sink, path) = backend.sink(&h);
    let policy = format!(
        "{sink}\n[[integrations]]\nname = \"{name}\"\nsink = \"s\"\npath = \"{path}\"\norphan_after = \"1m\"\ngrace = \"1h\"\n\
         projects = [{{ id = 101, role = \"analyst\" }}]\n"
    );
    let engine = h.engine(&policy);
    ok(&h.pass(&engine).await);
    // Something for the pass to delete first: a leftover of an earlier crash.
    let stale = Lineage::new("mpr", &name).new_username(t(START) - Duration::hours(1));
    h.sim.add_account(&stale, Role::Consumer, None, &[]);
    h.clock.advance(Duration::minutes(2));

    let mut trip = failpoint::arm(point, &name);
    let opts = PassOptions {
        force: [name.clone()].into(),
        ..Default::default()
    };
    tokio::select! {
        _ = engine.pass(&opts) => panic!("{case}: the failpoint was never reached"),
        () = trip.hit() => {}
    }
    drop(trip);
    drop(engine);

    // The restarted process.
    let engine = h.engine(&policy);
    let last = h.settle(&engine).await;
    let dir = matches!(backend, Backend::File).then(|| h.dir.path().join("s"));
    let lineage = format!("mpr-{name}-");
    let s = Settled {
        case: &case,
        sink: "s",
        path: &path,
        lineage: &lineage,
        others: &foreign,
        dir,
    };
    h.assert_settled(&engine, &last, s).await;
}
