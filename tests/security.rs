//! The security model against real processes on 127.0.0.1 (issue 10's findings):
//! forged and unauthenticated datagrams change nothing and get no answer, side ports
//! give nothing without a credential, the HTTP and TCP APIs enforce their limits, and
//! a sequencer that starts a new log is followed, not fatal.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ledgerbus_codec::messages::{Heartbeat, Nak, StatusMessage, TransferEvent};
use ledgerbus_codec::{Id128, PacketWriter, ResultCode};

fn transfer(id: u32, amount: u64) -> String {
    format!(
        r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":{amount},"ledger":1,"code":1}}"#
    )
}

fn session_of(cluster: &Cluster) -> u64 {
    let status = get(cluster.sequencer_status, "/status", None).unwrap().json;
    u64::from_str_radix(status["session"].as_str().unwrap(), 16).unwrap()
}

fn alive(process: &mut Option<Service>) -> bool {
    process.as_mut().is_some_and(|p| p.exited().is_none())
}

/// The attack of finding 1 and 2, and the NAK amplification of finding 3, with the
/// public session id: nothing is applied, nothing answers, every process stays up.
#[test]
fn forged_datagrams_change_nothing_and_get_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let http = cluster.gateway_http;
    let accounts = r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#;
    assert_eq!(post(http, "/accounts", accounts).status, 200);
    assert_eq!(post(http, "/transfers", &transfer(10, 5)).status, 201);
    let (last, _, _) = cluster.converge(cluster.memory_http);
    let session = session_of(&cluster);

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = [0u8; 1408];
    let mut sent = 0;
    for _ in 0..50 {
        // Finding 1: a made-up event with the next sequence, a valid CRC and the session.
        let forged = TransferEvent {
            sequence: (last + 1).into(),
            timestamp_ns: 1.into(),
            id: Id128::from(999_999u128),
            debit_account_id: Id128::from(1u128),
            credit_account_id: Id128::from(2u128),
            amount: 1_000_000.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: 0.into(),
            result: ResultCode::Ok.to_wire().into(),
            reserved: [0; 6],
            ..Default::default()
        };
        let mut writer = PacketWriter::data(&mut buf, 1, session, last + 1);
        writer.push(&forged).unwrap();
        let size = writer.finish(0);
        for consumer in [cluster.memory_udp, cluster.disk_udp] {
            sent += attacker.send_to(&buf[..size], consumer).unwrap();
        }
        // Finding 2: a heartbeat of another session.
        let mut writer = PacketWriter::control(&mut buf, 1, session ^ 0xFFFF);
        writer.push(&Heartbeat { next_sequence: 5.into(), oldest_retained_sequence: 5.into() }).unwrap();
        let size = writer.finish(0);
        for consumer in [cluster.memory_udp, cluster.disk_udp] {
            sent += attacker.send_to(&buf[..size], consumer).unwrap();
        }
        // Finding 3: a status message to be taken for a receiver, then NAKs for everything.
        let mut writer = PacketWriter::control(&mut buf, 1, session);
        let status = StatusMessage {
            receiver_id: 99.into(),
            window_events: 1.into(),
            highest_contiguous_sequence: 0.into(),
        };
        writer.push(&status).unwrap();
        let size = writer.finish(0);
        sent += attacker.send_to(&buf[..size], cluster.control).unwrap();
        let mut writer = PacketWriter::control(&mut buf, 1, session);
        writer.push(&Nak { from_sequence: 1.into(), count: 65_536.into(), receiver_id: 99.into() }).unwrap();
        let size = writer.finish(0);
        sent += attacker.send_to(&buf[..size], cluster.control).unwrap();
        // And plain garbage.
        sent += attacker.send_to(&[0xA5; 300], cluster.control).unwrap();
    }
    assert!(sent > 10_000);

    // Not one byte comes back to the attacker.
    attacker.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut answer = [0u8; 2048];
    let received = attacker.recv_from(&mut answer);
    assert!(received.is_err(), "the attacker got an answer: {received:?}");

    // Everyone is up, nothing forged was applied, and the real stream goes on.
    for process in [&mut cluster.sequencer_process, &mut cluster.memory_process, &mut cluster.disk_process] {
        assert!(alive(process), "a process exited under forged datagrams");
    }
    assert_eq!(post(http, "/transfers", &transfer(11, 5)).status, 201);
    let account = get(http, "/accounts/2", Some(API_KEY)).unwrap();
    assert_eq!(account.json["credits_posted"], "10", "{}", account.body);
    for consumer in [cluster.memory_http, cluster.disk_http] {
        let (sequence, consumer_hash, sequencer_hash) = cluster.converge(consumer);
        assert_eq!(sequence, last + 1);
        assert_eq!(consumer_hash, sequencer_hash, "consumer at {consumer} diverged");
    }
    let metrics = get(cluster.sequencer_status, "/metrics", None).unwrap().body;
    assert!(!metrics.contains("receiver_id=\"99\""), "the forged status made a receiver:\n{metrics}");
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ledgerbus_unauthenticated_datagrams_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(counted.is_some_and(|n| n >= 100), "forgeries are counted: {counted:?}");
    // 100 forgeries went to each consumer; UDP under load may drop some before they are
    // read (or before a consumer still catching up has bound its live socket), so more
    // come while we wait for at least 50 to be counted; none of them changes a thing.
    let mut writer = PacketWriter::control(&mut buf, 1, session ^ 0xFFFF);
    writer.push(&Heartbeat { next_sequence: 5.into(), oldest_retained_sequence: 5.into() }).unwrap();
    let size = writer.finish(0);
    let forged_heartbeat = buf[..size].to_vec();
    for (consumer, udp) in [(cluster.memory_http, cluster.memory_udp), (cluster.disk_http, cluster.disk_udp)]
    {
        wait_until("forgeries counted", || {
            attacker.send_to(&forged_heartbeat, udp).unwrap();
            let status = get(consumer, "/status", None).unwrap().json;
            status["unauthenticated_datagrams"].as_u64().unwrap() >= 50
        });
        let (sequence, consumer_hash, sequencer_hash) = cluster.converge(consumer);
        assert_eq!((sequence, &consumer_hash), (last + 1, &sequencer_hash), "consumer at {consumer}");
    }
}

