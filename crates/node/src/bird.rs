//! Runs this host's BIRD: writes the configuration rendered from the datastore into the state
//! directory, checks it (`bird -p`) before using it, reloads BIRD (`birdc configure`, which
//! keeps established sessions), and restarts BIRD if it died. A configuration BIRD refuses is
//! logged and not used: BIRD keeps running with the last good one.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

#[derive(Debug)]
pub struct Bird {
    dir: PathBuf,
    child: Option<Child>,
    /// The checked configuration in the file BIRD reads.
    installed: Option<String>,
    /// The configuration BIRD runs (started with, or reloaded to). Behind `installed` when a
    /// start or reload failed: retried at the next update and every drift check.
    applied: Option<String>,
    /// BIRD's control program (a test puts a fake here).
    birdc: PathBuf,
}

impl Bird {
    pub fn new(dir: PathBuf) -> Self {
        Bird {
            dir,
            child: None,
            installed: None,
            applied: None,
            birdc: PathBuf::from("birdc"),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// Takes a freshly rendered configuration (or why there is none yet).
    pub async fn update(&mut self, rendered: Result<String, String>) {
        let config = match rendered {
            Ok(config) => config,
            Err(reason) => {
                if self.applied.is_none() {
                    tracing::debug!(%reason, "no BGP configuration yet");
                }
                return;
            }
        };
        if self.installed.as_ref() != Some(&config) {
            if let Err(e) = self.install(&config).await {
                tracing::error!(error = %e, "BIRD configuration not used; BIRD keeps the last good one");
                return;
            }
            self.installed = Some(config);
        }
        self.catch_up().await;
    }

    /// Brings BIRD to the installed configuration: starts it if it is not running, else
    /// reloads it; only a start or reload that worked counts as applied.
    async fn catch_up(&mut self) {
        if self.installed.is_none() || self.applied == self.installed {
            return;
        }
        let done = match self.running() {
            true => self.reload().await,
            false => self.start(),
        };
        if done {
            self.applied = self.installed.clone();
        }
    }

    /// Writes and checks the configuration; only a valid one replaces the file BIRD reads.
    async fn install(&self, config: &str) -> Result<(), String> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| e.to_string())?;
        let candidate = self.dir.join("bird.conf.new");
        tokio::fs::write(&candidate, config)
            .await
            .map_err(|e| e.to_string())?;
        let check = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&candidate)
            .output()
            .await
            .map_err(|e| format!("cannot run bird: {e}"))?;
        if !check.status.success() {
            return Err(String::from_utf8_lossy(&check.stderr).trim().to_string());
        }
        tokio::fs::rename(&candidate, self.config_path())
            .await
            .map_err(|e| e.to_string())
    }

    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether BIRD could be started.
    fn start(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bird.log"));
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let spawned = Command::new("bird")
            .arg("-f")
            .arg("-c")
            .arg(self.config_path())
            .arg("-s")
            .arg(self.socket())
            // For operators and tests: which process is this host's BIRD.
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(child) => {
                tracing::info!(pid = child.id(), "BIRD started");
                self.child = Some(child);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start BIRD (install bird2)");
                false
            }
        }
    }

    /// Whether BIRD took the installed configuration.
    async fn reload(&self) -> bool {
        let out = Command::new(&self.birdc)
            .arg("-s")
            .arg(self.socket())
            .arg("configure")
            .output()
            .await;
        match out {
            Ok(out) if String::from_utf8_lossy(&out.stdout).contains("Reconfigur") => {
                tracing::info!("BIRD reconfigured");
                true
            }
            Ok(out) => {
                tracing::warn!(output = %String::from_utf8_lossy(&out.stdout).trim(), "BIRD did not take the new configuration; retrying at the next check");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot run birdc; retrying at the next check");
                false
            }
        }
    }

    /// With the drift repair: restarts BIRD if it died, and retries a reload that failed.
    pub async fn keep_up(&mut self) {
        if self.applied.is_some() && !self.running() {
            tracing::warn!("BIRD is not running; starting it again");
            self.applied = None;
        }
        self.catch_up().await;
    }

    /// Stops BIRD: its sessions drop and its routes leave the kernel.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(router_id: &str) -> Result<String, String> {
        // No kernel protocol: this BIRD never touches the machine's routes.
        Ok(format!("router id {router_id};\nprotocol device {{}}\n"))
    }

    /// A BIRD whose control program is a fake that refuses while `fail` exists in `dir`.
    fn with_fake_birdc(dir: &std::path::Path) -> Bird {
        let birdc = dir.join("birdc");
        let script = format!(
            "#!/bin/sh\n[ -e {} ] && {{ echo 'bird: not ready'; exit 1; }}\necho 'Reconfigured'\n",
            dir.join("fail").display()
        );
        std::fs::write(&birdc, script).unwrap();
        std::fs::set_permissions(&birdc, std::fs::Permissions::from_mode(0o755)).unwrap();
        Bird {
            birdc,
            ..Bird::new(dir.join("state"))
        }
    }

    #[tokio::test]
    async fn a_reload_that_failed_is_retried_without_a_new_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let mut bird = with_fake_birdc(dir.path());
        bird.update(config("10.0.0.1")).await;
        assert!(bird.running(), "BIRD started with the first configuration");
        assert_eq!(bird.applied, config("10.0.0.1").ok());

        std::fs::write(dir.path().join("fail"), "").unwrap();
        bird.update(config("10.0.0.2")).await;
        assert_eq!(
            bird.installed,
            config("10.0.0.2").ok(),
            "checked and in place"
        );
        assert_eq!(bird.applied, config("10.0.0.1").ok(), "the reload failed");

        std::fs::remove_file(dir.path().join("fail")).unwrap();
        bird.keep_up().await;
        assert_eq!(
            bird.applied,
            config("10.0.0.2").ok(),
            "retried at the check"
        );
        bird.stop().await;
    }
}
