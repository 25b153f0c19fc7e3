//! A whole ledgerbus on one host as child processes of the `ledgerbus` binary: the
//! sequencer, a memory consumer, a disk consumer and a gateway, on free 127.0.0.1
//! ports, with their secrets in the environment (never on a command line, where
//! `ps` would show them). `ledgerbus demo`, `bench e2e --spawn` and the
//! integration tests all start their processes here, so they start the same way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ledgerbus_log::Durability;

/// Exit status of a `ledgerbus` command whose address to listen on is in use.
pub const EXIT_ADDRESS_IN_USE: i32 = 75;

/// A child process. Dropping it stops it: SIGTERM, a grace period, then SIGKILL.
pub struct Service {
    /// What it is, for messages.
    pub name: &'static str,
    /// The process.
    pub child: Child,
}

impl Service {
    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(service = self.name, "did not stop in 5 s; killing it");
        self.kill_now();
    }
}

/// A port on `ip` that is free now, for a child process to bind. Chosen at random
/// below the kernel's ephemeral range: a port the kernel hands out (bind to port 0)
/// could be taken again by any outgoing connection before the child binds it.
pub fn free_port(ip: std::net::IpAddr, free: impl Fn(SocketAddr) -> bool) -> anyhow::Result<SocketAddr> {
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
    bail!("no free port below {ephemeral_low} on {ip}")
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp() -> anyhow::Result<SocketAddr> {
    free_port([127, 0, 0, 1].into(), |address| TcpListener::bind(address).is_ok())
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp() -> anyhow::Result<SocketAddr> {
    free_port([127, 0, 0, 1].into(), |address| UdpSocket::bind(address).is_ok())
}

/// A GET with a JSON answer; `None` if the service is not answering (yet).
pub fn http_json(address: SocketAddr, path: &str, key: Option<&str>) -> Option<(u16, serde_json::Value)> {
    let (status, body) = http_request(address, "GET", path, key, None)?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// One HTTP/1.1 request on a new connection (JSON body, if any): the status and the
/// body; `None` if the service does not answer within 10 s.
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: ledgerbus\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_string()))
}

/// Where each part of a cluster listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// Gateway HTTP API.
    pub gateway_http: SocketAddr,
    /// Gateway TCP API.
    pub gateway_tcp: SocketAddr,
    /// Sequencer: gateways connect here.
    pub sequencer: SocketAddr,
    /// Sequencer `/status` and `/metrics`.
    pub sequencer_status: SocketAddr,
    /// Sequencer bus socket (NAKs, status).
    pub control: SocketAddr,
    /// Sequencer bulk replay.
    pub replay: SocketAddr,
    /// Memory consumer's stream.
    pub memory_udp: SocketAddr,
    /// Memory consumer's query API.
    pub memory_http: SocketAddr,
    /// Disk consumer's stream.
    pub disk_udp: SocketAddr,
    /// Disk consumer's `/status`.
    pub disk_http: SocketAddr,
    /// SQL consumer's stream (used only if the cluster has one).
    pub sql_udp: SocketAddr,
    /// SQL consumer's `/status`.
    pub sql_http: SocketAddr,
}

impl Addresses {
    /// Free ports for everything but the gateway's two, which are given.
    pub fn free(gateway_http: SocketAddr, gateway_tcp: SocketAddr) -> anyhow::Result<Addresses> {
        Ok(Addresses {
            gateway_http,
            gateway_tcp,
            sequencer: free_tcp()?,
            sequencer_status: free_tcp()?,
            control: free_udp()?,
            replay: free_tcp()?,
            memory_udp: free_udp()?,
            memory_http: free_tcp()?,
            disk_udp: free_udp()?,
            disk_http: free_tcp()?,
            sql_udp: free_udp()?,
            sql_http: free_tcp()?,
        })
    }
}

/// Where one member of a replicated sequencer group listens.
#[derive(Debug, Clone, Copy)]
pub struct MemberAddresses {
    /// Gateways connect here.
    pub gateway: SocketAddr,
    /// `/status` and `/metrics`.
    pub status: SocketAddr,
    /// Bus socket (NAKs, status).
    pub control: SocketAddr,
    /// Bulk replay.
    pub replay: SocketAddr,
    /// Replication links.
    pub peer: SocketAddr,
}

impl MemberAddresses {
    /// A group of `size` members on free ports; the first takes the sequencer's
    /// addresses in `addresses`, so that what reads those finds member 1.
    pub fn group(size: usize, addresses: &Addresses) -> anyhow::Result<Vec<MemberAddresses>> {
        let mut members = Vec::with_capacity(size);
        for index in 0..size {
            members.push(if index == 0 {
                MemberAddresses {
                    gateway: addresses.sequencer,
                    status: addresses.sequencer_status,
                    control: addresses.control,
                    replay: addresses.replay,
                    peer: free_tcp()?,
                }
            } else {
                MemberAddresses {
                    gateway: free_tcp()?,
                    status: free_tcp()?,
                    control: free_udp()?,
                    replay: free_tcp()?,
                    peer: free_tcp()?,
                }
            });
        }
        Ok(members)
    }
}

