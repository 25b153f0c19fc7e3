//! `ledgerbus bench hops`: the latency floor of the request path's shape on this
//! host. A client sends small messages at a fixed rate to a relay (where the
//! gateway sits), which passes them to an echo server (where the sequencer sits)
//! and the answers back: the same five blocking hand-offs as a real request
//! (client timer, relay, server, relay, client), over 127.0.0.1 TCP, with no work at
//! all. Whatever `bench e2e` measures above this is the system's own cost; a target
//! below it cannot be met by any design that sleeps while idle.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct HopsOptions {
    /// Messages per second.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// Measure from the actual send instead of the intended send time (leaves out
    /// the sender's own timer wake-up).
    pub from_send: bool,
}

/// Round-trip latency percentiles, µs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HopsReport {
    /// Messages answered.
    pub messages: u64,
    /// p50.
    pub p50_us: u64,
    /// p90.
    pub p90_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.9.
    pub p999_us: u64,
    /// Max.
    pub max_us: u64,
}

const MESSAGE: usize = 64;

/// Copies one direction until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn connected(listener: &TcpListener) -> std::io::Result<TcpStream> {
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Runs the probe; every thread ends when the client closes.
pub fn run(options: HopsOptions) -> anyhow::Result<HopsReport> {
    anyhow::ensure!(options.rate > 0, "the rate must be positive");
    let server = TcpListener::bind("127.0.0.1:0")?;
    let relay = TcpListener::bind("127.0.0.1:0")?;
    let server_address = server.local_addr()?;
    let relay_address = relay.local_addr()?;
    std::thread::Builder::new().name("hops-server".into()).spawn(move || -> std::io::Result<()> {
        let echo = connected(&server)?;
        pump(echo.try_clone()?, echo);
        Ok(())
    })?;
    std::thread::Builder::new().name("hops-relay".into()).spawn(move || -> std::io::Result<()> {
        let client = connected(&relay)?;
        let upstream = TcpStream::connect(server_address)?;
        upstream.set_nodelay(true)?;
        let (back_from, back_to) = (upstream.try_clone()?, client.try_clone()?);
        std::thread::Builder::new().name("hops-relay-back".into()).spawn(move || pump(back_from, back_to))?;
        pump(client, upstream);
        Ok(())
    })?;
    let mut client = TcpStream::connect(relay_address)?;
    client.set_nodelay(true)?;
    let mut answers = client.try_clone()?;
    answers.set_read_timeout(Some(Duration::from_secs(10)))?;
    let count = (options.rate as f64 * options.duration.as_secs_f64()).max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / options.rate as f64);
    let (sent_tx, sent) = std::sync::mpsc::sync_channel::<Instant>(count.min(1 << 20) as usize);
    let sender = std::thread::Builder::new().name("hops-client".into()).spawn(move || {
        crate::pacing::tighten_timer_slack();
        let start = Instant::now();
        for k in 0..count {
            let intended = start + interval.mul_f64(k as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let from = if options.from_send { Instant::now() } else { intended };
            if sent_tx.send(from).is_err() || client.write_all(&[7u8; MESSAGE]).is_err() {
                return;
            }
        }
    })?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut buf = [0u8; MESSAGE];
    for _ in 0..count {
        answers.read_exact(&mut buf)?;
        let from = sent.recv()?;
        histogram.record(from.elapsed().as_micros().max(1) as u64)?;
    }
    let _ = sender.join();
    Ok(HopsReport {
        messages: histogram.len(),
        p50_us: histogram.value_at_quantile(0.5),
        p90_us: histogram.value_at_quantile(0.9),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_makes_the_round_trip() {
        let report =
            run(HopsOptions { rate: 2_000, duration: Duration::from_millis(100), from_send: false }).unwrap();
        assert_eq!(report.messages, 200);
        assert!(report.p50_us >= 1 && report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
    }
}
