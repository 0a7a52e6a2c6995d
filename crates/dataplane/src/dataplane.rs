//! The dataplane driver the agent talks to: make the kernel match a desired state, and tell
//! whether the kernel has drifted from what was last applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use calico_felix::{Changes, DesiredState};
use ipnet::IpNet;

use crate::netlink::{Netlink, NetlinkError, RouteTarget};
use crate::nft::isolate::{self, Part};
use crate::nft::{delta_script, Firewall, FirewallError, Ruleset};
use crate::{iptables, sysctl};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("sysctl: {0}")]
    Sysctl(#[from] std::io::Error),
}

/// What one apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub ruleset_changed: bool,
    pub routes_added: usize,
    pub routes_removed: usize,
    /// Endpoints whose interface does not exist (yet): no route until it does.
    pub missing_interfaces: Vec<String>,
    /// Endpoints failed closed because nft refused their part of the ruleset (their own
    /// chains or a profile they use), by interface, with the reason.
    pub failed_closed: BTreeMap<String, String>,
}

#[async_trait]
pub trait Dataplane: Send {
    /// Brings the whole kernel state to `desired`.
    async fn apply(&mut self, desired: &DesiredState) -> Result<Applied, DataplaneError>;
    /// Brings the parts `changes` names to `desired`, the rest having been applied before.
    async fn apply_changes(
        &mut self,
        desired: &DesiredState,
        changes: &Changes,
    ) -> Result<Applied, DataplaneError>;
    /// True if someone removed or changed what the last apply programmed, or an endpoint's
    /// interface that was missing has appeared.
    async fn drifted(&mut self) -> Result<bool, DataplaneError>;
    /// Work an incremental apply left for a quiet moment (compiling endpoints' chains, which
    /// changes no verdict); true if there was any. `desired` is what was last applied.
    async fn finish(&mut self, _desired: &DesiredState) -> Result<bool, DataplaneError> {
        Ok(false)
    }
}

/// The kernel of the namespace the process runs in.
pub struct LinuxDataplane {
    firewall: Arc<dyn Firewall>,
    netlink: Netlink,
    /// What the kernel's table holds, as far as we know (None: replace it whole next time).
    applied_ruleset: Option<Ruleset>,
    /// Workload interfaces whose sysctls are set, by name, with the index of the link that was
    /// configured: a workload started again gets a new link under the same name, which needs
    /// configuring again.
    configured_interfaces: BTreeMap<String, u32>,
    /// Routes the last apply left in place: destination → interface index.
    programmed_routes: BTreeMap<IpNet, RouteTarget>,
    /// Permanent neighbour entries made: (interface index, address) → MAC.
    programmed_neighbours: BTreeMap<(u32, IpAddr), [u8; 6]>,
    /// Endpoints' interfaces the last apply did not find: when one appears, apply again.
    missing_interfaces: BTreeSet<String>,
    /// What the routes were last reconciled from, per endpoint interface: a change that
    /// leaves these alone (a profile list, say) need not read the kernel's routes again.
    routed_endpoints: BTreeMap<String, RouteInputs>,
    /// Parts of the ruleset nft refused, with the check script that proved it and nft's
    /// reason: left out at once while they stay the same, rechecked when they change.
    refused: BTreeMap<Part, (String, String)>,
    /// The drift check of iptables' FORWARD rule, running: two processes (iptables and
    /// ip6tables, about 7 ms here), which the agent must not wait for, or a change arriving
    /// meanwhile would; its answer is read at the next check.
    forward_rule_check: Option<tokio::task::JoinHandle<std::io::Result<bool>>>,
}

impl LinuxDataplane {
    pub fn new(firewall: Arc<dyn Firewall>) -> Result<Self, DataplaneError> {
        Ok(LinuxDataplane {
            firewall,
            netlink: Netlink::connect()?,
            applied_ruleset: None,
            configured_interfaces: BTreeMap::new(),
            programmed_routes: BTreeMap::new(),
            programmed_neighbours: BTreeMap::new(),
            missing_interfaces: BTreeSet::new(),
            routed_endpoints: BTreeMap::new(),
            refused: BTreeMap::new(),
            forward_rule_check: None,
        })
    }