/// Names of memory consumers' processes, for messages.
pub const MEMORY_NAMES: [&str; 8] = [
    "memory consumer",
    "memory consumer 2",
    "memory consumer 3",
    "memory consumer 4",
    "memory consumer 5",
    "memory consumer 6",
    "memory consumer 7",
    "memory consumer 8",
];

/// Names of group members' processes, for messages.
pub const MEMBER_NAMES: [&str; 5] =
    ["sequencer 1", "sequencer 2", "sequencer 3", "sequencer 4", "sequencer 5"];

fn list(addresses: impl Iterator<Item = SocketAddr>) -> String {
    addresses.map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

/// The secrets a cluster shares, handed to each child in its environment.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Gateways' credential at the sequencer.
    pub sequencer_secret: String,
    /// Clients' API key (also what the gateway presents to the memory consumer).
    pub api_key: String,
    /// The bus key (64 hex digits): seals the bus and authenticates bulk replay.
    pub bus_key: String,
    /// `aes-256-gcm` or `none`.
    pub bus_security: &'static str,
}

/// How to start a cluster's processes.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The `ledgerbus` binary.
    pub exe: PathBuf,
    /// Data of the sequencer (`<data>/sequencer`) and the disk consumer.
    pub data: PathBuf,
    /// Where everything listens.
    pub addresses: Addresses,
    /// The shared secrets.
    pub credentials: Credentials,
    /// `--durability` of the sequencer and the disk consumer.
    pub durability: Durability,
    /// `--transfer-capacity` of the sequencer and the memory consumer, if not the default.
    pub transfer_capacity: Option<usize>,
    /// `--snapshot-every` of the disk consumer, if not the default.
    pub snapshot_every: Option<u64>,
    /// `--log-level` of the children.
    pub log_level: &'static str,
    /// A replicated sequencer group's members (empty: one sequencer at `addresses`).
    pub replicas: Vec<MemberAddresses>,
    /// A SQL consumer's database (`postgres://…`, `sqlite://…`), if the cluster has one.
    pub sql: Option<String>,
    /// Memory consumers beyond the first: each one's (stream, query API) addresses.
    /// The sequencer publishes to them too and the gateway spreads reads over all.
    pub extra_memory: Vec<(SocketAddr, SocketAddr)>,
    /// The idle strategy's settings (`LEDGERBUS_IDLE_STRATEGY`, …) for every child;
    /// empty: each child's default (or what this process's environment says).
    pub idle: Vec<(&'static str, String)>,
}

fn s(value: impl ToString) -> String {
    value.to_string()
}

impl Cluster {
    /// The disk consumer's data directory.
    pub fn disk_data(&self) -> PathBuf {
        self.data.join("disk-consumer")
    }

