//! An endpoint's inbound policy compiled for new flows, when it carries many profiles.
//!
//! Laid out as written, a new flow to an endpoint walks every rule of every profile in
//! order (measured: 1,001 profiles cost about 230 µs per new TCP connection). The inbound
//! rules of all its profiles form one list where the first rule that matches decides (an
//! inbound allow accepts, a deny drops, the end drops), so the flow may instead be sent
//! straight to the rules that can match it:
//!
//! - by protocol: TCP and UDP flows to their own dispatch, everything else to the rules that
//!   can match it (in the endpoint chain itself);
//! - by destination port, through one lookup of a verdict map of exact ports (and, for the
//!   wide ranges between them, of an interval map or one jump), to a class chain for that
//!   range: the rules that name ports in it, in order, between the port-free rules that come
//!   before and after them (see [`dispatch_rules`] for why not one interval map, nor the
//!   tree of port-range tests this was first);
//! - the port-free rules are shared by every class, so they live in a segment tree of
//!   chains over their list: a class chain jumps to the few nodes covering each run of them,
//!   and in every node, consecutive rules that differ only in one network are one lookup of
//!   a set of those networks.
//!
//! Compiled chains and sets are named by a hash of their contents, so endpoints and classes
//! with the same rules share them, and a change rewrites only what it changes. A layout over
//! the budget is not compiled (the endpoint keeps the plain walk).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use calico_model::ports::PortRange;
use calico_model::rule::Protocol;
use ipnet::IpNet;
use std::hash::{Hash, Hasher};

use super::render::{Chain, Set};
use super::rule::{Family, Part, Rule, Verdict};

/// Endpoints with at least this many profiles are compiled; smaller ones keep the plain walk,
/// which is as fast for them and easier to read.
pub const COMPILE_FROM: usize = 16;
/// ... and at most this many inbound rules in all (the budget below bounds what it adds).
/// Compiling is redone whole when one of the endpoint's profiles changes, about 7-9 µs per
/// rule here (`dst`'s 5,005 in the benchmarks: 45-100 ms), so a change first lands as the
/// plain walk, and the agent compiles once the datastore is quiet.
pub const COMPILE_RULES_MAX: usize = 50_000;
/// Classes of at most this many ports go into the exact-port dispatch map, one element per
/// port; wider ones into the interval map after it.
const EXACT_PORTS_MAX: u32 = 16;
/// The most port classes per protocol (entries of its dispatch map); past it, compiling costs
/// more time than the plain walk costs flows, and the endpoint keeps the plain walk.
const MAX_CLASSES: usize = 4096;
/// The most rules and set elements a compiled endpoint may add to the table.
const BUDGET: usize = 200_000;
/// Runs of port-free rules at most this long are copied into the class chain, not jumped to.
const INLINE: usize = 4;
/// Segment-tree nodes of at most this many rules (after merging) are copied too.
const INLINE_NODE: usize = 1;

/// What a compiled endpoint adds to the compiled table: the chain its inbound flows start in
/// (`entry`, one of `chains`), and the chains and sets it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub entry: String,
    pub chains: Vec<Chain>,
    pub sets: Vec<Set>,
}

/// Which packets a rule of the list can match, as far as dispatch cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    /// Any protocol.
    Any,
    /// Only this protocol (TCP or UDP), any destination port.
    Protocol(Protocol),
    /// Only this protocol (TCP or UDP), these destination ports.
    Ports(Protocol, Vec<PortRange>),
    /// Only protocols other than TCP and UDP.
    Other,
}

fn reach(rule: &calico_model::rule::Rule) -> Reach {
    let dispatched = |p: Protocol| matches!(p, Protocol::Tcp | Protocol::Udp);
    if rule.icmp_type.is_some() {
        return Reach::Other;
    }
    // Ports without a protocol are rendered as TCP ports.
    let with_ports = rule.protocol.unwrap_or(Protocol::Tcp);
    if !rule.dst_ports.is_empty() {
        return match dispatched(with_ports) {
            true => Reach::Ports(with_ports, rule.dst_ports.clone()),
            false => Reach::Other,
        };
    }
    match rule.protocol {
        Some(p) if dispatched(p) => Reach::Protocol(p),
        Some(_) => Reach::Other,
        None if !rule.src_ports.is_empty() => Reach::Protocol(Protocol::Tcp),
        None => Reach::Any,
    }
}

