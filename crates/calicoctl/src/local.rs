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

/// Where /metrics and /health are served: `$CALICO_NODE_LISTEN` or 127.0.0.1:9099.
pub fn node_listen() -> String {
    std::env::var("CALICO_NODE_LISTEN").unwrap_or_else(|_| "127.0.0.1:9099".into())
}

/// Where named network namespaces live: `$CALICO_NETNS_DIR` or `/var/run/netns`.
fn netns_dir() -> PathBuf {
    PathBuf::from(std::env::var("CALICO_NETNS_DIR").unwrap_or_else(|_| "/var/run/netns".into()))
}

/// A workload: its network namespace, and its id in the datastore.
#[derive(Debug, Clone)]
pub struct Container {
    pub netns: PathBuf,
    pub workload_id: String,
}

/// The orchestrator id of workloads given as network namespaces.
pub const ORCHESTRATOR: &str = "namespace";

/// Resolves `<CONTAINER>`: a path to a network namespace, or the name of one in the netns
/// directory. A namespace in that directory has its name as workload id, however it was given.
pub fn container(arg: &str) -> Result<Container> {
    let dir = netns_dir();
    let path = if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        dir.join(arg)
    };
    if !path.exists() {
        bail!(
            "Container {arg} not found: give the path of its network namespace (such as \
             /var/run/netns/NAME or /proc/PID/ns/net) or the name of one in {}. Docker \
             container names work once the Docker integration is in place.",
            dir.display()
        );
    }
    let workload_id = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if parent == dir => name.to_string_lossy().into_owned(),
        _ => path.to_string_lossy().replace('/', "-"),
    };
    Ok(Container {
        netns: path,
        workload_id,
    })
}
