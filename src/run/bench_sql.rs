//! `ledgerbus bench sql`: how fast the SQL consumer writes the stream into a database.
//! The events are decided in process by the sequencer's own core (accounts, their
//! funding, then random transfers with overdraft rejections and, optionally,
//! two-phase transfers), then handed to the consumer's sink exactly as the follower
//! hands them over (1 MiB of frames at a time when catching up, or paced with
//! `--rate`), so the figure is the consumer's apply-and-commit rate with nothing else
//! in the way. In the same run, a number of events is written one per transaction:
//! the seed design's consumer, which stored each event through an ORM.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use ledgerbus_codec::messages::CreateAccount;
use ledgerbus_codec::{account_flags, Frames};
use ledgerbus_consumers::follow::{Progress, Sink};
use ledgerbus_consumers::sql::sink::SqlMetrics;
use ledgerbus_consumers::sql::{drop_projection, DatabaseUrl, SqlConfig, SqlSink};
use ledgerbus_ledger::{Ledger, Replica};
use ledgerbus_sequencer::core::{PendingBatch, SequencerCore};

use super::bench_sequencer::transfer;

use crate::cli::BenchSqlArgs;

/// The session the benchmark's events belong to.
const SESSION: u64 = 0xBE4C_0000_0000_0001;
/// Frames handed to the sink at once while catching up (the follower's bulk size).
const CATCH_UP_BYTES: usize = 1 << 20;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `events` event frames: accounts, funding, then the transfer mix.
fn generate(events: u64, accounts: u64, two_phase: u32) -> Vec<u8> {
    let mut core =
        SequencerCore::new(Replica::new(Ledger::with_capacity(accounts as usize + 1, events as usize)));
    let mut batch = PendingBatch::with_capacity(65_536);
    let mut frames = Vec::with_capacity(events as usize * 96);
    let drain = |batch: &mut PendingBatch, frames: &mut Vec<u8>| {
        frames.extend_from_slice(batch.event_bytes());
        batch.clear();
    };
    for id in 1..=accounts as u128 {
        let flags = if id == 1 { account_flags::ALLOW_NEGATIVE } else { 0 };
        let command = CreateAccount {
            id: id.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: flags.into(),
            ..Default::default()
        };
        core.decide_account(0, &command, now_ns(), &mut batch);
    }
    for id in 2..=accounts as u128 {
        core.decide_transfers(0, &[transfer(u128::MAX - id, 1, id, 10_000)], now_ns(), &mut batch);
    }
    drain(&mut batch, &mut frames);
    let mut mix = ledgerbus_tools::two_phase::TwoPhaseMix::new(two_phase);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_id: u128 = 1;
    let users = accounts - 1;
    while core.next_sequence() <= events {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let debit = u128::from(state % users) + 2;
        let credit = u128::from((state >> 20) % users) + 2;
        let credit = if credit == debit { (credit - 1) % u128::from(users) + 2 } else { credit };
        // Mostly small amounts; some too large for the payer: rejected, kept as rows.
        let amount = if state % 50 == 0 { 1_000_000 } else { 1 + (state >> 40) % 100 };
        let plain = transfer(next_id, debit, credit, amount);
        let command = if two_phase == 0 { plain } else { mix.shape(plain, state >> 8) };
        core.decide_transfers(0, &[command], now_ns(), &mut batch);
        next_id += 1;
        if batch.len() >= 65_536 {
            drain(&mut batch, &mut frames);
        }
    }
    drain(&mut batch, &mut frames);
    // Exactly `events` events (the last decision may have added an expiry).
    let end = Frames::new(&frames).map_while(Result::ok).take(events as usize).map(<[u8]>::len).sum();
    frames.truncate(end);
    frames
}

/// What one pass measured.
#[derive(Debug, serde::Serialize)]
struct Pass {
    events: u64,
    seconds: f64,
    events_per_sec: f64,
    transactions: u64,
    batch_events_mean: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    lag_p99_events: Option<u64>,
    lag_max_events: Option<u64>,
    state_hash: String,
}

