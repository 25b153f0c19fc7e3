//! The sequencer in-process: gateways authenticate, commands are decided and
//! answered, events reach a subscriber on the bus, the replay service serves them,
//! and a restart recovers the same state and session.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};
use ledgerbus_log::replay_client::replay;
use ledgerbus_protocol::blocking::SequencerClient;
use ledgerbus_protocol::Decided;
use ledgerbus_sequencer::{start, SequencerConfig};
use ledgerbus_transport::driver::{socket, SocketOptions, Subscriber};
use ledgerbus_transport::{BusKey, BusKeys, BusSecurity, ReceiverConfig};

const SECRET: &[u8] = b"a-test-secret-of-some-length";

fn bus_keys() -> std::sync::Arc<BusKeys> {
    std::sync::Arc::new(BusKeys::new(vec![BusKey::from_bytes([7; 32])]).unwrap())
}

/// A receiver holding the test's bus key.
fn receiver() -> ReceiverConfig {
    ReceiverConfig { security: BusSecurity::Aead(bus_keys()), instance: 1, ..ReceiverConfig::default() }
}

/// A local sequencer configuration on the test's bus key.
fn local(dir: &std::path::Path, targets: Vec<std::net::SocketAddrV4>) -> SequencerConfig {
    let mut config = SequencerConfig::local(dir.to_path_buf(), targets, SECRET);
    config.bus_keys = bus_keys();
    config.sender.security = BusSecurity::Aead(bus_keys());
    config
}

fn account(correlation: u64, id: u128, negative: bool) -> CreateAccount {
    CreateAccount {
        correlation_id: correlation.into(),
        id: id.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: (if negative { account_flags::ALLOW_NEGATIVE } else { 0 }).into(),
        ..Default::default()
    }
}

fn transfer(correlation: u64, id: u128, debit: u128, credit: u128, amount: u64, linked: bool) -> Transfer {
    Transfer {
        correlation_id: correlation.into(),
        id: id.into(),
        debit_account_id: debit.into(),
        credit_account_id: credit.into(),
        amount: amount.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: (if linked { transfer_flags::LINKED } else { 0 }).into(),
        ..Default::default()
    }
}

fn results(client: &mut SequencerClient, count: usize) -> Vec<Decided> {
    client.flush().unwrap();
    (0..count).map(|_| Decided::read(client.read_reply().unwrap()).unwrap()).collect()
}

#[test]
fn decide_publish_replay_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut subscriber =
        Subscriber::new(receiver(), 1, None, loopback, None, loopback, SocketOptions::default()).unwrap();
    let target = socket::ipv4(subscriber.local_addr().unwrap()).unwrap();
    let mut config = local(dir.path(), vec![target]);
    config.metrics_listen = Some(loopback);
    let sequencer = start(config).unwrap();
    subscriber.set_sender_control(sequencer.control_addr).unwrap();

    let mut client = SequencerClient::connect(sequencer.gateway_addr, SECRET, 1).unwrap();
    assert_eq!(client.next_sequence, 1);
    client.send(&account(1, 1, true)).unwrap();
    client.send(&account(2, 2, false)).unwrap();
    client.send(&account(3, 3, false)).unwrap();
    client.send(&transfer(4, 10, 1, 2, 100, false)).unwrap();
    client.send(&transfer(5, 11, 2, 3, 500, false)).unwrap(); // overdraft
    client.send(&transfer(6, 12, 2, 3, 60, true)).unwrap(); // chain of two: 60 + 50 > 100
    client.send(&transfer(7, 13, 2, 1, 50, false)).unwrap();
    client.send(&transfer(8, 10, 1, 2, 100, false)).unwrap(); // retry of 10
    let got = results(&mut client, 8);
    let codes: Vec<ResultCode> = got.iter().map(|r| r.result).collect();
    assert_eq!(
        codes,
        [
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::InsufficientFunds,
            ResultCode::LinkedEventFailed,
            ResultCode::InsufficientFunds,
            ResultCode::Exists
        ]
    );
    assert_eq!(
        got.iter().map(|r| r.correlation_id).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>(),
        "correlation ids echo"
    );
    assert_eq!(
        got.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>(),
        "gap-free sequences"
    );

    // The events reach the bus in order.
    let mut delivered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.len() < 8 && Instant::now() < deadline {
        subscriber.poll(Duration::from_millis(10), &mut |sequence, _| delivered.push(sequence)).unwrap();
    }
    assert_eq!(delivered, (1..=8).collect::<Vec<_>>());

    // The replay service serves the same events.
    let mut replayed = Vec::new();
    let (next, session) = replay(sequencer.replay_addr, &bus_keys().replay_key(), 0, 3, 0, |sequence, _| {
        replayed.push(sequence);
        Ok(())
    })
    .unwrap();
    assert_eq!(replayed, (3..=8).collect::<Vec<_>>());
    assert_eq!(next, 9);
    assert_eq!(session, sequencer.session_id);

    // Without the bus key, the replay service serves nothing.
    let stranger = BusKeys::new(vec![BusKey::from_bytes([8; 32])]).unwrap().replay_key();
    let mut leaked = 0;
    let refused = replay(sequencer.replay_addr, &stranger, 0, 1, 0, |_, _| {
        leaked += 1;
        Ok(())
    });
    assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(leaked, 0);
    {
        // A bare request, as before authentication existed, gets the challenge only.
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(sequencer.replay_addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = [0u8; 64];
        let request_size = ledgerbus_codec::encode(
            &ledgerbus_codec::messages::ReplayRequest {
                session_id: 0.into(),
                from_sequence: 1.into(),
                to_sequence: 0.into(),
            },
            &mut request,
        )
        .unwrap();
        stream.write_all(&request[..request_size]).unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        assert_eq!(
            got.len(),
            <ledgerbus_codec::messages::Challenge as ledgerbus_codec::Message>::FRAME_SIZE,
            "only the challenge: {got:?}"
        );
    }

    // Prometheus metrics: events, last sequence, the consumer's position.
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        subscriber.poll(Duration::from_millis(5), &mut |_, _| {}).unwrap();
        text = http_get(sequencer.metrics_addr.unwrap(), "/metrics");
        if text.contains("ledgerbus_consumer_position{receiver_id=\"1\"") && text.contains("} 8\n") {
            break;
        }
    }
    assert!(text.contains("ledgerbus_last_sequence 8"), "{text}");
    assert!(text.contains("ledgerbus_events_total 8"), "{text}");
    assert!(text.contains("ledgerbus_rejected_total 3"), "{text}");
    assert!(text.contains("ledgerbus_fsync_seconds_count"), "{text}");
    assert!(text.contains("ledgerbus_consumer_lag_events{receiver_id=\"1\""), "{text}");

    // Wrong secret: refused.
    let refused = SequencerClient::connect(sequencer.gateway_addr, b"not-the-secret-at-all", 2);
    assert!(refused.is_err());

    let session_before = sequencer.session_id;
    drop(client);
    sequencer.stop().unwrap();

    // Restart: same session, same state, sequence continues.
    let sequencer = start(local(dir.path(), vec![target])).unwrap();
    assert_eq!(sequencer.session_id, session_before);
    assert_eq!(sequencer.recovered_events, 8);
    let mut client = SequencerClient::connect(sequencer.gateway_addr, SECRET, 1).unwrap();
    assert_eq!(client.next_sequence, 9);
    client.send(&transfer(9, 10, 1, 2, 100, false)).unwrap();
    client.send(&transfer(10, 14, 2, 3, 100, false)).unwrap();
    let got = results(&mut client, 2);
    assert_eq!(got[0].result, ResultCode::Exists, "applied before the restart");
    assert_eq!(got[1].result, ResultCode::Ok, "balance of 100 recovered");
    assert_eq!(got[1].sequence, 10);
}

