//! Failpoints: named places in a rotation where a test can make the process
//! "die" (the future stops there for good and is dropped, so no clean-up code
//! runs, exactly as with SIGKILL). Compiled in only with the `failpoints`
//! feature, which only the tests enable (a dev-dependency of the crate on
//! itself); in every other build each point is an empty inline function.
//! A point trips only for the integration it was armed for, so tests running
//! in parallel never trip each other's. A point may also be armed to pause
//! (the deterministic simulation interleaves two instances there): the
//! future waits at it until resumed, then goes on.

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::Mutex;

    use tokio::sync::watch;

    struct Armed {
        point: &'static str,
        integration: String,
        hit: watch::Sender<bool>,
        /// Pause instead of dying: go on once this says so.
        resume: Option<watch::Receiver<bool>>,
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
        arm_with(point, integration, None)
    }

    /// Lets a paused future go on.
    pub struct Resume(watch::Sender<bool>);

    impl Resume {
        /// The paused future goes on.
        pub fn go(&self) {
            self.0.send_replace(true);
        }
    }

    /// Arms `point` for `integration` to pause there (an async point only:
    /// a blocking step does not stop at a pause) until resumed.
    pub fn arm_pause(point: &'static str, integration: &str) -> (Trip, Resume) {
        let (tx, rx) = watch::channel(false);
        (arm_with(point, integration, Some(rx)), Resume(tx))
    }

    fn arm_with(point: &'static str, integration: &str, resume: Option<watch::Receiver<bool>>) -> Trip {
        let (tx, rx) = watch::channel(false);
        let mut a = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        a.push(Armed {
            point,
            integration: integration.to_string(),
            hit: tx,
            resume,
        });
        Trip {
            point,
            integration: integration.to_string(),
            hit: rx,
        }
    }

    /// Whether `point` is armed for `integration` (says it was hit); with
    /// what resumes it, when armed to pause.
    pub(crate) fn stop(point: &str, integration: &str) -> Option<Option<watch::Receiver<bool>>> {
        let a = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        let x = a.iter().find(|x| x.point == point && x.integration == integration)?;
        x.hit.send_replace(true);
        Some(x.resume.clone())
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

    /// Whether `point` is armed for `integration` to die; if so, says it
    /// was hit (a blocking step's check).
    pub fn tripped(point: &str, integration: &str) -> bool {
        let a = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        match a
            .iter()
            .find(|x| x.point == point && x.integration == integration && x.resume.is_none())
        {
            Some(x) => {
                x.hit.send_replace(true);
                true
            }
            None => false,
        }
    }
}

#[cfg(feature = "failpoints")]
pub use armed::{Resume, Trip, arm, arm_from_env, arm_pause, tripped};

/// Test builds only (the `failpoints` feature): nothing in any other build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn arm_from_env() {}

/// What a blocking step returns when it "dies" at a point (the async side
/// then stops for good).
pub(crate) const CRASHED: &str = "crashed at a failpoint";

/// A place a test may crash the rotation at: when armed, never returns
/// (armed to pause: returns once resumed).
#[cfg(feature = "failpoints")]
pub(crate) async fn point(name: &str, integration: &str) {
    match armed::stop(name, integration) {
        None => {}
        Some(Some(mut resume)) => {
            let _ = resume.wait_for(|go| *go).await;
        }
        Some(None) => std::future::pending::<()>().await,
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
