//! Ledger v2 end to end, real processes on 127.0.0.1: an authorisation and capture,
//! a void, an expiry that happens with no command behind it, a sweep, closing,
//! references and the query filters over HTTP; two-phase transfers over TCP with the
//! typed builders; a client speaking schema version 1 on the same port; a sequencer
//! restart that must remember the pending transfers; consumers matching the sequencer.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use ledgerbus_client::{Client, PendingState, ResultCode, Transfer};
use ledgerbus_codec::messages::{AccountRecord, LookupAccount, TransferResult};
use ledgerbus_codec::{decode, encode, Message};

fn json_get(cluster: &Cluster, path: &str) -> serde_json::Value {
    let response = get(cluster.gateway_http, path, Some(API_KEY)).unwrap();
    assert_eq!(response.status, 200, "GET {path}: {}", response.body);
    response.json
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn two_phase_transfers_sweeps_and_references() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let http = cluster.gateway_http;

    let accounts = post(
        http,
        "/accounts",
        r#"[{"id":"1","ledger":840,"code":1,"allow_negative":true},
            {"id":"2","ledger":840,"code":1,"history":true,"user_data_128":"77"},
            {"id":"3","ledger":840,"code":2,"user_data_128":"77","user_data_32":5},
            {"id":"4","ledger":840,"code":1,"credits_must_not_exceed_debits":true},
            {"id":"5","ledger":840,"code":1,"allow_negative":true,"debits_must_not_exceed_credits":true}]"#,
    );
    let results: Vec<&str> =
        accounts.json.as_array().unwrap().iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["ok", "ok", "ok", "ok", "flags_are_mutually_exclusive"], "{}", accounts.body);
    let funded = post(
        http,
        "/transfers",
        r#"{"id":"10","debit_account_id":"1","credit_account_id":"2","amount":10000,"ledger":840,"code":1}"#,
    );
    assert_eq!(funded.status, 201, "{}", funded.body);

    // Authorise 2500, tied to order 9001: reserved, not posted.
    let hold = post(
        http,
        "/transfers",
        r#"{"id":"11","debit_account_id":"2","credit_account_id":"3","amount":2500,"ledger":840,"code":2,
            "pending":true,"timeout":3600,"user_data_64":9001}"#,
    );
    assert_eq!(hold.status, 201, "{}", hold.body);
    let payer = json_get(&cluster, "/accounts/2");
    assert_eq!(
        (&payer["debits_pending"], &payer["debits_posted"], &payer["balance"], &payer["available"]),
        (&"2500".into(), &"0".into(), &"10000".into(), &"7500".into()),
        "{payer}"
    );
    // Too much for what is left once the hold counts.
    let over = post(
        http,
        "/transfers",
        r#"{"id":"12","debit_account_id":"2","credit_account_id":"3","amount":7501,"ledger":840,"code":1}"#,
    );
    assert_eq!((over.status, over.json["result"].as_str()), (422, Some("insufficient_funds")));
    // Capture 2000 of it; the rest is released. Accounts come from the authorisation.
    let capture = post(http, "/transfers", r#"{"id":"13","pending_id":"11","post":true,"amount":2000}"#);
    assert_eq!(capture.status, 201, "{}", capture.body);
    let payer = json_get(&cluster, "/accounts/2");
    assert_eq!((&payer["debits_pending"], &payer["debits_posted"]), (&"0".into(), &"2000".into()), "{payer}");
    let captured = json_get(&cluster, "/transfers/13");
    assert_eq!(
        (
            &captured["debit_account_id"],
            &captured["credit_account_id"],
            &captured["amount"],
            &captured["post"]
        ),
        (&"2".into(), &"3".into(), &"2000".into(), &true.into()),
        "the event records the post resolved: {captured}"
    );
    assert_eq!(captured["user_data_64"], "9001", "a post inherits the authorisation's references");
    assert_eq!(json_get(&cluster, "/transfers/11")["pending_state"], "posted");
    let again = post(http, "/transfers", r#"{"id":"14","pending_id":"11","void":true}"#);
    assert_eq!(again.json["result"], "pending_transfer_already_posted", "{}", again.body);
    let retry = post(http, "/transfers", r#"{"id":"13","pending_id":"11","post":true,"amount":2000}"#);
    assert_eq!((retry.status, retry.json["result"].as_str()), (200, Some("exists")), "{}", retry.body);
    let malformed = post(http, "/transfers", r#"{"id":"15","pending_id":"11","post":"yes"}"#);
    assert_eq!((malformed.status, malformed.json["error"]["param"].as_str()), (400, Some("post")));
    let missing = post(http, "/transfers", r#"{"id":"15","amount":5,"ledger":840,"code":1}"#);
    assert_eq!((missing.status, missing.json["error"]["param"].as_str()), (400, Some("debit_account_id")));

    // An authorisation with a 1-second timeout expires by itself: no command follows.
    let short = post(
        http,
        "/transfers",
        r#"{"id":"20","debit_account_id":"2","credit_account_id":"3","amount":100,"ledger":840,"code":2,
            "pending":true,"timeout":1}"#,
    );
    assert_eq!(short.status, 201, "{}", short.body);
    assert_eq!(json_get(&cluster, "/accounts/2")["debits_pending"], "100");
    let deadline = Instant::now() + Duration::from_secs(20);
    while json_get(&cluster, "/transfers/20")["pending_state"] != "expired" {
        assert!(Instant::now() < deadline, "the pending transfer never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(json_get(&cluster, "/accounts/2")["debits_pending"], "0");
    let late = post(http, "/transfers", r#"{"id":"21","pending_id":"20","post":true}"#);
    assert_eq!(late.json["result"], "pending_transfer_expired", "{}", late.body);

    // Sweep what account 2 has left to account 3: 8000 of the 1e9 asked for.
    let sweep = post(
        http,
        "/transfers",
        r#"{"id":"30","debit_account_id":"2","credit_account_id":"3","amount":"1000000000","ledger":840,"code":3,
            "balancing_debit":true}"#,
    );
    assert_eq!(sweep.status, 201, "{}", sweep.body);
    assert_eq!(json_get(&cluster, "/transfers/30")["amount"], "8000");
    assert_eq!(json_get(&cluster, "/accounts/2")["balance"], "0");
    // Account 4 may not be credited beyond its debits.
    let over_credit = post(
        http,
        "/transfers",
        r#"{"id":"31","debit_account_id":"1","credit_account_id":"4","amount":1,"ledger":840,"code":1}"#,
    );
    assert_eq!(over_credit.json["result"], "exceeds_debits", "{}", over_credit.body);

    // Closing: a pending closing transfer closes account 3; voiding it reopens it.
    let close = post(
        http,
        "/transfers",
        r#"{"id":"40","debit_account_id":"3","credit_account_id":"1","amount":1,"ledger":840,"code":9,
            "pending":true,"closing_debit":true}"#,
    );
    assert_eq!(close.status, 201, "{}", close.body);
    assert_eq!(json_get(&cluster, "/accounts/3")["closed"], true);
    let refused = post(
        http,
        "/transfers",
        r#"{"id":"41","debit_account_id":"1","credit_account_id":"3","amount":1,"ledger":840,"code":1}"#,
    );
    assert_eq!(refused.json["result"], "credit_account_closed", "{}", refused.body);
    assert_eq!(post(http, "/transfers", r#"{"id":"42","pending_id":"40","void":true}"#).status, 201);
    assert_eq!(json_get(&cluster, "/accounts/3")["closed"], false);

    // References and filters.
    let order = json_get(&cluster, "/transfers?user_data_64=9001");
    assert_eq!(ids(&order["transfers"]), ["11", "13"], "{order}");
    let customers = json_get(&cluster, "/accounts?user_data_128=77");
    assert_eq!(ids(&customers["accounts"]), ["2", "3"], "{customers}");
    assert_eq!(ids(&json_get(&cluster, "/accounts?ledger=840&code=2")["accounts"]), ["3"]);
    let first_page = json_get(&cluster, "/accounts?ledger=840&limit=2");
    assert_eq!(ids(&first_page["accounts"]), ["1", "2"]);
    let cursor = first_page["next_after"].as_str().unwrap();
    assert_eq!(
        ids(&json_get(&cluster, &format!("/accounts?ledger=840&after={cursor}"))["accounts"]),
        ["3", "4"]
    );
    let debits = json_get(&cluster, "/accounts/2/transfers?direction=debits&reverse=true");
    assert_eq!(ids(&debits["transfers"]), ["30", "20", "13", "11"], "{debits}");
    let captures = json_get(&cluster, "/accounts/2/transfers?code=2&direction=debits");
    assert_eq!(ids(&captures["transfers"]), ["11", "13", "20"], "{captures}");
    let since = json_get(&cluster, "/transfers/13")["timestamp"].as_u64().unwrap();
    let until = json_get(&cluster, "/transfers/30")["timestamp"].as_u64().unwrap();
    let window = json_get(&cluster, &format!("/accounts/2/transfers?since={since}&until={}", until - 1));
    assert_eq!(ids(&window["transfers"]), ["13", "20"], "{window}");
    let bad = get(http, "/accounts/2/transfers?direction=sideways", Some(API_KEY)).unwrap();
    assert_eq!((bad.status, bad.json["error"]["param"].as_str()), (400, Some("direction")));
    // Balance history of account 2 (created with history): funding, hold, capture,
    // short hold, expiry, sweep.
    let history = json_get(&cluster, "/accounts/2/balances");
    let rows: Vec<(String, String, String)> = history["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["debits_pending"].as_str().unwrap().into(),
                b["debits_posted"].as_str().unwrap().into(),
                b["credits_posted"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("0", "0", "10000"),
        ("2500", "0", "10000"),
        ("0", "2000", "10000"),
        ("100", "2000", "10000"),
        ("0", "2000", "10000"),
        ("0", "10000", "10000"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(rows, expected, "{history}");
    let no_history = get(http, "/accounts/3/balances", Some(API_KEY)).unwrap();
    assert_eq!(no_history.status, 400, "{}", no_history.body);

    // Over TCP, with the typed builders: hold, then void; the lookup says where it stands.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = Client::connect(cluster.gateway_tcp, API_KEY).await.unwrap();
        let outcomes = client
            .submit(&[
                Transfer::new(50, 1, 3, 700).ledger(840).code(2).pending().user_data(0, 0, 42).into(),
                Transfer::void(51, 50).into(),
                Transfer::post(52, 50).into(),
            ])
            .await
            .unwrap();
        let results: Vec<ResultCode> = outcomes.iter().map(|o| o.result).collect();
        assert_eq!(results, [ResultCode::Ok, ResultCode::Ok, ResultCode::PendingTransferAlreadyVoided]);
        let hold = client.transfer(50).await.unwrap().expect("decided");
        assert_eq!(
            (hold.pending_state, hold.user_data_32, hold.amount),
            (Some(PendingState::Voided), 42, 700)
        );
        let account = client.account(3).await.unwrap().expect("exists");
        assert_eq!((account.debits_pending, account.credits_pending), (0, 0));
        let outcomes = client
            .submit(&[Transfer::new(53, 1, 3, 300).ledger(840).code(2).pending().into()])
            .await
            .unwrap();
        assert_eq!(outcomes[0].result, ResultCode::Ok);
        let account = client.account(3).await.unwrap().expect("exists");
        assert_eq!(account.credits_pending, 300);
    });

    // A client of schema version 1: 72-byte transfer blocks with version 1 headers.
    let mut v1 = raw_tcp_client(cluster.gateway_tcp);
    let transfer = ledgerbus_codec::messages::Transfer {
        correlation_id: 77.into(),
        id: 60u128.into(),
        debit_account_id: 1u128.into(),
        credit_account_id: 3u128.into(),
        amount: 5.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: 0.into(),
        ..Default::default()
    };
    let mut frame = vec![0u8; ledgerbus_codec::messages::Transfer::FRAME_SIZE];
    encode(&transfer, &mut frame).unwrap();
    // As a version 1 writer: block length 72, version 1, the first 72 bytes of the block.
    frame[0..2].copy_from_slice(&72u16.to_le_bytes());
    frame[6..8].copy_from_slice(&1u16.to_le_bytes());
    frame.truncate(8 + 72);
    v1.write_all(&frame).unwrap();
    let mut reply = [0u8; TransferResult::FRAME_SIZE];
    v1.read_exact(&mut reply).unwrap();
    let (result, _) = decode::<TransferResult>(&reply).unwrap();
    assert_eq!((result.correlation_id.get(), result.result()), (77, Ok(ResultCode::Ok)));
    // Its lookup answer is a version 2 record: the header says how long it is, and
    // the version 1 prefix reads as before.
    let mut lookup = [0u8; LookupAccount::FRAME_SIZE];
    encode(&LookupAccount { correlation_id: 78.into(), id: 3u128.into() }, &mut lookup).unwrap();
    v1.write_all(&lookup).unwrap();
    let mut head = [0u8; 8];
    v1.read_exact(&mut head).unwrap();
    let block_length = u16::from_le_bytes([head[0], head[1]]) as usize;
    let mut block = vec![0u8; block_length];
    v1.read_exact(&mut block).unwrap();
    let record = [head.to_vec(), block].concat();
    let (record, _) = decode::<AccountRecord>(&record).unwrap();
    assert_eq!((record.correlation_id.get(), record.ledger.get()), (78, 840));

    // The sequencer restarts: it must remember pending transfer 53 and its reservation.
    cluster.sequencer_process.as_mut().unwrap().kill_now();
    cluster.sequencer_process = Some(cluster.spawn_sequencer());
    let deadline = Instant::now() + Duration::from_secs(30);
    let capture = loop {
        let response = request(
            http,
            "POST",
            "/transfers",
            Some(API_KEY),
            Some(r#"{"id":"54","pending_id":"53","post":true}"#),
        );
        match response {
            Some(response) if response.status != 503 => break response,
            _ => {
                assert!(Instant::now() < deadline, "the gateway never reached the restarted sequencer");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(capture.status, 201, "{}", capture.body);
    let again = post(http, "/transfers", r#"{"id":"55","pending_id":"53","post":true}"#);
    assert_eq!(again.json["result"], "pending_transfer_already_posted");

    // Both consumers agree with the sequencer (pending state included in the hash).
    let (sequence, memory, sequencer) = cluster.converge(cluster.memory_http);
    assert_eq!(memory, sequencer, "memory consumer hash at {sequence}");
    let (sequence, disk, sequencer) = cluster.converge(cluster.disk_http);
    assert_eq!(disk, sequencer, "disk consumer hash at {sequence}");
}
