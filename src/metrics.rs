//! Prometheus metrics (`mixpanel_rotator_*`), rendered at `/metrics`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
/// A mirror's labels: integration, sink, path.
type MirrorLabels = (String, String, String);
type F64Gauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rotations: Family<Labels, Counter>,
    rotation_duration: Histogram,
    last_success: Family<Labels, F64Gauge>,
    expiry: Family<Labels, F64Gauge>,
    next_rotation: Family<Labels, F64Gauge>,
    deleted: Family<Labels, Counter>,
    api_requests: Family<Labels, Counter>,
    reload_failures: Counter,
    reloads: Counter,
    passes: Family<Labels, Counter>,
    hook_failures: Family<Labels, Counter>,
    mirror_up_to_date: Family<Labels, Gauge>,
    mirror_writes: Family<Labels, Counter>,
    in_use_elsewhere: Family<Labels, Gauge>,
    clock_offset: Family<Labels, F64Gauge>,
    held_by_mirror: Family<Labels, Counter>,
    modes_repaired: Family<Labels, Counter>,
    /// The integrations with series, and each mirror's (integration, sink,
    /// path): what [`Metrics::keep_only`] removes when they leave the policy.
    known: std::sync::Mutex<(BTreeSet<String>, BTreeSet<MirrorLabels>)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("mixpanel_rotator");
        Self {
            rotations: family(&mut r, "rotations", ROTATIONS_HELP),
            rotation_duration: register(
                &mut r,
                "rotation_duration_seconds",
                "Time from create to publish of one rotation",
                Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            ),
            last_success: family(
                &mut r,
                "last_success_timestamp_seconds",
                "When the integration last rotated successfully (Unix time)",
            ),
            expiry: family(
                &mut r,
                "credential_expiry_timestamp_seconds",
                "When the published credential expires (Unix time)",
            ),
            next_rotation: family(
                &mut r,
                "next_rotation_timestamp_seconds",
                "When the next rotation is due (Unix time)",
            ),
            deleted: family(&mut r, "accounts_deleted", "Old accounts deleted, by reason"),
            api_requests: family(
                &mut r,
                "api_requests",
                "Mixpanel API requests by endpoint and HTTP status",
            ),
            reload_failures: register(
                &mut r,
                "policy_reload_failures",
                "Policy reloads rejected (the old policy stays)",
                Counter::default(),
            ),
            reloads: register(&mut r, "policy_reloads", "Policy reloads applied", Counter::default()),
            passes: family(
                &mut r,
                "passes",
                "Reconcile passes by integration and result (ok, error)",
            ),
            hook_failures: family(&mut r, "hook_failures", "Hooks that failed, by integration and hook"),
            mirror_up_to_date: family(
                &mut r,
                "mirror_up_to_date",
                "1 when the mirror held the primary's payload after the last sync, else 0",
            ),
            mirror_writes: family(
                &mut r,
                "mirror_writes",
                "Mirror syncs that wrote the mirror (ok) or failed (error), by integration",
            ),
            in_use_elsewhere: family(&mut r, "accounts_in_use_elsewhere", IN_USE_HELP),
            clock_offset: family(&mut r, "clock_offset_seconds", CLOCK_HELP),
            held_by_mirror: family(&mut r, "deletions_held_by_mirror", HELD_HELP),
            modes_repaired: family(&mut r, "file_modes_repaired", MODES_HELP),
            known: std::sync::Mutex::default(),
            registry: with_build_info(r),
        }
    }

    /// Every counter of `integration`, at 0 until its first event: a rate
    /// or an `increase()` over a series that does not exist yet is empty,
    /// not 0, and an alert on it can never fire.
    pub fn integration(&self, integration: &str, mirrored: bool) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .insert(integration.to_string());
        for result in ["success", "failure"] {
            let _ = self
                .rotations
                .get_or_create(&labels(&[("integration", integration), ("result", result)]));
        }
        for result in ["ok", "error"] {
            let _ = self
                .passes
                .get_or_create(&labels(&[("integration", integration), ("result", result)]));
            if mirrored {
                let _ = self
                    .mirror_writes
                    .get_or_create(&labels(&[("integration", integration), ("result", result)]));
            }
        }
        for reason in ["retiring", "orphan", "revoked", "retired"] {
            let _ = self
                .deleted
                .get_or_create(&labels(&[("integration", integration), ("reason", reason)]));
        }
        for hook in ["on_rotate", "webhook"] {
            let _ = self
                .hook_failures
                .get_or_create(&labels(&[("integration", integration), ("hook", hook)]));
        }
        let _ = self
            .in_use_elsewhere
            .get_or_create(&labels(&[("integration", integration)]));
        let _ = self
            .modes_repaired
            .get_or_create(&labels(&[("integration", integration)]));
        if mirrored {
            let _ = self
                .held_by_mirror
                .get_or_create(&labels(&[("integration", integration)]));
        }
    }

    /// Removes every series of the integrations not in `names`, and of the
    /// mirrors not in `mirrors` (a reload dropped them): a gauge left behind
    /// would keep an alert firing for something that no longer exists.
    pub(crate) fn keep_only(&self, names: &BTreeSet<&str>, mirrors: &BTreeSet<(&str, &str, &str)>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = known
            .0
            .iter()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for i in &gone {
            let one = labels(&[("integration", i)]);
            for f in [&self.last_success, &self.expiry, &self.next_rotation] {
                f.remove(&one);
            }
            self.in_use_elsewhere.remove(&one);
            self.held_by_mirror.remove(&one);
            self.modes_repaired.remove(&one);
            for (family, key, values) in [
                (&self.rotations, "result", &["success", "failure"][..]),
                (&self.passes, "result", &["ok", "error"][..]),
                (&self.mirror_writes, "result", &["ok", "error"][..]),
                (
                    &self.deleted,
                    "reason",
                    &["retiring", "orphan", "revoked", "retired"][..],
                ),
                (&self.hook_failures, "hook", &["on_rotate", "webhook"][..]),
            ] {
                for v in values {
                    family.remove(&labels(&[("integration", i), (key, v)]));
                }
            }
            known.0.remove(i);
        }
        let stale: Vec<MirrorLabels> = known
            .1
            .iter()
            .filter(|(i, s, p)| !mirrors.contains(&(i.as_str(), s.as_str(), p.as_str())))
            .cloned()
            .collect();
        for (i, sink, path) in stale {
            self.mirror_up_to_date
                .remove(&labels(&[("integration", &i), ("sink", &sink), ("path", &path)]));
            known.1.remove(&(i, sink, path));
        }
    }

    /// A credential file of `integration` had its mode set back.
    pub(crate) fn mode_repaired(&self, integration: &str) {
        self.modes_repaired
            .get_or_create(&labels(&[("integration", integration)]))
            .inc();
    }

    /// A due deletion of `integration` waited for a stale mirror.
    pub(crate) fn held_by_mirror(&self, integration: &str) {
        self.held_by_mirror
            .get_or_create(&labels(&[("integration", integration)]))
            .inc();
    }

    /// How many lineage accounts in use `integration` keeps because its sink
    /// does not publish them (another rotator's, most likely).
    pub(crate) fn in_use_elsewhere(&self, integration: &str, count: usize) {
        self.in_use_elsewhere
            .get_or_create(&labels(&[("integration", integration)]))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Mixpanel's clock minus ours, as last measured (`None`: unknown; the
    /// series is removed rather than reading as "no offset").
    pub fn clock_offset(&self, offset: Option<chrono::Duration>) {
        let key = Labels::new();
        match offset {
            Some(o) => {
                self.clock_offset
                    .get_or_create(&key)
                    .set(o.num_milliseconds() as f64 / 1000.0);
            }
            None => {
                self.clock_offset.remove(&key);
            }
        }
    }

    /// Shared handle.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// One Mixpanel API answer (`status` 0: no answer).
    pub(crate) fn api_request(&self, endpoint: &str, status: u16) {
        self.api_requests
            .get_or_create(&labels(&[("endpoint", endpoint), ("status", &status.to_string())]))
            .inc();
    }

    /// A pass over one integration finished, with or without an error.
    pub(crate) fn pass(&self, integration: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.passes
            .get_or_create(&labels(&[("integration", integration), ("result", result)]))
            .inc();
    }

    /// A rotation ended: published (`success`) or failed.
    pub(crate) fn rotation(&self, integration: &str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.rotations
            .get_or_create(&labels(&[("integration", integration), ("result", result)]))
            .inc();
    }

    /// When the published credential of `integration` expires.
    pub fn expiry(&self, integration: &str, at: DateTime<Utc>) {
        self.expiry
            .get_or_create(&labels(&[("integration", integration)]))
            .set(ts(at));
    }

    /// An old account was deleted, for `reason` (`retiring`, `orphan`, `revoked`).
    pub(crate) fn deleted(&self, integration: &str, reason: &str) {
        self.deleted
            .get_or_create(&labels(&[("integration", integration), ("reason", reason)]))
            .inc();
    }

    /// A rotation published after `seconds`, at `at`.
    pub(crate) fn rotation_done(&self, integration: &str, seconds: f64, at: DateTime<Utc>) {
        self.rotation_duration.observe(seconds);
        self.last_success
            .get_or_create(&labels(&[("integration", integration)]))
            .set(ts(at));
    }

    /// When the next rotation of `integration` is due; unknown (nothing
    /// published, or a rotation due now or blocked) removes the series
    /// rather than reporting 0, which would read as "overdue since 1970".
    pub fn next_rotation(&self, integration: &str, at: Option<DateTime<Utc>>) {
        let key = labels(&[("integration", integration)]);
        match at {
            Some(t) => {
                self.next_rotation.get_or_create(&key).set(ts(t));
            }
            None => {
                self.next_rotation.remove(&key);
            }
        }
    }

    /// A hook (`on_rotate`, `webhook`) failed.
    pub(crate) fn hook_failure(&self, integration: &str, hook: &str) {
        self.hook_failures
            .get_or_create(&labels(&[("integration", integration), ("hook", hook)]))
            .inc();
    }

    /// Where a mirror stands after a sync (`up_to_date`), and whether the
    /// sync wrote it (`Some(true)`) or failed (`Some(false)`).
    pub fn mirror(&self, integration: &str, sink: &str, path: &str, up_to_date: bool, wrote: Option<bool>) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).1.insert((
            integration.to_string(),
            sink.to_string(),
            path.to_string(),
        ));
        self.mirror_up_to_date
            .get_or_create(&labels(&[("integration", integration), ("sink", sink), ("path", path)]))
            .set(i64::from(up_to_date));
        if let Some(ok) = wrote {
            let result = if ok { "ok" } else { "error" };
            self.mirror_writes
                .get_or_create(&labels(&[("integration", integration), ("result", result)]))
                .inc();
        }
    }

    /// A policy reload was applied (`ok`) or rejected.
    pub(crate) fn reload(&self, ok: bool) {
        if ok {
            self.reloads.inc()
        } else {
            self.reload_failures.inc()
        };
    }
}