/// The inbound rules of `lists` (each profile's rules, in the endpoint's order), compiled;
/// None when over the budget. `render` turns one model rule into its nft rules.
pub fn inbound(
    lists: &[&[calico_model::rule::Rule]],
    render: &dyn Fn(&calico_model::rule::Rule) -> Vec<Rule>,
) -> Option<Compiled> {
    let rules: Vec<&calico_model::rule::Rule> = lists.iter().flat_map(|l| l.iter()).collect();
    let rendered: Vec<Vec<Rule>> = rules.iter().map(|r| render(r)).collect();
    let reaches: Vec<Reach> = rules.iter().map(|r| reach(r)).collect();
    let mut out = Output::default();
    let mut entry = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let targets = dispatch(protocol, &reaches, &rendered, &mut out)?;
        let rules = dispatch_rules(protocol, targets);
        out.size += rules.len();
        entry.extend(rules);
    }
    let mut others: Vec<Rule> = reaches
        .iter()
        .zip(&rendered)
        .filter(|(r, _)| matches!(r, Reach::Any | Reach::Other))
        .flat_map(|(_, rules)| rules.iter().cloned())
        .collect();
    others.truncate(others.iter().rposition(accepts).map_or(0, |i| i + 1));
    // In a chain of their own, named by its contents like the rest: a change to one
    // protocol's dispatch then rewrites the few rules of the endpoint chain, not these.
    let mut others = merged(others, &mut out);
    others.push(Rule::from(Verdict::Drop));
    let others = out.chain("co", "other protocols".into(), others);
    entry.push(Rule::from(Verdict::Jump(others)));
    let entry = out.chain("ce", "compiled inbound policy".into(), entry);
    (out.size <= BUDGET).then(|| Compiled {
        entry,
        chains: out.chains.into_values().collect(),
        sets: out.sets.into_values().collect(),
    })
}

/// The entry rules that send one protocol's flows to their class chains (`targets`: port
/// ranges in order, covering every port). Every class chain ends in a verdict, so a flow
/// that found its class never reaches the next rule.
///
/// Measured here, a new flow to `dst:5202` cost about 3.5 µs more through one interval map
/// of `dst`'s 1,006 ranges (the kernel's interval lookup grows with the ranges and how
/// they split into prefixes) than through a map of exact ports: so the narrow classes (most
/// of them: a rule's own port) are an exact-port map, and only the wide ranges between them
/// (few) an interval map, or one jump when they share a chain.
fn dispatch_rules(protocol: Protocol, targets: Vec<(PortRange, String)>) -> Vec<Rule> {
    let jump = |chain: String| {
        Rule::new(vec![
            Part::L4Proto(protocol),
            Part::Verdict(Verdict::Jump(chain)),
        ])
    };
    if targets.len() == 1 {
        return targets.into_iter().map(|(_, chain)| jump(chain)).collect();
    }
    let (narrow, wide): (Vec<_>, Vec<_>) = targets
        .into_iter()
        .partition(|(range, _)| u32::from(range.high - range.low) < EXACT_PORTS_MAX);
    let exact: Vec<(PortRange, String)> = narrow
        .into_iter()
        .flat_map(|(range, chain)| {
            (range.low..=range.high).map(move |port| (PortRange::single(port), chain.clone()))
        })
        .collect();
    let mut rules = Vec::new();
    if !exact.is_empty() {
        rules.push(Rule::new(vec![Part::PortMap {
            protocol,
            targets: exact,
        }]));
    }
    match wide.as_slice() {
        [] => {}
        [(_, first), rest @ ..] if rest.iter().all(|(_, chain)| chain == first) => {
            rules.push(jump(first.clone()))
        }
        _ => rules.push(Rule::new(vec![Part::PortMap {
            protocol,
            targets: wide,
        }])),
    }
    rules
}

