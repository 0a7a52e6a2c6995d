//! `calicoctl node …`: register this host and run its agent (calico-node) in the background.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use calico_dataplane::netlink::Netlink;
use calico_datastore::resources::{EndpointFilter, EndpointRecord, PeerScope, Resources};
use calico_datastore::{Compare, Op, Txn};
use calico_model::bgp::{parse_ip, AsNumber, BgpPeer};
use calico_model::keys;
use calico_model::pool::IpPool;

use super::{connect, parse_args};
use crate::args::{flag, usage_error, valued, Args, OptSpec};
use crate::local;
use crate::table::Table;
use crate::usage::NODE as USAGE;

const OPTIONS: &[OptSpec] = &[
    valued("--ip"),
    valued("--ip6"),
    valued("--as"),
    valued("--name"),
    valued("--log-dir"),
    valued("--hostname"),
    flag("--remove-endpoints"),
    flag("--force"),
    flag("--ipv4"),
    flag("--ipv6"),
    flag("--libnetwork"),
    valued("--docker-proxy"),
    valued("--docker-proxy-tls"),
    flag("--no-docker-proxy"),
];

const DEFAULT_POOL_V4: &str = "192.168.0.0/16";
const DEFAULT_POOL_V6: &str = "fd80:24e2:f998:72d6::/64";

pub async fn run(argv: &[String]) -> Result<()> {
    let Some(args) = parse_args(argv, OPTIONS, USAGE)? else {
        return Ok(());
    };
    let words = args.words();
    match words.as_slice() {
        [] => {
            args.reject_options_except(
                &[
                    "--ip",
                    "--ip6",
                    "--as",
                    "--name",
                    "--log-dir",
                    "--libnetwork",
                    "--docker-proxy",
                    "--docker-proxy-tls",
                    "--no-docker-proxy",
                ],
                USAGE,
            )?;
            start(&args).await
        }
        ["bgp", "peer", rest @ ..] => {
            let scope = PeerScope::Host(local::node_name(None)?);
            match rest {
                ["add", ip, "as", as_num] => {
                    args.reject_options_except(&[], USAGE)?;
                    let peer = BgpPeer {
                        ip: parse_ip("peer IP address", ip)?,
                        as_num: as_num.parse()?,
                    };
                    connect().await?.add_peer(&scope, &peer).await?;
                    Ok(())
                }
                ["remove", ip] => {
                    args.reject_options_except(&[], USAGE)?;
                    let ip = parse_ip("peer IP address", ip)?;
                    if !connect().await?.remove_peer(&scope, &ip).await? {
                        bail!("{ip} is not a configured peer for this node.");
                    }
                    println!("BGP peer removed from node configuration");
                    Ok(())
                }
                ["show"] => {
                    args.reject_options_except(&["--ipv4", "--ipv6"], USAGE)?;
                    if args.flag("--ipv4") && args.flag("--ipv6") {
                        return Err(usage_error(USAGE, "Give --ipv4 or --ipv6, not both."));
                    }
                    super::bgp::show_peers(&scope, !args.flag("--ipv6"), !args.flag("--ipv4")).await
                }
                _ => Err(usage_error(USAGE, "Invalid node bgp peer command.")),
            }
        }
        ["stop"] => {
            args.reject_options_except(&["--name", "--force"], USAGE)?;
            stop(&local::node_name(args.value("--name"))?)
        }
        ["remove"] => {
            args.reject_options_except(&["--hostname", "--remove-endpoints"], USAGE)?;
            remove(args.value("--hostname"), args.flag("--remove-endpoints")).await
        }
        ["show"] => {
            args.reject_options_except(&[], USAGE)?;
            show().await
        }
        _ => Err(usage_error(USAGE, "Invalid node command.")),
    }
}

/// The host's first global IPv4 address on an interface that is not a workload's.
async fn detect_ipv4() -> Result<IpAddr> {
    let netlink = Netlink::connect()?;
    netlink
        .addresses()
        .await?
        .into_iter()
        .find(|(name, net, global)| {
            *global && net.addr().is_ipv4() && name != "lo" && !name.starts_with("cali")
        })
        .map(|(_, net, _)| net.addr())
        .context("cannot find an IPv4 address of this host; give one with --ip")
}

