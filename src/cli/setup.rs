//! What every command that reads a policy does first: load it (errors
//! printed, each naming its key) and build the engine.

use std::path::Path;
use std::sync::Arc;

use crate::clock::SharedClock;
use crate::exit::Exit;
use crate::policy::Policy;
use crate::rotation::Engine;

/// Gives the memory freed by parsing a large policy back to the system.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's heap to the
    // system; it takes no pointer and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads the policy at `path`; its errors are printed, each naming its key.
pub(super) fn load_policy(path: &Path) -> Result<Policy, Exit> {
    let loaded = Policy::load(path);
    release_freed_memory();
    loaded.map_err(|e| {
        eprintln!("error: policy {}:", path.display());
        for e in e.all() {
            eprintln!("  {e}");
        }
        Exit::Usage
    })
}

/// The engine of `policy` (its secret read, its sinks set up).
pub(super) fn engine(policy: Policy, clock: SharedClock) -> Result<Engine, Exit> {
    Engine::from_policy(Arc::new(policy), clock).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })
}

/// `name` is an integration of `policy`; else the error, with the names
/// it has (and `why`, when the command has more to say).
pub(super) fn known(policy: &Policy, name: &str, why: &str) -> Result<(), Exit> {
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