/// The chains and sets made so far, by name, and their size.
#[derive(Default)]
struct Output {
    chains: BTreeMap<String, Chain>,
    sets: BTreeMap<String, Set>,
    size: usize,
}

impl Output {
    /// A chain named by its contents (kind `kind`); its name.
    fn chain(&mut self, kind: &str, comment: String, rules: Vec<Rule>) -> String {
        let name = content_name(kind, &(&comment, &rules));
        if !self.chains.contains_key(&name) {
            self.size += rules.len();
            self.chains.insert(
                name.clone(),
                Chain {
                    name: name.clone(),
                    hook: None,
                    comment: Some(super::names::comment(&comment)),
                    rules,
                },
            );
        }
        name
    }

    fn set(&mut self, v4: bool, elements: BTreeSet<IpNet>) -> String {
        let name = content_name(if v4 { "cset4" } else { "cset6" }, &elements);
        if !self.sets.contains_key(&name) {
            self.size += elements.len();
            self.sets.insert(
                name.clone(),
                Set {
                    name: name.clone(),
                    v4,
                    comment: Some("networks of consecutive rules".into()),
                    elements,
                },
            );
        }
        name
    }
}

/// Whether a rule accepts what it matches (the inbound rules either accept or drop).
fn accepts(rule: &Rule) -> bool {
    rule.parts
        .iter()
        .any(|p| matches!(p, Part::Verdict(Verdict::Accept)))
}

/// Whether a chain or set name is one of the compiled ones.
pub fn is_compiled(name: &str) -> bool {
    ["ce_", "cc_", "cs_", "co_", "cset4_", "cset6_"]
        .iter()
        .any(|kind| name.starts_with(kind))
}

/// `<kind>_<128-bit hash of the contents>`: two SipHash passes with different keys (fixed,
/// so names are stable), far cheaper than a cryptographic hash of the contents' text.
fn content_name(kind: &str, content: &impl Hash) -> String {
    let pass = |seed: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut hasher);
        kind.hash(&mut hasher);
        content.hash(&mut hasher);
        hasher.finish()
    };
    format!("{kind}_{:016x}{:016x}", pass(1), pass(2))
}

/// The dispatch of one protocol's flows by destination port: port ranges in order, covering
/// every port, each with the chain of its class.
fn dispatch(
    protocol: Protocol,
    reaches: &[Reach],
    rendered: &[Vec<Rule>],
    out: &mut Output,
) -> Option<Vec<(PortRange, String)>> {
    // The port-free rules of this protocol, rendered, with their places in the list.
    let (places, free): (Vec<usize>, Vec<Rule>) = (0..reaches.len())
        .filter(|&i| matches!(&reaches[i], Reach::Any) || reaches[i] == Reach::Protocol(protocol))
        .flat_map(|i| rendered[i].iter().map(move |r| (i, r.clone())))
        .unzip();
    let ported: Vec<(usize, &Vec<PortRange>)> = reaches
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Reach::Ports(p, ports) if *p == protocol => Some((i, ports)),
            _ => None,
        })
        .collect();
    let classes = classes(&ported);
    if classes.len() > MAX_CLASSES {
        return None;
    }
    let last_free_accept = places
        .iter()
        .zip(&free)
        .rev()
        .find(|(_, rule)| accepts(rule))
        .map(|(&place, _)| place);
    let mut tree = Segments {
        places,
        last_free_accept,
        runs: Runs::new(free),
        rendered,
        protocol,
        nodes: HashMap::new(),
    };
    // Neighbouring classes whose chains came out the same (often: those that accept
    // nothing) are one range of the dispatch.
    let mut targets: Vec<(PortRange, String)> = Vec::new();
    for (range, members) in classes {
        let chain = tree.class(members, out);
        match targets.last_mut() {
            Some((last, name)) if *name == chain => last.high = range.high,
            _ => targets.push((range, chain)),
        }
    }
    Some(targets)
}

