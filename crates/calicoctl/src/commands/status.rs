//! `calicoctl status`: this host's agent, and its BGP sessions as BIRD reports them.

use std::process::Command;

use anyhow::{bail, Result};
use calico_datastore::resources::Resources;
use calico_model::keys;

use super::node::{health, running_pid};
use super::{connect, parse_args};
use crate::args::usage_error;
use crate::local;
use crate::table::Table;
use crate::usage::STATUS as USAGE;

/// A BGP session from `birdc show protocols`, read back from the protocol's name (see
/// `calico_bgp` for how it is made).
#[derive(Debug, PartialEq, Eq)]
struct Session {
    ipv6: bool,
    /// Peer address, peer type, state, since, info.
    row: [String; 5],
}

fn sessions(birdc_output: &str) -> Vec<Session> {
    birdc_output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, "BGP", _table, state, since, info @ ..] = fields.as_slice() else {
                return None;
            };
            let (kind, address) = name.split_once('_')?;
            let ipv6 = kind.ends_with('6');
            let kind = match kind.trim_end_matches('6') {
                "Mesh" => "node-to-node mesh",
                "Global" => "global",
                "Node" => "node specific",
                _ => return None,
            };
            let separator = if ipv6 { ":" } else { "." };
            Some(Session {
                ipv6,
                row: [
                    address.replace('_', separator),
                    kind.to_string(),
                    state.to_string(),
                    since.to_string(),
                    info.join(" "),
                ],
            })
        })
        .collect()
}

/// What the agent reported in its heartbeat that it cannot do.
async fn agent_problems(r: &Resources, node: &str) -> Result<Vec<String>> {
    let Some(kv) = r.store().get(&keys::felix_status(node)).await? else {
        return Ok(vec![]);
    };
    let status: serde_json::Value = serde_json::from_str(&kv.value).unwrap_or_default();
    Ok(status["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(String::from))
        .collect())
}

/// What the datastore says of this host: the agent's problems (printed), its BGP addresses
/// and AS number.
async fn from_datastore(node: &str) -> Result<(Option<String>, Option<String>, String)> {
    let r = connect().await?;
    for problem in agent_problems(&r, node).await? {
        println!("Problem: {problem}");
    }
    let store = r.store();
    let [ipv4, ipv6, as_num] =
        ["ip_addr_v4", "ip_addr_v6", "as_num"].map(|name| keys::bgp_host(node, name));
    let ipv4 = store.get(&ipv4).await?.map(|kv| kv.value);
    let ipv6 = store.get(&ipv6).await?.map(|kv| kv.value);
    let as_num = match store.get(&as_num).await? {
        Some(kv) => kv.value,
        None => format!("{} (inherited)", r.default_as().await?),
    };
    Ok((ipv4, ipv6, as_num))
}

/// One address family's section of the status: this host's address and AS, and its sessions.
fn print_family(family: &str, ip: Option<&str>, as_num: &str, sessions: &[&Session]) {
    println!("\n{family} BGP status");
    if let Some(ip) = ip {
        println!("IP: {ip}    AS Number: {as_num}");
    }
    if sessions.is_empty() {
        println!("No {family} peers found.");
        return;
    }
    let mut table = Table::new(&["Peer address", "Peer type", "State", "Since", "Info"]);
    for session in sessions {
        table.row(session.row.to_vec());
    }
    print!("{}", table.render());
}

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, &[], USAGE)? else {
        return Ok(());
    };
    if !args.words.is_empty() {
        return Err(usage_error(USAGE, "status takes no arguments."));
    }
    let node = local::node_name(None)?;
    let Some(pid) = running_pid(&node) else {
        bail!("calico-node is not running for {node}; start it with 'calicoctl node'.");
    };
    let sync = match health(&local::node_listen()).await {
        Ok(()) => "in sync".to_string(),
        Err(why) => why,
    };
    println!("calico-node is running for {node} (pid {pid}), {sync}.");
    // Without the datastore (etcd down, or without quorum) BIRD still says how BGP stands.
    let (ipv4, ipv6, as_num) = match from_datastore(&node).await {
        Ok(found) => found,
        Err(e) => {
            println!("Datastore: unavailable: {e:#}");
            (
                None,
                None,
                "unknown (the datastore is unavailable)".to_string(),
            )
        }
    };
    let socket = local::state_dir(&node).join("bird.ctl");
    let output = Command::new("birdc")
        .arg("-s")
        .arg(&socket)
        .args(["show", "protocols"])
        .output()?;
    if !output.status.success() {
        bail!(
            "BIRD does not answer on {}: {}",
            socket.display(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    let sessions = sessions(&String::from_utf8_lossy(&output.stdout));
    for (family, ip, v6) in [("IPv4", ipv4, false), ("IPv6", ipv6, true)] {
        let of_family: Vec<&Session> = sessions.iter().filter(|s| s.ipv6 == v6).collect();
        print_family(family, ip.as_deref(), &as_num, &of_family);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birdc_protocols_become_peer_rows() {
        let out = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\ndevice1    Device     ---        up     17:56:40.351\nMesh_172_17_8_102 BGP        ---        up     17:56:41.423  Established\nGlobal_10_0_0_9 BGP ---  start  17:56:41.423  Active        Socket: Connection refused\nNode6_fd00_8__fe BGP ---  up  17:56:41.423  Established\n";
        let rows = sessions(out);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].row,
            [
                "172.17.8.102",
                "node-to-node mesh",
                "up",
                "17:56:41.423",
                "Established"
            ]
            .map(String::from)
        );
        assert!(!rows[0].ipv6);
        assert_eq!(rows[1].row[1], "global");
        assert_eq!(rows[1].row[4], "Active Socket: Connection refused");
        assert!(rows[2].ipv6);
        assert_eq!(rows[2].row[0], "fd00:8::fe");
        assert_eq!(rows[2].row[1], "node specific");
    }
}
