//! A three-member sequencer group as real processes on 127.0.0.1, with a gateway and
//! both consumers, under load over HTTP and TCP: the leader is killed with SIGKILL
//! again and again (`ledgerbus bench failover`). Every acknowledged transfer must be
//! in the log exactly once, every member and both consumers must end on the same
//! state hash, and no consumer may have needed a restart.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn killing_the_leader_again_and_again_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args([
            "bench",
            "failover",
            "--replicas",
            "3",
            "--kills",
            "3",
            "--settle",
            "1",
            "--clients",
            "2",
            "--json",
        ])
        .args(["--durability", "os"])
        .output()
        .expect("run ledgerbus bench failover");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failover failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(last).expect("JSON report");
    assert_eq!(report["kills"], 3);
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["consumers_restarted"], 0, "{report}");
    assert_eq!(report["hashes_match"], true, "{report}");
    assert!(report["acknowledged"].as_u64().unwrap() > 100, "load ran throughout: {report}");
    let each = report["failover_ms"]["each"].as_array().unwrap();
    assert_eq!(each.len(), 3);
    // Not a performance bound (the benchmark reports that): each kill was survived.
    assert!(each.iter().all(|ms| ms.as_f64().unwrap() < 10_000.0), "{report}");
    assert!(started.elapsed() < Duration::from_secs(240));
}
