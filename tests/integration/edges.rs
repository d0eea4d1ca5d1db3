//! Where the core meets an operator's world (issue 21): a Mixpanel clock
//! that disagrees with ours, an `orphan_after` too short to see a
//! consumer's use, an `adopt` pointing into another integration, a mirror
//! that cannot be written, aliases of one place, held locks, a stuck
//! audit file. Each test is the regression test of one finding: it failed
//! before the fix.

use chrono::Duration;
use mixpanel_rotator::rotation::{Cause, Report};
use mixpanel_rotator::simulator::Seed;

use crate::common::*;

/// A file sink of its own (a pod) with one integration `etl`.
fn pod(h: &Harness, name: &str, extra: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"file\"\ndir = \"{}\"\n[[integrations]]\nname = \"etl\"\nsink = \"{name}\"\npath = \"etl.json\"\nprojects = [{{ id = 101, role = \"analyst\" }}]\n{extra}\n",
        h.dir.path().join(name).display()
    )
}

fn read(h: &Harness, dir: &str, path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(h.dir.path().join(dir).join(path)).unwrap()).unwrap()
}

fn in_use_elsewhere(r: &Report, id: u64) -> bool {
    r.errors
        .iter()
        .any(|e| matches!(&e.cause, Cause::InUseElsewhere(u) if u.id == id))
}

/// Finding 5: with `orphan_after = "1m"` the own-use window was the whole
/// minute, so a consumer's use could never count: two pods with separate
/// primaries, each application using its credential every 10 s, and one
/// pod's live credential was deleted at 1 minute of age.
#[tokio::test]
async fn at_orphan_after_one_minute_a_consumer_using_its_credential_every_10s_keeps_it() {
    let h = Harness::new(Seed::Demo).await;
    let (a, b) = (
        h.engine(&pod(&h, "a", "orphan_after = \"1m\"")),
        h.engine(&pod(&h, "b", "orphan_after = \"1m\"")),
    );
    ok(&h.pass(&a).await);
    ok(&h.pass(&b).await);
    let (pa, pb) = (read(&h, "a", "etl.json"), read(&h, "b", "etl.json"));
    let ids = [&pa, &pb].map(|p| p["service_account_id"].as_u64().unwrap());
    // Each pod's application uses its credential every 10 s; both rotators
    // pass every 10 s, for three minutes.
    for _ in 0..18 {
        h.clock.advance(Duration::seconds(10));
        h.client_for(&pa).me().await.unwrap();
        h.client_for(&pb).me().await.unwrap();
        for engine in [&a, &b] {
            let r = h.pass(engine).await;
            assert!(r.deleted.is_empty(), "{:?}", r.deleted);
        }
    }
    for id in ids {
        assert!(h.sim.account(id).is_some(), "account {id} was deleted while in use");
    }
    let r = h.pass(&a).await;
    assert!(
        in_use_elsewhere(&r, ids[1]),
        "the other pod's account is reported: {:?}",
        r.errors
    );
}

