//! A whole ledgerbus on 127.0.0.1 as real processes, for end-to-end tests: the
//! sequencer, a memory consumer, a disk consumer and a gateway, on free ports.
//! Every process is killed (by its PID) when the cluster is dropped.

#![allow(dead_code)]

pub mod postgres;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub const SECRET: &str = "e2e-test-secret-0123456789";
pub const API_KEY: &str = "e2e-test-api-key-0123456789";
pub const BUS_KEY: &str = "e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0";

pub fn free_tcp() -> SocketAddr {
    ledgerbus_tools::cluster::free_tcp().unwrap()
}

pub fn free_udp() -> SocketAddr {
    ledgerbus_tools::cluster::free_udp().unwrap()
}

/// A child killed when dropped.
pub struct Process(pub Child);

impl Process {
    pub fn kill_now(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The cluster's processes, started by the same launcher as `ledgerbus demo`.
pub type Service = ledgerbus_tools::cluster::Service;

/// A cluster on 127.0.0.1; its addresses (`cluster.gateway_http`, …) are the
/// launcher's, reached through `Deref`.
pub struct Cluster {
    pub dir: PathBuf,
    pub sequencer_process: Option<Service>,
    pub memory_process: Option<Service>,
    /// Memory consumers beyond the first ([`Cluster::start_shaped`]).
    pub other_memory_processes: Vec<Service>,
    pub disk_process: Option<Service>,
    pub gateway_process: Option<Service>,
    pub sql_process: Option<Service>,
    pub launcher: ledgerbus_tools::cluster::Cluster,
}

impl std::ops::Deref for Cluster {
    type Target = ledgerbus_tools::cluster::Addresses;
    fn deref(&self) -> &Self::Target {
        &self.launcher.addresses
    }
}

impl Cluster {
    pub fn start(dir: &Path) -> Cluster {
        Cluster::start_with_sql(dir, None)
    }

    /// A cluster with a SQL consumer writing to `sql` as well, if given.
    pub fn start_with_sql(dir: &Path, sql: Option<String>) -> Cluster {
        Cluster::start_with(dir, sql, Vec::new())
    }

    /// A cluster whose processes wait with the idle strategy `idle` says
    /// (`LEDGERBUS_IDLE_STRATEGY`, …; empty: the default).
    pub fn start_with(dir: &Path, sql: Option<String>, idle: Vec<(&'static str, String)>) -> Cluster {
        Cluster::start_shaped(dir, sql, idle, 1)
    }

    /// A cluster with `memory_consumers` memory consumers (the gateway spreads reads
    /// over them), the others as [`start_with`](Self::start_with).
    pub fn start_shaped(
        dir: &Path,
        sql: Option<String>,
        idle: Vec<(&'static str, String)>,
        memory_consumers: usize,
    ) -> Cluster {
        let addresses = ledgerbus_tools::cluster::Addresses::free(free_tcp(), free_tcp()).unwrap();
        let launcher = ledgerbus_tools::cluster::Cluster {
            exe: env!("CARGO_BIN_EXE_ledgerbus").into(),
            data: dir.to_path_buf(),
            addresses,
            credentials: ledgerbus_tools::cluster::Credentials {
                sequencer_secret: SECRET.into(),
                api_key: API_KEY.into(),
                bus_key: BUS_KEY.into(),
                bus_security: "aes-256-gcm",
            },
            durability: ledgerbus_log::Durability::Os,
            transfer_capacity: None,
            snapshot_every: Some(20_000),
            log_level: "warn",
            replicas: Vec::new(),
            sql,
            idle,
            extra_memory: (1..memory_consumers).map(|_| (free_udp(), free_tcp())).collect(),
        };
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            sequencer_process: None,
            memory_process: None,
            other_memory_processes: Vec::new(),
            disk_process: None,
            gateway_process: None,
            sql_process: None,
            launcher,
        };
        let mut services = cluster.launcher.start().expect("the cluster starts");
        // `start` hands them back in stopping order: gateway, (SQL), disk, other memory
        // consumers, memory, sequencer.
        cluster.sequencer_process = services.pop();
        cluster.memory_process = services.pop();
        for _ in 1..memory_consumers {
            cluster.other_memory_processes.extend(services.pop());
        }
        cluster.disk_process = services.pop();
        if cluster.launcher.sql.is_some() {
            cluster.sql_process = services.pop();
        }
        cluster.gateway_process = services.pop();
        cluster
    }

    /// The disk consumer's data directory.
    pub fn disk_data(&self) -> PathBuf {
        self.launcher.disk_data()
    }

    pub fn spawn_sequencer(&self) -> Service {
        self.launcher.spawn_sequencer().expect("start the sequencer")
    }

    pub fn spawn_consumer(&self, kind: &str) -> Service {
        self.launcher.spawn_consumer(kind).expect("start a consumer")
    }

    /// Another gateway in front of this cluster's sequencer and memory consumer, on
    /// the given addresses, with `extra` flags.
    pub fn spawn_gateway(&self, http: SocketAddr, tcp: SocketAddr, extra: &[&str]) -> Service {
        self.launcher.spawn_gateway(http, tcp, extra).expect("start a gateway")
    }

    /// Waits until the consumer at `http` has applied everything the sequencer has and
    /// returns (sequence, consumer hash, sequencer hash).
    pub fn converge(&self, http: SocketAddr) -> (u64, String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sequencer = get(self.sequencer_status, "/status", None).map(|r| r.json);
            let consumer = get(http, "/status", None).map(|r| r.json);
            if let (Some(sequencer), Some(consumer)) = (sequencer, consumer) {
                if sequencer["last_sequence"] == consumer["last_sequence"] {
                    return (
                        sequencer["last_sequence"].as_u64().unwrap(),
                        consumer["state_hash"].as_str().unwrap().to_string(),
                        sequencer["state_hash"].as_str().unwrap().to_string(),
                    );
                }
            }
            assert!(Instant::now() < deadline, "consumer at {http} never caught up with the sequencer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub body: String,
    pub json: serde_json::Value,
}

pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Option<HttpResponse> {
    let (status, body) = ledgerbus_tools::cluster::http_request(address, method, path, key, body)?;
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    Some(HttpResponse { status, body, json })
}

/// A raw connection to a gateway's TCP API, past the ClientHello/Welcome handshake.
pub fn raw_tcp_client(address: SocketAddr) -> TcpStream {
    use ledgerbus_codec::messages::{ClientHello, Welcome};
    use ledgerbus_codec::{encode, Message};
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut key = [0u8; 64];
    key[..API_KEY.len()].copy_from_slice(API_KEY.as_bytes());
    let mut hello = [0u8; ClientHello::FRAME_SIZE];
    encode(&ClientHello { api_key: key }, &mut hello).unwrap();
    stream.write_all(&hello).unwrap();
    let mut welcome = [0u8; Welcome::FRAME_SIZE];
    stream.read_exact(&mut welcome).unwrap();
    stream
}

pub fn get(address: SocketAddr, path: &str, key: Option<&str>) -> Option<HttpResponse> {
    request(address, "GET", path, key, None)
}

pub fn post(address: SocketAddr, path: &str, body: &str) -> HttpResponse {
    request(address, "POST", path, Some(API_KEY), Some(body)).expect("gateway answers")
}
