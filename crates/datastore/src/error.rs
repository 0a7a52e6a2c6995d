use thiserror::Error;

use crate::store::{LeaseId, Revision};

pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Error)]
pub enum DatastoreError {
    #[error(
        "cannot reach etcd at {endpoints} ({detail}); is etcd running there? Set \
         ETCD_ENDPOINTS (or ETCD_AUTHORITY) to the address it listens on"
    )]
    Unreachable { endpoints: String, detail: String },
    #[error("datastore configuration: {0}")]
    Config(String),
    #[error(
        "cannot watch from revision {requested}: etcd compacted its history up to {compacted}; \
         a full resync is needed"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("lease {0} does not exist (it expired or was revoked)")]
    LeaseNotFound(LeaseId),
    #[error("etcd: {0}")]
    Backend(String),
    #[error("the watch stream ended")]
    WatchEnded,
}
