//! The journal: append-only segment files holding the exact wire bytes of every
//! event, each with its length and CRC32 (docs/architecture.md, "Sequencer").
//!
//! Layout of a directory: `NNNNNNNNNNNNNNNNNNNN.journal` segments named by their
//! first sequence. A segment starts with a 32-byte header (magic, format version,
//! session id, first sequence, header CRC) followed by records
//! `[frame length u32][crc32 of frame u32][frame]`, little-endian.
//!
//! Opening checks every record. A bad record at the very end of the last segment is
//! a torn write from a crash: it is truncated with a warning (with `fsync`
//! durability it was never acknowledged). A bad record anywhere else is corruption:
//! opening fails with the file and offset, and nothing is served from it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ledgerbus_codec::{Frame, MessageHeader};

/// `LBJOURNL`.
const SEGMENT_MAGIC: [u8; 8] = *b"LBJOURNL";
/// Format version of segment files.
const SEGMENT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_SIZE: u64 = 32;
/// Size of a record header (length + CRC).
pub const RECORD_HEADER_SIZE: usize = 8;
/// A frame longer than this is not a ledgerbus event: the length is corrupt.
pub const FRAME_SIZE_MAX: usize = 4096;

/// Why the journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A record or header that does not check out, not at the tail.
    #[error("{path}: corrupt journal at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// When an appended event counts as durable. With the `clap` feature it is also
/// the command line's `--durability fsync|os`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Durability {
    /// Group commit: nothing is published or acknowledged before its fdatasync returns.
    Fsync,
    /// Written to the page cache: survives a process crash, not a power loss.
    Os,
}

