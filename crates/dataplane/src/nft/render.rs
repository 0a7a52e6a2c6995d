//! Renders a host's desired state as one nft script that replaces the agent's two tables
//! atomically (nft applies a script as one transaction).
//!
//! Packet path for traffic on a workload interface (prefix `cali` by default):
//!
//! ```text
//! forward ─ not ours ─▶ (untouched)
//!   │ invalid ─▶ drop;  established/related ─▶ accept
//!   ├─ from a workload ─▶ from-workload ─ vmap by iifname ─▶ fw_<h>: anti-spoofing, then its
//!   │                                     profiles' outbound rules in order; unknown ─▶ drop
//!   ├─ to a workload   ─▶ to-workload   ─ vmap by oifname ─▶ tw_<h>: its profiles' inbound rules
//!   └─ accept
//! forward, table calico-compiled ─ marked by tw_<h> of a compiled endpoint ─▶ vmap by oifname
//!   ─▶ ce_<h>: its compiled inbound policy (see [`super::compile`])
//! forward, compiled-decided ─ marked, not accepted there ─▶ drop
//! input (workload → this host) ─▶ from-workload as above, then DefaultEndpointToHostAction
//! postrouting (nat, while a pool has nat-outgoing) ─ from such a pool to outside every pool
//!   ─▶ masquerade
//! ```
//!
//! An outbound profile rule's `allow` sets [`ALLOW_MARK`] and returns; the endpoint chain
//! returns once the mark is set, else tries the next profile, and drops at the end. So a packet
//! between two workloads on one host must pass the sender's outbound and the receiver's
//! inbound policy. Inbound policy is the last step: an inbound `allow` accepts at once (as the
//! forward chain would after it), which spares a mark test per profile of the walk.
//! Every packet the forward chain accepts also gets [`ACCEPTED_MARK`], which an iptables rule
//! accepts in FORWARD: Docker sets that chain's policy to DROP, and a drop in any base chain
//! is final, so our accept alone would not be enough.
//!
//! Per-packet cost does not grow with the number of endpoints or tag members: interfaces are
//! found through verdict maps and tag members through sets.
//!
//! Chains and sets made for endpoints, profiles and tags are named by a hash of what they
//! stand for (`pi_<h>` a profile's inbound rules, `po_<h>` its outbound ones, `tagh4_<h>` and
//! `tagh6_<h>` a tag's members while they are single addresses, `tag4_<h>` and `tag6_<h>` once
//! one is a network, `fw_<h>`/`tw_<h>` an endpoint), with the readable name in
//! their comment: see [`super::names`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use calico_felix::{DesiredState, EndpointPolicy, HostAction, LocalEndpoint};
use calico_model::rule::{Action, Protocol, Rule as ModelRule};
use ipnet::IpNet;

use super::compile::{self, Compiled, COMPILE_FROM, COMPILE_RULES_MAX};
use super::names::{
    comment, compiled_copy, endpoint_chain, endpoint_walk_chain, is_host_set, profile_chain,
    tag_host_set, tag_set, COMPILED_DISPATCH, COMPILED_FORWARD, TO_COMPILED,
};
use super::rule::{End, Family, Part, Rule, Verdict};
use super::{table_of, ACCEPTED_MARK, ALLOW_MARK, COMPILED_MARK, COMPILED_TABLE, TABLE};

/// The verdict maps from workload interfaces to their endpoint chains.
pub const FROM_ENDPOINT: &str = "from-endpoint";
pub const TO_ENDPOINT: &str = "to-endpoint";

/// Our table as a structure, keyed by name: what a script defines, what a diff compares, and
/// what an incremental update edits one object at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Verdict maps (`ifname : verdict`): map → interface → the chain it jumps to (goto).
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Interval sets of addresses.
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
    /// The compiled chains and sets each endpoint uses (see [`super::compile`]), by its
    /// interface, and how many endpoints use each: shared ones go with the last user.
    pub compiled: BTreeMap<String, BTreeSet<String>>,
    pub users: BTreeMap<String, usize>,
    /// Endpoints that walk their profiles while their compiled chain waits to be made (see
    /// [`Ruleset::compile_deferred`]).
    pub deferred: BTreeSet<String>,
}