async fn start(args: &Args) -> Result<()> {
    let name = local::node_name(args.value("--name"))?;
    let ip = match args.value("--ip") {
        // Seed 000's `ip route get 8.8.8.8 | head -1 | cut -d' ' -f8` was written for an
        // iproute2 that printed two spaces before `src`; today's prints `… src ADDR uid 0`.
        Some("uid") => bail!(
            "--ip=uid is not an address: today's 'ip route get' prints '… src ADDR uid 0', so \
             field 8 is 'uid'. Use cut -d' ' -f7, or leave --ip out and calicoctl finds the \
             host's address itself."
        ),
        Some(ip) => parse_ip("--ip address", ip)?,
        None => detect_ipv4().await?,
    };
    if !ip.is_ipv4() {
        bail!("--ip takes an IPv4 address (use --ip6 for IPv6), not {ip}");
    }
    let ip6 = args
        .value("--ip6")
        .map(|ip| parse_ip("--ip6 address", ip))
        .transpose()?;
    if ip6.is_some_and(|ip| !ip.is_ipv6()) {
        bail!("--ip6 takes an IPv6 address");
    }
    let as_num: Option<AsNumber> = args.value("--as").map(str::parse).transpose()?;
    let proxy = docker_proxy(args)?;
    let r = connect().await?;
    register(&r, &name, ip, ip6, as_num).await?;
    default_pools(&r).await?;
    let log_dir = PathBuf::from(args.value("--log-dir").unwrap_or("/var/log/calico")).join(&name);
    let launch_options = Launch {
        libnetwork: args.flag("--libnetwork"),
        proxy,
    };
    launch(&name, &log_dir, &launch_options).await
}

/// How calico-node is started.
#[derive(Debug)]
struct Launch {
    libnetwork: bool,
    /// Where the Docker API proxy listens, and its TLS directory.
    proxy: Option<(String, Option<String>)>,
}

/// The Docker API proxy calico-node is to serve: on by default where this host has a Docker
/// engine (its unix socket exists), at 127.0.0.1:2377. Checked here, so a listen address it
/// would refuse fails before anything is registered.
fn docker_proxy(args: &Args) -> Result<Option<(String, Option<String>)>> {
    use calico_docker::proxy::{Listen, ProxyConfig, DEFAULT_LISTEN};
    let given = args.value("--docker-proxy");
    let tls = args.value("--docker-proxy-tls").map(String::from);
    if args.flag("--no-docker-proxy") {
        if given.is_some() || tls.is_some() {
            return Err(usage_error(
                USAGE,
                "Give --no-docker-proxy or the proxy's options, not both.",
            ));
        }
        return Ok(None);
    }
    let engine = calico_docker::Engine::from_env();
    let socket = calico_docker::proxy::engine_socket(&engine).ok();
    let has_engine = socket.as_deref().is_some_and(Path::exists);
    if given.is_none() && tls.is_none() && !has_engine {
        return Ok(None);
    }
    if !has_engine {
        bail!(
            "the Docker API proxy needs this host's Docker engine, and there is none at {} \
             (DOCKER_HOST); start the engine, or leave out the proxy's options",
            engine.host()
        );
    }
    let listen = given.unwrap_or(DEFAULT_LISTEN).to_string();
    let config = ProxyConfig {
        listen: Listen::parse(&listen)?,
        tls_dir: tls.as_ref().map(PathBuf::from),
    };
    config.check()?;
    Ok(Some((listen, tls)))
}

async fn register(
    r: &Resources,
    name: &str,
    ip: IpAddr,
    ip6: Option<IpAddr>,
    as_num: Option<AsNumber>,
) -> Result<()> {
    let optional = |key: String, value: Option<String>| match value {
        Some(value) => Op::put(key, value),
        None => Op::delete(key),
    };
    let ops = vec![
        Op::put(keys::READY, "true"),
        Op::put(keys::host_bird_ip(name), ip.to_string()),
        Op::put(keys::bgp_host(name, "ip_addr_v4"), ip.to_string()),
        optional(
            keys::bgp_host(name, "ip_addr_v6"),
            ip6.map(|i| i.to_string()),
        ),
        optional(
            keys::bgp_host(name, "as_num"),
            as_num.map(|a| a.to_string()),
        ),
    ];
    r.store()
        .txn(Txn {
            compares: vec![],
            ops,
        })
        .await?;
    // Workloads may talk to their host unless an operator decided otherwise.
    let action = keys::host_config(name, "DefaultEndpointToHostAction");
    let txn = Txn {
        compares: vec![Compare::Absent(action.clone())],
        ops: vec![Op::put(action, "RETURN")],
    };
    r.store().txn(txn).await?;
    Ok(())
}

