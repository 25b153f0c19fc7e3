//! The README's "Running the parts yourself" block, run as written: its `ledgerbus`
//! lines are started in their order with no pause between them (so each process must
//! wait for what it depends on by itself), then its request is sent, and both
//! consumers must reach the sequencer's state. If the README changes, this follows it.
//!
//! It uses the README's own addresses (127.0.0.1:7000–7003, 7070, 7100, 7101,
//! 8080–8082), which no other test of the suite binds.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, request, Process};

fn readme_block(section: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find(section).unwrap_or_else(|| panic!("README has no {section}"));
    let rest = &readme[start..];
    // The second sh block of the section (the first installs the binary).
    let blocks: Vec<&str> = rest.split("```sh\n").skip(1).take(2).collect();
    let block = blocks[1].split("```").next().unwrap();
    block.lines().map(str::to_string).collect()
}

#[test]
fn running_the_parts_yourself_works_as_written() {
    let lines = readme_block("## Running the parts yourself");
    let commands: Vec<Vec<String>> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("ledgerbus "))
        .map(|line| line.trim_end_matches('&').split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(commands.len(), 4, "sequencer, two consumers, gateway: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("export LEDGERBUS_BUS_KEY=")), "{lines:?}");

    let dir = tempfile::tempdir().unwrap();
    let api_key = "readme-api-key-0123456789abcdef";
    let mut processes = Vec::new();
    for args in &commands {
        let child = Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("LEDGERBUS_CONFIG")
            .env("LEDGERBUS_SEQUENCER_SECRET", "readme-secret-0123456789abcdef")
            .env("LEDGERBUS_API_KEYS", api_key)
            .env("LEDGERBUS_BUS_KEY", "ab".repeat(32))
            .env("LEDGERBUS_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start ledgerbus");
        processes.push(Process(child));
    }

    // The README's request, retried while the gateway comes up (curl --retry).
    let gateway = "127.0.0.1:8080".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let created = loop {
        let answer = request(
            gateway,
            "POST",
            "/accounts",
            Some(api_key),
            Some(r#"{"id":"42","ledger":840,"code":1}"#),
        );
        match answer {
            Some(answer) if answer.status != 503 => break answer,
            _ => {
                assert!(Instant::now() < deadline, "the gateway never answered");
                for process in processes.iter_mut() {
                    assert!(
                        process.0.try_wait().unwrap().is_none(),
                        "a part exited while the others started"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(created.status, 201, "{}", created.body);

    // Both consumers reach the sequencer's state. The sequencer's own /status is read
    // again each time: it may show the account's event a moment after the answer.
    for consumer in ["127.0.0.1:8081", "127.0.0.1:8082"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sequencer = get("127.0.0.1:7003".parse().unwrap(), "/status", None).unwrap().json;
            let status = get(consumer.parse().unwrap(), "/status", None).map(|r| r.json);
            if status.as_ref().is_some_and(|s| {
                s["last_sequence"] == sequencer["last_sequence"]
                    && s["last_sequence"].as_u64() >= Some(1)
                    && s["state_hash"] == sequencer["state_hash"]
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "{consumer} never caught up: {status:?} vs {sequencer}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let account = get(gateway, "/accounts/42", Some(api_key)).unwrap();
    assert_eq!(account.status, 200, "{}", account.body);
    assert!(dir.path().join("data/seq").is_dir() && dir.path().join("data/disk").is_dir());
}

/// What a clone's user reads must be in the clone: no pointer outside the repository.
#[test]
fn docs_point_only_inside_the_repository() {
    for doc in ["README.md", "docs/architecture.md"] {
        let text = std::fs::read_to_string(format!("{}/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(!text.contains("../"), "{doc} points outside the repository");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("docs/architecture.md"), "the README points at the architecture document");
}
