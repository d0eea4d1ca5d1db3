//! The randomness that names things: lineage usernames' last four hex
//! digits, rotation ids, the simulator's tokens and username suffixes.
//! Everywhere it comes from the thread's generator, except on a thread where
//! a deterministic simulation installed a seeded one ([`seed_thread`], the
//! `testing` feature): the same seed then names the same accounts and
//! rotations, so a run is replayed exactly. Randomness that only spreads
//! time (retry jitter, latency) never comes from here.

use rand::RngCore;

#[cfg(feature = "testing")]
thread_local! {
    static SEEDED: std::cell::RefCell<Option<rand::rngs::StdRng>> = const { std::cell::RefCell::new(None) };
}

/// Installs a generator seeded with `seed` on this thread (`None`: back to
/// the thread's own). A simulation runs on a current-thread runtime, so the
/// engine, the sinks and the simulator it drives all draw from it.
#[cfg(feature = "testing")]
pub fn seed_thread(seed: Option<u64>) {
    use rand::SeedableRng as _;
    SEEDED.with(|s| *s.borrow_mut() = seed.map(rand::rngs::StdRng::seed_from_u64));
}

/// Calls `f` with this thread's naming generator.
pub(crate) fn with<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
    #[cfg(feature = "testing")]
    {
        // Taken out while `f` runs (it never draws a name itself), put back after.
        let mut seeded = SEEDED.with(|s| s.borrow_mut().take());
        if let Some(r) = seeded.as_mut() {
            let v = f(r);
            SEEDED.with(|s| *s.borrow_mut() = seeded);
            return v;
        }
    }
    f(&mut rand::rng())
}
