//! The SQL consumer's [`Sink`]: events are applied to an in-memory replica (the one
//! rule for what an event does, shared with every other consumer), gathered into a
//! batch, and written — event rows, the changed accounts, the new position — in one
//! transaction once the batch is large enough or old enough.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerbus_ledger::{Ledger, Replica, TransferIds};
use ledgerbus_telemetry::{Counter, Family, Histogram, Registry, U64Gauge};
use serde_json::{json, Value};

use super::rows::{EventRow, RowBatch};
use super::verify::{check_position, replay_rows};
use super::{Database, DatabaseUrl, Position, SqlError};
use crate::error::SinkError;
use crate::follow::{follow, FollowConfig, FollowError, Progress, Sink};

/// Settings of the SQL consumer.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// Where the projection lives.
    pub database: DatabaseUrl,
    /// The id this consumer keeps the projection under (`ledgerbus_position`).
    pub consumer_id: String,
    /// Most events in one transaction.
    pub batch_events_max: usize,
    /// Longest an applied event waits for its transaction.
    pub batch_delay: Duration,
}

/// The SQL consumer's own numbers, beside [`Progress`].
#[derive(Debug)]
pub struct SqlMetrics {
    rows_written: Family<[(&'static str, &'static str); 1], Counter>,
    transactions: Counter,
    write_retries: Counter,
    batch_events: Histogram,
    commit_seconds: Histogram,
    last_batch_events: U64Gauge,
    last_commit_us: U64Gauge,
}

impl Default for SqlMetrics {
    fn default() -> Self {
        SqlMetrics {
            rows_written: Family::default(),
            transactions: Counter::default(),
            write_retries: Counter::default(),
            batch_events: Histogram::new(prometheus_buckets()),
            commit_seconds: Histogram::new(ledgerbus_telemetry::latency_buckets()),
            last_batch_events: U64Gauge::default(),
            last_commit_us: U64Gauge::default(),
        }
    }
}

/// Batch sizes from 1 to 2^17 events.
fn prometheus_buckets() -> impl Iterator<Item = f64> {
    ledgerbus_telemetry::prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 18)
}

impl SqlMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_label(("consumer".into(), "sql".into()));
        r.register("ledgerbus_sql_rows_written", "Rows written, by table.", self.rows_written.clone());
        r.register(
            "ledgerbus_sql_transactions",
            "Transactions committed (each holds a batch of events and the position).",
            self.transactions.clone(),
        );
        r.register(
            "ledgerbus_sql_write_retries",
            "Batches written again after the database failed for a moment.",
            self.write_retries.clone(),
        );
        r.register("ledgerbus_sql_batch_events", "Events per transaction.", self.batch_events.clone());
        r.register(
            "ledgerbus_sql_commit_seconds",
            "Time to write and commit one transaction.",
            self.commit_seconds.clone(),
        );
    }

    fn record(&self, batch: &RowBatch, took: Duration) {
        for (table, rows) in [
            ("account_events", batch.account_events.len()),
            ("transfers", batch.transfers.len()),
            ("expirations", batch.expirations.len()),
            ("accounts", batch.accounts.len()),
        ] {
            if rows > 0 {
                self.rows_written.get_or_create(&[("table", table)]).inc_by(rows as u64);
            }
        }
        self.transactions.inc();
        self.batch_events.observe(batch.events as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        self.last_batch_events.set(batch.events);
        self.last_commit_us.set(took.as_micros() as u64);
    }

    /// The `sql` object of `/status`.
    fn status(&self, database: &DatabaseUrl) -> Value {
        json!({
            "database": database.to_string(),
            "transactions": self.transactions.get(),
            "last_batch_events": self.last_batch_events.get(),
            "last_commit_ms": self.last_commit_us.get() as f64 / 1000.0,
            "write_retries": self.write_retries.get(),
        })
    }
}

