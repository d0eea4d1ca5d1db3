//! `simulator`: serve the built-in Mixpanel simulator until SIGINT or
//! SIGTERM, its admin secret in a 0600 file removed at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::{SharedClock, SystemClock};
use crate::exit::Exit;
use crate::simulator::Seed;

/// `simulator`'s options.
#[derive(Debug, clap::Args)]
pub struct SimulatorArgs {
    /// Address to listen on; loopback only unless --allow-non-loopback.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(super) listen: SocketAddr,
    /// Initial organization.
    #[arg(long, value_enum, default_value_t = Seed::Demo)]
    pub(super) seed: Seed,
    /// Allow listening on a non-loopback address (anyone who can reach it can use the simulator).
    #[arg(long)]
    pub(super) allow_non_loopback: bool,
    /// Where to write the simulator admin account's secret (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub(super) admin_secret_file: Option<PathBuf>,
    /// Answer in the shape of Mixpanel's published OpenAPI description
    /// (RFC 3339 timestamps, unset fields left out) instead of the looser
    /// shape real Mixpanel sends: for checking conformance to that file.
    #[arg(long)]
    pub(super) published_shape: bool,
    /// Delay every answer by this much (`20ms`, `0.5s`): a Mixpanel at a
    /// distance. Counted from the request's arrival, the simulator's own
    /// work included, and kept to within about 0.3 ms (a timer thread of
    /// its own, not tokio's millisecond timer).
    #[arg(long, value_name = "DURATION", value_parser = super::args::delay, default_value = "0ms")]
    pub(super) latency: std::time::Duration,
    /// Add a random extra delay of up to this much to every answer.
    #[arg(long, value_name = "DURATION", value_parser = super::args::delay, default_value = "0ms")]
    pub(super) jitter: std::time::Duration,
}

/// Serves the simulator until SIGINT or SIGTERM.
pub(super) async fn simulator(args: SimulatorArgs) -> Exit {
    let SimulatorArgs {
        listen,
        seed,
        allow_non_loopback,
        admin_secret_file: secret_file,
        published_shape,
        latency,
        jitter,
    } = args;
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
    if published_shape {
        sim.set_quirks(crate::simulator::Quirks {
            published_shape: true,
            ..Default::default()
        });
    }
    sim.set_latency(latency, jitter);
    let path = secret_file
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mixpanel-simulator-{}.secret", sim.addr().port())));
    let admin = sim.admin();
    if let Err(e) = crate::demo::write_secret_file(&path, &admin.secret) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return Exit::Failed;
    }
    how_to_use(&sim, &path, seed);
    println!("Ctrl-C stops it.");
    // SIGINT or SIGTERM (a service manager's, `kill`'s): either way the
    // secret file goes with the organization it opened.
    stopped().await;
    let _ = std::fs::remove_file(&path);
    Exit::Ok
}

/// What the simulator is, where it listens, and the `[mixpanel]` section
/// of a policy that uses it.
fn how_to_use(sim: &crate::simulator::Simulator, path: &std::path::Path, seed: Seed) {
    let admin = sim.admin();
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
