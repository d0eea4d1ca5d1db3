//! The command line: argument parsing and the commands. Output is rendered
//! by [`crate::render`]; exit codes are [`Exit`] (0 success, 1 a rotation or
//! check failed, 2 bad usage or policy).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod args;
mod logging;
mod manual;
mod passes;
mod retire;
mod setup;
mod simulator;
mod validate;

pub(crate) use args::{Output, OutputArgs};
pub use logging::{LogFormat, init_tracing};

use crate::clock::{SharedClock, SystemClock};
use crate::exit::Exit;
use crate::policy::config_path;
use crate::values::HumanDuration;
use passes::Mode;
use validate::Depth;

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
    /// (for the commands that read a policy; before or after the command)
    #[arg(short = 'c', long, global = true, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `mixpanel_rotator=debug` (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info", value_name = "FILTER")]
    pub log_level: String,
    #[command(subcommand)]
    /// The command to run.
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: reconcile passes driven by each integration's deadlines
    /// (schedule, expiry, grace, orphans, retries, a periodic resync). SIGHUP
    /// reloads the policy; SIGTERM/SIGINT finish the step in flight and exit.
    Run {
        /// How long to wait for the step in flight on SIGTERM/SIGINT (at most `1h`).
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = args::at_most_an_hour)]
        shutdown_timeout: HumanDuration,
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
        #[expect(missing_docs, reason = "flattened: `-o` documents itself")]
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show what a pass would do now, without changing anything.
    Plan {
        #[expect(missing_docs, reason = "flattened: `-o` documents itself")]
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Rotate the named integrations now (for a leaked or suspect credential).
    RotateNow {
        /// Integrations to rotate.
        #[arg(value_name = "NAME", required_unless_present_any = ["all", "own"], conflicts_with = "all")]
        names: Vec<String>,
        /// Rotate every integration (not the rotator's own credential: `--self`).
        #[arg(long)]
        all: bool,
        /// Rotate the rotator's own credential (`[mixpanel.self]`), with or
        /// without integrations.
        #[arg(long = "self", id = "own")]
        own: bool,
        /// Delete the old account as soon as the new one is published, without waiting for `grace`.
        #[arg(long)]
        revoke_old: bool,
        /// Show the plan of this rotation (the account it would create, the
        /// memberships, what it would delete) and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[expect(missing_docs, reason = "flattened: `-o` documents itself")]
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run one reconcile pass over every integration, then exit (cron job, systemd timer).
    Reconcile {
        #[expect(missing_docs, reason = "flattened: `-o` documents itself")]
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show each integration's current account, expiry, next rotation and pending deletions.
    Status {
        /// The same as `-o json`.
        #[arg(long, hide = true)]
        json: bool,
        #[expect(missing_docs, reason = "flattened: `-o` documents itself")]
        #[command(flatten)]
        output: OutputArgs,
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
        /// Grace period of the demo (how long the old account is kept; at most `1h`).
        #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = args::at_most_an_hour)]
        grace: HumanDuration,
    },
    /// Serve the Mixpanel SIMULATOR (not Mixpanel): an in-memory organization
    /// to try a policy against without touching a real one.
    Simulator(simulator::SimulatorArgs),
}

impl Command {
    /// Whether the command reads a policy (`--config` means something).
    fn reads_policy(&self) -> bool {
        !matches!(
            self,
            Command::Demo { .. } | Command::Simulator(_) | Command::Completions { .. } | Command::Man { .. }
        )
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Exit {
    let clock: SharedClock = Arc::new(SystemClock);
    if cli.config.is_some() && !cli.command.reads_policy() {
        eprintln!("error: `demo`, `simulator`, `completions` and `man` read no policy: --config does nothing there");
        return Exit::Usage;
    }
    let config = config_path(cli.config.as_deref());
    let cmd = || <Cli as clap::CommandFactory>::command();
    let result = match cli.command {
        Command::Demo { grace } => return crate::demo::run(grace).await,
        Command::Completions { shell } => return manual::completions(cmd(), shell),
        Command::Man { dir } => return manual::man_page(cmd(), dir.as_deref()),
        Command::Simulator(args) => return simulator::simulator(args).await,
        Command::Run { shutdown_timeout } => return daemon(config, shutdown_timeout).await,
        Command::Validate {
            online,
            policy_only,
            accept_unexplained,
            output,
        } => {
            let depth = Depth::of(online, policy_only);
            let json = output.output == Output::Json;
            validate::validate(&config, depth, accept_unexplained, json, clock).await
        }
        Command::Plan { output } => passes::passes(&config, clock, Mode::Plan, output.output).await,
        Command::RotateNow {
            names,
            all,
            own,
            revoke_old,
            dry_run,
            output,
        } => {
            let mode = Mode::RotateNow {
                names,
                all,
                own,
                revoke_old,
                dry_run,
            };
            passes::passes(&config, clock, mode, output.output).await
        }
        Command::Reconcile { output } => passes::passes(&config, clock, Mode::Reconcile, output.output).await,
        Command::Retire { name, yes } => retire::retire(&config, clock, &name, yes).await,
        Command::Status { json, output } => {
            let output = if json { Output::Json } else { output.output };
            passes::passes(&config, clock, Mode::Status, output).await
        }
    };
    result.unwrap_or_else(|e| e)
}

/// `run`: the daemon, until SIGTERM/SIGINT.
async fn daemon(config: PathBuf, shutdown_timeout: HumanDuration) -> Exit {
    let (control, _signals) = match crate::daemon::signals::install() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return Exit::Failed;
        }
    };
    crate::daemon::Daemon::new(config, Arc::new(SystemClock))
        .shutdown_timeout(shutdown_timeout.to_std())
        .notifier(crate::notify::Notifier::from_env())
        .run(control)
        .await
}
