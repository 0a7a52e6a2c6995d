//! The sync loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_bgp::BgpView;
use calico_dataplane::Dataplane;
use calico_datastore::{Datastore, DatastoreError, ListPage, Revision, Watch, WatchEvent};
use calico_felix::{CalcGraph, DesiredState, Update};
use calico_model::keys;
use tokio::sync::watch;

use crate::bird::Bird;
use crate::logging::LogControl;
use crate::metrics::Metrics;
use crate::status::{endpoint_statuses, Reporter, StatusWriter};

/// What the agent reads and follows: Felix's input under /calico/v1/, BGP's under
/// /calico/bgp/v1/, and the hosts' IPAM blocks. Not the rest of /calico/: IPAM's blocks and
/// handles change with every address handed out anywhere, and agents' statuses with every
/// endpoint programmed anywhere; sent to every agent, they would make each allocation and
/// each status cost the whole cluster.
const SYNCED: [&str; 3] = [keys::V1, keys::BGP_PREFIX, keys::IPAM_HOSTS_PREFIX];

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    /// The longest the agent takes in changes that are already waiting before it programs
    /// them: a burst is applied in batches, a single change at once.
    pub max_batch: Duration,
    /// How often the kernel is checked for drift (and failed applies retried).
    pub drift_interval: Duration,
    /// How long the datastore must be quiet before the dataplane does the work an apply
    /// left for later (compiling endpoints' chains: see `Dataplane::finish`).
    pub quiet: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_ttl: Duration,
    /// Where BIRD's configuration, socket and log go; None runs no BGP.
    pub state_dir: Option<std::path::PathBuf>,
    /// Pause before retrying after a datastore failure.
    pub retry: Duration,
}

impl AgentConfig {
    pub fn new(host: &str) -> Self {
        AgentConfig {
            host: host.to_string(),
            max_batch: Duration::from_millis(200),
            drift_interval: Duration::from_secs(2),
            quiet: Duration::from_millis(500),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_ttl: Duration::from_secs(30),
            state_dir: None,
            retry: Duration::from_secs(1),
        }
    }
}

pub struct Agent<D: Dataplane> {
    store: Arc<dyn Datastore>,
    dataplane: D,
    config: AgentConfig,
    graph: CalcGraph,
    bgp: BgpView,
    bird: Option<Bird>,
    /// Whether the kernel holds the calc graph's state as of the last apply (false forces a
    /// whole apply next: after a start, a resync or a failure).
    synced: bool,
    /// What this host cannot do of what the datastore asks (see `report_problems`).
    problems: Vec<String>,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    statuses: StatusWriter,
    log: Option<LogControl>,
    /// Notified when a workload's interface was made again without its endpoint changing (a
    /// container restarted faster than its stop was seen): check the kernel now rather than
    /// at the next drift tick.
    interfaces_changed: Arc<tokio::sync::Notify>,
}

enum Next {
    Resync,
    Stop,
}

impl<D: Dataplane> Agent<D> {
    /// Within a tokio runtime: it starts the task that writes endpoint statuses.
    pub fn new(
        store: Arc<dyn Datastore>,
        dataplane: D,
        config: AgentConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Agent {
            statuses: StatusWriter::start(store.clone(), config.retry),
            store,
            dataplane,
            graph: CalcGraph::new(&config.host),
            bgp: BgpView::default(),
            bird: config.state_dir.clone().map(Bird::new),
            reporter: Reporter::new(&config.host, config.heartbeat_ttl),
            config,
            synced: false,
            problems: Vec::new(),
            metrics,
            log: None,
            interfaces_changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// What wakes an immediate drift check (see `interfaces_changed`).
    pub fn with_interfaces_changed(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.interfaces_changed = notify;
        self
    }

    /// Lets the agent change the log level when the datastore says so.
    pub fn with_log_control(mut self, log: LogControl) -> Self {
        self.log = Some(log);
        self
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut first = true;
        while !*shutdown.borrow() {
            if !first {
                self.metrics.resyncs.inc();
            }
            first = false;
            let next = match self.sync_and_follow(&mut shutdown).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "datastore unavailable; keeping the kernel as it is and retrying");
                    self.metrics.datastore_errors.inc();
                    self.metrics.set_datastore_problem(Some(e.to_string()));
                    Next::Resync
                }
            };
            match next {
                Next::Stop => break,
                Next::Resync => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.retry) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        self.reporter.stop(self.store.as_ref()).await;
        if let Some(bird) = &mut self.bird {
            bird.stop().await;
        }
        tracing::info!("stopped; the ruleset stays in the kernel and keeps policing traffic");
    }

