//! The etcd v3 backend.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, Identity, PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use crate::config::{EtcdConfig, FIRST_PAGE_KEYS};
use crate::error::{DatastoreError, Result};
use crate::store::{
    Compare, Datastore, KeyValue, LeaseId, ListPage, Listing, Op, Revision, Txn, TxnOutcome, Watch,
    WatchEvent,
};

/// A connection to every member of an etcd cluster. Requests go to one member; when it
/// cannot be reached (or has lost its cluster's leader) they move on to the next. One client
/// per member rather than one balanced channel: a balanced channel keeps sending a share of
/// the requests to a member that is down, so every few requests would fail while the
/// cluster is perfectly able to answer.
pub struct EtcdStore {
    members: Vec<Client>,
    /// The member requests go to first.
    current: AtomicUsize,
    config: EtcdConfig,
}

impl EtcdStore {
    /// Sets up the connections. etcd is first contacted by the first request, which fails
    /// with [`DatastoreError::Unreachable`] after the configured timeout if nobody answers.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        // require_leader: a member cut off from its cluster's quorum refuses requests and ends
        // watches ("etcdserver: no leader") instead of serving a past it cannot bring up to
        // date, so agents notice and say so rather than wait on a watch that stays silent.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_keep_alive(Duration::from_secs(5), config.timeout)
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let mut members = Vec::new();
        for endpoint in &config.endpoints {
            let connecting = Client::connect([endpoint], Some(options.clone()));
            let client = tokio::time::timeout(config.timeout, connecting)
                .await
                .map_err(|_| timed_out(&config))?
                .map_err(|e| unreachable(&config, with_root_cause(e.to_string(), &e)))?;
            members.push(client);
        }
        Ok(EtcdStore {
            members,
            current: AtomicUsize::new(0),
            config,
        })
    }

    /// Runs one request with the configured deadline, so that a dead etcd is an error, not a
    /// hang. A request no member received (connection refused, no leader) is tried on the
    /// next member; one that timed out is not (it may have been applied), but the next
    /// request starts at the next member.
    async fn call<T, F, Fut>(&self, request: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let count = self.members.len();
        let first = self.current.load(Ordering::Relaxed) % count;
        let mut refused = None;
        for attempt in 0..count {
            let index = (first + attempt) % count;
            let next = (index + 1) % count;
            let client = self.members[index].clone();
            match tokio::time::timeout(self.config.timeout, request(client)).await {
                Ok(Ok(value)) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) if not_received(&e) => {
                    self.current.store(next, Ordering::Relaxed);
                    // "No leader" says more than another member's "connection refused".
                    let leaderless = e.to_string().contains("no leader");
                    if leaderless || refused.is_none() {
                        refused = Some(match leaderless {
                            true => unreachable(
                                &self.config,
                                "etcd has no leader: the cluster has lost its quorum".into(),
                            ),
                            false => classify(&self.config, e),
                        });
                    }
                }
                Ok(Err(e)) => return Err(classify(&self.config, e)),
                Err(_) => {
                    self.current.store(next, Ordering::Relaxed);
                    return Err(timed_out(&self.config));
                }
            }
        }
        Err(refused.unwrap_or_else(|| timed_out(&self.config)))
    }

    /// Each prefix's pages in turn, all at the revision of the first page.
    async fn list_all(
        &self,
        prefixes: &[&str],
        sink: &mut (dyn FnMut(ListPage) + Send),
    ) -> Result<Revision> {
        let mut revision = 0;
        for prefix in prefixes {
            revision = self.list_pages(prefix, revision, sink).await?;
        }
        Ok(revision)
    }

    /// Every key under `prefix`, read in pages (see [`EtcdConfig::page_bytes`]), all at
    /// `revision` (0: at the revision of the first page): one consistent snapshot, and a watch
    /// from its revision + 1 misses nothing. Each page goes to `sink` as it arrives.
    async fn list_pages(
        &self,
        prefix: &str,
        mut revision: Revision,
        sink: &mut (dyn FnMut(ListPage) + Send),
    ) -> Result<Revision> {
        let end = prefix_end(prefix.as_bytes());
        let most = self.config.page_size.max(1);
        let mut keys = FIRST_PAGE_KEYS.min(most);
        // etcd has no empty key: "\0" is the first key there can be.
        let mut from = match prefix {
            "" => vec![0],
            _ => prefix.as_bytes().to_vec(),
        };
        loop {
            let limit = i64::try_from(keys).unwrap_or(i64::MAX);
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = self
                .call(|c| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { kv(&c).get(from, Some(options)).await }
                })
                .await
                .map_err(|e| compacted_at(e, revision))?;
            if revision == 0 {
                revision = header_revision(response.header());
            }
            let page = response.kvs();
            let next = match page.last() {
                // The next page starts just after the last key read.
                Some(last) if response.more() => {
                    let mut next = last.key().to_vec();
                    next.push(0);
                    Some(next)
                }
                _ => None,
            };
            let bytes: usize = page
                .iter()
                .map(|kv| kv.key().len() + kv.value().len())
                .sum();
            if !page.is_empty() {
                let average = (bytes / page.len()).max(1);
                keys = (self.config.page_bytes / average).clamp(1, most);
            }
            sink(ListPage::Keys(page.iter().map(convert).collect()));
            match next {
                Some(next) => from = next,
                None => return Ok(revision),
            }
        }
    }
}