    /// Whether iptables' FORWARD rule was there at the last check that has finished (true
    /// until one has), starting the next one.
    async fn forward_rule_present(&mut self) -> Result<bool, DataplaneError> {
        let finished = match self.forward_rule_check.take() {
            Some(check) if check.is_finished() => Some(check.await.expect("iptables worker")?),
            running => {
                self.forward_rule_check = running;
                None
            }
        };
        if self.forward_rule_check.is_none() {
            self.forward_rule_check = Some(tokio::task::spawn_blocking(iptables::present));
        }
        Ok(finished.unwrap_or(true))
    }

    /// Programs the ruleset for `desired`, leaving out the parts nft refuses (see
    /// [`isolate`]): one refused profile or endpoint must not stop the rest of the host from
    /// being updated. True if anything was applied; the endpoints failed closed go in
    /// `applied`.
    async fn apply_policy(
        &mut self,
        desired: &DesiredState,
        applied: &mut Applied,
    ) -> Result<bool, DataplaneError> {
        // Parts refused before and unchanged since are left out without asking nft again.
        let known: isolate::Refused = self
            .refused
            .iter()
            .filter(|(part, (probe, _))| {
                isolate::probe_script(desired, part).as_ref() == Some(probe)
            })
            .map(|(part, (_, reason))| (part.clone(), reason.clone()))
            .collect();
        let (state, failed) = isolate::without(desired, &known);
        match self.apply_firewall(Ruleset::new_deferring(&state)).await {
            Ok(changed) => {
                self.refused.retain(|part, _| known.contains_key(part));
                applied.failed_closed = failed;
                return Ok(changed);
            }
            Err(DataplaneError::Firewall(FirewallError::Rejected(reason))) => {
                tracing::error!(%reason, "nft refused the ruleset; looking for the parts it refuses");
            }
            Err(e) => return Err(e),
        }
        let firewall = self.firewall.clone();
        let whole = desired.clone();
        let refused = tokio::task::spawn_blocking(move || {
            isolate::refused_parts(&whole, &|script| firewall.check(script))
        })
        .await
        .expect("nft worker")?;
        let (state, failed) = isolate::without(desired, &refused);
        for (interface, reason) in &failed {
            tracing::error!(interface, %reason, "endpoint failed closed: its traffic is dropped");
        }
        let changed = self.apply_firewall(Ruleset::new_deferring(&state)).await?;
        self.refused = refused
            .into_iter()
            .filter_map(|(part, reason)| {
                isolate::probe_script(desired, &part).map(|probe| (part, (probe, reason)))
            })
            .collect();
        applied.failed_closed = failed;
        Ok(changed)
    }

    async fn run_firewall(&self, script: String) -> Result<(), FirewallError> {
        let firewall = self.firewall.clone();
        tokio::task::spawn_blocking(move || firewall.apply(&script))
            .await
            .expect("nft worker")
    }

    async fn table_exists(&self) -> Result<bool, FirewallError> {
        let firewall = self.firewall.clone();
        tokio::task::spawn_blocking(move || firewall.table_exists())
            .await
            .expect("nft worker")
    }

    /// Brings the table to `new`: a delta from what was applied when we know it, else (or if
    /// the delta is refused) a full replacement. True if anything was applied.
    async fn apply_firewall(&mut self, new: Ruleset) -> Result<bool, DataplaneError> {
        let started = std::time::Instant::now();
        let known = match self.applied_ruleset.take() {
            Some(old) if self.table_exists().await? => Some(old),
            _ => None,
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "table checked"
        );
        let applied = match known {
            Some(old) => {
                let delta = delta_script(&old, &new);
                tracing::debug!(lines = delta.lines().count(), "nft delta");
                if delta.is_empty() {
                    self.applied_ruleset = Some(new);
                    return Ok(false);
                }
                match self.run_firewall(delta).await {
                    Ok(()) => true,
                    Err(e) => {
                        // Our idea of the kernel's table was wrong: replace it whole.
                        tracing::warn!(error = %e, "nft refused an incremental update; replacing the table");
                        false
                    }
                }
            }
            None => false,
        };
        if !applied {
            self.run_firewall(new.full_script()).await?;
        }
        self.applied_ruleset = Some(new);
        Ok(true)
    }

