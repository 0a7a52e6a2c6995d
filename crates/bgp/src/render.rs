//! One host's BIRD 2 configuration.
//!
//! - The kernel protocols learn this host's routes; only its workload routes (those the agent
//!   adds with [`ROUTE_PROTOCOL`]) are announced. The others (and the connected networks) are
//!   there to resolve next hops. Only routes learned over BGP are installed in the kernel.
//! - BGP sessions, one per address family: the full iBGP mesh to every other host while the mesh
//!   is on, global peers, and this host's own peers.
//! - Sessions are multihop with recursive next hops, as in Calico's own configuration: a peer or
//!   an announcing host may be on the same network or behind routers.

use std::fmt::Write;
use std::net::IpAddr;

use calico_model::bgp::AsNumber;

use crate::view::{BgpView, HostBgp};

pub const ROUTE_PROTOCOL: u8 = calico_model::WORKLOAD_ROUTE_PROTOCOL;

/// BIRD's symbol for a session: its kind (`Mesh`, `Global`, `Node`), `6` for IPv6, then the
/// address with `_` for every separator (`Mesh_172_17_8_102`, `Node6_fd00_8__1`).
/// `calicoctl status` reads the kind and the address back from it.
fn symbol(kind: &str, ip: &IpAddr) -> String {
    let text: String = ip
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let family = if ip.is_ipv6() { "6" } else { "" };
    format!("{kind}{family}_{text}")
}

fn log_lines(level: &str) -> &'static str {
    match level {
        "debug" => "log stderr all;\ndebug protocols all;",
        "info" => "log stderr { info, remote, warning, error, auth, fatal, bug };",
        _ => "log stderr { warning, error, fatal, bug };",
    }
}

/// What every configuration holds whatever the peers: the routes BIRD resolves next hops with
/// (connected networks, and the kernel's routes), for each address family a kernel protocol
/// that installs the routes BGP brings, and the template its sessions use.
fn common_part(local_as: AsNumber, me: &HostBgp) -> String {
    let mut out = String::from(
        r#"
protocol device {
  scan time 10;
}

protocol direct {
  ipv4;
  ipv6;
  interface -"cali*", "*";
}
"#,
    );
    for (family, source_ip) in ["ipv4", "ipv6"].iter().zip([me.ipv4, me.ipv6]) {
        let n = &family[3..];
        let source = source_ip
            .map(|ip| format!("\n  source address {ip};"))
            .unwrap_or_default();
        let _ = write!(
            out,
            r#"
filter calico_export{n} {{{}
  if krt_source = {ROUTE_PROTOCOL} then accept;
  reject;
}}

filter calico_import{n} {{{}
  accept;
}}

protocol kernel kernel{n} {{
  learn;
  scan time 10;
  {family} {{
    import all;
    export filter {{ if source = RTS_BGP then accept; reject; }};
  }};
}}

template bgp calico_peer{n} {{
  local as {local_as};{source}
  multihop;
  hold time 9;
  keepalive time 3;
  connect delay time 1;
  connect retry time 5;
  error wait time 5, 30;
  {family} {{
    gateway recursive;
    import filter calico_import{n};
    export filter calico_export{n};
    next hop self;
  }};
}}
"#,
            inside_own_blocks(me, *family == "ipv4"),
            our_own_coming_back(me, *family == "ipv4", source_ip),
        );
    }
    out
}

// The session timers are short because peers are hosts a few hops away: a dead peer is
// noticed in 9 s (hold time), and after a session error BIRD retries in 5 s rising to 30 s
// instead of its default 60 s to 300 s, so a peer that was restarting is back in seconds.

/// The filter lines that refuse this host's own routes when a peer sends them back (a router
/// that rewrites AS paths, such as one with as-override, defeats BGP's loop detection): routes
/// whose next hop is this host, and this host's blocks themselves. Taken in, they would beat
/// the kernel's own route and withdraw it from BGP, and so on in a loop.
fn our_own_coming_back(me: &HostBgp, v4: bool, source: Option<IpAddr>) -> String {
    let mut lines = String::new();
    if let Some(ip) = source {
        let _ = write!(lines, "\n  if bgp_next_hop = {ip} then reject;");
    }
    let blocks: Vec<String> = me
        .blocks
        .iter()
        .filter(|b| b.addr().is_ipv4() == v4)
        .map(|b| b.to_string())
        .collect();
    if !blocks.is_empty() {
        let _ = write!(lines, "\n  if net ~ [ {} ] then reject;", blocks.join(", "));
    }
    lines
}

