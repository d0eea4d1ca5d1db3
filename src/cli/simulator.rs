//! `simulator`: serve the built-in Mixpanel simulator until SIGINT or
//! SIGTERM, its admin secret in a 0600 file removed at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::{SharedClock, SystemClock};
use crate::exit::Exit;
use crate::simulator::Seed;

/// How the simulator shapes its answers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) published: bool,
    /// Base delay and jitter of every answer.
    pub(super) latency: (std::time::Duration, std::time::Duration),
}

pub(super) async fn simulator(
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
