//! The usage text of each command group, printed by `--help` and with usage errors. The
//! command syntax is the original calicoctl's; see docs/cli.md for the full reference.

pub const MAIN: &str = "\
Usage: calicoctl <command> [<args>...]

Commands:
    node          Start, stop, remove or list the Calico agent (calico-node) on hosts
    container     Give a workload (network namespace) an interface and address
    master        Run the cluster's master role: the orchestrator group keyspace (seed 002)
    profile       Manage security profiles: tags and rules
    endpoint      Show endpoints and assign them profiles
    pool          Manage the IP address pools workloads draw from
    ipam          Show, release and check the addresses IPAM has handed out
    bgp           Manage BGP: global peers, node mesh, default AS number
    config        Show or change agent (felix) and BGP settings
    checksystem   Check that this host has what Calico needs
    diags         Save diagnostics (routes, links, rules, logs, datastore) to a tar.gz
    status        Show this host's agent and its BGP sessions
    version       Print the calicoctl version

Run 'calicoctl <command> --help' for the command's usage.

The datastore is etcd, found through ETCD_ENDPOINTS (comma-separated URLs; default
http://127.0.0.1:2379) or the older ETCD_AUTHORITY (host:port). For https endpoints set
ETCD_CA_CERT_FILE, and ETCD_CERT_FILE with ETCD_KEY_FILE for a client certificate.
";

pub const PROFILE: &str = "\
Usage:
  calicoctl profile show [--detailed]
  calicoctl profile add <PROFILE>
  calicoctl profile remove <PROFILE> [--no-check]
  calicoctl profile <PROFILE> tag show
  calicoctl profile <PROFILE> tag (add|remove) <TAG>
  calicoctl profile <PROFILE> rule add (inbound|outbound) [--at=<POSITION>] (allow|deny) [<RULE>...]
  calicoctl profile <PROFILE> rule remove (inbound|outbound) (--at=<POSITION> | (allow|deny) [<RULE>...])
  calicoctl profile <PROFILE> rule show
  calicoctl profile <PROFILE> rule json
  calicoctl profile <PROFILE> rule update

Rules:
  (allow|deny) [ipv4|ipv6]
    [(tcp|udp) | (icmp|icmpv6) [type <ICMPTYPE> [code <ICMPCODE>]]]
    [from [ports <PORTS>] [tag <TAG>] [cidr <CIDR>]]
    [to [ports <PORTS>] [tag <TAG>] [cidr <CIDR>]]
  PORTS is a list of ports and ranges, e.g. 80,443,8000:8080 ('port' works too; ports only
  with tcp or udp). ICMP type and code are 0-254. ipv4/ipv6 restricts a rule to one IP
  version; it is only needed when neither the protocol nor a CIDR implies one.

Options:
  --detailed        Also list the endpoints in each profile.
  --no-check        Remove the profile even if endpoints still use it.
  --at=<POSITION>   Where to insert or which rule to remove, counting from 1. Rules are
                    appended by default.

'rule show' prints rules in the grammar above, so a line can be pasted back into
'rule add'. 'rule update' reads the rules JSON (as 'rule json' prints it) from stdin.
A new profile has tag <PROFILE>, inbound rule 'allow from tag <PROFILE>' and outbound
rule 'allow'.
";

pub const ENDPOINT: &str = "\
Usage:
  calicoctl endpoint show [--host=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>]
                          [--workload=<WORKLOAD_ID>] [--endpoint=<ENDPOINT_ID>] [--detailed]
  calicoctl endpoint <ENDPOINT_ID> profile (append|remove|set) [--host=<HOSTNAME>]
                          [--orchestrator=<ORCHESTRATOR_ID>] [--workload=<WORKLOAD_ID>] [<PROFILES>...]
  calicoctl endpoint <ENDPOINT_ID> profile show [--host=<HOSTNAME>]
                          [--orchestrator=<ORCHESTRATOR_ID>] [--workload=<WORKLOAD_ID>]

Options:
  --detailed        One row per endpoint instead of counts per host.
  --host, --orchestrator, --workload, --endpoint
                    Only endpoints with these ids; they also pick one endpoint when an
                    endpoint id is not unique.

An endpoint's profiles are tried in order: the first rule that matches decides.
";

pub const POOL: &str = "\
Usage:
  calicoctl pool add <CIDRS>... [--ipip] [--nat-outgoing]
  calicoctl pool remove <CIDRS>... [--force]
  calicoctl pool range add <START_IP> <END_IP> [--ipip] [--nat-outgoing]
  calicoctl pool show [--ipv4 | --ipv6]

Options:
  --ipip            Reach this pool's workloads on other hosts through IP-in-IP (IPv4 only).
  --nat-outgoing    Masquerade traffic from this pool to destinations outside all pools.
  --ipv4, --ipv6    Show only the pools of one IP version.
  --force           Remove a pool even though workloads hold addresses in it (they stay
                    allocated, so re-adding the pool does not hand them out twice).

A pool holds at least one IPAM block (/26 for IPv4, /122 for IPv6) and must not overlap
another pool. Adding an existing pool again updates its options. 'range add' stores the
fewest CIDRs that cover the range exactly.
";

pub const IPAM: &str = "\
Usage:
  calicoctl ipam info <IP>
  calicoctl ipam release <IP>
  calicoctl ipam show [--ip=<IP>]
  calicoctl ipam check [--fix [--force]]

Options:
  --ip=<IP>   Show who holds this address (as 'info').
  --fix       Repair what the check found: release addresses no workload has, allocate
              workload addresses IPAM does not know, take blocks away from removed hosts.
  --force     Repair even while agents run (an address being handed out could be
              released).

Pools are cut into blocks of 64 addresses (/26, /122); each host claims blocks and hands out
their addresses, borrowing from other hosts' blocks only when no block is left. 'show' lists
each pool's and block's usage. 'check' exits non-zero when it finds a problem.
";

pub const BGP: &str = "\
Usage:
  calicoctl bgp peer add <PEER_IP> as <AS_NUM>
  calicoctl bgp peer remove <PEER_IP>
  calicoctl bgp peer show [--ipv4 | --ipv6]
  calicoctl bgp node-mesh [on|off]
  calicoctl bgp default-node-as [<AS_NUM>]

Global peers are peered with by every host. The node-to-node mesh (on by default) peers
all hosts with each other. Hosts use the default AS number (64511 unless set) unless
started with their own. AS numbers may be plain (64512) or dotted (1.10).
";

pub const CONFIG: &str = "\
Usage:
  calicoctl config felix <NAME> [<VALUE>|--remove] [--force]
  calicoctl config bgp <NAME> [<VALUE>|--remove] [--force]
  calicoctl config node bgp <NAME> [<VALUE>|--remove] [--force]

Without a value, prints the current value. NAME is one of:
  felix: loglevel (none, debug, info, warning, error, critical; stored as
         LogSeverityScreen), LogSeverityScreen, LogSeverityFile,
         DefaultEndpointToHostAction (DROP, RETURN, ACCEPT), InterfacePrefix,
         PrometheusMetricsEnabled, PrometheusMetricsPort, HealthPort,
         ReportingIntervalSecs, ReportingTTLSecs
  bgp:   loglevel (none, debug, info); 'config node bgp' sets it for this host only

Options:
  --remove          Remove the setting, so the default applies again.
  --force           Store a name or value calicoctl does not know.
";

pub const NODE: &str = "\
Usage:
  calicoctl node [--ip=<IP>] [--ip6=<IP6>] [--as=<AS_NUM>] [--name=<NAME>] [--log-dir=<LOG_DIR>]
                 [--libnetwork] [--docker-proxy=<LISTEN> [--docker-proxy-tls=<CERT_DIR>] | --no-docker-proxy]
  calicoctl node stop [--name=<NAME>] [--force]
  calicoctl node remove [--hostname=<HOSTNAME>] [--remove-endpoints]
  calicoctl node show
  calicoctl node bgp peer add <PEER_IP> as <AS_NUM>
  calicoctl node bgp peer remove <PEER_IP>
  calicoctl node bgp peer show [--ipv4 | --ipv6]

Options:
  --ip=<IP>         This host's IPv4 address for BGP [default: the first global IPv4 address]
  --ip6=<IP6>       This host's IPv6 address for BGP.
  --as=<AS_NUM>     This host's AS number [default: the global default, 64511].
  --name=<NAME>     This host's name [default: $CALICO_NODENAME, else the hostname].
  --log-dir=<LOG_DIR>  Where calico-node writes its log [default: /var/log/calico].
  --libnetwork      Also serve Docker's libnetwork network and IPAM drivers, both named calico,
                    on /run/docker/plugins/calico.sock, for this host's engine ($DOCKER_HOST,
                    else /var/run/docker.sock): docker network create --driver calico
                    --ipam-driver calico NAME. Networks are shared by every host.
  --docker-proxy=<LISTEN>  Where the Docker API proxy listens [default: 127.0.0.1:2377]; also
                    tcp://HOST:PORT or unix:///PATH. Containers created through it with
                    -e CALICO_IP=<IP>|auto [-e CALICO_PROFILE=<PROFILE>] get Calico networking.
                    On by default where this host has a Docker engine. Whoever reaches it has
                    the engine's power (root on this host): beyond loopback it needs TLS.
  --docker-proxy-tls=<CERT_DIR>  ca.pem, cert.pem and key.pem: the proxy takes only clients with
                    a certificate signed by ca.pem (as dockerd --tlsverify).
  --no-docker-proxy  Do not serve the Docker API proxy.
  --hostname=<HOSTNAME>  The host to remove [default: this host].
  --remove-endpoints   Also remove the host's endpoints from the datastore.