impl Durability {
    /// The name the command line and the logs use (`fsync`, `os`).
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sequence number inside an event frame.
pub fn event_sequence(frame: &[u8]) -> Option<u64> {
    Frame::decode(frame).ok().and_then(|(frame, _)| frame.event_sequence())
}

/// For [`JournalWriter::open`] when the events already journaled are not needed.
pub fn skip_events(_frame: &[u8]) -> Result<(), std::convert::Infallible> {
    Ok(())
}

/// Path of the segment starting at `first_sequence`.
fn segment_path(dir: &Path, first_sequence: u64) -> PathBuf {
    dir.join(format!("{first_sequence:020}.journal"))
}

/// Segments in `dir`, sorted by first sequence.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut segments = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".journal") else { continue };
        if let Ok(first) = stem.parse::<u64>() {
            segments.push((first, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

fn encode_header(session_id: u64, first_sequence: u64) -> [u8; SEGMENT_HEADER_SIZE as usize] {
    let mut header = [0u8; SEGMENT_HEADER_SIZE as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&session_id.to_le_bytes());
    header[20..28].copy_from_slice(&first_sequence.to_le_bytes());
    let crc = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Reads a segment header: (session id, first sequence).
fn decode_header(path: &Path, header: &[u8]) -> Result<(u64, u64), JournalError> {
    let corrupt =
        |reason: &str| JournalError::Corrupt { path: path.to_path_buf(), offset: 0, reason: reason.into() };
    if header.len() < SEGMENT_HEADER_SIZE as usize {
        return Err(corrupt("segment header truncated"));
    }
    if header[0..8] != SEGMENT_MAGIC {
        return Err(corrupt("not a ledgerbus journal segment (bad magic)"));
    }
    let stored = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..28]) != stored {
        return Err(corrupt("segment header CRC mismatch"));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_VERSION {
        return Err(corrupt(&format!("unsupported segment version {version}")));
    }
    let session = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let first = u64::from_le_bytes(header[20..28].try_into().expect("8 bytes"));
    Ok((session, first))
}

/// Reads records from one segment, checking each.
pub struct SegmentReader {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    len: u64,
    session_id: u64,
    first_sequence: u64,
    buf: Vec<u8>,
}

/// The outcome of reading one record.
pub enum Record<'a> {
    /// A good frame.
    Frame(&'a [u8]),
    /// The clean end of the segment.
    End,
    /// A bad record at `offset`; `at_tail` says whether it is the segment's last bytes.
    Bad {
        /// Where it starts.
        offset: u64,
        /// Whether nothing valid could follow it (a torn final write).
        at_tail: bool,
        /// What is wrong.
        reason: &'static str,
    },
}

impl SegmentReader {
    /// Opens a segment and checks its header.
    pub fn open(path: &Path) -> Result<SegmentReader, JournalError> {
        let file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; SEGMENT_HEADER_SIZE as usize];
        let read = read_up_to(&mut reader, &mut header).map_err(io_error(path))?;
        let (session_id, first_sequence) = decode_header(path, &header[..read])?;
        Ok(SegmentReader {
            path: path.to_path_buf(),
            reader,
            offset: SEGMENT_HEADER_SIZE,
            len,
            session_id,
            first_sequence,
            buf: vec![0; FRAME_SIZE_MAX],
        })
    }

    /// The session the segment belongs to.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Sequence of the segment's first event.
    pub fn first_sequence(&self) -> u64 {
        self.first_sequence
    }

    /// Offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the next record.
    pub fn next_record(&mut self) -> Result<Record<'_>, JournalError> {
        let start = self.offset;
        let remaining = self.len.saturating_sub(start);
        if remaining == 0 {
            return Ok(Record::End);
        }
        if remaining < RECORD_HEADER_SIZE as u64 {
            return Ok(Record::Bad { offset: start, at_tail: true, reason: "record header truncated" });
        }
        let mut header = [0u8; RECORD_HEADER_SIZE];
        self.reader.read_exact(&mut header).map_err(io_error(&self.path))?;
        let size = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let stored = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let end = start + RECORD_HEADER_SIZE as u64 + size as u64;
        if size == 0 || size > FRAME_SIZE_MAX {
            return Ok(Record::Bad {
                offset: start,
                at_tail: end >= self.len,
                reason: "impossible frame length",
            });
        }
        if end > self.len {
            return Ok(Record::Bad { offset: start, at_tail: true, reason: "record truncated" });
        }
        let frame = &mut self.buf[..size];
        self.reader.read_exact(frame).map_err(io_error(&self.path))?;
        self.offset = end;
        if crc32fast::hash(frame) != stored {
            return Ok(Record::Bad { offset: start, at_tail: end == self.len, reason: "frame CRC mismatch" });
        }
        if MessageHeader::frame_size(frame) != Ok(size) {
            return Ok(Record::Bad { offset: start, at_tail: end == self.len, reason: "malformed frame" });
        }
        Ok(Record::Frame(&self.buf[..size]))
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match reader.read(&mut buf[read..])? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read)
}

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Session of the log (new if the directory was empty).
    pub session_id: u64,
    /// The sequence the next appended event gets.
    pub next_sequence: u64,
    /// Events found.
    pub events: u64,
    /// Bytes of torn tail that were cut off.
    pub truncated_bytes: u64,
}

/// Proof that a batch of appended records is durable per the configured policy.
/// Only [`JournalWriter::commit`] makes one, so publishing and acknowledging can
/// require it in their signatures (docs/architecture.md, "Design rules" 3).
#[derive(Debug)]
#[must_use]
pub struct Durable {
    /// Sequence one past the last durable event. Private, so no one else can forge one.
    next_sequence: u64,
}

impl Durable {
    /// Sequence one past the last durable event.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
}

/// Appends events, rolling segments, with group commit.
pub struct JournalWriter {
    dir: PathBuf,
    durability: Durability,
    session_id: u64,
    file: File,
    /// Path of the segment being appended to (for error messages).
    file_path: PathBuf,
    segment_size: u64,
    segment_size_max: u64,
    next_sequence: u64,
    /// Records appended since the last commit.
    pending: Vec<u8>,
    pending_first_sequence: u64,
}

impl JournalWriter {
    /// Opens (or creates) the journal in `dir`, checking every record and passing each
    /// event frame, in order, to `replay`. A torn tail is truncated; corruption
    /// elsewhere is an error naming file and offset. `new_session` is used only when
    /// the directory holds no journal yet.
    pub fn open<E: std::fmt::Display>(
        dir: &Path,
        durability: Durability,
        segment_size_max: u64,
        new_session: u64,
        mut replay: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(JournalWriter, Recovered), JournalError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let segments = list_segments(dir)?;
        let mut session_id = new_session;
        let mut next_sequence = 1;
        let mut events = 0;
        let mut truncated_bytes = 0;
        for (index, (first, path)) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            let mut reader = SegmentReader::open(path)?;
            if index == 0 {
                session_id = reader.session_id();
            }
            let corrupt =
                |offset: u64, reason: String| JournalError::Corrupt { path: path.clone(), offset, reason };
            if reader.session_id() != session_id {
                return Err(corrupt(0, format!("session {} differs from {session_id}", reader.session_id())));
            }
            if reader.first_sequence() != *first || (index > 0 && *first != next_sequence) {
                return Err(corrupt(0, format!("segment starts at {first}, expected {next_sequence}")));
            }
            next_sequence = *first;
            loop {
                let offset = reader.offset();
                match reader.next_record()? {
                    Record::End => break,
                    Record::Frame(frame) => {
                        match event_sequence(frame) {
                            Some(sequence) if sequence == next_sequence => {}
                            other => {
                                return Err(corrupt(
                                    offset,
                                    format!("event {other:?} where {next_sequence} belongs"),
                                ));
                            }
                        }
                        replay(frame).map_err(|reason| corrupt(offset, reason.to_string()))?;
                        next_sequence += 1;
                        events += 1;
                    }
                    Record::Bad { offset, at_tail: true, reason } if last => {
                        let len = fs::metadata(path).map_err(io_error(path))?.len();
                        truncated_bytes = len - offset;
                        tracing::warn!(file = %path.display(), offset, bytes = truncated_bytes, reason,
                            "journal has a torn tail from a crash; truncating it");
                        let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
                        file.set_len(offset).map_err(io_error(path))?;
                        file.sync_all().map_err(io_error(path))?;
                        break;
                    }
                    Record::Bad { offset, reason, .. } => return Err(corrupt(offset, reason.to_string())),
                }
            }
        }
        let (file, file_path, segment_size) = match segments.last() {
            Some((_, path)) => {
                let mut file = OpenOptions::new().append(true).open(path).map_err(io_error(path))?;
                let size = file.seek(SeekFrom::End(0)).map_err(io_error(path))?;
                (file, path.clone(), size)
            }
            None => (create_segment(dir, session_id, 1, true)?, segment_path(dir, 1), SEGMENT_HEADER_SIZE),
        };
        let writer = JournalWriter {
            dir: dir.to_path_buf(),
            durability,
            session_id,
            file,
            file_path,
            segment_size,
            segment_size_max,
            next_sequence,
            pending: Vec::with_capacity(1 << 20),
            pending_first_sequence: next_sequence,
        };
        Ok((writer, Recovered { session_id, next_sequence, events, truncated_bytes }))
    }

