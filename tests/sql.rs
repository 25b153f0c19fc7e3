//! The SQL projection end to end, real processes on 127.0.0.1, for SQLite and for a
//! real Postgres server started by the test: the seed scenario through the gateway
//! (accounts, top-ups, P2P payments with fee and tax, rejections, two-phase
//! transfers, an expiry) ends with SQL rows equal to the read model and to what the
//! clients were answered, balanced views, and the sequencer's state hash recomputed
//! from SQL alone; a SQL consumer killed with SIGKILL mid-stream resumes with no row
//! missing or twice; one started after 100,000 events catches up.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::postgres::PostgresServer;
use common::*;
use ledgerbus_client::{Account, Client, Command, Outcome, ResultCode, Transfer};
use ledgerbus_consumers::sql::{DatabaseUrl, RawAccount, RawEvent};

const SETTLEMENT: u128 = 1;
const FEES: u128 = 2;
const TAXES: u128 = 3;
const USERS: u128 = 200;
const FIRST_USER: u128 = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The seed's workload plus two-phase transfers; every command's outcome.
fn seed(cluster: &Cluster) -> Vec<Outcome> {
    let gateway = cluster.gateway_tcp;
    runtime().block_on(async move {
        let client = Client::connect(gateway, API_KEY).await.unwrap();
        let mut outcomes = Vec::new();
        let mut accounts: Vec<Command> = vec![
            Account::new(SETTLEMENT, 840, 1).allow_negative().into(),
            Account::new(FEES, 840, 2).into(),
            Account::new(TAXES, 840, 3).into(),
        ];
        accounts.extend((0..USERS).map(|i| Command::from(Account::new(FIRST_USER + i, 840, 10))));
        accounts.push(Account::new(FEES, 840, 2).into()); // exists
        accounts.push(Account::new(FEES, 978, 2).into()); // exists with other fields
        outcomes.extend(client.submit(&accounts).await.unwrap());
        let top_ups: Vec<Command> = (0..USERS)
            .map(|i| Transfer::new(100_000 + i, SETTLEMENT, FIRST_USER + i, 1_000).ledger(840).code(1).into())
            .collect();
        outcomes.extend(client.submit(&top_ups).await.unwrap());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for n in 0..1_500u128 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let payer = FIRST_USER + u128::from(state % USERS as u64);
            let payee = FIRST_USER + (payer - FIRST_USER + 1 + u128::from((state >> 20) % 50)) % USERS;
            // One in ten overdraws: the whole chain is rejected.
            let amount = if state % 10 == 0 { 5_000 } else { 1 + (state >> 32) % 100 };
            let id = 1_000_000 + n * 3;
            let chain: [Command; 3] = [
                Transfer::new(id, payer, payee, amount).ledger(840).code(10).linked().into(),
                Transfer::new(id + 1, payer, FEES, 1 + amount / 100).ledger(840).code(11).linked().into(),
                Transfer::new(id + 2, payer, TAXES, 1 + amount / 50).ledger(840).code(12).into(),
            ];
            outcomes.extend(client.submit(&chain).await.unwrap());
        }
        // Two-phase: a capture of part, a void, and a hold left to expire; plus an
        // unknown account and a retried id.
        let u = FIRST_USER;
        let two_phase: Vec<Command> = vec![
            Transfer::new(9_000_001, u, u + 1, 300).ledger(840).code(20).pending().into(),
            Transfer::post(9_000_002, 9_000_001).amount(200).into(),
            Transfer::new(9_000_003, u + 2, u + 3, 50).ledger(840).code(20).pending().into(),
            Transfer::void(9_000_004, 9_000_003).into(),
            Transfer::new(9_000_005, u + 4, u + 5, 70).ledger(840).code(20).pending().timeout(1).into(),
            Transfer::new(9_000_006, u, 424_242, 5).ledger(840).code(1).into(),
            Transfer::new(100_000, SETTLEMENT, FIRST_USER, 1_000).ledger(840).code(1).into(),
        ];
        outcomes.extend(client.submit(&two_phase).await.unwrap());
        // Let the hold expire: the sequencer appends the expiry by itself.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        outcomes
    })
}

fn read_events(url: &str) -> Vec<RawEvent> {
    let mut db = DatabaseUrl::parse(url).unwrap().connect().unwrap();
    let mut events = Vec::new();
    db.events(&mut |event| {
        events.push(event);
        Ok(())
    })
    .unwrap();
    events
}

