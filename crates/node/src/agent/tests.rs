use calico_dataplane::RecordingDataplane;
use calico_datastore::MemoryStore;

use super::*;

fn config() -> AgentConfig {
    AgentConfig {
        drift_interval: Duration::from_millis(30),
        heartbeat_interval: Duration::from_millis(30),
        retry: Duration::from_millis(20),
        quiet: Duration::from_millis(50),
        ..AgentConfig::new("h")
    }
}

struct Running {
    store: MemoryStore,
    dataplane: RecordingDataplane,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(store: MemoryStore) -> Running {
    let dataplane = RecordingDataplane::default();
    let metrics = Arc::new(Metrics::default());
    let agent = Agent::new(
        Arc::new(store.clone()),
        dataplane.clone(),
        config(),
        metrics.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(agent.run(stopped));
    Running {
        store,
        dataplane,
        metrics,
        stop,
        task,
    }
}

impl Running {
    fn applied(&self) -> Vec<DesiredState> {
        self.dataplane.applied.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until the last applied state satisfies `check`.
    async fn until(&self, what: &str, check: impl Fn(&DesiredState) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.applied().last().is_some_and(&check) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for: {what}; applied {:?}",
            self.applied().last()
        );
    }

    async fn stop(self) -> MemoryStore {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops")
            .unwrap();
        self.store
    }
}

async fn endpoint(store: &MemoryStore, n: u32) {
    // The interface name takes the id's first 11 characters: make them differ.
    let id = format!("{n:011x}00000");
    let key = format!("/calico/v1/host/h/workload/docker/w{n}/endpoint/{id}");
    let value = format!(
        r#"{{"state":"active","name":"cali{}","profile_ids":["P"],"ipv4_nets":["10.0.{}.{}/32"]}}"#,
        &id[..11],
        n / 250,
        n % 250 + 1
    );
    store.put(&key, &value).await.unwrap();
}

#[tokio::test]
async fn the_first_apply_comes_after_a_full_sync_with_everything_in_it() {
    let store = MemoryStore::new();
    for n in 0..20 {
        endpoint(&store, n).await;
    }
    let agent = start(store).await;
    agent
        .until("all 20 endpoints", |d| d.endpoints.len() == 20)
        .await;
    assert_eq!(
        agent.applied()[0].endpoints.len(),
        20,
        "never a partial state"
    );
    assert!(agent.metrics.healthy());
    let store = agent.stop().await;
    assert!(
        store
            .get("/calico/felix/v1/host/h/status")
            .await
            .unwrap()
            .is_none(),
        "heartbeat removed at stop"
    );
}

/// IPAM's blocks and handles and the agents' statuses change with every address and every
/// endpoint anywhere in the cluster: the agent neither reads nor follows them.
#[tokio::test]
async fn the_agent_takes_in_only_the_keys_it_uses() {
    let store = MemoryStore::new();
    let noise = |n: u32| {
        [
            format!("/calico/ipam/v2/assignment/ipv4/block/10.0.{n}.0-26"),
            format!("/calico/ipam/v2/handle/h.w{n}"),
            format!("/calico/felix/v1/host/other/workload/docker/w{n}/endpoint/e{n}"),
        ]
    };
    for n in 0..20 {
        for key in noise(n) {
            store.put(&key, "{}").await.unwrap();
        }
    }
    endpoint(&store, 0).await;
    store
        .put("/calico/ipam/v2/host/h/ipv4/block/10.0.0.0-26", "")
        .await
        .unwrap();
    let agent = start(store).await;
    agent
        .until("the endpoint", |d| d.endpoints.len() == 1)
        .await;
    assert_eq!(
        agent.metrics.datastore_updates.get(),
        2,
        "the endpoint and the affinity"
    );
    for n in 20..40 {
        for key in noise(n) {
            agent.store.put(&key, "{}").await.unwrap();
        }
    }
    endpoint(&agent.store, 1).await;
    agent
        .until("the second endpoint", |d| d.endpoints.len() == 2)
        .await;
    assert_eq!(
        agent.metrics.datastore_updates.get(),
        3,
        "and the new endpoint only"
    );
    agent.stop().await;
}

/// The dataplane's deferred work (compiling big endpoints) runs once the datastore is quiet,
/// on the state last applied, never on an older one.
#[tokio::test]
async fn deferred_work_runs_when_the_datastore_is_quiet_on_the_last_applied_state() {
    let agent = start(MemoryStore::new()).await;
    for n in 0..5 {
        endpoint(&agent.store, n).await;
    }
    agent
        .until("all 5 endpoints", |d| d.endpoints.len() == 5)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let finished = agent.dataplane.finished.lock().unwrap().clone();
        let applied = agent.applied();
        if finished.last().is_some() && finished.last() == applied.last() {
            assert!(finished.iter().all(|f| applied.contains(f)));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deferred work never ran on the last state: {} runs, {} applies",
            finished.len(),
            applied.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.stop().await;
}

#[tokio::test]
async fn bursts_of_changes_are_coalesced() {
    let agent = start(MemoryStore::new()).await;
    agent
        .until("the empty first sync", |d| d.endpoints.is_empty())
        .await;
    for n in 0..200 {
        endpoint(&agent.store, n).await;
    }
    agent
        .until("all 200 endpoints", |d| d.endpoints.len() == 200)
        .await;
    let applies = agent.applied().len();
    assert!(applies < 50, "200 writes in a burst gave {applies} applies");
    agent.stop().await;
}

#[tokio::test]
async fn a_lost_watch_means_a_full_resync() {
    let agent = start(MemoryStore::new()).await;
    agent.until("first sync", |_| true).await;
    agent.store.fail_watches(DatastoreError::Compacted {
        requested: 1,
        compacted: 5,
    });
    // A change made while no watch is open must still arrive, through the resync.
    endpoint(&agent.store, 7).await;
    agent
        .until("the endpoint written during the gap", |d| {
            d.endpoints.len() == 1
        })
        .await;
    assert!(agent.metrics.resyncs.get() >= 1);
    agent.stop().await;
}

#[tokio::test]
async fn malformed_values_are_counted_and_the_rest_is_programmed() {
    let store = MemoryStore::new();
    endpoint(&store, 1).await;
    store
        .put(
            "/calico/v1/host/h/workload/docker/bad/endpoint/ffffffffffffffff",
            "{oops",
        )
        .await
        .unwrap();
    store
        .put(
            "/calico/v1/policy/profile/P/rules",
            r#"{"inbound_rules":"all"}"#,
        )
        .await
        .unwrap();
    let agent = start(store).await;
    agent
        .until("the good endpoint", |d| d.endpoints.len() == 1)
        .await;
    assert_eq!(agent.metrics.invalid_values.get(), 2);
    let status = agent
        .store
        .get("/calico/felix/v1/host/h/workload/docker/w1/endpoint/0000000000100000")
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status.unwrap().value).unwrap();
    assert_eq!(
        status["status"], "error",
        "its profile is invalid: traffic dropped"
    );
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("profile P has invalid rules"), "{reason}");
    agent.stop().await;
}

#[tokio::test]
async fn drift_is_repaired_and_status_is_reported() {
    let store = MemoryStore::new();
    endpoint(&store, 3).await;
    let agent = start(store).await;
    agent
        .until("the endpoint", |d| d.endpoints.len() == 1)
        .await;
    let before = agent.applied().len();
    *agent.dataplane.drift.lock().unwrap() = true;
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.applied().len() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(agent.applied().len() > before, "drift triggers a re-apply");
    assert_eq!(agent.metrics.drift_repairs.get(), 1);
    let heartbeat = agent
        .store
        .get("/calico/felix/v1/host/h/status")
        .await
        .unwrap()
        .expect("a heartbeat");
    assert!(
        heartbeat.value.contains(r#""in_sync":true"#),
        "{}",
        heartbeat.value
    );
    assert_ne!(heartbeat.lease, 0, "the heartbeat lives under a lease");
    // Deleting the endpoint removes its status.
    agent
        .store
        .delete("/calico/v1/host/h/workload/docker/w3/endpoint/0000000000300000")
        .await
        .unwrap();
    agent
        .until("no endpoints", |d| d.endpoints.is_empty())
        .await;
    let store = agent.stop().await;
    assert!(store
        .list("/calico/felix/v1/host/h/workload/")
        .await
        .unwrap()
        .kvs
        .is_empty());
}
