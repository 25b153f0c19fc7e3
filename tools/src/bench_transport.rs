//! `ledgerbus bench transport`: one publisher and N subscribers on 127.0.0.1 (unicast
//! fan-out), each subscriber on its own thread, with loss injected in the subscriber
//! driver. Measures events/s delivered to every receiver and checks exactly-once,
//! in-order delivery of every event.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerbus_codec::{MessageHeader, MESSAGE_HEADER_SIZE, SCHEMA_ID, SCHEMA_VERSION};
use zerocopy::IntoBytes;

use ledgerbus_transport::driver::{Publisher, SocketOptions, Subscriber, Targets};
use ledgerbus_transport::{BusSecurity, ReceiverConfig, SenderConfig};

/// Template id of the benchmark's filler events. The transport carries any frame;
/// this id is outside the schema so no consumer would mistake it for a ledger event.
pub const BENCH_TEMPLATE_ID: u16 = 0xBE0C;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// How long to publish.
    pub duration: Duration,
    /// Subscribers.
    pub receivers: u32,
    /// Percentage of data datagrams each subscriber drops.
    pub loss_percent: f64,
    /// Bytes per event frame (SBE header included).
    pub event_size: usize,
    /// Datagram size.
    pub datagram_size_max: usize,
    /// How long to wait after publishing for stragglers before declaring loss.
    pub drain_timeout: Duration,
    /// Whether datagrams are sealed (a key made for the run).
    pub security: BusSecurity,
}

/// What it measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Events published.
    pub events: u64,
    /// Events per second delivered to every receiver (publish start to last delivery).
    pub events_per_sec: f64,
    /// Payload megabytes per second per receiver.
    pub mb_per_sec: f64,
    /// NAKs sent by all receivers.
    pub naks: u64,
    /// Datagrams retransmitted.
    pub retransmits: u64,
    /// Events some receiver never got (must be 0).
    pub unrecovered: u64,
    /// Out-of-order or duplicate deliveries seen (must be 0).
    pub order_violations: u64,
    /// Data datagrams dropped on purpose.
    pub injected_drops: u64,
    /// Worst repair latency p50 over receivers, µs.
    pub repair_p50_us: u64,
    /// Worst repair latency p99 over receivers, µs.
    pub repair_p99_us: u64,
    /// Receivers.
    pub receivers: u32,
    /// Injected loss, %.
    pub loss_percent: f64,
    /// Event size, bytes.
    pub event_size: usize,
    /// Seconds from first publish to last delivery.
    pub elapsed_sec: f64,
    /// "aes-256-gcm" or "none".
    pub bus_security: &'static str,
}

impl BenchReport {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain numbers serialise")
    }
}

/// One receiver thread's results.
struct ReceiverResult {
    delivered: u64,
    order_violations: u64,
    naks: u64,
    injected_drops: u64,
    repair_p50_us: u64,
    repair_p99_us: u64,
    finished_at: Option<Instant>,
}