/// A member's KV service. etcd sends messages of up to 2 GiB; the client's default limit
/// (4 MiB) would cap a single large value or page below what the store can hold.
fn kv(client: &Client) -> etcd_client::KvClient {
    client.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

/// Whether the member never took the request in: it could not be reached, or it has no
/// leader and refused it. Such a request is safe to send to another member.
fn not_received(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            let message = with_root_cause(status.message().to_string(), status);
            status.code() as i32 == GRPC_UNAVAILABLE
                && (message.contains("no leader") || message.contains("connect"))
        }
        _ => false,
    }
}

fn tls_options(tls: &crate::config::Tls) -> Result<TlsOptions> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| DatastoreError::Config(format!("cannot read {}: {e}", path.display())))
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca_cert)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

fn unreachable(config: &EtcdConfig, detail: String) -> DatastoreError {
    DatastoreError::Unreachable {
        endpoints: config.endpoints.join(","),
        detail,
    }
}

fn timed_out(config: &EtcdConfig) -> DatastoreError {
    unreachable(
        config,
        format!("no answer within {}s", config.timeout.as_secs()),
    )
}

/// An error's message with its root cause, e.g. "tcp connect error: Connection refused".
fn with_root_cause(message: String, error: &dyn std::error::Error) -> String {
    let mut root = error;
    while let Some(cause) = root.source() {
        root = cause;
    }
    let cause = root.to_string();
    if message.contains(&cause) {
        message
    } else {
        format!("{message}: {cause}")
    }
}

/// Transport failures mean "unreachable"; anything etcd itself said is passed on.
fn classify(config: &EtcdConfig, error: etcd_client::Error) -> DatastoreError {
    if error.to_string().contains("lease not found") {
        // The caller knows which lease; see `for_lease`.
        return DatastoreError::LeaseNotFound(0);
    }
    match error {
        etcd_client::Error::TransportError(e) => {
            unreachable(config, with_root_cause(e.to_string(), &e))
        }
        etcd_client::Error::GRpcStatus(status) => {
            let message = with_root_cause(status.message().to_string(), &status);
            match status.code() as i32 {
                GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED => unreachable(config, message),
                _ => DatastoreError::Backend(message),
            }
        }
        other => DatastoreError::Backend(other.to_string()),
    }
}

/// The largest message etcd's gRPC server sends (its limit is `math.MaxInt32`).
const MAX_MESSAGE: usize = i32::MAX as usize;

/// The end of the key range holding every key that starts with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented; "\0" means "to the end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's "required revision has been compacted" for a later page becomes
/// [`DatastoreError::Compacted`], so the listing can start over.
fn compacted_at(error: DatastoreError, revision: Revision) -> DatastoreError {
    match error {
        DatastoreError::Backend(message) if revision > 0 && message.contains("compacted") => {
            DatastoreError::Compacted {
                requested: revision,
                compacted: revision,
            }
        }
        other => other,
    }
}

/// gRPC status codes (fixed by the gRPC spec) that mean "etcd is not there".
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: text(kv.key()),
        value: text(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map(|h| h.revision()).unwrap_or_default()
}

fn txn_op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let options = lease.map(|id| PutOptions::new().with_lease(id));
            TxnOp::put(key.as_str(), value.as_str(), options)
        }
        Op::Delete { key } => TxnOp::delete(key.as_str(), None),
        Op::DeletePrefix { prefix } => {
            TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
        }
    }
}

fn txn_compare(compare: &Compare) -> EtcdCompare {
    match compare {
        Compare::Absent(key) => EtcdCompare::version(key.as_str(), CompareOp::Equal, 0),
        Compare::ModRevision(key, revision) => {
            EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *revision)
        }
    }
}

