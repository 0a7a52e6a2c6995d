//! Kernel settings through /proc/sys (which shows the caller's network namespace).

use std::path::PathBuf;

fn write(path: PathBuf, value: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(&path).is_ok_and(|current| current.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The host routes between its workloads and the network.
pub fn enable_forwarding() -> std::io::Result<()> {
    write("/proc/sys/net/ipv4/ip_forward".into(), "1")?;
    write("/proc/sys/net/ipv6/conf/all/forwarding".into(), "1")
}

/// A workload interface: the host answers ARP for the workload's gateway (169.254.1.1) at
/// once, and drops packets whose source would not route back through this interface.
pub fn configure_workload_interface(interface: &str) -> std::io::Result<()> {
    let v4 = PathBuf::from("/proc/sys/net/ipv4");
    write(v4.join("conf").join(interface).join("proxy_arp"), "1")?;
    write(v4.join("neigh").join(interface).join("proxy_delay"), "0")?;
    write(v4.join("conf").join(interface).join("rp_filter"), "1")?;
    let v6 = PathBuf::from("/proc/sys/net/ipv6/conf").join(interface);
    if v6.exists() {
        write(v6.join("accept_ra"), "0")?;
    }
    Ok(())
}