    /// One full sync, then follows the watch until it fails (resync) or we are told to stop.
    async fn sync_and_follow(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Next, DatastoreError> {
        let revision = self.full_sync().await?;
        self.program(true).await;
        self.metrics.set_in_sync();
        let mut watch = self.store.watch(&SYNCED, revision + 1).await?;
        let mut drift = tokio::time::interval(self.config.drift_interval);
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        // Armed after each apply; fires once the datastore has been quiet that long.
        let quiet = tokio::time::sleep(self.config.quiet);
        tokio::pin!(quiet);
        let mut unfinished = true;
        let interfaces_changed = self.interfaces_changed.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Next::Stop),
                item = watch.next() => {
                    let batch = item.ok_or(DatastoreError::WatchEnded)??;
                    let relevant = self.take(batch);
                    if self.coalesce(&mut watch).await? || relevant {
                        self.program(false).await;
                        unfinished = true;
                        quiet.as_mut().reset(tokio::time::Instant::now() + self.config.quiet);
                    }
                }
                _ = &mut quiet, if unfinished => {
                    unfinished = false;
                    self.finish().await;
                }
                _ = drift.tick() => {
                    self.repair_drift().await;
                    // A repair applies whole, leaving compiling for later.
                    unfinished = true;
                }
                _ = interfaces_changed.notified() => {
                    self.repair_drift().await;
                    // A repair applies whole, leaving compiling for later.
                    unfinished = true;
                }
                _ = heartbeat.tick() => {
                    let endpoints = self.graph.state().endpoints.len();
                    // Also how a datastore that stopped answering (etcd without quorum, say)
                    // is noticed while nothing changes: the heartbeat cannot be written.
                    match self.reporter.heartbeat(self.store.as_ref(), self.metrics.healthy(), endpoints, &self.problems).await {
                        Ok(()) => self.metrics.set_datastore_problem(None),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot write the heartbeat; resyncing");
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Reads the whole datastore into the calc graph a page at a time, so the agent never
    /// holds the listing and the graph built from it at once.
    async fn full_sync(&mut self) -> Result<Revision, DatastoreError> {
        let store = self.store.clone();
        self.reset();
        let started = Instant::now();
        // Where the time goes: reading (etcd and the client) or taking in (the calc graph).
        let (mut keys, mut taking) = (0usize, std::time::Duration::ZERO);
        let revision = store
            .list_each(&SYNCED, &mut |page| {
                let page_started = Instant::now();
                match page {
                    ListPage::Keys(kvs) => {
                        keys += kvs.len();
                        for kv in kvs {
                            self.apply(Update::Put {
                                key: kv.key,
                                value: kv.value,
                            });
                        }
                    }
                    ListPage::Restart => {
                        keys = 0;
                        self.reset();
                    }
                }
                taking += page_started.elapsed();
            })
            .await?;
        tracing::info!(
            revision,
            keys,
            elapsed_ms = started.elapsed().as_millis() as u64,
            graph_ms = taking.as_millis() as u64,
            "full sync from the datastore complete"
        );
        Ok(revision)
    }

    fn reset(&mut self) {
        self.graph.clear();
        self.bgp = BgpView::default();
    }

    /// Takes in a batch; true if any of it matters to this agent.
    fn take(&mut self, batch: Vec<WatchEvent>) -> bool {
        tracing::debug!(changes = batch.len(), "datastore changes");
        let mut relevant = false;
        for event in batch {
            let update = match event {
                WatchEvent::Put(kv) => Update::Put {
                    key: kv.key,
                    value: kv.value,
                },
                WatchEvent::Delete { key, .. } => Update::Delete { key },
            };
            relevant |= self.apply(update);
        }
        relevant
    }

    /// Sends one change where it belongs; false for keys the agent does not use.
    fn apply(&mut self, update: Update) -> bool {
        self.metrics.datastore_updates.inc();
        let key = update.key();
        let value = match &update {
            Update::Put { value, .. } => Some(value.as_str()),
            Update::Delete { .. } => None,
        };
        if key.starts_with(keys::BGP_PREFIX) {
            self.bgp.apply(key, value);
            true
        } else if key.starts_with(keys::IPAM_HOSTS_PREFIX) {
            // A host's blocks: routed whole by its dataplane, announced whole by its BIRD.
            self.bgp.apply(key, value);
            self.graph.apply(&update);
            true
        } else if key.starts_with(keys::V1) {
            self.graph.apply(&update);
            true
        } else {
            false
        }
    }

    /// Takes in the changes that have already arrived, without waiting for more: a single
    /// change is programmed at once, and the changes of a burst that come while one apply
    /// runs are programmed together by the next. True if any of it matters to this agent.
    async fn coalesce(&mut self, watch: &mut Watch) -> Result<bool, DatastoreError> {
        let started = Instant::now();
        let mut relevant = false;
        while started.elapsed() < self.config.max_batch {
            match watch.try_next() {
                None => break,
                Some(item) => relevant |= self.take(item?),
            }
        }
        Ok(relevant)
    }

    /// Programs what changed since the last apply (everything, with `force` or when the
    /// kernel may not hold the last state).
    async fn program(&mut self, force: bool) {
        let changes = self.graph.take_changes();
        let state = self.graph.state();
        if let Some(log) = &mut self.log {
            log.set(&state.config.log_level);
        }
        let problems = unsupported(state);
        self.report_problems(problems);
        let state = self.graph.state();
        let invalid = state.skipped.len() + self.bgp.skipped.len();
        self.metrics.invalid_values.set(invalid as i64);
        let whole = force || !self.synced;
        if whole || !changes.is_empty() {
            let started = Instant::now();
            let result = match whole {
                true => self.dataplane.apply(state).await,
                false => self.dataplane.apply_changes(state, &changes).await,
            };
            self.applied(result, whole, started).await;
        }
        // BGP after the kernel: checking and loading a new BIRD configuration takes tens of
        // milliseconds, which a new workload's route need not wait for.
        if let Some(bird) = &mut self.bird {
            bird.update(calico_bgp::render(&self.bgp, &self.config.host))
                .await;
        }
    }

    /// Records the outcome of an apply: metrics, endpoint statuses, whether in step.
    async fn applied(
        &mut self,
        result: Result<calico_dataplane::Applied, calico_dataplane::DataplaneError>,
        whole: bool,
        started: Instant,
    ) {
        let state = self.graph.state();
        match result {
            Ok(applied) => {
                tracing::info!(
                    endpoints = state.endpoints.len(),
                    whole,
                    ruleset_changed = applied.ruleset_changed,
                    routes_added = applied.routes_added,
                    routes_removed = applied.routes_removed,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "dataplane updated"
                );
                self.metrics.dataplane_applies.inc();
                self.metrics
                    .apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.set_dataplane_ok(true);
                self.metrics
                    .local_endpoints
                    .set(state.endpoints.len() as i64);
                self.statuses
                    .publish(endpoint_statuses(&self.config.host, state, &applied));
                self.synced = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "dataplane update failed; retrying");
                self.metrics.dataplane_errors.inc();
                self.metrics.set_dataplane_ok(false);
                self.synced = false;
            }
        }
    }

    /// What the datastore asks for that this host does not do: logged when it changes,
    /// counted, and carried in the heartbeat (`calicoctl status` shows it).
    fn report_problems(&mut self, problems: Vec<String>) {
        if problems != self.problems {
            for problem in &problems {
                tracing::error!(%problem, "cannot program what the datastore asks for");
            }
        }
        self.metrics.unsupported_pools.set(problems.len() as i64);
        self.problems = problems;
    }

    /// The dataplane's deferred work, once the datastore is quiet; a failure leaves the
    /// kernel to the next apply, which is then whole.
    async fn finish(&mut self) {
        if !self.synced {
            return;
        }
        if let Err(e) = self.dataplane.finish(self.graph.state()).await {
            tracing::warn!(error = %e, "deferred dataplane work failed; the next apply is whole");
            self.synced = false;
        }
    }

    async fn repair_drift(&mut self) {
        if let Some(bird) = &mut self.bird {
            bird.keep_up().await;
        }
        if !self.synced {
            return self.program(true).await;
        }
        match self.dataplane.drifted().await {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!("kernel state changed behind our back (or a missing endpoint interface appeared); re-applying");
                self.metrics.drift_repairs.inc();
                self.program(true).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the kernel for drift"),
        }
    }
}

/// Pools asking for what this host cannot do (IP-in-IP).
fn unsupported(state: &DesiredState) -> Vec<String> {
    state
        .ipip_pools
        .iter()
        .map(|pool| {
            let why = if std::path::Path::new("/sys/module/ipip").exists() {
                "calico-node does not program IP-in-IP"
            } else {
                "this kernel has no IP-in-IP support (no ipip module)"
            };
            format!("pool {pool} asks for IP-in-IP, but {why}: its workloads are routed without encapsulation")
        })
        .collect()
}

#[cfg(test)]
mod tests;