fn read_accounts(url: &str) -> HashMap<u128, RawAccount> {
    let mut db = DatabaseUrl::parse(url).unwrap().connect().unwrap();
    let mut accounts = HashMap::new();
    db.accounts(&mut |account| {
        accounts.insert(account.id, account);
        Ok(())
    })
    .unwrap();
    accounts
}

/// Runs `ledgerbus sql verify`; its output.
fn verify(url: &str, expect_hash: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args(["sql", "verify", "--expect-hash", expect_hash])
        .env("LEDGERBUS_SQL_DATABASE", url)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Rows of a one-column query on either database, as text.
fn query_texts(url: &str, sql: &str) -> Vec<String> {
    match DatabaseUrl::parse(url).unwrap() {
        DatabaseUrl::Postgres(url) => {
            let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
            client.query(sql, &[]).unwrap().iter().map(|row| row.get::<_, String>(0)).collect()
        }
        DatabaseUrl::Sqlite(path) => {
            let connection = rusqlite::Connection::open(path).unwrap();
            ledgerbus_consumers::sql::sqlite::register_decimal_sum(&connection).unwrap();
            let mut statement = connection.prepare(sql).unwrap();
            statement.query_map([], |row| row.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
        }
    }
}

fn projection_equals_read_model(url: String, secret: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with_sql(dir.path(), Some(url.clone()));
    let outcomes = seed(&cluster);
    let (head, sql_hash, sequencer_hash) = cluster.converge(cluster.sql_http);
    assert_eq!(sql_hash, sequencer_hash, "the SQL consumer's hash is the sequencer's");

    // Every event is a row, in order, once; every client's answer is there.
    let events = read_events(&url);
    assert_eq!(events.len() as u64, head);
    assert!(events.iter().enumerate().all(|(i, e)| e.sequence == i as i64 + 1), "gap-free, in order");
    for outcome in &outcomes {
        let row = &events[outcome.sequence as usize - 1];
        assert_eq!((row.id, row.result), (outcome.id, i64::from(outcome.result.to_wire())), "{outcome:?}");
    }
    let rejected = outcomes.iter().filter(|o| !o.result.is_success()).count();
    assert!(rejected > 100, "the seed has rejections, kept as rows: {rejected}");
    assert!(events.iter().any(|e| e.kind == 2 && e.id == 9_000_005), "the expiry is a row");
    for code in
        [ResultCode::InsufficientFunds, ResultCode::LinkedEventFailed, ResultCode::ExistsWithDifferentFields]
    {
        assert!(events.iter().any(|e| e.result == i64::from(code.to_wire())), "{code:?} kept");
    }

    // Every account equals the read model's.
    let accounts = read_accounts(&url);
    assert_eq!(accounts.len() as u128, 3 + USERS);
    for (id, row) in &accounts {
        let model = get(cluster.gateway_http, &format!("/accounts/{id}"), Some(API_KEY)).unwrap().json;
        for (field, value) in [
            ("debits_posted", row.debits_posted),
            ("credits_posted", row.credits_posted),
            ("debits_pending", row.debits_pending),
            ("credits_pending", row.credits_pending),
        ] {
            assert_eq!(
                model[field].as_str(),
                Some(value.to_string().as_str()),
                "account {id} {field}: {model}"
            );
        }
        assert_eq!(model["timestamp"].as_u64(), Some(row.timestamp_ns as u64), "account {id}");
    }
    // A sample of transfers equals the read model's.
    for outcome in outcomes.iter().filter(|o| o.result == ResultCode::Ok && o.id >= 1_000_000).step_by(97) {
        let row = &events[outcome.sequence as usize - 1];
        let model =
            get(cluster.gateway_http, &format!("/transfers/{}", outcome.id), Some(API_KEY)).unwrap().json;
        assert_eq!(model["amount"].as_str(), Some(row.amount.to_string().as_str()), "{model}");
        assert_eq!(model["debit_account_id"].as_str(), Some(row.debit.to_string().as_str()), "{model}");
        assert_eq!(model["sequence"].as_u64(), Some(outcome.sequence), "{model}");
    }

    // The views answer the seed's questions.
    let balanced = query_texts(&url, "SELECT CAST(ledger AS TEXT) FROM trial_balance WHERE balanced");
    assert_eq!(balanced, ["840"], "ledger 840 balances");
    let debits = query_texts(&url, "SELECT CAST(debits_posted AS TEXT) FROM trial_balance");
    let credits = query_texts(&url, "SELECT CAST(credits_posted AS TEXT) FROM trial_balance");
    assert_eq!(debits, credits);
    let top_payer = query_texts(
        &url,
        "SELECT CAST(account_id AS TEXT) FROM account_outflow_hourly ORDER BY CAST(outflow AS NUMERIC) DESC LIMIT 1",
    );
    assert_eq!(top_payer, [SETTLEMENT.to_string()], "the settlement account funds everyone");
    let fee_volume =
        query_texts(&url, "SELECT CAST(volume AS TEXT) FROM transfer_volume_daily WHERE code = 11");
    let fees = read_accounts(&url)[&FEES].credits_posted;
    assert_eq!(fee_volume, [fees.to_string()], "fee volume equals the fee account's credits");
    let pending = query_texts(&url, "SELECT CAST(id AS TEXT) FROM pending_transfers");
    assert!(pending.is_empty(), "captured, voided and expired: none pending ({pending:?})");
    let insufficient = query_texts(
        &url,
        "SELECT CAST(transfers AS TEXT) FROM transfer_results_daily WHERE result = 'insufficient_funds'",
    );
    assert_eq!(insufficient.len(), 1);

    // From SQL alone: the sequencer's hash, the accounts, the trial balance.
    let (ok, text) = verify(&url, &sequencer_hash);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("state hash {sequencer_hash}")), "{text}");
    let (ok, text) = verify(&url, "0123456789abcdef");
    assert!(!ok && text.contains("MISMATCH"), "a wrong hash is caught: {text}");

    // A projection edited behind the consumer's back is caught.
    match DatabaseUrl::parse(&url).unwrap() {
        DatabaseUrl::Postgres(u) => {
            let mut client = ::postgres::Client::connect(&u, ::postgres::NoTls).unwrap();
            client
                .batch_execute("UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = 2")
                .unwrap();
        }
        DatabaseUrl::Sqlite(path) => {
            let connection = rusqlite::Connection::open(path).unwrap();
            connection.execute_batch("UPDATE accounts SET credits_posted = '1' WHERE id = '2'").unwrap();
        }
    }
    let (ok, text) = verify(&url, &sequencer_hash);
    assert!(!ok && text.contains("account 2"), "drift is caught: {text}");

    // The password never shows in /status, /metrics or the consumer's settings.
    if let Some(secret) = secret {
        let status = get(cluster.sql_http, "/status", None).unwrap().body;
        let metrics = get(cluster.sql_http, "/metrics", None).unwrap().body;
        assert!(status.contains("\"sql\"") && !status.contains(secret), "{status}");
        assert!(metrics.contains("ledgerbus_sql_transactions_total") && !metrics.contains(secret));
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
            .args(["--check-config", "consumer", "sql", "--database", &url])
            .env("LEDGERBUS_BUS_KEY", BUS_KEY)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&check.stdout);
        assert!(shown.contains("database = ") && !shown.contains(secret), "{shown}");
    }
}