/// Compiled objects an endpoint's update added to the table, and those it left unused (as
/// they were).
#[derive(Debug, Default)]
pub(crate) struct CompiledChanges {
    pub added: Vec<String>,
    pub removed_chains: Vec<Chain>,
    pub removed_sets: Vec<String>,
}

/// An interval set of IPv4 or IPv6 networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub v4: bool,
    /// What it holds (see [`comment`]), if its name does not say.
    pub comment: Option<String>,
    /// Non-overlapping networks of the set's family.
    pub elements: BTreeSet<IpNet>,
}

impl Set {
    /// The declaration's body: `type …; [flags interval;] [comment …;]`.
    pub fn properties(&self) -> String {
        let kind = if self.v4 { "ipv4_addr" } else { "ipv6_addr" };
        let flags = match self.interval() {
            true => " flags interval;",
            false => "",
        };
        match &self.comment {
            Some(c) => format!("type {kind};{flags} comment \"{c}\";"),
            None => format!("type {kind};{flags}"),
        }
    }

    /// Whether it is an interval set (of networks), not a hash set of single addresses.
    pub fn interval(&self) -> bool {
        !is_host_set(&self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<&'static str>,
    /// What it is for (see [`comment`]), if its name does not say.
    pub comment: Option<String>,
    pub rules: Vec<Rule>,
}

impl Chain {
    fn new(name: impl Into<String>, hook: Option<&'static str>) -> Self {
        Chain {
            name: name.into(),
            hook,
            comment: None,
            rules: Vec::new(),
        }
    }

    fn described(mut self, text: &str) -> Self {
        self.comment = Some(comment(text));
        self
    }

    /// The declaration's body: its hook and comment (empty for a plain chain without one).
    pub fn properties(&self) -> String {
        let hook = self.hook.map(str::to_string);
        let comment = self.comment.as_ref().map(|c| format!("comment \"{c}\";"));
        [hook, comment]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn rule(&mut self, rule: impl Into<Rule>) {
        self.rules.push(rule.into());
    }

    /// A base chain rule in nft's syntax (see [`Part::Nft`]).
    fn nft(&mut self, text: impl Into<String>) {
        self.rules.push(Rule::nft(text));
    }
}

const FORWARD_HOOK: &str = "type filter hook forward priority filter - 5; policy accept;";
/// Right after ours: a flow our table accepted towards a compiled endpoint meets its policy.
const COMPILED_HOOK: &str = "type filter hook forward priority filter - 4; policy accept;";
/// After the compiled table: what it did not accept (because it is not there) is dropped.
const DECIDED_HOOK: &str = "type filter hook forward priority filter - 3; policy accept;";
const DECIDED_CHAIN: &str = "compiled-decided";
const INPUT_HOOK: &str = "type filter hook input priority filter - 5; policy accept;";
pub(crate) const NAT_CHAIN: &str = "nat-postrouting";
const NAT_HOOK: &str = "type nat hook postrouting priority srcnat; policy accept;";

/// The sets of IP pools (every pool; pools with nat-outgoing), per IP version.
fn pool_set(masquerade: bool, v4: bool) -> String {
    format!(
        "{}pools{}",
        if masquerade { "masq-" } else { "" },
        if v4 { 4 } else { 6 }
    )
}

/// The pieces of the ruleset that stand for one object of the desired state: the unit an
/// incremental update replaces.
impl Ruleset {
    /// The whole ruleset for `state`, every endpoint compiled that should be.
    pub fn new(state: &DesiredState) -> Ruleset {
        Ruleset::build(state, true)
    }

    /// The same with compiling left for [`Ruleset::compile_deferred`]: what the agent
    /// programs at once (nft takes a script of thousands of compiled chains slowly; a
    /// netlink batch of them, later, costs much less).
    pub fn new_deferring(state: &DesiredState) -> Ruleset {
        Ruleset::build(state, false)
    }

    fn build(state: &DesiredState, compile: bool) -> Ruleset {
        let mut ruleset = Ruleset::default();
        for chain in config_chains(state) {
            ruleset.chains.insert(chain.name.clone(), chain);
        }
        for set in pool_sets(state) {
            ruleset.sets.insert(set.name.clone(), set);
        }
        for map in [FROM_ENDPOINT, TO_ENDPOINT, TO_COMPILED] {
            ruleset.maps.insert(map.to_string(), BTreeMap::new());
        }
        for interface in state.endpoints.keys() {
            ruleset.put_endpoint(state, interface, compile);
        }
        for name in state.profiles.keys() {
            ruleset.put_profile(state, name);
        }
        for tag in state.tags.keys() {
            for set in tag_sets(state, tag).into_iter().flatten() {
                ruleset.sets.insert(set.name.clone(), set);
            }
        }
        ruleset
    }

    /// Puts an endpoint's chains and map entries as `state` has them (none if it has no
    /// endpoint on `interface`, or its policy cannot be known: its traffic meets the drop).
    /// Without `compile`, an endpoint that would be compiled walks its profiles for now and
    /// is left for [`Ruleset::compile_deferred`]; its compiled objects stay until then.
    pub(crate) fn put_endpoint(
        &mut self,
        state: &DesiredState,
        interface: &str,
        compile: bool,
    ) -> CompiledChanges {
        let (parts, wants) = endpoint_parts(state, interface, compile);
        let mut changes = CompiledChanges::default();
        let deferring = wants && !compile;
        match deferring {
            true => self.deferred.insert(interface.to_string()),
            false => self.deferred.remove(interface),
        };
        let old = match deferring {
            true => BTreeSet::new(),
            false => self.compiled.remove(interface).unwrap_or_default(),
        };
        if let Some((_, Some(compiled))) = &parts {
            let mut names = BTreeSet::new();
            for chain in &compiled.chains {
                names.insert(chain.name.clone());
                if self.hold(&chain.name) {
                    self.chains.insert(chain.name.clone(), chain.clone());
                    changes.added.push(chain.name.clone());
                }
            }
            for set in &compiled.sets {
                names.insert(set.name.clone());
                if self.hold(&set.name) {
                    self.sets.insert(set.name.clone(), set.clone());
                    changes.added.push(set.name.clone());
                }
            }
            self.compiled.insert(interface.to_string(), names);
        }
        for name in old {
            if self.release(&name) {
                changes.removed_chains.extend(self.chains.remove(&name));
                if self.sets.remove(&name).is_some() {
                    changes.removed_sets.push(name);
                }
            }
        }
        let entries = self.maps.entry(TO_COMPILED.to_string()).or_default();
        match &parts {
            Some((_, Some(compiled))) => {
                entries.insert(interface.to_string(), compiled.entry.clone())
            }
            _ => entries.remove(interface),
        };
        for inbound in [false, true] {
            let name = endpoint_chain(interface, inbound);
            let map = if inbound { TO_ENDPOINT } else { FROM_ENDPOINT };
            let entries = self.maps.entry(map.to_string()).or_default();
            match &parts {
                Some((chains, _)) => {
                    let chain = match inbound {
                        true => chains.to.clone(),
                        false => chains.from.clone(),
                    };
                    entries.insert(interface.to_string(), chain.name.clone());
                    self.chains.insert(name, chain);
                }
                None => {
                    entries.remove(interface);
                    self.chains.remove(&name);
                }
            }
        }
        let walk = endpoint_walk_chain(interface);
        match parts.and_then(|(chains, _)| chains.walk) {
            Some(chain) => self.chains.insert(walk, chain),
            None => self.chains.remove(&walk),
        };
        changes
    }

    /// One more user of a compiled object; true if it is new to the table.
    fn hold(&mut self, name: &str) -> bool {
        let users = self.users.entry(name.to_string()).or_default();
        *users += 1;
        *users == 1
    }

    /// One user fewer; true if that was the last.
    fn release(&mut self, name: &str) -> bool {
        match self.users.get_mut(name) {
            Some(users) if *users > 1 => {
                *users -= 1;
                false
            }
            Some(_) => {
                self.users.remove(name);
                true
            }
            None => false,
        }
    }

    /// Puts a profile's two chains as `state` has them (none if it has no such profile).
    pub(crate) fn put_profile(&mut self, state: &DesiredState, name: &str) {
        for inbound in [true, false] {
            let chain_name = profile_chain(name, inbound);
            match state.profiles.get(name) {
                Some(rules) => {
                    let (direction, rules) = match inbound {
                        true => ("inbound", &rules.inbound_rules),
                        false => ("outbound", &rules.outbound_rules),
                    };
                    let chain = profile_chain_of(state, &chain_name, rules, inbound)
                        .described(&format!("profile {name} {direction}"));
                    self.chains.insert(chain_name, chain);
                }
                None => {
                    self.chains.remove(&chain_name);
                }
            }
        }
    }

    /// The complete script: creates each table if absent, deletes it, and defines it anew, in
    /// one transaction (conntrack is untouched, so established flows carry on).
    pub fn full_script(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        for table in [TABLE, COMPILED_TABLE] {
            let ours = |name: &str| table_of(name) == table;
            line(w, 0, &format!("table inet {table}"));
            line(w, 0, &format!("delete table inet {table}"));
            line(w, 0, &format!("table inet {table} {{"));
            for (name, entries) in self.maps.iter().filter(|(name, _)| ours(name)) {
                line(w, 1, &format!("map {name} {{"));
                line(w, 2, "type ifname : verdict");
                elements(w, entries.iter().map(|(k, v)| map_entry(k, v)).collect());
                line(w, 1, "}");
            }
            for set in self.sets.values().filter(|set| ours(&set.name)) {
                line(w, 1, &format!("set {} {{", set.name));
                line(w, 2, &set.properties());
                elements(
                    w,
                    set.elements
                        .iter()
                        .map(|n| element_text(&set.name, n))
                        .collect(),
                );
                line(w, 1, "}");
            }
            for chain in self.chains.values().filter(|chain| ours(&chain.name)) {
                line(w, 1, &format!("chain {} {{", chain.name));
                let properties = chain.properties();
                if !properties.is_empty() {
                    line(w, 2, &properties);
                }
                for rule in &chain.rules {
                    line(w, 2, &rule.to_string());
                }
                line(w, 1, "}");
            }
            line(w, 0, "}");
        }
        out
    }

    /// The chain an endpoint's inbound policy starts in: its compiled entry chain if it is
    /// compiled, else its chain in our table (which exists only while it has profiles).
    pub fn inbound_chain(&self, interface: &str) -> String {
        match self.maps.get(TO_COMPILED).and_then(|m| m.get(interface)) {
            Some(entry) => entry.clone(),
            None => endpoint_chain(interface, true),
        }
    }
}

/// A set element as nft writes it: a network, or in a hash set its one address.
pub(crate) fn element_text(set: &str, net: &IpNet) -> String {
    match is_host_set(set) {
        true => net.addr().to_string(),
        false => net.to_string(),
    }
}

/// A verdict map element: `"<interface>" : goto <chain>`.
pub(crate) fn map_entry(interface: &str, chain: &str) -> String {
    format!("\"{interface}\" : goto {chain}")
}

/// The complete script for a state (see [`Ruleset::full_script`]).
pub fn render(state: &DesiredState) -> String {
    Ruleset::new(state).full_script()
}

fn line(out: &mut String, indent: usize, text: &str) {
    let _ = writeln!(out, "{}{text}", "\t".repeat(indent));
}

fn elements(out: &mut String, items: Vec<String>) {
    if !items.is_empty() {
        line(out, 2, &format!("elements = {{ {} }}", items.join(", ")));
    }
}

/// The chains that depend on the agent's settings alone: the base chains hooked into the
/// kernel, the dispatch to endpoint chains, and nat-outgoing if a pool asks for it.
pub(crate) fn config_chains(state: &DesiredState) -> Vec<Chain> {
    let prefix = format!("{}*", state.config.interface_prefix);
    let mut chains = base_chains(state, &prefix);
    if wants_nat(state) {
        chains.push(nat_chain());
    }
    chains
}

/// Whether any pool has nat-outgoing. Without one there is no nat chain at all: a nat hook
/// costs every new flow its NAT set-up even when it masquerades nothing (measured: new
/// connections/s 0.95 → 0.86 of no firewall with an empty nat chain beside conntrack).
pub(crate) fn wants_nat(state: &DesiredState) -> bool {
    !(state.masquerade.ipv4.is_empty() && state.masquerade.ipv6.is_empty())
}

/// The pool sets: every pool, and the pools with nat-outgoing, per IP version.
pub(crate) fn pool_sets(state: &DesiredState) -> Vec<Set> {
    let mut sets = Vec::new();
    for (masquerade, pools) in [(false, &state.pools), (true, &state.masquerade)] {
        sets.push(Set {
            name: pool_set(masquerade, true),
            v4: true,
            comment: None,
            elements: pools.ipv4.iter().map(|n| IpNet::V4(*n)).collect(),
        });
        sets.push(Set {
            name: pool_set(masquerade, false),
            v4: false,
            comment: None,
            elements: pools.ipv6.iter().map(|n| IpNet::V6(*n)).collect(),
        });
    }
    sets
}

/// A tag's two sets (IPv4, IPv6) as `state` has them, or None where it has no such tag
/// (the names are still given: `tag_set_names`).
pub(crate) fn tag_sets(state: &DesiredState, tag: &str) -> [Option<Set>; 2] {
    [true, false].map(|v4| {
        state.tags.get(tag).map(|members| Set {
            name: tag_set_of(state, tag, v4),
            v4,
            comment: Some(comment(&format!("tag {tag}"))),
            elements: match v4 {
                true => members.ipv4.iter().map(|n| IpNet::V4(*n)).collect(),
                false => members.ipv6.iter().map(|n| IpNet::V6(*n)).collect(),
            },
        })
    })
}

/// The set holding a tag's members of one family as `state` has them: a hash set while they
/// are all single addresses, else an interval set (see [`tag_host_set`]).
pub(crate) fn tag_set_of(state: &DesiredState, tag: &str, v4: bool) -> String {
    let hosts = state.tags.get(tag).is_none_or(|members| match v4 {
        true => members.ipv4.iter().all(|n| n.prefix_len() == 32),
        false => members.ipv6.iter().all(|n| n.prefix_len() == 128),
    });
    match hosts {
        true => tag_host_set(tag, v4),
        false => tag_set(tag, v4),
    }
}

/// An endpoint's chains in our table.
#[derive(Debug)]
struct EndpointChains {
    /// Traffic from it: anti-spoofing, then its profiles' outbound rules.
    from: Chain,
    /// Traffic to it: its profiles' inbound rules; for one to compile, a jump to `walk`
    /// while its compiled chains wait to be made, else the mark for the compiled table.
    to: Chain,
    /// For an endpoint to compile: the walk of its profiles' inbound rules, kept whether
    /// compiled or not, so that a change to one of its profiles, which lands as that walk
    /// first, rewrites one rule of `to`, not a rule per profile (1,001 for the benchmarks'
    /// `dst`: a 169 KB batch and 20 ms when it was written anew).
    walk: Option<Chain>,
}

/// An endpoint's chains, if it is programmed, and what its compiled inbound chain uses (if
/// compiled); and whether it is one to compile.
type EndpointParts = Option<(EndpointChains, Option<Compiled>)>;

fn endpoint_parts(state: &DesiredState, interface: &str, compile: bool) -> (EndpointParts, bool) {
    let Some(endpoint) = state.endpoints.get(interface) else {
        return (None, false);
    };
    match &endpoint.policy {
        // Without a profile everything is dropped, as it is for an interface the maps do not
        // hold: no chains, so adding such an endpoint (`calicoctl container add` before its
        // `profile set`) commits no rules, and the kernel skips checking the whole table.
        EndpointPolicy::Profiles(profiles) if profiles.is_empty() => (None, false),
        EndpointPolicy::Profiles(profiles) => {
            let (chains, compiled, wants) = endpoint_chains(state, endpoint, profiles, compile);
            (Some((chains, compiled)), wants)
        }
        EndpointPolicy::DropAll(_) => (None, false),
    }
}

fn clear_mark() -> String {
    format!(
        "meta mark set meta mark and {:#010x}",
        !(ALLOW_MARK | COMPILED_MARK)
    )
}

fn base_chains(state: &DesiredState, prefix: &str) -> Vec<Chain> {
    let accepted = format!("meta mark set meta mark or {ACCEPTED_MARK:#010x} accept");
    let mut forward = Chain::new("forward", Some(FORWARD_HOOK));
    forward.nft(format!(
        "iifname != \"{prefix}\" oifname != \"{prefix}\" return"
    ));
    forward.nft("ct state invalid drop");
    forward.nft(format!("ct state established,related {accepted}"));
    forward.nft(clear_mark());
    forward.nft(format!("iifname \"{prefix}\" jump from-workload"));
    forward.nft(clear_mark());
    forward.nft(format!("oifname \"{prefix}\" jump to-workload"));
    forward.nft(accepted);

    let mut input = Chain::new("input", Some(INPUT_HOOK));
    input.nft(format!("iifname != \"{prefix}\" return"));
    input.nft("ct state invalid drop");
    input.nft("ct state established,related accept");
    // IPv6 needs neighbour discovery with the host, whatever the policy.
    input.nft("icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept");
    input.nft(clear_mark());
    input.nft("jump from-workload");
    input.nft(match state.config.endpoint_to_host {
        HostAction::Drop => "drop",
        HostAction::Return => "return",
        HostAction::Accept => "accept",
    });

    // The compiled table decides only the flows ours accepted towards a compiled endpoint:
    // every other packet costs it one test of the mark.
    let mut compiled = Chain::new(COMPILED_FORWARD, Some(COMPILED_HOOK));
    compiled.nft(format!(
        "meta mark and {COMPILED_MARK:#010x} != 0 goto {COMPILED_DISPATCH}"
    ));
    let mut dispatch = Chain::new(COMPILED_DISPATCH, None);
    dispatch.nft(format!("oifname vmap @{TO_COMPILED}"));
    dispatch.nft("drop");

    // Fail closed without the compiled table (deleted behind our back, until the drift check
    // puts it back): a flow marked for it that it did not accept is dropped.
    let mut decided = Chain::new(DECIDED_CHAIN, Some(DECIDED_HOOK));
    decided.nft(format!(
        "meta mark and {:#010x} == {COMPILED_MARK:#010x} drop",
        COMPILED_MARK | ACCEPTED_MARK
    ));

    let mut chains = vec![forward, input, compiled, dispatch, decided];
    for (chain, map, key) in [
        ("from-workload", "from-endpoint", "iifname"),
        ("to-workload", "to-endpoint", "oifname"),
    ] {
        let mut c = Chain::new(chain, None);
        c.nft(format!("{key} vmap @{map}"));
        c.nft("drop");
        chains.push(c);
    }
    chains
}

/// nat-outgoing: traffic from a pool that has it, to anywhere outside every pool, leaves with
/// the host's address. Present while a pool asks for it; the pool sets always are, so a change
/// of pools while one does is a change of set members.
fn nat_chain() -> Chain {
    let mut chain = Chain::new(NAT_CHAIN, Some(NAT_HOOK));
    for (ip, v4) in [("ip", true), ("ip6", false)] {
        chain.nft(format!(
            "{ip} saddr @{} {ip} daddr != @{} masquerade",
            pool_set(true, v4),
            pool_set(false, v4)
        ));
    }
    chain
}

/// An endpoint's chains (see [`EndpointChains`]): from it (anti-spoofing, then its profiles'
/// outbound rules) and to it (its profiles' inbound rules); each drops what no profile
/// allowed. With many profiles, the inbound chain is compiled (see [`super::compile`]).
fn endpoint_chains(
    state: &DesiredState,
    e: &LocalEndpoint,
    profiles: &[String],
    compile: bool,
) -> (EndpointChains, Option<Compiled>, bool) {
    let existing: Vec<&String> = profiles
        .iter()
        .filter(|p| state.profiles.contains_key(*p))
        .collect();
    let lists: Vec<&[calico_model::rule::Rule]> = existing
        .iter()
        .filter_map(|p| state.profiles.get(*p))
        .map(|r| r.inbound_rules.as_slice())
        .collect();
    let rules: usize = lists.iter().map(|l| l.len()).sum();
    let wants = existing.len() >= COMPILE_FROM && rules <= COMPILE_RULES_MAX;
    let compiled = (wants && compile)
        .then(|| compiled_inbound(state, &lists))
        .flatten();
    let mut from = Chain::new(endpoint_chain(&e.interface, false), None)
        .described(&format!("from endpoint {}", e.interface));
    // Anti-spoofing: a workload sends only from its own addresses.
    let v4: Vec<IpNet> = e.ipv4.iter().map(|n| IpNet::V4(*n)).collect();
    let v6: Vec<IpNet> = e.ipv6.iter().map(|n| IpNet::V6(*n)).collect();
    for (family, nets) in [(Family::V4, v4), (Family::V6, v6)] {
        let test = match nets.is_empty() {
            true => Part::Family(family),
            false => Part::OutsideAll { family, nets },
        };
        from.rule(Rule::new(vec![test, Part::Verdict(Verdict::Drop)]));
    }
    from.rules.extend(walk(state, &existing, false));
    let mut to = Chain::new(endpoint_chain(&e.interface, true), None)
        .described(&format!("to endpoint {}", e.interface));
    let walk_chain = wants.then(|| {
        let mut chain = Chain::new(endpoint_walk_chain(&e.interface), None).described(&format!(
            "to endpoint {}, its profiles in order",
            e.interface
        ));
        chain.rules = walk(state, &existing, true);
        chain
    });
    match (&walk_chain, &compiled) {
        // Its policy is in the compiled table, which comes next.
        // (An accept there marks the flow for iptables, as ours would.)
        (_, Some(_)) => to.rule(Rule::new(vec![
            Part::SetMark(COMPILED_MARK),
            Part::Verdict(Verdict::Accept),
        ])),
        (Some(walk), None) => to.rule(Verdict::Jump(walk.name.clone())),
        (None, None) => to.rules = walk(state, &existing, true),
    }
    let chains = EndpointChains {
        from,
        to,
        walk: walk_chain,
    };
    (chains, compiled, wants)
}

/// The walk of an endpoint's profiles in one direction, then the drop.
fn walk(state: &DesiredState, profiles: &[&String], inbound: bool) -> Vec<Rule> {
    let mut rules = Vec::new();
    for profile in profiles {
        rules.push(Rule::from(Verdict::Jump(profile_chain(profile, inbound))));
        if !inbound {
            rules.push(Rule::new(vec![
                Part::MarkHas(ALLOW_MARK),
                Part::Verdict(Verdict::Return),
            ]));
        }
        // A rule that matches everything decides every packet that gets to it, so no packet
        // walks on to the next profile: the walk, and the kernel's check of it at every
        // commit, stop here (the benchmarks' `dst` has 1,001 profiles whose outbound rules
        // are one `allow`).
        let own = state.profiles.get(*profile).map(|r| match inbound {
            true => &r.inbound_rules,
            false => &r.outbound_rules,
        });
        if own.is_some_and(|own| own.iter().any(|r| *r == ModelRule::new(r.action))) {
            break;
        }
    }
    rules.push(Rule::from(Verdict::Drop));
    rules
}

/// An endpoint's inbound rules compiled (see [`super::compile`]) into the compiled table,
/// with copies of the tag sets they use.
fn compiled_inbound(
    state: &DesiredState,
    lists: &[&[calico_model::rule::Rule]],
) -> Option<Compiled> {
    let allow = inbound_allow();
    let mut copies: BTreeMap<String, Set> = BTreeMap::new();
    let mut tags: BTreeSet<&String> = BTreeSet::new();
    for rule in lists.iter().flat_map(|l| l.iter()) {
        tags.extend(rule.src_tag.iter().chain(&rule.dst_tag));
    }
    for tag in tags {
        for set in tag_sets(state, tag).into_iter().flatten() {
            let name = compiled_copy(&set.name);
            copies.insert(set.name.clone(), Set { name, ..set });
        }
    }
    let render = |rule: &calico_model::rule::Rule| {
        let mut rules = rule_parts(state, rule, &allow);
        for part in rules.iter_mut().flat_map(|r| r.parts.iter_mut()) {
            if let Part::InSet { set, .. } = part {
                if let Some(copy) = copies.get(set.as_str()) {
                    *set = copy.name.clone();
                }
            }
        }
        rules
    };
    let mut compiled = compile::inbound(lists, &render)?;
    let used: BTreeSet<&str> = compiled
        .chains
        .iter()
        .flat_map(|c| c.rules.iter().flat_map(|r| r.parts.iter()))
        .filter_map(|part| match part {
            Part::InSet { set, .. } => Some(set.as_str()),
            _ => None,
        })
        .collect();
    let used: Vec<Set> = copies
        .into_values()
        .filter(|copy| used.contains(copy.name.as_str()))
        .collect();
    compiled.sets.extend(used);
    Some(compiled)
}

/// What an inbound `allow` does: accept at once (inbound policy is the last step).
fn inbound_allow() -> [Part; 2] {
    [Part::SetMark(ACCEPTED_MARK), Part::Verdict(Verdict::Accept)]
}

/// A profile's chain for one direction. An outbound `allow` marks the packet and returns (the
/// receiver's inbound policy is still to come); an inbound one accepts at once.
fn profile_chain_of(
    state: &DesiredState,
    name: &str,
    rules: &[calico_model::rule::Rule],
    inbound: bool,
) -> Chain {
    let allow = match inbound {
        true => inbound_allow(),
        false => [Part::SetMark(ALLOW_MARK), Part::Verdict(Verdict::Return)],
    };
    let mut chain = Chain::new(name, None);
    for rule in rules {
        rule_parts(state, rule, &allow)
            .into_iter()
            .for_each(|r| chain.rule(r));
    }
    chain
}

/// One nft rule per IP version the rule applies to (a tag has a set per version).
fn rule_parts(
    state: &DesiredState,
    rule: &calico_model::rule::Rule,
    allow: &[Part; 2],
) -> Vec<Rule> {
    let version = rule.ip_version.or_else(|| rule.implied_ip_version());
    let family_specific = rule.src_tag.is_some() || rule.dst_tag.is_some();
    let versions: Vec<Option<Family>> = match version {
        Some(6) => vec![Some(Family::V6)],
        Some(_) => vec![Some(Family::V4)],
        None if family_specific => vec![Some(Family::V4), Some(Family::V6)],
        None => vec![None],
    };
    versions
        .into_iter()
        .map(|family| one_rule(state, rule, family, allow))
        .collect()
}

/// One nft rule; `allow` is what an allowing rule does.
fn one_rule(
    state: &DesiredState,
    rule: &calico_model::rule::Rule,
    family: Option<Family>,
    allow: &[Part; 2],
) -> Rule {
    let mut parts: Vec<Part> = Vec::new();
    if let Some(family) = family {
        parts.push(Part::Family(family));
    }
    if let Some(protocol) = rule.protocol {
        parts.push(Part::L4Proto(protocol));
    }
    // Cheapest tests first: every new flow to an endpoint walks its profiles' rules, and a
    // rule stops at its first test that fails, so a port or ICMP compare that fails spares the
    // set lookup after it (measured: new connections to an endpoint with 1,001 profiles).
    let protocol = rule.protocol.unwrap_or(Protocol::Tcp);
    for (end, ports) in [
        (End::Source, &rule.src_ports),
        (End::Destination, &rule.dst_ports),
    ] {
        if !ports.is_empty() {
            parts.push(Part::Ports {
                protocol,
                end,
                ports: ports.clone(),
            });
        }
    }
    if let Some(icmp_type) = rule.icmp_type {
        let v6 = rule.protocol == Some(Protocol::Icmpv6);
        parts.push(Part::Icmp {
            v6,
            code: false,
            value: icmp_type,
        });
        if let Some(code) = rule.icmp_code {
            parts.push(Part::Icmp {
                v6,
                code: true,
                value: code,
            });
        }
    }
    for (end, net) in [
        (End::Source, &rule.src_net),
        (End::Destination, &rule.dst_net),
    ] {
        if let Some(net) = net {
            parts.push(Part::Net { end, net: *net });
        }
    }
    let set_family = family.unwrap_or(Family::V4);
    for (end, tag) in [
        (End::Source, &rule.src_tag),
        (End::Destination, &rule.dst_tag),
    ] {
        if let Some(tag) = tag {
            parts.push(Part::InSet {
                family: set_family,
                end,
                set: tag_set_of(state, tag, set_family == Family::V4),
            });
        }
    }
    match rule.action {
        Action::Allow => parts.extend(allow.iter().cloned()),
        Action::Deny => parts.push(Part::Verdict(Verdict::Drop)),
    }
    Rule {
        parts,
        // The rule as users wrote it, for `nft list` readers.
        comment: Some(comment(&rule.to_string())),
    }
}

#[cfg(test)]
mod tests;
