//! `ledgerbus demo`: the whole system on one host. It starts the sequencer, a
//! gateway, a memory consumer and a disk consumer as child processes of this binary
//! on free 127.0.0.1 ports, runs a short workload through the gateway, checks that
//! both consumers reached the sequencer's state hash, then serves until Ctrl-C or
//! `--duration`. The children are stopped (SIGTERM, then SIGKILL) when it exits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use ledgerbus_client::{Client, Command as ClientCommand};
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};

use crate::cli::{BusSecurityMode, DemoArgs};

/// A child process stopped when dropped: SIGTERM, a grace period, then SIGKILL.
struct Service {
    name: &'static str,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(service = self.name, "did not stop in 5 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on `ip` that is free now, for a child process to bind. Chosen at random
/// below the kernel's ephemeral range: a port the kernel hands out (bind to port 0)
/// could be taken again by any outgoing connection before the child binds it.
fn free_port(ip: std::net::IpAddr, free: impl Fn(SocketAddr) -> bool) -> anyhow::Result<SocketAddr> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let low = 10_000u16.min(ephemeral_low.saturating_sub(1_000));
    let span = ephemeral_low.saturating_sub(low).max(1);
    for _ in 0..1_000 {
        let mut random = [0u8; 2];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("random port: {e}"))?;
        let candidate = SocketAddr::new(ip, low + u16::from_le_bytes(random) % span);
        if free(candidate) {
            return Ok(candidate);
        }
    }
    anyhow::bail!("no free port below {ephemeral_low} on {ip}")
}

fn tcp_is_free(address: SocketAddr) -> bool {
    TcpListener::bind(address).is_ok()
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    free_port([127, 0, 0, 1].into(), tcp_is_free)
}

fn free_udp() -> anyhow::Result<SocketAddr> {
    free_port([127, 0, 0, 1].into(), |address| UdpSocket::bind(address).is_ok())
}

/// The error for a child that exited before it was ready; one that could not bind
/// its address says so (the demo then picks other ports).
fn exited_while_starting(name: &str, status: std::process::ExitStatus) -> anyhow::Error {
    if status.code() == Some(i32::from(crate::EXIT_ADDRESS_IN_USE)) {
        anyhow::anyhow!("the {name} could not listen: its address is in use ({status}); its log is above")
    } else {
        anyhow::anyhow!("the {name} exited while starting ({status}); its log is above")
    }
}

/// `address` if it can be bound now (port 0: a free port on its IP). A port already
/// taken is refused here, naming it: the child would fail to bind it, and whatever
/// holds it might even answer the health check in its place.
fn with_free_port(address: SocketAddr, what: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    if address.port() == 0 {
        return free_port(address.ip(), tcp_is_free);
    }
    match TcpListener::bind(address) {
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

/// A GET with a JSON answer; `None` if the service is not answering (yet).
fn http_json(address: SocketAddr, path: &str, key: Option<&str>) -> Option<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: demo\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).ok()?))
}

/// Where each part of a started system listens.
pub struct Addresses {
    pub gateway_http: SocketAddr,
    pub gateway_tcp: SocketAddr,
    pub sequencer: SocketAddr,
    pub sequencer_status: SocketAddr,
    pub control: SocketAddr,
    pub replay: SocketAddr,
    pub memory_udp: SocketAddr,
    pub memory_http: SocketAddr,
    pub disk_udp: SocketAddr,
    pub disk_http: SocketAddr,
}

/// The secrets a started system shares, handed to each child in its environment
/// (never on a command line, where `ps` would show them).
pub struct Credentials {
    /// Gateways' credential at the sequencer.
    pub sequencer_secret: String,
    /// Clients' API key (also what the gateway presents to the memory consumer).
    pub api_key: String,
    /// The bus key (64 hex digits): seals the bus and authenticates bulk replay.
    pub bus_key: String,
    /// `aes-256-gcm` or `none`.
    pub bus_security: BusSecurityMode,
}