#[test]
fn sqlite_projection_equals_the_read_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    projection_equals_read_model(format!("sqlite://{}", path.display()), None);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the database file is its owner's only: {mode:o}");
}

#[test]
fn postgres_projection_equals_the_read_model() {
    let Some(server) = PostgresServer::start() else { return };
    let url = server.create_database("ledger");
    projection_equals_read_model(url, Some(server.password()));
}

const TRANSFERS: u64 = 60_000;

/// Sends `TRANSFERS` transfers between 10 accounts in batches of 500, counting them
/// into `sent`.
fn stream(gateway: std::net::SocketAddr, sent: Arc<AtomicU64>, first_id: u128, pause: Duration) {
    runtime().block_on(async move {
        let client = Client::connect(gateway, API_KEY).await.unwrap();
        let accounts: Vec<Command> = (1..=10u128)
            .map(|id| {
                let account = Account::new(id, 1, 1);
                (if id == 1 { account.allow_negative() } else { account }).into()
            })
            .collect();
        client.submit(&accounts).await.unwrap();
        for chunk in 0..TRANSFERS / 500 {
            let commands: Vec<Command> = (0..500u64)
                .map(|i| {
                    let n = chunk * 500 + i;
                    let credit = 2 + u128::from(n % 9);
                    Transfer::new(first_id + u128::from(n), 1, credit, 1 + n % 10).ledger(1).code(1).into()
                })
                .collect();
            client.submit(&commands).await.unwrap();
            sent.fetch_add(500, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        }
    });
}

/// The projection holds events 1..=head, each once, and verifies against `hash`.
fn assert_exactly_once(url: &str, head: u64, hash: &str) {
    let events = read_events(url);
    assert_eq!(events.len() as u64, head, "no event missing or twice");
    assert!(events.iter().enumerate().all(|(i, e)| e.sequence == i as i64 + 1), "gap-free, in order");
    let (ok, text) = verify(url, hash);
    assert!(ok, "{text}");
}

fn survives_kill_dash_nine(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with_sql(dir.path(), Some(url.clone()));
    let sent = Arc::new(AtomicU64::new(0));
    let gateway = cluster.gateway_tcp;
    let counter = Arc::clone(&sent);
    let load = std::thread::spawn(move || stream(gateway, counter, 1_000, Duration::from_millis(2)));
    // Kill it twice mid-stream, once right after a commit, once wherever it is.
    for fraction in [3, 2] {
        wait_until("part of the stream", || sent.load(Ordering::Relaxed) >= TRANSFERS / fraction);
        cluster.sql_process.as_mut().unwrap().kill_now();
        std::thread::sleep(Duration::from_millis(200));
        cluster.sql_process = Some(cluster.spawn_consumer("sql"));
    }
    load.join().unwrap();
    let (head, sql_hash, sequencer_hash) = cluster.converge(cluster.sql_http);
    assert_eq!(head, TRANSFERS + 10);
    assert_eq!(sql_hash, sequencer_hash);
    assert_exactly_once(&url, head, &sequencer_hash);
}

#[test]
fn sqlite_consumer_survives_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    survives_kill_dash_nine(format!("sqlite://{}", dir.path().join("ledger.db").display()));
}

