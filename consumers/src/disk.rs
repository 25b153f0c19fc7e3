//! `ledgerbus consumer disk`: persists every event in its own journal (same format as
//! the sequencer's: segments, CRC per frame, the configured fsync policy) and writes
//! periodic snapshots of the ledger state. After a crash it loads the newest good
//! snapshot, replays its journal after it, and asks the sequencer for the rest.

use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ledgerbus_ledger::{Ledger, Replica, TransferIds};
use ledgerbus_log::journal::{list_segments, Durability, JournalWriter};

use crate::error::SinkError;
use crate::follow::{follow, split_frames, FollowConfig, FollowError, Progress, Sink};

/// Settings of the disk consumer.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Where the journal and snapshots live.
    pub data_dir: PathBuf,
    /// When a persisted event counts as durable.
    pub durability: Durability,
    /// Events between snapshots.
    pub snapshot_every: u64,
    /// Journal segment size.
    pub segment_size_max: u64,
}

/// What a restart found.
#[derive(Debug, Clone, Copy)]
pub struct Resumed {
    /// Sequence of the snapshot loaded (0 if none).
    pub snapshot_sequence: u64,
    /// Events replayed from the local journal after the snapshot.
    pub journal_events: u64,
    /// The next sequence to fetch.
    pub next_sequence: u64,
}

/// The disk consumer's state: its journal and the ledger rebuilt from it.
pub struct DiskSink {
    config: DiskConfig,
    journal: JournalWriter,
    core: Replica,
    last_snapshot: u64,
    progress: Arc<Progress>,
}

fn snapshot_dir(data: &Path) -> PathBuf {
    data.join("snapshots")
}

fn journal_dir(data: &Path) -> PathBuf {
    data.join("journal")
}

/// Snapshots in `dir`, newest first.
fn snapshots(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let sequence = name.strip_prefix("snapshot-")?.strip_suffix(".bin")?.parse().ok()?;
            Some((sequence, entry.path()))
        })
        .collect();
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    found
}

impl DiskSink {
    /// Opens the consumer's data: newest good snapshot, then the journal after it.
    /// `session` is the sequencer's, used only if there is no journal yet.
    pub fn open(
        config: DiskConfig,
        session: u64,
        progress: Arc<Progress>,
    ) -> Result<(DiskSink, Resumed), SinkError> {
        let snapshots_at = snapshot_dir(&config.data_dir);
        fs::create_dir_all(&snapshots_at)
            .map_err(|source| SinkError::Io { path: snapshots_at.clone(), source })?;
        let mut core = Replica::new(Ledger::new());
        let mut snapshot_sequence = 0;
        for (sequence, path) in snapshots(&snapshot_dir(&config.data_dir)) {
            let loaded = fs::File::open(&path).and_then(|f| Replica::read_snapshot(&mut BufReader::new(f)));
            match loaded {
                Ok(restored) => {
                    core = restored;
                    snapshot_sequence = sequence;
                    break;
                }
                Err(error) => tracing::warn!(file = %path.display(), %error, "skipping unreadable snapshot"),
            }
        }
        let mut journal_events = 0;
        let (journal, recovered) = JournalWriter::open(
            &journal_dir(&config.data_dir),
            config.durability,
            config.segment_size_max,
            session,
            |frame| {
                let sequence = ledgerbus_log::journal::event_sequence(frame).unwrap_or(0);
                if sequence < core.next_sequence() {
                    return Ok(()); // already in the snapshot
                }
                journal_events += 1;
                core.apply(frame, TransferIds::Skip)
            },
        )?;
        if recovered.next_sequence != core.next_sequence() {
            return Err(SinkError::SnapshotAhead {
                snapshot: core.next_sequence(),
                journal_end: recovered.next_sequence,
            });
        }
        progress.applied_through(core.next_sequence() - 1);
        progress.state_hash.store(core.log_hash(), Ordering::Relaxed);
        progress.session.store(journal.session_id(), Ordering::Relaxed);
        let resumed = Resumed { snapshot_sequence, journal_events, next_sequence: core.next_sequence() };
        Ok((DiskSink { last_snapshot: snapshot_sequence, config, journal, core, progress }, resumed))
    }

