//! The online checks of one integration: its sink and mirrors, its
//! explicit projects, and whether a pass could work on it.

use super::checks::Checks;
use crate::rotation::{Engine, Request};

/// `validate --online` for one integration: its sink and mirrors, its
/// explicit projects, whether a pass could rotate it.
pub(super) async fn integration_checks(
    engine: &Engine,
    i: &crate::policy::Integration,
    (me, accounts): (Option<&crate::mixpanel::Me>, Option<&[crate::mixpanel::ServiceAccount]>),
    accept_unexplained: bool,
    checks: &mut Checks,
) {
    if let Some(sink) = engine.sink(&i.sink) {
        let health = sink.healthcheck(&i.path).await.map_err(|e| e.to_string());
        checks.check(&format!("{}: {}", i.name, sink.describe()), health);
    }
    for m in &i.mirrors {
        let Some(mirror) = engine.sink(&m.sink) else { continue };
        let health = mirror.healthcheck(&m.path).await.map_err(|e| e.to_string());
        checks.check(
            &format!("{}: mirror {} path `{}`", i.name, mirror.describe(), m.path),
            health,
        );
    }
    if let (Some(me), crate::policy::ProjectsSpec::Explicit(grants)) = (me, &i.projects) {
        checks.check(
            &format!("{}: projects", i.name),
            explicit_projects(engine.client(), me, i, grants),
        );
    }
    if let Some(accounts) = accounts {
        let (readiness, elsewhere) = readiness(engine, i, accounts).await;
        checks.check(&format!("{}: rotation readiness", i.name), readiness);
        let what = format!("{}: accounts other rotators may publish", i.name);
        for w in elsewhere {
            if accept_unexplained {
                checks.warn(&what, &w);
            } else {
                checks.check(
                    &what,
                    Err(format!(
                        "{w} (if they are this rotator's own leftovers: `validate --online --accept-unexplained`)"
                    )),
                );
            }
        }
    }
}

/// Whether every project an integration names exists and is visible to the
/// rotator's account (a rotation into an unseen project fails after create).
fn explicit_projects(
    client: &crate::mixpanel::Client,
    me: &crate::mixpanel::Me,
    i: &crate::policy::Integration,
    grants: &[crate::mixpanel::ProjectGrant],
) -> Result<String, String> {
    let visible = me.project_ids(client.organization_id());
    let unseen: Vec<String> = grants
        .iter()
        .filter(|g| !visible.contains(&g.id))
        .map(|g| g.id.to_string())
        .collect();
    if unseen.is_empty() {
        return Ok(format!("{} project(s), each visible to the rotator", grants.len()));
    }
    Err(format!(
        "`{}` names project(s) {} that do not exist in organization {} or are not visible to the rotator's account: fix the ids, or give the rotator's account access to them",
        i.key("projects"),
        unseen.join(", "),
        client.organization_id()
    ))
}

/// Whether a pass could work on `i`: the same observation and plan as a
/// pass; and the unexplained accounts it would delete that another
/// rotator may publish.
async fn readiness(
    engine: &Engine,
    i: &crate::policy::Integration,
    accounts: &[crate::mixpanel::ServiceAccount],
) -> (Result<String, String>, Vec<String>) {
    let obs = match engine.observe(i, accounts).await {
        Ok(o) => o,
        Err(e) => return (Err(e.message()), vec![]),
    };
    let plan = engine.decide(i, &obs, Request::default());
    let elsewhere = crate::rotation::engine::elsewhere_warnings(i, &obs, &plan, engine.now());
    let readiness = match plan.blocked {
        Some(b) => Err(b.to_string()),
        None if obs.published.is_some() => Ok("credential published".into()),
        None => Ok("nothing published yet; the first pass bootstraps it".into()),
    };
    (readiness, elsewhere)
}
