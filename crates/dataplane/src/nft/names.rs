//! nftables object names for Calico objects. A name is a short kind prefix and a hash of the
//! Calico name, never the Calico name itself: nft caps identifiers at 256 bytes and limits
//! their characters, and a profile or tag name from the datastore (any length, any byte an
//! orchestrator chose) must not be able to produce a name the kernel refuses, which would
//! refuse the whole table with it. The readable name goes into the object's comment.
//!
//! The hash is SHA-256 truncated to 128 bits: two Calico names sharing a kernel name would
//! merge their rules, so the hash must resist deliberately built collisions, not only
//! accidental ones.

use sha2::{Digest, Sha256};

/// nft keeps a comment of at most this many bytes.
const COMMENT_MAX: usize = 128;

/// `<kind>_<32 hex digits>`. The kind goes into the hash too, so that objects of different
/// kinds never share a digest.
fn hashed(kind: &str, name: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}_{hex}")
}

/// A tag's interval set (members that are networks wider than one address).
pub fn tag_set(tag: &str, v4: bool) -> String {
    hashed(if v4 { "tag4" } else { "tag6" }, tag)
}

/// A tag's hash set, while its members of that family are all single addresses (the usual
/// case): adding a member to an interval set costs the kernel's commit time in proportion to
/// what the set holds (36 ms at 100,000 members, against 9 ms at 10,000), to a hash set not.
pub fn tag_host_set(tag: &str, v4: bool) -> String {
    hashed(if v4 { "tagh4" } else { "tagh6" }, tag)
}

/// Whether a set holds single addresses (a hash set), not networks (an interval set).
pub fn is_host_set(name: &str) -> bool {
    let name = name.strip_prefix(COPY).unwrap_or(name);
    name.starts_with("tagh4_") || name.starts_with("tagh6_")
}

/// What a tag set's copy in the compiled table has before the set's name: a set can only be
/// used by chains of its own table.
const COPY: &str = "c";

/// The compiled table's copy of a tag set.
pub fn compiled_copy(set: &str) -> String {
    format!("{COPY}{set}")
}

/// The compiled table's base chain, its dispatch by interface, and the map it looks in.
pub const COMPILED_FORWARD: &str = "compiled-forward";
pub const COMPILED_DISPATCH: &str = "compiled-dispatch";
pub const TO_COMPILED: &str = "to-compiled";

/// Whether an object is in the compiled table: its own chains, compiled chains and sets, and
/// copies of tag sets.
pub fn in_compiled_table(name: &str) -> bool {
    [COMPILED_FORWARD, COMPILED_DISPATCH, TO_COMPILED].contains(&name)
        || super::compile::is_compiled(name)
        || name
            .strip_prefix(COPY)
            .is_some_and(|set| set.starts_with("tag"))
}

pub fn profile_chain(profile: &str, inbound: bool) -> String {
    hashed(if inbound { "pi" } else { "po" }, profile)
}

/// The chain for traffic from (outbound policy) or to (inbound policy) an endpoint.
pub fn endpoint_chain(interface: &str, inbound: bool) -> String {
    hashed(if inbound { "tw" } else { "fw" }, interface)
}

/// The walk of a compiled endpoint's profiles, for traffic to it while its compiled chains
/// wait to be made.
pub fn endpoint_walk_chain(interface: &str) -> String {
    hashed("tp", interface)
}

/// An nft comment saying what an object is for (unquoted): printable ASCII only (no quote or
/// backslash, which would end or escape nft's quoted string), at most what nft keeps.
pub fn comment(text: &str) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect();
    if clean.len() > COMMENT_MAX {
        clean.truncate(COMMENT_MAX - 3);
        clean.push_str("...");
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_identifier(name: &str) -> bool {
        name.len() < 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    #[test]
    fn any_name_gives_a_short_plain_identifier() {
        let long = "p".repeat(300);
        for name in ["PROF_A-C.E", long.as_str(), "", "a b\"c\\d", "é💥", "\0"] {
            for id in [
                tag_set(name, true),
                tag_set(name, false),
                tag_host_set(name, true),
                profile_chain(name, true),
                profile_chain(name, false),
                endpoint_chain(name, true),
            ] {
                assert!(is_identifier(&id), "{id}");
            }
        }
    }

    #[test]
    fn names_and_kinds_stay_apart() {
        let ids: std::collections::BTreeSet<String> = ["a-b", "a_b", "a.b", "A-b", "a-b "]
            .iter()
            .flat_map(|n| {
                [
                    profile_chain(n, true),
                    profile_chain(n, false),
                    tag_set(n, true),
                ]
            })
            .collect();
        assert_eq!(ids.len(), 15);
        assert_eq!(profile_chain("x", true), profile_chain("x", true), "stable");
        assert_ne!(profile_chain("x", true), endpoint_chain("x", true));
    }

    #[test]
    fn comments_are_safe_and_bounded() {
        assert_eq!(comment("profile PROF_A inbound"), "profile PROF_A inbound");
        assert_eq!(comment("a\"b\\c\né"), "a?b?c??");
        let long = comment(&"n".repeat(300));
        assert_eq!(long.len(), COMMENT_MAX);
        assert!(long.ends_with("..."));
    }
}
