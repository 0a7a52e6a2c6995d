//! The steps of a workload's life on a host, and their composition with rollback.

use std::path::PathBuf;
use std::sync::Arc;

use calico_dataplane::workload::{
    change_addresses, create_host_side, format_mac, unwire, wire, HostSide, Wiring,
};
use calico_datastore::resources::{EndpointFilter, EndpointRecord, Resources};
use calico_datastore::{Compare, Datastore, Op, Txn};
use calico_ipam::Owner;
use calico_model::endpoint::{interface_name_for, Endpoint, EndpointKey, EndpointState};
use calico_model::keys;
use ipnet::IpNet;

use crate::address::{self, AddressRequest};
use crate::{Result, WorkloadError};

/// A new endpoint id: 32 hex characters.
pub fn new_endpoint_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The MAC a workload's interface gets: `ee:` (locally administered, unicast, as Calico's
/// own `ee:ee:…`) and five bytes of a stable hash of the endpoint id, so each differs.
pub fn mac_for(endpoint_id: &str) -> [u8; 6] {
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = endpoint_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        .to_be_bytes();
    [0xee, hash[0], hash[1], hash[2], hash[3], hash[4]]
}

/// A workload to give networking to (`calicoctl container add`, the API proxy).
#[derive(Debug, Clone)]
pub struct NewWorkload {
    /// How the user named it, for messages.
    pub display_name: String,
    pub orchestrator: String,
    pub workload_id: String,
    pub netns: PathBuf,
    /// Its interface's name inside the namespace.
    pub interface: String,
    pub request: AddressRequest,
    pub profiles: Vec<String>,
}

/// Addresses a workload holds, to wire into its namespace ([`Lifecycle::attach`]).
#[derive(Debug, Clone)]
pub struct Attach {
    pub orchestrator: String,
    pub workload_id: String,
    pub netns: PathBuf,
    /// Its interface's name inside the namespace.
    pub interface: String,
    pub nets: Vec<IpNet>,
    /// A new endpoint's profiles.
    pub profiles: Vec<String>,
}

/// What `add` made.
#[derive(Debug, Clone)]
pub struct Added {
    pub key: EndpointKey,
    pub endpoint: Endpoint,
}

