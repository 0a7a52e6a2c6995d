//! Runs this host's BIRD: writes the configuration rendered from the datastore into the state
//! directory, checks it (`bird -p`) before using it, reloads BIRD (`birdc configure`, which
//! keeps established sessions), and restarts BIRD if it died. A configuration BIRD refuses is
//! logged and not used: BIRD keeps running with the last good one.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

pub struct Bird {
    dir: PathBuf,
    child: Option<Child>,
    /// The configuration in use.
    applied: Option<String>,
}

impl Bird {
    pub fn new(dir: PathBuf) -> Self {
        Bird {
            dir,
            child: None,
            applied: None,
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
        if self.applied.as_ref() == Some(&config) {
            return;
        }
        if let Err(e) = self.install(&config).await {
            tracing::error!(error = %e, "BIRD configuration not used; BIRD keeps the last good one");
            return;
        }
        self.applied = Some(config);
        if self.running() {
            self.reload().await;
        } else {
            self.start();
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

    fn start(&mut self) {
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
            }
            Err(e) => tracing::error!(error = %e, "cannot start BIRD (install bird2)"),
        }
    }

    async fn reload(&self) {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .arg("configure")
            .output()
            .await;
        match out {
            Ok(out) if String::from_utf8_lossy(&out.stdout).contains("Reconfigur") => {
                tracing::info!("BIRD reconfigured")
            }
            Ok(out) => {
                tracing::warn!(output = %String::from_utf8_lossy(&out.stdout).trim(), "BIRD did not take the new configuration")
            }
            Err(e) => tracing::warn!(error = %e, "cannot run birdc"),
        }
    }

    /// Restarts BIRD if it died (checked with the drift repair).
    pub fn ensure_running(&mut self) {
        if self.applied.is_some() && !self.running() {
            tracing::warn!("BIRD is not running; starting it again");
            self.start();
        }
    }

    /// Stops BIRD: its sessions drop and its routes leave the kernel.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}
