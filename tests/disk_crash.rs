//! Kill -9 the disk consumer in the middle of a stream and restart it: it resumes
//! from its snapshot and journal, fetches the rest, and ends with exactly the same
//! events (byte for byte) and state hash as the sequencer.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ledgerbus_client::{Client, Command};
use ledgerbus_codec::account_flags;
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_log::journal::JournalReader;

const TRANSFERS: u64 = 60_000;

#[test]
fn disk_consumer_survives_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let progress = Arc::new(AtomicU64::new(0));
    let gateway = cluster.gateway_tcp;
    let sent = Arc::clone(&progress);
    let load = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let client = Client::connect(gateway, API_KEY).await.unwrap();
            let accounts: Vec<Command> = (1..=10u128)
                .map(|id| {
                    Command::CreateAccount(CreateAccount {
                        correlation_id: 0.into(),
                        id: id.into(),
                        ledger: 1.into(),
                        code: 1.into(),
                        flags: (if id == 1 { account_flags::ALLOW_NEGATIVE } else { 0 }).into(),
                        ..Default::default()
                    })
                })
                .collect();
            client.submit(&accounts).await.unwrap();
            for chunk in 0..TRANSFERS / 500 {
                let commands: Vec<Command> = (0..500u64)
                    .map(|i| {
                        let n = chunk * 500 + i;
                        Command::Transfer(Transfer {
                            correlation_id: n.into(),
                            id: (1_000 + u128::from(n)).into(),
                            debit_account_id: 1u128.into(),
                            credit_account_id: (2 + u128::from(n % 9)).into(),
                            amount: (1 + n % 10).into(),
                            ledger: 1.into(),
                            code: 1.into(),
                            flags: 0.into(),
                            ..Default::default()
                        })
                    })
                    .collect();
                client.submit(&commands).await.unwrap();
                sent.fetch_add(500, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    });

    // Let a third of the stream (and at least one snapshot) land, then kill -9.
    wait_until("a third of the stream", || progress.load(Ordering::Relaxed) >= TRANSFERS / 3);
    cluster.disk_process.as_mut().unwrap().kill_now();
    std::thread::sleep(Duration::from_millis(300));
    cluster.disk_process = Some(cluster.spawn_consumer("disk"));
    load.join().unwrap();

    let (sequence, disk_hash, sequencer_hash) = cluster.converge(cluster.disk_http);
    assert_eq!(sequence, TRANSFERS + 10);
    assert_eq!(disk_hash, sequencer_hash, "same state hash as the sequencer");
    let snapshots = std::fs::read_dir(dir.path().join("disk-consumer").join("snapshots")).unwrap().count();
    assert!(snapshots > 0, "the disk consumer wrote snapshots");

    // Exactly the same events, byte for byte, no gap, no duplicate.
    let mut ours = JournalReader::open(&dir.path().join("disk-consumer").join("journal"), 1).unwrap();
    let mut theirs = JournalReader::open(&dir.path().join("sequencer"), 1).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut count = 0;
    loop {
        let (x, y) = (ours.next_frame(&mut a).unwrap(), theirs.next_frame(&mut b).unwrap());
        assert_eq!(x, y, "same sequence");
        if x.is_none() {
            break;
        }
        assert_eq!(a, b, "event {x:?} differs");
        count += 1;
    }
    assert_eq!(count, TRANSFERS + 10);
}