/// The projection: its database connection, the replica its rows describe, and
/// the batch not written yet.
pub struct SqlSink {
    config: SqlConfig,
    db: Box<dyn Database>,
    replica: Replica,
    /// What the database holds.
    committed: Position,
    batch: RowBatch,
    /// When the oldest event of the batch was applied.
    batch_started: Option<Instant>,
    progress: Arc<Progress>,
    metrics: Arc<SqlMetrics>,
    stop: Arc<AtomicBool>,
    /// Hears (events, time to write and commit) of every transaction (benchmarks).
    observer: Option<WriteObserver>,
}

/// See [`SqlSink::observe_writes`].
type WriteObserver = Box<dyn FnMut(u64, Duration) + Send>;

/// Connects, waiting (with back-off, saying so) while the database cannot be reached.
fn connect_retrying(url: &DatabaseUrl, stop: &AtomicBool) -> Result<Box<dyn Database>, SqlError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match url.connect() {
            Err(error) if error.is_transient() && !stop.load(Ordering::Relaxed) => {
                tracing::warn!(database = %url, %error, retry_ms = backoff.as_millis() as u64, "waiting for the database");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            outcome => return outcome,
        }
    }
}

impl SqlSink {
    /// Connects, migrates, claims the position, and rebuilds the replica from the
    /// event rows, refusing a projection whose rows do not hash to its position.
    pub fn open(
        config: SqlConfig,
        progress: Arc<Progress>,
        metrics: Arc<SqlMetrics>,
        stop: Arc<AtomicBool>,
    ) -> Result<SqlSink, SqlError> {
        let mut db = connect_retrying(&config.database, &stop)?;
        db.migrate()?;
        let committed = match db.position()? {
            Some((holder, _)) if holder != config.consumer_id => return Err(SqlError::Held { holder }),
            Some((_, position)) => position,
            None => {
                db.create_position(&config.consumer_id)?;
                Position::default()
            }
        };
        let started = Instant::now();
        let replica = replay_rows(db.as_mut(), &mut |_| {})?;
        check_position(&replica, &committed)?;
        tracing::info!(
            database = %config.database,
            sequence = committed.sequence,
            state_hash = format_args!("{:016x}", committed.state_hash),
            rebuilt_ms = started.elapsed().as_millis() as u64,
            "SQL projection opened; its rows hash to its position"
        );
        progress.applied_through(committed.sequence);
        progress.state_hash.store(committed.state_hash, Ordering::Relaxed);
        progress.session.store(committed.session, Ordering::Relaxed);
        Ok(SqlSink {
            config,
            db,
            replica,
            committed,
            batch: RowBatch::default(),
            batch_started: None,
            progress,
            metrics,
            stop,
            observer: None,
        })
    }

    /// Calls `observer` with the events and the write-and-commit time of every
    /// transaction from now on.
    pub fn observe_writes(&mut self, observer: impl FnMut(u64, Duration) + Send + 'static) {
        self.observer = Some(Box::new(observer));
    }

    /// What the database holds.
    pub fn position(&self) -> Position {
        self.committed
    }

