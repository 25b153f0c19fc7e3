//! Group commit off the hot thread. The hot thread decides batch N+1 while a journal
//! thread writes and syncs batch N, so throughput is the larger of the two costs
//! rather than their sum. The journal thread alone turns a [`PendingBatch`] into a
//! [`DurableBatch`], with the journal's proof, so nothing can be published or
//! answered before it is durable. At most one batch is in flight: its decisions are
//! already in the ledger, and a journal error is fatal (the process stops rather
//! than answer for an event it could not make durable).

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::{DurableBatch, PendingBatch};
use ledgerbus_log::journal::{JournalError, JournalWriter};

/// A batch back from the journal thread.
pub struct Committed {
    /// The batch, now durable.
    pub batch: DurableBatch,
    /// Time spent writing and syncing it, µs.
    pub sync_us: u64,
}

/// The journal thread and its two channels, or (for `os` durability, where a commit
/// is only a `write` into the page cache) the journal itself, committed inline to
/// save two thread hand-offs per batch.
pub struct CommitPipeline {
    submit: Option<SyncSender<PendingBatch>>,
    done: Option<Receiver<Result<Committed, JournalError>>>,
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
    /// Inline mode: the journal, and the result of the last submit.
    inline: Option<JournalWriter>,
    ready: Option<Result<Committed, JournalError>>,
    /// Readable when the journal thread has finished a batch, so the hot thread can
    /// sleep in one `ppoll` on its sockets and this, and keep deciding meanwhile.
    wake: Option<std::os::unix::net::UnixStream>,
}

impl CommitPipeline {
    /// Moves `journal` to its own thread.
    pub fn start(mut journal: JournalWriter) -> std::io::Result<CommitPipeline> {
        let (submit, batches) = sync_channel::<PendingBatch>(1);
        let (finished, done) = sync_channel(1);
        let (wake, mut signal) = std::os::unix::net::UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let thread = std::thread::Builder::new().name("journal".into()).spawn(move || {
            while let Ok(batch) = batches.recv() {
                let started = Instant::now();
                batch.append_to(&mut journal);
                let result = journal.commit().map(|proof| Committed {
                    batch: batch.into_durable(&proof),
                    sync_us: started.elapsed().as_micros() as u64,
                });
                let failed = result.is_err();
                if finished.send(result).is_err() || failed {
                    return;
                }
                let _ = std::io::Write::write(&mut signal, &[1]);
            }
        })?;
        Ok(CommitPipeline {
            submit: Some(submit),
            done: Some(done),
            in_flight: false,
            thread: Some(thread),
            inline: None,
            ready: None,
            wake: Some(wake),
        })
    }

    /// Commits on the caller's thread: `submit` writes (and syncs, if the journal's
    /// policy says so) before it returns.
    pub fn inline(journal: JournalWriter) -> CommitPipeline {
        CommitPipeline {
            submit: None,
            done: None,
            in_flight: false,
            thread: None,
            inline: Some(journal),
            ready: None,
            wake: None,
        }
    }

    /// Whether a finished batch is waiting to be collected (inline mode).
    pub fn is_ready(&self) -> bool {
        self.ready.is_some()
    }

    /// Whether a batch is being written.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Hands a batch to the journal thread. Only one may be in flight.
    pub fn submit(&mut self, batch: PendingBatch) {
        assert!(!self.in_flight, "one batch in flight at a time");
        assert!(!batch.is_empty());
        self.in_flight = true;
        if let Some(journal) = &mut self.inline {
            let started = Instant::now();
            batch.append_to(journal);
            self.ready = Some(journal.commit().map(|proof| Committed {
                batch: batch.into_durable(&proof),
                sync_us: started.elapsed().as_micros() as u64,
            }));
            return;
        }
        self.submit
            .as_ref()
            .expect("pipeline running")
            .send(batch)
            .expect("journal thread alive while in flight");
    }

    /// A descriptor that becomes readable when a batch completes (threaded mode).
    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.wake.as_ref().map(std::os::fd::AsRawFd::as_raw_fd)
    }

    fn drain_wake(&mut self) {
        if let Some(wake) = &mut self.wake {
            let mut sink = [0u8; 64];
            while matches!(std::io::Read::read(wake, &mut sink), Ok(n) if n > 0) {}
        }
    }

    /// The in-flight batch, if it is done; never blocks.
    pub fn try_complete(&mut self) -> Option<Result<Committed, JournalError>> {
        self.drain_wake();
        self.collect(|done| match done.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => panic!("journal thread died"),
        })
    }

    /// Waits up to `timeout` for the in-flight batch.
    pub fn wait_complete(&mut self, timeout: Duration) -> Option<Result<Committed, JournalError>> {
        self.collect(|done| match done.recv_timeout(timeout) {
            Ok(result) => Some(result),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("journal thread died"),
        })
    }

    /// The in-flight batch's result: ready at once in inline mode, else from the
    /// journal thread through `receive`.
    fn collect(
        &mut self,
        receive: impl FnOnce(
            &Receiver<Result<Committed, JournalError>>,
        ) -> Option<Result<Committed, JournalError>>,
    ) -> Option<Result<Committed, JournalError>> {
        if !self.in_flight {
            return None;
        }
        let result = match self.ready.take() {
            Some(ready) => Some(ready),
            None => receive(self.done.as_ref().expect("threaded pipeline")),
        };
        if result.is_some() {
            self.in_flight = false;
        }
        result
    }
}

impl Drop for CommitPipeline {
    fn drop(&mut self) {
        self.submit.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