    /// Starts one `ledgerbus` child. It gets SIGTERM if this thread ends, so that a
    /// child never outlives its parent, even one killed with SIGKILL.
    pub fn spawn(&self, name: &'static str, args: &[String]) -> anyhow::Result<Service> {
        self.spawn_with_env(name, args, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables (settings that must
    /// not show in the process list, such as a database URL with its password).
    pub fn spawn_with_env(
        &self,
        name: &'static str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let mut command = Command::new(&self.exe);
        command.envs(self.idle.iter().map(|(name, value)| (name, value)));
        command.envs(env.iter().copied());
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
        let credentials = &self.credentials;
        let child = command
            .args(["--log-level", self.log_level])
            .args(args)
            .env("LEDGERBUS_SEQUENCER_SECRET", &credentials.sequencer_secret)
            .env("LEDGERBUS_API_KEYS", &credentials.api_key)
            .env("LEDGERBUS_BUS_KEY", &credentials.bus_key)
            .env("LEDGERBUS_BUS_SECURITY", credentials.bus_security)
            .env_remove("LEDGERBUS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the {name} ({})", self.exe.display()))?;
        Ok(Service { name, child })
    }

    /// Starts the sequencer (member 1 of a group).
    pub fn spawn_sequencer(&self) -> anyhow::Result<Service> {
        self.spawn_member(0)
    }

    /// Every sequencer's gateway port: one, or each member's.
    pub fn sequencer_gateways(&self) -> Vec<SocketAddr> {
        self.sequencers().iter().map(|m| m.gateway).collect()
    }

    /// Every sequencer's `/status` address.
    pub fn sequencer_statuses(&self) -> Vec<SocketAddr> {
        self.sequencers().iter().map(|m| m.status).collect()
    }

    fn sequencer_replays(&self) -> Vec<SocketAddr> {
        self.sequencers().iter().map(|m| m.replay).collect()
    }

    /// Every sequencer's addresses: the group's members, or the one sequencer at
    /// `addresses` (which has no replication address: `peer` is unused then).
    fn sequencers(&self) -> Vec<MemberAddresses> {
        if !self.replicas.is_empty() {
            return self.replicas.clone();
        }
        let a = &self.addresses;
        vec![MemberAddresses {
            gateway: a.sequencer,
            status: a.sequencer_status,
            control: a.control,
            replay: a.replay,
            peer: a.sequencer,
        }]
    }

    /// The data directory of sequencer `index` (0-based).
    pub fn sequencer_data(&self, index: usize) -> PathBuf {
        match self.replicas.is_empty() {
            true => self.data.join("sequencer"),
            false => self.data.join(format!("sequencer-{}", index + 1)),
        }
    }

    /// Starts sequencer `index` (0-based; only 0 without a group).
    pub fn spawn_member(&self, index: usize) -> anyhow::Result<Service> {
        let a = &self.addresses;
        let own = self.sequencers()[index];
        let mut args = vec![
            s("sequencer"),
            s("--data-dir"),
            s(self.sequencer_data(index).display()),
            s("--gateway-listen"),
            s(own.gateway),
            s("--control-listen"),
            s(own.control),
            s("--replay-listen"),
            s(own.replay),
            s("--metrics-listen"),
            s(own.status),
            s("--subscribers"),
            list(
                [a.memory_udp, a.disk_udp]
                    .into_iter()
                    .chain(self.sql.as_ref().map(|_| a.sql_udp))
                    .chain(self.extra_memory.iter().map(|(udp, _)| *udp)),
            ),
            s("--durability"),
            s(self.durability),
        ];
        if let Some(ids) = self.transfer_capacity {
            args.extend([s("--transfer-capacity"), s(ids)]);
        }
        if self.replicas.is_empty() {
            return self.spawn("sequencer", &args);
        }
        args.extend([
            s("--replicas"),
            list(self.replicas.iter().map(|m| m.peer)),
            s("--replica-id"),
            s(index + 1),
        ]);
        self.spawn(MEMBER_NAMES[index], &args)
    }

    /// The index of the group member that leads now, if one does (0 without a group).
    pub fn leader(&self) -> Option<usize> {
        if self.replicas.is_empty() {
            return Some(0);
        }
        // A leader that was just deposed may still say so for a moment: the one in the
        // highest term leads.
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(index, m)| {
                let (_, status) = http_json(m.status, "/status", None)?;
                let group = &status["group"];
                (group["role"] == "leader").then(|| (group["term"].as_u64().unwrap_or(0), index))
            })
            .max()
            .map(|(_, index)| index)
    }

    /// Every memory consumer's query API, the first one's first.
    pub fn memory_https(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addresses.memory_http)
            .chain(self.extra_memory.iter().map(|(_, http)| *http))
            .collect()
    }

    /// Every consumer's name (as in [`MEMORY_NAMES`]) and `/status` address: the
    /// memory consumers, the disk consumer, the SQL consumer if there is one.
    pub fn consumer_statuses(&self) -> Vec<(&'static str, SocketAddr)> {
        let a = &self.addresses;
        let memories = self.memory_https().into_iter().enumerate();
        let memories = memories
            .map(|(index, http)| (MEMORY_NAMES.get(index).copied().unwrap_or("memory consumer"), http));
        memories
            .chain([("disk consumer", a.disk_http)])
            .chain(self.sql.as_ref().map(|_| ("SQL consumer", a.sql_http)))
            .collect()
    }

    /// Starts memory consumer `index` (0-based: 0 is [`Addresses::memory_http`]'s,
    /// the others [`Cluster::extra_memory`]'s).
    pub fn spawn_memory(&self, index: usize) -> anyhow::Result<Service> {
        if index == 0 {
            return self.spawn_consumer("memory");
        }
        let (udp, http) =
            *self.extra_memory.get(index - 1).with_context(|| format!("no memory consumer {}", index + 1))?;
        // Consumer ids 1 (memory), 2 (disk) and 3 (SQL) are taken.
        let id = 10 + index as u32;
        let name = MEMORY_NAMES.get(index).copied().unwrap_or("memory consumer");
        self.spawn_consumer_at("memory", name, udp, http, id)
    }