/// The destination port ranges (covering every port) where the same port rules apply, with
/// those rules' places in the list.
fn classes(ported: &[(usize, &Vec<PortRange>)]) -> Vec<(PortRange, Vec<usize>)> {
    let mut bounds: BTreeSet<u32> = BTreeSet::from([0, 65536]);
    for (_, ports) in ported {
        for p in ports.iter() {
            bounds.insert(u32::from(p.low));
            bounds.insert(u32::from(p.high) + 1);
        }
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut classes: Vec<(PortRange, Vec<usize>)> = Vec::new();
    for pair in bounds.windows(2) {
        let (low, high) = (pair[0] as u16, (pair[1] - 1) as u16);
        let members: Vec<usize> = ported
            .iter()
            .filter(|(_, ports)| ports.iter().any(|p| p.low <= low && high <= p.high))
            .map(|(i, _)| *i)
            .collect();
        match classes.last_mut() {
            Some((range, last)) if *last == members => range.high = high,
            _ => classes.push((PortRange { low, high }, members)),
        }
    }
    classes
}

/// The port-free rules of one protocol and the segment-tree nodes made of them.
struct Segments<'a> {
    /// The place in the list of each port-free rule, in order.
    places: Vec<usize>,
    /// The place of the last port-free rule that accepts.
    last_free_accept: Option<usize>,
    runs: Runs,
    rendered: &'a [Vec<Rule>],
    protocol: Protocol,
    nodes: HashMap<(usize, usize), Node>,
}

/// A segment-tree node: its rules, when so few that a jump would cost as much, or its chain.
#[derive(Clone)]
enum Node {
    Inline(Vec<Rule>),
    Chain(String),
}

impl Segments<'_> {
    /// The chain of one class: its port rules (places `members`) in order, with the
    /// port-free rules between them, ending in a drop. Rules after the class's last accept
    /// can only drop, as the end does, so they are left out: the kernel then checks fewer
    /// rules at every commit, and a class that accepts nothing is one drop (shared).
    fn class(&mut self, mut members: Vec<usize>, out: &mut Output) -> String {
        let member_accept = members
            .iter()
            .copied()
            .rev()
            .find(|&place| self.rendered[place].iter().any(accepts));
        let Some(last) = member_accept.max(self.last_free_accept) else {
            return out.chain(
                "cc",
                "accepts nothing".into(),
                vec![Rule::from(Verdict::Drop)],
            );
        };
        members.retain(|&place| place <= last);
        let end = self.places.partition_point(|&i| i <= last);
        let members_len = members.len();
        let mut rules = Vec::new();
        let mut from = 0;
        for place in members.iter().copied().chain([usize::MAX]) {
            let to = self.places[..end].partition_point(|&i| i < place);
            self.cover(from, to, &mut rules, out);
            from = to;
            if place != usize::MAX {
                rules.extend(self.rendered[place].iter().cloned());
            }
        }
        rules.push(Rule::from(Verdict::Drop));
        out.chain(
            "cc",
            format!("{} class of {members_len} port rules", self.name()),
            rules,
        )
    }

    fn name(&self) -> &'static str {
        match self.protocol {
            Protocol::Udp => "udp",
            _ => "tcp",
        }
    }

    /// Rules for the port-free rules `from..to`: copied when few, else jumps to the
    /// segment-tree nodes that cover them.
    fn cover(&mut self, from: usize, to: usize, rules: &mut Vec<Rule>, out: &mut Output) {
        if from >= to {
            return;
        }
        if to - from <= INLINE {
            rules.extend(self.runs.range(from, to, out));
            return;
        }
        self.cover_node(0, self.places.len(), from, to, rules, out);
    }

    fn cover_node(
        &mut self,
        low: usize,
        high: usize,
        from: usize,
        to: usize,
        rules: &mut Vec<Rule>,
        out: &mut Output,
    ) {
        if to <= low || high <= from {
            return;
        }
        if from <= low && high <= to {
            match self.node(low, high, out) {
                Node::Inline(node) => rules.extend(node),
                Node::Chain(name) => rules.push(Rule::from(Verdict::Jump(name))),
            }
            return;
        }
        let middle = low + (high - low) / 2;
        self.cover_node(low, middle, from, to, rules, out);
        self.cover_node(middle, high, from, to, rules, out);
    }

    /// The node holding port-free rules `low..high`, merged.
    fn node(&mut self, low: usize, high: usize, out: &mut Output) -> Node {
        if let Some(node) = self.nodes.get(&(low, high)) {
            return node.clone();
        }
        let rules = self.runs.range(low, high, out);
        if rules.len() <= INLINE_NODE {
            let node = Node::Inline(rules);
            self.nodes.insert((low, high), node.clone());
            return node;
        }
        let comment = format!(
            "{} rules {}-{} of the list without ports",
            self.name(),
            low + 1,
            high
        );
        let node = Node::Chain(out.chain("cs", comment, rules));
        self.nodes.insert((low, high), node.clone());
        node
    }
}

