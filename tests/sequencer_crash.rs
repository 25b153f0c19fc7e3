//! The sequencer as a real process: kill -9 in the middle of a stream of transfers,
//! restart, and check that every acknowledged command is in the journal and in the
//! state with the same sequence, that no sequence is skipped or reused, and that
//! commands sent again with the same ids get `exists`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ledgerbus_codec::messages::{CreateAccount, Transfer, TransferEvent};
use ledgerbus_codec::{account_flags, decode, ResultCode};
use ledgerbus_log::journal::JournalReader;
use ledgerbus_protocol::blocking::SequencerClient;
use ledgerbus_protocol::Decided;

const SECRET: &str = "crash-test-secret-0123456789";

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Ports {
    gateway: SocketAddr,
    control: SocketAddr,
    replay: SocketAddr,
    metrics: SocketAddr,
    subscriber: SocketAddr,
}

/// A child process that is killed (by PID, ours) when dropped, even if the test fails.
struct Process(Child);

impl Process {
    /// SIGKILL, then reap.
    fn kill_now(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_now();
    }
}

fn spawn(dir: &Path, ports: &Ports) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args(["--log-level", "warn", "sequencer", "--data-dir"])
        .arg(dir)
        .args(["--gateway-listen", &ports.gateway.to_string()])
        .args(["--control-listen", &ports.control.to_string()])
        .args(["--replay-listen", &ports.replay.to_string()])
        .args(["--metrics-listen", &ports.metrics.to_string()])
        .args(["--subscribers", &ports.subscriber.to_string()])
        .args(["--durability", "fsync"])
        .env("LEDGERBUS_SEQUENCER_SECRET", SECRET)
        .env("LEDGERBUS_BUS_KEY", "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ledgerbus sequencer");
    Process(child)
}

fn connect(address: SocketAddr) -> SequencerClient {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match SequencerClient::connect(address, SECRET.as_bytes(), 1) {
            Ok(client) => return client,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("sequencer did not come up: {error}"),
        }
    }
}

fn transfer(id: u128, amount: u64) -> Transfer {
    Transfer {
        correlation_id: (id as u64).into(),
        id: id.into(),
        debit_account_id: 1u128.into(),
        credit_account_id: 2u128.into(),
        amount: amount.into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: 0.into(),
        ..Default::default()
    }
}

#[test]
fn kill_dash_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports {
        gateway: free_tcp(),
        control: free_udp(),
        replay: free_tcp(),
        metrics: free_tcp(),
        subscriber: free_udp(),
    };
    let mut child = spawn(dir.path(), &ports);
    let mut client = connect(ports.gateway);
    for (id, flags) in [(1u128, account_flags::ALLOW_NEGATIVE), (2, 0)] {
        client
            .send(&CreateAccount {
                correlation_id: 0.into(),
                id: id.into(),
                ledger: 1.into(),
                code: 1.into(),
                flags: flags.into(),
                ..Default::default()
            })
            .unwrap();
    }
    client.flush().unwrap();
    for _ in 0..2 {
        assert_eq!(Decided::read(client.read_reply().unwrap()).unwrap().result, ResultCode::Ok);
    }

    // Stream transfers in windows; kill -9 once enough have been acknowledged.
    let mut acknowledged: HashMap<u128, u64> = HashMap::new();
    let mut sent: u128 = 0;
    let mut killed = false;
    'stream: for _round in 0..10_000 {
        for _ in 0..500 {
            sent += 1;
            client.send(&transfer(1_000 + sent, 1 + (sent % 7) as u64)).unwrap();
        }
        client.flush().unwrap();
        for _ in 0..500 {
            let Ok(frame) = client.read_reply() else { break 'stream };
            let Decided { correlation_id: correlation, sequence, result, .. } = Decided::read(frame).unwrap();
            assert_eq!(result, ResultCode::Ok);
            acknowledged.insert(u128::from(correlation), sequence);
            if acknowledged.len() == 20_000 && !killed {
                // Keep commands in flight while the process dies.
                for _ in 0..2_000 {
                    sent += 1;
                    let _ = client.send(&transfer(1_000 + sent, 1));
                }
                let _ = client.flush();
                child.kill_now(); // SIGKILL
                killed = true;
            }
        }
        if killed {
            break;
        }
    }
    assert!(killed, "the sequencer was killed mid-stream");
    drop(client);

    // Restart on the same data directory.
    let mut child = spawn(dir.path(), &ports);
    let mut client = connect(ports.gateway);
    let next_after_restart = client.next_sequence;

    // Every acknowledged transfer is in the journal with its sequence; no gaps.
    let mut reader = JournalReader::open(dir.path(), 1).unwrap();
    let mut frame = Vec::new();
    let mut journaled: HashMap<u128, u64> = HashMap::new();
    let mut expected = 1;
    while let Some(sequence) = reader.next_frame(&mut frame).unwrap() {
        assert_eq!(sequence, expected, "no sequence skipped");
        expected += 1;
        if let Ok((event, _)) = decode::<TransferEvent>(&frame) {
            assert!(journaled.insert(event.id.get(), sequence).is_none(), "no transfer applied twice");
        }
    }
    assert_eq!(expected, next_after_restart, "the restarted sequencer continues right after the journal");
    for (id, sequence) in &acknowledged {
        assert_eq!(
            journaled.get(id),
            Some(sequence),
            "acknowledged transfer {id} is durable with its sequence"
        );
    }

    // Everything sent, acknowledged or not, sent again with the same ids: applied
    // ones answer `exists`, lost ones apply now; nothing applies twice.
    let ids: Vec<u128> = (1..=sent).map(|n| 1_000 + n).collect();
    for chunk in ids.chunks(1_000) {
        for id in chunk {
            // The same fields as the first time: the burst sent while dying used amount 1.
            let n = id - 1_000;
            let amount = if n > sent - 2_000 { 1 } else { 1 + (n % 7) as u64 };
            client.send(&transfer(*id, amount)).unwrap();
        }
        client.flush().unwrap();
        for id in chunk {
            let Decided { sequence, result, .. } = Decided::read(client.read_reply().unwrap()).unwrap();
            if let Some(&journal_sequence) = journaled.get(id) {
                assert_eq!(
                    result,
                    ResultCode::Exists,
                    "transfer {id} (sequence {journal_sequence}) was applied"
                );
            } else {
                assert_eq!(result, ResultCode::Ok, "transfer {id} was never applied, so it applies now");
            }
            assert!(sequence >= next_after_restart, "new events get new sequences");
        }
    }
    child.kill_now();
}
