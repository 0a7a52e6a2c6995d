//! `wire` builds what `calicoctl container add` promises, and with the dataplane's routes and
//! policy two workloads talk over IPv4 and IPv6; `unwire` removes it all.

use std::path::PathBuf;
use std::sync::Arc;

use calico_dataplane::workload::{format_mac, unwire, wire, HostSide, Wiring};
use calico_dataplane::{netns, Dataplane, LinuxDataplane, NftCli};
use calico_felix::CalcGraph;
use calico_testkit::Netns;
mod common;
use common::{profile, put, OneHost};

fn path(ns: &Netns) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{}", ns.name))
}

#[test]
fn wired_workloads_reach_each_other_over_both_ip_versions() {
    let lab = OneHost::new(false);
    let host = &lab.host;
    let (a, b) = (Netns::new("wirea"), Netns::new("wireb"));
    let workloads = [
        (&a, "aaaaaaaaaaaaaaaa", "192.168.0.1", "fd80::1"),
        (&b, "bbbbbbbbbbbbbbbb", "192.168.0.2", "fd80::2"),
    ];
    let mut graph = CalcGraph::new("h");
    profile(
        &mut graph,
        "P",
        r#"{"inbound_rules":[{"action":"allow","src_tag":"P"}],"outbound_rules":[{"action":"allow"}]}"#,
    );
    for (i, (ns, id, v4, v6)) in workloads.into_iter().enumerate() {
        let mac = [0xee, 0, 0, 0, 0, i as u8 + 1];
        let wiring = Wiring {
            netns: path(ns),
            side: HostSide::named(&format!("cali{}", &id[..11]), mac),
            workload_interface: "eth1".into(),
            nets: vec![
                format!("{v4}/32").parse().unwrap(),
                format!("{v6}/128").parse().unwrap(),
            ],
        };
        netns::run_in(&path(host), move || async move { wire(&wiring).await })
            .unwrap()
            .unwrap();
        let mac = format_mac(mac);
        let link = ns.run("ip", &["link", "show", "eth1"]);
        assert!(link.contains(&format!("link/ether {mac}")), "{link}");
        let routes = ns.run("ip", &["route"]);
        assert!(
            routes.contains("default via 169.254.1.1 dev eth1"),
            "{routes}"
        );
        assert!(ns
            .run("ip", &["-6", "route"])
            .contains("default via fe80::1 dev eth1"));
        let key = format!(
            "/calico/v1/host/h/workload/namespace/{}/endpoint/{id}",
            ns.name
        );
        let value = format!(
            r#"{{"state":"active","name":"cali{}","mac":"{mac}","profile_ids":["P"],"ipv4_nets":["{v4}/32"],"ipv6_nets":["{v6}/128"]}}"#,
            &id[..11]
        );
        put(&mut graph, &key, &value);
    }
    // Wiring the same interface twice is refused.
    let again = Wiring {
        netns: path(&a),
        side: HostSide::named("caliaaaaaaaaaaa", [0xee; 6]),
        workload_interface: "eth2".into(),
        nets: vec![],
    };
    let refused = netns::run_in(&path(host), move || async move { wire(&again).await }).unwrap();
    assert!(refused.unwrap_err().to_string().contains("already exists"));
    // So is a workload interface name the workload already has, and nothing stays behind.
    let taken = Wiring {
        netns: path(&a),
        side: HostSide::named("calicccccccccc1", [0xee; 6]),
        workload_interface: "eth1".into(),
        nets: vec![],
    };
    let refused = netns::run_in(&path(host), move || async move { wire(&taken).await }).unwrap();
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("interface eth1 already exists in the workload's namespace"),
        "{message}"
    );
    assert!(!host.run("ip", &["link"]).contains("calicccccccccc1"));

    let desired = graph.desired();
    netns::run_in(&path(host), move || async move {
        LinuxDataplane::new(Arc::new(NftCli::default()))
            .unwrap()
            .apply(&desired)
            .await
            .unwrap()
    })
    .unwrap();
    let ping = |ns: &Netns, target: &str| {
        ns.command("ping", &["-c", "1", "-W", "2", target])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(ping(&a, "192.168.0.2"));
    assert!(ping(&b, "fd80::1"));
    // The host knows each workload's MAC from its endpoint: no ARP or neighbour discovery.
    let neighbours = host.run("ip", &["neigh", "show", "dev", "caliaaaaaaaaaaa"]);
    for entry in [
        "192.168.0.1 lladdr ee:00:00:00:00:01 PERMANENT",
        "fd80::1 lladdr ee:00:00:00:00:01 PERMANENT",
    ] {
        assert!(
            neighbours.contains(entry),
            "{entry} missing from\n{neighbours}"
        );
    }

    let removed = netns::run_in(&path(host), || async {
        unwire("caliaaaaaaaaaaa").await.unwrap()
    })
    .unwrap();
    assert!(removed);
    assert!(
        !a.run("ip", &["link"]).contains("eth1"),
        "both ends are gone"
    );
    assert!(!host.run("ip", &["link"]).contains("caliaaaaaaaaaaa"));
}
