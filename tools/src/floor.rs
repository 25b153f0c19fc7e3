//! `ledgerbus bench floor`: the raw UDP round trip on this host, the floor under any
//! request latency. A paced client sends 64-byte datagrams at a fixed rate (open
//! loop, measured from each datagram's intended send time) to an echo thread, and the
//! two receiving threads wait with the chosen idle strategy (`block`: blocking
//! `recv`; `spin`/`backoff`: non-blocking `recv` and [`Idler`], parking in `ppoll` on
//! the socket as the system's threads do). Run with every
//! strategy in one invocation, the ratios between them are what a request path can
//! gain from how its threads wait.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ledgerbus_transport::driver::mmsg::wait_readable;
use ledgerbus_transport::idle::{IdleStrategy, Idler};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct FloorOptions {
    /// Datagrams per second.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// How the echo thread and the client's receiving thread wait.
    pub idle: IdleStrategy,
}

/// Round trips of one strategy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloorReport {
    /// `block`, `backoff` or `spin`.
    pub strategy: String,
    /// Round trips completed.
    pub messages: u64,
    /// Datagrams sent and never answered.
    pub lost: u64,
    /// p50, µs.
    pub p50_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// p99.9, µs.
    pub p999_us: u64,
    /// Max, µs.
    pub max_us: u64,
    /// CPU time of the whole process over the run, in % of one core.
    pub cpu_percent: f64,
}

const MESSAGE: usize = 64;

/// CPU time this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Receives one datagram into `buf`, waiting as `idle` says, until `stop` is set.
fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
    idle: IdleStrategy,
    idler: &mut Idler,
    stop: &AtomicBool,
) -> Option<(usize, std::net::SocketAddr)> {
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(buf) {
            Ok(received) => {
                idler.reset();
                return Some(received);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if idle != IdleStrategy::Block {
                    // Blocks last at most 100 ms, to notice `stop`.
                    let waited = idler.idle_on(|most| {
                        let most = most.unwrap_or(Duration::from_millis(100));
                        wait_readable(socket.as_raw_fd(), Some(most)).map(drop)
                    });
                    if waited.is_err() {
                        return None;
                    }
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// A socket on 127.0.0.1 set up for `idle`: blocking with a short timeout (to notice
/// the end), or non-blocking.
fn socket_for(idle: IdleStrategy) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    match idle {
        IdleStrategy::Block => socket.set_read_timeout(Some(Duration::from_millis(100)))?,
        _ => socket.set_nonblocking(true)?,
    }
    Ok(socket)
}

/// Runs the probe with one idle strategy.
pub fn run(options: FloorOptions) -> anyhow::Result<FloorReport> {
    anyhow::ensure!(options.rate > 0, "the rate must be positive");
    let stop = Arc::new(AtomicBool::new(false));
    let echo = socket_for(options.idle)?;
    let echo_address = echo.local_addr()?;
    let echo_stop = Arc::clone(&stop);
    let idle = options.idle;
    let echo_thread = std::thread::Builder::new().name("floor-echo".into()).spawn(move || {
        let mut idler = Idler::new(idle);
        let mut buf = [0u8; MESSAGE];
        while let Some((size, from)) = receive(&echo, &mut buf, idle, &mut idler, &echo_stop) {
            let _ = echo.send_to(&buf[..size], from);
        }
    })?;
    let client = socket_for(options.idle)?;
    client.connect(echo_address)?;
    let sender = client.try_clone()?;
    let count = (options.rate as f64 * options.duration.as_secs_f64()).max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / options.rate as f64);
    let cpu_before = cpu_time();
    let start = Instant::now() + Duration::from_millis(10);
    let pacer = std::thread::Builder::new().name("floor-client".into()).spawn(move || {
        crate::pacing::tighten_timer_slack();
        let mut message = [7u8; MESSAGE];
        for k in 0..count {
            let intended = start + interval.mul_f64(k as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            message[..8].copy_from_slice(&k.to_le_bytes());
            // A full socket buffer (the echo fell behind) is a lost datagram.
            let _ = sender.send(&message);
        }
    })?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut idler = Idler::new(options.idle);
    let mut buf = [0u8; MESSAGE];
    let receiving_stop = Arc::new(AtomicBool::new(false));
    let end = start + options.duration + Duration::from_secs(2);
    let watchdog_stop = Arc::clone(&receiving_stop);
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < end && !watchdog_stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        watchdog_stop.store(true, Ordering::Relaxed);
    });
    while histogram.len() < count {
        let Some((size, _)) = receive(&client, &mut buf, options.idle, &mut idler, &receiving_stop) else {
            break;
        };
        if size < 8 {
            continue;
        }
        let k = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let intended = start + interval.mul_f64(k as f64);
        histogram.record(intended.elapsed().as_micros().max(1) as u64)?;
    }
    let elapsed = start.elapsed().max(Duration::from_millis(1));
    let cpu = cpu_time().saturating_sub(cpu_before);
    receiving_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = pacer.join();
    let _ = echo_thread.join();
    let _ = watchdog.join();
    Ok(FloorReport {
        strategy: options.idle.to_string(),
        messages: histogram.len(),
        lost: count - histogram.len(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        cpu_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_makes_the_round_trips() {
        for idle in ["block", "backoff", "spin"] {
            let options = FloorOptions {
                rate: 2_000,
                duration: Duration::from_millis(100),
                idle: idle.parse().unwrap(),
            };
            let report = run(options).unwrap();
            assert_eq!(report.messages + report.lost, 200, "{report:?}");
            assert!(report.messages >= 190, "loopback loses next to nothing: {report:?}");
            assert!(report.p50_us >= 1 && report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
        }
    }
}
