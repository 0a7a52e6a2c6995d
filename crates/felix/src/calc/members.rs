//! A tag's members, kept up to date one network at a time.
//!
//! Every active endpoint whose profiles carry a tag puts its networks in the tag; the same
//! network may come from several endpoints, so each is counted. What the kernel's set holds
//! is the *effective* networks: those present and not inside another present one (nftables
//! interval sets refuse overlapping elements). A change to one network touches only the
//! networks inside it, so an endpoint joining or leaving costs O(log n), not O(members).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What the calc needs of an IPv4 or IPv6 network.
pub(crate) trait Net: Copy + Ord + std::fmt::Debug {
    fn prefix_len(&self) -> u8;
    /// The same network with a prefix of `len` (shorter than its own).
    fn widened(&self, len: u8) -> Self;
    /// The smallest and largest values a network inside this one can have (for range
    /// queries over a map ordered by address, then prefix length).
    fn span(&self) -> (Self, Self);
}

impl Net for Ipv4Net {
    fn prefix_len(&self) -> u8 {
        Ipv4Net::prefix_len(self)
    }
    fn widened(&self, len: u8) -> Self {
        Ipv4Net::new(self.network(), len)
            .expect("a shorter prefix is valid")
            .trunc()
    }
    fn span(&self) -> (Self, Self) {
        let low = Ipv4Net::new(self.network(), 0).expect("0 is a valid prefix");
        let high = Ipv4Net::new(self.broadcast(), 32).expect("32 is a valid prefix");
        (low, high)
    }
}

impl Net for Ipv6Net {
    fn prefix_len(&self) -> u8 {
        Ipv6Net::prefix_len(self)
    }
    fn widened(&self, len: u8) -> Self {
        Ipv6Net::new(self.network(), len)
            .expect("a shorter prefix is valid")
            .trunc()
    }
    fn span(&self) -> (Self, Self) {
        let low = Ipv6Net::new(self.network(), 0).expect("0 is a valid prefix");
        let high = Ipv6Net::new(self.broadcast(), 128).expect("128 is a valid prefix");
        (low, high)
    }
}

/// Effective networks that joined and left a set, relative to some earlier moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Moves<N: Ord> {
    pub added: BTreeSet<N>,
    pub removed: BTreeSet<N>,
}