    async fn apply_routes(
        &mut self,
        desired: &DesiredState,
        applied: &mut Applied,
    ) -> Result<(), DataplaneError> {
        let links = self.netlink.links().await?;
        // This host's blocks first: a workload's own route inside one is more specific.
        let mut wanted: BTreeMap<IpNet, RouteTarget> = desired
            .blocks
            .iter()
            .map(|b| (*b, RouteTarget::Blackhole))
            .collect();
        let mut neighbours = BTreeMap::new();
        for endpoint in desired.endpoints.values() {
            let Some(link) = links.get(&endpoint.interface) else {
                applied.missing_interfaces.push(endpoint.interface.clone());
                continue;
            };
            if !link.up {
                self.netlink.set_up(link.index).await?;
            }
            if self
                .configured_interfaces
                .insert(endpoint.interface.clone(), link.index)
                != Some(link.index)
            {
                sysctl::configure_workload_interface(&endpoint.interface)?;
            }
            let nets = endpoint
                .ipv4
                .iter()
                .map(|n| IpNet::V4(*n))
                .chain(endpoint.ipv6.iter().map(|n| IpNet::V6(*n)));
            let mac = endpoint.mac.as_deref().and_then(parse_mac);
            for net in nets {
                wanted.insert(net, RouteTarget::Interface(link.index));
                if let Some(mac) = mac {
                    neighbours.insert((link.index, net.addr()), mac);
                }
            }
        }
        self.configured_interfaces
            .retain(|name, index| links.get(name).is_some_and(|l| l.index == *index));
        let mut present = BTreeSet::new();
        for route in self.netlink.owned_routes().await? {
            if wanted.get(&route.destination) == Some(&route.target) {
                present.insert(route.destination);
            } else {
                self.netlink.delete_route(&route).await?;
                applied.routes_removed += 1;
            }
        }
        // The workload's MAC is known: the host need not ask for it. Without this, a packet
        // that comes before the workload's interface is up leaves an unanswered ARP request
        // whose retry (a second later) is what the first packet then waits for.
        for (&(index, ip), mac) in &neighbours {
            if self.programmed_neighbours.get(&(index, ip)) != Some(mac) {
                self.netlink.set_neighbour(index, ip, *mac).await?;
            }
        }
        self.programmed_neighbours = neighbours;
        for (destination, target) in &wanted {
            if !present.contains(destination) {
                self.netlink.add_route(*destination, *target).await?;
                applied.routes_added += 1;
            }
        }
        self.programmed_routes = wanted;
        self.routed_endpoints = desired
            .endpoints
            .keys()
            .filter_map(|i| Some((i.clone(), route_inputs(desired, i)?)))
            .collect();
        Ok(())
    }
}

/// What an endpoint's routes and neighbour entries are made from: its MAC and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteInputs {
    mac: Option<String>,
    nets: Vec<IpNet>,
}