    /// The rolling log hash.
    pub fn state_hash(&self) -> u64 {
        self.core.log_hash()
    }

    /// Writes a snapshot atomically (temp file, fsync, rename) and keeps the newest two.
    fn snapshot(&mut self) -> std::io::Result<()> {
        let dir = snapshot_dir(&self.config.data_dir);
        let sequence = self.core.next_sequence() - 1;
        let path = dir.join(format!("snapshot-{sequence:020}.bin"));
        let temp = dir.join(format!("snapshot-{sequence:020}.tmp"));
        let file = fs::File::create(&temp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        self.core.write_snapshot(&mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        fs::rename(&temp, &path)?;
        fs::File::open(&dir)?.sync_all()?;
        for (_, old) in snapshots(&dir).into_iter().skip(2) {
            let _ = fs::remove_file(old);
        }
        self.last_snapshot = sequence;
        tracing::info!(sequence, "snapshot written");
        Ok(())
    }
}

impl Sink for DiskSink {
    fn next_sequence(&self) -> u64 {
        self.core.next_sequence()
    }

    fn session(&self) -> Option<u64> {
        Some(self.journal.session_id())
    }

    fn start_session(&mut self, session: u64) -> Result<(), SinkError> {
        let held = self.journal.session_id();
        if held == session {
            return Ok(());
        }
        // Never delete a log: move this one aside, then start the new one empty.
        let data = &self.config.data_dir;
        let aside = (0..)
            .map(|n| {
                data.join(format!(
                    "previous-log-{held:016x}{}",
                    if n == 0 { String::new() } else { format!("-{n}") }
                ))
            })
            .find(|path| !path.exists())
            .expect("some name is free");
        fs::create_dir_all(&aside).map_err(|source| SinkError::Io { path: aside.clone(), source })?;
        for dir in [journal_dir(data), snapshot_dir(data)] {
            let name = dir.file_name().expect("fixed names").to_owned();
            fs::rename(&dir, aside.join(name))
                .map_err(|source| SinkError::Io { path: dir.clone(), source })?;
        }
        tracing::warn!(old = %aside.display(), "the previous log's journal and snapshots were moved aside");
        let (fresh, _) = DiskSink::open(self.config.clone(), session, Arc::clone(&self.progress))?;
        *self = fresh;
        Ok(())
    }

    fn apply_batch(&mut self, frames: &[u8]) -> Result<(), SinkError> {
        for frame in split_frames(frames) {
            self.core.apply(frame, TransferIds::Skip)?;
            self.journal.append(frame);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        let _durable = self.journal.commit()?;
        self.progress.state_hash.store(self.core.log_hash(), Ordering::Relaxed);
        if self.core.next_sequence() > self.last_snapshot + self.config.snapshot_every {
            let path = snapshot_dir(&self.config.data_dir);
            self.snapshot().map_err(|source| SinkError::Io { path, source })?;
        }
        Ok(())
    }
}

/// Runs the disk consumer: `/status` on `http`, the follower on this thread.
pub fn run(
    config: DiskConfig,
    follow_config: FollowConfig,
    http: std::net::TcpListener,
    stop: Arc<AtomicBool>,
) -> Result<(), FollowError> {
    let progress = Arc::new(Progress::new("disk"));
    let has_journal =
        !list_segments(&journal_dir(&config.data_dir)).map_err(std::io::Error::other)?.is_empty();
    let session = if has_journal {
        0
    } else {
        // Waits (with back-off, saying so) until the sequencer is up.
        crate::follow::with_replay_service(&follow_config.sequencer_replay, &stop, 1, || {
            ledgerbus_log::replay_client::sequencer_session(
                follow_config.sequencer_replay.address(),
                &follow_config.replay_key,
            )
            .map_err(FollowError::Io)
        })?
    };
    let (mut sink, resumed) =
        DiskSink::open(config, session, Arc::clone(&progress)).map_err(FollowError::Apply)?;
    tracing::info!(
        snapshot = resumed.snapshot_sequence,
        journal_events = resumed.journal_events,
        next = resumed.next_sequence,
        "disk consumer resumed"
    );
    ledgerbus_telemetry::serve_router(http, progress.routes(), "disk-status-http")?;
    follow(&mut sink, &follow_config, &progress, &stop)
}
