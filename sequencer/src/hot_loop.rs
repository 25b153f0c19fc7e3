//! The hot thread: accept gateways, read and decide their commands, hand each group
//! commit to the journal, and publish and answer what the journal made durable.
//! Everything a connection's bytes mean is in the sans-IO [`crate::intake`]; this
//! file only moves bytes between sockets and it.
//!
//! With nothing to do it waits as its idle strategy says (`--idle-strategy`): `block`
//! sleeps in `ppoll` on the listener, every gateway connection, the bus socket and
//! the journal's wake-up descriptor until one is ready or the transport's next timer
//! is due; `backoff` polls them again for a while first, then parks in the same
//! `ppoll` for short times, then blocks (docs/architecture.md, "Performance").

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ledgerbus_log::archive::Archive;
use ledgerbus_log::LogHead;
use ledgerbus_transport::driver::Publisher;
use ledgerbus_transport::idle::{IdleStrategy, Idler};

use crate::config::{io_err, SequencerConfig, SequencerError};
use crate::core::{PendingBatch, Reply, SequencerCore};

/// Most pending transfers a driver expires per turn of its loop, besides those
/// expired ahead of commands.
pub(crate) const EXPIRIES_PER_TURN: usize = 256;
use crate::gateways::{wait, GatewayPort, Intent};
use crate::intake::Leadership;
use crate::metrics::{ConsumerPosition, SequencerMetrics};
use crate::pipeline::{CommitPipeline, Committed};

pub(crate) struct HotLoop {
    core: SequencerCore,
    /// The journal, on its own thread: decides overlap with group commits.
    pipeline: CommitPipeline,
    /// Batch buffers not in use, recycled: with one being filled, one syncing and
    /// one being released, three are ever needed.
    spares: Vec<PendingBatch>,
    publisher: Publisher,
    gateways: GatewayPort,
    batch: Option<PendingBatch>,
    batch_events_max: usize,
    metrics: Arc<SequencerMetrics>,
    shutdown: Arc<AtomicBool>,
    session_id: u64,
    last_metrics_refresh: Instant,
    /// Answers NAKs older than the retransmit ring from the journal, off this thread.
    archive: Archive,
    idle: IdleStrategy,
}

/// Queues each reply for its gateway and sends them; returns how many were
/// rejections (for the metrics).
pub(crate) fn answer(gateways: &mut GatewayPort, replies: &[Reply]) -> u64 {
    let mut rejected = 0;
    for reply in replies {
        if !reply.result.is_success() {
            rejected += 1;
        }
        gateways.queue(reply);
    }
    gateways.flush();
    rejected
}

/// Publishes events that may be published (durable, or committed by a group) and
/// sends them.
pub(crate) fn publish<'a>(
    publisher: &mut Publisher,
    events: impl Iterator<Item = &'a [u8]>,
) -> Result<(), SequencerError> {
    for frame in events {
        if let Err(error) = publisher.publish(frame).map_err(io_err("bus socket"))? {
            // Sizes and framing were produced by us: a refusal here is a bug.
            panic!("publisher refused an event to publish: {error}");
        }
    }
    publisher.flush().map_err(io_err("bus socket"))
}

/// Hands NAKs older than the retransmit ring to the archive thread, which answers
/// them from the journal; a request that does not fit its queue is dropped and
/// asked for again by the receiver's NAK retry.
pub(crate) fn serve_archive(publisher: &mut Publisher, archive: &Archive) {
    while let Some(request) = publisher.poll_archive_request() {
        if !archive.submit(request) {
            tracing::debug!(to = %request.to, "archive queue full; the receiver will NAK again");
        }
    }
}

