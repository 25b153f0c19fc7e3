//! `ledgerbus bench sequencer`: the sequencer's own work, in process, without the
//! gateway: decide + stamp + journal (group commit) + encode + publish to a socket
//! on 127.0.0.1. A generator thread offers transfers as fast as it can through a
//! bounded queue; each hot-loop iteration takes whatever has arrived, so group sizes
//! come from the real fsync latency, as they do in production.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, Id128};
use ledgerbus_ledger::{Ledger, Replica};
use ledgerbus_transport::driver::{socket, Publisher, SocketOptions, Targets};
use ledgerbus_transport::SenderConfig;

use ledgerbus_log::journal::{Durability, JournalWriter};
use ledgerbus_sequencer::core::{PendingBatch, SequencerCore};
use ledgerbus_sequencer::pipeline::CommitPipeline;

/// Transfers per message from the generator.
const CHUNK: usize = 1_024;
/// How many commands ahead deciding prefetches the transfer index.
const PREFETCH_AHEAD: usize = 8;
/// Accounts transfers are spread over.
const ACCOUNTS: u128 = 10_000;

/// What the benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SequencerBenchReport {
    /// Durability mode.
    pub durability: String,
    /// Transfers decided, journaled and published.
    pub transfers: u64,
    /// Transfers per second.
    pub transfers_per_sec: f64,
    /// Group commits.
    pub commits: u64,
    /// Mean transfers per group commit.
    pub group_size_mean: f64,
    /// Largest group commit.
    pub group_size_max: u64,
    /// Journal sync latency p50, µs.
    pub fsync_p50_us: u64,
    /// Journal sync latency p99, µs.
    pub fsync_p99_us: u64,
    /// Rejected transfers (overdraft attempts are part of the mix).
    pub rejected: u64,
    /// Seconds measured.
    pub elapsed_sec: f64,
    /// Events replayed when the journal was reopened afterwards (restart recovery).
    pub recovery_events: u64,
    /// Recovery speed: journal read, CRC-checked, decoded and applied to a new ledger.
    pub recovery_events_per_sec: f64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Runs the benchmark in `dir` (a fresh directory) for `duration`.
/// Real consumers to publish to, instead of a socket nobody reads.
#[derive(Debug, Clone)]
pub struct LiveConsumers {
    /// Their UDP addresses.
    pub subscribers: Vec<std::net::SocketAddrV4>,
    /// Where they send NAKs and status messages.
    pub control: SocketAddr,
    /// The replay service they catch up from (served from the bench's journal).
    pub replay: SocketAddr,
    /// The bus keys they hold (replay credentials come from them).
    pub bus_keys: std::sync::Arc<ledgerbus_transport::BusKeys>,
    /// Whether the stream to them is sealed.
    pub security: ledgerbus_transport::BusSecurity,
}

