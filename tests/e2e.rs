//! End to end, real processes on 127.0.0.1: accounts and transfers over HTTP and
//! TCP, idempotent retries, insufficient funds, a linked chain that fails as a
//! whole, the query API, malformed requests, and consumers matching the sequencer.

mod common;

use common::*;
use ledgerbus_client::{Client, Command};
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::ResultCode;

fn account_balance(cluster: &Cluster, id: u128) -> (String, String) {
    let response = get(cluster.gateway_http, &format!("/accounts/{id}"), Some(API_KEY)).unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    (
        response.json["debits_posted"].as_str().unwrap().into(),
        response.json["credits_posted"].as_str().unwrap().into(),
    )
}

#[test]
fn ledger_over_http_and_tcp() {
    // With `backoff` (the other tests run the default, `block`), so that its polling
    // hot thread and receive threads carry the whole API too.
    let dir = tempfile::tempdir().unwrap();
    let backoff = vec![("LEDGERBUS_IDLE_STRATEGY", "backoff".to_string())];
    let cluster = Cluster::start_with(dir.path(), None, backoff);
    let http = cluster.gateway_http;

    // Accounts: created, idempotent retry, conflicting retry, batch.
    let created = post(http, "/accounts", r#"{"id":"1","ledger":840,"code":1,"allow_negative":true}"#);
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json["result"], "ok");
    assert!(created.json["sequence"].as_u64().unwrap() >= 1);
    assert_eq!(
        post(http, "/accounts", r#"{"id":"1","ledger":840,"code":1,"allow_negative":true}"#).status,
        200
    );
    let conflict = post(http, "/accounts", r#"{"id":"1","ledger":978,"code":1}"#);
    assert_eq!(
        (conflict.status, conflict.json["result"].as_str()),
        (409, Some("exists_with_different_fields"))
    );
    assert_eq!(conflict.json["field"], "ledger", "{}", conflict.body);
    assert_eq!(conflict.json["original"]["timestamp"], created.json["timestamp"], "{}", conflict.body);
    assert_eq!(conflict.json["original"]["sequence"], created.json["sequence"], "{}", conflict.body);
    let batch = post(
        http,
        "/accounts",
        r#"[{"id":"2","ledger":840,"code":1},{"id":"3","ledger":840,"code":1},{"id":"4","ledger":978,"code":1}]"#,
    );
    assert_eq!(batch.status, 200);
    assert_eq!(batch.json.as_array().unwrap().iter().filter(|r| r["result"] == "ok").count(), 3);

    // Transfers: ok, retry, insufficient funds, ledger mismatch, amount as string.
    let funded = post(
        http,
        "/transfers",
        r#"{"id":"100","debit_account_id":"1","credit_account_id":"2","amount":1000,"ledger":840,"code":1}"#,
    );
    assert_eq!(funded.status, 201, "{}", funded.body);
    // Read-your-writes: the very next GET sees the credit.
    assert_eq!(account_balance(&cluster, 2), ("0".into(), "1000".into()));
    let retry = post(
        http,
        "/transfers",
        r#"{"id":"100","debit_account_id":"1","credit_account_id":"2","amount":"1000","ledger":840,"code":1}"#,
    );
    assert_eq!((retry.status, retry.json["result"].as_str()), (200, Some("exists")));
    // The retry says which event applied the original, and when, to reconcile with.
    assert_eq!(retry.json["original"]["sequence"], funded.json["sequence"], "{}", retry.body);
    assert_eq!(retry.json["original"]["timestamp"], funded.json["timestamp"], "{}", retry.body);
    assert!(retry.json["sequence"].as_u64() > funded.json["sequence"].as_u64(), "its own decision is later");
    let changed = post(
        http,
        "/transfers",
        r#"{"id":"100","debit_account_id":"1","credit_account_id":"2","amount":"999","ledger":840,"code":1}"#,
    );
    assert_eq!(
        (changed.status, changed.json["result"].as_str()),
        (409, Some("exists_with_different_fields"))
    );
    assert_eq!(changed.json["field"], "amount", "{}", changed.body);
    assert_eq!(changed.json["original"]["sequence"], funded.json["sequence"]);
    let overdraft = post(
        http,
        "/transfers",
        r#"{"id":"101","debit_account_id":"2","credit_account_id":"3","amount":5000,"ledger":840,"code":1}"#,
    );
    assert_eq!((overdraft.status, overdraft.json["result"].as_str()), (422, Some("insufficient_funds")));
    let mismatch = post(
        http,
        "/transfers",
        r#"{"id":"102","debit_account_id":"2","credit_account_id":"4","amount":1,"ledger":840,"code":1}"#,
    );
    assert_eq!(mismatch.json["result"], "ledger_mismatch");
    let unknown = post(
        http,
        "/transfers",
        r#"{"id":"103","debit_account_id":"2","credit_account_id":"99","amount":1,"ledger":840,"code":1}"#,
    );
    assert_eq!(unknown.json["result"], "credit_account_not_found");

    // A P2P with fee and tax, linked: the tax leg overdraws, so nothing applies.
    let chain = post(
        http,
        "/transfers",
        r#"[{"id":"200","debit_account_id":"2","credit_account_id":"3","amount":600,"ledger":840,"code":1,"linked":true},
            {"id":"201","debit_account_id":"2","credit_account_id":"1","amount":6,"ledger":840,"code":2,"linked":true},
            {"id":"202","debit_account_id":"2","credit_account_id":"1","amount":900,"ledger":840,"code":3}]"#,
    );
    assert_eq!(chain.status, 200);
    let results: Vec<&str> =
        chain.json.as_array().unwrap().iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["linked_event_failed", "linked_event_failed", "insufficient_funds"]);
    assert_eq!(account_balance(&cluster, 2), ("0".into(), "1000".into()), "the failed chain changed nothing");
    // The same chain within funds applies whole.
    let chain = post(
        http,
        "/transfers",
        r#"[{"id":"200","debit_account_id":"2","credit_account_id":"3","amount":600,"ledger":840,"code":1,"linked":true},
            {"id":"201","debit_account_id":"2","credit_account_id":"1","amount":6,"ledger":840,"code":2,"linked":true},
            {"id":"202","debit_account_id":"2","credit_account_id":"1","amount":9,"ledger":840,"code":3}]"#,
    );
    assert!(chain.json.as_array().unwrap().iter().all(|r| r["result"] == "ok"), "{}", chain.body);
    assert_eq!(account_balance(&cluster, 2), ("615".into(), "1000".into()));
    // An unterminated chain is decided at the edge.
    let open = post(
        http,
        "/transfers",
        r#"{"id":"300","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1,"linked":true}"#,
    );
    assert_eq!((open.status, open.json["result"].as_str()), (422, Some("linked_chain_open")));

    // Queries.
    let transfer = get(http, "/transfers/200", Some(API_KEY)).unwrap();
    assert_eq!((transfer.status, transfer.json["amount"].as_str()), (200, Some("600")));
    assert_eq!(transfer.json["linked"], true);
    let page = get(http, "/accounts/2/transfers?limit=2", Some(API_KEY)).unwrap();
    let first: Vec<&str> =
        page.json["transfers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(first, ["100", "200"]);
    let after = page.json["next_after"].as_str().unwrap();
    let page = get(http, &format!("/accounts/2/transfers?limit=2&after={after}"), Some(API_KEY)).unwrap();
    let second: Vec<&str> =
        page.json["transfers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(second, ["201", "202"]);
    let bad_cursor = get(http, "/accounts/2/transfers?after=12", Some(API_KEY)).unwrap();
    assert_eq!((bad_cursor.status, &bad_cursor.json["error"]["param"]), (400, &serde_json::json!("after")));
    assert_eq!(get(http, "/accounts/77", Some(API_KEY)).unwrap().status, 404);
    let rejected = get(http, "/transfers/101", Some(API_KEY)).unwrap();
    assert_eq!(rejected.status, 200, "a rejected transfer says how it was decided: {}", rejected.body);
    assert_ne!(rejected.json["result"], "ok", "{}", rejected.body);
    let balance = get(http, "/accounts/1", Some(API_KEY)).unwrap();
    assert_eq!(balance.json["balance"], "-985");

    // Malformed requests: 400 naming the field; nothing reaches the sequencer.
    let before = get(cluster.sequencer_status, "/status", None).unwrap().json["last_sequence"].clone();
    let cases = [
        ("/transfers", "{not json", "body"),
        (
            "/transfers",
            r#"{"id":"5","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1,"colour":"red"}"#,
            "colour",
        ),
        (
            "/transfers",
            r#"{"id":"abc","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1}"#,
            "id",
        ),
        (
            "/transfers",
            r#"{"id":"0","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1}"#,
            "id",
        ),
        (
            "/transfers",
            r#"{"id":"5","debit_account_id":"1","credit_account_id":"2","amount":-1,"ledger":840,"code":1}"#,
            "amount",
        ),
        (
            "/transfers",
            r#"{"id":"5","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":5000000000,"code":1}"#,
            "ledger",
        ),
        (
            "/transfers",
            r#"{"id":"340282366920938463463374607431768211456","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1}"#,
            "id",
        ),
        (
            "/transfers",
            r#"[{"id":"5","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1},{"id":"6"}]"#,
            "[1].debit_account_id",
        ),
        ("/accounts", r#"{"id":"9","ledger":840,"code":70000}"#, "code"),
        ("/accounts", r#"{"id":9,"ledger":840,"code":1}"#, "id"),
    ];
    for (path, body, field) in cases {
        let response = post(http, path, body);
        assert_eq!(response.status, 400, "{body}: {}", response.body);
        let error = &response.json["error"];
        assert_eq!(error["code"], "invalid_request", "{body}: {}", response.body);
        assert_eq!(error["param"], field, "{body}: {}", response.body);
        assert!(error["message"].as_str().unwrap().contains(field), "{body}: {}", response.body);
    }
    assert_eq!(get(cluster.sequencer_status, "/status", None).unwrap().json["last_sequence"], before);
    // A refused transfer can be looked up: how it was decided, not a bare 404.
    let refused = post(
        http,
        "/transfers",
        r#"{"id":"424242","debit_account_id":"2","credit_account_id":"1","amount":999999999,"ledger":840,"code":1}"#,
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    let decided = get(http, "/transfers/424242", Some(API_KEY)).unwrap();
    assert_eq!(decided.status, 200, "{}", decided.body);
    assert_eq!(decided.json["result"], refused.json["result"], "{}", decided.body);
    assert_eq!(decided.json["sequence"], refused.json["sequence"], "{}", decided.body);
    let never = get(http, "/transfers/424243", Some(API_KEY)).unwrap();
    assert_eq!(never.status, 404, "{}", never.body);
    // Errors outside the routes have the same JSON shape.
    let missing = get(http, "/no-such-route", Some(API_KEY)).unwrap();
    assert_eq!(
        (missing.status, missing.json["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{}",
        missing.body
    );
    let wrong_method = request(http, "DELETE", "/transfers", Some(API_KEY), None).unwrap();
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.body);
    assert_eq!(wrong_method.json["error"]["code"], "method_not_allowed", "{}", wrong_method.body);

    // Authentication.
    let no_key = request(http, "POST", "/transfers", None, Some("{}")).unwrap();
    assert_eq!(no_key.status, 401);
    assert_eq!(request(http, "GET", "/accounts/1", Some("wrong-key-0123456789"), None).unwrap().status, 401);

    // The TCP binary API with the Rust client: pipelined, idempotent.
    let mut over_tcp_history = Vec::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect(cluster.gateway_tcp, API_KEY).await.unwrap();
        let transfer = |id: u128, amount: u64| {
            Command::Transfer(Transfer {
                correlation_id: (id as u64).into(),
                id: id.into(),
                debit_account_id: 1u128.into(),
                credit_account_id: 3u128.into(),
                amount: amount.into(),
                ledger: 840.into(),
                code: 1.into(),
                flags: 0.into(),
                ..Default::default()
            })
        };
        let commands: Vec<Command> = (0..500).map(|i| transfer(10_000 + i, 1)).collect();
        let outcomes = client.submit(&commands).await.unwrap();
        assert!(outcomes.iter().all(|o| o.result == ResultCode::Ok));
        assert!(
            outcomes.iter().zip(10_000u64..).all(|(o, c)| o.correlation_id == c),
            "correlation ids echo in order"
        );
        let again = client.submit(&commands[..10]).await.unwrap();
        assert!(again.iter().all(|o| o.result == ResultCode::Exists));
        let account = Command::CreateAccount(CreateAccount {
            correlation_id: 7.into(),
            id: 50u128.into(),
            ledger: 840.into(),
            code: 1.into(),
            flags: 0.into(),
            ..Default::default()
        });
        assert_eq!(client.submit(&[account]).await.unwrap()[0].result, ResultCode::Ok);

        // Reads over TCP, in line with the writes: a lookup sent right behind a
        // transfer (not waiting for its outcome) sees it.
        let paid = client
            .send(&[ledgerbus_client::Transfer::new(20_000, 1, 50, 7).ledger(840).code(1).into()])
            .unwrap();
        let seen = client.account(50).await.unwrap().expect("account 50 exists");
        assert_eq!((seen.credits_posted, seen.balance(), seen.ledger), (7, 7, 840), "{seen:?}");
        assert_eq!(paid.outcomes().await.unwrap()[0].result, ResultCode::Ok);
        let decided = client.transfer(20_000).await.unwrap().expect("transfer 20000 was decided");
        assert_eq!((decided.amount, decided.credit_account_id, decided.result), (7, 50, ResultCode::Ok));
        assert!(decided.sequence > 0);
        let mismatch = [ledgerbus_client::Transfer::new(20_001, 2, 50, 1).ledger(978).code(1).into()];
        assert_eq!(client.submit(&mismatch).await.unwrap()[0].result, ResultCode::LedgerMismatch);
        let how = client.transfer(20_001).await.unwrap().expect("a refusal is a decision");
        assert_eq!(how.result, ResultCode::LedgerMismatch);
        assert_eq!(client.account(999_999).await.unwrap(), None);
        assert_eq!(client.transfer(999_999).await.unwrap(), None);
        // History pages over TCP: only applied transfers, in sequence order.
        let page = client.history(50, 0, 10).await.unwrap().expect("account 50 exists");
        assert_eq!(page.transfers.iter().map(|t| t.id).collect::<Vec<_>>(), [20_000]);
        assert_eq!(page.next_after, None);
        assert_eq!(client.history(999_999, 0, 10).await.unwrap(), None);
        let mut over_tcp = Vec::new();
        let mut after = 0;
        loop {
            let page = client.history(1, after, 128).await.unwrap().expect("account 1 exists");
            assert!(page.transfers.len() <= 128);
            over_tcp.extend(page.transfers.iter().map(|t| t.sequence));
            match page.next_after {
                Some(next) => after = next,
                None => break,
            }
        }
        assert!(over_tcp.len() > 500, "account 1 paid for every transfer above");
        assert!(over_tcp.windows(2).all(|w| w[0] < w[1]), "in sequence order, no repeats across pages");
        over_tcp_history = over_tcp;
        // A wrong API key is refused.
        assert!(Client::connect(cluster.gateway_tcp, "not-a-valid-key-at-all").await.is_err());
    });
    assert_eq!(account_balance(&cluster, 3).1, "1100");
    let over_http = get(http, "/accounts/1/transfers?limit=1000", Some(API_KEY)).unwrap();
    let over_http: Vec<u64> = over_http.json["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(over_tcp_history, over_http, "TCP and HTTP pages tell the same history");

    // Both consumers agree with the sequencer.
    let (sequence, memory, sequencer) = cluster.converge(cluster.memory_http);
    assert_eq!(memory, sequencer, "memory consumer hash at {sequence}");
    let (sequence, disk, sequencer) = cluster.converge(cluster.disk_http);
    assert_eq!(disk, sequencer, "disk consumer hash at {sequence}");

    // Every process serves Prometheus metrics: well-formed, with its own families,
    // the process metrics, and no family named like another's `_total`.
    let scrape = |address, must: &[&str]| {
        let response = get(address, "/metrics", None).unwrap();
        assert_eq!(response.status, 200, "{address}");
        let samples = parse_exposition(&response.body);
        for name in must.iter().chain(&["process_cpu_seconds_total", "process_resident_memory_bytes"]) {
            assert!(
                samples.iter().any(|(series, _)| series.starts_with(name)),
                "{name} missing at {address}"
            );
        }
        samples
    };
    let gateway = scrape(
        http,
        &["ledgerbus_gateway_commands_total", "ledgerbus_gateway_request_duration_seconds_bucket"],
    );
    let posts = r#"ledgerbus_gateway_request_duration_seconds_count{api="http",route="POST /transfers"}"#;
    assert!(gateway.iter().any(|(series, value)| series == posts && *value >= 5.0), "{posts}");
    scrape(cluster.sequencer_status, &["ledgerbus_events_total", "ledgerbus_fsync_seconds_bucket"]);
    for (address, role) in [(cluster.memory_http, "memory"), (cluster.disk_http, "disk")] {
        let samples =
            scrape(address, &["ledgerbus_consumer_applied_sequence", "ledgerbus_consumer_naks_sent_total"]);
        let applied = format!("ledgerbus_consumer_applied_sequence{{consumer=\"{role}\"}}");
        let applied = samples.iter().find(|(series, _)| *series == applied).map(|(_, v)| *v as u64);
        assert_eq!(applied, Some(sequence), "{role} consumer's applied sequence");
    }
    // The read model times its queries by route, and the read-your-writes waits apart.
    let queries = scrape(cluster.memory_http, &["ledgerbus_query_read_your_writes_wait_seconds_bucket"]);
    let reads = r#"ledgerbus_query_duration_seconds_count{route="/accounts/{id}"}"#;
    assert!(queries.iter().any(|(series, value)| series == reads && *value >= 1.0), "{reads}");

    // The OpenAPI document is served, is the file in the repo, and every documented
    // path is routed (no 404/405 for the documented method).
    let served = get(http, "/openapi.json", None).unwrap();
    assert_eq!(served.body, ledgerbus_gateway::http::OPENAPI);
    let mut checked = 0;
    for (path, item) in served.json["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "1");
        for method in item.as_object().unwrap().keys() {
            let response =
                request(http, &method.to_uppercase(), &concrete, Some(API_KEY), Some("{}")).unwrap();
            // Unrouted paths get axum's bare 404/405; our handlers always answer JSON.
            let unrouted = response.status == 405 || (response.status == 404 && response.body.is_empty());
            assert!(!unrouted, "{method} {path} is documented but not routed: {}", response.status);
            checked += 1;
        }
    }
    assert_eq!(checked, 11, "every documented operation was tried");
    println!("e2e: {sequence} events, all checks passed");
}

#[test]
fn hostile_bytes_on_the_gateway_tcp_port_close_only_that_connection() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    let closed = |mut stream: std::net::TcpStream| {
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut sink = [0u8; 256];
        loop {
            match stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    // Not a ClientHello.
    let mut stream = std::net::TcpStream::connect(cluster.gateway_tcp).unwrap();
    stream.write_all(&[0x42; 200]).unwrap();
    assert!(closed(stream));
    // A valid hello, then garbage.
    let mut stream = std::net::TcpStream::connect(cluster.gateway_tcp).unwrap();
    let mut key = [0u8; 64];
    key[..API_KEY.len()].copy_from_slice(API_KEY.as_bytes());
    let mut hello = [0u8; 72];
    ledgerbus_codec::encode(&ledgerbus_codec::messages::ClientHello { api_key: key }, &mut hello).unwrap();
    stream.write_all(&hello).unwrap();
    stream.write_all(&[0xEE; 64]).unwrap();
    assert!(closed(stream));
    // The gateway still serves everyone else.
    let created = post(cluster.gateway_http, "/accounts", r#"{"id":"1","ledger":1,"code":1}"#);
    assert_eq!(created.status, 201, "{}", created.body);
}

/// A gateway with a tiny queue answers what does not fit `busy`, at once, yet every
/// answer still comes back in command order, exactly one per command: busy answers
/// wait behind the results of earlier commands still at the sequencer.
#[test]
fn a_full_gateway_answers_busy_in_command_order() {
    use ledgerbus_codec::messages::{Transfer, TransferResult};
    use ledgerbus_codec::{decode, encode, Message, ResultCode};
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path());
    let created = post(
        cluster.gateway_http,
        "/accounts",
        r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#,
    );
    assert_eq!(created.status, 200, "{}", created.body);
    let (small_http, small_tcp) = (free_tcp(), free_tcp());
    let _small = cluster.spawn_gateway(small_http, small_tcp, &["--queue-max", "8"]);
    wait_until("small gateway", || get(small_http, "/health", None).is_some_and(|r| r.status == 200));

    let mut stream = raw_tcp_client(small_tcp);

    // Many small writes, so that the gateway forwards many groups while earlier
    // ones are still at the sequencer and its queue of 8 overflows.
    const COMMANDS: u64 = 3_000;
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for n in 0..COMMANDS {
                let transfer = Transfer {
                    correlation_id: n.into(),
                    id: u128::from(10_000 + n).into(),
                    debit_account_id: 1u128.into(),
                    credit_account_id: 2u128.into(),
                    amount: 1.into(),
                    ledger: 1.into(),
                    code: 1.into(),
                    flags: 0.into(),
                    ..Default::default()
                };
                let mut frame = [0u8; Transfer::FRAME_SIZE];
                encode(&transfer, &mut frame).unwrap();
                stream.write_all(&frame).unwrap();
            }
        })
    };
    let (mut ok, mut busy) = (0u64, 0u64);
    for expected in 0..COMMANDS {
        let mut frame = [0u8; TransferResult::FRAME_SIZE];
        stream.read_exact(&mut frame).unwrap();
        let (result, _) = decode::<TransferResult>(&frame).unwrap();
        assert_eq!(result.correlation_id.get(), expected, "answers in command order");
        assert_eq!(result.id.get(), u128::from(10_000 + expected));
        match result.result().unwrap() {
            ResultCode::Ok => ok += 1,
            ResultCode::Busy => busy += 1,
            other => panic!("command {expected}: {other:?}"),
        }
    }
    writer.join().unwrap();
    assert!(ok > 0, "some commands were decided");
    assert!(busy > 0, "a queue of 8 overflowed");
    // The gateway counted exactly that.
    let metrics = get(small_http, "/metrics", None).unwrap();
    assert_eq!(metrics.status, 200);
    let sample = |name: &str| -> u64 {
        let line =
            metrics.body.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample(r#"ledgerbus_gateway_commands_total{api="tcp"}"#), ok);
    assert_eq!(sample(r#"ledgerbus_gateway_busy_total{api="tcp"}"#), busy);
    assert_eq!(sample("ledgerbus_gateway_queue_max"), 8);
    assert_eq!(sample("ledgerbus_gateway_sequencer_connected"), 1);
    assert_eq!(sample("ledgerbus_gateway_tcp_clients_connected "), 1, "this client");
    let submissions = r#"ledgerbus_gateway_request_duration_seconds_count{api="tcp",route="submit"}"#;
    assert!(sample(submissions) > 0, "each submission's answer was timed");
    // Exactly the decided ones were applied.
    wait_until("the read model", || {
        get(cluster.gateway_http, "/accounts/2", Some(API_KEY))
            .is_some_and(|r| r.json["credits_posted"].as_str() == Some(ok.to_string().as_str()))
    });
}

/// Parses a Prometheus text exposition strictly enough to catch what breaks scrapers:
/// every sample belongs to a family declared with `# TYPE`, every value parses, and
/// no family is another's name plus `_total`. Returns (series, value) pairs.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut families = std::collections::BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declaration.split_once(' ').expect("# TYPE name kind");
            assert!(families.insert(name.to_string(), kind.to_string()).is_none(), "{name} declared twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| families.get(*base).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(families.contains_key(family), "{series} has no # TYPE");
        samples.push((series.to_string(), value));
    }
    for name in families.keys() {
        assert!(
            !families.contains_key(&format!("{name}_total")),
            "{name} and {name}_total are both families"
        );
    }
    samples
}

/// A gateway with two read models, one of which is not there (then the real one is
/// killed and restarted): reads keep being answered by whichever answers, and a read
/// after a write sees it.
#[test]
fn reads_go_to_a_read_model_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let (http, tcp) = (free_tcp(), free_tcp());
    let nobody = free_tcp().to_string();
    // The launcher names the real memory consumer; the flag adds one nobody serves.
    let _gateway = cluster.spawn_gateway(http, tcp, &["--query-upstream", &nobody]);
    wait_until("gateway", || get(http, "/health", None).is_some_and(|r| r.status == 200));
    let accounts = r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#;
    assert_eq!(post(http, "/accounts", accounts).status, 200);
    for id in 1..=20u64 {
        let transfer = format!(
            r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":1,"code":1}}"#
        );
        assert_eq!(post(http, "/transfers", &transfer).status, 201);
        let account = get(http, "/accounts/2", Some(API_KEY)).unwrap();
        assert_eq!(account.status, 200, "{}", account.body);
        assert_eq!(account.json["credits_posted"], id.to_string(), "read after write #{id}");
    }

    // The only real read model goes away: reads fail clearly, and come back with it.
    cluster.memory_process.as_mut().unwrap().kill_now();
    let gone = get(http, "/accounts/2", Some(API_KEY)).unwrap();
    assert_eq!(gone.status, 503, "{}", gone.body);
    cluster.memory_process = Some(cluster.spawn_consumer("memory"));
    wait_until("reads again", || {
        get(http, "/accounts/2", Some(API_KEY))
            .is_some_and(|r| r.status == 200 && r.json["credits_posted"] == "20")
    });
}

/// Two memory consumers behind the gateway: reads are spread over both, keep being
/// answered (and see the writes before them) while one is killed and restarted, and
/// the restarted one catches up.
#[test]
fn reads_keep_working_while_one_of_two_read_models_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_shaped(dir.path(), None, Vec::new(), 2);
    let http = cluster.gateway_http;
    let second = cluster.launcher.extra_memory[0].1;
    let accounts = r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#;
    assert_eq!(post(http, "/accounts", accounts).status, 200);
    let mut sent = 0u64;
    let mut write_then_read = |cluster: &Cluster, rounds: u64| {
        for _ in 0..rounds {
            sent += 1;
            let transfer = format!(
                r#"{{"id":"{sent}","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":1,"code":1}}"#
            );
            assert_eq!(post(cluster.gateway_http, "/transfers", &transfer).status, 201);
            let account = get(cluster.gateway_http, "/accounts/2", Some(API_KEY)).unwrap();
            assert_eq!(account.status, 200, "{}", account.body);
            assert_eq!(account.json["credits_posted"], sent.to_string(), "read after write #{sent}");
        }
    };
    write_then_read(&cluster, 20);
    let queries = |address| {
        let metrics = get(address, "/metrics", None).unwrap().body;
        metrics
            .lines()
            .find(|line| {
                line.starts_with(r#"ledgerbus_query_duration_seconds_count{route="/accounts/{id}"}"#)
            })
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(queries(cluster.memory_http) >= 1.0 && queries(second) >= 1.0, "reads go to both");

    cluster.memory_process.as_mut().unwrap().kill_now();
    write_then_read(&cluster, 20);
    cluster.memory_process = Some(cluster.spawn_consumer("memory"));
    write_then_read(&cluster, 20);
    for read_model in [cluster.memory_http, second] {
        let (sequence, hash, sequencer) = cluster.converge(read_model);
        assert_eq!(hash, sequencer, "read model at {read_model}, sequence {sequence}");
    }
}