/// Finding 4: with the rotator's clock 10 minutes off Mixpanel's, a
/// retiring account under `delete_when_idle` used 6 s earlier was deleted,
/// and an unexplained account used 10 s before the pass was deleted as
/// never used. Now Mixpanel's clock is read from its answers' `Date`: 10
/// minutes apart, nothing judged by `last_used` is deleted, and the pass
/// says why; 90 s apart, the timestamps are read in our time.
#[tokio::test]
async fn with_mixpanel_10_minutes_behind_or_ahead_nothing_in_use_is_deleted() {
    for minutes in [-10i64, 10] {
        let h = Harness::new(Seed::Demo).await;
        let metrics = mixpanel_rotator::metrics::Metrics::shared();
        let idle = "orphan_after = \"1m\"\ngrace = \"1h\"\ndelete_when_idle = \"10m\"\nmax_grace = \"1d\"";
        let a = h.engine(&pod(&h, "a", idle)).with_metrics(metrics.clone());
        let b = h.engine(&pod(&h, "b", idle));
        ok(&h.pass(&a).await);
        let first = read(&h, "a", "etl.json");
        ok(&h.force(&a, "etl", false).await);
        ok(&h.pass(&b).await);
        let other = read(&h, "b", "etl.json");
        h.sim.set_clock_skew(Duration::minutes(minutes));
        // Past grace: the predecessor (used 6 s ago) and pod b's account
        // (used 10 s ago, never published by pod a) are in use.
        h.clock.advance(Duration::hours(2));
        h.client_for(&other).me().await.unwrap();
        h.clock.advance(Duration::seconds(4));
        h.client_for(&first).me().await.unwrap();
        h.clock.advance(Duration::seconds(6));
        // The first answer after the jump shows it; once the answers agree
        // (7 of them), the offset itself is reported.
        for n in 0..10 {
            let r = h.pass(&a).await;
            assert!(r.deleted.is_empty(), "skew {minutes}m: {:?}", r.deleted);
            let said = |s: &str| r.warnings.iter().any(|w| w.contains(s) && w.contains("NTP"));
            assert!(said("(a clock jumped)") || n > 0, "skew {minutes}m: {:?}", r.warnings);
            assert!(
                said(&format!(
                    "Mixpanel's clock is 10m {} this host's",
                    if minutes < 0 { "behind" } else { "ahead of" }
                )) || n < 7,
                "skew {minutes}m, pass {n}: {:?}",
                r.warnings
            );
        }
        let text = metrics.render();
        let offset: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("mixpanel_rotator_clock_offset_seconds{} "))
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap();
        assert!((offset - (minutes * 60) as f64).abs() <= 1.0, "{offset}");
        for p in [&first, &other] {
            h.client_for(p).me().await.unwrap();
        }
        // The predecessor still goes at `max_grace`, whatever the clocks say.
        h.clock.advance(Duration::days(1));
        let r = h.pass(&a).await;
        assert!(
            r.deleted
                .iter()
                .any(|d| Some(d.id) == first["service_account_id"].as_u64()),
            "skew {minutes}m: {:?}",
            r.deleted
        );
        assert!(h.sim.account(other["service_account_id"].as_u64().unwrap()).is_some());
        h.assert_no_secret_leaked(&[&r]);
    }
}

/// Within the bound (90 s), the offset is taken off Mixpanel's timestamps:
/// a use 6 s ago by Mixpanel's clock is a use 6 s ago, not 96 s.
#[tokio::test]
async fn a_small_clock_offset_is_corrected_not_refused() {
    let h = Harness::new(Seed::Demo).await;
    let a = h.engine(&pod(&h, "a", "orphan_after = \"1m\"\ngrace = \"1h\""));
    let b = h.engine(&pod(&h, "b", "orphan_after = \"1m\"\ngrace = \"1h\""));
    h.sim.set_clock_skew(Duration::seconds(-90));
    ok(&h.pass(&b).await);
    let other = read(&h, "b", "etl.json");
    ok(&h.pass(&a).await);
    h.clock.advance(Duration::minutes(59));
    h.client_for(&other).me().await.unwrap();
    h.clock.advance(Duration::seconds(6));
    let r = h.pass(&a).await;
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let id = other["service_account_id"].as_u64().unwrap();
    assert!(in_use_elsewhere(&r, id), "{:?}", r.errors);
    let u = r.plan.in_use.iter().find(|u| u.id == id).unwrap();
    // (to the second: `Date` has no finer resolution)
    let off = u.last_used - (h.clock_now() - Duration::seconds(6));
    assert!(off.abs() <= Duration::seconds(1), "read in our time: {off}");
    // An hour after that use, it is idle and goes.
    h.clock.advance(Duration::minutes(61));
    let r = h.pass(&a).await;
    assert!(r.deleted.iter().any(|d| d.id == id), "{:?}", r.deleted);
}