'calicoctl node' registers the host, creates the default IP pools (192.168.0.0/16 and
fd80:24e2:f998:72d6::/64) if there are none (unless NO_DEFAULT_POOLS is set), and starts
calico-node in the background (pid file in $CALICO_STATE_DIR/<NAME>, default /var/run/calico;
/metrics and /health on $CALICO_NODE_LISTEN, default 127.0.0.1:9099). 'node stop' stops it;
its policy stays in the kernel, so workload traffic stays policed.
";

pub const MASTER: &str = "\
Usage:
  calicoctl master --ip=<IP> [--log-dir=<LOG_DIR>]
  calicoctl master stop

Options:
  --ip=<IP>            The master's address, written to /calico/master/ip.
  --log-dir=<LOG_DIR>  Where calico-master writes its log [default: /var/log/calico].

Starts calico-master in the background on this host. One master at a time: it holds
/calico/master/ip under an etcd lease, and a second one waits until the first ends. The master
translates orchestrators' groups (/calico/network/group/<group-id>/: name, member/<endpoint-id>,
rule/inbound/<n>, rule/outbound/<n> as JSON with group, cidr, protocol and port, and
rule/inbound_default, rule/outbound_default: deny) into profiles named by the group id, and keeps
/calico/host/<hostname>/bird_ip and /calico/host/<hostname>/workload/docker/<container-id>/
endpoint/<endpoint-id> current. A group with a value it cannot read is closed (denies
everything) until it is fixed; calico-master's log names the key.
";

