//! `calicoctl bgp …`: global BGP peers, the node-to-node mesh and the default AS number.

use anyhow::{bail, Result};
use calico_datastore::resources::PeerScope;
use calico_model::bgp::{parse_ip, AsNumber, BgpPeer};

use super::{connect, parse_args};
use crate::args::{flag, usage_error, OptSpec};
use crate::table::Table;
use crate::usage::BGP as USAGE;

const OPTIONS: &[OptSpec] = &[flag("--ipv4"), flag("--ipv6")];

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let words = args.words();
    if !matches!(words.as_slice(), ["peer", "show"]) {
        args.reject_options_except(&[], USAGE)?;
    }
    match words.as_slice() {
        ["peer", "add", ip, "as", as_num] => {
            let peer = BgpPeer {
                ip: parse_ip("peer IP address", ip)?,
                as_num: as_num.parse()?,
            };
            connect().await?.add_peer(&PeerScope::Global, &peer).await?;
        }
        ["peer", "remove", ip] => {
            let ip = parse_ip("peer IP address", ip)?;
            if !connect()
                .await?
                .remove_peer(&PeerScope::Global, &ip)
                .await?
            {
                bail!("{ip} is not a globally configured peer.");
            }
            println!("BGP peer removed from global configuration");
        }
        ["peer", "show"] => {
            if args.flag("--ipv4") && args.flag("--ipv6") {
                return Err(usage_error(USAGE, "Give --ipv4 or --ipv6, not both."));
            }
            show_peers(
                &PeerScope::Global,
                !args.flag("--ipv6"),
                !args.flag("--ipv4"),
            )
            .await?;
        }
        ["node-mesh"] => {
            let on = connect().await?.node_mesh().await?;
            println!("{}", if on { "on" } else { "off" });
        }
        ["node-mesh", setting @ ("on" | "off")] => {
            connect().await?.set_node_mesh(*setting == "on").await?;
        }
        ["default-node-as"] => println!("{}", connect().await?.default_as().await?),
        ["default-node-as", as_num] => {
            let as_num: AsNumber = as_num.parse()?;
            connect().await?.set_default_as(as_num).await?;
        }
        _ => return Err(usage_error(USAGE, "Invalid bgp command.")),
    }
    Ok(())
}

/// Tables of global or node-specific peers, in the original's wording.
pub(super) async fn show_peers(scope: &PeerScope, v4: bool, v6: bool) -> Result<()> {
    let r = connect().await?;
    for (wanted, is_v4, version) in [(v4, true, "IPv4"), (v6, false, "IPv6")] {
        if !wanted {
            continue;
        }
        let peers = r.peers(scope, is_v4).await?;
        let (heading, empty) = match scope {
            PeerScope::Global => (
                format!("Global {version} BGP Peer"),
                format!("No global {version} BGP Peers defined."),
            ),
            PeerScope::Host(_) => (
                format!("Node specific {version} BGP Peer"),
                format!("No {version} BGP Peers defined for this node."),
            ),
        };
        if peers.is_empty() {
            println!("{empty}\n");
            continue;
        }
        let mut table = Table::new(&[&heading, "AS Num"]).left_aligned();
        for peer in peers {
            table.row(vec![peer.ip.to_string(), peer.as_num.to_string()]);
        }
        print!("{}", table.render());
    }
    Ok(())
}