    /// Starts the memory consumer (`memory`), the disk consumer (`disk`) or the SQL
    /// consumer (`sql`, writing to [`Cluster::sql`]).
    pub fn spawn_consumer(&self, kind: &str) -> anyhow::Result<Service> {
        let a = &self.addresses;
        let (name, udp, http, id) = match kind {
            "memory" => ("memory consumer", a.memory_udp, a.memory_http, 1),
            "sql" => ("SQL consumer", a.sql_udp, a.sql_http, 3),
            _ => ("disk consumer", a.disk_udp, a.disk_http, 2),
        };
        self.spawn_consumer_at(kind, name, udp, http, id)
    }

    fn spawn_consumer_at(
        &self,
        kind: &str,
        name: &'static str,
        udp: SocketAddr,
        http: SocketAddr,
        id: u32,
    ) -> anyhow::Result<Service> {
        let a = &self.addresses;
        let mut args = vec![
            s("consumer"),
            s(kind),
            s("--listen"),
            s(udp),
            s("--http-listen"),
            s(http),
            s("--sequencer-control"),
            s(a.control),
            s("--sequencer-replay"),
            list(self.sequencer_replays().into_iter()),
            s("--consumer-id"),
            s(id),
            s("--data-dir"),
            s(self.disk_data().display()),
            s("--durability"),
            s(self.durability),
        ];
        if let (Some(ids), "memory") = (self.transfer_capacity, kind) {
            args.extend([s("--transfer-capacity"), s(ids)]);
        }
        if let (Some(every), "disk") = (self.snapshot_every, kind) {
            args.extend([s("--snapshot-every"), s(every)]);
        }
        if kind == "sql" {
            let url = self.sql.as_deref().context("the cluster has no SQL database")?;
            return self.spawn_with_env(name, &args, &[("LEDGERBUS_SQL_DATABASE", url)]);
        }
        self.spawn(name, &args)
    }

    /// Starts a gateway on `http` and `tcp` in front of this cluster's sequencer and
    /// memory consumers, with `extra` flags.
    pub fn spawn_gateway(
        &self,
        http: SocketAddr,
        tcp: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<Service> {
        let mut args = vec![
            s("gateway"),
            s("--http-listen"),
            s(http),
            s("--tcp-listen"),
            s(tcp),
            s("--sequencer"),
            list(self.sequencer_gateways().into_iter()),
            s("--query-upstream"),
            list(self.memory_https().into_iter()),
        ];
        args.extend(extra.iter().map(s));
        self.spawn("gateway", &args)
    }

    /// Starts everything in order (the sequencer first, so that the consumers find
    /// its replay service) and waits until each answers. The services come back in
    /// the order to stop them: the gateway first, the sequencer last.
    pub fn start(&self) -> anyhow::Result<Vec<Service>> {
        let a = &self.addresses;
        let mut services = vec![self.spawn_sequencer()?];
        for index in 1..self.replicas.len() {
            services.push(self.spawn_member(index)?);
        }
        let statuses = self.sequencer_statuses();
        wait_until("sequencer", &mut services, || {
            statuses.iter().all(|status| http_json(*status, "/status", None).is_some())
        })?;
        wait_until("sequencer group's leader", &mut services, || self.leader().is_some())?;
        services.push(self.spawn_consumer("memory")?);
        for index in 1..=self.extra_memory.len() {
            services.push(self.spawn_memory(index)?);
        }
        services.push(self.spawn_consumer("disk")?);
        if self.sql.is_some() {
            services.push(self.spawn_consumer("sql")?);
        }
        services.push(self.spawn_gateway(a.gateway_http, a.gateway_tcp, &[])?);
        wait_until("gateway", &mut services, || {
            http_json(a.gateway_http, "/health", None).is_some_and(|(status, _)| status == 200)
        })?;
        wait_until("consumers", &mut services, || {
            self.consumer_statuses().iter().all(|(_, http)| http_json(*http, "/status", None).is_some())
        })?;
        // Ready is not enough: each child must still be the one serving its address.
        for service in services.iter_mut() {
            if let Some(status) = service.exited() {
                return Err(exited_while_starting(service.name, status));
            }
        }
        services.reverse();
        Ok(services)
    }
}

/// Waits up to 30 s for `ready`, failing at once if a started process exits.
pub fn wait_until(
    what: &str,
    started: &mut [Service],
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        for service in started.iter_mut() {
            if let Some(status) = service.exited() {
                return Err(exited_while_starting(service.name, status));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the {what} did not come up within 30 s")
}

/// The error for a child that exited before it was ready; one that could not bind
/// its address says so (the caller may pick other ports).
pub fn exited_while_starting(name: &str, status: std::process::ExitStatus) -> anyhow::Error {
    if status.code() == Some(EXIT_ADDRESS_IN_USE) {
        anyhow::anyhow!("the {name} could not listen: its address is in use ({status}); its log is above")
    } else {
        anyhow::anyhow!("the {name} exited while starting ({status}); its log is above")
    }
}
