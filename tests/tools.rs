//! The operator tools against real processes: `bench e2e` writes a percentile table,
//! a `.hgrm` file that parses back and a valid SVG plot; `replay` prints JSON that
//! round-trips to the exact frames, `--verify` catches a corrupted byte and a missing
//! sequence, `--to-subscriber` re-publishes a range, and `replay nak` shows a repair.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ledgerbus_codec::messages::{AccountEvent, TransferEvent};
use ledgerbus_codec::{encode_compact, Id128, Message, ResultCode};
use ledgerbus_log::journal::{list_segments, Durability, JournalWriter};
use ledgerbus_transport::driver::{SocketOptions, Subscriber};
use ledgerbus_transport::sim::event_frame;
use ledgerbus_transport::ReceiverConfig;

fn ledgerbus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args(["--log-level", "error"])
        .args(args)
        .env_remove("LEDGERBUS_CONFIG")
        .env("LEDGERBUS_BUS_KEY", BUS_KEY)
        .output()
        .expect("run ledgerbus")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn bench_e2e_spawns_the_system_and_writes_hgrm_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let hgrm = dir.path().join("latency.hgrm");
    let plot = dir.path().join("latency.svg");
    let output = ledgerbus(&[
        "bench",
        "e2e",
        "--spawn",
        "--durability",
        "os",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--connections",
        "2",
        "--accounts",
        "50",
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = stdout(&output);
    assert!(text.contains("p99.9"), "{text}");
    let report: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    for key in ["throughput_tps", "p50_us", "p99_us", "p999_us", "max_us", "accepted", "rejected", "errors"] {
        assert!(report.get(key).is_some(), "{key} missing from {report}");
    }
    assert!(report["accepted"].as_u64().unwrap() > 1_000, "{report}");
    assert!(report["rejected"].as_u64().unwrap() > 0, "overdraft attempts are rejected: {report}");
    assert!(report["accepted_p50_us"].as_u64().unwrap() > 0, "accepted latency apart: {report}");
    assert!(report["rejected_p50_us"].as_u64().unwrap() > 0, "rejected latency apart: {report}");
    assert_eq!(report["errors"], 0);

    let rows = ledgerbus_tools::histogram::parse_hgrm(&std::fs::read_to_string(&hgrm).unwrap()).unwrap();
    assert!(rows.len() > 10);
    assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2), "rows ascend");
    let last = rows.last().unwrap();
    assert_eq!(last.1, 1.0);
    assert_eq!(last.2, report["requests"].as_u64().unwrap(), "the last row counts every request");
    let svg = std::fs::read_to_string(&plot).unwrap();
    let document = roxmltree::Document::parse(&svg).expect("the plot is valid XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    assert!(svg.contains("<polyline") || svg.contains("<path"), "the plot has a curve");
    // Runs compared: two .hgrm files overlaid in one plot.
    let compared = dir.path().join("compare.png");
    let overlay = ledgerbus(&[
        "bench",
        "plot",
        hgrm.to_str().unwrap(),
        hgrm.to_str().unwrap(),
        "-o",
        compared.to_str().unwrap(),
    ]);
    assert!(overlay.status.success(), "{}", String::from_utf8_lossy(&overlay.stderr));
    assert!(stdout(&overlay).contains("2 curves"), "{}", stdout(&overlay));
    assert_eq!(&std::fs::read(&compared).unwrap()[..4], b"\x89PNG");

    // HTTP too, briefly.
    let output = ledgerbus(&[
        "bench",
        "e2e",
        "--spawn",
        "--durability",
        "os",
        "--protocol",
        "http",
        "--rate",
        "max",
        "--duration",
        "1",
        "--connections",
        "8",
        "--accounts",
        "50",
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    assert!(report["accepted"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["protocol"], "http");
}

/// Re-encodes an event from its JSON line, as the sequencer writes it (in the oldest
/// schema version that carries it).
fn frame_from_json(line: &serde_json::Value) -> Vec<u8> {
    let u128_of = |key: &str| line[key].as_str().unwrap().parse::<u128>().unwrap();
    let u64_of = |key: &str| line[key].as_str().unwrap().parse::<u64>().unwrap();
    let flags_of = |names: &[&str]| {
        names
            .iter()
            .enumerate()
            .filter(|(_, n)| line[**n].as_bool().unwrap())
            .fold(0u16, |f, (bit, _)| f | 1 << bit)
    };
    let result = ResultCode::from_snake_name(line["result"].as_str().unwrap()).unwrap();
    let mut bytes = vec![0u8; TransferEvent::FRAME_SIZE];
    let size = if line["type"] == "transfer" {
        let names = [
            "linked",
            "pending",
            "post",
            "void",
            "balancing_debit",
            "balancing_credit",
            "closing_debit",
            "closing_credit",
        ];
        let event = TransferEvent {
            sequence: line["sequence"].as_u64().unwrap().into(),
            timestamp_ns: line["timestamp"].as_u64().unwrap().into(),
            id: Id128::from(u128_of("id")),
            debit_account_id: Id128::from(u128_of("debit_account_id")),
            credit_account_id: Id128::from(u128_of("credit_account_id")),
            amount: u64_of("amount").into(),
            ledger: (line["ledger"].as_u64().unwrap() as u32).into(),
            code: (line["code"].as_u64().unwrap() as u16).into(),
            flags: flags_of(&names).into(),
            result: result.to_wire().into(),
            reserved: [0; 6],
            pending_id: Id128::from(u128_of("pending_id")),
            user_data_128: Id128::from(u128_of("user_data_128")),
            user_data_64: u64_of("user_data_64").into(),
            user_data_32: (line["user_data_32"].as_u64().unwrap() as u32).into(),
            timeout: (line["timeout"].as_u64().unwrap() as u32).into(),
        };
        encode_compact(&event, &mut bytes).unwrap()
    } else {
        let names = [
            "allow_negative",
            "debits_must_not_exceed_credits",
            "credits_must_not_exceed_debits",
            "history",
            "closed",
        ];
        let event = AccountEvent {
            sequence: line["sequence"].as_u64().unwrap().into(),
            timestamp_ns: line["timestamp"].as_u64().unwrap().into(),
            id: Id128::from(u128_of("id")),
            ledger: (line["ledger"].as_u64().unwrap() as u32).into(),
            code: (line["code"].as_u64().unwrap() as u16).into(),
            flags: flags_of(&names).into(),
            result: result.to_wire().into(),
            reserved: [0; 6],
            user_data_128: Id128::from(u128_of("user_data_128")),
            user_data_64: u64_of("user_data_64").into(),
            user_data_32: (line["user_data_32"].as_u64().unwrap() as u32).into(),
            reserved2: [0; 4],
        };
        encode_compact(&event, &mut bytes).unwrap()
    };
    bytes.truncate(size);
    bytes
}

#[test]
fn replay_prints_verifies_republishes_and_naks() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    post(
        cluster.gateway_http,
        "/accounts",
        r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#,
    );
    for id in 10..40 {
        let body = format!(
            r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":{id},"ledger":1,"code":1,"linked":{}}}"#,
            false
        );
        post(cluster.gateway_http, "/transfers", &body);
    }
    post(
        cluster.gateway_http,
        "/transfers",
        r#"{"id":"99","debit_account_id":"2","credit_account_id":"1","amount":999999,"ledger":1,"code":1}"#,
    );
    let journal = dir.path().join("sequencer");
    let replay_addr = cluster.replay.to_string();

    // JSON from the journal and from the replay service agree, and round-trip to the raw frames.
    let from_journal = ledgerbus(&["replay", "--journal", journal.to_str().unwrap(), "--format", "json"]);
    assert!(from_journal.status.success());
    let from_service = ledgerbus(&["replay", "--from-sequencer", &replay_addr, "--format", "json"]);
    assert_eq!(stdout(&from_journal), stdout(&from_service));
    let raw = ledgerbus(&["replay", "--journal", journal.to_str().unwrap(), "--format", "raw"]);
    let lines: Vec<serde_json::Value> =
        stdout(&from_journal).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 33);
    assert_eq!(lines.last().unwrap()["result"], "insufficient_funds");
    let rebuilt: Vec<u8> = lines.iter().flat_map(frame_from_json).collect();
    assert_eq!(rebuilt, raw.stdout, "JSON lines carry every byte of the events");
    let text = ledgerbus(&["replay", "--journal", journal.to_str().unwrap(), "--from", "3", "--to", "4"]);
    assert_eq!(stdout(&text).lines().count(), 2);
    assert!(stdout(&text).contains("transfer 10 1 -> 2 amount 10"), "{}", stdout(&text));

    // Verify: clean journal passes.
    let clean = ledgerbus(&["replay", "--journal", journal.to_str().unwrap(), "--verify", "--json"]);
    assert!(clean.status.success(), "{}", stdout(&clean));
    let summary: serde_json::Value = serde_json::from_str(stdout(&clean).lines().last().unwrap()).unwrap();
    assert_eq!((summary["count"].as_u64(), summary["gaps"].as_u64()), (Some(33), Some(0)));
    let status = get(cluster.sequencer_status, "/status", None).unwrap().json;
    assert_eq!(summary["state_hash"], status["state_hash"], "the verified hash is the sequencer's");

    // A corrupted byte in the middle is caught.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for (_, path) in list_segments(&journal).unwrap() {
        std::fs::copy(&path, broken.join(path.file_name().unwrap())).unwrap();
    }
    let segment = list_segments(&broken).unwrap().pop().unwrap().1;
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[32 + 5 * 104 + 40] ^= 0xFF;
    std::fs::write(&segment, bytes).unwrap();
    let corrupt = ledgerbus(&["replay", "--journal", broken.to_str().unwrap(), "--verify", "--json"]);
    assert!(!corrupt.status.success(), "a corrupted byte must fail verification");
    let summary: serde_json::Value = serde_json::from_str(stdout(&corrupt).lines().last().unwrap()).unwrap();
    assert_eq!(summary["corrupt_frames"], 1);

    // A missing sequence (a lost segment) is caught.
    let gappy = dir.path().join("gappy");
    let (mut writer, _) =
        JournalWriter::open(&gappy, Durability::Os, 1_000, 5, ledgerbus_log::journal::skip_events).unwrap();
    for sequence in 1..=60 {
        writer.append(&event_frame(sequence));
        let _ = writer.commit().unwrap();
    }
    drop(writer);
    let segments = list_segments(&gappy).unwrap();
    assert!(segments.len() >= 3);
    std::fs::remove_file(&segments[1].1).unwrap();
    let missing =
        ledgerbus(&["replay", "--journal", gappy.to_str().unwrap(), "--from", "2", "--verify", "--json"]);
    assert!(!missing.status.success());
    let summary: serde_json::Value = serde_json::from_str(stdout(&missing).lines().last().unwrap()).unwrap();
    assert!(summary["gaps"].as_u64().unwrap() > 0, "{summary}");

    // Re-publish a range to a subscriber.
    let mut subscriber = Subscriber::new(
        ReceiverConfig {
            receiver_id: 77,
            security: ledgerbus_transport::BusSecurity::Aead(std::sync::Arc::new(
                ledgerbus_transport::BusKeys::parse(BUS_KEY).unwrap(),
            )),
            ..ReceiverConfig::default()
        },
        5,
        None,
        "127.0.0.1:0".parse().unwrap(),
        None,
        "127.0.0.1:9".parse().unwrap(),
        SocketOptions::default(),
    )
    .unwrap();
    let target = subscriber.local_addr().unwrap().to_string();
    let publish = std::thread::spawn({
        let journal = journal.clone();
        move || {
            ledgerbus(&[
                "replay",
                "--journal",
                journal.to_str().unwrap(),
                "--from",
                "5",
                "--to",
                "30",
                "--to-subscriber",
                &target,
            ])
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 26 && Instant::now() < deadline {
        subscriber.poll(Duration::from_millis(20), &mut |sequence, _| got.push(sequence)).unwrap();
    }
    assert!(publish.join().unwrap().status.success());
    assert_eq!(got, (5..=30).collect::<Vec<u64>>());

    // The NAK probe: the sequencer retransmits what is still in its ring.
    let control = cluster.control.to_string();
    let nak_probe = |range: &[&str]| {
        let mut args = vec!["replay", "nak", "--sequencer", &control, "--replay", &replay_addr];
        args.extend_from_slice(range);
        ledgerbus(&args)
    };
    let nak = nak_probe(&["--from", "3", "--count", "2"]);
    assert!(nak.status.success(), "{}{}", stdout(&nak), String::from_utf8_lossy(&nak.stderr));
    assert!(stdout(&nak).contains("retransmitted"), "{}", stdout(&nak));
    let retransmitted = stdout(&nak).lines().filter(|l| l.starts_with("retransmitted")).count();
    assert_eq!(retransmitted, 2, "only the NAKed range is shown: {}", stdout(&nak));
    // Beyond the head: said so, at once.
    let beyond = nak_probe(&["--from", "1000000"]);
    assert!(!beyond.status.success());
    assert!(String::from_utf8_lossy(&beyond.stderr).contains("beyond the head"), "{beyond:?}");
}

/// `replay` as an operator's tail: filters, `--last`, and `--follow` printing new
/// events as they are published.
#[test]
fn replay_filters_takes_the_last_n_and_follows() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    post(
        cluster.gateway_http,
        "/accounts",
        r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1},{"id":"3","ledger":1,"code":1}]"#,
    );
    let transfer = |id: u32, debit: u32, credit: u32, amount: u64| {
        format!(
            r#"{{"id":"{id}","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":{amount},"ledger":1,"code":1}}"#
        )
    };
    post(cluster.gateway_http, "/transfers", &transfer(10, 1, 2, 50));
    post(cluster.gateway_http, "/transfers", &transfer(11, 2, 3, 20));
    post(cluster.gateway_http, "/transfers", &transfer(12, 3, 2, 999)); // insufficient funds
    let replay = cluster.replay.to_string();
    let json_lines = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["replay", "--from-sequencer", &replay, "--format", "json"];
        args.extend_from_slice(extra);
        let output = ledgerbus(&args);
        assert!(output.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&output.stderr));
        stdout(&output).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert_eq!(json_lines(&[]).len(), 6);
    let rejected = json_lines(&["--result", "rejected"]);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["id"], "12");
    assert_eq!(json_lines(&["--result", "insufficient_funds"]).len(), 1);
    assert_eq!(json_lines(&["--type", "account"]).len(), 3);
    let of_account_3 = json_lines(&["--account", "3", "--type", "transfer"]);
    assert_eq!(of_account_3.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), ["11", "12"]);
    assert_eq!(json_lines(&["--last", "2"]).len(), 2);
    assert_eq!(json_lines(&["--until", "1"]).len(), 0, "nothing before 1970-01-01T00:00:01Z");
    assert_eq!(json_lines(&["--since", "2000-01-01T00:00:00Z"]).len(), 6);
    // --fields: only those, in that order; tab-separated in text.
    let picked = json_lines(&["--type", "transfer", "--fields", "id,amount,result"]);
    assert_eq!(picked[2].to_string(), r#"{"id":"12","amount":"999","result":"insufficient_funds"}"#);
    let output =
        ledgerbus(&["replay", "--from-sequencer", &replay, "--last", "1", "--fields", "sequence,id,result"]);
    assert_eq!(stdout(&output), "6\t12\tinsufficient_funds\n");
    let refused = ledgerbus(&["replay", "--from-sequencer", &replay, "--fields", "id,colour"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown field `colour`"));

    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args(["--log-level", "error", "replay", "--from-sequencer", &replay, "--format", "json", "--follow"])
        .args(["--type", "transfer"])
        .env("LEDGERBUS_BUS_KEY", BUS_KEY)
        .env_remove("LEDGERBUS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, got) = std::sync::mpsc::channel();
    let reader = BufReader::new(follow.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let wait = |id: &str| loop {
        let line = got.recv_timeout(Duration::from_secs(20)).expect("replay --follow printed it");
        if line.contains(&format!("\"id\":\"{id}\"")) {
            break;
        }
    };
    wait("12");
    post(cluster.gateway_http, "/transfers", &transfer(13, 1, 3, 7));
    wait("13");
    assert_eq!(unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) }, 0);
    assert!(follow.wait().unwrap().success());
}