#[test]
fn postgres_consumer_survives_kill_dash_nine() {
    let Some(server) = PostgresServer::start() else { return };
    survives_kill_dash_nine(server.create_database("ledger"));
}

#[test]
fn a_sql_consumer_started_after_100000_events_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", db.path().join("late.db").display());
    let mut cluster = Cluster::start_with_sql(dir.path(), Some(url.clone()));
    cluster.sql_process.take().unwrap().kill_now();
    // It starts from nothing: no file, no position, no session known.
    for entry in std::fs::read_dir(db.path()).unwrap().flatten() {
        std::fs::remove_file(entry.path()).unwrap();
    }
    let sent = Arc::new(AtomicU64::new(0));
    let gateway = cluster.gateway_tcp;
    stream(gateway, Arc::clone(&sent), 1_000, Duration::ZERO);
    stream(gateway, Arc::clone(&sent), 1_000_000, Duration::ZERO);
    let (head, _, _) = cluster.converge(cluster.memory_http);
    assert!(head >= 100_000, "{head} events");
    cluster.sql_process = Some(cluster.spawn_consumer("sql"));
    let (caught_up, sql_hash, sequencer_hash) = cluster.converge(cluster.sql_http);
    assert_eq!((caught_up, &sql_hash), (head, &sequencer_hash));
    assert_exactly_once(&url, head, &sequencer_hash);
    let aside: Vec<_> = std::fs::read_dir(db.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(
        aside.iter().all(|name| !name.to_string_lossy().contains("previous")),
        "the same log's projection is never moved aside: {aside:?}"
    );
}

/// The sequencer starts a new log: the old projection is kept aside, the new one
/// follows the new log from its first event.
fn a_new_log_moves_the_old_projection_aside(url: String) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with_sql(dir.path(), Some(url.clone()));
    let http = cluster.gateway_http;
    let accounts = r#"[{"id":"1","ledger":1,"code":1,"allow_negative":true},{"id":"2","ledger":1,"code":1}]"#;
    assert_eq!(post(http, "/accounts", accounts).status, 200);
    let moved = r#"{"id":"5","debit_account_id":"1","credit_account_id":"2","amount":9,"ledger":1,"code":1}"#;
    assert_eq!(post(http, "/transfers", moved).status, 201);
    let (_, old_hash, _) = cluster.converge(cluster.sql_http);

    cluster.sequencer_process.as_mut().unwrap().kill_now();
    std::fs::remove_dir_all(dir.path().join("sequencer")).unwrap();
    cluster.sequencer_process = Some(cluster.spawn_sequencer());
    wait_until("gateway to reconnect", || get(http, "/health", None).is_some_and(|r| r.status == 200));
    let accounts = r#"[{"id":"7","ledger":1,"code":1,"allow_negative":true},{"id":"8","ledger":1,"code":1}]"#;
    assert_eq!(post(http, "/accounts", accounts).status, 200);
    let (sequence, sql_hash, sequencer_hash) = cluster.converge(cluster.sql_http);
    assert_eq!((sequence, &sql_hash), (2, &sequencer_hash), "the new log's two events");
    assert_ne!(sql_hash, old_hash);
    let accounts = read_accounts(&url);
    assert_eq!(accounts.keys().copied().collect::<std::collections::BTreeSet<_>>(), [7, 8].into());
    let (ok, text) = verify(&url, &sequencer_hash);
    assert!(ok, "{text}");
    (cluster, dir)
}

