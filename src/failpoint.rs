//! Failpoints: named places in a rotation where a test can make the process
//! "die" (the future stops there for good and is dropped, so no clean-up code
//! runs, exactly as with SIGKILL). Compiled in only with the `failpoints`
//! feature, which only the tests enable (a dev-dependency of the crate on
//! itself); in every other build each point is an empty inline function.
//! A point trips only for the integration it was armed for, so tests running
//! in parallel never trip each other's.

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::Mutex;

    use tokio::sync::watch;

    struct Armed {
        point: &'static str,
        integration: String,
        hit: watch::Sender<bool>,
    }

    static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

    /// An armed point; disarmed when dropped.
    pub struct Trip {
        point: &'static str,
        integration: String,
        hit: watch::Receiver<bool>,
    }

    impl Trip {
        /// Waits until the point is reached.
        pub async fn hit(&mut self) {
            let _ = self.hit.wait_for(|h| *h).await;
        }
    }

    impl Drop for Trip {
        fn drop(&mut self) {
            let mut a = ARMED.lock().unwrap_or_else(|e| e.into_inner());
            a.retain(|x| !(x.point == self.point && x.integration == self.integration));
        }
    }

    /// Arms `point` for `integration`.
    pub fn arm(point: &'static str, integration: &str) -> Trip {
        let (tx, rx) = watch::channel(false);
        let mut a = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        a.push(Armed {
            point,
            integration: integration.to_string(),
            hit: tx,
        });
        Trip {
            point,
            integration: integration.to_string(),
            hit: rx,
        }
    }

    /// Arms the point named by `MIXPANEL_ROTATOR_TEST_FAILPOINT`
    /// (`point:integration`), for the whole life of the process: tests of
    /// the binary make it hang there, then kill it with a real signal.
    pub fn arm_from_env() {
        let Ok(spec) = std::env::var("MIXPANEL_ROTATOR_TEST_FAILPOINT") else {
            return;
        };
        let Some((point, integration)) = spec.split_once(':') else {
            return;
        };
        // Leaked on purpose: the point stays armed until the process dies.
        let point: &'static str = Box::leak(point.to_string().into_boxed_str());
        std::mem::forget(arm(point, integration));
    }

    /// Whether `point` is armed for `integration`; if so, says it was hit.
    pub fn tripped(point: &str, integration: &str) -> bool {
        let a = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        match a.iter().find(|x| x.point == point && x.integration == integration) {
            Some(x) => {
                x.hit.send_replace(true);
                true
            }
            None => false,
        }
    }
}

#[cfg(feature = "failpoints")]
pub use armed::{Trip, arm, arm_from_env, tripped};

/// Test builds only (the `failpoints` feature): nothing in any other build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn arm_from_env() {}

/// What a blocking step returns when it "dies" at a point (the async side
/// then stops for good).
pub(crate) const CRASHED: &str = "crashed at a failpoint";

/// A place a test may crash the rotation at: when armed, never returns.
#[cfg(feature = "failpoints")]
pub(crate) async fn point(name: &str, integration: &str) {
    if tripped(name, integration) {
        std::future::pending::<()>().await;
    }
}

/// A place a test may crash the rotation at (not compiled in: nothing).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) async fn point(_name: &str, _integration: &str) {}

/// Whether a test armed `name` here (not compiled in: never).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn tripped(_name: &str, _integration: &str) -> bool {
    false
}
