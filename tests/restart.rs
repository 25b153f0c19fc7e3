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
    assert_eq!(account.json["credits_posted"], "10");
    for consumer in [cluster.memory_http, cluster.disk_http] {
        let (_, consumer_hash, sequencer_hash) = cluster.converge(consumer);
        assert_eq!(consumer_hash, sequencer_hash);
    }
}
