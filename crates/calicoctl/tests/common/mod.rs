//! Runs the real calicoctl binary against a real etcd of its own.

#![allow(dead_code)] // each test file uses a different part

use std::process::{Command, Output};

pub use calico_testkit::Etcd;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

pub struct Cli {
    pub etcd: Etcd,
}

impl Cli {
    pub fn new() -> Cli {
        Cli {
            etcd: Etcd::start(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_calicoctl"));
        for var in [
            "ETCD_ENDPOINTS",
            "ETCD_AUTHORITY",
            "ETCD_SCHEME",
            "ETCD_CA_CERT_FILE",
            "ETCD_CERT_FILE",
            "ETCD_KEY_FILE",
        ] {
            command.env_remove(var);
        }
        command.envs(self.etcd.env()).args(args);
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_input(args, "")
    }

    pub fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        calico_testkit::output_with_input(self.command(args), input).into()
    }

    /// Runs a command line (split at spaces) that must succeed; returns its stdout.
    pub fn ok(&self, line: &str) -> String {
        let args: Vec<&str> = line.split_whitespace().collect();
        let run = self.run(&args);
        assert_eq!(
            run.code, 0,
            "calicoctl {line}\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Runs a command line that must fail; returns the run.
    pub fn fails(&self, line: &str) -> Run {
        let args: Vec<&str> = line.split_whitespace().collect();
        let run = self.run(&args);
        assert_ne!(
            run.code, 0,
            "calicoctl {line} should fail\nstdout: {}",
            run.stdout
        );
        run
    }

    /// Writes an endpoint as an orchestrator would, straight into the keyspace.
    pub fn put_endpoint(&self, host: &str, workload: &str, id: &str, ip: &str, profiles: &[&str]) {
        let key = format!("/calico/v1/host/{host}/workload/docker/{workload}/endpoint/{id}");
        let profiles: Vec<String> = profiles.iter().map(|p| format!("\"{p}\"")).collect();
        let value = format!(
            r#"{{"state":"active","name":"cali{}","mac":"ee:ee:ee:ee:ee:ee","profile_ids":[{}],"ipv4_nets":["{ip}/32"],"ipv6_nets":[]}}"#,
            &id[..11],
            profiles.join(",")
        );
        self.etcd.put(&key, &value);
    }
}
