//! The SQL sink against an embedded SQLite file, without a bus: exactly once across a
//! reopen, nothing kept that was not committed, a second writer and another consumer
//! id refused, rows edited behind its back refused at start, hostile events refused
//! with nothing written.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ledgerbus_codec::messages::{AccountEvent, CreateAccount, Transfer, TransferEvent};
use ledgerbus_codec::{account_flags, encode_compact, ResultCode};
use ledgerbus_consumers::error::SinkError;
use ledgerbus_consumers::follow::{Progress, Sink};
use ledgerbus_consumers::sql::sink::SqlMetrics;
use ledgerbus_consumers::sql::verify::verify;
use ledgerbus_consumers::sql::{DatabaseUrl, SqlConfig, SqlError, SqlSink};
use ledgerbus_ledger::{Ledger, Replica, TransferIds};

const SESSION: u64 = 0x5E55_1011;

/// `count` events: two accounts (the first may go negative), then transfers
/// between them, one in ten of them rejected.
fn events(count: u64) -> Vec<u8> {
    let mut frames = Vec::new();
    let mut buffer = [0u8; 256];
    for sequence in 1..=count {
        let timestamp = 1_000 + sequence;
        let size = if sequence <= 2 {
            let command = CreateAccount {
                id: u128::from(sequence).into(),
                ledger: 1.into(),
                code: 1.into(),
                flags: (if sequence == 1 { account_flags::ALLOW_NEGATIVE } else { 0 }).into(),
                ..Default::default()
            };
            encode_compact(
                &AccountEvent::deciding(&command, sequence, timestamp, ResultCode::Ok),
                &mut buffer,
            )
        } else {
            let command = Transfer {
                id: (u128::from(sequence) << 64 | 7).into(),
                debit_account_id: 1u128.into(),
                credit_account_id: 2u128.into(),
                amount: sequence.into(),
                ledger: 1.into(),
                code: 3.into(),
                ..Default::default()
            };
            let result = if sequence % 10 == 0 { ResultCode::DebitAccountNotFound } else { ResultCode::Ok };
            encode_compact(&TransferEvent::deciding(&command, sequence, timestamp, result), &mut buffer)
        };
        frames.extend_from_slice(&buffer[..size.unwrap()]);
    }
    frames
}

fn frames_between(all: &[u8], from: u64, to: u64) -> Vec<u8> {
    ledgerbus_codec::Frames::new(all)
        .map_while(Result::ok)
        .skip(from as usize - 1)
        .take((to - from + 1) as usize)
        .flatten()
        .copied()
        .collect()
}

fn hash_of(frames: &[u8]) -> u64 {
    let mut replica = Replica::new(Ledger::new());
    for frame in ledgerbus_codec::Frames::new(frames).map_while(Result::ok) {
        replica.apply(frame, TransferIds::Skip).unwrap();
    }
    replica.log_hash()
}

fn open(url: &str, consumer: &str, batch: usize) -> Result<SqlSink, SqlError> {
    let config = SqlConfig {
        database: DatabaseUrl::parse(url).unwrap(),
        consumer_id: consumer.into(),
        batch_events_max: batch,
        batch_delay: Duration::from_secs(3600),
    };
    SqlSink::open(
        config,
        Arc::new(Progress::new("sql")),
        Arc::new(SqlMetrics::default()),
        Arc::new(AtomicBool::new(false)),
    )
}

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("ledger.db").display())
}

#[test]
fn exactly_once_across_a_reopen_and_nothing_uncommitted_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let all = events(150);
    let mut sink = open(&url, "3", 40).unwrap();
    sink.start_session(SESSION).unwrap();
    sink.apply_batch(&frames_between(&all, 1, 100)).unwrap();
    sink.commit().unwrap();
    // 100 applied, 80 written (two full batches); the last 20 wait for their batch.
    assert_eq!((sink.next_sequence(), sink.kept_through()), (101, 80));
    drop(sink); // a crash: the 20 were never committed

    let mut sink = open(&url, "3", 40).unwrap();
    assert_eq!((sink.next_sequence(), sink.kept_through()), (81, 80), "resumes where the database is");
    assert_eq!(sink.session(), Some(SESSION));
    sink.apply_batch(&frames_between(&all, 81, 150)).unwrap();
    sink.flush().unwrap();
    assert_eq!(sink.kept_through(), 150);
    assert_eq!(sink.position().state_hash, hash_of(&all), "the sequencer's hash");
    drop(sink);

    let mut db = DatabaseUrl::parse(&url).unwrap().connect().unwrap();
    let found = verify(db.as_mut(), &mut |_| {}).unwrap();
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!((found.last_sequence, found.state_hash, found.accounts), (150, hash_of(&all), 2));
}

#[test]
fn a_second_writer_and_another_consumer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let all = events(20);
    let mut first = open(&url, "3", 5).unwrap();
    first.start_session(SESSION).unwrap();
    let mut second = open(&url, "3", 5).unwrap();
    first.apply_batch(&frames_between(&all, 1, 10)).unwrap();
    let refused = second.apply_batch(&frames_between(&all, 1, 10)).unwrap_err();
    assert!(
        matches!(refused, SinkError::Sql(SqlError::Conflict { expected: 0, found: Some(10) })),
        "{refused}"
    );
    let held = open(&url, "4", 5).err().expect("another consumer id is refused");
    assert!(matches!(&held, SqlError::Held { holder } if holder == "3"), "{held}");
}

#[test]
fn rows_edited_behind_its_back_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let mut sink = open(&url, "3", 10).unwrap();
    sink.start_session(SESSION).unwrap();
    sink.apply_batch(&events(30)).unwrap();
    sink.flush().unwrap();
    drop(sink);
    let connection = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    connection.execute_batch("UPDATE transfers SET amount = '999' WHERE sequence = 7").unwrap();
    drop(connection);
    let refused = open(&url, "3", 10).err().expect("a drifted projection does not start");
    assert!(matches!(refused, SqlError::Drift(_)), "{refused}");
}

#[test]
fn hostile_events_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir);
    let mut sink = open(&url, "3", 1).unwrap();
    sink.start_session(SESSION).unwrap();
    let all = events(3);
    // An event out of place, a reserved byte set, bytes that are not a frame, a command.
    let mut reserved = frames_between(&all, 1, 1);
    reserved[8 + 42] = 1; // AccountEvent.reserved
    let command = {
        let mut buffer = [0u8; 128];
        let size = ledgerbus_codec::encode(&Transfer::default(), &mut buffer).unwrap();
        buffer[..size].to_vec()
    };
    for hostile in [frames_between(&all, 2, 2), reserved, vec![0xFF; 40], command] {
        assert!(sink.apply_batch(&hostile).is_err());
        assert_eq!((sink.next_sequence(), sink.kept_through()), (1, 0));
    }
    sink.apply_batch(&all).unwrap();
    assert_eq!(sink.kept_through(), 3, "the stream goes on after a refusal");
}
