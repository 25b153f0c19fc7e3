//! A journal written with schema version 1 (`tests/fixtures/journal-v1/`, made on
//! 2026-12-01 by `write_the_v1_fixture` below, with the code of that day) must replay
//! on every later version, bit for bit to the same state: same events, same balances,
//! same rolling hash. Do not regenerate the fixture with newer code: it is the old
//! writer's output that newer readers must keep reading.
//!
//! It holds accounts (with and without `allow_negative`), accepted and rejected
//! transfers (insufficient funds, unknown account, a retried id, a retry with other
//! fields), and linked chains that apply whole or not at all.

use std::path::{Path, PathBuf};

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, Frame, ResultCode};
use ledgerbus_ledger::{Ledger, Replica};
use ledgerbus_log::journal::{Durability, JournalReader, JournalWriter};
use ledgerbus_sequencer::core::{PendingBatch, SequencerCore};

/// The rolling log hash after the fixture's last event, as version 1 computed it.
const V1_STATE_HASH: u64 = 0x3067_a442_a56f_3247;
/// Events in the fixture.
const V1_EVENTS: u64 = 27;
/// The fixture's session.
const V1_SESSION: u64 = 0x0000_0000_0001_0001;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1")
}

fn account(id: u128, negative: bool) -> CreateAccount {
    CreateAccount {
        correlation_id: 0.into(),
        id: id.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: (if negative { account_flags::ALLOW_NEGATIVE } else { 0 }).into(),
        ..Default::default()
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u64, linked: bool) -> Transfer {
    Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: debit.into(),
        credit_account_id: credit.into(),
        amount: amount.into(),
        ledger: 840.into(),
        code: 7.into(),
        flags: (if linked { transfer_flags::LINKED } else { 0 }).into(),
        ..Default::default()
    }
}

/// The fixture's commands, decided by `core` at the fixture's time stamps: accounts,
/// top-ups, P2P payments with fee and tax legs, rejections, retries.
fn decide_the_scenario(core: &mut SequencerCore, batch: &mut PendingBatch) {
    let mut now = 1_764_547_200_000_000_000u64; // 2025-12-01, stamped 1 ms apart
    let mut tick = || {
        now += 1_000_000;
        now
    };
    core.decide_account(0, &account(1, true), tick(), batch); // settlement, may go negative
    core.decide_account(0, &account(2, false), tick(), batch);
    core.decide_account(0, &account(3, false), tick(), batch);
    core.decide_account(0, &account(4, false), tick(), batch);
    core.decide_account(0, &account(2, false), tick(), batch); // exists
    core.decide_account(0, &account(3, true), tick(), batch); // exists, other flags
    let singles = [
        transfer(100, 1, 2, 1_000, false),  // top-up
        transfer(101, 1, 3, 500, false),    // top-up
        transfer(102, 2, 3, 250, false),    // ok
        transfer(103, 3, 4, 10_000, false), // insufficient funds
        transfer(104, 2, 9, 5, false),      // unknown credit account
        transfer(102, 2, 3, 250, false),    // exists
        transfer(102, 2, 3, 251, false),    // exists, other amount
    ];
    for single in singles {
        core.decide_transfers(0, &[single], tick(), batch);
    }
    // A chain that applies whole: amount, fee, tax.
    let ok_chain =
        [transfer(200, 2, 4, 100, true), transfer(201, 2, 1, 3, true), transfer(202, 2, 1, 1, false)];
    core.decide_transfers(0, &ok_chain, tick(), batch);
    // A chain whose last leg overdraws: nothing of it applies.
    let failed_chain =
        [transfer(300, 4, 3, 50, true), transfer(301, 4, 1, 40, true), transfer(302, 4, 2, 1_000, false)];
    core.decide_transfers(0, &failed_chain, tick(), batch);
    // More plain traffic in both directions.
    for (i, (debit, credit)) in
        [(3, 2), (2, 3), (4, 2), (1, 4), (3, 1), (2, 1), (4, 3), (1, 2)].iter().enumerate()
    {
        core.decide_transfers(0, &[transfer(400 + i as u128, *debit, *credit, 7, false)], tick(), batch);
    }
}

/// Writes the fixture into `dir` with today's code (run once, by hand:
/// `LEDGERBUS_WRITE_V1_FIXTURE=DIR cargo test -p ledgerbus-sequencer --test journal_v1 -- --ignored`).
#[test]
#[ignore = "writes the committed fixture; only with the version-1 code"]
fn write_the_v1_fixture() {
    let dir =
        PathBuf::from(std::env::var("LEDGERBUS_WRITE_V1_FIXTURE").expect("LEDGERBUS_WRITE_V1_FIXTURE=DIR"));
    let (mut journal, _) = JournalWriter::open(
        &dir,
        Durability::Fsync,
        1 << 20,
        V1_SESSION,
        ledgerbus_log::journal::skip_events,
    )
    .unwrap();
    let mut core = SequencerCore::new(Replica::new(Ledger::with_capacity(16, 1_024)));
    let mut batch = PendingBatch::with_capacity(64);
    decide_the_scenario(&mut core, &mut batch);
    batch.append_to(&mut journal);
    let _ = journal.commit().unwrap();
    println!("events {} hash {:#018x}", core.next_sequence() - 1, core.log_hash());
}

/// Replays the committed fixture as the sequencer does at start.
fn replay() -> (Replica, u64) {
    let mut replica = Replica::new(Ledger::with_capacity(16, 1_024));
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let (_, recovered) =
        ledgerbus_sequencer::recovery::recover(copy.path(), Durability::Os, 1 << 20, 99, &mut replica)
            .unwrap();
    assert_eq!(recovered.session_id, V1_SESSION, "the journal keeps its session");
    (replica, recovered.events)
}