pub const CONTAINER: &str = "\
Usage:
  calicoctl container add <CONTAINER> (<IP>|<POOL_CIDR>|ipv4|ipv6|auto) [--interface=<INTERFACE>]
  calicoctl container remove <CONTAINER>
  calicoctl container <CONTAINER> ip add (<IP>|<POOL_CIDR>|ipv4|ipv6) [--interface=<INTERFACE>]
  calicoctl container <CONTAINER> ip remove <IP> [--interface=<INTERFACE>]
  calicoctl container <CONTAINER> endpoint show
  calicoctl container <CONTAINER> endpoint-id show
  calicoctl container <CONTAINER> profile (append|remove|set) [<PROFILES>...]

Options:
  --interface=<INTERFACE>  The workload's interface [default: eth1].

<CONTAINER> is a Docker container's name or id, found through this host's engine ($DOCKER_HOST,
else /var/run/docker.sock; it must be running and not use --net=host), or a network namespace:
its path (/var/run/netns/NAME, /proc/PID/ns/net) or its name in $CALICO_NETNS_DIR (default
/var/run/netns). Docker containers are recorded as orchestrator docker, workload = the full
container id. The host end of its veth is named cali plus 11 characters of the endpoint id;
the workload routes through 169.254.1.1 (IPv4) and fe80::1 (IPv6). An explicit <IP> must be in
an enabled pool and not in use; <POOL_CIDR> takes the next free address in that pool (or a CIDR
inside one); ipv4 (or auto) and ipv6 take the next free address from this host's IPAM blocks.
Removing a container or an address gives its addresses back.
";

pub const CHECKSYSTEM: &str = "\
Usage:
  calicoctl checksystem

Checks root privileges, the kernel features and tools Calico uses (network namespaces,
forwarding, IPv6, nftables; iptables and IP-in-IP are reported when absent) and that etcd is
reachable. Exits non-zero if a required check fails.
";

pub const DIAGS: &str = "\
Usage:
  calicoctl diags [--log-dir=<LOG_DIR>]

Saves links, addresses, routes, the nftables ruleset, iptables, the agent's log (from
<LOG_DIR>/<node>, default /var/log/calico) and a dump of the datastore into a tar.gz in the
temporary directory, and prints its path.
";

pub const STATUS: &str = "\
Usage:
  calicoctl status

Shows whether this host's calico-node runs and is in sync, its BGP address and AS, and a table
of its BGP sessions (from BIRD): peer address, peer type (node-to-node mesh, global, node
specific), state, since and info.
";