    /// Writes the batch in one transaction, retrying on a fresh connection while the
    /// database fails in a way that may pass; a write whose commit was lost with the
    /// connection is recognised by the position it left.
    fn write_batch(&mut self) -> Result<(), SqlError> {
        self.batch.finish(self.replica.ledger());
        let to = Position {
            session: self.committed.session,
            sequence: self.replica.next_sequence() - 1,
            state_hash: self.replica.log_hash(),
            timestamp_ns: self.replica.last_timestamp_ns(),
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.db.write(&self.config.consumer_id, &self.batch, &self.committed, &to) {
                Ok(()) => break,
                Err(error) if error.is_transient() && !self.stop.load(Ordering::Relaxed) => {
                    self.metrics.write_retries.inc();
                    tracing::warn!(%error, retry_ms = backoff.as_millis() as u64, "writing a batch failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if let Err(error) = self.db.reconnect() {
                        tracing::warn!(%error, "reconnecting to the database");
                        continue;
                    }
                    match self.db.position() {
                        Ok(Some((_, stored))) if stored == to => break, // committed before the failure
                        Ok(Some((_, stored))) if stored != self.committed => {
                            return Err(SqlError::Conflict {
                                expected: self.committed.sequence,
                                found: Some(stored.sequence),
                            })
                        }
                        _ => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
        self.metrics.record(&self.batch, started.elapsed());
        if let Some(observer) = &mut self.observer {
            observer(self.batch.events, started.elapsed());
        }
        self.committed = to;
        self.progress.state_hash.store(to.state_hash, Ordering::Relaxed);
        self.batch.clear();
        self.batch_started = None;
        Ok(())
    }

    fn batch_due(&self) -> bool {
        self.batch.events as usize >= self.config.batch_events_max
            || self.batch_started.is_some_and(|at| at.elapsed() >= self.config.batch_delay)
    }
}

impl Sink for SqlSink {
    fn next_sequence(&self) -> u64 {
        self.replica.next_sequence()
    }

    fn session(&self) -> Option<u64> {
        (self.committed.session != 0).then_some(self.committed.session)
    }

    fn start_session(&mut self, session: u64) -> Result<(), SinkError> {
        let held = self.committed.session;
        if held == session {
            return Ok(());
        }
        // Held 0: the events so far were replayed as "the current log" before its
        // session was known; they are this session's.
        if held != 0 {
            // A new log: keep what the old one's projection holds, aside, and start over.
            self.flush()?;
            let aside = self.db.move_aside(held)?;
            tracing::warn!(old = %aside, "the sequencer started a new log; the previous projection was moved aside");
            self.db.migrate()?;
            self.db.create_position(&self.config.consumer_id)?;
            self.replica = Replica::new(Ledger::new());
            self.committed = Position::default();
        }
        let to = Position { session, ..self.committed };
        self.db.write(&self.config.consumer_id, &RowBatch::default(), &self.committed, &to)?;
        self.committed = to;
        self.progress.session.store(session, Ordering::Relaxed);
        self.progress.state_hash.store(to.state_hash, Ordering::Relaxed);
        Ok(())
    }

    fn apply_batch(&mut self, frames: &[u8]) -> Result<(), SinkError> {
        for frame in ledgerbus_codec::Frames::new(frames) {
            let frame = frame.map_err(|error| SqlError::Event(format!("undecodable frame: {error}")))?;
            let row = EventRow::from_frame(frame)?;
            self.replica.apply(frame, TransferIds::Skip)?;
            self.batch.push(row);
            self.batch_started.get_or_insert_with(Instant::now);
            if self.batch.events as usize >= self.config.batch_events_max {
                self.write_batch()?;
            }
        }
        Ok(())
    }

    /// Catching up, batches grow to `batch_events_max` (the events are old already;
    /// large transactions write each index page once for many rows); live, the
    /// follower's [`tick`](Sink::tick) bounds how long an event waits.
    fn commit(&mut self) -> Result<(), SinkError> {
        if self.batch.events as usize >= self.config.batch_events_max {
            self.write_batch()?;
        }
        Ok(())
    }

    fn kept_through(&self) -> u64 {
        self.committed.sequence
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        if self.batch_due() {
            self.write_batch()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if !self.batch.is_empty() {
            self.write_batch()?;
        }
        Ok(())
    }
}

/// Runs the SQL consumer: `/status` and `/metrics` on `http`, the follower on this
/// thread, until `stop` is set (then the last batch is written).
pub fn run(
    config: SqlConfig,
    follow_config: FollowConfig,
    http: TcpListener,
    stop: Arc<AtomicBool>,
) -> Result<(), FollowError> {
    let progress = Arc::new(Progress::new("sql"));
    let metrics = Arc::new(SqlMetrics::default());
    let database = config.database.clone();
    let mut sink = SqlSink::open(config, Arc::clone(&progress), Arc::clone(&metrics), Arc::clone(&stop))
        .map_err(|error| FollowError::Apply(error.into()))?;
    let mut registry = progress.registry();
    metrics.register(&mut registry);
    let status_metrics = Arc::clone(&metrics);
    let routes = progress.routes_with(registry, move || json!({ "sql": status_metrics.status(&database) }));
    ledgerbus_telemetry::serve_router(http, routes, "sql-status-http")?;
    follow(&mut sink, &follow_config, &progress, &stop)
}
