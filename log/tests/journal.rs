//! Journal recovery: a torn or corrupt tail is truncated, corruption anywhere else
//! stops start-up with the file and offset.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use ledgerbus_log::journal::{list_segments, Durability, JournalError, JournalReader, JournalWriter};
use ledgerbus_transport::sim::event_frame;

fn write_events(dir: &Path, count: u64, segment_size_max: u64) -> u64 {
    let (mut journal, recovered) =
        JournalWriter::open(dir, Durability::Os, segment_size_max, 42, ledgerbus_log::journal::skip_events)
            .unwrap();
    let first = recovered.next_sequence;
    for sequence in first..first + count {
        journal.append(&event_frame(sequence));
        if sequence % 100 == 0 {
            let _ = journal.commit().unwrap();
        }
    }
    let _ = journal.commit().unwrap();
    journal.session_id()
}

fn reopen(dir: &Path) -> Result<(u64, Vec<u64>), JournalError> {
    let mut seen = Vec::new();
    let (_, recovered) = JournalWriter::open(dir, Durability::Os, 1 << 30, 7, |frame| {
        seen.push(ledgerbus_log::journal::event_sequence(frame).unwrap());
        Ok::<(), std::convert::Infallible>(())
    })?;
    Ok((recovered.next_sequence, seen))
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    list_segments(dir).unwrap().pop().unwrap().1
}

#[test]
fn events_survive_reopen_across_segments_and_keep_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let session = write_events(dir.path(), 1_000, 16 << 10);
    assert!(list_segments(dir.path()).unwrap().len() > 3, "small segments roll");
    let (next, seen) = reopen(dir.path()).unwrap();
    assert_eq!(next, 1_001);
    assert!(seen.iter().copied().eq(1..=1_000));
    // Appending continues the same log.
    assert_eq!(write_events(dir.path(), 10, 16 << 10), session);
    let mut reader = JournalReader::open(dir.path(), 995).unwrap();
    let mut frame = Vec::new();
    let mut got = Vec::new();
    while let Some(sequence) = reader.next_frame(&mut frame).unwrap() {
        assert_eq!(frame, event_frame(sequence));
        got.push(sequence);
    }
    assert!(got.into_iter().eq(995..=1_010));
}

#[test]
fn a_torn_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 50, 1 << 30);
    let path = last_segment(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 30).unwrap();
    let (next, seen) = reopen(dir.path()).unwrap();
    assert_eq!(next, 50, "the half-written 50th event is gone");
    assert_eq!(seen.len(), 49);
    // And the journal is writable again at the right place.
    write_events(dir.path(), 1, 1 << 30);
    assert_eq!(reopen(dir.path()).unwrap().0, 51);
}

#[test]
fn a_flipped_byte_in_the_last_frame_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 50, 1 << 30);
    let path = last_segment(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    flip(&path, len - 5);
    let (next, _) = reopen(dir.path()).unwrap();
    assert_eq!(next, 50);
}

#[test]
fn a_flipped_byte_in_the_middle_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 50, 1 << 30);
    let path = last_segment(dir.path());
    // Record 10: 32-byte header + 9 records of (8 + frame) bytes, then inside the frame.
    let offset = 32 + 9 * (8 + event_frame(1).len() as u64);
    flip(&path, offset + 20);
    match reopen(dir.path()) {
        Err(JournalError::Corrupt { path: bad, offset: at, reason }) => {
            assert_eq!(bad, path);
            assert_eq!(at, offset);
            assert!(reason.contains("CRC"), "{reason}");
            let message = JournalError::Corrupt { path: bad, offset: at, reason }.to_string();
            assert!(message.contains(&format!("offset {offset}")), "{message}");
        }
        other => panic!("expected corruption to be refused, got {other:?}"),
    }
}

fn flip(path: &Path, offset: u64) {
    let mut file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset)).unwrap();
    std::io::Read::read_exact(&mut file, &mut byte).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&[byte[0] ^ 0x55]).unwrap();
}

#[test]
fn truncation_drops_a_suffix_across_segments_and_appending_continues_there() {
    let dir = tempfile::tempdir().unwrap();
    let session = write_events(dir.path(), 1_000, 16 << 10);
    let segments_before = list_segments(dir.path()).unwrap().len();
    let (mut journal, _) =
        JournalWriter::open(dir.path(), Durability::Os, 16 << 10, 9, ledgerbus_log::journal::skip_events)
            .unwrap();
    journal.truncate(400).unwrap();
    assert!(list_segments(dir.path()).unwrap().len() < segments_before, "later segments deleted");
    assert_eq!(journal.next_sequence(), 400);
    for sequence in 400..420 {
        journal.append(&event_frame(sequence));
    }
    let _ = journal.commit().unwrap();
    drop(journal);
    let (next, seen) = reopen(dir.path()).unwrap();
    assert_eq!(next, 420);
    assert!(seen.iter().copied().eq(1..420));
    // Down to nothing: the first segment stays, with the log's session.
    ledgerbus_log::journal::truncate_dir(dir.path(), 1).unwrap();
    assert_eq!(reopen(dir.path()).unwrap(), (1, vec![]));
    assert_eq!(write_events(dir.path(), 5, 16 << 10), session);
}
