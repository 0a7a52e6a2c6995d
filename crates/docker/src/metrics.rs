//! What the driver reports through calico-node's /metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `NetworkDriver.Join`, `IpamDriver.RequestAddress`, …
    pub method: String,
    /// `ok` or `error`.
    pub outcome: String,
}

/// Plugin calls: how long each took, by method and outcome.
#[derive(Debug, Clone)]
pub struct PluginMetrics {
    pub calls: Family<CallLabels, Histogram>,
    /// Networks created or removed in this host's engine to follow the datastore.
    pub network_syncs: Counter,
    /// Endpoints, interfaces and addresses cleaned up because their container was gone.
    pub reconciled: Counter,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        PluginMetrics {
            // 0.5 ms … about 16 s.
            calls: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            network_syncs: Counter::default(),
            reconciled: Counter::default(),
        }
    }
}

impl PluginMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "libnetwork_call_seconds",
            "Time to answer each libnetwork plugin call, by method and outcome.",
            self.calls.clone(),
        );
        registry.register(
            "libnetwork_network_syncs",
            "Networks created or removed in this host's engine to match the datastore.",
            self.network_syncs.clone(),
        );
        registry.register(
            "libnetwork_reconciled",
            "Endpoints, interfaces and addresses cleaned up because their container had gone.",
            self.reconciled.clone(),
        );
    }

    pub fn observe(&self, method: &str, ok: bool, seconds: f64) {
        let labels = CallLabels {
            method: method.to_string(),
            outcome: if ok { "ok" } else { "error" }.to_string(),
        };
        self.calls.get_or_create(&labels).observe(seconds);
    }
}