/// Runs the benchmark. `progress` is called about once a second with events published.
pub fn run(options: &BenchOptions, mut progress: impl FnMut(u64)) -> std::io::Result<BenchReport> {
    assert!(options.event_size >= MESSAGE_HEADER_SIZE + 8, "events carry at least their sequence");
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let receiver_config = ReceiverConfig {
        datagram_size_max: options.datagram_size_max,
        security: options.security.clone(),
        ..ReceiverConfig::default()
    };
    let mut subscribers = Vec::new();
    for index in 0..options.receivers {
        let config = ReceiverConfig {
            receiver_id: index + 1,
            rng_seed: u64::from(index) + 1,
            instance: u64::from(index) + 1,
            ..receiver_config.clone()
        };
        let mut subscriber =
            Subscriber::new(config, 1, None, loopback, None, loopback, SocketOptions::default())?;
        subscriber.inject_loss(options.loss_percent, 0xB00 + u64::from(index));
        subscribers.push(subscriber);
    }
    let targets = subscribers
        .iter()
        .map(|s| s.local_addr().and_then(ledgerbus_transport::driver::socket::ipv4))
        .collect::<Result<_, _>>()?;
    let sender_config = SenderConfig {
        datagram_size_max: options.datagram_size_max,
        security: options.security.clone(),
        ..SenderConfig::default()
    };
    let mut publisher =
        Publisher::new(sender_config, 1, loopback, Targets::Unicast(targets), SocketOptions::default())?;
    let control = publisher.local_addr()?;

    let target = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for mut subscriber in subscribers {
        subscriber.set_sender_control(control)?;
        let target = Arc::clone(&target);
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || receive(subscriber, &target, &stop)));
    }

    // Wait for every receiver's first status message: flow control needs their windows.
    let started = Instant::now();
    while publisher.core().receivers().len() < options.receivers as usize
        && started.elapsed() < Duration::from_secs(5)
    {
        publisher.wait(Duration::from_millis(1))?;
    }

    let mut frame = vec![0u8; options.event_size];
    let header = MessageHeader {
        block_length: ((options.event_size - MESSAGE_HEADER_SIZE) as u16).into(),
        template_id: BENCH_TEMPLATE_ID.into(),
        schema_id: SCHEMA_ID.into(),
        version: SCHEMA_VERSION.into(),
    };
    frame[..MESSAGE_HEADER_SIZE].copy_from_slice(header.as_bytes());
    let start = Instant::now();
    let mut last_progress = start;
    while start.elapsed() < options.duration {
        publisher.service()?;
        let window = publisher.window_remaining();
        if window == 0 {
            publisher.wait(Duration::from_micros(200))?;
            continue;
        }
        for _ in 0..window.min(512) {
            let sequence = publisher.core().next_sequence();
            frame[MESSAGE_HEADER_SIZE..MESSAGE_HEADER_SIZE + 8].copy_from_slice(&sequence.to_le_bytes());
            if publisher.publish(&frame)?.is_err() {
                break;
            }
        }
        publisher.flush()?;
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(publisher.core().next_sequence() - 1);
        }
    }
    publisher.flush()?;
    let events = publisher.core().next_sequence() - 1;
    target.store(events, Ordering::Release);
    // Keep answering NAKs until every receiver is complete or the drain times out.
    let drain_start = Instant::now();
    while threads.iter().any(|t| !t.is_finished()) && drain_start.elapsed() < options.drain_timeout {
        publisher.wait(Duration::from_millis(1))?;
    }
    stop.store(true, Ordering::Release);
    let results: Vec<ReceiverResult> =
        threads.into_iter().map(|t| t.join().expect("receiver thread")).collect();

    let finished =
        results.iter().map(|r| r.finished_at.unwrap_or_else(Instant::now)).max().unwrap_or_else(Instant::now);
    let elapsed_sec = finished.duration_since(start).as_secs_f64().max(1e-9);
    let min_delivered = results.iter().map(|r| r.delivered).min().unwrap_or(0);
    let events_per_sec = events as f64 / elapsed_sec;
    Ok(BenchReport {
        events,
        events_per_sec,
        mb_per_sec: events_per_sec * options.event_size as f64 / 1e6,
        naks: results.iter().map(|r| r.naks).sum(),
        retransmits: publisher.core().stats().retransmits,
        unrecovered: events - min_delivered.min(events),
        order_violations: results.iter().map(|r| r.order_violations).sum(),
        injected_drops: results.iter().map(|r| r.injected_drops).sum(),
        repair_p50_us: results.iter().map(|r| r.repair_p50_us).max().unwrap_or(0),
        repair_p99_us: results.iter().map(|r| r.repair_p99_us).max().unwrap_or(0),
        receivers: options.receivers,
        loss_percent: options.loss_percent,
        event_size: options.event_size,
        elapsed_sec,
        bus_security: options.security.name(),
    })
}

/// A receiver thread: delivers until it has every published event or is stopped.
fn receive(mut subscriber: Subscriber, target: &AtomicU64, stop: &AtomicBool) -> ReceiverResult {
    let mut next = 1u64;
    let mut violations = 0u64;
    let mut finished_at = None;
    while !stop.load(Ordering::Acquire) {
        let result = subscriber.poll(Duration::from_millis(1), &mut |sequence, frame| {
            let carried = frame
                .get(MESSAGE_HEADER_SIZE..MESSAGE_HEADER_SIZE + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
            if sequence != next || carried != Some(sequence) {
                violations += 1;
            }
            next = sequence + 1;
        });
        if let Err(error) = result {
            tracing::error!(%error, "bench receiver failed");
            break;
        }
        if next > target.load(Ordering::Acquire) {
            finished_at = Some(Instant::now());
            break;
        }
    }
    let stats = subscriber.core().stats();
    ReceiverResult {
        delivered: next - 1,
        order_violations: violations,
        naks: stats.naks_sent,
        injected_drops: subscriber.stats().injected_drops,
        repair_p50_us: stats.repair_latency_ns.value_at_quantile(0.5) / 1_000,
        repair_p99_us: stats.repair_latency_ns.value_at_quantile(0.99) / 1_000,
        finished_at,
    }
}
