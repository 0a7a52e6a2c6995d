//! What the agent exposes on /metrics (Prometheus' text format, through prometheus-client), and
//! whether it is healthy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric is named `calico_node_…`.
const PREFIX: &str = "calico_node";

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub resyncs: Counter,
    pub datastore_errors: Counter,
    /// Keys and changes taken in from the datastore (full syncs and the watch).
    pub datastore_updates: Counter,
    pub dataplane_applies: Counter,
    pub dataplane_errors: Counter,
    pub drift_repairs: Counter,
    pub local_endpoints: Gauge,
    pub invalid_values: Gauge,
    pub unsupported_pools: Gauge,
    /// Seconds from a desired state to the kernel holding it.
    pub apply_seconds: Histogram,
    in_sync_gauge: Gauge,
    /// True once the first full sync has been programmed into the kernel.
    in_sync: AtomicBool,
    /// True when the last apply succeeded.
    dataplane_ok: AtomicBool,
    /// Why the datastore cannot be used right now (None while it can).
    datastore_problem: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix(PREFIX),
            resyncs: Counter::default(),
            datastore_errors: Counter::default(),
            datastore_updates: Counter::default(),
            dataplane_applies: Counter::default(),
            dataplane_errors: Counter::default(),
            drift_repairs: Counter::default(),
            local_endpoints: Gauge::default(),
            invalid_values: Gauge::default(),
            unsupported_pools: Gauge::default(),
            // 1 ms … about 65 s.
            apply_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            in_sync_gauge: Gauge::default(),
            in_sync: AtomicBool::new(false),
            dataplane_ok: AtomicBool::new(false),
            datastore_problem: Mutex::new(None),
        };
        metrics.register_own();
        metrics
    }
}

impl Metrics {
    fn register_own(&mut self) {
        let r = &mut self.registry;
        r.register(
            "resyncs",
            "Full resyncs from the datastore.",
            self.resyncs.clone(),
        );
        r.register(
            "datastore_errors",
            "Failed datastore reads or watches.",
            self.datastore_errors.clone(),
        );
        r.register(
            "datastore_updates",
            "Keys and changes taken in from the datastore, by full syncs and the watch.",
            self.datastore_updates.clone(),
        );
        r.register(
            "dataplane_applies",
            "Successful dataplane updates.",
            self.dataplane_applies.clone(),
        );
        r.register(
            "dataplane_errors",
            "Failed dataplane updates.",
            self.dataplane_errors.clone(),
        );
        r.register(
            "drift_repairs",
            "Times kernel state was found changed and re-applied.",
            self.drift_repairs.clone(),
        );
        r.register(
            "local_endpoints",
            "Workload endpoints on this host.",
            self.local_endpoints.clone(),
        );
        r.register(
            "invalid_datastore_values",
            "Datastore values ignored because they are invalid.",
            self.invalid_values.clone(),
        );
        r.register(
            "unsupported_pools",
            "IP pools asking for what this host does not program (IP-in-IP).",
            self.unsupported_pools.clone(),
        );
        r.register(
            "dataplane_apply_seconds",
            "Time to bring the kernel to a new desired state (policy, routes, links).",
            self.apply_seconds.clone(),
        );
        r.register(
            "in_sync",
            "1 once the datastore has been fully synced and applied.",
            self.in_sync_gauge.clone(),
        );
    }

    /// Where other parts of calico-node (the Docker driver) register their metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn healthy(&self) -> bool {
        self.health().is_ok()
    }

    /// Ok when in sync with the datastore and the kernel; else what is wrong, in words.
    pub fn health(&self) -> Result<(), String> {
        let problem = self
            .datastore_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match problem {
            Some(problem) => Err(format!(
                "datastore unavailable ({problem}); the kernel keeps what was last programmed"
            )),
            None if !self.in_sync.load(Ordering::Relaxed) => Err("not in sync yet".into()),
            None if !self.dataplane_ok.load(Ordering::Relaxed) => {
                Err("the last dataplane update failed; retrying".into())
            }
            None => Ok(()),
        }
    }

    pub fn set_in_sync(&self) {
        self.in_sync.store(true, Ordering::Relaxed);
        self.set_datastore_problem(None);
    }

    pub fn set_dataplane_ok(&self, ok: bool) {
        self.dataplane_ok.store(ok, Ordering::Relaxed);
        self.update_gauge();
    }

    /// The datastore failed (Some, with why) or works again (None).
    pub fn set_datastore_problem(&self, problem: Option<String>) {
        *self
            .datastore_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = problem;
        self.update_gauge();
    }

    fn update_gauge(&self) {
        self.in_sync_gauge.set(i64::from(self.healthy()));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_their_names_and_health_follows_sync_and_apply() {
        let metrics = Metrics::default();
        metrics.invalid_values.set(2);
        metrics.resyncs.inc();
        metrics.apply_seconds.observe(0.004);
        assert!(!metrics.healthy());
        metrics.set_in_sync();
        metrics.set_dataplane_ok(true);
        assert!(metrics.healthy());
        metrics.set_datastore_problem(Some("etcdserver: no leader".into()));
        let why = metrics.health().unwrap_err();
        assert!(
            why.contains("datastore unavailable (etcdserver: no leader)"),
            "{why}"
        );
        assert!(metrics
            .render()
            .lines()
            .any(|l| l == "calico_node_in_sync 0"));
        metrics.set_in_sync();
        assert!(
            metrics.healthy(),
            "a new full sync means the datastore is back"
        );
        let text = metrics.render();
        for line in [
            "calico_node_invalid_datastore_values 2",
            "calico_node_resyncs_total 1",
            "calico_node_in_sync 1",
            "calico_node_dataplane_apply_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