/// Creates a default pool for each IP version that has none (unless NO_DEFAULT_POOLS is set).
async fn default_pools(r: &Resources) -> Result<()> {
    if std::env::var_os("NO_DEFAULT_POOLS").is_some() {
        return Ok(());
    }
    for (v4, cidr) in [(true, DEFAULT_POOL_V4), (false, DEFAULT_POOL_V6)] {
        let (pools, invalid) = r.pools(v4).await?;
        if pools.is_empty() && invalid.is_empty() {
            r.add_pools(&[IpPool::new(cidr.parse()?)]).await?;
        }
    }
    Ok(())
}

/// The pid in the pid file, if that process is a running calico-node.
pub(super) fn running_pid(name: &str) -> Option<i32> {
    local::running(&local::pid_file(name), "calico-node")
}

async fn launch(name: &str, log_dir: &Path, options: &Launch) -> Result<()> {
    let libnetwork = options.libnetwork;
    if let Some(pid) = running_pid(name) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let has = |flag: &[u8]| cmdline.split(|b| *b == 0).any(|arg| arg == flag);
        if libnetwork && !has(b"--libnetwork") {
            bail!(
                "calico-node for {name} is running (pid {pid}) without the libnetwork drivers; \
                 stop it with 'calicoctl node stop' and start it again with --libnetwork."
            );
        }
        if options.proxy.is_some() && !has(b"--docker-proxy") {
            bail!(
                "calico-node for {name} is running (pid {pid}) without the Docker API proxy; \
                 stop it with 'calicoctl node stop' and start it again."
            );
        }
        println!("calico-node for {name} is already running (pid {pid}).");
        return Ok(());
    }
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    std::fs::create_dir_all(local::state_dir(name))?;
    let log_path = log_dir.join("calico-node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let listen = local::node_listen();
    let mut command = Command::new(local::program("calico-node")?);
    command
        .args(["--name", name, "--listen", &listen])
        .arg("--state-dir")
        .arg(local::state_dir(name));
    if libnetwork {
        command.arg("--libnetwork");
    }
    if let Some((listen, tls)) = &options.proxy {
        command.args(["--docker-proxy", listen]);
        if let Some(tls) = tls {
            command.args(["--docker-proxy-tls", tls]);
        }
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start calico-node")?;
    std::fs::write(local::pid_file(name), child.id().to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "calico-node exited at start ({status}); the end of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        if health(&listen).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "calico-node (pid {}) did not report healthy within 20s; see {}",
                child.id(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut serving = String::new();
    if libnetwork {
        serving.push_str(" with the libnetwork drivers");
    }
    if let Some((listen, _)) = &options.proxy {
        serving.push_str(&format!(
            "{} the Docker API proxy on {listen}",
            if libnetwork { " and" } else { " with" }
        ));
    }
    println!(
        "calico-node is running for {name} (pid {}){serving}; logs in {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// calico-node's /health: Ok on 200, else the reason it gives (or why it cannot be asked).
/// Over hyper, as every HTTP the project speaks; bounded by a timeout, so a wedged agent
/// cannot hang `calicoctl status`.
pub(super) async fn health(listen: &str) -> Result<(), String> {
    let asked = tokio::time::timeout(Duration::from_secs(2), ask_health(listen)).await;
    let (status, body) = asked
        .unwrap_or_else(|_| Err(format!("its /health on {listen} did not answer within 2 s")))?;
    if status == hyper::StatusCode::OK {
        return Ok(());
    }
    Err(match body.trim() {
        "" => "not in sync yet".to_string(),
        reason => reason.to_string(),
    })
}

async fn ask_health(listen: &str) -> Result<(hyper::StatusCode, String), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(listen)
        .await
        .map_err(|e| format!("its /health on {listen} does not answer: {e}"))?;
    let failed = |e: hyper::Error| format!("cannot ask its /health on {listen}: {e}");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(failed)?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/health")
        .header(hyper::header::HOST, listen)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("cannot ask its /health on {listen}: {e}"))?;
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(failed)?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

fn stop(name: &str) -> Result<()> {
    if !local::stop(&local::pid_file(name), "calico-node")? {
        println!("calico-node for {name} is not running.");
        return Ok(());
    }
    println!("Node stopped. Its policy stays in the kernel and keeps dropping unpoliced workload traffic.");
    Ok(())
}

async fn remove(hostname: Option<&str>, remove_endpoints: bool) -> Result<()> {
    let name = local::node_name(hostname)?;
    if running_pid(&name).is_some() {
        bail!("calico-node for {name} is running here; stop it first with 'calicoctl node stop'.");
    }
    let r = connect().await?;
    let filter = EndpointFilter {
        host: Some(name.clone()),
        ..Default::default()
    };
    let endpoints = r.endpoints(&filter).await?;
    if !endpoints.is_empty() && !remove_endpoints {
        bail!(
            "Node {name} still has {} endpoint(s); remove its containers first or use --remove-endpoints.",
            endpoints.len()
        );
    }
    let ops = [
        keys::host_prefix(&name),
        format!("{}{name}/", keys::BGP_HOSTS_PREFIX),
        keys::felix_host_prefix(&name),
    ]
    .into_iter()
    .map(|prefix| Op::DeletePrefix { prefix })
    .collect();
    r.store()
        .txn(Txn {
            compares: vec![],
            ops,
        })
        .await?;
    release_addresses(&r, &name, &endpoints).await?;
    println!("Node {name} removed.");
    Ok(())
}

/// A removed host's addresses go back to IPAM: its endpoints' addresses, then its blocks
/// (deleted when empty, else kept without affinity for their other holders).
async fn release_addresses(r: &Resources, host: &str, endpoints: &[EndpointRecord]) -> Result<()> {
    let ipam = calico_ipam::Ipam::new(r.shared_store());
    let ips: Vec<IpAddr> = endpoints
        .iter()
        .filter_map(|record| record.endpoint.as_ref().ok())
        .flat_map(|endpoint| endpoint.nets().map(|n| n.addr()))
        .collect();
    ipam.release(&ips).await?;
    for v4 in [true, false] {
        let claimed = r
            .store()
            .list(&keys::ipam_host_blocks_prefix(host, v4))
            .await?;
        for block in claimed
            .kvs
            .iter()
            .filter_map(|kv| keys::cidr_of_key(&kv.key))
        {
            ipam.release_affinity(&block).await?;
        }
    }
    Ok(())
}

async fn show() -> Result<()> {
    let r = connect().await?;
    let store = r.store();
    let mut hosts: BTreeMap<String, [String; 6]> = BTreeMap::new();
    for kv in store.list(keys::HOSTS_PREFIX).await?.kvs {
        if let Some(host) = kv
            .key
            .strip_prefix(keys::HOSTS_PREFIX)
            .and_then(|k| k.split('/').next())
        {
            hosts.entry(host.to_string()).or_default();
        }
    }
    let default_as = r.default_as().await?;
    for (host, row) in hosts.iter_mut() {
        let get =
            |key: String| async move { store.get(&key).await.map(|kv| kv.map(|kv| kv.value)) };
        row[0] = get(keys::bgp_host(host, "ip_addr_v4"))
            .await?
            .unwrap_or_default();
        row[1] = get(keys::bgp_host(host, "ip_addr_v6"))
            .await?
            .unwrap_or_default();
        row[2] = get(keys::bgp_host(host, "as_num"))
            .await?
            .unwrap_or_else(|| format!("{default_as} (inherited)"));
        for (column, v4) in [(3, true), (4, false)] {
            let peers = r.peers(&PeerScope::Host(host.clone()), v4).await?;
            row[column] = peers
                .iter()
                .map(|p| p.ip.to_string())
                .collect::<Vec<_>>()
                .join(", ");
        }
        row[5] = match get(keys::felix_status(host)).await? {
            Some(_) => "running".into(),
            None => "not reporting".into(),
        };
    }
    let mut table = Table::new(&[
        "Hostname",
        "Bird IPv4",
        "Bird IPv6",
        "AS Num",
        "BGP Peers v4",
        "BGP Peers v6",
        "Agent",
    ]);
    for (host, [v4, v6, as_num, peers4, peers6, agent]) in hosts {
        table.row(vec![host, v4, v6, as_num, peers4, peers6, agent]);
    }
    print!("{}", table.render());
    Ok(())
}