pub(crate) fn wall_clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl HotLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &SequencerConfig,
        core: SequencerCore,
        pipeline: CommitPipeline,
        publisher: Publisher,
        listener: TcpListener,
        metrics: Arc<SequencerMetrics>,
        shutdown: Arc<AtomicBool>,
        session_id: u64,
        archive: Archive,
    ) -> HotLoop {
        HotLoop {
            core,
            pipeline,
            spares: (0..2).map(|_| PendingBatch::with_capacity(config.batch_events_max)).collect(),
            publisher,
            gateways: GatewayPort::new(listener, config.secret.clone(), Arc::clone(&metrics)),
            batch: Some(PendingBatch::with_capacity(config.batch_events_max)),
            batch_events_max: config.batch_events_max,
            metrics,
            shutdown,
            session_id,
            last_metrics_refresh: Instant::now(),
            archive,
            idle: config.idle,
        }
    }

    pub(crate) fn run(mut self) -> Result<(), SequencerError> {
        let mut idler = Idler::new(self.idle);
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                return self.drain();
            }
            self.gateways.accept();
            let decided = self.read_and_decide();
            let mut released = self.release_completed()?;
            self.submit_if_idle();
            if self.pipeline.is_ready() {
                // `os` durability commits inline: answer now, not on the next turn.
                released |= self.release_completed()?;
            }
            self.publisher.service().map_err(io_err("bus socket"))?;
            self.serve_archive();
            self.gateways.flush();
            self.refresh_metrics();
            if decided > 0 || released {
                idler.reset();
            } else if !self.pipeline.is_ready() {
                // Wait until a socket is ready or the journal finishes a batch; while
                // a sync runs, new commands are still read and decided.
                idler.idle_on(|most| self.idle_wait(most))?;
            }
        }
    }

    /// Answers and publishes the batch the journal has finished, if any, after
    /// starting the next group commit: the journal syncs batch N+1 while this thread
    /// answers and publishes batch N.
    /// Returns whether it released one.
    fn release_completed(&mut self) -> Result<bool, SequencerError> {
        if let Some(committed) = self.pipeline.try_complete() {
            let committed = committed?;
            self.submit_if_idle();
            self.release(committed)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Starts the group commit of what has been decided, unless one is running.
    fn submit_if_idle(&mut self) {
        if self.pipeline.in_flight() || self.batch.as_ref().is_none_or(|b| b.is_empty()) {
            return;
        }
        let next = self.spares.pop().unwrap_or_else(|| PendingBatch::with_capacity(self.batch_events_max));
        let batch = self.batch.replace(next).expect("batch present");
        self.pipeline.submit(batch);
    }

    /// Shutdown in order: intake has stopped; flush the group commit, publish,
    /// answer, send a final heartbeat.
    fn drain(mut self) -> Result<(), SequencerError> {
        while self.pipeline.in_flight() || self.batch.as_ref().is_some_and(|b| !b.is_empty()) {
            if let Some(committed) = self.pipeline.wait_complete(Duration::from_millis(100)) {
                self.release(committed?)?;
            }
            self.submit_if_idle();
        }
        self.gateways.flush();
        self.publisher.service().map_err(io_err("bus socket"))?;
        tracing::info!(next_sequence = self.core.next_sequence(), "sequencer stopped");
        Ok(())
    }

    /// Reads every ready connection and decides complete commands, up to the batch
    /// limit and the transport's flow-control window. Returns events decided.
    fn read_and_decide(&mut self) -> usize {
        let window = self.publisher.window_remaining().min(self.batch_events_max as u64) as usize;
        let mut batch = self.batch.take().expect("batch present between iterations");
        let intent = Intent {
            session: self.session_id,
            next_sequence: self.core.next_sequence(),
            core: Some(&mut self.core),
            leads: Leadership::Here,
            window,
            now_ns: wall_clock_ns(),
        };
        let mut decided = self.gateways.read_and_decide(intent, &mut batch);
        // Pending transfers whose timeout passed expire even when no command comes.
        let room = window.saturating_sub(batch.len()).min(EXPIRIES_PER_TURN);
        decided += self.core.expire_due(wall_clock_ns(), room, &mut batch);
        self.batch = Some(batch);
        decided
    }

    /// Publishes and answers a batch the journal has made durable.
    fn release(&mut self, committed: Committed) -> Result<(), SequencerError> {
        self.metrics.record_fsync(committed.sync_us);
        let durable = committed.batch;
        // Answer first, then publish: the answer is what a client waits for, and
        // waking every subscriber costs the sending thread tens of microseconds in a
        // VM. Consumers follow microseconds later; read-your-writes waits for them.
        let rejected = answer(&mut self.gateways, durable.replies());
        publish(&mut self.publisher, durable.events())?;
        self.metrics.events.inc_by(durable.len() as u64);
        self.metrics.rejected.inc_by(rejected);
        if let Some(last) = durable.last_sequence() {
            self.metrics.set_head(LogHead {
                last_sequence: last,
                state_hash: durable.last_hash(),
                session: self.session_id,
            });
        }
        self.spares.push(durable.recycle());
        debug_assert!(self.spares.len() <= 2, "three batch buffers at most");
        Ok(())
    }

    fn serve_archive(&mut self) {
        serve_archive(&mut self.publisher, &self.archive);
    }

    fn refresh_metrics(&mut self) {
        if self.last_metrics_refresh.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_metrics_refresh = Instant::now();
        let stats = self.publisher.core().stats();
        // The sender counts for the process's lifetime; its totals are ours.
        self.metrics.retransmits.inner().store(stats.retransmits, Ordering::Relaxed);
        self.metrics.naks.inner().store(stats.naks_received, Ordering::Relaxed);
        self.metrics.unauthenticated_datagrams.inner().store(stats.unauthenticated, Ordering::Relaxed);
        let positions = self
            .publisher
            .core()
            .receivers()
            .iter()
            .map(|r| ConsumerPosition {
                receiver_id: r.receiver_id,
                address: r.address,
                position: r.highest_contiguous_sequence,
            })
            .collect();
        if let Ok(mut consumers) = self.metrics.consumers.lock() {
            *consumers = positions;
        }
    }

    /// Sleeps until a socket is ready or a timer is due, or at most `most` (a park).
    fn idle_wait(&mut self, most: Option<Duration>) -> Result<(), SequencerError> {
        let mut fds = Vec::with_capacity(16);
        fds.push(libc::pollfd { fd: self.publisher.fd(), events: libc::POLLIN, revents: 0 });
        if let Some(fd) = self.pipeline.wake_fd() {
            fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        let window_open = self.publisher.window_remaining() > 0;
        self.gateways.poll_fds(&mut fds, window_open);
        let until_timer = self.publisher.core().poll_timeout().nanos_since(self.publisher.now());
        // Wake at least every 50 ms to notice shutdown and handshake deadlines.
        let timeout = Duration::from_nanos(until_timer)
            .min(Duration::from_millis(50))
            .min(most.unwrap_or(Duration::MAX));
        wait(&mut fds, timeout).map_err(|source| SequencerError::Io { what: "ppoll".into(), source })
    }
}
