//! Prometheus metrics (`mixpanel_rotator_*`), rendered at `/metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mixpanel_rotator");
        let rotations = Family::<Labels, Counter>::default();
        let rotation_duration = Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]);
        let last_success = Family::<Labels, F64Gauge>::default();
        let expiry = Family::<Labels, F64Gauge>::default();
        let next_rotation = Family::<Labels, F64Gauge>::default();
        let deleted = Family::<Labels, Counter>::default();
        let api_requests = Family::<Labels, Counter>::default();
        let reload_failures = Counter::default();
        let reloads = Counter::default();
        let passes = Family::<Labels, Counter>::default();
        let hook_failures = Family::<Labels, Counter>::default();
        registry.register(
            "hook_failures",
            "Hooks that failed, by integration and hook",
            hook_failures.clone(),
        );
        registry.register(
            "rotations",
            "Rotations by integration and result (success, failure)",
            rotations.clone(),
        );
        registry.register(
            "rotation_duration_seconds",
            "Time from create to publish of one rotation",
            rotation_duration.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the integration last rotated successfully (Unix time)",
            last_success.clone(),
        );
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When the published credential expires (Unix time)",
            expiry.clone(),
        );
        registry.register(
            "next_rotation_timestamp_seconds",
            "When the next rotation is due (Unix time)",
            next_rotation.clone(),
        );
        registry.register("accounts_deleted", "Old accounts deleted, by reason", deleted.clone());
        registry.register(
            "api_requests",
            "Mixpanel API requests by endpoint and HTTP status",
            api_requests.clone(),
        );
        registry.register(
            "policy_reload_failures",
            "Policy reloads rejected (the old policy stays)",
            reload_failures.clone(),
        );
        registry.register("policy_reloads", "Policy reloads applied", reloads.clone());
        registry.register(
            "passes",
            "Reconcile passes by integration and result (ok, error)",
            passes.clone(),
        );
        Self {
            registry,
            rotations,
            rotation_duration,
            last_success,
            expiry,
            next_rotation,
            deleted,
            api_requests,
            reload_failures,
            reloads,
            passes,
            hook_failures,
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
    pub fn api_request(&self, endpoint: &str, status: u16) {
        self.api_requests
            .get_or_create(&labels(&[("endpoint", endpoint), ("status", &status.to_string())]))
            .inc();
    }

    /// A pass over one integration finished.
    pub fn pass(&self, report: &crate::rotation::Report) {
        let i = report.integration.as_str();
        let result = if report.failed() { "error" } else { "ok" };
        self.passes
            .get_or_create(&labels(&[("integration", i), ("result", result)]))
            .inc();
        if let Some(r) = &report.rotated {
            self.rotations
                .get_or_create(&labels(&[("integration", i), ("result", "success")]))
                .inc();
            if let Some(e) = r.expires {
                self.expiry.get_or_create(&labels(&[("integration", i)])).set(ts(e));
            }
        } else if report.errors.iter().any(|e| e.step.is_rotation()) {
            self.rotations
                .get_or_create(&labels(&[("integration", i), ("result", "failure")]))
                .inc();
        } else if let Some(e) = report.current.as_ref().and_then(|c| c.expires) {
            self.expiry.get_or_create(&labels(&[("integration", i)])).set(ts(e));
        }
        for d in &report.deleted {
            self.deleted
                .get_or_create(&labels(&[("integration", i), ("reason", &d.reason.to_string())]))
                .inc();
        }
    }

    /// A rotation published after `seconds`, at `at`.
    pub fn rotation_done(&self, integration: &str, seconds: f64, at: DateTime<Utc>) {
        self.rotation_duration.observe(seconds);
        self.last_success
            .get_or_create(&labels(&[("integration", integration)]))
            .set(ts(at));
    }

    /// When the next rotation of `integration` is due.
    pub fn next_rotation(&self, integration: &str, at: Option<DateTime<Utc>>) {
        let g = self
            .next_rotation
            .get_or_create(&labels(&[("integration", integration)]));
        g.set(at.map(ts).unwrap_or(0.0));
    }

    /// A hook (`on_rotate`, `webhook`) failed.
    pub fn hook_failure(&self, integration: &str, hook: &str) {
        self.hook_failures
            .get_or_create(&labels(&[("integration", integration), ("hook", hook)]))
            .inc();
    }

    /// A policy reload was applied (`ok`) or rejected.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads.inc()
        } else {
            self.reload_failures.inc()
        };
    }
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1000.0
}