fn spawn(name: &'static str, args: &[String], credentials: &Credentials) -> anyhow::Result<Service> {
    let exe = std::env::current_exe().context("locating the ledgerbus binary")?;
    let bus_security = match credentials.bus_security {
        BusSecurityMode::Aes256Gcm => "aes-256-gcm",
        BusSecurityMode::None => "none",
    };
    let mut command = Command::new(exe);
    // A child must not outlive the demo, even one killed with SIGKILL: the kernel
    // sends it SIGTERM when the demo's thread that started it ends.
    // SAFETY: prctl is async-signal-safe and touches only the child being started.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .args(["--log-level", "warn"])
        .args(args)
        .env("LEDGERBUS_SEQUENCER_SECRET", &credentials.sequencer_secret)
        .env("LEDGERBUS_API_KEYS", &credentials.api_key)
        .env("LEDGERBUS_BUS_KEY", &credentials.bus_key)
        .env("LEDGERBUS_BUS_SECURITY", bus_security)
        .env_remove("LEDGERBUS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the {name}"))?;
    Ok(Service { name, child })
}

fn s(value: impl ToString) -> String {
    value.to_string()
}

fn start_all(
    durability: crate::cli::Durability,
    data: &Path,
    a: &Addresses,
    credentials: &Credentials,
    transfer_capacity: Option<usize>,
) -> anyhow::Result<Vec<Service>> {
    let durability = s(durability.as_str());
    let capacity: Vec<String> =
        transfer_capacity.map(|ids| vec![s("--transfer-capacity"), s(ids)]).unwrap_or_default();
    let sequencer = spawn(
        "sequencer",
        &[
            s("sequencer"),
            s("--data-dir"),
            s(data.join("sequencer").display()),
            s("--gateway-listen"),
            s(a.sequencer),
            s("--control-listen"),
            s(a.control),
            s("--replay-listen"),
            s(a.replay),
            s("--metrics-listen"),
            s(a.sequencer_status),
            s("--subscribers"),
            format!("{},{}", a.memory_udp, a.disk_udp),
            s("--durability"),
            durability.clone(),
        ]
        .into_iter()
        .chain(capacity.iter().cloned())
        .collect::<Vec<_>>(),
        credentials,
    )?;
    let consumer = |kind: &'static str, id: u32, udp: SocketAddr, http: SocketAddr| {
        spawn(
            kind,
            &[
                s("consumer"),
                s(if kind == "memory consumer" { "memory" } else { "disk" }),
                s("--listen"),
                s(udp),
                s("--http-listen"),
                s(http),
                s("--sequencer-control"),
                s(a.control),
                s("--sequencer-replay"),
                s(a.replay),
                s("--consumer-id"),
                s(id),
                s("--data-dir"),
                s(data.join("disk-consumer").display()),
                s("--durability"),
                durability.clone(),
            ]
            .into_iter()
            .chain(if kind == "memory consumer" { capacity.clone() } else { Vec::new() })
            .collect::<Vec<_>>(),
            credentials,
        )
    };
    // The sequencer first, so that the consumers find its replay service.
    let mut services = vec![sequencer];
    wait_until("sequencer", &mut services, || http_json(a.sequencer_status, "/status", None).is_some())?;
    services.push(consumer("memory consumer", 1, a.memory_udp, a.memory_http)?);
    services.push(consumer("disk consumer", 2, a.disk_udp, a.disk_http)?);
    services.push(spawn(
        "gateway",
        &[
            s("gateway"),
            s("--http-listen"),
            s(a.gateway_http),
            s("--tcp-listen"),
            s(a.gateway_tcp),
            s("--sequencer"),
            s(a.sequencer),
            s("--query-upstream"),
            s(a.memory_http),
        ],
        credentials,
    )?);
    wait_until("gateway", &mut services, || {
        http_json(a.gateway_http, "/health", None).is_some_and(|(status, _)| status == 200)
    })?;
    wait_until("consumers", &mut services, || {
        http_json(a.memory_http, "/status", None).is_some()
            && http_json(a.disk_http, "/status", None).is_some()
    })?;
    // Ready is not enough: each child must still be the one serving its address.
    for service in services.iter_mut() {
        if let Ok(Some(status)) = service.child.try_wait() {
            return Err(exited_while_starting(service.name, status));
        }
    }
    // Stopped in reverse order of start: the gateway first, the sequencer last.
    services.reverse();
    Ok(services)
}