fn http_get(address: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[test]
fn naks_older_than_the_ring_are_served_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    // A subscriber address nobody listens on yet: the first events are lost to it.
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let target = socket::ipv4(free).unwrap();
    let mut config = local(dir.path(), vec![target]);
    config.sender.ring_datagrams = 16;
    let sequencer = start(config).unwrap();
    let mut client = SequencerClient::connect(sequencer.gateway_addr, SECRET, 1).unwrap();
    client.send(&account(1, 1, true)).unwrap();
    client.send(&account(2, 2, false)).unwrap();
    for id in 0..2_000 {
        client.send(&transfer(id, 100 + u128::from(id), 1, 2, 1, false)).unwrap();
    }
    results(&mut client, 2_002);

    // Now the subscriber comes up, from sequence 1: 2,002 events, far more than 16
    // datagrams, must come from the journal through NAKs, not a bulk replay.
    let mut subscriber =
        Subscriber::new(receiver(), 1, None, free, None, sequencer.control_addr, SocketOptions::default())
            .unwrap();
    let mut delivered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.len() < 2_002 && Instant::now() < deadline {
        let event =
            subscriber.poll(Duration::from_millis(10), &mut |sequence, _| delivered.push(sequence)).unwrap();
        assert!(event.is_none(), "no replay signal expected, got {event:?}");
    }
    assert_eq!(delivered, (1..=2_002).collect::<Vec<u64>>());
}

#[test]
fn hostile_bytes_on_the_gateway_port_close_only_that_connection() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sequencer = start(local(dir.path(), vec![socket::ipv4(free).unwrap()])).unwrap();
    let closed = |mut stream: std::net::TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = [0u8; 256];
        // Drain whatever was sent (the challenge), then expect end of stream.
        loop {
            match stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };

    // Garbage instead of the handshake answer.
    let mut stream = std::net::TcpStream::connect(sequencer.gateway_addr).unwrap();
    stream.write_all(&[0xFF; 300]).unwrap();
    assert!(closed(stream), "garbage before authentication closes the connection");

    // A command before authenticating is not a valid answer either.
    let mut stream = std::net::TcpStream::connect(sequencer.gateway_addr).unwrap();
    let mut bytes = [0u8; 128];
    let size = ledgerbus_codec::encode(&account(1, 5, false), &mut bytes).unwrap();
    stream.write_all(&bytes[..size]).unwrap();
    assert!(closed(stream), "commands are not read before authentication");

    // After authenticating, a malformed frame closes that connection only.
    let mut bad = SequencerClient::connect(sequencer.gateway_addr, SECRET, 9).unwrap();
    let mut good = SequencerClient::connect(sequencer.gateway_addr, SECRET, 10).unwrap();
    bad.send(&ledgerbus_codec::messages::Heartbeat {
        next_sequence: 1.into(),
        oldest_retained_sequence: 1.into(),
    })
    .unwrap();
    bad.flush().unwrap();
    assert!(bad.read_reply().is_err(), "a non-command frame closes the connection");
    good.send(&account(1, 5, false)).unwrap();
    assert_eq!(results(&mut good, 1)[0].result, ResultCode::Ok, "other gateways are unaffected");
    assert!(sequencer.metrics.bad_packets.get() >= 3);
    assert!(sequencer.metrics.gateways_refused.get() >= 2);
}