/// One host's workload lifecycle.
#[derive(Clone)]
pub struct Lifecycle {
    resources: Resources,
    host: String,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    pub fn new(store: Arc<dyn Datastore>, host: &str) -> Self {
        Lifecycle {
            resources: Resources::new(store),
            host: host.to_string(),
        }
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The IPAM owner of a workload's addresses on this host: one handle per workload.
    pub fn owner(&self, workload_id: &str) -> Owner {
        Owner {
            handle: format!("{}.{workload_id}", self.host),
            host: self.host.clone(),
            workload: workload_id.to_string(),
        }
    }

    /// A workload interface must never exist without the agent's table to police it: without
    /// the table, nothing would drop its traffic.
    pub fn require_policy_in_place(&self) -> Result<()> {
        use calico_dataplane::{Firewall, NftCli};
        let present = NftCli::default().table_exists().map_err(|e| {
            WorkloadError::Refused(format!("cannot ask nft for the policy table: {e}"))
        })?;
        if !present {
            return Err(WorkloadError::Refused(format!(
                "calico-node has not programmed policy on this host ({}) yet, so a new workload \
                 would be unpoliced; start it with 'calicoctl node' first.",
                self.host
            )));
        }
        Ok(())
    }

    /// The workload's endpoints on this host.
    pub async fn endpoints(
        &self,
        orchestrator: &str,
        workload_id: &str,
    ) -> Result<Vec<EndpointRecord>> {
        let filter = EndpointFilter {
            host: Some(self.host.clone()),
            orchestrator: Some(orchestrator.to_string()),
            workload: Some(workload_id.to_string()),
            endpoint_id: None,
        };
        Ok(self.resources.endpoints(&filter).await?)
    }

    pub async fn allocate(&self, request: &AddressRequest, owner: &Owner) -> Result<IpNet> {
        address::allocate(&self.resources, request, owner).await
    }

    pub async fn release(&self, nets: &[IpNet]) -> Result<()> {
        address::release(&self.resources, nets).await
    }

    /// Writes a new endpoint; refused if the key exists (another writer got there first).
    pub async fn create_endpoint(&self, key: &EndpointKey, endpoint: &Endpoint) -> Result<()> {
        key.validate()
            .map_err(calico_datastore::resources::ResourceError::from)?;
        endpoint
            .validate()
            .map_err(calico_datastore::resources::ResourceError::from)?;
        let path = keys::endpoint(key);
        let outcome = self
            .resources
            .store()
            .txn(Txn {
                compares: vec![Compare::Absent(path.clone())],
                ops: vec![Op::put(path, endpoint.to_json())],
            })
            .await?;
        if !outcome.succeeded {
            return Err(WorkloadError::Refused(format!(
                "endpoint {} already exists; nothing was changed",
                key.endpoint_id
            )));
        }
        Ok(())
    }

    /// An endpoint for addresses on an interface of ours, with these profiles.
    pub fn endpoint(&self, endpoint_id: &str, nets: &[IpNet], profiles: &[String]) -> Endpoint {
        let (ipv4_nets, ipv6_nets) = nets.iter().partition(|n| n.addr().is_ipv4());
        Endpoint {
            state: EndpointState::Active,
            name: interface_name_for(endpoint_id),
            mac: Some(format_mac(mac_for(endpoint_id))),
            profile_ids: profiles.to_vec(),
            profile_id: None,
            ipv4_nets,
            ipv6_nets,
            ipv4_gateway: None,
            ipv6_gateway: None,
            labels: Default::default(),
        }
    }

    /// The two ends of the endpoint's veth, made on the host.
    pub async fn create_host_side(&self, endpoint_id: &str) -> Result<HostSide> {
        let side = self.host_side(endpoint_id);
        create_host_side(&side).await?;
        Ok(side)
    }

    /// The names and MAC of an endpoint's veth.
    fn host_side(&self, endpoint_id: &str) -> HostSide {
        HostSide::named(&interface_name_for(endpoint_id), mac_for(endpoint_id))
    }

    /// Networking for a workload: an address, its interface, its endpoint. Any step that
    /// fails undoes the ones before it, so nothing is half-made.
    pub async fn add(&self, new: &NewWorkload) -> Result<Added> {
        if !self
            .endpoints(&new.orchestrator, &new.workload_id)
            .await?
            .is_empty()
        {
            return Err(WorkloadError::Refused(format!(
                "{} has already been configured with Calico Networking.",
                new.display_name
            )));
        }
        self.require_policy_in_place()?;
        let net = self
            .allocate(&new.request, &self.owner(&new.workload_id))
            .await?;
        let attach = Attach {
            orchestrator: new.orchestrator.clone(),
            workload_id: new.workload_id.clone(),
            netns: new.netns.clone(),
            interface: new.interface.clone(),
            nets: vec![net],
            profiles: new.profiles.clone(),
        };
        match self.attach(&attach, None).await {
            Ok(added) => Ok(added),
            Err(e) => Err(self.undo(e, [Undo::Addresses(&[net])]).await),
        }
    }

    /// Wires addresses the workload already holds into its namespace and records the
    /// endpoint as active. With `existing` (an endpoint of the workload, inactive since its
    /// namespace went), that endpoint comes back: same id, interface, MAC, addresses and
    /// profiles, so whatever refers to it (group memberships, profiles added since) still
    /// does. Otherwise a new endpoint is made. On failure the interface goes again; the
    /// addresses stay the caller's.
    pub async fn attach(
        &self,
        attach: &Attach,
        existing: Option<&EndpointRecord>,
    ) -> Result<Added> {
        self.require_policy_in_place()?;
        let (key, mut endpoint) = match existing {
            Some(record) => {
                let endpoint = record
                    .endpoint
                    .clone()
                    .map_err(calico_datastore::resources::ResourceError::from)?;
                (record.key.clone(), endpoint)
            }
            None => {
                let endpoint_id = new_endpoint_id();
                let key = EndpointKey {
                    host: self.host.clone(),
                    orchestrator: attach.orchestrator.clone(),
                    workload: attach.workload_id.clone(),
                    endpoint_id: endpoint_id.clone(),
                };
                let endpoint = self.endpoint(&endpoint_id, &attach.nets, &attach.profiles);
                (key, endpoint)
            }
        };
        endpoint.state = EndpointState::Active;
        // A stale host end (its namespace went without the veth) is ours to replace.
        unwire(&endpoint.name).await?;
        wire(&Wiring {
            netns: attach.netns.clone(),
            side: self.host_side(&key.endpoint_id),
            workload_interface: attach.interface.clone(),
            nets: endpoint.nets().copied().collect(),
        })
        .await?;
        let recorded = match existing {
            Some(_) => self
                .resources
                .update_endpoint(&key, |stored| {
                    stored.state = EndpointState::Active;
                    Ok(true)
                })
                .await
                .map(|_| ())
                .map_err(WorkloadError::from),
            None => self.create_endpoint(&key, &endpoint).await,
        };
        if let Err(e) = recorded {
            return Err(self.undo(e, [Undo::Interface(&endpoint.name)]).await);
        }
        Ok(Added { key, endpoint })
    }

    /// The workload stopped (its namespace is gone or going): its interfaces go and its
    /// endpoints become inactive, so the agent stops routing to them, but they and their
    /// addresses are kept for its next start. Carries on past errors.
    pub async fn detach(&self, records: &[EndpointRecord]) -> Result<()> {
        let mut failed = Vec::new();
        for record in records {
            let Ok(endpoint) = &record.endpoint else {
                continue;
            };
            if let Err(e) = unwire(&endpoint.name).await {
                failed.push(format!("removing interface {}: {e}", endpoint.name));
            }
            if endpoint.state == EndpointState::Inactive {
                continue;
            }
            let marked = self
                .resources
                .update_endpoint(&record.key, |stored| {
                    let changed = stored.state != EndpointState::Inactive;
                    stored.state = EndpointState::Inactive;
                    Ok(changed)
                })
                .await;
            if let Err(e) = marked {
                failed.push(format!(
                    "marking endpoint {} inactive: {e}",
                    record.key.endpoint_id
                ));
            }
        }
        teardown_result(failed)
    }

    /// The addresses IPAM holds for a workload on this host (under its handle).
    pub async fn held(&self, workload_id: &str) -> Result<Vec<IpNet>> {
        let ipam = calico_ipam::Ipam::new(self.resources.shared_store());
        let held = ipam.addresses_of(&self.owner(workload_id).handle).await?;
        Ok(held.into_iter().map(IpNet::from).collect())
    }

    /// Another address on the workload's first endpoint and its interface.
    pub async fn add_address(
        &self,
        record: &EndpointRecord,
        netns: &std::path::Path,
        interface: &str,
        request: &AddressRequest,
    ) -> Result<IpNet> {
        let net = self
            .allocate(request, &self.owner(&record.key.workload))
            .await?;
        let made = async {
            change_addresses(netns, interface, vec![net], true).await?;
            let recorded = self
                .resources
                .update_endpoint(&record.key, |endpoint| {
                    match net {
                        IpNet::V4(_) => endpoint.ipv4_nets.push(net),
                        IpNet::V6(_) => endpoint.ipv6_nets.push(net),
                    }
                    Ok(true)
                })
                .await;
            if let Err(e) = recorded {
                let _ = change_addresses(netns, interface, vec![net], false).await;
                return Err(e.into());
            }
            Ok(())
        }
        .await;
        if let Err(e) = made {
            return Err(self.undo(e, [Undo::Addresses(&[net])]).await);
        }
        Ok(net)
    }

    /// Takes an address off the endpoint, the interface and IPAM, in that order, carrying on
    /// past errors.
    pub async fn remove_address(
        &self,
        record: &EndpointRecord,
        netns: &std::path::Path,
        interface: &str,
        net: IpNet,
    ) -> Result<()> {
        let mut failed = Vec::new();
        let edited = self
            .resources
            .update_endpoint(&record.key, |endpoint| {
                endpoint.ipv4_nets.retain(|n| *n != net);
                endpoint.ipv6_nets.retain(|n| *n != net);
                Ok(true)
            })
            .await;
        if let Err(e) = edited {
            failed.push(format!("removing {net} from the endpoint: {e}"));
        }
        if let Err(e) = change_addresses(netns, interface, vec![net], false).await {
            failed.push(format!("removing {net} from {interface}: {e}"));
        }
        if let Err(e) = self.release(&[net]).await {
            failed.push(format!("releasing {net}: {e}"));
        }
        teardown_result(failed)
    }

    /// Removes endpoints: interface, record and (with [`Addresses::Release`]) addresses.
    /// Every step of every endpoint is tried whatever failed before; the failures are
    /// reported together.
    pub async fn teardown(&self, records: &[EndpointRecord], addresses: Addresses) -> Result<()> {
        let mut failed = Vec::new();
        for record in records {
            let id = &record.key.endpoint_id;
            let interface = match &record.endpoint {
                Ok(endpoint) => endpoint.name.clone(),
                Err(_) => interface_name_for(id),
            };
            if let Err(e) = unwire(&interface).await {
                failed.push(format!("removing interface {interface}: {e}"));
            }
            if let Err(e) = self
                .resources
                .store()
                .delete(&keys::endpoint(&record.key))
                .await
            {
                failed.push(format!("removing endpoint {id}: {e}"));
            }
            if let (Ok(endpoint), Addresses::Release) = (&record.endpoint, addresses) {
                let nets: Vec<IpNet> = endpoint.nets().copied().collect();
                if let Err(e) = self.release(&nets).await {
                    failed.push(format!("releasing the addresses of endpoint {id}: {e}"));
                }
            }
        }
        teardown_result(failed)
    }

    /// Undoes earlier steps after `cause`; the error to report.
    async fn undo<const N: usize>(
        &self,
        cause: WorkloadError,
        steps: [Undo<'_>; N],
    ) -> WorkloadError {
        let mut left = Vec::new();
        for step in steps {
            let result = match step {
                Undo::Interface(name) => {
                    unwire(name).await.map(|_| ()).map_err(WorkloadError::from)
                }
                Undo::Addresses(nets) => self.release(nets).await,
            };
            if let Err(e) = result {
                left.push(format!("{step:?}: {e}"));
            }
        }
        match (cause, left.is_empty()) {
            (cause, true) => cause,
            (cause, false) => WorkloadError::Incomplete {
                cause: Box::new(cause),
                left,
            },
        }
    }
}

/// Whether a teardown gives the endpoints' addresses back to IPAM. libnetwork keeps them:
/// Docker releases them itself, with a call of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    Release,
    Keep,
}

/// A step to take back.
#[derive(Debug, Clone, Copy)]
enum Undo<'a> {
    Interface(&'a str),
    Addresses(&'a [IpNet]),
}

fn teardown_result(failed: Vec<String>) -> Result<()> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(WorkloadError::Teardown(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_ours_stable_and_differ_by_endpoint() {
        let a = mac_for("0123456789abcdef");
        assert_eq!(a, mac_for("0123456789abcdef"));
        assert_ne!(a, mac_for("0123456789abcdee"));
        assert_eq!(a[0], 0xee);
        assert_eq!(a[0] & 1, 0, "unicast");
        assert_eq!(a[0] & 2, 2, "locally administered");
    }
}