/// Writes `frames` through a fresh SQL sink with `batch_events` per transaction.
fn pass(
    url: &DatabaseUrl,
    frames: &[u8],
    (batch_events, batch_delay): (u32, Duration),
    rate: Option<u64>,
    label: &str,
) -> anyhow::Result<Pass> {
    let mut db = url.connect()?;
    drop_projection(db.as_mut())?;
    drop(db);
    let config = SqlConfig {
        database: url.clone(),
        consumer_id: "bench".into(),
        batch_events_max: batch_events as usize,
        batch_delay,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::new("sql"));
    let mut sink = SqlSink::open(config, Arc::clone(&progress), Arc::new(SqlMetrics::default()), stop)?;
    sink.start_session(SESSION)?;
    let total = Frames::new(frames).count() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} events ({per_sec}, {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    let writes = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let recorded = Arc::clone(&writes);
    sink.observe_writes(move |_, took| {
        let _ = recorded.lock().expect("not poisoned").record(took.as_micros().max(1) as u64);
    });
    let mut lag = Histogram::<u64>::new_with_bounds(1, 1 << 40, 3)?;
    // Chunks as the follower delivers them: 1 MiB when catching up; with a rate,
    // what arrives in a millisecond.
    let chunk_events = rate.map_or(usize::MAX, |r| (r as usize / 1_000).max(1));
    let started = Instant::now();
    let mut offered = 0u64;
    let mut rest = frames;
    while !rest.is_empty() {
        let mut size = 0;
        for (count, frame) in Frames::new(rest).map_while(Result::ok).enumerate() {
            if count == chunk_events || size + frame.len() > CATCH_UP_BYTES {
                break;
            }
            size += frame.len();
        }
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let events = Frames::new(chunk).count() as u64;
        if let Some(rate) = rate {
            // Open loop: offer the chunk when its time comes, however far behind.
            let due = started + Duration::from_secs_f64(offered as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        offered += events;
        sink.apply_batch(chunk)?;
        sink.commit()?;
        if rate.is_some() {
            // Live: the follower's turn also writes what waited long enough.
            sink.tick()?;
        }
        if rate.is_some() {
            let _ = lag.record(offered.saturating_sub(sink.kept_through()).max(1));
        }
        bar.set_position(offered);
    }
    sink.flush()?;
    let commits = writes.lock().expect("not poisoned").clone();
    let transactions = commits.len();
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let committed = sink.position();
    if committed.sequence != total {
        bail!("{label}: committed through {} of {total} events", committed.sequence);
    }
    Ok(Pass {
        events: total,
        seconds,
        events_per_sec: total as f64 / seconds,
        transactions,
        batch_events_mean: total as f64 / transactions.max(1) as f64,
        commit_p50_ms: commits.value_at_quantile(0.5) as f64 / 1_000.0,
        commit_p99_ms: commits.value_at_quantile(0.99) as f64 / 1_000.0,
        lag_p99_events: rate.map(|_| lag.value_at_quantile(0.99)),
        lag_max_events: rate.map(|_| lag.max()),
        state_hash: format!("{:016x}", committed.state_hash),
    })
}

fn print(label: &str, pass: &Pass) {
    println!(
        "  {label:<22} {:>9} events in {:>6.2} s = {:>9.0} events/s; {} transactions of {:.0} events, commit p50 {:.2} ms p99 {:.2} ms",
        pass.events,
        pass.seconds,
        pass.events_per_sec,
        pass.transactions,
        pass.batch_events_mean,
        pass.commit_p50_ms,
        pass.commit_p99_ms
    );
    if let (Some(p99), Some(max)) = (pass.lag_p99_events, pass.lag_max_events) {
        println!("  {:<22} lag (offered, not committed): p99 {p99} events, max {max}", "");
    }
}

/// Runs the benchmark.
pub fn run(args: &BenchSqlArgs) -> anyhow::Result<()> {
    let url = DatabaseUrl::parse(&args.database)?;
    let mut db = url.connect().with_context(|| format!("connecting to {url}"))?;
    if db.schema_version()? > 0 && !args.replace {
        bail!("{url} already holds a ledgerbus projection; use an empty database, or --replace to drop it");
    }
    drop(db);
    println!(
        "bench sql: {url}, {} events ({}% two-phase), {} accounts",
        args.events, args.two_phase, args.accounts
    );
    let started = Instant::now();
    let frames = generate(args.events, args.accounts, args.two_phase);
    println!(
        "  events decided in process in {:.2} s ({} bytes of frames)",
        started.elapsed().as_secs_f64(),
        frames.len()
    );
    let delay = Duration::from_millis(args.batch_delay_ms);
    let batched = pass(&url, &frames, (args.batch_events, delay), args.rate, "batched")?;
    print(&format!("batched (≤{} events)", args.batch_events), &batched);
    let per_event = if args.per_event > 0 {
        let count = args.per_event.min(args.events);
        let end = Frames::new(&frames).map_while(Result::ok).take(count as usize).map(<[u8]>::len).sum();
        let pass = pass(&url, &frames[..end], (1, delay), None, "one per transaction")?;
        print("one per transaction", &pass);
        println!("  batched / one per transaction: {:.1}×", batched.events_per_sec / pass.events_per_sec);
        Some(pass)
    } else {
        None
    };
    if args.keep && per_event.is_some() {
        println!("  (--keep: the tables hold the one-per-transaction pass, the last one written)");
    }
    if !args.keep {
        drop_projection(url.connect()?.as_mut())?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "database": url.to_string(),
                "events": args.events,
                "batch_events": args.batch_events,
                "two_phase_percent": args.two_phase,
                "batched": batched,
                "one_per_transaction": per_event,
            })
        );
    }
    Ok(())
}
