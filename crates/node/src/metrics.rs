//! Counters and gauges the agent exposes in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub resyncs: AtomicU64,
    pub datastore_errors: AtomicU64,
    pub dataplane_applies: AtomicU64,
    pub dataplane_errors: AtomicU64,
    pub drift_repairs: AtomicU64,
    pub local_endpoints: AtomicU64,
    pub invalid_values: AtomicU64,
    pub unsupported_pools: AtomicU64,
    /// True once the first full sync has been programmed into the kernel.
    pub in_sync: AtomicBool,
    /// True when the last apply succeeded.
    pub dataplane_ok: AtomicBool,
}

impl Metrics {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        self.in_sync.load(Ordering::Relaxed) && self.dataplane_ok.load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP calico_node_{name} {help}");
            let _ = writeln!(out, "# TYPE calico_node_{name} {kind}");
            let _ = writeln!(out, "calico_node_{name} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "resyncs_total",
            "counter",
            "Full resyncs from the datastore.",
            get(&self.resyncs),
        );
        metric(
            "datastore_errors_total",
            "counter",
            "Failed datastore reads or watches.",
            get(&self.datastore_errors),
        );
        metric(
            "dataplane_applies_total",
            "counter",
            "Successful dataplane updates.",
            get(&self.dataplane_applies),
        );
        metric(
            "dataplane_errors_total",
            "counter",
            "Failed dataplane updates.",
            get(&self.dataplane_errors),
        );
        metric(
            "drift_repairs_total",
            "counter",
            "Times kernel state was found changed and re-applied.",
            get(&self.drift_repairs),
        );
        metric(
            "local_endpoints",
            "gauge",
            "Workload endpoints on this host.",
            get(&self.local_endpoints),
        );
        metric(
            "invalid_datastore_values",
            "gauge",
            "Datastore values ignored because they are invalid.",
            get(&self.invalid_values),
        );
        metric(
            "unsupported_pools",
            "gauge",
            "IP pools asking for what this host does not program (IP-in-IP).",
            get(&self.unsupported_pools),
        );
        metric(
            "in_sync",
            "gauge",
            "1 once the datastore has been fully synced and applied.",
            u64::from(self.healthy()),
        );
        out
    }
}
