//! `mixpanel-rotator`: parse the command line, set up logging, run, map the
//! outcome to an exit code (0 ok, 1 a rotation or check failed, 2 usage/policy).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::process::ExitCode;

use clap::Parser as _;
use mixpanel_rotator::cli::{self, Cli};
use mixpanel_rotator::exit::Exit;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage as u8
            } else {
                Exit::Ok as u8
            });
        }
    };
    // The demo explains each step itself, its warnings included (on
    // stdout); its logs would only repeat them.
    let level = match cli.command {
        cli::Command::Demo { .. } if cli.log_level == "info" => "error",
        _ => cli.log_level.as_str(),
    };
    cli::init_tracing(cli.log_format, level);
    // Only in test builds (the `failpoints` feature); nothing otherwise.
    mixpanel_rotator::failpoint::arm_from_env();
    // Few threads whatever the machine and the number of integrations: the
    // work is waiting on the network, and sink reads queue for the blocking
    // pool (at most 8 of them). A one-shot command runs on one thread (no
    // hand-offs between workers: measured 20% less CPU for a rotation);
    // the daemon and the simulator get up to 4 workers.
    let long_running = matches!(cli.command, cli::Command::Run { .. } | cli::Command::Simulator { .. });
    let mut builder = if long_running {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = match builder.max_blocking_threads(8).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    let exit = rt.block_on(cli::run(cli));
    // Never wait for a blocking task that cannot end (a file lock another
    // process holds, a stuck filesystem): the command's answer is known,
    // and `--shutdown-timeout` must be a bound, not a wish.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(exit as u8)
}
