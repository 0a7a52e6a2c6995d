//! Facts about the host calicoctl runs on: its node name, where the agent keeps its files,
//! how a `<CONTAINER>` argument names a network namespace, and the host's own address.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use calico_model::names::validate_hostname;

/// This host's name in the datastore: `--name`, else `CALICO_NODENAME`, else the hostname.
pub fn node_name(explicit: Option<&str>) -> Result<String> {
    let name = match explicit {
        Some(name) => name.to_string(),
        None => match std::env::var("CALICO_NODENAME")
            .ok()
            .filter(|n| !n.is_empty())
        {
            Some(name) => name,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
                .trim()
                .to_string(),
        },
    };
    validate_hostname(&name)?;
    Ok(name)
}

/// `$CALICO_STATE_DIR/<node>` (default `/var/run/calico/<node>`): the agent's pid file.
pub fn state_dir(node: &str) -> PathBuf {
    let base = std::env::var("CALICO_STATE_DIR").unwrap_or_else(|_| "/var/run/calico".into());
    Path::new(&base).join(node)
}

pub fn pid_file(node: &str) -> PathBuf {
    state_dir(node).join("calico-node.pid")
}

/// The pid in `pid_file`, if that process runs `program`.
pub fn running(pid_file: &Path, program: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next()?;
    Path::new(std::str::from_utf8(first).ok()?)
        .file_name()
        .is_some_and(|f| f == program)
        .then_some(pid)
}

/// One of the project's programs: next to calicoctl, else on PATH.
pub fn program(name: &str) -> Result<PathBuf> {
    let beside = std::env::current_exe()?.with_file_name(name);
    if beside.exists() {
        return Ok(beside);
    }
    match std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
    {
        Some(path) => Ok(path),
        None => bail!("cannot find the {name} binary next to calicoctl or on PATH"),
    }
}

/// Stops the process of a pid file (SIGTERM, then SIGKILL after 10 s) and removes the file;
/// false if it was not running.
pub fn stop(pid_file: &Path, program: &str) -> Result<bool> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(pid) = running(pid_file, program) else {
        let _ = std::fs::remove_file(pid_file);
        return Ok(false);
    };
    kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while running(pid_file, program).is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if running(pid_file, program).is_some() {
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(true)
}

/// Where /metrics and /health are served: `$CALICO_NODE_LISTEN` or 127.0.0.1:9099.
pub fn node_listen() -> String {
    std::env::var("CALICO_NODE_LISTEN").unwrap_or_else(|_| "127.0.0.1:9099".into())
}

/// Where named network namespaces live: `$CALICO_NETNS_DIR` or `/var/run/netns`.
fn netns_dir() -> PathBuf {
    PathBuf::from(std::env::var("CALICO_NETNS_DIR").unwrap_or_else(|_| "/var/run/netns".into()))
}

/// A workload: its network namespace, and its ids in the datastore.
#[derive(Debug, Clone)]
pub struct Container {
    pub netns: PathBuf,
    pub orchestrator: &'static str,
    pub workload_id: String,
    /// A Docker container's endpoints on calico networks (libnetwork's, not ours to remove).
    pub network_endpoints: Vec<String>,
}

/// The orchestrator id of workloads given as network namespaces.
pub const NAMESPACE_ORCHESTRATOR: &str = "namespace";

/// What a command needs of a `<CONTAINER>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Its network namespace, to change interfaces in: a Docker container must be running.
    Namespace,
    /// Only which workload it is (to show or remove its endpoints): a stopped one will do.
    Identity,
}

/// Resolves `<CONTAINER>`: a path to a network namespace, the name of one in the netns
/// directory, or a Docker container's name or id. A namespace in that directory has its name as
/// workload id, however it was given; a Docker container its full id.
pub async fn container(arg: &str, need: Need) -> Result<Container> {
    let dir = netns_dir();
    let path = if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        dir.join(arg)
    };
    if path.exists() {
        let workload_id = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if parent == dir => name.to_string_lossy().into_owned(),
            _ => path.to_string_lossy().replace('/', "-"),
        };
        return Ok(Container {
            netns: path,
            orchestrator: NAMESPACE_ORCHESTRATOR,
            workload_id,
            network_endpoints: Vec::new(),
        });
    }
    if arg.contains('/') {
        bail!("Container {arg} not found: there is no network namespace at that path.");
    }
    docker_container(arg, &dir, need).await
}

async fn docker_container(arg: &str, netns_dir: &Path, need: Need) -> Result<Container> {
    let engine = calico_docker::Engine::from_env();
    let found = match engine.container(arg).await {
        Ok(found) => found,
        Err(calico_docker::EngineError::Unreachable { host, reason }) => bail!(
            "Container {arg} not found: it is not a network namespace (a path, or a name in {}),              and the Docker engine at {host} cannot be asked ({reason}); set DOCKER_HOST if the              engine is elsewhere.",
            netns_dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let Some(info) = found else {
        bail!(
            "Container {arg} not found: the Docker engine at {} has no such container, and it is              not a network namespace (a path, or a name in {}).",
            engine.host(),
            netns_dir.display()
        );
    };
    if info.network_mode == "host" {
        bail!(
            "Container {arg} uses the host's network (--net=host): it has no network of its own              to add Calico networking to; start it with --net=none."
        );
    }
    if let Some(other) = info.network_mode.strip_prefix("container:") {
        bail!(
            "Container {arg} shares the network of container {other}: add Calico networking to              that container instead."
        );
    }
    if need == Need::Namespace && (!info.running || info.pid <= 0) {
        bail!("Container {arg} is not running; start it (docker start {arg}) and try again.");
    }
    Ok(Container {
        netns: info.netns(),
        orchestrator: calico_docker::engine::CONTAINER_ORCHESTRATOR,
        workload_id: info.id,
        network_endpoints: info.endpoint_ids,
    })
}
