//! `calicoctl pool`, `bgp` and `config`: what they store and show.

mod common;
use common::Cli;

#[test]
fn pools_are_stored_as_calico_v1_and_shown_by_family() {
    let cli = Cli::new();
    cli.ok("pool add 192.168.0.0/16");
    cli.ok("pool add 172.25.0.0/16 --ipip --nat-outgoing");
    cli.ok("pool add fd80:24e2:f998:72d6::/64");
    assert_eq!(
        cli.etcd
            .get("/calico/v1/ipam/v4/pool/192.168.0.0-16")
            .unwrap(),
        r#"{"cidr":"192.168.0.0/16"}"#
    );
    assert_eq!(
        cli.etcd
            .get("/calico/v1/ipam/v4/pool/172.25.0.0-16")
            .unwrap(),
        r#"{"cidr":"172.25.0.0/16","ipip":"tunl0","masquerade":true}"#
    );
    assert!(cli
        .etcd
        .get("/calico/v6/ipam/v6/pool/fd80:24e2:f998:72d6::-64")
        .is_none());
    assert!(cli
        .etcd
        .get("/calico/v1/ipam/v6/pool/fd80:24e2:f998:72d6::-64")
        .is_some());
    assert_eq!(
        cli.ok("pool show --ipv4"),
        "+----------------+-------------------+\n|   IPv4 CIDR    |      Options      |\n+----------------+-------------------+\n\
         | 172.25.0.0/16  | ipip,nat-outgoing |\n| 192.168.0.0/16 |                   |\n+----------------+-------------------+\n"
    );
    assert!(cli
        .ok("pool show --ipv6")
        .contains("| fd80:24e2:f998:72d6::/64 |"));
    // Adding a pool again updates its options.
    cli.ok("pool add 192.168.0.0/16 --nat-outgoing");
    assert!(cli
        .etcd
        .get("/calico/v1/ipam/v4/pool/192.168.0.0-16")
        .unwrap()
        .contains("masquerade"));
    cli.ok("pool remove 192.168.0.0/16 172.25.0.0/16");
    assert!(cli.etcd.dump("/calico/v1/ipam/v4/").is_empty());
}

#[test]
fn pool_ranges_become_block_aligned_cidrs() {
    let cli = Cli::new();
    cli.ok("pool range add 10.0.0.0 10.0.1.127 --nat-outgoing");
    let keys: Vec<String> = cli
        .etcd
        .dump("/calico/v1/ipam/v4/pool/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            "/calico/v1/ipam/v4/pool/10.0.0.0-24",
            "/calico/v1/ipam/v4/pool/10.0.1.0-25"
        ]
    );
    let run = cli.fails("pool range add 10.0.0.200 10.0.0.250");
    assert!(
        run.stderr.contains("smaller than an IPAM block"),
        "{}",
        run.stderr
    );
    let run = cli.fails("pool range add 10.9.0.0 10.9.0.63 --ipip --bogus");
    assert!(
        run.stderr.contains("Unknown option --bogus"),
        "{}",
        run.stderr
    );
}

#[test]
fn global_bgp_settings_and_peers() {
    let cli = Cli::new();
    assert_eq!(cli.ok("bgp node-mesh"), "on\n");
    cli.ok("bgp node-mesh off");
    assert_eq!(
        cli.etcd.get("/calico/bgp/v1/global/node_mesh").unwrap(),
        r#"{"enabled":false}"#
    );
    assert_eq!(cli.ok("bgp node-mesh"), "off\n");
    assert_eq!(cli.ok("bgp default-node-as"), "64511\n");
    cli.ok("bgp default-node-as 64512");
    assert_eq!(
        cli.etcd.get("/calico/bgp/v1/global/as_num").unwrap(),
        "64512"
    );
    cli.ok("bgp default-node-as 1.10");
    assert_eq!(cli.ok("bgp default-node-as"), "65546\n");

    cli.ok("bgp peer add 192.0.2.10 as 64555");
    cli.ok("bgp peer add 2001:db8::1 as 64556");
    assert_eq!(
        cli.etcd
            .get("/calico/bgp/v1/global/peer_v4/192.0.2.10")
            .unwrap(),
        r#"{"ip":"192.0.2.10","as_num":"64555"}"#
    );
    assert_eq!(
        cli.ok("bgp peer show --ipv4"),
        "+----------------------+--------+\n| Global IPv4 BGP Peer | AS Num |\n+----------------------+--------+\n\
         | 192.0.2.10           | 64555  |\n+----------------------+--------+\n"
    );
    assert!(cli
        .ok("bgp peer show")
        .contains("| 2001:db8::1          | 64556  |"));
    assert_eq!(
        cli.ok("bgp peer remove 192.0.2.10"),
        "BGP peer removed from global configuration\n"
    );
    assert_eq!(
        cli.ok("bgp peer show --ipv4"),
        "No global IPv4 BGP Peers defined.\n\n"
    );
    let run = cli.fails("bgp peer remove 192.0.2.10");
    assert!(
        run.stderr
            .contains("192.0.2.10 is not a globally configured peer."),
        "{}",
        run.stderr
    );
}

#[test]
fn config_stores_raw_values_under_felix_and_bgp_keys() {
    let cli = Cli::new();
    assert_eq!(cli.ok("config felix loglevel"), "No value configured\n");
    cli.ok("config felix loglevel DEBUG");
    assert_eq!(
        cli.etcd.get("/calico/v1/config/LogSeverityScreen").unwrap(),
        "debug"
    );
    assert_eq!(cli.ok("config felix loglevel"), "debug\n");
    cli.ok("config felix DefaultEndpointToHostAction accept");
    assert_eq!(
        cli.etcd
            .get("/calico/v1/config/DefaultEndpointToHostAction")
            .unwrap(),
        "ACCEPT"
    );
    cli.ok("config bgp loglevel info");
    assert_eq!(
        cli.etcd.get("/calico/bgp/v1/global/loglevel").unwrap(),
        "info"
    );
    assert_eq!(cli.ok("config felix loglevel --remove"), "Value removed\n");
    assert_eq!(
        cli.ok("config felix loglevel --remove"),
        "No value configured\n"
    );
    cli.ok("config felix SomethingNew 7 --force");
    assert_eq!(cli.etcd.get("/calico/v1/config/SomethingNew").unwrap(), "7");
}