fn ledgerbus_with_key(args: &[&str], bus_key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args(["--log-level", "error"])
        .args(args)
        .env_remove("LEDGERBUS_CONFIG")
        .env("LEDGERBUS_BUS_KEY", bus_key)
        .output()
        .unwrap()
}

/// Findings 4 and 5: the bulk replay port and the memory consumer's query API give
/// nothing without a credential; with one, they work.
#[test]
fn side_ports_need_a_credential() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    let accounts = r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#;
    assert_eq!(post(cluster.gateway_http, "/accounts", accounts).status, 200);
    assert_eq!(post(cluster.gateway_http, "/transfers", &transfer(10, 5)).status, 201);
    cluster.converge(cluster.memory_http);

    let replay = cluster.replay.to_string();
    let wrong =
        ledgerbus_with_key(&["replay", "--from-sequencer", &replay, "--format", "json"], &"0f".repeat(32));
    assert!(!wrong.status.success());
    assert!(wrong.stdout.is_empty(), "events leaked: {}", String::from_utf8_lossy(&wrong.stdout));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong bus key"), "{wrong:?}");
    let right = ledgerbus_with_key(&["replay", "--from-sequencer", &replay, "--format", "json"], BUS_KEY);
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
    assert_eq!(String::from_utf8_lossy(&right.stdout).lines().count(), 3);

    for key in [None, Some("not-a-key")] {
        let refused = get(cluster.memory_http, "/accounts/2", key).unwrap();
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(!refused.body.contains("credits"), "{}", refused.body);
        let refused = get(cluster.memory_http, "/transfers/10", key).unwrap();
        assert_eq!(refused.status, 401, "{}", refused.body);
    }
    let allowed = get(cluster.memory_http, "/accounts/2", Some(API_KEY)).unwrap();
    assert_eq!(allowed.json["credits_posted"], "5", "{}", allowed.body);
    // Status stays open, and holds nothing secret.
    let status = get(cluster.memory_http, "/status", None).unwrap();
    assert_eq!(status.status, 200);
    assert!(!status.body.contains(BUS_KEY) && !status.body.contains(API_KEY));
}

/// Reads until the peer closes; the time it took, or None if still open at `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(started.elapsed()),
            Err(_) => return None,
        }
    }
}

