//! `retire NAME [--yes]`: decommission an integration.

use std::io::Write as _;
use std::path::Path;

use super::setup::{engine, known, load_policy};
use crate::clock::SharedClock;
use crate::exit::Exit;

/// Shows (or, with `yes`, does) the retirement of `name`.
pub(super) async fn retire(config: &Path, clock: SharedClock, name: &str, yes: bool) -> Result<Exit, Exit> {
    let policy = load_policy(config)?;
    known(
        &policy,
        name,
        " (retire needs its sink and path: put it back to retire it)",
    )?;
    if policy.integration(name).is_some_and(|i| i.is_self()) {
        eprintln!(
            "error: `{name}` is the rotator's own credential: it is not retired (its accounts are the ones this rotator acts as). To stop rotating it, remove `[mixpanel.self]` and set `[mixpanel] username`/`secret` to the account in its payload; delete the others in Mixpanel's settings"
        );
        return Err(Exit::Usage);
    }
    let engine = engine(policy, clock)?;
    let Some(i) = engine.policy().integration(name).cloned() else {
        return Err(Exit::Usage);
    };
    let plan = match engine.retire_plan(&i).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(Exit::Failed);
        }
    };
    if let Some(listen) = engine.policy().listen
        && let Some(daemon) = crate::server::daemon_answers(listen).await
    {
        eprintln!(
            "warning: a daemon answers on {daemon} (`server.listen`): if its policy still has `{name}`, its next pass bootstraps `{name}` again. Remove `{name}` from that policy and reload the daemon first, then retire with a copy of the policy that still has it."
        );
    }
    let mut out = std::io::stdout().lock();
    if !yes {
        let _ = write!(out, "{}", crate::render::retire_text(&plan, None));
        // A check that fails now would stop `--yes`: say so in the status too.
        return Ok(Exit::from_failure(plan.checks.iter().any(|c| !c.ok)));
    }
    let done = engine.retire(&i, plan.clone()).await;
    let _ = write!(out, "{}", crate::render::retire_text(&plan, Some(&done)));
    Ok(Exit::from_failure(!done.errors.is_empty()))
}