/// The filter line that keeps back the workload routes inside this host's blocks: the block
/// (a blackhole route the agent adds) is announced instead, so the others need one route per
/// block, not per workload. Addresses borrowed from other hosts' blocks are still announced
/// one by one, and win over the owner's block by being more specific.
fn inside_own_blocks(me: &HostBgp, v4: bool) -> String {
    let blocks: Vec<String> = me
        .blocks
        .iter()
        .filter(|b| b.addr().is_ipv4() == v4)
        .map(|b| format!("{b}{{{},{}}}", b.prefix_len() + 1, b.max_prefix_len()))
        .collect();
    if blocks.is_empty() {
        return String::new();
    }
    format!("\n  if net ~ [ {} ] then reject;", blocks.join(", "))
}

/// The configuration for `host`, or why it cannot have one.
pub fn render(view: &BgpView, host: &str) -> Result<String, String> {
    let me = view.hosts.get(host).cloned().unwrap_or_default();
    let router_id = me
        .ipv4
        .ok_or_else(|| format!("host {host} has no BGP IPv4 address (calicoctl node sets one)"))?;
    let level = me
        .log_level
        .clone()
        .or_else(|| view.log_level.clone())
        .unwrap_or_else(|| "none".into());
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# Written by calico-node for {host} from the datastore; changes here are overwritten."
    );
    let _ = writeln!(w, "router id {router_id};");
    let _ = writeln!(w, "{}", log_lines(&level));
    w.push_str(&common_part(view.as_of(host), &me));
    let own = [me.ipv4, me.ipv6];
    let mut peer = |kind: &str, ip: &IpAddr, as_num: AsNumber| {
        if own.contains(&Some(*ip)) {
            return;
        }
        let template = if ip.is_ipv4() { 4 } else { 6 };
        let _ = writeln!(
            w,
            "\nprotocol bgp {} from calico_peer{template} {{\n  neighbor {ip} as {as_num};\n}}",
            symbol(kind, ip)
        );
    };
    if view.mesh() {
        for (name, other) in view.hosts.iter().filter(|(name, _)| name.as_str() != host) {
            // A family's mesh session needs an address of that family at both ends.
            for (mine, theirs) in [(me.ipv4, other.ipv4), (me.ipv6, other.ipv6)] {
                if let (Some(_), Some(ip)) = (mine, theirs) {
                    peer("Mesh", &ip, view.as_of(name));
                }
            }
        }
    }
    for (ip, as_num) in &view.peers {
        peer("Global", ip, *as_num);
    }
    for (ip, as_num) in &me.peers {
        peer("Node", ip, *as_num);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> BgpView {
        let mut v = BgpView::default();
        for (k, val) in [
            ("/calico/bgp/v1/host/calico-01/ip_addr_v4", "172.17.8.101"),
            ("/calico/bgp/v1/host/calico-02/ip_addr_v4", "172.17.8.102"),
            ("/calico/bgp/v1/host/calico-02/as_num", "65002"),
            ("/calico/bgp/v1/host/calico-01/ip_addr_v6", "fd00:8::101"),
            (
                "/calico/ipam/v2/host/calico-02/ipv4/block/192.168.0.64-26",
                "",
            ),
            ("/calico/ipam/v2/host/calico-02/ipv4/block/10.0.0.0-26", ""),
            ("/calico/ipam/v2/host/calico-02/ipv6/block/fd80::40-122", ""),
            ("/calico/bgp/v1/host/calico-02/ip_addr_v6", "fd00:8::102"),
            (
                "/calico/bgp/v1/global/peer_v6/fd00:8::fe",
                r#"{"ip":"fd00:8::fe","as_num":"64999"}"#,
            ),
            (
                "/calico/bgp/v1/global/peer_v4/172.17.8.200",
                r#"{"ip":"172.17.8.200","as_num":"64999"}"#,
            ),
            (
                "/calico/bgp/v1/host/calico-01/peer_v4/172.17.8.201",
                r#"{"ip":"172.17.8.201","as_num":"64998"}"#,
            ),
        ] {
            v.apply(k, Some(val));
        }
        v
    }

    #[test]
    fn the_mesh_and_peers_become_sessions() {
        let config = render(&view(), "calico-01").unwrap();
        assert!(config.contains("router id 172.17.8.101;"), "{config}");
        assert!(config.contains("local as 64511;"), "{config}");
        assert!(config.contains("protocol bgp Mesh_172_17_8_102 from calico_peer4 {\n  neighbor 172.17.8.102 as 65002;"), "{config}");
        assert!(
            config.contains("protocol bgp Global_172_17_8_200"),
            "{config}"
        );
        assert!(
            config.contains("protocol bgp Node_172_17_8_201"),
            "{config}"
        );
        assert!(
            !config.contains("Mesh_172_17_8_101"),
            "no session to itself"
        );
        assert!(
            config.contains("if krt_source = 80 then accept;"),
            "{config}"
        );
    }

    #[test]
    fn ipv6_sessions_need_an_ipv6_address_at_both_ends() {
        let config = render(&view(), "calico-01").unwrap();
        assert!(
            config.contains("protocol bgp Mesh6_fd00_8__102 from calico_peer6 {\n  neighbor fd00:8::102 as 65002;"),
            "{config}"
        );
        assert!(config.contains("protocol bgp Global6_fd00_8__fe from calico_peer6"));
        assert!(config.contains("protocol kernel kernel6"));
        assert!(
            !config.contains("Mesh6_fd00_8__101"),
            "no session to itself"
        );
        let mut v = view();
        v.apply("/calico/bgp/v1/host/calico-02/ip_addr_v6", None);
        let config = render(&v, "calico-01").unwrap();
        assert!(!config.contains("Mesh6_"), "{config}");
        assert!(config.contains("Mesh_172_17_8_102"), "{config}");
    }

    #[test]
    fn workload_routes_inside_own_blocks_stay_back() {
        let config = render(&view(), "calico-02").unwrap();
        assert!(
            config.contains("filter calico_export4 {\n  if net ~ [ 10.0.0.0/26{27,32}, 192.168.0.64/26{27,32} ] then reject;\n  if krt_source = 80 then accept;"),
            "{config}"
        );
        assert!(
            config.contains("if net ~ [ fd80::40/122{123,128} ] then reject;"),
            "{config}"
        );
        // Its own routes, sent back by a peer, are refused.
        assert!(
            config.contains("filter calico_import4 {\n  if bgp_next_hop = 172.17.8.102 then reject;\n  if net ~ [ 10.0.0.0/26, 192.168.0.64/26 ] then reject;\n  accept;"),
            "{config}"
        );
        assert!(
            config.contains(
                "filter calico_import6 {\n  if bgp_next_hop = fd00:8::102 then reject;\n  if net ~ [ fd80::40/122 ] then reject;\n  accept;"
            ),
            "{config}"
        );
        let other = render(&view(), "calico-01").unwrap();
        assert!(
            !other.contains("if net ~"),
            "calico-01 has no blocks: {other}"
        );
    }

    #[test]
    fn mesh_off_and_missing_address() {
        let mut v = view();
        v.apply(
            "/calico/bgp/v1/global/node_mesh",
            Some(r#"{"enabled":false}"#),
        );
        let config = render(&v, "calico-01").unwrap();
        assert!(!config.contains("Mesh_"), "{config}");
        assert!(config.contains("Global_172_17_8_200"));
        assert!(render(&v, "calico-09")
            .unwrap_err()
            .contains("no BGP IPv4 address"));
    }

    #[test]
    fn bird_accepts_the_configuration() {
        let config = render(&view(), "calico-02").unwrap();
        let path = std::env::temp_dir().join(format!("calico-bird-{}.conf", std::process::id()));
        std::fs::write(&path, &config).unwrap();
        let output = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output();
        let _ = std::fs::remove_file(&path);
        let output = output.expect("bird runs (install bird2)");
        assert!(
            output.status.success(),
            "{}\n{config}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
