//! nftables object names derived from Calico names. Profile, tag and interface names use
//! `[a-zA-Z0-9_.-]`; nft identifiers are safest as letters, digits and `_`, so `_`, `-` and `.`
//! are escaped (`__`, `_h`, `_d`), which keeps distinct names distinct.

fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '-' => out.push_str("_h"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

pub fn tag_set(tag: &str, v4: bool) -> String {
    format!("tag{}_{}", if v4 { 4 } else { 6 }, escape(tag))
}

pub fn profile_chain(profile: &str, inbound: bool) -> String {
    format!("{}_{}", if inbound { "pi" } else { "po" }, escape(profile))
}

/// The chain for traffic from (outbound policy) or to (inbound policy) an endpoint.
pub fn endpoint_chain(interface: &str, inbound: bool) -> String {
    format!(
        "{}_{}",
        if inbound { "tw" } else { "fw" },
        escape(interface)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_names_apart() {
        let names = ["a-b", "a_b", "a.b", "a_hb", "a__b"];
        let escaped: std::collections::BTreeSet<String> = names.iter().map(|n| escape(n)).collect();
        assert_eq!(escaped.len(), names.len());
        assert_eq!(tag_set("PROF_A-C.E", true), "tag4_PROF__A_hC_dE");
        assert!(escaped
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')));
    }
}