/// Waits up to 30 s for `ready`, failing at once if a started process exits.
fn wait_until(what: &str, started: &mut [Service], mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        for service in started.iter_mut() {
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(exited_while_starting(service.name, status));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the {what} did not come up within 30 s")
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

    /// Starts sequencer, consumers and gateway on free ports (or the given ones);
    /// `transfer_capacity` sizes the transfer-id indexes (their default otherwise).
    pub fn start(
        durability: crate::cli::Durability,
        data: Option<PathBuf>,
        http: SocketAddr,
        tcp: SocketAddr,
        api_key: Option<String>,
        transfer_capacity: Option<usize>,
        bus_security: BusSecurityMode,
    ) -> anyhow::Result<System> {
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
            bus_security,
        };
        // A port picked here can still be taken by someone else before the child
        // binds it; that is our race, not the user's problem: pick again (ports the
        // user chose are checked again too, and reported if really taken).
        let mut attempt = 1;
        let (addresses, services) = loop {
            let addresses = Addresses {
                gateway_http: with_free_port(http, "gateway HTTP", "--http")?,
                gateway_tcp: with_free_port(tcp, "gateway TCP", "--tcp")?,
                sequencer: free_tcp()?,
                sequencer_status: free_tcp()?,
                control: free_udp()?,
                replay: free_tcp()?,
                memory_udp: free_udp()?,
                memory_http: free_tcp()?,
                disk_udp: free_udp()?,
                disk_http: free_tcp()?,
            };
            match start_all(durability, &data, &addresses, &credentials, transfer_capacity) {
                Ok(services) => break (addresses, services),
                Err(error) if attempt < 3 && format!("{error:#}").contains("in use") => {
                    tracing::warn!(attempt, error = %format!("{error:#}"), "a port was taken while starting; picking others");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
        let Credentials { api_key, bus_key, .. } = credentials;
        Ok(System { addresses, api_key, bus_key, data, services, _temp: temp })
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
        None,
        BusSecurityMode::Aes256Gcm,
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
    println!("  sequencer         {}   (gateways connect here)", addresses.sequencer);
    println!("                    {}   (UDP: NAKs and status; replay nak --sequencer)", addresses.control);
    println!("                    {}   (bulk replay; replay --from-sequencer)", addresses.replay);
    println!("                    http://{}/status, /metrics", addresses.sequencer_status);
    println!(
        "  memory consumer   http://{}/status, /metrics  (queries; UDP stream on {})",
        addresses.memory_http, addresses.memory_udp
    );
    println!(
        "  disk consumer     http://{}/status, /metrics  (UDP stream on {})",
        addresses.disk_http, addresses.disk_udp
    );
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
        verify_hashes(addresses)?;
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

/// Waits for both consumers to reach the sequencer's position and compares hashes.
pub fn verify_hashes(a: &Addresses) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sequencer = http_json(a.sequencer_status, "/status", None).map(|(_, v)| v);
        let memory = http_json(a.memory_http, "/status", None).map(|(_, v)| v);
        let disk = http_json(a.disk_http, "/status", None).map(|(_, v)| v);
        if let (Some(sequencer), Some(memory), Some(disk)) = (sequencer, memory, disk) {
            let head = &sequencer["last_sequence"];
            if &memory["last_sequence"] == head && &disk["last_sequence"] == head {
                let hash = &sequencer["state_hash"];
                println!(
                    "state hash at sequence {head}: sequencer {hash}, memory consumer {}, disk consumer {}",
                    memory["state_hash"], disk["state_hash"]
                );
                if &memory["state_hash"] != hash || &disk["state_hash"] != hash {
                    bail!("consumer state hashes differ from the sequencer's");
                }
                println!("  all three match");
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("consumers did not reach the sequencer's position within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
