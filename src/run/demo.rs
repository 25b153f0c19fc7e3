//! `ledgerbus demo`: the whole system on one host. It starts the sequencer, a
//! gateway, a memory consumer and a disk consumer as child processes of this binary
//! on free 127.0.0.1 ports, runs a short workload through the gateway, checks that
//! both consumers reached the sequencer's state hash, then serves until Ctrl-C or
//! `--duration`. The children are stopped (SIGTERM, then SIGKILL) when it exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use ledgerbus_client::{Client, Command as ClientCommand};
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};

use ledgerbus_tools::cluster::{self, http_json, Addresses, Cluster, Credentials, MemberAddresses, Service};

use crate::cli::{BusSecurityMode, DemoArgs};

/// `address` if it can be bound now (port 0: a free port on its IP). A port already
/// taken is refused here, naming it: the child would fail to bind it, and whatever
/// holds it might even answer the health check in its place.
fn with_free_port(address: SocketAddr, what: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    if address.port() == 0 {
        return cluster::free_port(address.ip(), |a| std::net::TcpListener::bind(a).is_ok());
    }
    match std::net::TcpListener::bind(address) {
        Ok(_) => Ok(address),
        Err(error) => {
            bail!("the {what} address {address} is not available ({error}); choose another with {flag}")
        }
    }
}

fn random_hex() -> anyhow::Result<String> {
    random_hex_of::<16>()
}

fn random_hex_of<const N: usize>() -> anyhow::Result<String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random key: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What kind of system [`System::start`] starts.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Sizes the transfer-id indexes (their default otherwise).
    pub transfer_capacity: Option<usize>,
    /// Whether the bus is sealed.
    pub bus_security: BusSecurityMode,
    /// 1 sequencer, or a group of 3 or 5.
    pub replicas: usize,
    /// A SQL consumer's database, if the system has one.
    pub sql: Option<String>,
    /// The idle strategy's settings for every process, as environment variables
    /// (empty: their defaults).
    pub idle: Vec<(&'static str, String)>,
    /// Memory consumers (at least 1); the gateway spreads reads over them.
    pub memory_consumers: usize,
}

/// A whole ledgerbus started as child processes; stopped when dropped.
pub struct System {
    /// Where everything listens.
    pub addresses: Addresses,
    /// The client API key.
    pub api_key: String,
    /// The bus key, for tools that join the bus or replay from it.
    pub bus_key: String,
    /// Where the data lives.
    pub data: PathBuf,
    /// How its processes were started (to start one again).
    pub cluster: Cluster,
    services: Vec<Service>,
    _temp: Option<tempfile::TempDir>,
}

impl System {
    /// Its addresses, as `cluster.toml` holds them.
    pub fn cluster_file(&self) -> crate::cluster_file::ClusterFile {
        let a = &self.addresses;
        crate::cluster_file::ClusterFile {
            gateway_http: a.gateway_http,
            gateway_tcp: a.gateway_tcp,
            sequencer_gateway: a.sequencer,
            sequencer_control: a.control,
            sequencer_replay: a.replay,
            sequencer_status: a.sequencer_status,
            memory_consumer_udp: a.memory_udp,
            memory_consumer_http: a.memory_http,
            disk_consumer_udp: a.disk_udp,
            disk_consumer_http: a.disk_http,
        }
    }