#[test]
fn a_version_1_journal_replays_to_the_same_state() {
    let (replica, events) = replay();
    assert_eq!(events, V1_EVENTS);
    assert_eq!(replica.next_sequence(), V1_EVENTS + 1);
    assert_eq!(replica.log_hash(), V1_STATE_HASH, "bit for bit the state version 1 reached");
    let ledger = replica.ledger();
    let balance = |id: u128| ledger.account(id).map(|a| a.balance());
    // 1: -1000 -500 +3 +1 -7(1→4) +7(3→1) +7(2→1) -7(1→2)
    assert_eq!(balance(1), Some(-1_496));
    assert_eq!(balance(2), Some(1_000 - 250 - 104 + 7 - 7 + 7 - 7 + 7));
    assert_eq!(balance(3), Some(500 + 250 - 7 + 7 - 7 + 7));
    assert_eq!(balance(4), Some(100 - 7 + 7 - 7));
    assert_eq!(ledger.account(9), None);
}

#[test]
fn every_frame_of_the_version_1_journal_still_decodes_with_its_results() {
    let mut reader = JournalReader::open(&fixture(), 1).unwrap();
    let mut frame = Vec::new();
    let mut results = Vec::new();
    while let Some(sequence) = reader.next_frame(&mut frame).unwrap() {
        let result = match Frame::decode(&frame).expect("a version-1 frame decodes").0 {
            Frame::AccountEvent(event) => (event.sequence.get(), event.result().unwrap()),
            Frame::TransferEvent(event) => (event.sequence.get(), event.result().unwrap()),
            other => panic!("not an event: {other:?}"),
        };
        assert_eq!(result.0, sequence);
        results.push(result.1);
    }
    assert_eq!(results.len() as u64, V1_EVENTS);
    let count = |code: ResultCode| results.iter().filter(|r| **r == code).count();
    assert_eq!(count(ResultCode::Exists), 2, "an account and a transfer retried");
    assert_eq!(count(ResultCode::ExistsWithDifferentFields), 2);
    assert!(count(ResultCode::LinkedEventFailed) >= 2, "the failed chain's other legs");
}

#[test]
fn todays_sequencer_decides_the_version_1_scenario_to_the_same_bytes() {
    // The seed's scenario keeps its results and balances: the same commands at the
    // same time stamps make the same events, byte for byte (plain commands are still
    // written as version 1 blocks), so the same rolling hash.
    let mut core = SequencerCore::new(Replica::new(Ledger::with_capacity(16, 1_024)));
    let mut batch = PendingBatch::with_capacity(64);
    decide_the_scenario(&mut core, &mut batch);
    assert_eq!(core.next_sequence(), V1_EVENTS + 1);
    assert_eq!(core.log_hash(), V1_STATE_HASH);
    let (replayed, _) = replay();
    assert_eq!(core.ledger().state_digest(), replayed.ledger().state_digest());
}

#[test]
fn a_version_2_sequencer_continues_a_version_1_journal() {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let mut replica = Replica::new(Ledger::with_capacity(16, 1_024));
    let (mut journal, _) =
        ledgerbus_sequencer::recovery::recover(copy.path(), Durability::Os, 1 << 20, 99, &mut replica)
            .unwrap();
    let mut core = SequencerCore::new(replica);
    let mut batch = PendingBatch::with_capacity(64);
    let now = 1_764_547_300_000_000_000u64;
    // Version 2 commands on top: a reservation with user data and a timeout, a
    // partial capture, a sweep.
    let mut hold = transfer(500, 2, 3, 300, false);
    hold.flags = transfer_flags::PENDING.into();
    hold.timeout = 60.into();
    hold.user_data_128 = 0xC0FFEEu128.into();
    core.decide_transfers(0, &[hold], now, &mut batch);
    let capture = Transfer {
        id: 501u128.into(),
        pending_id: 500u128.into(),
        amount: 120.into(),
        flags: transfer_flags::POST_PENDING.into(),
        ..Default::default()
    };
    core.decide_transfers(0, &[capture], now + 1, &mut batch);
    let mut sweep = transfer(502, 3, 4, u64::MAX, false);
    sweep.flags = transfer_flags::BALANCING_DEBIT.into();
    core.decide_transfers(0, &[sweep], now + 2, &mut batch);
    assert!(batch.replies().iter().all(|r| r.result == ResultCode::Ok), "{:?}", batch.replies());
    batch.append_to(&mut journal);
    let _ = journal.commit().unwrap();
    drop(journal);
    let (hash, digest) = (core.log_hash(), core.ledger().state_digest());
    assert_eq!(core.ledger().account(3).map(|a| a.balance()), Some(0), "the sweep took all of account 3");

    // A restart replays version 1 and version 2 events alike, to the same state.
    let mut restarted = Replica::new(Ledger::with_capacity(16, 1_024));
    let (_, recovered) =
        ledgerbus_sequencer::recovery::recover(copy.path(), Durability::Os, 1 << 20, 99, &mut restarted)
            .unwrap();
    assert_eq!(recovered.events, V1_EVENTS + 3);
    assert_eq!((restarted.log_hash(), restarted.ledger().state_digest()), (hash, digest));
    let hold = restarted.ledger().pending(500).expect("the reservation is remembered");
    assert_eq!((hold.state, hold.amount), (ledgerbus_ledger::PendingState::Posted, 300));
}