    /// The log's session.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The sequence the next appended event must carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The durability policy.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Appends one event frame (its sequence must be `next_sequence`). It is durable
    /// only after the next `commit`.
    pub fn append(&mut self, frame: &[u8]) {
        assert!(!frame.is_empty() && frame.len() <= FRAME_SIZE_MAX);
        debug_assert_eq!(
            event_sequence(frame),
            Some(self.next_sequence),
            "journal events must be contiguous"
        );
        self.pending.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(&crc32fast::hash(frame).to_le_bytes());
        self.pending.extend_from_slice(frame);
        self.next_sequence += 1;
    }

    /// Bytes appended and not yet committed.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes every appended record and, with `Fsync`, waits for `fdatasync`: one
    /// sync for the whole batch (group commit). Rolls to a new segment when the
    /// current one is full.
    pub fn commit(&mut self) -> Result<Durable, JournalError> {
        if !self.pending.is_empty() {
            if self.segment_size >= self.segment_size_max {
                self.roll()?;
            }
            self.file.write_all(&self.pending).map_err(io_error(&self.file_path))?;
            self.segment_size += self.pending.len() as u64;
            self.pending.clear();
            if self.durability == Durability::Fsync {
                self.file.sync_data().map_err(io_error(&self.file_path))?;
            }
        }
        self.pending_first_sequence = self.next_sequence;
        Ok(Durable { next_sequence: self.next_sequence })
    }

    /// Drops every event from `next_sequence` on (see [`truncate_dir`]) and goes on
    /// appending there. Nothing may be appended and uncommitted.
    pub fn truncate(&mut self, next_sequence: u64) -> Result<(), JournalError> {
        assert!(self.pending.is_empty(), "truncate between commits");
        if next_sequence >= self.next_sequence {
            return Ok(());
        }
        truncate_dir(&self.dir, next_sequence)?;
        let (_, path) = list_segments(&self.dir)?.pop().ok_or_else(|| JournalError::Corrupt {
            path: self.dir.clone(),
            offset: 0,
            reason: "no segment left after truncation".into(),
        })?;
        let mut file = OpenOptions::new().append(true).open(&path).map_err(io_error(&path))?;
        self.segment_size = file.seek(SeekFrom::End(0)).map_err(io_error(&path))?;
        self.file = file;
        self.file_path = path;
        self.next_sequence = next_sequence;
        self.pending_first_sequence = next_sequence;
        Ok(())
    }

    /// Starts a new segment at the next sequence to be written.
    ///
    /// With `Os` durability nothing is synced: the promise is to survive a process
    /// crash, which the page cache does, and syncing (or even starting writeback of)
    /// a full segment here would keep the writer (the sequencer's hot thread) busy for
    /// the whole writeback, hundreds of milliseconds at this rate. The kernel's
    /// flusher threads write it back in the background.
    fn roll(&mut self) -> Result<(), JournalError> {
        let sync = self.durability == Durability::Fsync;
        if sync {
            self.file.sync_all().map_err(io_error(&self.file_path))?;
        }
        self.file = create_segment(&self.dir, self.session_id, self.pending_first_sequence, sync)?;
        self.file_path = segment_path(&self.dir, self.pending_first_sequence);
        self.segment_size = SEGMENT_HEADER_SIZE;
        Ok(())
    }
}

