//! The command line: argument parsing and the commands. Output is rendered
//! by [`crate::render`]; exit codes are [`Exit`] (0 success, 1 a rotation or
//! check failed, 2 bad usage or policy).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::clock::{SharedClock, SystemClock};
use crate::exit::Exit;
use crate::policy::{Policy, config_path};
use crate::render::{outcome_text, plan_text, status_table};
use crate::rotation::{Engine, PassOptions, Report, Request};
use crate::simulator::Seed;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

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

/// Sets up logging to stderr.
pub fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    // vaultrs/rustify log every API error at ERROR, an expected CAS conflict
    // or a not-yet-published path included; the vault sink reports every
    // failure itself, so they are off by default (RUST_LOG overrides it).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(format!("rustify=off,vaultrs=off,{level}")).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        // journald stamps each line itself and reads the priority from a
        // `<N>` prefix (sd-daemon(3)): no second timestamp, levels as priorities.
        LogFormat::Text if stderr_is_journal() => builder
            .event_format(Journald(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .with_ansi(false),
            ))
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` names its
/// device and inode (systemd.exec(5)); a redirected stderr does not match.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// A log line for journald: `<priority>` then the line without time or level.
struct Journald<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", journal_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// syslog priorities: err, warning, info, debug.
fn journal_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's heap to the
    // system; it takes no pointer and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn load_policy(cli: &Cli) -> Result<Policy, Exit> {
    let path = config_path(cli.config());
    let loaded = Policy::load(&path);
    release_freed_memory();
    loaded.map_err(|e| {
        eprintln!("error: policy {}:", path.display());
        for e in e.all() {
            eprintln!("  {e}");
        }
        Exit::Usage
    })
}

fn engine(policy: Policy, clock: SharedClock) -> Result<Engine, Exit> {
    Engine::from_policy(Arc::new(policy), clock).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })
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
            validate(&cli, depth, *accept_unexplained, output.output, clock).await
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
    let shape = Shape {
        published: *published_shape,
        latency: (*latency, *jitter),
    };
    simulator(*listen, *seed, *allow_non_loopback, admin_secret_file.clone(), shape).await
}

/// `retire NAME [--yes]`.
async fn retire(cli: &Cli, clock: SharedClock, name: &str, yes: bool) -> Result<Exit, Exit> {
    let policy = load_policy(cli)?;
    if policy.integration(name).is_none() {
        let known: Vec<&str> = policy.integrations.iter().map(|i| i.name.as_str()).collect();
        eprintln!(
            "error: no integration `{name}` in the policy (retire needs its sink and path: put it back to retire it); known: {}",
            known.join(", ")
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
                    if policy.integration(n).is_none() {
                        let known: Vec<&str> = policy.integrations.iter().map(|i| i.name.as_str()).collect();
                        eprintln!("error: no integration `{n}` in the policy; known: {}", known.join(", "));
                        return Err(Exit::Usage);
                    }
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

/// The checks of `validate`: `ok`, `WARN` or `FAIL`, what, and the detail;
/// printed as they come (text), or kept for the JSON document.
struct Checks {
    failed: bool,
    json: bool,
    entries: Vec<serde_json::Value>,
}

impl Checks {
    fn new(output: Output) -> Self {
        Self {
            failed: false,
            json: output == Output::Json,
            entries: vec![],
        }
    }

    fn record(&mut self, status: &str, what: &str, detail: &str) {
        if self.json {
            self.entries
                .push(serde_json::json!({ "name": what, "status": status, "detail": detail }));
        } else {
            let tag = match status {
                "ok" => "ok  ",
                "warn" => "WARN",
                _ => "FAIL",
            };
            println!("{tag}  {what}: {detail}");
        }
    }

    /// Passed.
    fn ok(&mut self, what: &str, detail: &str) {
        self.record("ok", what, detail);
    }

    /// Not a failure, but something to act on soon.
    fn warn(&mut self, what: &str, detail: &str) {
        self.record("warn", what, detail);
    }

    fn check(&mut self, what: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => self.ok(what, &detail),
            Err(e) => {
                self.failed = true;
                self.record("fail", what, &e);
            }
        }
    }

    /// The JSON document (`docs/output.schema.json`), when asked for.
    fn finish(self, path: &std::path::Path, online: bool, at: chrono::DateTime<chrono::Utc>) -> Exit {
        if self.json {
            let doc = serde_json::json!({
                "version": 1,
                "command": "validate",
                "at": crate::text::rfc3339(at),
                "ok": !self.failed,
                "policy": path.display().to_string(),
                "online": online,
                "checks": self.entries,
            });
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut out, &doc);
            let _ = writeln!(out);
        }
        Exit::from_failure(self.failed)
    }
}

/// How far `validate` goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// The policy alone (`--policy-only`).
    PolicyOnly,
    /// The policy and every secret it refers to (the default).
    Secrets,
    /// All that, and Mixpanel and every sink (`--online`).
    Online,
}

impl Depth {
    fn of(online: bool, policy_only: bool) -> Self {
        match (online, policy_only) {
            (true, _) => Depth::Online,
            (false, true) => Depth::PolicyOnly,
            (false, false) => Depth::Secrets,
        }
    }
}

async fn validate(
    cli: &Cli,
    depth: Depth,
    accept_unexplained: bool,
    output: Output,
    clock: SharedClock,
) -> Result<Exit, Exit> {
    let online = depth == Depth::Online;
    let path = config_path(cli.config());
    let policy = load_policy(cli)?;
    let mut checks = Checks::new(output);
    let summary = format!(
        "OK ({} integration(s), {} sink(s), namespace `{}`)",
        policy.integrations.len(),
        policy.sinks.len(),
        policy.namespace
    );
    if checks.json {
        checks.ok(&format!("policy {}", path.display()), &summary);
    } else {
        println!("policy {}: {summary}", path.display());
    }
    if depth == Depth::PolicyOnly {
        let detail = "not read (--policy-only): `validate` without it reads them";
        if checks.json {
            checks.warn("secrets", detail);
        } else {
            println!("secrets: {detail}");
        }
    } else {
        check_secrets(&path, &policy, &mut checks)?;
    }
    if !online {
        return Ok(checks.finish(&path, online, clock.now()));
    }
    let engine = engine(policy, clock.clone())?;
    let client = engine.client();
    let me = client.me().await.map_err(|e| e.to_string());
    checks.check(
        &format!("mixpanel {}", client.base_url()),
        me.clone().and_then(|me| rotator_role(client, &me)),
    );
    if let Ok(me) = &me {
        checks.check("mixpanel regions", regions(client, me));
    }
    if let Some(audit) = &engine.policy().audit_path {
        let writable = engine.audit_check();
        checks.check(&format!("audit {}", audit.display()), writable);
    }
    let accounts = client.list_accounts().await;
    checks.check(
        "mixpanel list service accounts",
        accounts
            .as_ref()
            .map(|a| format!("{} service account(s) listed", a.len()))
            .map_err(|e| e.to_string()),
    );
    if let Ok(accounts) = &accounts {
        own_expiry(&engine, accounts, clock.now(), &mut checks);
    }
    for i in &engine.policy().integrations {
        let seen = (me.as_ref().ok(), accounts.as_deref().ok());
        integration_checks(&engine, i, seen, accept_unexplained, &mut checks).await;
    }
    Ok(checks.finish(&path, online, clock.now()))
}

/// When the rotator's own account expires: it never rotates itself, so a
/// person must replace it in time (README, "The rotator's own credential").
fn own_expiry(
    engine: &Engine,
    accounts: &[crate::mixpanel::ServiceAccount],
    now: chrono::DateTime<chrono::Utc>,
    checks: &mut Checks,
) {
    let me = &engine.policy().mixpanel.username;
    let what = "the rotator's own account";
    let Some(own) = accounts.iter().find(|a| &a.username == me) else {
        checks.warn(
            what,
            &format!(
                "`{me}` is not in the list of service accounts (a user, not a service account?): its expiry is unknown"
            ),
        );
        return;
    };
    match own.expires {
        None => checks.ok(
            what,
            &format!("`{me}` does not expire (give it an expiry, and replace it before then)"),
        ),
        Some(t) if t <= crate::clock::after(now, chrono::Duration::days(30)) => checks.warn(
            what,
            &format!(
                "`{me}` expires at {} ({}): create its replacement now (README, \"The rotator's own credential\")",
                crate::text::rfc3339(t),
                crate::text::relative(t, now)
            ),
        ),
        Some(t) => checks.ok(what, &format!("`{me}` expires at {}", crate::text::rfc3339(t))),
    }
}

/// `validate --online` for one integration: its sink and mirrors, its
/// explicit projects, whether a pass could rotate it.
async fn integration_checks(
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

/// Reads every secret the policy refers to (present, readable, not empty,
/// bounded), without printing any: the first run should not be the first
/// read. An error names the key, as policy errors do.
fn check_secrets(path: &std::path::Path, policy: &Policy, checks: &mut Checks) -> Result<(), Exit> {
    let refs = policy.secret_refs();
    let errors: Vec<_> = refs.iter().filter_map(|(key, r)| r.resolve(key).err()).collect();
    if errors.is_empty() {
        let detail = format!("{} reference(s) resolve (present, readable, not empty)", refs.len());
        if checks.json {
            checks.ok("secrets", &detail);
        } else {
            println!("secrets: {detail}");
        }
        return Ok(());
    }
    eprintln!("error: policy {}:", path.display());
    for e in &errors {
        eprintln!("  {e}");
    }
    Err(Exit::Usage)
}

/// Whether the rotator's own account may create and delete service accounts.
fn rotator_role(client: &crate::mixpanel::Client, me: &crate::mixpanel::Me) -> Result<String, String> {
    let org = client.organization_id();
    let Some(o) = me.organization(org) else {
        return Err(format!(
            "the rotator's account does not belong to organization {org}: check `mixpanel.organization_id`"
        ));
    };
    match &o.role {
        Some(r) if r.can_manage_accounts() => Ok(format!("authenticated; role `{r}` in organization {org}")),
        Some(r) => Err(format!(
            "the rotator's account has role `{r}` in organization {org}; it must be an organization admin or owner to create and delete service accounts"
        )),
        None => Err(format!(
            "Mixpanel reports no role for the rotator's account in organization {org}; it must be an organization admin or owner to create and delete service accounts"
        )),
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

/// The regions the organization's projects are in, and where their calls go.
fn regions(client: &crate::mixpanel::Client, me: &crate::mixpanel::Me) -> Result<String, String> {
    let mut by_domain: std::collections::BTreeMap<Option<String>, usize> = std::collections::BTreeMap::new();
    for (_, d) in me.projects_of(client.organization_id()) {
        let n = by_domain.entry(d).or_default();
        *n = n.saturating_add(1);
    }
    if by_domain.is_empty() {
        return Err("GET /me lists no project of the organization: copying memberships is impossible".into());
    }
    let mut parts = vec![];
    for (domain, n) in by_domain {
        let name = domain.clone().unwrap_or_else(|| "(no domain)".into());
        let base = client.project_base(domain.as_deref()).map_err(|e| e.to_string())?;
        parts.push(format!("{name}: {n} project(s), at {base}"));
    }
    Ok(parts.join("; "))
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

/// How the simulator shapes its answers.
#[derive(Debug, Clone, Copy)]
struct Shape {
    published: bool,
    /// Base delay and jitter of every answer.
    latency: (std::time::Duration, std::time::Duration),
}

async fn simulator(
    listen: SocketAddr,
    seed: Seed,
    allow_non_loopback: bool,
    secret_file: Option<PathBuf>,
    shape: Shape,
) -> Exit {
    if !listen.ip().is_loopback() && !allow_non_loopback {
        eprintln!(
            "error: refusing to serve the simulator on {listen}, which is not a loopback address: anyone who reaches it could use it. Pass --allow-non-loopback if you mean it."
        );
        return Exit::Usage;
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let sim = match crate::simulator::Simulator::start(seed, clock, listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return Exit::Failed;
        }
    };
    if shape.published {
        sim.set_quirks(crate::simulator::Quirks {
            published_shape: true,
            ..Default::default()
        });
    }
    sim.set_latency(shape.latency.0, shape.latency.1);
    let path = secret_file
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mixpanel-simulator-{}.secret", sim.addr().port())));
    let admin = sim.admin();
    if let Err(e) = crate::demo::write_secret_file(&path, &admin.secret) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return Exit::Failed;
    }
    println!("Mixpanel SIMULATOR (not Mixpanel: an in-memory organization, lost on exit)");
    println!("listening on {}", sim.base_url());
    for (domain, url) in sim.region_urls() {
        println!("region {domain} on {url}");
    }
    println!();
    println!("Point a policy at it:");
    println!();
    println!("[mixpanel]");
    println!("base_url = \"{}\"", sim.base_url());
    println!("organization_id = {}", sim.organization_id());
    println!("username = \"{}\"", admin.username);
    println!("secret = {{ file = \"{}\" }}", path.display());
    let regions = sim.region_urls_toml();
    if !regions.is_empty() {
        println!("{regions}");
    }
    println!();
    if seed == Seed::Demo {
        for a in sim.accounts() {
            if a.username.starts_with("etl-legacy") {
                println!("An account to adopt: adopt = {}   # {}", a.id, a.username);
            }
        }
        println!("Projects: 101 (Web), 102 (Mobile), 103 (Warehouse)");
    }
    println!("Ctrl-C stops it.");
    // SIGINT or SIGTERM (a service manager's, `kill`'s): either way the
    // secret file goes with the organization it opened.
    stopped().await;
    let _ = std::fs::remove_file(&path);
    Exit::Ok
}

/// Returns at SIGINT or SIGTERM.
async fn stopped() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