#[async_trait]
impl Datastore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let response = self
            .call(|c| async move { kv(&c).get(key, None).await })
            .await?;
        Ok(response.kvs().first().map(convert))
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let mut kvs = Vec::new();
        let revision = self
            .list_each(&[prefix], &mut |page| match page {
                ListPage::Keys(page) => kvs.extend(page),
                ListPage::Restart => kvs.clear(),
            })
            .await?;
        Ok(Listing { kvs, revision })
    }

    /// A compaction between two pages loses the snapshot's revision: the listing starts over
    /// at the current one (a listing's pages are milliseconds apart, so this is rare).
    async fn list_each(
        &self,
        prefixes: &[&str],
        sink: &mut (dyn FnMut(ListPage) + Send),
    ) -> Result<Revision> {
        let mut attempts = 0;
        loop {
            match self.list_all(prefixes, sink).await {
                Err(DatastoreError::Compacted { .. }) if attempts < 3 => {
                    attempts += 1;
                    sink(ListPage::Restart);
                }
                other => return other,
            }
        }
    }

    async fn put(&self, key: &str, value: &str) -> Result<Revision> {
        let response = self
            .call(|c| async move { kv(&c).put(key, value, None).await })
            .await?;
        Ok(header_revision(response.header()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let response = self
            .call(|c| async move { kv(&c).delete(key, None).await })
            .await?;
        Ok(response.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let options = DeleteOptions::new().with_prefix();
        let response = self
            .call(|c| {
                let options = options.clone();
                async move { kv(&c).delete(prefix, Some(options)).await }
            })
            .await?;
        Ok(u64::try_from(response.deleted()).unwrap_or_default())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let request = EtcdTxn::new()
            .when(txn.compares.iter().map(txn_compare).collect::<Vec<_>>())
            .and_then(txn.ops.iter().map(txn_op).collect::<Vec<_>>());
        let response = self
            .call(|c| {
                let request = request.clone();
                async move { kv(&c).txn(request).await }
            })
            .await?;
        Ok(TxnOutcome {
            succeeded: response.succeeded(),
            revision: header_revision(response.header()),
        })
    }

    async fn watch(&self, prefixes: &[&str], from: Revision) -> Result<Watch> {
        let mut options = WatchOptions::new().with_prefix();
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let (tx, rx) = mpsc::channel(256);
        let mut tasks = Vec::new();
        // One watch stream per prefix, all forwarding into one channel. Dropping `Watch`
        // aborts the tasks that hold them.
        for prefix in prefixes {
            let stream = self
                .call(|c| {
                    let options = options.clone();
                    async move {
                        let mut watch_client =
                            c.watch_client().max_decoding_message_size(MAX_MESSAGE);
                        watch_client.watch(*prefix, Some(options)).await
                    }
                })
                .await?;
            let task = tokio::spawn(forward(stream, tx.clone(), self.config.clone(), from));
            tasks.push(task.abort_handle());
        }
        Ok(Watch { rx, tasks })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let response = self
            .call(|c| async move { c.lease_client().grant(ttl, None).await })
            .await?;
        Ok(response.id())
    }

    async fn keep_lease_alive(&self, id: LeaseId) -> Result<()> {
        let refresh = self.call(|c| async move {
            let (mut keeper, mut responses) = c.lease_client().keep_alive(id).await?;
            keeper.keep_alive().await?;
            responses.message().await
        });
        match for_lease(id, refresh.await)? {
            Some(response) if response.ttl() > 0 => Ok(()),
            _ => Err(DatastoreError::LeaseNotFound(id)),
        }
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        let revoke = self.call(|c| async move { c.lease_client().revoke(id).await });
        for_lease(id, revoke.await.map(|_| ()))
    }
}

/// Names the lease in a "lease not found" error.
fn for_lease<T>(id: LeaseId, result: Result<T>) -> Result<T> {
    result.map_err(|e| match e {
        DatastoreError::LeaseNotFound(_) => DatastoreError::LeaseNotFound(id),
        other => other,
    })
}

/// Hands one watch stream's batches to `tx` until the stream fails or the receiver is gone;
/// a failure is the last item.
async fn forward(
    mut stream: etcd_client::WatchStream,
    tx: mpsc::Sender<Result<Vec<WatchEvent>>>,
    config: EtcdConfig,
    from: Revision,
) {
    loop {
        let item = match stream.message().await {
            Ok(Some(response)) if response.compact_revision() > 0 => {
                Err(DatastoreError::Compacted {
                    requested: from,
                    compacted: response.compact_revision(),
                })
            }
            Ok(Some(response)) if response.canceled() => Err(DatastoreError::Backend(format!(
                "watch canceled: {}",
                response.cancel_reason()
            ))),
            Ok(Some(response)) => Ok(events(&response)),
            Ok(None) => Err(DatastoreError::WatchEnded),
            Err(e) => Err(classify(&config, e)),
        };
        let last = item.is_err();
        if matches!(&item, Ok(batch) if batch.is_empty()) {
            continue;
        }
        if tx.send(item).await.is_err() || last {
            break;
        }
    }
}

fn events(response: &etcd_client::WatchResponse) -> Vec<WatchEvent> {
    response
        .events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            Some(match event.event_type() {
                EventType::Put => WatchEvent::Put(convert(kv)),
                EventType::Delete => WatchEvent::Delete {
                    key: text(kv.key()),
                    revision: kv.mod_revision(),
                },
            })
        })
        .collect()
}