impl<N: Ord> Default for Moves<N> {
    fn default() -> Self {
        Moves {
            added: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<N: Ord + Copy> Moves<N> {
    pub fn add(&mut self, net: N) {
        if !self.removed.remove(&net) {
            self.added.insert(net);
        }
    }

    pub fn remove(&mut self, net: N) {
        if !self.added.remove(&net) {
            self.removed.insert(net);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Counted networks of one address family, and which of them are effective.
#[derive(Debug, Clone)]
pub(crate) struct Counted<N: Net> {
    counts: BTreeMap<N, usize>,
    /// How many distinct present networks have each prefix length: supernets are looked for
    /// only at lengths that occur (with /32s alone, never).
    lengths: BTreeMap<u8, usize>,
    effective: BTreeSet<N>,
}

impl<N: Net> Default for Counted<N> {
    fn default() -> Self {
        Counted {
            counts: BTreeMap::new(),
            lengths: BTreeMap::new(),
            effective: BTreeSet::new(),
        }
    }
}

impl<N: Net> Counted<N> {
    pub fn effective(&self) -> &BTreeSet<N> {
        &self.effective
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// One more endpoint has `net`; the effective moves go into `moves`.
    pub fn add(&mut self, net: N, moves: &mut Moves<N>) {
        let count = self.counts.entry(net).or_insert(0);
        *count += 1;
        if *count == 1 {
            *self.lengths.entry(net.prefix_len()).or_insert(0) += 1;
            self.settle(net, moves);
        }
    }

    /// One endpoint fewer has `net`.
    pub fn remove(&mut self, net: N, moves: &mut Moves<N>) {
        let Some(count) = self.counts.get_mut(&net) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&net);
            let len = net.prefix_len();
            if let Some(n) = self.lengths.get_mut(&len) {
                *n -= 1;
                if *n == 0 {
                    self.lengths.remove(&len);
                }
            }
            self.settle(net, moves);
        }
    }

    /// Whether a present network strictly contains `net`.
    fn covered(&self, net: &N) -> bool {
        self.lengths
            .range(..net.prefix_len())
            .any(|(len, _)| self.counts.contains_key(&net.widened(*len)))
    }

    /// `net` appeared or went: only it and the networks inside it can change status.
    fn settle(&mut self, net: N, moves: &mut Moves<N>) {
        let (low, high) = net.span();
        let mut candidates: BTreeSet<N> = self.counts.range(low..=high).map(|(n, _)| *n).collect();
        candidates.extend(self.effective.range(low..=high).copied());
        candidates.insert(net);
        for candidate in candidates {
            let now = self.counts.contains_key(&candidate) && !self.covered(&candidate);
            let before = self.effective.contains(&candidate);
            match (before, now) {
                (false, true) => {
                    self.effective.insert(candidate);
                    moves.add(candidate);
                }
                (true, false) => {
                    self.effective.remove(&candidate);
                    moves.remove(candidate);
                }
                _ => {}
            }
        }
    }
}

/// A tag's members in both families.
#[derive(Debug, Clone, Default)]
pub(crate) struct TagMembers {
    pub v4: Counted<Ipv4Net>,
    pub v6: Counted<Ipv6Net>,
}

/// Effective moves of a tag in both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TagMoves {
    pub v4: Moves<Ipv4Net>,
    pub v6: Moves<Ipv6Net>,
}

impl TagMembers {
    pub fn add(&mut self, net: &IpNet, moves: &mut TagMoves) {
        match net {
            IpNet::V4(n) => self.v4.add(*n, &mut moves.v4),
            IpNet::V6(n) => self.v6.add(*n, &mut moves.v6),
        }
    }

    pub fn remove(&mut self, net: &IpNet, moves: &mut TagMoves) {
        match net {
            IpNet::V4(n) => self.v4.remove(*n, &mut moves.v4),
            IpNet::V6(n) => self.v6.remove(*n, &mut moves.v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn a_wide_network_hides_the_ones_inside_it_until_it_goes() {
        let mut counted = Counted::default();
        let mut moves = Moves::default();
        counted.add(net("10.0.0.1/32"), &mut moves);
        counted.add(net("10.0.0.2/32"), &mut moves);
        counted.add(net("10.1.0.1/32"), &mut moves);
        counted.add(net("10.0.0.0/24"), &mut moves);
        let effective: Vec<String> = counted.effective().iter().map(|n| n.to_string()).collect();
        assert_eq!(effective, ["10.0.0.0/24", "10.1.0.1/32"]);
        // Net result since the start: the /32s inside the /24 came and went.
        assert_eq!(moves.added.len(), 2);
        assert!(moves.removed.is_empty());
        let mut moves = Moves::default();
        counted.remove(net("10.0.0.0/24"), &mut moves);
        let added: Vec<String> = moves.added.iter().map(|n| n.to_string()).collect();
        assert_eq!(added, ["10.0.0.1/32", "10.0.0.2/32"]);
        assert_eq!(moves.removed, [net("10.0.0.0/24")].into());
    }

    #[test]
    fn a_network_counted_twice_stays_until_both_go() {
        let mut counted = Counted::default();
        let mut moves = Moves::default();
        counted.add(net("10.0.0.1/32"), &mut moves);
        counted.add(net("10.0.0.1/32"), &mut moves);
        counted.remove(net("10.0.0.1/32"), &mut moves);
        assert_eq!(counted.effective().len(), 1);
        counted.remove(net("10.0.0.1/32"), &mut moves);
        assert!(counted.effective().is_empty());
        assert!(moves.is_empty(), "came and went within one batch");
    }
}
