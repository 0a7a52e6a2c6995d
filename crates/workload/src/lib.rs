//! One workload lifecycle, the only one: what `calicoctl container`, the libnetwork drivers
//! and the Docker API proxy do to give a workload Calico networking and take it away.
//!
//! - [`address`]: what an address argument asks for, and taking and giving back addresses in
//!   IPAM (an explicit address must also be unused by endpoints written without IPAM).
//! - [`Lifecycle`]: the steps (policy in place, address, host side of the interface, inside
//!   the namespace, endpoint record), each undone when a later one fails, and a teardown that
//!   carries on past errors and reports them all, so no endpoint or address is left behind.
//!
//! The steps are public as well as their composition: libnetwork calls them one at a time
//! (Docker moves the interface into the container itself).

pub mod address;
mod lifecycle;

use calico_dataplane::workload::WireError;
use calico_datastore::resources::ResourceError;
use calico_datastore::DatastoreError;
use calico_ipam::IpamError;

pub use address::AddressRequest;
pub use calico_ipam::Owner;
pub use lifecycle::{mac_for, new_endpoint_id, Added, Addresses, Attach, Lifecycle, NewWorkload};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error("cannot wire the workload's interface: {0}")]
    Wire(#[from] WireError),
    /// The request cannot be done as asked; the full sentence to show the user.
    #[error("{0}")]
    Refused(String),
    /// A step failed and undoing the earlier ones failed too: what is left, to clean by hand.
    #[error("{cause}; undoing the earlier steps also failed, so this is left: {}", left.join("; "))]
    Incomplete {
        cause: Box<WorkloadError>,
        left: Vec<String>,
    },
    /// Teardown went through every step; these failed.
    #[error("teardown finished, but {} step(s) failed: {}", .0.len(), .0.join("; "))]
    Teardown(Vec<String>),
}

pub type Result<T, E = WorkloadError> = std::result::Result<T, E>;