const ROTATIONS_HELP: &str = "Rotations by integration and result (success, failure)";

const MODES_HELP: &str =
    "Credential files found with other permissions than their sink's `mode` and set back, by integration";

const HELD_HELP: &str = "Passes in which a due deletion waited because a mirror did not hold the current credential";

const CLOCK_HELP: &str = "Mixpanel's clock minus the rotator's, from the Date of Mixpanel's answers (absent while unknown); beyond 120 s no deletion rests on last_used";

const IN_USE_HELP: &str =
    "Lineage accounts in use that this integration's sink neither publishes nor vouches for (kept, never deleted)";

/// Adds `build_info{version,commit} 1`.
fn with_build_info(mut r: Registry) -> Registry {
    let info: Family<Labels, Gauge> = family(
        &mut r,
        "build_info",
        "The running build: version and git commit (always 1)",
    );
    info.get_or_create(&labels(&[
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("MIXPANEL_ROTATOR_COMMIT")),
    ]))
    .set(1);
    r
}

/// Registers `metric` under `name` and returns it (metrics are shared handles).
fn register<M: prometheus_client::registry::Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// A labelled family of `M`, registered under `name`.
fn family<M>(r: &mut Registry, name: &str, help: &str) -> Family<Labels, M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    register(r, name, help, Family::<Labels, M>::default())
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1000.0
}
