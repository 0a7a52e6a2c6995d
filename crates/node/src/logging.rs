//! Logs to stderr (calicoctl node sends them to a file), at a level that follows Felix's
//! LogSeverityScreen setting while the agent runs.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

pub struct LogControl {
    handle: reload::Handle<LevelFilter, tracing_subscriber::Registry>,
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

impl LogControl {
    pub fn init(initial: &str) -> LogControl {
        let (filter, handle) = reload::Layer::new(level(initial));
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
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
            let _ = self.handle.reload(level(name));
            tracing::info!(level = name, "log level changed");
            self.current = name.to_string();
        }
    }
}