    /// Starts sequencer(s), consumers and gateway on free ports (or the given ones).
    pub fn start(
        durability: crate::cli::Durability,
        data: Option<PathBuf>,
        http: SocketAddr,
        tcp: SocketAddr,
        api_key: Option<String>,
        shape: Shape,
    ) -> anyhow::Result<System> {
        let Shape { transfer_capacity, bus_security, replicas, sql, idle, memory_consumers } = shape;
        let (temp, data) = match data {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::Builder::new().prefix("ledgerbus-demo-").tempdir()?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        std::fs::create_dir_all(&data)?;
        let credentials = Credentials {
            sequencer_secret: random_hex()?,
            api_key: match api_key {
                Some(key) => key,
                None => random_hex()?,
            },
            bus_key: random_hex_of::<32>()?,
            bus_security: match bus_security {
                BusSecurityMode::Aes256Gcm => "aes-256-gcm",
                BusSecurityMode::None => "none",
            },
        };
        // A port picked here can still be taken by someone else before the child
        // binds it; that is our race, not the user's problem: pick again (ports the
        // user chose are checked again too, and reported if really taken).
        let mut attempt = 1;
        let (addresses, services, cluster) = loop {
            let addresses = Addresses::free(
                with_free_port(http, "gateway HTTP", "--http")?,
                with_free_port(tcp, "gateway TCP", "--tcp")?,
            )?;
            let members =
                if replicas > 1 { MemberAddresses::group(replicas, &addresses)? } else { Vec::new() };
            let cluster = Cluster {
                exe: std::env::current_exe().context("locating the ledgerbus binary")?,
                data: data.clone(),
                addresses,
                credentials: credentials.clone(),
                durability,
                transfer_capacity,
                snapshot_every: None,
                log_level: "warn",
                replicas: members,
                sql: sql.clone(),
                idle: idle.clone(),
                extra_memory: (1..memory_consumers.max(1))
                    .map(|_| {
                        Ok((ledgerbus_tools::cluster::free_udp()?, ledgerbus_tools::cluster::free_tcp()?))
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            match cluster.start() {
                Ok(services) => break (addresses, services, cluster),
                Err(error) if attempt < 3 && format!("{error:#}").contains("in use") => {
                    tracing::warn!(attempt, error = %format!("{error:#}"), "a port was taken while starting; picking others");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
        let Credentials { api_key, bus_key, .. } = credentials;
        Ok(System { addresses, api_key, bus_key, data, cluster, services, _temp: temp })
    }

    /// Every sequencer's `/status` address (one, or each group member's).
    pub fn sequencer_statuses(&self) -> Vec<SocketAddr> {
        self.cluster.sequencer_statuses()
    }

    /// Waits for every consumer (each memory consumer, the disk consumer, the SQL
    /// consumer if there is one) and every group member to reach the sequencer's
    /// position, and compares their state hashes with the sequencer's.
    pub fn verify_hashes(&self) -> anyhow::Result<()> {
        verify_hashes(&self.sequencer_statuses(), &self.cluster.consumer_statuses())
    }

    /// A replicated group's members (empty: one sequencer).
    pub fn replicas(&self) -> &[MemberAddresses] {
        &self.cluster.replicas
    }

    /// The group member that leads now (0 for a single sequencer), if any.
    pub fn leader(&self) -> Option<usize> {
        self.cluster.leader()
    }

    /// Kills sequencer `index` (0-based) at once, as a crash would (SIGKILL).
    pub fn kill_sequencer(&mut self, index: usize) -> bool {
        let name = if self.cluster.replicas.is_empty() { "sequencer" } else { cluster::MEMBER_NAMES[index] };
        match self.services.iter().position(|s| s.name == name) {
            Some(position) => {
                self.services.remove(position).kill_now();
                true
            }
            None => false,
        }
    }

    /// Starts sequencer `index` again, on its data and addresses.
    pub fn restart_sequencer(&mut self, index: usize) -> anyhow::Result<()> {
        let service = self.cluster.spawn_member(index)?;
        self.services.push(service);
        Ok(())
    }

    /// Whether the process named `name` has exited (restarts are not done here, so
    /// an exited consumer stays exited).
    pub fn exited(&mut self, name: &str) -> bool {
        self.services.iter_mut().any(|s| s.name == name && s.exited().is_some())
    }

    /// Stops every process (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(mut self) {
        self.services.clear();
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let stop = super::shutdown_on_signal()?;
    let started = Instant::now();
    let system = System::start(
        args.durability,
        args.data.clone(),
        args.http,
        args.tcp,
        args.api_key.clone(),
        Shape {
            transfer_capacity: None,
            bus_security: BusSecurityMode::Aes256Gcm,
            replicas: args.replicas,
            sql: args.sql.clone(),
            idle: args.idle.env(),
            memory_consumers: usize::from(args.memory_consumers),
        },
    )?;
    let addresses = &system.addresses;
    let key = system.api_key.clone();
    println!(
        "ledgerbus demo is running (started in {:.1} s), data in {}",
        started.elapsed().as_secs_f64(),
        system.data.display()
    );
    println!(
        "  gateway HTTP      http://{}   (OpenAPI: /openapi.json, metrics: /metrics)",
        addresses.gateway_http
    );
    println!("  gateway TCP/SBE   {}   (Rust client, bench e2e --gateway)", addresses.gateway_tcp);
    if system.replicas().is_empty() {
        println!("  sequencer         {}   (gateways connect here)", addresses.sequencer);
        println!(
            "                    {}   (UDP: NAKs and status; replay nak --sequencer)",
            addresses.control
        );
        println!("                    {}   (bulk replay; replay --from-sequencer)", addresses.replay);
        println!("                    http://{}/status, /metrics", addresses.sequencer_status);
    } else {
        println!(
            "  sequencer group   {} members (Raft; quorum commit, automatic failover)",
            system.replicas().len()
        );
        for (index, member) in system.replicas().iter().enumerate() {
            println!(
                "    replica {}       {} gateways, {} replay, {} replication, http://{}/status",
                index + 1,
                member.gateway,
                member.replay,
                member.peer,
                member.status
            );
        }
    }
    println!(
        "  memory consumer   http://{}/status, /metrics  (queries; UDP stream on {})",
        addresses.memory_http, addresses.memory_udp
    );
    println!(
        "  disk consumer     http://{}/status, /metrics  (UDP stream on {})",
        addresses.disk_http, addresses.disk_udp
    );
    if let Some(url) = &system.cluster.sql {
        let url = ledgerbus_consumers::sql::DatabaseUrl::parse(url)?;
        println!(
            "  SQL consumer      http://{}/status, /metrics  (projection in {url}; ledgerbus sql verify --database …)",
            addresses.sql_http
        );
    }
    let cluster_file = system.data.join("cluster.toml");
    system.cluster_file().write(&cluster_file)?;
    println!(
        "  all addresses     {}   (--cluster FILE for replay, replay nak, bench e2e)",
        cluster_file.display()
    );
    println!("  bus               sealed with AES-256-GCM");
    println!("  API key           {key}");
    println!("  for the tools     export LEDGERBUS_BUS_KEY={} LEDGERBUS_API_KEY={key}", system.bus_key);
    println!("  try: curl -s -H 'Authorization: Bearer {key}' http://{}/accounts/1", addresses.gateway_http);
    if !args.no_workload {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(workload(addresses.gateway_tcp, &key, args.payments))?;
        system.verify_hashes()?;
    }
    let deadline = args.duration.map(|secs| Instant::now() + Duration::from_secs_f64(secs));
    match deadline {
        Some(_) => println!("serving until --duration elapses (Ctrl-C stops earlier)"),
        None => println!("serving; press Ctrl-C to stop"),
    }
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stopping the demo's processes");
    system.stop();
    Ok(())
}

fn account(id: u128, negative: bool) -> ClientCommand {
    ClientCommand::CreateAccount(CreateAccount {
        correlation_id: 0.into(),
        id: id.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: (if negative { account_flags::ALLOW_NEGATIVE } else { 0 }).into(),
        ..Default::default()
    })
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u64, code: u16, linked: bool) -> ClientCommand {
    ClientCommand::Transfer(Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: debit.into(),
        credit_account_id: credit.into(),
        amount: amount.into(),
        ledger: 840.into(),
        code: code.into(),
        flags: (if linked { transfer_flags::LINKED } else { 0 }).into(),
        ..Default::default()
    })
}

const SETTLEMENT: u128 = 1;
const FEES: u128 = 2;
const TAXES: u128 = 3;
const USERS: u128 = 1_000;
const FIRST_USER: u128 = 1_000;

/// Accounts, top-ups, then a burst of linked P2P payments (amount, fee, tax), some
/// of which overdraw and are rejected as a whole.
async fn workload(gateway: SocketAddr, key: &str, payments: u32) -> anyhow::Result<()> {
    let client = Client::connect(gateway, key).await.context("connecting to the gateway's TCP API")?;
    let mut setup: Vec<ClientCommand> =
        vec![account(SETTLEMENT, true), account(FEES, false), account(TAXES, false)];
    setup.extend((0..USERS).map(|i| account(FIRST_USER + i, false)));
    let outcomes = client.submit(&setup).await?;
    let created = outcomes.iter().filter(|o| o.result.is_success()).count();
    let top_ups: Vec<ClientCommand> =
        (0..USERS).map(|i| transfer(1_000_000 + i, SETTLEMENT, FIRST_USER + i, 1_000, 1, false)).collect();
    let funded = client.submit(&top_ups).await?.iter().filter(|o| o.result.is_success()).count();
    println!(
        "workload: {created} accounts ready, {funded} users topped up with 1000 from the settlement account"
    );

    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let tasks = 64u32;
    let per_task = payments.div_ceil(tasks);
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let client = client.clone();
        let (accepted, rejected) = (Arc::clone(&accepted), Arc::clone(&rejected));
        handles.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(task);
            for n in 0..per_task {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let payer = FIRST_USER + u128::from(state % USERS as u64);
                let payee = FIRST_USER + u128::from((state >> 16) % USERS as u64);
                let payee =
                    if payee == payer { FIRST_USER + (payee - FIRST_USER + 1) % USERS } else { payee };
                // Mostly small payments; one in twenty is far too large and must fail.
                let amount = if state % 20 == 0 { 5_000 } else { 1 + (state >> 32) % 200 };
                let id = 10_000_000 + u128::from(task) * 1_000_000 + u128::from(n) * 3;
                let chain = [
                    transfer(id, payer, payee, amount, 10, true),
                    transfer(id + 1, payer, FEES, 1 + amount / 100, 11, true),
                    transfer(id + 2, payer, TAXES, 1 + amount / 50, 12, false),
                ];
                let sent = Instant::now();
                let outcomes = client.submit(&chain).await?;
                let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
                let ok = outcomes.iter().all(|o| o.result == ResultCode::Ok);
                let counter = if ok { &accepted } else { &rejected };
                counter.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(latency)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for handle in handles {
        latency.add(handle.await??).context("merging histograms")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let transfers = accepted.load(Ordering::Relaxed) + rejected.load(Ordering::Relaxed);
    println!(
        "workload: {} P2P payments ({} transfers: amount, fee and tax linked) in {elapsed:.2} s over TCP, 64 in flight",
        transfers / 3,
        transfers
    );
    println!("  accepted transfers  {}", accepted.load(Ordering::Relaxed));
    println!(
        "  rejected transfers  {} (whole chains: insufficient funds + linked_event_failed)",
        rejected.load(Ordering::Relaxed)
    );
    println!("  throughput          {:.0} transfers/s", transfers as f64 / elapsed);
    println!(
        "  chain latency       p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max()
    );
    if rejected.load(Ordering::Relaxed) == 0 {
        bail!("the workload expected some payments to be rejected for insufficient funds");
    }
    Ok(())
}

/// Waits for every consumer in `consumers` (name, `/status` address) and every
/// sequencer (one, or each group member) to reach the first sequencer's position, and
/// compares their state hashes with its.
pub fn verify_hashes(sequencers: &[SocketAddr], consumers: &[(&str, SocketAddr)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = |address: SocketAddr| http_json(address, "/status", None).map(|(_, v)| v);
    loop {
        let statuses: Option<Vec<_>> = sequencers.iter().map(|s| status(*s)).collect();
        let seen: Option<Vec<_>> = consumers.iter().map(|(_, http)| status(*http)).collect();
        if let (Some(statuses), Some(seen)) = (statuses, seen) {
            let sequencer = &statuses[0];
            let head = &sequencer["last_sequence"];
            let all_there = statuses.iter().chain(&seen).all(|s| &s["last_sequence"] == head);
            if all_there {
                let hash = &sequencer["state_hash"];
                let each: Vec<String> = consumers
                    .iter()
                    .zip(&seen)
                    .map(|((name, _), s)| format!("{name} {}", s["state_hash"]))
                    .collect();
                println!("state hash at sequence {head}: sequencer {hash}, {}", each.join(", "));
                let differing: Vec<&str> = consumers
                    .iter()
                    .zip(&seen)
                    .filter(|(_, s)| &s["state_hash"] != hash)
                    .map(|((name, _), _)| *name)
                    .collect();
                if !differing.is_empty() {
                    bail!("state hashes differ from the sequencer's: {}", differing.join(", "));
                }
                if statuses.iter().any(|s| &s["state_hash"] != hash) {
                    bail!("the group members' state hashes differ");
                }
                let all = count_in_words(statuses.len() + consumers.len());
                match statuses.len() {
                    1 => println!("  all {all} match"),
                    members => {
                        println!(
                            "  all {all} match ({members} sequencer group members and the {} consumers)",
                            consumers.len()
                        )
                    }
                }
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("consumers did not reach the sequencer's position within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "three" for 3, up to twelve; digits beyond.
fn count_in_words(n: usize) -> String {
    const WORDS: [&str; 13] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve",
    ];
    WORDS.get(n).map_or_else(|| n.to_string(), |word| word.to_string())
}
