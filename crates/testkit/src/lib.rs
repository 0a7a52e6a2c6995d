//! Test harness shared by the workspace's integration tests: a real etcd on free loopback
//! ports, in its own temporary directory, stopped and removed when the guard drops (also when
//! the test panics).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    /// With TLS: the CA, client certificate and key to reach it.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    /// Starts a plain-HTTP etcd and waits until it answers.
    pub fn start() -> Etcd {
        Self::start_with(false)
    }

    /// Starts etcd serving HTTPS with client-certificate authentication, with a throwaway CA.
    pub fn start_tls() -> Etcd {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Etcd {
        // A port found free can be taken by a parallel test before etcd binds it: try again.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(tls) {
                Ok(etcd) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    fn try_start(tls: bool) -> Result<Etcd, String> {
        let dir = tempfile::Builder::new()
            .prefix("calico-test-etcd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new("etcd");
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let tls_files = if tls {
            let files = make_certificates(dir.path())?;
            command
                .arg(format!(
                    "--cert-file={}",
                    dir.path().join("server.pem").display()
                ))
                .arg(format!(
                    "--key-file={}",
                    dir.path().join("server-key.pem").display()
                ))
                .arg(format!("--trusted-ca-file={}", files.ca_cert.display()))
                .arg("--client-cert-auth");
            Some(files)
        } else {
            None
        };
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run etcd (install etcd-server): {e}"))?;
        let etcd = Etcd {
            child,
            dir,
            endpoint,
            tls: tls_files,
        };
        etcd.wait_ready(client)?;
        Ok(etcd)
    }

    fn wait_ready(&self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = if self.tls.is_some() {
                // etcd logs this once its TLS listener serves requests.
                TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && self.log().contains("serving client requests on")
            } else {
                health(port)
            };
            if ready {
                return Ok(());
            }
            if self.log().contains("address already in use") {
                return Err("port taken".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no answer within 30s; log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Environment variables that point `calicoctl` (or any binary) at this etcd.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut vars = vec![("ETCD_ENDPOINTS".to_string(), self.endpoint.clone())];
        if let Some(tls) = &self.tls {
            for (name, path) in [
                ("ETCD_CA_CERT_FILE", &tls.ca_cert),
                ("ETCD_CERT_FILE", &tls.cert),
                ("ETCD_KEY_FILE", &tls.key),
            ] {
                vars.push((name.to_string(), path.display().to_string()));
            }
        }
        vars
    }

    /// Runs etcdctl against this etcd, as an operator or orchestrator would, and returns what
    /// it printed; panics if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint));
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca_cert.display()))
                .arg(format!("--cert={}", tls.cert.display()))
                .arg(format!("--key={}", tls.key.display()));
        }
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl runs (install etcd-client)");
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Writes a key directly (`--` so values may start with a dash).
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", "--", key, value]);
    }

    /// The value of a key, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", "--print-value-only", key]);
        (!out.is_empty()).then(|| out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    /// Every key and value under a prefix, in key order.
    pub fn dump(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .map(|pair| (pair[0].to_string(), pair.get(1).unwrap_or(&"").to_string()))
            .collect()
    }

    /// etcd's current revision: it moves on every write, so an unchanged revision proves
    /// that nothing was written.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "/", "-w", "json"]);
        let marker = "\"revision\":";
        let start = out.find(marker).expect("a revision in etcdctl's header") + marker.len();
        out[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a numeric revision")
    }

    /// Compacts etcd's history up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.etcdctl(&["compact", &revision.to_string()]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd's own health endpoint over plain HTTP.
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn make_certificates(dir: &Path) -> Result<TlsFiles, String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    let key = |name: &str| run(&["genrsa", "-out", name, "2048"]);
    key("ca-key.pem")?;
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca-key.pem",
        "-subj",
        "/CN=test-ca",
        "-days",
        "2",
        "-out",
        "ca.pem",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
        .map_err(|e| e.to_string())?;
    for (name, cn) in [("server", "127.0.0.1"), ("client", "calicoctl")] {
        let key_file = format!("{name}-key.pem");
        key(&key_file)?;
        let csr = format!("{name}.csr");
        run(&[
            "req",
            "-new",
            "-key",
            &key_file,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ])?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ])?;
    }
    Ok(TlsFiles {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client-key.pem"),
    })
}

/// Runs a command to completion with `input` on its stdin, capturing stdout and stderr.
pub fn output_with_input(mut command: Command, input: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("stdin accepts the input");
    child.wait_with_output().expect("the command finishes")
}

/// A network namespace of our own, deleted on drop (with everything in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>`: unique, so tests can run in parallel.
    pub fn new(prefix: &str) -> Netns {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs");
        assert!(
            status.success(),
            "ip netns add {name} failed (are we root?)"
        );
        let netns = Netns { name };
        netns.run("ip", &["link", "set", "lo", "up"]);
        netns
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }

    /// Runs a command inside the namespace; panics (with its stderr) if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        self.run_with_input(program, args, "")
    }

    pub fn run_with_input(&self, program: &str, args: &[&str], input: &str) -> String {
        let output = output_with_input(self.command(program, args), input);
        assert!(
            output.status.success(),
            "{program} {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
