//! `plan`, `rotate-now`, `reconcile` and `status`: one pass of the engine
//! with the command's options, its reports streamed as text or written
//! whole as JSON or the status table.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;

use super::args::Output;
use super::setup::{engine, known, load_policy};
use crate::clock::SharedClock;
use crate::exit::Exit;
use crate::render::{outcome_text, plan_text, status_table};
use crate::rotation::{Engine, PassOptions, Report};

/// Which of the pass commands runs.
pub(super) enum Mode {
    Plan,
    Reconcile,
    RotateNow {
        names: Vec<String>,
        all: bool,
        /// `--self`: the rotator's own credential.
        own: bool,
        revoke_old: bool,
        dry_run: bool,
    },
    Status,
}

impl Mode {
    /// The command's name in the JSON document.
    fn command(&self) -> &'static str {
        match self {
            Mode::Plan => "plan",
            Mode::Reconcile => "reconcile",
            Mode::RotateNow { .. } => "rotate-now",
            Mode::Status => "status",
        }
    }

    /// The pass's options for this command, its names checked against `policy`.
    fn options(&self, policy: &crate::policy::Policy) -> Result<PassOptions, Exit> {
        // The reports go to stdout: their warnings and errors are not logged
        // again on stderr (at debug only).
        let mut opts = PassOptions {
            log_reported: false,
            ..PassOptions::default()
        };
        match self {
            Mode::Plan | Mode::Status => opts.dry_run = true,
            Mode::Reconcile => {}
            Mode::RotateNow {
                names,
                all,
                own,
                revoke_old,
                dry_run,
            } => {
                opts.dry_run = *dry_run;
                let mut selected: BTreeSet<String> = if *all {
                    policy
                        .integrations
                        .iter()
                        .filter(|i| !i.is_self())
                        .map(|i| i.name.clone())
                        .collect()
                } else {
                    for n in names {
                        known(policy, n, "")?;
                    }
                    names.iter().cloned().collect()
                };
                if *own {
                    if policy.own().is_none() {
                        eprintln!(
                            "error: --self: the policy has no `[mixpanel.self]`, so the rotator does not rotate its own credential (README, \"The rotator's own credential\")"
                        );
                        return Err(Exit::Usage);
                    }
                    selected.insert(crate::policy::SELF_NAME.to_string());
                }
                opts.force = selected.clone();
                opts.only = Some(selected);
                opts.revoke_old = *revoke_old;
            }
        }
        Ok(opts)
    }
}

/// Runs one pass of `mode` over the policy at `config`.
pub(super) async fn passes(config: &Path, clock: SharedClock, mode: Mode, output: Output) -> Result<Exit, Exit> {
    let policy = load_policy(config)?;
    let opts = mode.options(&policy)?;
    let engine = engine(policy, clock.clone())?;
    let exit = if output == Output::Text && !matches!(mode, Mode::Status) {
        let plan = matches!(mode, Mode::Plan | Mode::RotateNow { dry_run: true, .. });
        streamed(&engine, &opts, plan).await
    } else {
        reports_out(&engine, &opts, &mode, output, clock.now()).await
    };
    if !opts.dry_run {
        tell_daemon(&engine, &opts).await;
    }
    Ok(exit)
}

/// A daemon beside this process re-reads what this pass changed now, not
/// at its next resync.
async fn tell_daemon(engine: &Engine, opts: &PassOptions) {
    let Some(listen) = engine.policy().listen else {
        return;
    };
    let names: Vec<&str> = engine
        .policy()
        .integrations
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| opts.only.as_ref().is_none_or(|o| o.contains(*n)))
        .collect();
    let token = engine.policy().resync_token.as_ref().and_then(|t| {
        t.resolve("server.resync_token")
            .map_err(|e| tracing::warn!("Cannot tell the daemon beside this process to re-read: {e}"))
            .ok()
    });
    crate::server::tell_daemon(listen, token.as_ref(), &names).await;
}

/// A pass's reports, whole, as JSON or as the status table.
async fn reports_out(
    engine: &Engine,
    opts: &PassOptions,
    mode: &Mode,
    output: Output,
    now: chrono::DateTime<chrono::Utc>,
) -> Exit {
    let mut reports = engine.pass(opts).await;
    if matches!(mode, Mode::Status) {
        // Status also says whether each sink would accept the next publish.
        for r in &mut reports {
            if let Some(e) = engine.sink_check(&r.integration).await {
                r.errors.push(e);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        let doc = crate::render::json_document(mode.command(), &reports, now);
        let _ = serde_json::to_writer_pretty(&mut out, &doc);
        let _ = writeln!(out);
    } else {
        let _ = write!(out, "{}", status_table(&reports));
    }
    Exit::from_failure(reports.iter().any(Report::failed))
}

/// The text of a pass's reports, each integration's lines as soon as it is
/// done (and those before it): nothing waits for the end of a pass over
/// 10,000 integrations, nor holds its reports. Buffered, flushed at most
/// every 100 ms: no write per integration.
async fn streamed(engine: &Engine, opts: &PassOptions, plan: bool) -> Exit {
    let mut failed = false;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut flushed = std::time::Instant::now();
    engine
        .pass_each(opts, &mut |r| {
            failed |= r.failed();
            let text = if plan { plan_text(&[r]) } else { outcome_text(&[r]) };
            let _ = out.write_all(text.as_bytes());
            if flushed.elapsed() >= std::time::Duration::from_millis(100) {
                let _ = out.flush();
                flushed = std::time::Instant::now();
            }
        })
        .await;
    if plan {
        let _ = writeln!(out, "{}", crate::render::PLAN_ONLY);
    }
    let _ = out.flush();
    Exit::from_failure(failed)
}
