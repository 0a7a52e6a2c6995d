//! Bad input: a clear message naming what is wrong, a non-zero exit, and nothing written
//! (etcd's revision does not move).

mod common;
use common::Cli;

const EP: &str = "1234567890abcdef1234567890abcdef"; // also in CASES

/// (command line, split at spaces; words the error must contain)
const CASES: &[(&str, &str)] = &[
    // names
    ("profile add a/b", "invalid profile name 'a/b'"),
    ("profile add .x", "must start with a letter, a digit or '_'"),
    ("profile P tag add -x", "invalid tag '-x'"),
    ("profile P tag add no:colons", "invalid tag 'no:colons'"),
    (
        "profile P rule add inbound allow from tag x*",
        "invalid tag 'x*'",
    ),
    ("profile b@d rule show", "invalid profile name 'b@d'"),
    // unknown profiles
    (
        "profile NOPE rule add inbound allow",
        "Profile NOPE not found.",
    ),
    ("profile NOPE tag add t", "Profile NOPE not found."),
    ("profile remove NOPE", "Profile NOPE not found."),
    (
        "endpoint 1234567890abcdef1234567890abcdef profile append NOPE",
        "Profile with name NOPE was not found.",
    ),
    // CIDRs and IPs
    (
        "profile P rule add inbound allow from cidr 10.0.0.0/33",
        "invalid CIDR '10.0.0.0/33'",
    ),
    (
        "profile P rule add inbound allow to cidr nonsense",
        "invalid CIDR 'nonsense'",
    ),
    (
        "profile P rule add inbound allow from cidr 10.0.0.0/8 to cidr fd00::/8",
        "mixes IPv4 and IPv6",
    ),
    (
        "profile P rule add inbound allow icmpv6 from cidr 10.0.0.0/8",
        "mixes IPv4 and IPv6",
    ),
    ("pool add 192.168.0.0/33", "invalid CIDR"),
    ("pool add 10.0.0.0/27", "prefix length of 26 or lower"),
    ("pool add fd00::/123", "prefix length of 122 or lower"),
    (
        "pool add 10.0.0.0/8 10.1.0.0/16",
        "overlaps with another new pool 10.0.0.0/8",
    ),
    (
        "pool add 192.168.1.0/24",
        "overlaps with the existing pool 192.168.0.0/16",
    ),
    (
        "pool add fd00::/64 --ipip",
        "IP-in-IP is not supported for IPv6 pools",
    ),
    (
        "pool remove 10.99.0.0/16",
        "10.99.0.0/16 is not a configured pool",
    ),
    (
        "pool remove 192.168.0.0/16 10.99.0.0/16",
        "10.99.0.0/16 is not a configured pool",
    ),
    (
        "pool range add 10.0.0.9 10.0.0.1",
        "start address must not be above the end",
    ),
    ("pool range add 10.0.0.0 fd00::1", "same IP version"),
    (
        "pool range add 10.0.0.0 10.0.0.20",
        "smaller than an IPAM block",
    ),
    (
        "bgp peer add 10.0.0.300 as 64512",
        "invalid peer IP address '10.0.0.300'",
    ),
    ("bgp peer remove nope", "invalid peer IP address 'nope'"),
    // AS numbers
    (
        "bgp peer add 10.0.0.1 as 4294967296",
        "invalid AS number '4294967296'",
    ),
    ("bgp peer add 10.0.0.1 as 0", "AS 0 is reserved"),
    ("bgp default-node-as 1.70000", "invalid AS number '1.70000'"),
    ("bgp default-node-as -5", "invalid AS number '-5'"),
    // ports
    (
        "profile P rule add inbound allow tcp to ports 65536",
        "invalid port '65536'",
    ),
    (
        "profile P rule add inbound allow udp to ports 90:80",
        "must not be larger",
    ),
    (
        "profile P rule add inbound allow tcp to ports 80,,81",
        "invalid port",
    ),
    (
        "profile P rule add inbound allow icmp to ports 80",
        "ports can only be given",
    ),
    (
        "profile P rule add inbound allow to ports 80",
        "ports can only be given",
    ),
    // ICMP
    (
        "profile P rule add inbound allow icmp type 255",
        "ICMP type '255' is not a number from 0 to 254",
    ),
    (
        "profile P rule add inbound allow icmp type 8 code 300",
        "ICMP code '300'",
    ),
    (
        "profile P rule add inbound allow icmp code 1",
        "'code' must follow 'type N'",
    ),
    (
        "profile P rule add inbound allow tcp type 8",
        "unexpected 'type'",
    ),
    // positions
    (
        "profile P rule add inbound --at=3 allow tcp",
        "Position 3 is out of range",
    ),
    (
        "profile P rule add inbound --at=0 allow tcp",
        "positions count from 1",
    ),
    (
        "profile P rule add inbound --at=x allow tcp",
        "Invalid position 'x'",
    ),
    (
        "profile P rule remove outbound --at=2",
        "Position 2 is out of range",
    ),
    ("profile P rule remove inbound deny", "Rule not found."),
    // grammar and usage
    (
        "profile P rule add inbound permit",
        "starts with 'allow' or 'deny'",
    ),
    (
        "profile P rule add upward allow",
        "Expected 'inbound' or 'outbound'",
    ),
    (
        "profile P rule add inbound allow from tag",
        "'tag' needs a value",
    ),
    (
        "profile P rule add inbound allow to tag a from tag b",
        "unexpected 'from'",
    ),
    (
        "profile P rule remove inbound",
        "Give either --at=<POSITION> or the rule",
    ),
    ("profile show --detailed=yes", "takes no value"),
    ("profile show --no-check", "does not apply here"),
    ("pool show --ipv4 --ipv6", "not both"),
    ("bgp node-mesh maybe", "Invalid bgp command"),
    (
        "endpoint 1234567890abcdef1234567890abcdef profile frob P",
        "Expected append, remove, set or show",
    ),
    (
        "endpoint 1234567890abcdef1234567890abcdef profile append",
        "No profile specified.",
    ),
    (
        "endpoint 0000 profile show",
        "Endpoint 0000 is unknown to Calico.",
    ),
    ("config felix loglevel loud", "loglevel takes one of"),
    (
        "config felix PrometheusMetricsPort 70000",
        "takes a port from 1 to 65535",
    ),
    ("config felix NoSuchSetting 1", "is not recognized"),
    (
        "config bgp loglevel warning",
        "loglevel takes one of: none, debug, info",
    ),
    ("config felix loglevel debug --remove", "not both"),
    ("frobnicate", "Unknown command 'frobnicate'"),
];