/// Runs the benchmark in `dir` (a fresh directory) for `duration`. With `live`, events
/// go to real consumers, which hold the sequencer back through flow control if they
/// cannot keep up, so the rate reported is one they sustained.
pub fn run(
    dir: &Path,
    durability: Durability,
    duration: Duration,
    live: Option<LiveConsumers>,
    two_phase_percent: u32,
) -> std::io::Result<SequencerBenchReport> {
    let (mut journal, recovered) =
        JournalWriter::open(dir, durability, 1 << 30, 1, ledgerbus_log::journal::skip_events)
            .map_err(std::io::Error::other)?;
    // Without live consumers: a subscriber socket nobody reads; the kernel drops what
    // overflows, as a slow consumer would, and the sequencer pays its full publishing cost.
    let sink = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (targets, control) = match &live {
        Some(live) => {
            let listener = std::net::TcpListener::bind(live.replay)?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let metrics = std::sync::Arc::new(ledgerbus_sequencer::metrics::SequencerMetrics::default());
            ledgerbus_log::replay::serve(
                listener,
                dir.to_path_buf(),
                live.bus_keys.replay_keys(),
                metrics,
                stop,
            )?;
            (Targets::Unicast(live.subscribers.clone()), live.control)
        }
        None => (Targets::Unicast(vec![socket::ipv4(sink.local_addr()?)?]), loopback),
    };
    let allowed_requesters = match &targets {
        Targets::Unicast(list) => list.iter().map(|a| SocketAddr::V4(*a)).collect(),
        Targets::Multicast { .. } => Vec::new(),
    };
    let mut publisher = Publisher::new(
        SenderConfig {
            session_id: recovered.session_id,
            allowed_requesters,
            security: live.as_ref().map(|l| l.security.clone()).unwrap_or_default(),
            instance: ledgerbus_protocol::auth::random_u64()?,
            ..SenderConfig::default()
        },
        recovered.next_sequence,
        control,
        targets,
        SocketOptions::default(),
    )?;
    let mut core = SequencerCore::new(Replica::new(Ledger::with_capacity(ACCOUNTS as usize + 1, 1 << 24)));
    let mut batch = PendingBatch::with_capacity(65_536);

    // Accounts: one settlement account that may go negative funds the others.
    for id in 0..=ACCOUNTS {
        let flags = if id == 0 { account_flags::ALLOW_NEGATIVE } else { 0 };
        let command = CreateAccount {
            correlation_id: 0.into(),
            id: Id128::from(id + 1),
            ledger: 1.into(),
            code: 1.into(),
            flags: flags.into(),
            ..Default::default()
        };
        core.decide_account(0, &command, now_ns(), &mut batch);
    }
    let funding: Vec<Transfer> =
        (1..=ACCOUNTS).map(|id| transfer(u128::MAX - id, 1, id + 1, 1_000_000)).collect();
    for chunk in funding.chunks(1) {
        core.decide_transfers(0, chunk, now_ns(), &mut batch);
    }
    let batch = commit(&mut journal, &mut publisher, batch)?;
    let mut batch = batch;

    let (sender, receiver) = sync_channel::<Vec<Transfer>>(64);
    let generator = std::thread::spawn(move || {
        let mut next_id: u128 = 1;
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut mix = ledgerbus_tools::two_phase::TwoPhaseMix::new(two_phase_percent);
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            for _ in 0..CHUNK {
                // xorshift: cheap, deterministic account picks.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let debit = u128::from(state % ACCOUNTS as u64) + 2;
                let credit = u128::from((state >> 20) % ACCOUNTS as u64) + 2;
                let credit = if credit == debit { (credit - 1) % ACCOUNTS + 2 } else { credit };
                let amount = 1 + (state >> 40) % 100;
                let plain = transfer(next_id, debit, credit, amount);
                chunk.push(if two_phase_percent == 0 { plain } else { mix.shape(plain, state >> 8) });
                next_id += 1;
            }
            if sender.send(chunk).is_err() {
                return;
            }
        }
    });

    let mut fsync = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("valid bounds");
    let mut transfers = 0u64;
    let mut commits = 0u64;
    let mut group_max = 0u64;
    let mut rejected = 0u64;
    let mut pipeline = CommitPipeline::start(journal, ledgerbus_transport::idle::IdleStrategy::Block)?;
    let mut spare = Some(PendingBatch::with_capacity(65_536));
    let start = Instant::now();
    while start.elapsed() < duration || pipeline.in_flight() {
        // Decide while the previous batch is being synced, within the consumers'
        // flow-control window.
        let window = publisher.window_remaining().min(65_536) as usize;
        if start.elapsed() < duration && batch.len() < window {
            let chunk = if batch.is_empty() && !pipeline.in_flight() {
                receiver.recv().ok()
            } else {
                receiver.try_recv().ok()
            };
            if let Some(chunk) = chunk {
                let now = now_ns();
                for (index, transfer) in chunk.iter().enumerate() {
                    // As the server does: prefetch a few commands ahead.
                    if let Some(ahead) = chunk.get(index + PREFETCH_AHEAD) {
                        core.prefetch_transfer(ahead.id.get());
                    }
                    core.decide_transfers(0, std::slice::from_ref(transfer), now, &mut batch);
                }
                continue;
            }
        }
        if window == 0 && !pipeline.in_flight() {
            // Consumers are behind: wait for their status messages.
            publisher.wait(Duration::from_millis(1))?;
            continue;
        }
        let done = if batch.is_empty() || start.elapsed() >= duration {
            pipeline.wait_complete(Duration::from_millis(100))
        } else {
            pipeline.try_complete()
        };
        if let Some(result) = done {
            let committed = result.map_err(std::io::Error::other)?;
            let _ = fsync.record(committed.sync_us.max(1));
            let durable = committed.batch;
            for frame in durable.events() {
                if publisher.publish(frame)?.is_err() {
                    return Err(std::io::Error::other("publisher refused an event"));
                }
            }
            publisher.flush()?;
            rejected += durable.replies().iter().filter(|r| !r.result.is_success()).count() as u64;
            let decided = durable.len() as u64;
            transfers += decided;
            commits += 1;
            group_max = group_max.max(decided);
            spare = Some(durable.recycle());
            publisher.service()?;
        }
        if !pipeline.in_flight() && !batch.is_empty() {
            let next = spare.take().unwrap_or_else(|| PendingBatch::with_capacity(65_536));
            pipeline.submit(std::mem::replace(&mut batch, next));
        }
    }
    let elapsed_sec = start.elapsed().as_secs_f64();
    drop(receiver);
    let _ = generator.join();
    drop(pipeline);

    // Restart recovery: reopen the journal into a fresh ledger, as a restart does.
    let mut recovered_core = Replica::new(Ledger::with_capacity(ACCOUNTS as usize + 1, 1 << 24));
    let recovery_start = Instant::now();
    let (_, recovered) =
        ledgerbus_sequencer::recovery::recover(dir, durability, 1 << 30, 1, &mut recovered_core)
            .map_err(std::io::Error::other)?;
    let recovery_sec = recovery_start.elapsed().as_secs_f64();
    if recovered_core.log_hash() != core.log_hash()
        || recovered_core.ledger().transfer_count() != core.ledger().transfer_count()
        || recovered_core.ledger().account_count() != core.ledger().account_count()
    {
        return Err(std::io::Error::other("recovered state differs from the state before restart"));
    }
    Ok(SequencerBenchReport {
        durability: format!("{durability:?}").to_lowercase(),
        transfers,
        transfers_per_sec: transfers as f64 / elapsed_sec,
        commits,
        group_size_mean: transfers as f64 / commits.max(1) as f64,
        group_size_max: group_max,
        fsync_p50_us: fsync.value_at_quantile(0.5),
        fsync_p99_us: fsync.value_at_quantile(0.99),
        rejected,
        elapsed_sec,
        recovery_events: recovered.events,
        recovery_events_per_sec: recovered.events as f64 / recovery_sec.max(1e-9),
    })
}

/// A plain transfer of ledger 1, code 1 (the benchmarks' workload).
pub(super) fn transfer(id: u128, debit: u128, credit: u128, amount: u64) -> Transfer {
    Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: debit.into(),
        credit_account_id: credit.into(),
        amount: amount.into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: 0.into(),
        ..Default::default()
    }
}

fn commit(
    journal: &mut JournalWriter,
    publisher: &mut Publisher,
    batch: PendingBatch,
) -> std::io::Result<PendingBatch> {
    batch.append_to(journal);
    let proof = journal.commit().map_err(std::io::Error::other)?;
    let durable = batch.into_durable(&proof);
    for frame in durable.events() {
        if publisher.publish(frame)?.is_err() {
            return Err(std::io::Error::other("publisher refused an event"));
        }
    }
    publisher.flush()?;
    Ok(durable.recycle())
}
