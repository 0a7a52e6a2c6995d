//! New TCP flows between workloads, timed from inside their namespaces: a listener that
//! accepts and closes, a prober that notices within a millisecond when a flow becomes allowed
//! or denied, a connection-rate loop, and a pinger with the same resolution.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use calico_dataplane::netns::run_in;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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

/// From inside `netns`: sends an ICMP echo request to `target` every millisecond until one is
/// answered; returns when the first answer came. One prober for every "until it answers"
/// figure, so that a path that is ready a little after its command returns is not charged a
/// whole retry interval (`ping -W` waits 50 ms or more before trying again).
pub fn until_pinged(netns: PathBuf, target: Ipv4Addr, deadline: Instant) -> Result<Instant> {
    run_in(&netns, move || async move {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        socket.set_read_timeout(Some(EVERY))?;
        // Connected, a raw socket takes only packets from the target.
        socket.connect(&SockAddr::from(SocketAddrV4::new(target, 0)))?;
        // The id tells our replies from others' (a raw socket sees every ICMP packet).
        let id = (std::process::id() & 0xffff) as u16;
        let mut buf = [0u8; 1500];
        let mut seq = 0u16;
        while Instant::now() < deadline {
            seq = seq.wrapping_add(1);
            // Unreachable for now is an expected answer (no route yet): keep trying.
            let _ = socket.send(&echo_request(id, seq));
            let sent = Instant::now();
            while sent.elapsed() < EVERY {
                let Ok(len) = (&socket).read(&mut buf) else {
                    break;
                };
                if is_echo_reply(&buf[..len], id) {
                    return Ok(Instant::now());
                }
            }
        }
        bail!("{target} never answered a ping")
    })?
}

fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = 8;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// An IPv4 packet (a raw socket hands over the IP header) carrying an echo reply with `id`.
fn is_echo_reply(packet: &[u8], id: u16) -> bool {
    let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    let icmp = packet.get(header..).unwrap_or_default();
    icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes()
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checksums_to_zero() {
        let packet = echo_request(0x1234, 7);
        assert_eq!(checksum(&packet), 0);
        let mut reply = vec![0x45u8; 1];
        reply.resize(20, 0);
        reply.extend_from_slice(&packet);
        reply[20] = 0;
        assert!(is_echo_reply(&reply, 0x1234));
        assert!(!is_echo_reply(&reply, 0x4321));
        reply[20] = 8;
        assert!(!is_echo_reply(&reply, 0x1234), "a request is not a reply");
    }

    #[test]
    fn the_pinger_sees_an_answer_and_gives_up_on_silence() {
        let netns = calico_testkit::Netns::new("pinger");
        netns.run("ip", &["link", "set", "lo", "up"]);
        let path = PathBuf::from(format!("/var/run/netns/{}", netns.name));
        let soon = Instant::now() + Duration::from_secs(5);
        assert!(until_pinged(path.clone(), Ipv4Addr::LOCALHOST, soon).is_ok());
        netns.run("ip", &["route", "add", "blackhole", "10.9.9.9/32"]);
        let short = Instant::now() + Duration::from_millis(100);
        assert!(until_pinged(path, "10.9.9.9".parse().unwrap(), short).is_err());
    }
}