fn route_inputs(desired: &DesiredState, interface: &str) -> Option<RouteInputs> {
    let endpoint = desired.endpoints.get(interface)?;
    Some(RouteInputs {
        mac: endpoint.mac.clone(),
        nets: endpoint
            .ipv4
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(endpoint.ipv6.iter().map(|n| IpNet::V6(*n)))
            .collect(),
    })
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

#[async_trait]
impl Dataplane for LinuxDataplane {
    async fn apply(&mut self, desired: &DesiredState) -> Result<Applied, DataplaneError> {
        let started = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
        sysctl::enable_forwarding()?;
        let mut applied = Applied::default();
        applied.ruleset_changed = self.apply_policy(desired, &mut applied).await?;
        tracing::debug!(elapsed_ms = ms(started), "firewall applied");
        self.apply_routes(desired, &mut applied).await?;
        self.missing_interfaces = applied.missing_interfaces.iter().cloned().collect();
        tracing::debug!(elapsed_ms = ms(started), "routes applied");
        tokio::task::spawn_blocking(iptables::ensure)
            .await
            .expect("iptables worker")?;
        Ok(applied)
    }

    /// The usual path: only the objects the changes name are rendered and programmed, and
    /// routes are reconciled only when endpoints or blocks changed. Anything unexpected (no
    /// ruleset applied yet, parts refused before, nft refusing the operations) falls back to
    /// the whole apply, which replaces the table and isolates what nft refuses.
    async fn apply_changes(
        &mut self,
        desired: &DesiredState,
        changes: &Changes,
    ) -> Result<Applied, DataplaneError> {
        if !self.refused.is_empty() {
            return self.apply(desired).await;
        }
        let Some(mut ruleset) = self.applied_ruleset.take() else {
            return self.apply(desired).await;
        };
        let started = std::time::Instant::now();
        let us = |t: std::time::Instant| t.elapsed().as_micros() as u64;
        let ops = ruleset.update(desired, changes);
        let rendered_us = us(started);
        let mut applied = Applied {
            ruleset_changed: !ops.is_empty(),
            ..Applied::default()
        };
        let op_count = ops.len();
        if !ops.is_empty() {
            let firewall = self.firewall.clone();
            let run = tokio::task::spawn_blocking(move || firewall.apply_ops(&ops));
            if let Err(e) = run.await.expect("nft worker") {
                tracing::warn!(error = %e, "nft refused an incremental update; applying the whole state");
                return self.apply(desired).await;
            }
        }
        let firewall_us = us(started);
        self.applied_ruleset = Some(ruleset);
        let routes_changed = changes.blocks
            || changes.endpoints.iter().any(|interface| {
                route_inputs(desired, interface).as_ref() != self.routed_endpoints.get(interface)
            });
        if routes_changed {
            self.apply_routes(desired, &mut applied).await?;
            self.missing_interfaces = applied.missing_interfaces.iter().cloned().collect();
        } else {
            applied.missing_interfaces = self.missing_interfaces.iter().cloned().collect();
        }
        // Where an incremental apply's time goes (cumulative from its start).
        tracing::debug!(
            ops = op_count,
            rendered_us,
            firewall_us,
            routes_us = us(started),
            "incremental apply"
        );
        Ok(applied)
    }

    async fn finish(&mut self, desired: &DesiredState) -> Result<bool, DataplaneError> {
        let Some(ruleset) = self.applied_ruleset.as_mut() else {
            return Ok(false);
        };
        if ruleset.deferred.is_empty() {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let ops = ruleset.compile_deferred(desired);
        let count = ops.len();
        let firewall = self.firewall.clone();
        let run = tokio::task::spawn_blocking(move || firewall.apply_ops(&ops));
        if let Err(e) = run.await.expect("nft worker") {
            // The ruleset no longer says what the kernel holds: the next apply is whole.
            self.applied_ruleset = None;
            return Err(e.into());
        }
        tracing::debug!(
            ops = count,
            elapsed_us = started.elapsed().as_micros() as u64,
            "compiled endpoints' chains applied"
        );
        Ok(true)
    }

    async fn drifted(&mut self) -> Result<bool, DataplaneError> {
        let table = self.table_exists().await?;
        let forward_rule = self.forward_rule_present().await?;
        if !table || !forward_rule {
            return Ok(true);
        }
        if !self.missing_interfaces.is_empty() {
            let links = self.netlink.links().await?;
            if self
                .missing_interfaces
                .iter()
                .any(|i| links.contains_key(i))
            {
                return Ok(true);
            }
        }
        let routes: BTreeMap<IpNet, RouteTarget> = self
            .netlink
            .owned_routes()
            .await?
            .into_iter()
            .map(|r| (r.destination, r.target))
            .collect();
        Ok(routes != self.programmed_routes)
    }
}

/// Records each desired state instead of programming a kernel, for tests of the agent.
#[derive(Clone, Default)]
pub struct RecordingDataplane {
    pub applied: Arc<Mutex<Vec<DesiredState>>>,
    /// What `drifted` answers next.
    pub drift: Arc<Mutex<bool>>,
    /// The state each call of `finish` was given.
    pub finished: Arc<Mutex<Vec<DesiredState>>>,
}

#[async_trait]
impl Dataplane for RecordingDataplane {
    async fn apply_changes(
        &mut self,
        desired: &DesiredState,
        _changes: &Changes,
    ) -> Result<Applied, DataplaneError> {
        self.apply(desired).await
    }

    async fn apply(&mut self, desired: &DesiredState) -> Result<Applied, DataplaneError> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(desired.clone());
        *self.drift.lock().unwrap_or_else(|p| p.into_inner()) = false;
        Ok(Applied::default())
    }

    async fn drifted(&mut self) -> Result<bool, DataplaneError> {
        Ok(*self.drift.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn finish(&mut self, desired: &DesiredState) -> Result<bool, DataplaneError> {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(desired.clone());
        Ok(true)
    }
}
