//! A whole ledgerbus on 127.0.0.1 as real processes, for end-to-end tests: the
//! sequencer, a memory consumer, a disk consumer and a gateway, on free ports.
//! Every process is killed (by its PID) when the cluster is dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "e2e-test-secret-0123456789";
pub const API_KEY: &str = "e2e-test-api-key-0123456789";
pub const BUS_KEY: &str = "e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0";

/// A free port below the kernel's ephemeral range (10000–32767): a port from bind
/// to port 0 could be taken by any outgoing connection of a test running in
/// parallel before the child process binds it.
fn free_port(free: impl Fn(SocketAddr) -> bool) -> SocketAddr {
    loop {
        let mut random = [0u8; 2];
        getrandom::fill(&mut random).unwrap();
        let candidate = SocketAddr::from(([127, 0, 0, 1], 10_000 + u16::from_le_bytes(random) % 22_768));
        if free(candidate) {
            return candidate;
        }
    }
}

pub fn free_tcp() -> SocketAddr {
    free_port(|address| TcpListener::bind(address).is_ok())
}

pub fn free_udp() -> SocketAddr {
    free_port(|address| UdpSocket::bind(address).is_ok())
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

pub fn spawn(args: &[String]) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_ledgerbus"))
        .args(["--log-level", "warn"])
        .args(args)
        .env("LEDGERBUS_SEQUENCER_SECRET", SECRET)
        .env("LEDGERBUS_API_KEYS", API_KEY)
        .env("LEDGERBUS_BUS_KEY", BUS_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ledgerbus");
    Process(child)
}

fn s(value: impl ToString) -> String {
    value.to_string()
}

pub struct Cluster {
    pub dir: PathBuf,
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
    pub sequencer_process: Option<Process>,
    pub memory_process: Option<Process>,
    pub disk_process: Option<Process>,
    pub gateway_process: Option<Process>,
}

impl Cluster {
    pub fn start(dir: &Path) -> Cluster {
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            gateway_http: free_tcp(),
            gateway_tcp: free_tcp(),
            sequencer: free_tcp(),
            sequencer_status: free_tcp(),
            control: free_udp(),
            replay: free_tcp(),
            memory_udp: free_udp(),
            memory_http: free_tcp(),
            disk_udp: free_udp(),
            disk_http: free_tcp(),
            sequencer_process: None,
            memory_process: None,
            disk_process: None,
            gateway_process: None,
        };
        cluster.sequencer_process = Some(cluster.spawn_sequencer());
        wait_until("sequencer", || get(cluster.sequencer_status, "/status", None).is_some());
        cluster.memory_process = Some(cluster.spawn_consumer("memory"));
        cluster.disk_process = Some(cluster.spawn_consumer("disk"));
        cluster.gateway_process = Some(cluster.spawn_gateway(cluster.gateway_http, cluster.gateway_tcp, &[]));
        wait_until("gateway", || get(cluster.gateway_http, "/health", None).is_some_and(|r| r.status == 200));
        wait_until("consumers", || {
            get(cluster.memory_http, "/status", None).is_some()
                && get(cluster.disk_http, "/status", None).is_some()
        });
        cluster
    }

    pub fn spawn_sequencer(&self) -> Process {
        spawn(&[
            s("sequencer"),
            s("--data-dir"),
            s(self.dir.join("sequencer").display()),
            s("--gateway-listen"),
            s(self.sequencer),
            s("--control-listen"),
            s(self.control),
            s("--replay-listen"),
            s(self.replay),
            s("--metrics-listen"),
            s(self.sequencer_status),
            s("--subscribers"),
            format!("{},{}", self.memory_udp, self.disk_udp),
            s("--durability"),
            s("os"),
        ])
    }

    pub fn spawn_consumer(&self, kind: &str) -> Process {
        let (udp, http, id) = match kind {
            "memory" => (self.memory_udp, self.memory_http, 1),
            _ => (self.disk_udp, self.disk_http, 2),
        };
        spawn(&[
            s("consumer"),
            s(kind),
            s("--listen"),
            s(udp),
            s("--http-listen"),
            s(http),
            s("--sequencer-control"),
            s(self.control),
            s("--sequencer-replay"),
            s(self.replay),
            s("--consumer-id"),
            s(id),
            s("--data-dir"),
            s(self.dir.join("disk").display()),
            s("--durability"),
            s("os"),
            s("--snapshot-every"),
            s(20_000),
        ])
    }

    /// Another gateway in front of this cluster's sequencer and memory consumer, on
    /// the given addresses, with `extra` flags.
    pub fn spawn_gateway(&self, http: SocketAddr, tcp: SocketAddr, extra: &[&str]) -> Process {
        let mut args = vec![
            s("gateway"),
            s("--http-listen"),
            s(http),
            s("--tcp-listen"),
            s(tcp),
            s("--sequencer"),
            s(self.sequencer),
            s("--query-upstream"),
            s(self.memory_http),
        ];
        args.extend(extra.iter().map(s));
        spawn(&args)
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
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
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
