//! Group commit off the hot thread. The hot thread decides batch N+1 while a journal
//! thread writes and syncs batch N, so throughput is the larger of the two costs
//! rather than their sum. The journal thread alone turns a [`PendingBatch`] into a
//! [`DurableBatch`], with the journal's proof, so nothing can be published or
//! answered before it is durable. At most one batch is in flight: its decisions are
//! already in the ledger, and a journal error is fatal (the process stops rather
//! than answer for an event it could not make durable).

use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::{DurableBatch, PendingBatch};
use ledgerbus_log::journal::{JournalError, JournalWriter};
use ledgerbus_transport::idle::{IdleStrategy, Idler};

/// A batch back from the journal thread.
pub struct Committed {
    /// The batch, now durable.
    pub batch: DurableBatch,
    /// Time spent writing and syncing it, µs.
    pub sync_us: u64,
}

type Outcome = Result<Committed, JournalError>;

/// Group commit, in one of two modes. Exactly one batch may be in flight.
pub struct CommitPipeline {
    mode: Mode,
    in_flight: bool,
}

/// How batches reach the journal.
enum Mode {
    /// `fsync` durability: a journal thread writes and syncs while the hot thread
    /// decides the next batch.
    Threaded {
        submit: Option<SyncSender<PendingBatch>>,
        done: Receiver<Outcome>,
        thread: Option<JoinHandle<()>>,
        /// Readable when the journal thread has finished a batch, so the hot
        /// thread can sleep in one `ppoll` on its sockets and this.
        wake: UnixStream,
    },
    /// `os` durability: a commit is only a `write` into the page cache, done on the
    /// caller's thread to save two thread hand-offs per batch.
    Inline {
        journal: JournalWriter,
        /// The result of the last submit, until collected.
        ready: Option<Outcome>,
    },
}

impl CommitPipeline {
    /// Moves `journal` to its own thread, which waits for batches as `idle` says.
    pub fn start(mut journal: JournalWriter, idle: IdleStrategy) -> std::io::Result<CommitPipeline> {
        let (submit, batches) = sync_channel::<PendingBatch>(1);
        let (finished, done) = sync_channel(1);
        let (wake, mut signal) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let thread = std::thread::Builder::new().name("journal".into()).spawn(move || {
            let mut idler = Idler::new(idle);
            while let Some(batch) = next_batch(&batches, &mut idler) {
                let result = commit(&mut journal, batch);
                let failed = result.is_err();
                if finished.send(result).is_err() || failed {
                    return;
                }
                let _ = std::io::Write::write(&mut signal, &[1]);
            }
        })?;
        let mode = Mode::Threaded { submit: Some(submit), done, thread: Some(thread), wake };
        Ok(CommitPipeline { mode, in_flight: false })
    }

    /// Commits on the caller's thread: `submit` writes (and syncs, if the journal's
    /// policy says so) before it returns.
    pub fn inline(journal: JournalWriter) -> CommitPipeline {
        CommitPipeline { mode: Mode::Inline { journal, ready: None }, in_flight: false }
    }

    /// Whether a finished batch is waiting to be collected (inline mode).
    pub fn is_ready(&self) -> bool {
        matches!(self.mode, Mode::Inline { ready: Some(_), .. })
    }

    /// Whether a batch is being written.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Hands a batch to the journal. Only one may be in flight.
    pub fn submit(&mut self, batch: PendingBatch) {
        assert!(!self.in_flight, "one batch in flight at a time");
        assert!(!batch.is_empty());
        self.in_flight = true;
        match &mut self.mode {
            Mode::Inline { journal, ready } => *ready = Some(commit(journal, batch)),
            Mode::Threaded { submit, .. } => submit
                .as_ref()
                .expect("pipeline running")
                .send(batch)
                .expect("journal thread alive while in flight"),
        }
    }

    /// A descriptor that becomes readable when a batch completes (threaded mode).
    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.mode {
            Mode::Threaded { wake, .. } => Some(std::os::fd::AsRawFd::as_raw_fd(wake)),
            Mode::Inline { .. } => None,
        }
    }

    /// The in-flight batch, if it is done; never blocks.
    pub fn try_complete(&mut self) -> Option<Outcome> {
        // Drained even with nothing in flight: the journal thread signals after it
        // sends, so a signal can outlive the batch it announced, and a readable
        // descriptor left behind would wake the idle hot thread forever.
        self.drain_wake();
        self.collect(|done| match done.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => panic!("journal thread died"),
        })
    }

    /// Waits up to `timeout` for the in-flight batch.
    pub fn wait_complete(&mut self, timeout: Duration) -> Option<Outcome> {
        self.collect(|done| match done.recv_timeout(timeout) {
            Ok(result) => Some(result),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("journal thread died"),
        })
    }

    fn drain_wake(&mut self) {
        if let Mode::Threaded { wake, .. } = &mut self.mode {
            let mut sink = [0u8; 64];
            while matches!(std::io::Read::read(wake, &mut sink), Ok(n) if n > 0) {}
        }
    }

    /// The in-flight batch's result: ready at once in inline mode, else from the
    /// journal thread through `receive`.
    fn collect(&mut self, receive: impl FnOnce(&Receiver<Outcome>) -> Option<Outcome>) -> Option<Outcome> {
        if !self.in_flight {
            return None;
        }
        let result = match &mut self.mode {
            Mode::Inline { ready, .. } => ready.take(),
            Mode::Threaded { done, .. } => receive(done),
        };
        if result.is_some() {
            self.in_flight = false;
        }
        result
    }
}

/// The next batch for the journal thread, waited for as `idler` says; `None` when
/// the hot thread has gone.
fn next_batch(batches: &Receiver<PendingBatch>, idler: &mut Idler) -> Option<PendingBatch> {
    if idler.strategy() == IdleStrategy::Block {
        return batches.recv().ok();
    }
    loop {
        match batches.try_recv() {
            Ok(batch) => {
                idler.reset();
                return Some(batch);
            }
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        let mut received = None;
        let waited = idler.idle_on(|most| {
            received = Some(match most {
                Some(park) => batches.recv_timeout(park).map_err(|e| e == RecvTimeoutError::Disconnected),
                None => batches.recv().map_err(|_| true),
            });
            Ok::<(), ()>(())
        });
        debug_assert!(waited.is_ok());
        match received {
            Some(Ok(batch)) => {
                idler.reset();
                return Some(batch);
            }
            Some(Err(true)) => return None,
            Some(Err(false)) | None => {}
        }
    }
}

/// Appends and commits one batch; the journal's proof makes it durable.
fn commit(journal: &mut JournalWriter, batch: PendingBatch) -> Outcome {
    let started = Instant::now();
    batch.append_to(journal);
    journal.commit().map(|proof| Committed {
        batch: batch.into_durable(&proof),
        sync_us: started.elapsed().as_micros() as u64,
    })
}

impl Drop for CommitPipeline {
    fn drop(&mut self) {
        if let Mode::Threaded { submit, thread, .. } = &mut self.mode {
            submit.take();
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}