#[test]
fn sqlite_keeps_the_old_log_aside() {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("ledger.db");
    let _cluster = a_new_log_moves_the_old_projection_aside(format!("sqlite://{}", path.display()));
    let aside: Vec<_> = std::fs::read_dir(db.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.to_string_lossy().ends_with(".db.previous-") || p.to_string_lossy().contains(".db.previous-")
        })
        .filter(|p| !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let old = rusqlite::Connection::open(&aside[0]).unwrap();
    let transfers: i64 = old.query_row("SELECT count(*) FROM transfers", [], |r| r.get(0)).unwrap();
    assert_eq!(transfers, 1, "the old log's rows are kept");
}

#[test]
fn postgres_keeps_the_old_log_aside() {
    let Some(server) = PostgresServer::start() else { return };
    let url = server.create_database("ledger");
    let _cluster = a_new_log_moves_the_old_projection_aside(url.clone());
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let schemas: Vec<String> = client
        .query("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'ledgerbus_previous_%'", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(schemas.len(), 1, "{schemas:?}");
    let transfers: i64 =
        client.query_one(&format!("SELECT count(*) FROM {}.transfers", schemas[0]), &[]).unwrap().get(0);
    assert_eq!(transfers, 1, "the old log's rows are kept");
}

#[test]
fn postgres_over_tls_only_with_its_ca() {
    let Some(server) = PostgresServer::start_tls() else { return };
    let url = server.create_database("ledger");
    let bench = |database: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
            .args([
                "--log-level",
                "warn",
                "bench",
                "sql",
                "--events",
                "3000",
                "--accounts",
                "10",
                "--per-event",
                "0",
            ])
            .env("LEDGERBUS_BENCH_SQL_DATABASE", database)
            .output()
            .unwrap()
    };
    let tls = format!("{url}?sslmode=require&sslrootcert={}", server.ca().display());
    let out = bench(&tls);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("3000 events"), "{text}");
    assert!(!text.contains(server.password()), "{text}");
    // Plain TCP is refused by the server; a CA that did not sign its certificate, by us.
    for refused in [url.clone(), format!("{url}?sslrootcert={}", server.other_ca().display())] {
        let out = bench(&refused);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{refused}: {text}");
        assert!(!text.contains(server.password()), "{text}");
    }
}

/// A database that stops answering holds back its own consumer only: the sequencer
/// and the memory consumer go on at full speed; the SQL consumer retries, then
/// catches up, with every event once.
#[test]
fn a_stalled_database_holds_back_only_its_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("ledger.db");
    let url = format!("sqlite://{}", path.display());
    let cluster = Cluster::start_with_sql(dir.path(), Some(url.clone()));
    let sent = Arc::new(AtomicU64::new(0));
    let gateway = cluster.gateway_tcp;
    cluster.converge(cluster.sql_http);

    // Another process takes the database's write lock and keeps it.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = std::time::Instant::now();
    let counter = Arc::clone(&sent);
    stream(gateway, counter, 1_000, Duration::ZERO);
    let (head, memory_hash, sequencer_hash) = cluster.converge(cluster.memory_http);
    assert_eq!((head, &memory_hash), (TRANSFERS + 10, &sequencer_hash), "the rest of the system went on");
    let status = get(cluster.sql_http, "/status", None).unwrap().json;
    assert!(status["last_sequence"].as_u64().unwrap() < head, "the SQL consumer waits: {status}");

    // Longer than the consumer's busy timeout (5 s): its write fails and is retried.
    std::thread::sleep(Duration::from_millis(6_500).saturating_sub(locked.elapsed()));
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    let (caught_up, sql_hash, _) = cluster.converge(cluster.sql_http);
    assert_eq!((caught_up, &sql_hash), (head, &sequencer_hash));
    assert_exactly_once(&url, head, &sequencer_hash);
    let metrics = get(cluster.sql_http, "/metrics", None).unwrap().body;
    let retries: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ledgerbus_sql_write_retries_total{consumer=\"sql\"} "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no retry counter in {metrics}"));
    assert!(retries > 0, "it retried while the database was locked");
}
