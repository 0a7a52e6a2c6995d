//! A one-host topology in namespaces, for tests of the dataplane against a real kernel.

#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;

use calico_felix::{CalcGraph, Update};
use calico_testkit::Netns;

/// Feeds one datastore key to the calc graph, as the agent's watch would.
pub fn put(graph: &mut CalcGraph, key: &str, value: &str) {
    graph.apply(&Update::Put {
        key: key.into(),
        value: value.into(),
    });
}

/// A profile whose only tag is its name, with the given rules JSON.
pub fn profile(graph: &mut CalcGraph, name: &str, rules: &str) {
    put(
        graph,
        &format!("/calico/v1/policy/profile/{name}/tags"),
        &format!(r#"["{name}"]"#),
    );
    put(
        graph,
        &format!("/calico/v1/policy/profile/{name}/rules"),
        rules,
    );
}

/// A host namespace with workloads wired as calico-node will wire them: a veth per workload,
/// the workload's /32 and routes via 169.254.1.1; with `wire_host_side`, also the host side
/// (proxy ARP, a /32 route, forwarding) that the dataplane normally does.
pub struct OneHost {
    pub host: Netns,
    pub workloads: BTreeMap<&'static str, (Netns, String)>,
    wire_host_side: bool,
}

impl OneHost {
    pub fn new(wire_host_side: bool) -> OneHost {
        let host = Netns::new("polhost");
        if wire_host_side {
            host.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        }
        // Proxy ARP answers for 169.254.1.1 only with a route to it out of another interface.
        host.run("ip", &["link", "add", "uplink", "type", "bridge"]);
        host.run("ip", &["link", "set", "uplink", "up"]);
        host.run("ip", &["addr", "add", "10.255.255.1/24", "dev", "uplink"]);
        host.run(
            "ip",
            &[
                "route",
                "add",
                "default",
                "via",
                "10.255.255.254",
                "dev",
                "uplink",
                "onlink",
            ],
        );
        OneHost {
            host,
            workloads: BTreeMap::new(),
            wire_host_side,
        }
    }

    pub fn add(&mut self, name: &'static str, ip: &str, id: &str) {
        let workload = Netns::new(&format!("wl{name}"));
        let interface = format!("cali{}", &id[..11]);
        let peer = [
            "link",
            "add",
            &interface,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &workload.name,
        ];
        self.host.run("ip", &peer);
        if self.wire_host_side {
            self.host.run(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{interface}.proxy_arp=1")],
            );
            self.host.run(
                "sysctl",
                &["-qw", &format!("net.ipv4.neigh.{interface}.proxy_delay=0")],
            );
            self.host.run("ip", &["link", "set", &interface, "up"]);
            self.host.run(
                "ip",
                &["route", "add", &format!("{ip}/32"), "dev", &interface],
            );
        }
        workload.run("ip", &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        workload.run("ip", &["link", "set", "eth0", "up"]);
        workload.run(
            "ip",
            &[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        );
        workload.run(
            "ip",
            &[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ],
        );
        self.workloads.insert(name, (workload, ip.to_string()));
    }

    /// Whether any of three pings, 0.2 s apart, is answered (one lost packet on a busy machine
    /// is not a policy decision; "blocked" means all three went unanswered).
    pub fn pings(&self, from: &str, to: &str) -> bool {
        let (source, _) = &self.workloads[from];
        let (_, target) = &self.workloads[to];
        source
            .command("ping", &["-c", "3", "-i", "0.2", "-W", "1", target])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}
