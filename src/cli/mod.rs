//! The command line: argument parsing and the commands. Output is rendered
//! by [`crate::render`]; exit codes are [`Exit`] (0 success, 1 a rotation or
//! check failed, 2 bad usage or policy).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

mod logging;
mod setup;
mod simulator;
mod validate;

use setup::engine;

pub use logging::{LogFormat, init_tracing};
pub use validate::{Check, CheckStatus};
use validate::{Depth, validate};

use crate::clock::{SharedClock, SystemClock};
use crate::exit::Exit;
use crate::policy::{Policy, config_path};
use crate::render::{outcome_text, plan_text, status_table};
use crate::rotation::{Engine, PassOptions, Report};
use crate::simulator::Seed;

/// Rotates Mixpanel service-account credentials: creates a fresh expiring
/// account with the same project memberships, proves it works, publishes it
/// to a sink, and deletes the old account after a grace period.
#[derive(Debug, Parser)]
#[command(
    name = "mixpanel-rotator",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("MIXPANEL_ROTATOR_COMMIT"), ")"),
    max_term_width = 100
)]
pub struct Cli {
    /// Policy file [default: $MIXPANEL_ROTATOR_CONFIG, else /etc/mixpanel-rotator/policy.toml]
    /// (also accepted after the command, by the commands that read a policy)
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `mixpanel_rotator=debug` (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info", value_name = "FILTER")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// The versioned JSON document of docs/output.schema.json.
    Json,
}

/// `-o, --output` of the commands that print results.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// Output format: text, or the versioned JSON document (docs/output.schema.json).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `-c, --config` of the commands that read a policy.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// Policy file [default: $MIXPANEL_ROTATOR_CONFIG, else /etc/mixpanel-rotator/policy.toml]
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl Cli {
    /// The policy file named on the command line, after the command or before it.
    pub fn config(&self) -> Option<&std::path::Path> {
        let after = match &self.command {
            Command::Run { policy, .. }
            | Command::Validate { policy, .. }
            | Command::Plan { policy, .. }
            | Command::RotateNow { policy, .. }
            | Command::Reconcile { policy, .. }
            | Command::Status { policy, .. }
            | Command::Retire { policy, .. } => policy.config.as_deref(),
            Command::Demo { .. } | Command::Simulator { .. } | Command::Completions { .. } | Command::Man { .. } => {
                None
            }
        };
        after.or(self.config.as_deref())
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: reconcile passes driven by each integration's deadlines
    /// (schedule, expiry, grace, orphans, retries, a periodic resync). SIGHUP
    /// reloads the policy; SIGTERM/SIGINT finish the step in flight and exit.
    Run {
        /// How long to wait for the step in flight on SIGTERM/SIGINT.
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        shutdown_timeout: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Check the policy; with --online, also reach Mixpanel and every sink.
    Validate {
        /// Also check the credentials, the rotator's rights, the sinks and bootstrap readiness.
        #[arg(long)]
        online: bool,
        /// Check the policy alone, without reading the secrets it refers to
        /// (a policy linted in CI or before a deploy, away from its secrets).
        #[arg(long, conflicts_with = "online")]
        policy_only: bool,
        /// With --online: unexplained lineage accounts this policy would
        /// delete, that another rotator may publish, are this rotator's own
        /// leftovers (a warning, not a failure).
        #[arg(long, requires = "online")]
        accept_unexplained: bool,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Show what a pass would do now, without changing anything.
    Plan {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Rotate the named integrations now (for a leaked or suspect credential).
    RotateNow {
        /// Integrations to rotate.
        #[arg(value_name = "NAME", required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Rotate every integration.
        #[arg(long)]
        all: bool,
        /// Delete the old account as soon as the new one is published, without waiting for `grace`.
        #[arg(long)]
        revoke_old: bool,
        /// Show the plan of this rotation (the account it would create, the
        /// memberships, what it would delete) and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Run one reconcile pass over every integration, then exit (cron job, systemd timer).
    Reconcile {
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Show each integration's current account, expiry, next rotation and pending deletions.
    Status {
        /// The same as `-o json`.
        #[arg(long, hide = true)]
        json: bool,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Decommission an integration: show every account of its lineage, the
    /// account its `adopt` names and the payloads of its primary and
    /// mirrors; with --yes, delete and remove them (audited). Then remove
    /// it from the policy (a pass would bootstrap it again).
    Retire {
        /// The integration (it must still be in the policy).
        #[arg(value_name = "NAME")]
        name: String,
        /// Do it (without: show what would be done, change nothing).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Print a shell completion script (install it where your shell looks:
    /// README, "Install").
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff); with --dir, write it and one page per
    /// command (mixpanel-rotator-rotate-now.1, ...) into that directory.
    Man {
        /// Write every page into this directory (e.g. /usr/local/share/man/man1), not stdout.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// A guided rotation against the built-in Mixpanel simulator, in a temporary directory.
    Demo {
        /// Grace period of the demo (how long the old account is kept).
        #[arg(long, default_value = "5s", value_name = "DURATION")]
        grace: String,
    },
    /// Serve the Mixpanel SIMULATOR (not Mixpanel): an in-memory organization
    /// to try a policy against without touching a real one.
    Simulator {
        /// Address to listen on; loopback only unless --allow-non-loopback.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Initial organization.
        #[arg(long, value_enum, default_value_t = Seed::Demo)]
        seed: Seed,
        /// Allow listening on a non-loopback address (anyone who can reach it can use the simulator).
        #[arg(long)]
        allow_non_loopback: bool,
        /// Where to write the simulator admin account's secret (mode 0600).
        #[arg(long, value_name = "PATH")]
        admin_secret_file: Option<PathBuf>,
        /// Answer in the shape of Mixpanel's published OpenAPI description
        /// (RFC 3339 timestamps, unset fields left out) instead of the looser
        /// shape real Mixpanel sends: for checking conformance to that file.
        #[arg(long)]
        published_shape: bool,
        /// Delay every answer by this much (`20ms`, `0.5s`): a Mixpanel at a
        /// distance. Counted from the request's arrival, the simulator's own
        /// work included, and kept to within about 0.3 ms (a timer thread of
        /// its own, not tokio's millisecond timer).
        #[arg(long, value_name = "DURATION", value_parser = parse_delay, default_value = "0ms")]
        latency: std::time::Duration,
        /// Add a random extra delay of up to this much to every answer.
        #[arg(long, value_name = "DURATION", value_parser = parse_delay, default_value = "0ms")]
        jitter: std::time::Duration,
    },
}

impl Command {
    /// Whether the command reads a policy (`--config` means something).
    fn reads_policy(&self) -> bool {
        !matches!(
            self,
            Command::Demo { .. } | Command::Simulator { .. } | Command::Completions { .. } | Command::Man { .. }
        )
    }
}

/// `20ms`, `1.5s`.
fn parse_delay(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("`{s}`: write milliseconds (`20ms`) or seconds (`0.5s`)"));
    };
    let v: f64 = n.trim().parse().map_err(|_| format!("`{s}` is not a duration"))?;
    if !(0.0..=60.0).contains(&(v * unit)) {
        return Err(format!("`{s}`: from 0 to 60 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(v * unit))
}

/// The policy the command line names (see [`setup::load_policy`]).
fn load_policy(cli: &Cli) -> Result<Policy, Exit> {
    setup::load_policy(&config_path(cli.config()))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Exit {
    let clock: SharedClock = Arc::new(SystemClock);
    if cli.config.is_some() && !cli.command.reads_policy() {
        eprintln!("error: `demo`, `simulator`, `completions` and `man` read no policy: --config does nothing there");
        return Exit::Usage;
    }
    let result = match &cli.command {
        Command::Demo { grace } => return crate::demo::run(grace).await,
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man_page(dir.as_deref()),
        Command::Simulator { .. } => return simulator_command(&cli.command).await,
        Command::Run { shutdown_timeout, .. } => return daemon(&cli, shutdown_timeout).await,
        Command::Validate {
            online,
            policy_only,
            accept_unexplained,
            output,
            ..
        } => {
            let depth = Depth::of(*online, *policy_only);
            let path = config_path(cli.config());
            let json = output.output == Output::Json;
            validate(&path, depth, *accept_unexplained, json, clock).await
        }
        Command::Plan { output, .. } => passes(&cli, clock, Mode::Plan, output.output).await,
        Command::RotateNow {
            names,
            all,
            revoke_old,
            dry_run,
            output,
            ..
        } => {
            passes(
                &cli,
                clock,
                Mode::RotateNow {
                    names: names.clone(),
                    all: *all,
                    revoke_old: *revoke_old,
                    dry_run: *dry_run,
                },
                output.output,
            )
            .await
        }
        Command::Reconcile { output, .. } => passes(&cli, clock, Mode::Reconcile, output.output).await,
        Command::Retire { name, yes, .. } => retire(&cli, clock, name, *yes).await,
        Command::Status { json, output, .. } => {
            let output = if *json { Output::Json } else { output.output };
            passes(&cli, clock, Mode::Status, output).await
        }
    };
    result.unwrap_or_else(|e| e)
}

/// `simulator ...` (called with that command only; anything else is a usage error).
async fn simulator_command(command: &Command) -> Exit {
    let Command::Simulator {
        listen,
        seed,
        allow_non_loopback,
        admin_secret_file,
        published_shape,
        latency,
        jitter,
    } = command
    else {
        return Exit::Usage;
    };
    let shape = simulator::Shape {
        published: *published_shape,
        latency: (*latency, *jitter),
    };
    simulator::simulator(*listen, *seed, *allow_non_loopback, admin_secret_file.clone(), shape).await
}

/// `name` is an integration of `policy`; else the error, with the names
/// it has (and `why`, when the command has more to say).
fn known(policy: &Policy, name: &str, why: &str) -> Result<(), Exit> {
    if policy.integration(name).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = policy.integrations.iter().map(|i| i.name.as_str()).collect();
    eprintln!(
        "error: no integration `{name}` in the policy{why}; known: {}",
        known.join(", ")
    );
    Err(Exit::Usage)
}

/// `retire NAME [--yes]`.
async fn retire(cli: &Cli, clock: SharedClock, name: &str, yes: bool) -> Result<Exit, Exit> {
    let policy = load_policy(cli)?;
    known(
        &policy,
        name,
        " (retire needs its sink and path: put it back to retire it)",
    )?;
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

/// A completion script for `shell`, on stdout.
fn completions(shell: clap_complete::Shell) -> Exit {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "mixpanel-rotator", &mut std::io::stdout());
    Exit::Ok
}

/// The manual page, on stdout; or every page (the command's and one per
/// subcommand) into `dir`, their paths on stdout.
fn man_page(dir: Option<&Path>) -> Exit {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout().lock();
    let Some(dir) = dir else {
        return match clap_mangen::Man::new(cmd).render(&mut out) {
            Ok(()) => Exit::Ok,
            Err(e) => {
                eprintln!("error: cannot write the manual page: {e}");
                Exit::Failed
            }
        };
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!(
            "error: cannot create {} (`--dir`) for the manual pages: {e}; name a directory this user can write",
            dir.display()
        );
        return Exit::Failed;
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let pages = std::iter::once(cmd.clone()).chain(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        match clap_mangen::Man::new(page).generate_to(dir) {
            Ok(path) => {
                let _ = writeln!(out, "{}", path.display());
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write a manual page into {} (`--dir`): {e}",
                    dir.display()
                );
                return Exit::Failed;
            }
        }
    }
    Exit::Ok
}

enum Mode {
    Plan,
    Reconcile,
    RotateNow {
        names: Vec<String>,
        all: bool,
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
}

async fn passes(cli: &Cli, clock: SharedClock, mode: Mode, output: Output) -> Result<Exit, Exit> {
    // The reports go to stdout: their warnings and errors are not logged
    // again on stderr (at debug only).
    crate::rotation::log_reported(false);
    let policy = load_policy(cli)?;
    let mut opts = PassOptions::default();
    match &mode {
        Mode::Plan | Mode::Status => opts.dry_run = true,
        Mode::Reconcile => {}
        Mode::RotateNow {
            names,
            all,
            revoke_old,
            dry_run,
        } => {
            opts.dry_run = *dry_run;
            let selected: BTreeSet<String> = if *all {
                policy.integrations.iter().map(|i| i.name.clone()).collect()
            } else {
                for n in names {
                    known(&policy, n, "")?;
                }
                names.iter().cloned().collect()
            };
            opts.force = selected.clone();
            opts.only = Some(selected);
            opts.revoke_old = *revoke_old;
        }
    }
    let engine = engine(policy, clock.clone())?;
    let exit = if output == Output::Text && !matches!(mode, Mode::Status) {
        let plan = matches!(mode, Mode::Plan | Mode::RotateNow { dry_run: true, .. });
        streamed(&engine, &opts, plan).await
    } else {
        reports_out(&engine, &opts, &mode, output, clock.now()).await
    };
    if !opts.dry_run
        && let Some(listen) = engine.policy().listen
    {
        // A daemon beside this process re-reads what this changed now, not
        // at its next resync.
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
    Ok(exit)
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

async fn daemon(cli: &Cli, shutdown_timeout: &str) -> Exit {
    let timeout = match crate::values::HumanDuration::parse(shutdown_timeout) {
        Ok(d) if d.0 > chrono::Duration::hours(1) => {
            eprintln!("error: --shutdown-timeout is {d}: it may be at most `1h`");
            return Exit::Usage;
        }
        Ok(d) => d.to_std(),
        Err(e) => {
            eprintln!("error: --shutdown-timeout {e}");
            return Exit::Usage;
        }
    };
    let (control, _signals) = match crate::daemon::signals::install() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return Exit::Failed;
        }
    };
    crate::daemon::Daemon::new(config_path(cli.config()), Arc::new(SystemClock))
        .shutdown_timeout(timeout)
        .notifier(crate::notify::Notifier::from_env())
        .run(control)
        .await
}