/// Removes every event with a sequence at or after `next_sequence` from the journal in
/// `dir`, durably: a replicated member drops the uncommitted suffix a new leader
/// overwrote (its entries were never acknowledged). Segments that start at or after
/// it are deleted, the one holding it is cut at the record's offset; the first
/// segment is kept (empty) so the log keeps its session. A journal that ends before
/// `next_sequence` is left as it is.
pub fn truncate_dir(dir: &Path, next_sequence: u64) -> Result<(), JournalError> {
    let segments = list_segments(dir)?;
    for (index, (first, path)) in segments.iter().enumerate().rev() {
        if *first >= next_sequence && index > 0 {
            fs::remove_file(path).map_err(io_error(path))?;
            continue;
        }
        let mut reader = SegmentReader::open(path)?;
        let mut sequence = *first;
        let cut = loop {
            let offset = reader.offset();
            if sequence >= next_sequence {
                break Some(offset);
            }
            match reader.next_record()? {
                Record::Frame(_) => sequence += 1,
                Record::End => break None,
                Record::Bad { offset, .. } => break Some(offset),
            }
        };
        if let Some(offset) = cut {
            let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
            file.set_len(offset).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
        }
        break;
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Creates a segment file with its header; with `sync`, durably (file and directory
/// synced).
fn create_segment(
    dir: &Path,
    session_id: u64,
    first_sequence: u64,
    sync: bool,
) -> Result<File, JournalError> {
    let path = segment_path(dir, first_sequence);
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_error(&path))?;
    file.write_all(&encode_header(session_id, first_sequence)).map_err(io_error(&path))?;
    if sync {
        file.sync_all().map_err(io_error(&path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    }
    Ok(file)
}

/// Reads events from a journal directory from a given sequence, across segments.
/// Used by the replay service, tools and the disk consumer. It stops quietly at a
/// torn tail (the writer may be mid-append) and fails on corruption elsewhere.
pub struct JournalReader {
    segments: Vec<(u64, PathBuf)>,
    next_segment: usize,
    current: Option<SegmentReader>,
    next_sequence: u64,
    session_id: Option<u64>,
}

impl JournalReader {
    /// A reader positioned at `from_sequence`.
    pub fn open(dir: &Path, from_sequence: u64) -> Result<JournalReader, JournalError> {
        let segments = list_segments(dir)?;
        // Start in the last segment whose first sequence is at or before `from`.
        let start = segments.iter().rposition(|(first, _)| *first <= from_sequence).unwrap_or(0);
        // Open the starting segment now: its header gives the session at once, even
        // to a caller that reads no event.
        let current = match segments.get(start) {
            Some((_, path)) => Some(SegmentReader::open(path)?),
            None => None,
        };
        let session_id = current.as_ref().map(SegmentReader::session_id);
        Ok(JournalReader {
            next_segment: start + usize::from(current.is_some()),
            segments,
            current,
            next_sequence: from_sequence,
            session_id,
        })
    }

    /// The session of the journal (known once a segment is open).
    pub fn session_id(&self) -> Option<u64> {
        self.session_id
    }

    /// The next event frame at or after the start, in order; `None` at the end.
    pub fn next_frame(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, JournalError> {
        loop {
            if self.current.is_none() {
                let Some((_, path)) = self.segments.get(self.next_segment) else { return Ok(None) };
                let reader = SegmentReader::open(path)?;
                if let Some(session) = self.session_id {
                    if session != reader.session_id() {
                        return Err(JournalError::Corrupt {
                            path: path.clone(),
                            offset: 0,
                            reason: format!("session {} differs from {session}", reader.session_id()),
                        });
                    }
                }
                self.session_id = Some(reader.session_id());
                self.current = Some(reader);
                self.next_segment += 1;
            }
            let reader = self.current.as_mut().expect("set above");
            let offset = reader.offset();
            let last = self.next_segment == self.segments.len();
            match reader.next_record()? {
                Record::End => self.current = None,
                Record::Bad { at_tail: true, .. } if last => return Ok(None),
                Record::Bad { offset, reason, .. } => {
                    return Err(JournalError::Corrupt {
                        path: reader.path().to_path_buf(),
                        offset,
                        reason: reason.into(),
                    });
                }
                Record::Frame(frame) => {
                    let Some(sequence) = event_sequence(frame) else {
                        return Err(JournalError::Corrupt {
                            path: reader.path().to_path_buf(),
                            offset,
                            reason: "record is not an event".into(),
                        });
                    };
                    if sequence < self.next_sequence {
                        continue;
                    }
                    if sequence != self.next_sequence {
                        return Err(JournalError::Corrupt {
                            path: reader.path().to_path_buf(),
                            offset,
                            reason: format!("event {sequence} where {} belongs", self.next_sequence),
                        });
                    }
                    out.clear();
                    out.extend_from_slice(frame);
                    self.next_sequence += 1;
                    return Ok(Some(sequence));
                }
            }
        }
    }
}