#[test]
fn bad_input_is_refused_clearly_and_writes_nothing() {
    let cli = Cli::new();
    cli.ok("profile add P");
    cli.ok("pool add 192.168.0.0/16");
    cli.put_endpoint("h1", "w1", EP, "192.168.0.1", &[]);
    let dump = cli.etcd.dump("/");
    let revision = cli.etcd.revision();
    let bad_name: &[&str] = &["profile", "add", "bad name"];
    let long = "p".repeat(300);
    let long_name: &[&str] = &["profile", "add", &long];
    let long_tag: &[&str] = &["profile", "P", "tag", "add", &long];
    let cases = CASES
        .iter()
        .map(|(line, needle)| (line.split_whitespace().collect::<Vec<_>>(), *needle))
        .chain([
            (bad_name.to_vec(), "invalid profile name 'bad name'"),
            (long_name.to_vec(), "300 characters long; the limit is 253"),
            (long_tag.to_vec(), "invalid tag 'pppp"),
        ]);
    for (args, needle) in cases {
        let run = cli.run(&args);
        assert_ne!(run.code, 0, "calicoctl {args:?} should fail");
        assert!(
            run.stderr.contains(needle),
            "calicoctl {args:?}: expected {needle:?} in:\n{}",
            run.stderr
        );
        assert!(
            run.stdout.is_empty(),
            "calicoctl {args:?} printed to stdout: {}",
            run.stdout
        );
        assert_eq!(
            cli.etcd.revision(),
            revision,
            "calicoctl {args:?} wrote to etcd"
        );
    }
    assert_eq!(cli.etcd.dump("/"), dump);
}

#[test]
fn bad_or_unreachable_datastore_settings_are_clear_errors() {
    let cli = Cli::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (var, value, needle) in [
        (
            "ETCD_ENDPOINTS",
            "127.0.0.1:2379".to_string(),
            "is not an http or https URL",
        ),
        (
            "ETCD_ENDPOINTS",
            format!("http://127.0.0.1:{dead}"),
            "cannot reach etcd at http://127.0.0.1:",
        ),
        (
            "ETCD_AUTHORITY",
            "localhost".to_string(),
            "ETCD_AUTHORITY: 'http://localhost' has no port",
        ),
    ] {
        let mut command = cli.command(&["profile", "show"]);
        command.env_remove("ETCD_ENDPOINTS").env(var, &value);
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{var}={value}");
        assert!(stderr.contains(needle), "{var}={value}: {stderr}");
    }
}
