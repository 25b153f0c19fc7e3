//! `ledgerbus bench failover`: a replicated group under load, its leader killed with
//! SIGKILL again and again. Per kill it reports the longest time without answers
//! around the kill, from the old leader's last answer to the new leader's first
//! (`failover_ms`); at the end it reads the whole log
//! back and counts acknowledged transfers that are missing (`lost`) or applied twice
//! (`duplicated`), checks every member's and both consumers' state hashes, and that
//! no consumer had to be restarted.
//!
//! The load is closed-loop, half over the TCP API and half over HTTP. A command
//! whose answer did not come (the gateway gave up, or answered 503) is sent again
//! with the same id until it is answered, as a client is told to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use ledgerbus_client::{Client, Command as ClientCommand};
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, Frame, ResultCode};

use super::demo::{Shape, System};
use crate::cli::{BenchFailoverArgs, BusSecurityMode};

/// One acknowledged transfer.
#[derive(Debug, Clone, Copy)]
struct Ack {
    id: u128,
    at: Instant,
}

#[derive(Default)]
struct Acks {
    list: Mutex<Vec<Ack>>,
    retries: AtomicU64,
}

impl Acks {
    fn push(&self, id: u128) {
        if let Ok(mut list) = self.list.lock() {
            list.push(Ack { id, at: Instant::now() });
        }
    }

    /// The latest answer so far.
    fn latest(&self) -> Option<Instant> {
        self.list.lock().ok().and_then(|list| list.iter().map(|a| a.at).max())
    }

    /// The longest silence that ends after `t` (and starts at most 100 ms before it):
    /// from the old leader's last answer to the new leader's first. Answers already
    /// on their way when the leader died arrive just after `t` and do not end it.
    fn silence_after(&self, t: Instant) -> Option<Duration> {
        let mut times: Vec<Instant> = self
            .list
            .lock()
            .ok()?
            .iter()
            .map(|a| a.at)
            .filter(|at| *at + Duration::from_millis(100) >= t)
            .collect();
        times.sort();
        times.windows(2).filter(|w| w[1] > t).map(|w| w[1] - w[0]).max()
    }
}

fn transfer(id: u128) -> Transfer {
    Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: 1u128.into(),
        credit_account_id: 2u128.into(),
        amount: 1.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: 0.into(),
        ..Default::default()
    }
}

