//! Running code inside another network namespace: a dedicated thread joins the namespace
//! (setns affects only the calling thread) and runs the work on its own tokio runtime.

use std::path::Path;

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: String, source: nix::Error },
    #[error("the worker thread for network namespace {0} failed")]
    Thread(String),
}

/// Runs `work` inside the network namespace at `path` (e.g. `/var/run/netns/NAME` or
/// `/proc/PID/ns/net`) and returns its result.
pub fn run_in<T, F, Fut>(path: &Path, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let display = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: display.clone(),
        source,
    })?;
    let thread_path = display.clone();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: thread_path,
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Ok(runtime.block_on(work()))
    })
    .join()
    .map_err(|_| NetnsError::Thread(display))?
}
