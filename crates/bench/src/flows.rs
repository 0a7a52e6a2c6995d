//! New TCP flows between workloads, timed from inside their namespaces: a listener that
//! accepts and closes, a prober that notices within a millisecond when a flow becomes allowed
//! or denied, and a connection-rate loop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use calico_dataplane::netns::run_in;

/// A listener inside a workload's namespace that accepts and closes connections until
/// dropped.
pub struct Listener {
    stop: Arc<AtomicBool>,
    address: SocketAddr,
    netns: PathBuf,
}

impl Listener {
    /// Listens on `port` in `netns`; returns once the socket is bound. `address` is where
    /// the listener is reached (used once more at drop to wake its accept loop).
    pub fn start(netns: PathBuf, address: SocketAddr) -> Result<Listener> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (thread_netns, thread_stop) = (netns.clone(), stop.clone());
        std::thread::spawn(move || {
            let _ = run_in(&thread_netns, move || async move {
                match TcpListener::bind(("0.0.0.0", address.port())) {
                    Ok(listener) => {
                        let _ = bound_tx.send(Ok(()));
                        for stream in listener.incoming() {
                            drop(stream);
                            if thread_stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            });
        });
        bound_rx.recv_timeout(Duration::from_secs(10))??;
        Ok(Listener {
            stop,
            address,
            netns,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // One more connection from inside the listener's own namespace wakes its accept.
        let address = SocketAddr::from(([127, 0, 0, 1], self.address.port()));
        let _ = run_in(&self.netns, move || async move {
            let _ = TcpStream::connect_timeout(&address, Duration::from_secs(1));
        });
    }
}

/// How long a connection attempt may go unanswered before the flow counts as denied
/// (dropped SYNs are never answered).
pub const UNANSWERED: Duration = Duration::from_millis(50);
/// How often the prober starts a new attempt: the resolution of its figures.
const EVERY: Duration = Duration::from_millis(1);

/// From inside `netns`: starts a new connection to `target` every millisecond until one
/// succeeds (`allowed`) or one goes unanswered (`!allowed`). Returns when that happened: for a
/// success, when it was answered; for a denial, when the unanswered attempt began.
pub async fn until(netns: PathBuf, target: SocketAddr, allowed: bool) -> Result<Instant> {
    tokio::task::spawn_blocking(move || {
        run_in(&netns, move || async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while Instant::now() < deadline {
                tokio::select! {
                    _ = tick.tick() => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let began = Instant::now();
                            let attempt = tokio::time::timeout(UNANSWERED, tokio::net::TcpStream::connect(target)).await;
                            // Refused (RST) is an answer: neither allowed nor dropped.
                            let outcome = match attempt {
                                Ok(Ok(_)) => Some((true, Instant::now())),
                                Err(_) => Some((false, began)),
                                Ok(Err(_)) => None,
                            };
                            if let Some(outcome) = outcome {
                                let _ = tx.send(outcome);
                            }
                        });
                    }
                    Some((connected, at)) = rx.recv() => {
                        if connected == allowed {
                            return Ok(at);
                        }
                    }
                }
            }
            bail!(
                "the flow to {target} never became {}",
                if allowed { "allowed" } else { "denied" }
            )
        })?
    })
    .await?
}

/// What a connection-rate sample came to.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    /// Attempts not answered within a second (dropped SYNs), left out of the rate.
    pub unanswered: u64,
}

/// From inside `netns`: new connections to `target`, one after another, for `period`. Each
/// is closed with a reset (linger 0), so neither side keeps it in TIME_WAIT and the
/// sample does not run out of ports.
pub fn rate(netns: PathBuf, target: SocketAddr, period: Duration) -> Result<Rate> {
    run_in(&netns, move || async move {
        let started = Instant::now();
        let (mut made, mut unanswered) = (0u64, 0u64);
        while started.elapsed() < period {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_zero_linger()?;
            match tokio::time::timeout(Duration::from_secs(1), socket.connect(target)).await {
                Ok(stream) => {
                    drop(stream?);
                    made += 1;
                }
                Err(_) => unanswered += 1,
            }
        }
        anyhow::Ok(Rate {
            per_second: made as f64 / started.elapsed().as_secs_f64(),
            unanswered,
        })
    })?
}
