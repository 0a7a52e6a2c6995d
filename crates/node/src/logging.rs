//! Logs to stderr (calicoctl node sends them to a file), at a level that follows Felix's
//! LogSeverityScreen setting while the agent runs. The level applies to our own crates; the
//! libraries under them (gRPC, HTTP/2) stay at warnings, or debug would drown in their frames.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

const OUR_CRATES: [&str; 4] = [
    "calico_node",
    "calico_dataplane",
    "calico_felix",
    "calico_datastore",
];

pub struct LogControl {
    handle: reload::Handle<Targets, tracing_subscriber::Registry>,
    current: String,
}

/// Calico's level names to tracing's.
pub fn level(name: &str) -> LevelFilter {
    match name.to_ascii_lowercase().as_str() {
        "none" => LevelFilter::OFF,
        "debug" => LevelFilter::DEBUG,
        "warning" | "warn" => LevelFilter::WARN,
        "error" | "critical" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    }
}

fn targets(name: &str) -> Targets {
    let ours = level(name);
    OUR_CRATES.iter().fold(
        Targets::new().with_default(ours.min(LevelFilter::WARN)),
        |t, c| t.with_target(*c, ours),
    )
}

impl LogControl {
    pub fn init(initial: &str) -> LogControl {
        let (filter, handle) = reload::Layer::new(targets(initial));
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours only for a terminal: calicoctl node sends the log to a file.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .init();
        LogControl {
            handle,
            current: initial.to_string(),
        }
    }

    pub fn set(&mut self, name: &str) {
        if self.current != name {
            let _ = self.handle.reload(targets(name));
            tracing::info!(level = name, "log level changed");
            self.current = name.to_string();
        }
    }
}
