//! An external BGP router in the fabric, for peering tests: FRR (zebra and bgpd) from Debian, a
//! BGP implementation that is not ours.
//!
//! It accepts sessions from any fabric address (dynamic neighbours), so hosts can come and go
//! without touching its configuration. In the cluster's AS it is a route reflector, the usual
//! partner of `bgp node-mesh off`; in another AS it is an eBGP provider that overrides the
//! cluster's AS in the paths it sends back, so hosts sharing one AS accept each other's routes.
//! Either way it keeps the announcing host as next hop, and zebra installs what it learns in the
//! router's own kernel, so the router can forward too.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::{Lab, FABRIC_PREFIX, FABRIC_PREFIX6};
use crate::sh::{in_netns, run};

pub const ROUTER_IP: &str = "172.17.8.254";
pub const ROUTER_IP6: &str = "fd00:8::fe";
/// Calico's default AS, which the cluster uses unless `bgp default-node-as` changed it.
const CLUSTER_DEFAULT_AS: u32 = 64511;
const FRR: &str = "/usr/lib/frr";

impl Lab {
    pub fn router_netns(&self) -> String {
        format!("{}-router", self.name)
    }

    fn router_dir(&self) -> PathBuf {
        self.dir.join("router")
    }

    /// Starts the router with this AS (default: the cluster's).
    pub fn up_router(&self, as_num: Option<u32>) -> Result<()> {
        if !self.netns_exists(&self.fabric()) {
            bail!(
                "lab {} is not up; start it with 'calico-lab up --name {}'",
                self.name,
                self.name
            );
        }
        let netns = self.router_netns();
        if self.netns_exists(&netns) {
            bail!(
                "lab {} already has a router; 'calico-lab down' removes the lab with it",
                self.name
            );
        }
        if !std::path::Path::new(FRR).join("bgpd").exists() {
            bail!("FRR is not installed (apt-get install frr; scripts/setup.sh does it)");
        }
        let cluster_as = self.cluster_as()?;
        let as_num = as_num.unwrap_or(cluster_as);
        self.plug_into_fabric(&netns, "router", ROUTER_IP, ROUTER_IP6)?;
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            in_netns(&netns, "sysctl", &["-qw", key])?;
        }
        let dir = self.router_dir();
        std::fs::create_dir_all(&dir)?;
        // FRR's daemons drop to the frr user, which must own their sockets and pid files.
        run("chown", &["frr:frr", &dir.display().to_string()])?;
        std::fs::write(dir.join("zebra.conf"), "")?;
        std::fs::write(
            dir.join("bgpd.conf"),
            frr_config(&self.name, as_num, as_num == cluster_as),
        )?;
        self.start_daemon("zebra", "zserv.api")?;
        self.start_daemon("bgpd", "bgpd.vty")?;
        let role = if as_num == cluster_as {
            "route reflector for the cluster's AS"
        } else {
            "eBGP peer of the cluster"
        };
        println!(
            "router   {netns} {ROUTER_IP} {ROUTER_IP6}: FRR, AS {as_num}, {role}; hosts peer with it through 'calicoctl bgp peer add {ROUTER_IP} as {as_num}'"
        );
        Ok(())
    }

    /// The AS hosts use by default: the datastore's, else Calico's default.
    fn cluster_as(&self) -> Result<u32> {
        let value = self.etcdctl(&["get", "--print-value-only", "/calico/bgp/v1/global/as_num"])?;
        Ok(value.trim().parse().unwrap_or(CLUSTER_DEFAULT_AS))
    }

    /// Starts one FRR daemon in the router's namespace and waits for the socket it serves.
    fn start_daemon(&self, daemon: &str, socket: &str) -> Result<()> {
        let dir = self.router_dir();
        let path = |name: &str| dir.join(name).display().to_string();
        let config = if daemon == "zebra" {
            "zebra.conf"
        } else {
            "bgpd.conf"
        };
        in_netns(
            &self.router_netns(),
            &format!("{FRR}/{daemon}"),
            &[
                "--daemon",
                "--config_file",
                &path(config),
                "--socket",
                &path("zserv.api"),
                "--vty_socket",
                &path(""),
                "--pid_file",
                &path(&format!("{daemon}.pid")),
                "--log",
                &format!("file:{}", path(&format!("{daemon}.log"))),
                // No TCP vty: several labs' routers run side by side.
                "--vty_port",
                "0",
            ],
        )
        .with_context(|| format!("FRR's {daemon} did not start; see {}", path("")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join(socket).exists() {
            if Instant::now() > deadline {
                bail!("FRR's {daemon} did not open {}; see its log", path(socket));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A vtysh session on the router running these commands.
    pub fn router_vtysh(&self, commands: &[&str]) -> Result<String> {
        self.require_router()?;
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.router_netns(),
                "vtysh",
                "--vty_socket",
            ])
            .arg(self.router_dir());
        for c in commands {
            command.args(["-c", c]);
        }
        crate::sh::output(&mut command)
    }

    fn require_router(&self) -> Result<()> {
        self.require_netns(&self.router_netns(), "router")
    }
}

/// bgpd's configuration: one peer group for every host of the fabric, in both families.
fn frr_config(lab: &str, as_num: u32, same_as: bool) -> String {
    let (remote, role) = if same_as {
        ("internal", "route-reflector-client")
    } else {
        ("external", "as-override")
    };
    let family = |af: &str| {
        format!(
            " address-family {af} unicast\n  neighbor HOSTS activate\n  neighbor HOSTS {role}\n exit-address-family\n"
        )
    };
    format!(
        "! Written by calico-lab for lab {lab}.\n\
         frr defaults traditional\n\
         hostname {lab}-router\n\
         !\n\
         router bgp {as_num}\n \
         bgp router-id {ROUTER_IP}\n \
         no bgp ebgp-requires-policy\n \
         no bgp default ipv4-unicast\n \
         neighbor HOSTS peer-group\n \
         neighbor HOSTS remote-as {remote}\n \
         neighbor HOSTS timers 3 9\n \
         bgp listen range {FABRIC_PREFIX}.0/24 peer-group HOSTS\n \
         bgp listen range {FABRIC_PREFIX6}/64 peer-group HOSTS\n\
         {}{}!\n",
        family("ipv4"),
        family("ipv6")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_reflects_in_the_cluster_as_and_overrides_in_another() {
        let reflector = frr_config("lab", 64511, true);
        assert!(reflector.contains("router bgp 64511\n bgp router-id 172.17.8.254\n"));
        assert!(reflector.contains("neighbor HOSTS remote-as internal"));
        assert_eq!(reflector.matches("route-reflector-client").count(), 2);
        assert!(reflector.contains("bgp listen range fd00:8::/64 peer-group HOSTS"));
        let provider = frr_config("lab", 64600, false);
        assert!(provider.contains("neighbor HOSTS remote-as external"));
        assert_eq!(provider.matches("as-override").count(), 2);
    }

    #[test]
    fn bgpd_accepts_the_configuration() {
        if !std::path::Path::new(FRR).join("bgpd").exists() {
            panic!("FRR is not installed (scripts/setup.sh installs it)");
        }
        for same in [true, false] {
            let path = std::env::temp_dir()
                .join(format!("calico-lab-frr-{}-{same}.conf", std::process::id()));
            std::fs::write(&path, frr_config("lab", 64600, same)).unwrap();
            let out = Command::new(format!("{FRR}/bgpd"))
                .args(["--dryrun", "--config_file"])
                .arg(&path)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&path);
            // A dry run exits 0 whatever it finds; errors are log lines with an error code.
            assert!(
                out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("[EC "),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