/// Consecutive rules that differ only in one network (same test, same end, same family)
/// become one rule testing a set of those networks.
fn merged(rules: Vec<Rule>, out: &mut Output) -> Vec<Rule> {
    let len = rules.len();
    Runs::new(rules).range(0, len, out)
}

/// A list of rules cut into maximal runs of rules that differ from the run's first only in
/// the network of one part (`at`): any stretch of a run is one set lookup.
struct Runs {
    rules: Vec<Rule>,
    /// (first, end, the part where its rules differ).
    runs: Vec<(usize, usize, Option<usize>)>,
}

impl Runs {
    fn new(rules: Vec<Rule>) -> Runs {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < rules.len() {
            let mut j = i + 1;
            let mut at = None;
            while j < rules.len() {
                // A rule that repeats the run's first (its network among them) belongs to it.
                if rules[j].parts == rules[i].parts {
                    j += 1;
                    continue;
                }
                match differs_in_one_net(&rules[i], &rules[j]) {
                    Some(k) if at.is_none_or(|a| a == k) => {
                        at = Some(k);
                        j += 1;
                    }
                    _ => break,
                }
            }
            runs.push((i, j, at));
            i = j;
        }
        Runs { rules, runs }
    }

    /// Rules `from..to`, each stretch of a run of two or more as one set lookup.
    fn range(&self, from: usize, to: usize, out: &mut Output) -> Vec<Rule> {
        let first = self.runs.partition_point(|&(_, end, _)| end <= from);
        let mut result = Vec::new();
        for &(start, end, at) in &self.runs[first..] {
            if start >= to {
                break;
            }
            let (a, b) = (start.max(from), end.min(to));
            match at {
                Some(k) if b - a >= 2 => result.push(self.lookup(a, b, k, out)),
                _ => result.extend(self.rules[a..b].iter().cloned()),
            }
        }
        result
    }

    /// Rules `a..b` of one run, whose networks differ in part `k`, as one rule.
    fn lookup(&self, a: usize, b: usize, k: usize, out: &mut Output) -> Rule {
        let template = &self.rules[a];
        let nets: Vec<IpNet> = self.rules[a..b]
            .iter()
            .filter_map(|r| match &r.parts[k] {
                Part::Net { net, .. } => Some(*net),
                _ => None,
            })
            .collect();
        let Part::Net { end, net } = template.parts[k] else {
            unreachable!("a run differs in a network part")
        };
        let family = Family::of(&net);
        let elements: BTreeSet<IpNet> = IpNet::aggregate(&nets).into_iter().collect();
        let set = out.set(family == Family::V4, elements);
        let mut parts = template.parts.clone();
        parts[k] = Part::InSet { family, end, set };
        Rule {
            parts,
            comment: Some(super::names::comment(&format!(
                "{} rules like: {}",
                b - a,
                template.comment.as_deref().unwrap_or("")
            ))),
        }
    }
}

/// Where two rules differ, if only in one part and that part is a network test of the same
/// end and family in both.
fn differs_in_one_net(a: &Rule, b: &Rule) -> Option<usize> {
    if a.parts.len() != b.parts.len() {
        return None;
    }
    let mut differing = (0..a.parts.len()).filter(|&k| a.parts[k] != b.parts[k]);
    let k = differing.next()?;
    if differing.next().is_some() {
        return None;
    }
    match (&a.parts[k], &b.parts[k]) {
        (Part::Net { end: e1, net: n1 }, Part::Net { end: e2, net: n2 })
            if e1 == e2 && Family::of(n1) == Family::of(n2) =>
        {
            Some(k)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
