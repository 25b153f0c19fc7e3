//! Consumers against a real (in-process) sequencer on 127.0.0.1: they apply every
//! event once and in order, reach the sequencer's state hash, and a consumer started
//! after 100,000 events catches up through bulk replay and then follows live.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, ResultCode};
use ledgerbus_consumers::disk::DiskConfig;
use ledgerbus_consumers::follow::FollowConfig;
use ledgerbus_protocol::blocking::SequencerClient;
use ledgerbus_protocol::Decided;
use ledgerbus_sequencer::{start, Durability, SequencerConfig};
use ledgerbus_transport::driver::{socket, SocketOptions};
use ledgerbus_transport::ReceiverConfig;

const SECRET: &[u8] = b"consumer-test-secret-0123";

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

const QUERY_KEY: &str = "query-key-of-the-test";

/// A GET with the query key; the body as JSON, with the status under `"status"`.
fn http_get(address: SocketAddr, path: &str) -> Option<serde_json::Value> {
    http_get_as(address, path, Some(QUERY_KEY))
}

fn http_get_as(address: SocketAddr, path: &str, key: Option<&str>) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status: u64 = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1)?;
    let mut json: serde_json::Value = serde_json::from_str(body).ok()?;
    if let Some(object) = json.as_object_mut() {
        object.insert("status".into(), status.into());
    }
    Some(json)
}

fn follow_config(
    listen: SocketAddr,
    sequencer: &ledgerbus_sequencer::RunningSequencer,
    config: &SequencerConfig,
    id: u32,
) -> FollowConfig {
    FollowConfig {
        listen,
        multicast: None,
        sequencer_control: sequencer.control_addr,
        sequencer_replay: ledgerbus_consumers::follow::ReplayServices::one(sequencer.replay_addr),
        replay_key: config.bus_keys.replay_key(),
        receiver: ReceiverConfig {
            receiver_id: id,
            security: config.sender.security.clone(),
            instance: u64::from(id),
            ..ReceiverConfig::default()
        },
        socket: SocketOptions::default(),
        // The other integration tests run the default (`block`); these follow with
        // `backoff`, so its park-and-poll path meets loss, restarts and catch-up too.
        idle: ledgerbus_transport::idle::IdleStrategy::Backoff(Default::default()),
    }
}

fn send_transfers(client: &mut SequencerClient, from_id: u128, count: u128) {
    for chunk_start in (0..count).step_by(1_000) {
        let n = 1_000.min(count - chunk_start);
        for i in 0..n {
            let id = from_id + chunk_start + i;
            client
                .send(&Transfer {
                    correlation_id: 0.into(),
                    id: id.into(),
                    debit_account_id: (1 + id % 2).into(),
                    credit_account_id: (3 + id % 3).into(),
                    amount: (1 + (id % 5) as u64).into(),
                    ledger: 1.into(),
                    code: 1.into(),
                    flags: 0.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        client.flush().unwrap();
        for _ in 0..n {
            client.read_reply().unwrap();
        }
    }
}

fn wait_for(address: SocketAddr, sequence: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = http_get(address, "/status") {
            if status["last_sequence"].as_u64() == Some(sequence) {
                return status;
            }
            assert!(Instant::now() < deadline, "consumer at {status} never reached {sequence}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn consumers_follow_catch_up_and_match_the_sequencer() {
    let dir = tempfile::tempdir().unwrap();
    let (memory_udp, disk_udp, late_udp) = (free_udp(), free_udp(), free_udp());
    let targets = [memory_udp, disk_udp, late_udp].iter().map(|a| socket::ipv4(*a).unwrap()).collect();
    let mut config = SequencerConfig::local(dir.path().join("sequencer"), targets, SECRET);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.durability = Durability::Os;
    let sequencer = start(config.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    let memory_http = TcpListener::bind("127.0.0.1:0").unwrap();
    let memory_addr = memory_http.local_addr().unwrap();
    let memory_config = follow_config(memory_udp, &sequencer, &config, 1);
    let memory_stop = Arc::clone(&stop);
    let memory = std::thread::spawn(move || {
        ledgerbus_consumers::memory::run(
            memory_config,
            1 << 16,
            vec![QUERY_KEY.into()],
            memory_http,
            memory_stop,
        )
    });

    let disk_http = TcpListener::bind("127.0.0.1:0").unwrap();
    let disk_addr = disk_http.local_addr().unwrap();
    let disk_config = DiskConfig {
        data_dir: dir.path().join("disk"),
        durability: Durability::Os,
        snapshot_every: 30_000,
        segment_size_max: 1 << 20,
    };
    let disk_follow = follow_config(disk_udp, &sequencer, &config, 2);
    let disk_stop = Arc::clone(&stop);
    let disk = std::thread::spawn(move || {
        ledgerbus_consumers::disk::run(disk_config, disk_follow, disk_http, disk_stop)
    });

    let mut client = SequencerClient::connect(sequencer.gateway_addr, SECRET, 1).unwrap();
    for id in 1..=5u128 {
        let flags = if id <= 2 { account_flags::ALLOW_NEGATIVE } else { 0 };
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
    for _ in 0..5 {
        assert_eq!(Decided::read(client.read_reply().unwrap()).unwrap().result, ResultCode::Ok);
    }
    send_transfers(&mut client, 1_000, 100_000);
    let head = 100_005;

    let metrics = sequencer.metrics_addr.unwrap();
    let sequencer_status = wait_for(metrics, head);
    let memory_status = wait_for(memory_addr, head);
    let disk_status = wait_for(disk_addr, head);
    assert_eq!(memory_status["state_hash"], sequencer_status["state_hash"]);
    assert_eq!(disk_status["state_hash"], sequencer_status["state_hash"]);

    // A memory consumer started after 100,000 events catches up, then follows live.
    let late_http = TcpListener::bind("127.0.0.1:0").unwrap();
    let late_addr = late_http.local_addr().unwrap();
    let late_config = follow_config(late_udp, &sequencer, &config, 3);
    let late_stop = Arc::clone(&stop);
    let late = std::thread::spawn(move || {
        ledgerbus_consumers::memory::run(late_config, 1 << 16, vec![QUERY_KEY.into()], late_http, late_stop)
    });
    wait_for(late_addr, head);
    send_transfers(&mut client, 200_000, 1_000);
    let sequencer_status = wait_for(metrics, head + 1_000);
    for address in [memory_addr, disk_addr, late_addr] {
        let status = wait_for(address, head + 1_000);
        assert_eq!(status["state_hash"], sequencer_status["state_hash"], "{address}");
    }

    // The query API answers from the model.
    // Without the key, or with a wrong one, no data.
    for key in [None, Some("not-the-key")] {
        let refused = http_get_as(memory_addr, "/accounts/3", key).unwrap();
        assert_eq!(refused["status"], 401, "{refused}");
        assert!(refused.get("balance").is_none() && refused.get("credits_posted").is_none(), "{refused}");
    }
    let account = http_get(memory_addr, "/accounts/3").unwrap();
    assert_eq!(account["id"], "3");
    let transfer = http_get(late_addr, "/transfers/1000").unwrap();
    assert_eq!(transfer["amount"], "1");
    let history = http_get(memory_addr, "/accounts/3/transfers?limit=2").unwrap();
    assert_eq!(history["transfers"].as_array().unwrap().len(), 2);

    stop.store(true, Ordering::Release);
    for consumer in [memory, late] {
        consumer.join().unwrap().unwrap();
    }
    disk.join().unwrap().unwrap();
}
