//! One host's BIRD 2 configuration.
//!
//! - The kernel protocol learns this host's workload routes (the agent adds them with
//!   [`ROUTE_PROTOCOL`]) and installs the workload routes other hosts announce.
//! - BGP sessions: the full iBGP mesh to every other host while the mesh is on, global peers, and
//!   this host's own peers. Only workload routes are exported.
//! - Peers are expected on a directly connected network (as in calico-lab): routes point straight
//!   at the announcing host (`gateway direct`).

use std::fmt::Write;
use std::net::IpAddr;

use calico_model::bgp::AsNumber;

use crate::view::BgpView;

pub const ROUTE_PROTOCOL: u8 = calico_model::WORKLOAD_ROUTE_PROTOCOL;

/// BIRD's symbol for a peer: letters, digits and `_`.
fn symbol(kind: &str, ip: &IpAddr) -> String {
    let text: String = ip
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{kind}_{text}")
}

fn log_lines(level: &str) -> &'static str {
    match level {
        "debug" => "log stderr all;\ndebug protocols all;",
        "info" => "log stderr { info, remote, warning, error, auth, fatal, bug };",
        _ => "log stderr { warning, error, fatal, bug };",
    }
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
    let local_as = view.as_of(host);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# Written by calico-node for {host} from the datastore; changes here are overwritten."
    );
    let _ = writeln!(w, "router id {router_id};");
    let _ = writeln!(w, "{}", log_lines(&level));
    let _ = writeln!(
        w,
        r#"
filter calico_export {{
  if krt_source = {ROUTE_PROTOCOL} then accept;
  reject;
}}

protocol device {{
  scan time 10;
}}

protocol kernel kernel4 {{
  learn;
  scan time 10;
  ipv4 {{
    import filter {{ if krt_source = {ROUTE_PROTOCOL} then accept; reject; }};
    export filter {{ if source = RTS_BGP then accept; reject; }};
  }};
}}

template bgp calico_peer {{
  local as {local_as};
  direct;
  hold time 9;
  keepalive time 3;
  connect delay time 1;
  connect retry time 5;
  ipv4 {{
    gateway direct;
    import all;
    export filter calico_export;
    next hop self;
  }};
}}"#
    );
    let mut peer = |kind: &str, ip: &IpAddr, as_num: AsNumber| {
        if ip.is_ipv4() && *ip != router_id {
            let _ = writeln!(
                w,
                "\nprotocol bgp {} from calico_peer {{\n  neighbor {ip} as {as_num};\n}}",
                symbol(kind, ip)
            );
        }
    };
    if view.mesh() {
        for (name, other) in view.hosts.iter().filter(|(name, _)| name.as_str() != host) {
            if let Some(ip) = other.ipv4 {
                peer("Mesh", &ip, view.as_of(name));
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
        assert!(config.contains("protocol bgp Mesh_172_17_8_102 from calico_peer {\n  neighbor 172.17.8.102 as 65002;"), "{config}");
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