/// Closed-loop TCP clients: each sends one transfer, waits, and re-sends the same id
/// until it is answered.
async fn tcp_load(
    gateway: SocketAddr,
    key: String,
    ids: Arc<AtomicU64>,
    acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
) {
    let client = loop {
        match Client::connect(gateway, &key).await {
            Ok(client) => break client,
            Err(_) if !stop.load(Ordering::Relaxed) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return,
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let id = u128::from(ids.fetch_add(1, Ordering::Relaxed));
        loop {
            match client.submit(&[ClientCommand::Transfer(transfer(id))]).await {
                Ok(outcomes) if outcomes.first().is_some_and(|o| o.result.is_success()) => {
                    acks.push(id);
                    break;
                }
                _ => {
                    acks.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// One HTTP request on a new connection: the status code, or `None`.
fn post_transfer(gateway: SocketAddr, key: &str, id: u128) -> Option<u16> {
    let body = format!(
        r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1}}"#
    );
    ledgerbus_tools::cluster::http_request(gateway, "POST", "/transfers", Some(key), Some(&body))
        .map(|(s, _)| s)
}

/// Closed-loop HTTP clients, like [`tcp_load`].
fn http_load(gateway: SocketAddr, key: &str, ids: &AtomicU64, acks: &Acks, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let id = u128::from(ids.fetch_add(1, Ordering::Relaxed));
        loop {
            // 201: decided now; 200: it had been decided (a re-send after a lost answer).
            if matches!(post_transfer(gateway, key, id), Some(200 | 201)) {
                acks.push(id);
                break;
            }
            acks.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether every member answers and its commit index is within 256 entries of the
/// others (under load followers learn the commit a few in-flight batches late).
fn caught_up(system: &System) -> bool {
    let commits: Option<Vec<u64>> = system
        .replicas()
        .iter()
        .map(|m| {
            let (_, status) = ledgerbus_tools::cluster::http_json(m.status, "/status", None)?;
            status["group"]["commit_index"].as_u64()
        })
        .collect();
    commits.is_some_and(|c| c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) <= 256)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs the benchmark.
pub fn run(args: &BenchFailoverArgs) -> anyhow::Result<()> {
    eprintln!(
        "starting a {}-member group, a gateway and both consumers on 127.0.0.1 (--durability {})",
        args.replicas, args.durability
    );
    let local = "127.0.0.1:0".parse().expect("valid address");
    let mut system = System::start(
        args.durability,
        None,
        local,
        local,
        None,
        Shape {
            transfer_capacity: None,
            bus_security: BusSecurityMode::Aes256Gcm,
            replicas: args.replicas,
            sql: None,
            idle: Vec::new(),
            memory_consumers: 1,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let key = system.api_key.clone();
    let (tcp, http) = (system.addresses.gateway_tcp, system.addresses.gateway_http);
    runtime.block_on(async {
        let client = Client::connect(tcp, &key).await.context("connecting to the gateway")?;
        let setup = [1u128, 2].map(|id| {
            ClientCommand::CreateAccount(CreateAccount {
                correlation_id: 0.into(),
                id: id.into(),
                ledger: 840.into(),
                code: 1.into(),
                flags: account_flags::ALLOW_NEGATIVE.into(),
                ..Default::default()
            })
        });
        client.submit(&setup).await.context("creating the accounts")?;
        anyhow::Ok(())
    })?;

    let ids = Arc::new(AtomicU64::new(1_000));
    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tcp_tasks = Vec::new();
    for _ in 0..args.clients {
        tcp_tasks.push(runtime.spawn(tcp_load(tcp, key.clone(), ids.clone(), acks.clone(), stop.clone())));
    }
    let http_threads: Vec<_> = (0..args.clients)
        .map(|_| {
            let (ids, acks, stop, key) = (ids.clone(), acks.clone(), stop.clone(), key.clone());
            std::thread::spawn(move || http_load(http, &key, &ids, &acks, &stop))
        })
        .collect();

    let settle = Duration::from_secs_f64(args.settle);
    let progress = ProgressBar::new(u64::from(args.kills)).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} kills").expect("valid template"),
    );
    progress.set_message("failover");
    let mut failovers = Vec::new();
    for kill in 0..args.kills {
        std::thread::sleep(settle);
        // Every member current again (the last victim restarted and caught up): a
        // failover is measured on a healthy group, not on one still repairing.
        let healthy_by = Instant::now() + Duration::from_secs(30);
        while !caught_up(&system) {
            if Instant::now() > healthy_by {
                bail!("the group did not catch up within 30 s before kill {}", kill + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A loaded machine can cost the group an election of its own: wait it out.
        let leader_by = Instant::now() + Duration::from_secs(15);
        let leader = loop {
            match system.leader() {
                Some(leader) => break leader,
                None if Instant::now() < leader_by => std::thread::sleep(Duration::from_millis(20)),
                None => bail!("no leader within 15 s before kill {}", kill + 1),
            }
        };
        let killed_at = Instant::now();
        system.kill_sequencer(leader);
        // Wait until answers have flowed for a while after the kill.
        let deadline = killed_at + Duration::from_secs(15);
        while acks.latest().is_none_or(|latest| latest < killed_at + Duration::from_secs(1)) {
            if Instant::now() > deadline {
                bail!("no answer within 15 s after killing replica {} (kill {})", leader + 1, kill + 1);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let ms = acks.silence_after(killed_at).unwrap_or_default().as_secs_f64() * 1e3;
        let new_leader = system.leader();
        let term = new_leader.and_then(|index| {
            let status = system.replicas().get(index)?.status;
            ledgerbus_tools::cluster::http_json(status, "/status", None)?.1["group"]["term"].as_u64()
        });
        progress.suspend(|| {
            eprintln!(
                "kill {}: replica {} (the leader): {ms:.0} ms without answers; replica {} leads in term {}",
                kill + 1,
                leader + 1,
                new_leader.map_or(0, |l| l + 1),
                term.unwrap_or(0)
            )
        });
        failovers.push(ms);
        system.restart_sequencer(leader)?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    std::thread::sleep(settle);
    stop.store(true, Ordering::Relaxed);
    for task in tcp_tasks {
        let _ = runtime.block_on(task);
    }
    for thread in http_threads {
        let _ = thread.join();
    }
    let verified = system.verify_hashes();
    let consumers_restarted =
        ["memory consumer", "disk consumer"].iter().filter(|name| system.exited(name)).count();

    // Read the log back: each acknowledged transfer must be applied exactly once.
    let leader = system.leader().unwrap_or(0);
    let replay = system.replicas().get(leader).map_or(system.addresses.replay, |m| m.replay);
    let replay_key = ledgerbus_transport::BusKeys::parse(&system.bus_key)?.replay_key();
    let mut applied: HashMap<u128, u32> = HashMap::new();
    ledgerbus_log::replay_client::replay(replay, &replay_key, 0, 1, 0, |_, frame| {
        if let Ok((Frame::TransferEvent(event), _)) = Frame::decode(frame) {
            if event.result() == Ok(ResultCode::Ok) {
                *applied.entry(event.id.get()).or_default() += 1;
            }
        }
        Ok(())
    })
    .context("reading the log back")?;
    let acknowledged: Vec<Ack> = acks.list.lock().map(|l| l.clone()).unwrap_or_default();
    let lost = acknowledged.iter().filter(|a| !applied.contains_key(&a.id)).count();
    let duplicated = applied.values().filter(|n| **n > 1).count();

    let mut sorted = failovers.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p99, max) =
        (percentile(&sorted, 0.5), percentile(&sorted, 0.99), sorted.last().copied().unwrap_or(0.0));
    println!(
        "bench failover: {} members, --durability {}, {} kills of the leader",
        args.replicas, args.durability, args.kills
    );
    println!("  failover_ms        p50 {p50:.0}, p99 {p99:.0}, max {max:.0}  (the old leader's last answer to the new one's first)");
    println!(
        "  acknowledged       {} transfers ({} re-sends)",
        acknowledged.len(),
        acks.retries.load(Ordering::Relaxed)
    );
    println!("  lost               {lost}");
    println!("  duplicated         {duplicated}");
    println!("  consumers restarted {consumers_restarted}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "replicas": args.replicas,
                "durability": args.durability.to_string(),
                "kills": args.kills,
                "failover_ms": { "p50": p50, "p99": p99, "max": max, "each": failovers },
                "acknowledged": acknowledged.len(),
                "resent": acks.retries.load(Ordering::Relaxed),
                "lost": lost,
                "duplicated": duplicated,
                "consumers_restarted": consumers_restarted,
                "hashes_match": verified.is_ok(),
            })
        );
    }
    verified?;
    if lost > 0 || duplicated > 0 || consumers_restarted > 0 {
        bail!("{lost} lost, {duplicated} duplicated, {consumers_restarted} consumers restarted");
    }
    Ok(())
}