/// Finding 6: an over-limit body is answered 413 and an ordinary client reads it;
/// headers and frames that stop half-way are cut off; connections are bounded.
#[test]
fn gateway_limits_answer_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    let (http, tcp) = (free_tcp(), free_tcp());
    let _gateway = cluster.spawn_gateway(
        http,
        tcp,
        &["--header-timeout-secs", "1", "--frame-timeout-secs", "1", "--connections-max", "8"],
    );
    wait_until("gateway", || get(http, "/health", None).is_some_and(|r| r.status == 200));

    // 8 MiB with Python's http.client, which sends the whole body before reading.
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=30)\n\
         c.request('POST', '/transfers', body=b'x' * (8 << 20), headers={{'Authorization': 'Bearer {API_KEY}'}})\n\
         r = c.getresponse()\n\
         print(r.status, r.read().decode())\n",
        port = http.port()
    );
    match Command::new("python3").args(["-c", &script]).output() {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(text.starts_with("413 "), "{text}{}", String::from_utf8_lossy(&output.stderr));
            assert!(text.contains("over the limit"), "{text}");
        }
        Err(error) => println!("skipping the http.client check: python3 not runnable ({error})"),
    }
    // The same without Python: a declared length over the limit is refused before the body.
    let mut stream = TcpStream::connect(http).unwrap();
    write!(stream, "POST /transfers HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 8388608\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");

    // Headers that never finish: closed after the header timeout, not kept for good.
    let mut stream = TcpStream::connect(http).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n").unwrap();
    let took = closed_within(&mut stream, Duration::from_secs(15)).expect("a half-sent request stays open");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A TCP client that stops in the middle of a frame after its hello is closed.
    let mut stream = raw_tcp_client(tcp);
    stream.write_all(&[0x40, 0x00, 0x01]).unwrap(); // three bytes of a frame header
    let took = closed_within(&mut stream, Duration::from_secs(15)).expect("a stalled frame stays open");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Connections beyond the limit get a clear 503; the ones inside keep working.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(http).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let refused = get(http, "/health", None).expect("an answer, not a silent close");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("too many connections"), "{}", refused.body);
    drop(held);
    wait_until("room again", || get(http, "/health", None).is_some_and(|r| r.status == 200));
}

/// A sequencer restarted on an empty data folder starts a new log with a new session.
/// Consumers notice it on the (authenticated) bus, confirm it with the replay service,
/// start over from the new log's first event, and end on its state hash; the disk
/// consumer keeps the old log aside.
#[test]
fn consumers_follow_a_sequencer_that_starts_a_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let http = cluster.gateway_http;
    let accounts = r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#;
    assert_eq!(post(http, "/accounts", accounts).status, 200);
    for id in 0..20 {
        assert_eq!(post(http, "/transfers", &transfer(100 + id, 3)).status, 201);
    }
    cluster.converge(cluster.memory_http);
    cluster.converge(cluster.disk_http);
    let old_session = session_of(&cluster);

    cluster.sequencer_process.as_mut().unwrap().kill_now();
    std::fs::remove_dir_all(dir.path().join("sequencer")).unwrap();
    cluster.sequencer_process = Some(cluster.spawn_sequencer());
    wait_until("new sequencer", || get(cluster.sequencer_status, "/status", None).is_some());
    assert_ne!(session_of(&cluster), old_session);
    wait_until("gateway to reconnect", || get(http, "/health", None).is_some_and(|r| r.status == 200));
    let accounts = r#"[{"id":"7","ledger":1,"code":1,"allow_negative":true},{"id":"8","ledger":1,"code":1}]"#;
    assert_eq!(post(http, "/accounts", accounts).status, 200);
    let moved = r#"{"id":"5","debit_account_id":"7","credit_account_id":"8","amount":9,"ledger":1,"code":1}"#;
    assert_eq!(post(http, "/transfers", moved).status, 201);

    for consumer in [cluster.memory_http, cluster.disk_http] {
        let (sequence, consumer_hash, sequencer_hash) = cluster.converge(consumer);
        assert_eq!(sequence, 3, "the new log has three events");
        assert_eq!(consumer_hash, sequencer_hash, "consumer at {consumer}");
    }
    assert!(alive(&mut cluster.memory_process) && alive(&mut cluster.disk_process));
    let account = get(http, "/accounts/8", Some(API_KEY)).unwrap();
    assert_eq!(account.json["credits_posted"], "9", "{}", account.body);
    assert_eq!(
        get(http, "/accounts/2", Some(API_KEY)).unwrap().status,
        404,
        "the old log is gone from the model"
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("disk-consumer"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("previous-log-"))
        .collect();
    assert_eq!(kept.len(), 1, "the disk consumer moved the old log aside");
}
