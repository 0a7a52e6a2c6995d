//! `calicoctl status`: this host's agent, and its BGP sessions as BIRD reports them.

use std::process::Command;

use anyhow::{bail, Result};
use calico_model::keys;

use super::node::{healthy, running_pid};
use super::{connect, parse_args};
use crate::args::usage_error;
use crate::local;
use crate::table::Table;
use crate::usage::STATUS as USAGE;

/// A BGP session from `birdc show protocols`: (peer address, peer type, state, since, info).
fn sessions(birdc_output: &str) -> Vec<[String; 5]> {
    birdc_output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, "BGP", _table, state, since, info @ ..] = fields.as_slice() else {
                return None;
            };
            let (kind, address) = name.split_once('_')?;
            let kind = match kind {
                "Mesh" => "node-to-node mesh",
                "Global" => "global",
                "Node" => "node specific",
                _ => return None,
            };
            Some([
                address.replace('_', "."),
                kind.to_string(),
                state.to_string(),
                since.to_string(),
                info.join(" "),
            ])
        })
        .collect()
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
    let sync = if healthy(&local::node_listen()) {
        "in sync"
    } else {
        "not in sync yet"
    };
    println!("calico-node is running for {node} (pid {pid}), {sync}.");
    let r = connect().await?;
    let ip = r
        .store()
        .get(&keys::bgp_host(&node, "ip_addr_v4"))
        .await?
        .map(|kv| kv.value)
        .unwrap_or_default();
    let as_num = match r.store().get(&keys::bgp_host(&node, "as_num")).await? {
        Some(kv) => kv.value,
        None => format!("{} (inherited)", r.default_as().await?),
    };
    println!("\nIPv4 BGP status\nIP: {ip}    AS Number: {as_num}");
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
    let mut table = Table::new(&["Peer address", "Peer type", "State", "Since", "Info"]);
    for row in sessions(&String::from_utf8_lossy(&output.stdout)) {
        table.row(row.to_vec());
    }
    print!("{}", table.render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birdc_protocols_become_peer_rows() {
        let out = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\ndevice1    Device     ---        up     17:56:40.351\nMesh_172_17_8_102 BGP        ---        up     17:56:41.423  Established\nGlobal_10_0_0_9 BGP ---  start  17:56:41.423  Active        Socket: Connection refused\n";
        let rows = sessions(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            [
                "172.17.8.102",
                "node-to-node mesh",
                "up",
                "17:56:41.423",
                "Established"
            ]
            .map(String::from)
        );
        assert_eq!(rows[1][1], "global");
        assert_eq!(rows[1][4], "Active Socket: Connection refused");
    }
}
