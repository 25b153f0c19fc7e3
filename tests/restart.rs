//! The sequencer restarts under a running system: the gateway reconnects by itself
//! (503 meanwhile, never a hang), the consumers keep following the same log, and
//! requests sent again with the same ids are answered `exists`.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn gateway_and_consumers_ride_out_a_sequencer_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let http = cluster.gateway_http;
    assert_eq!(
        post(
            http,
            "/accounts",
            r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#
        )
        .status,
        200
    );
    let transfer = |id: u32| {
        format!(
            r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":5,"ledger":1,"code":1}}"#
        )
    };
    assert_eq!(post(http, "/transfers", &transfer(10)).status, 201);

    // Sequencer down: the gateway answers 503 (retry later, with the same ids).
    cluster.sequencer_process.as_mut().unwrap().kill_now();
    wait_until("gateway to notice", || get(http, "/health", None).is_some_and(|r| r.status == 503));
    let refused = post(http, "/transfers", &transfer(11));
    assert_eq!(refused.status, 503, "{}", refused.body);

    // Back up on the same data: the gateway reconnects by itself.
    cluster.sequencer_process = Some(cluster.spawn_sequencer());
    wait_until("gateway to reconnect", || get(http, "/health", None).is_some_and(|r| r.status == 200));
    let retried = post(http, "/transfers", &transfer(11));
    assert_eq!(retried.status, 201, "{}", retried.body);
    let again = post(http, "/transfers", &transfer(10));
    assert_eq!(
        (again.status, again.json["result"].as_str()),
        (200, Some("exists")),
        "applied before the restart"
    );
    std::thread::sleep(Duration::from_millis(100));
    let account = get(http, "/accounts/2", Some(API_KEY)).unwrap();
    assert_eq!(account.json["credits_posted"], "10", "{} {}", account.status, account.body);
    for consumer in [cluster.memory_http, cluster.disk_http] {
        let (_, consumer_hash, sequencer_hash) = cluster.converge(consumer);
        assert_eq!(consumer_hash, sequencer_hash);
    }
}

/// Pipelined TCP clients keep sending while the sequencer is killed and restarted.
/// Commands in flight at the crash have an unknown outcome: the gateway closes their
/// connections, the Rust client reconnects and re-sends them with the same ids, and
/// whatever is answered `busy` meanwhile is retried. In the end every transfer is
/// applied exactly once: the credited account holds exactly one unit per transfer.
#[test]
fn pipelined_tcp_clients_lose_nothing_and_apply_nothing_twice_across_a_sequencer_crash() {
    use ledgerbus_client::{Client, Command};
    use ledgerbus_codec::messages::Transfer;
    use ledgerbus_codec::ResultCode;

    const SENDERS: u64 = 8;
    const PER_SENDER: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let created = post(
        cluster.gateway_http,
        "/accounts",
        r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#,
    );
    assert_eq!(created.status, 200, "{}", created.body);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = runtime.block_on(Client::connect(cluster.gateway_tcp, API_KEY)).unwrap();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let client = client.clone();
            runtime.spawn(async move {
                for n in 0..PER_SENDER {
                    let transfer = Transfer {
                        correlation_id: n.into(),
                        id: u128::from(1_000_000 + sender * PER_SENDER + n).into(),
                        debit_account_id: 1u128.into(),
                        credit_account_id: 2u128.into(),
                        amount: 1.into(),
                        ledger: 1.into(),
                        code: 1.into(),
                        flags: 0.into(),
                        ..Default::default()
                    };
                    // Retry `busy` (sequencer down) with the same id until decided.
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    loop {
                        let outcomes = client.submit(&[Command::Transfer(transfer)]).await.unwrap();
                        match outcomes[0].result {
                            ResultCode::Ok | ResultCode::Exists => break,
                            ResultCode::Busy if std::time::Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(20)).await
                            }
                            other => panic!("transfer {n} of sender {sender}: {other:?}"),
                        }
                    }
                    if n % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            })
        })
        .collect();
    // Crash the sequencer while transfers are in flight, then bring it back.
    std::thread::sleep(Duration::from_millis(150));
    cluster.sequencer_process.as_mut().unwrap().kill_now();
    std::thread::sleep(Duration::from_millis(300));
    cluster.sequencer_process = Some(cluster.spawn_sequencer());
    runtime.block_on(async {
        for sender in senders {
            tokio::time::timeout(Duration::from_secs(90), sender).await.expect("senders finish").unwrap();
        }
    });
    for consumer in [cluster.memory_http, cluster.disk_http] {
        let (_, consumer_hash, sequencer_hash) = cluster.converge(consumer);
        assert_eq!(consumer_hash, sequencer_hash);
    }
    let total = SENDERS * PER_SENDER;
    let account = get(cluster.gateway_http, "/accounts/2", Some(API_KEY)).unwrap();
    assert_eq!(account.json["credits_posted"], total.to_string(), "one unit per transfer, each applied once");
    let settlement = get(cluster.gateway_http, "/accounts/1", Some(API_KEY)).unwrap();
    assert_eq!(settlement.json["debits_posted"], total.to_string());
}
