//! Command-line interface: every setting is a flag, an environment variable
//! (`LEDGERBUS_…`) and a key in the `--config` TOML file, in that order of precedence.
//! `config_file.rs` turns the file into clap defaults, which is what makes
//! flag > env > file > built-in default hold for every setting at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod bench;
mod replay;
pub use bench::*;
pub use replay::*;

/// A financial ledger on a sequenced, reliable UDP multicast bus.
///
/// Clients send account creations and transfers to a gateway (HTTP/JSON or TCP/SBE);
/// one sequencer orders, decides, journals and publishes them as SBE events over
/// reliable UDP to consumers (an in-memory read model and a disk journal).
///
/// Every flag can also be set with the environment variable shown in its help and
/// with a key in the --config file (top-level keys for global flags, a [sequencer],
/// [gateway], [consumer], [demo], [replay] or [bench.transport]… table for the
/// others). Flags override the environment, which overrides the file.
#[derive(Debug, Parser)]
#[command(name = "ledgerbus", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// TOML configuration file. Keys are the long flag names (e.g. `mtu = 1408`).
    #[arg(long, global = true, env = "LEDGERBUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "LEDGERBUS_LOG_LEVEL", default_value = "info", value_name = "LEVEL")]
    pub log_level: LogLevel,

    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, env = "LEDGERBUS_LOG_FORMAT", default_value = "text", value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// Validate the configuration, print every effective setting with where it came
    /// from (flag, env, file, default), and exit without running anything.
    #[arg(long, global = true)]
    pub check_config: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system on this host: sequencer, gateway, memory and disk consumers
    /// over UDP unicast on 127.0.0.1, data under --data-dir. Nothing else to install.
    Demo(DemoArgs),
    /// Run the sequencer: the single writer that decides, journals and publishes.
    Sequencer(SequencerArgs),
    /// Run a gateway: the HTTP/JSON and TCP/SBE front door for clients.
    Gateway(GatewayArgs),
    /// Run a consumer that applies the event stream: `memory` (read model and query
    /// API), `disk` (persistent journal) or `sql` (Postgres or SQLite projection).
    Consumer(ConsumerArgs),
    /// Work with a SQL projection: `verify` recomputes its state hash from SQL alone.
    #[command(subcommand)]
    Sql(SqlCommand),
    /// Benchmarks: codec, transport, sequencer, end to end.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fetch, print, verify or re-publish a range of events.
    Replay(ReplayArgs),
    /// Print the SBE message schema (XML), the source of truth for the wire format.
    Schema,
}

/// Durability of an acknowledged event: the journal's own type.
pub use ledgerbus_log::Durability;

/// Settings of the reliable UDP transport, shared by senders and receivers.
/// Defaults follow docs/architecture.md ("Wire format", Aeron's reference values,
/// with the multicast NAK back-off made smaller for a LAN ledger).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Transport")]
pub struct TransportArgs {
    /// Stream id written in every packet; sender and receivers must agree.
    #[arg(long, env = "LEDGERBUS_STREAM_ID", default_value_t = 1, value_name = "ID")]
    pub stream_id: u32,

    /// Largest datagram, in bytes (Aeron's default 1408 is safe on cloud networks).
    #[arg(long, env = "LEDGERBUS_MTU", default_value_t = 1408, value_name = "BYTES",
          value_parser = clap::value_parser!(u16).range(576..=65507))]
    pub mtu: u16,

    /// IPv4 multicast group to use instead of unicast fan-out (e.g. 239.255.0.1).
    #[arg(long, env = "LEDGERBUS_MULTICAST_GROUP", value_name = "ADDR")]
    pub multicast_group: Option<Ipv4Addr>,

    /// Local interface address for multicast (IP_MULTICAST_IF and the group join).
    #[arg(long, env = "LEDGERBUS_MULTICAST_INTERFACE", default_value = "0.0.0.0", value_name = "ADDR")]
    pub multicast_interface: Ipv4Addr,

    /// UDP port of the multicast group.
    #[arg(long, env = "LEDGERBUS_MULTICAST_PORT", default_value_t = 7100, value_name = "PORT")]
    pub multicast_port: u16,

    /// Multicast TTL (hops).
    #[arg(long, env = "LEDGERBUS_MULTICAST_TTL", default_value_t = 1, value_name = "HOPS")]
    pub multicast_ttl: u8,

    /// Deliver our own multicast to sockets on this host too (IP_MULTICAST_LOOP).
    #[arg(long, env = "LEDGERBUS_MULTICAST_LOOP", default_value_t = false, action = clap::ArgAction::Set,
          value_name = "BOOL")]
    pub multicast_loop: bool,

    /// Heartbeat interval when idle, in microseconds: bounds how late tail loss is seen.
    #[arg(long, env = "LEDGERBUS_HEARTBEAT_INTERVAL_US", default_value_t = 1_000, value_name = "US")]
    pub heartbeat_interval_us: u64,

    /// Delay before the first NAK of a gap, unicast mode (Aeron: 100 µs).
    #[arg(long, env = "LEDGERBUS_NAK_DELAY_US", default_value_t = 100, value_name = "US")]
    pub nak_delay_us: u64,

    /// Upper bound of the randomised NAK back-off in multicast mode (Aeron: 10 ms;
    /// smaller here because a LAN ledger cannot wait that long).
    #[arg(long, env = "LEDGERBUS_NAK_BACKOFF_MAX_US", default_value_t = 1_000, value_name = "US")]
    pub nak_backoff_max_us: u64,

    /// Time before an unanswered NAK is repeated; doubles per retry up to 8× (Aeron:
    /// 10 ms; short here so that a lost repair is retried well within 1 ms).
    #[arg(long, env = "LEDGERBUS_NAK_RETRY_US", default_value_t = 300, value_name = "US")]
    pub nak_retry_us: u64,

    /// Repeated NAKs for a range already retransmitted within this time are ignored
    /// (Aeron's retransmit linger: 10 ms). Must stay below --nak-retry-us.
    #[arg(long, env = "LEDGERBUS_RETRANSMIT_LINGER_US", default_value_t = 200, value_name = "US")]
    pub retransmit_linger_us: u64,

    /// Requested SO_RCVBUF in bytes; the kernel caps it at net.core.rmem_max and we warn.
    #[arg(long, env = "LEDGERBUS_SOCKET_RCVBUF", default_value_t = 4 << 20, value_name = "BYTES")]
    pub socket_rcvbuf: usize,

    /// Requested SO_SNDBUF in bytes; capped at net.core.wmem_max.
    #[arg(long, env = "LEDGERBUS_SOCKET_SNDBUF", default_value_t = 4 << 20, value_name = "BYTES")]
    pub socket_sndbuf: usize,

    #[command(flatten)]
    pub bus: BusArgs,

    #[command(flatten)]
    pub idle: IdleArgs,
}

/// How the threads on the request path wait for work: the sequencer's hot and
/// journal threads, the consumers' receive threads, the gateway's and the load
/// generator's runtimes (see the README, "Idle strategies").
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Idle strategy")]
pub struct IdleArgs {
    /// `block`: sleep in the kernel until input (no CPU when idle; a wake-up costs
    /// tens of µs on a VM). `backoff`: after work, spin, then yield, then park on the
    /// input for 1 µs doubling to --backoff-park-max-us, then block: lower tail
    /// latency at moderate load for more CPU. `spin`: never sleep (a core per thread,
    /// always). With `backoff` or `spin` a gateway runs on one thread.
    #[arg(long, env = "LEDGERBUS_IDLE_STRATEGY", default_value = "block", value_name = "STRATEGY",
          value_parser = ["block", "backoff", "spin"])]
    pub idle_strategy: String,
    #[command(flatten)]
    pub backoff: BackoffArgs,
}

impl IdleArgs {
    /// The strategy these flags describe.
    pub fn strategy(&self) -> ledgerbus_transport::idle::IdleStrategy {
        use ledgerbus_transport::idle::IdleStrategy;
        match self.idle_strategy.as_str() {
            "backoff" => IdleStrategy::Backoff(self.backoff.backoff()),
            "spin" => IdleStrategy::Spin,
            _ => IdleStrategy::Block,
        }
    }

    /// The same settings as environment variables, for child processes.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let b = &self.backoff;
        vec![
            ("LEDGERBUS_IDLE_STRATEGY", self.idle_strategy.clone()),
            ("LEDGERBUS_BACKOFF_SPINS", b.backoff_spins.to_string()),
            ("LEDGERBUS_BACKOFF_YIELDS", b.backoff_yields.to_string()),
            ("LEDGERBUS_BACKOFF_PARK_MIN_US", b.backoff_park_min_us.to_string()),
            ("LEDGERBUS_BACKOFF_PARK_MAX_US", b.backoff_park_max_us.to_string()),
            ("LEDGERBUS_BACKOFF_BLOCK_AFTER_US", b.backoff_block_after_us.to_string()),
        ]
    }
}

/// The steps of the `backoff` idle strategy.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "Backoff idle strategy")]
pub struct BackoffArgs {
    /// Empty turns spent spinning before yielding.
    #[arg(long, env = "LEDGERBUS_BACKOFF_SPINS", default_value_t = 10, value_name = "N")]
    pub backoff_spins: u32,
    /// Empty turns spent yielding the core before parking.
    #[arg(long, env = "LEDGERBUS_BACKOFF_YIELDS", default_value_t = 5, value_name = "N")]
    pub backoff_yields: u32,
    /// First park, in microseconds; each further empty turn doubles it.
    #[arg(long, env = "LEDGERBUS_BACKOFF_PARK_MIN_US", default_value_t = 1, value_name = "US",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub backoff_park_min_us: u64,
    /// Longest park, in microseconds: also the most a message can wait for a parked
    /// thread, so keep it below the latency you want.
    #[arg(long, env = "LEDGERBUS_BACKOFF_PARK_MAX_US", default_value_t = 1_000, value_name = "US",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub backoff_park_max_us: u64,
    /// After parking this long (in microseconds) without work, block until input
    /// like `block`: what keeps an idle system near zero CPU.
    #[arg(long, env = "LEDGERBUS_BACKOFF_BLOCK_AFTER_US", default_value_t = 10_000, value_name = "US")]
    pub backoff_block_after_us: u64,
}

impl BackoffArgs {
    /// The strategy these flags describe.
    pub fn backoff(&self) -> ledgerbus_transport::idle::Backoff {
        ledgerbus_transport::idle::Backoff {
            spins: self.backoff_spins,
            yields: self.backoff_yields,
            park_min: std::time::Duration::from_micros(self.backoff_park_min_us),
            park_max: std::time::Duration::from_micros(self.backoff_park_max_us),
            block_after: std::time::Duration::from_micros(self.backoff_block_after_us),
        }
    }
}

/// How the bus is secured: the keys every member holds.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Bus security")]
pub struct BusArgs {
    /// Bus keys, 64 hex digits each (`openssl rand -hex 32`), comma-separated: the
    /// first seals what this process sends, every one opens what it receives (give two
    /// while rotating). Every member of the bus (sequencer, consumers, tools that
    /// listen or replay) needs it; it also authenticates bulk replay.
    #[arg(long, env = "LEDGERBUS_BUS_KEY", hide_env_values = true, value_name = "HEX[,HEX]")]
    pub bus_key: Option<String>,

    /// `aes-256-gcm`: every datagram authenticated and encrypted (the default).
    /// `none`: plain datagrams with a CRC, for benchmarks on a trusted host only;
    /// anyone who can send to the bus ports can then forge events.
    #[arg(long, env = "LEDGERBUS_BUS_SECURITY", default_value = "aes-256-gcm", value_name = "MODE")]
    pub bus_security: BusSecurityMode,
}

/// Whether datagrams on the bus are sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusSecurityMode {
    /// AES-256-GCM on every datagram.
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// No sealing (benchmarks on a trusted host).
    None,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// HTTP address of the gateway (port 0 picks a free one).
    #[arg(long, env = "LEDGERBUS_DEMO_HTTP", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub http: SocketAddr,

    /// TCP/SBE address of the gateway (port 0 picks a free one).
    #[arg(long, env = "LEDGERBUS_DEMO_TCP", default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub tcp: SocketAddr,

    /// Folder for every component's data; a fresh temporary folder (deleted on exit)
    /// when not given.
    #[arg(long, visible_alias = "data-dir", env = "LEDGERBUS_DEMO_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Stop after this many seconds instead of serving until Ctrl-C.
    #[arg(long, env = "LEDGERBUS_DEMO_DURATION", value_name = "SECS")]
    pub duration: Option<f64>,

    /// Start everything and serve, without running the sample workload.
    #[arg(long)]
    pub no_workload: bool,

    /// API key for clients (generated and printed when not given).
    #[arg(long, env = "LEDGERBUS_DEMO_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Durability of acknowledged transfers.
    #[arg(long, env = "LEDGERBUS_DURABILITY", default_value = "fsync", value_name = "MODE")]
    pub durability: Durability,

    /// Number of P2P payments (each amount + fee + tax, linked) in the workload.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub payments: u32,

    /// Also project the ledger into SQL: `sqlite://PATH` (e.g. sqlite://ledger.db) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`; the demo checks its hash too.
    #[arg(long, env = "LEDGERBUS_DEMO_SQL", hide_env_values = true, value_name = "URL")]
    pub sql: Option<String>,

    /// Sequencers: 1 (a single sequencer), or 3 or 5 (a replicated group, Raft; the
    /// workload runs through the leader and the demo checks every member's hash).
    #[arg(long, env = "LEDGERBUS_DEMO_REPLICAS", default_value_t = 1, value_name = "N",
          value_parser = parse_replicas)]
    pub replicas: usize,

    /// Memory consumers (read models), 1 to 8: the gateway spreads reads over them and
    /// skips one that is down or behind.
    #[arg(long, env = "LEDGERBUS_DEMO_MEMORY_CONSUMERS", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=8))]
    pub memory_consumers: u8,
    #[command(flatten)]
    pub idle: IdleArgs,
}

/// 1, 3 or 5.
pub fn parse_replicas(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("{value}: 1 (one sequencer), 3 or 5 (a replicated group)")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct SequencerArgs {
    /// Folder for the journal segments and snapshots (created if missing).
    #[arg(
        long,
        env = "LEDGERBUS_SEQUENCER_DATA_DIR",
        default_value = "./data/sequencer",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// TCP address where gateways connect.
    #[arg(long, env = "LEDGERBUS_GATEWAY_LISTEN", default_value = "127.0.0.1:7000", value_name = "ADDR")]
    pub gateway_listen: SocketAddr,

    /// UDP address for NAKs and status messages from consumers.
    #[arg(long, env = "LEDGERBUS_CONTROL_LISTEN", default_value = "127.0.0.1:7001", value_name = "ADDR")]
    pub control_listen: SocketAddr,

    /// TCP address of the bulk replay service.
    #[arg(long, env = "LEDGERBUS_REPLAY_LISTEN", default_value = "127.0.0.1:7002", value_name = "ADDR")]
    pub replay_listen: SocketAddr,

    /// HTTP address of the Prometheus /metrics endpoint.
    #[arg(long, env = "LEDGERBUS_METRICS_LISTEN", default_value = "127.0.0.1:7003", value_name = "ADDR")]
    pub metrics_listen: SocketAddr,

    /// Unicast subscribers (consumer UDP addresses), comma-separated. Ignored when
    /// --multicast-group is set.
    #[arg(
        long,
        env = "LEDGERBUS_SUBSCRIBERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7100",
        value_name = "ADDR,..."
    )]
    pub subscribers: Vec<SocketAddr>,

    /// Durability of acknowledged events.
    #[arg(long, env = "LEDGERBUS_DURABILITY", default_value = "fsync", value_name = "MODE")]
    pub durability: Durability,

    /// Datagrams kept in memory for retransmission (memory: this × --mtu bytes).
    /// Receivers whose gap is older catch up through the bulk replay service.
    #[arg(long, env = "LEDGERBUS_RING_DATAGRAMS", default_value_t = 16_384, value_name = "COUNT")]
    pub ring_datagrams: u32,

    /// Journal segment size in MiB before a new segment file is started.
    #[arg(long, env = "LEDGERBUS_SEGMENT_MIB", default_value_t = 256, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub segment_mib: u64,

    /// Shared secret gateways must present when they connect.
    #[arg(long, env = "LEDGERBUS_SEQUENCER_SECRET", hide_env_values = true, value_name = "SECRET")]
    pub secret: Option<String>,

    /// Transfer ids the idempotency index holds before it grows. Its memory, about
    /// 24–48 bytes per id, is allocated and faulted in at start, so that filling it
    /// never stalls the hot path; beyond it the index still grows, without a pause
    /// but at a cost while it moves.
    #[arg(long, env = "LEDGERBUS_TRANSFER_CAPACITY", default_value_t = 1 << 20, value_name = "IDS")]
    pub transfer_capacity: usize,

    /// Replication addresses of every member of a replicated sequencer group, in
    /// replica-id order (3 or 5, the same list on every member). Members dial each
    /// other there (TCP, authenticated and encrypted with a key derived from the bus
    /// key). Without it this is a single sequencer.
    #[arg(
        long,
        env = "LEDGERBUS_REPLICAS",
        value_delimiter = ',',
        value_name = "ADDR,...",
        requires = "replica_id"
    )]
    pub replicas: Vec<SocketAddr>,

    /// This member's replica id: its 1-based position in --replicas.
    #[arg(long, env = "LEDGERBUS_REPLICA_ID", value_name = "N")]
    pub replica_id: Option<u64>,

    /// Milliseconds per Raft tick in a group: a leader that is silent for 15–30 ticks
    /// is replaced; heartbeats go out every 3.
    #[arg(long, env = "LEDGERBUS_RAFT_TICK_MS", default_value_t = 10, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub raft_tick_ms: u64,

    #[command(flatten)]
    pub transport: TransportArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// HTTP/JSON API address.
    #[arg(
        long,
        env = "LEDGERBUS_GATEWAY_HTTP_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub http_listen: SocketAddr,

    /// TCP/SBE API address.
    #[arg(long, env = "LEDGERBUS_GATEWAY_TCP_LISTEN", default_value = "127.0.0.1:7070", value_name = "ADDR")]
    pub tcp_listen: SocketAddr,

    /// The sequencer's gateway address; for a replicated group, every member's, in
    /// replica-id order (the gateway finds the leader and follows it on failover).
    #[arg(
        long,
        env = "LEDGERBUS_SEQUENCER",
        value_delimiter = ',',
        default_value = "127.0.0.1:7000",
        value_name = "ADDR,..."
    )]
    pub sequencer: Vec<SocketAddr>,

    /// The memory consumers' query APIs, comma-separated, to which reads are proxied:
    /// each read goes to the one with the fewest reads in flight among those up and
    /// already at the read's sequence (health-checked every 100 ms; one that does not
    /// answer is skipped). Spoken to over HTTP/2.
    #[arg(
        long,
        env = "LEDGERBUS_QUERY_UPSTREAM",
        default_value = "127.0.0.1:8081",
        value_delimiter = ',',
        value_name = "ADDR,..."
    )]
    pub query_upstream: Vec<SocketAddr>,

    /// A memory consumer that reports more events of lag than this gets reads only
    /// when no other can take them.
    #[arg(long, env = "LEDGERBUS_QUERY_LAG_MAX", default_value_t = 100_000, value_name = "EVENTS")]
    pub query_lag_max: u64,

    /// Shared secret for the sequencer handshake.
    #[arg(long, env = "LEDGERBUS_SEQUENCER_SECRET", hide_env_values = true, value_name = "SECRET")]
    pub secret: Option<String>,

    /// Client API keys, comma-separated (`Authorization: Bearer <key>`).
    #[arg(
        long,
        env = "LEDGERBUS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "KEY,..."
    )]
    pub api_keys: Vec<String>,

    /// The key presented to the memory consumer's query API (default: the first
    /// of --api-keys).
    #[arg(long, env = "LEDGERBUS_QUERY_KEY", hide_env_values = true, value_name = "KEY")]
    pub query_key: Option<String>,

    /// Largest HTTP request body in bytes; a larger one is answered 413 before it is
    /// read (by its Content-Length) or as soon as it passes the limit.
    #[arg(long, env = "LEDGERBUS_BODY_MAX", default_value_t = 2 << 20, value_name = "BYTES")]
    pub body_max: usize,

    /// Seconds an HTTP client has to send a request's headers; also how long a
    /// kept-alive connection may stay idle.
    #[arg(long, env = "LEDGERBUS_HEADER_TIMEOUT_SECS", default_value_t = 10.0, value_name = "SECS")]
    pub header_timeout_secs: f64,

    /// Seconds a TCP client may stop in the middle of a frame (or its hello) before it
    /// is disconnected; idle time between frames is not limited.
    #[arg(long, env = "LEDGERBUS_FRAME_TIMEOUT_SECS", default_value_t = 10.0, value_name = "SECS")]
    pub frame_timeout_secs: f64,

    /// Open connections at most, per API (HTTP and TCP each); beyond it HTTP clients
    /// get 503 and TCP clients are closed before the hello.
    #[arg(long, env = "LEDGERBUS_CONNECTIONS_MAX", default_value_t = 1_024, value_name = "COUNT")]
    pub connections_max: usize,

    /// PEM certificate chain: with --tls-key, both APIs speak TLS only (rustls).
    #[arg(long, env = "LEDGERBUS_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "LEDGERBUS_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Commands waiting for the sequencer; beyond this clients get 503 / busy (a
    /// TCP read is split at linked-chain boundaries to use what room is left; a
    /// chain longer than this is always busy).
    #[arg(long, env = "LEDGERBUS_QUEUE_MAX", default_value_t = 65_536, value_name = "COUNT")]
    pub queue_max: u32,

    #[command(flatten)]
    pub idle: IdleArgs,
}

/// Which consumer to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsumerKind {
    /// In-memory read model with the HTTP query API.
    Memory,
    /// Persistent segmented journal with snapshots.
    Disk,
    /// The ledger projected into Postgres or SQLite (`--database`), exactly once.
    Sql,
}

#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Which consumer.
    #[arg(value_name = "KIND")]
    pub kind: ConsumerKind,

    /// UDP address where this consumer receives the stream.
    #[arg(long, env = "LEDGERBUS_CONSUMER_LISTEN", default_value = "127.0.0.1:7100", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// The sequencer's control address (NAKs, status messages) until the stream is
    /// heard; then reports go where the stream comes from (a group's leader).
    #[arg(long, env = "LEDGERBUS_SEQUENCER_CONTROL", default_value = "127.0.0.1:7001", value_name = "ADDR")]
    pub sequencer_control: SocketAddr,

    /// The sequencer's bulk replay address, used to catch up; for a replicated group,
    /// every member's (any of them serves what it has committed).
    #[arg(
        long,
        env = "LEDGERBUS_SEQUENCER_REPLAY",
        value_delimiter = ',',
        default_value = "127.0.0.1:7002",
        value_name = "ADDR,..."
    )]
    pub sequencer_replay: Vec<SocketAddr>,

    /// This consumer's id in status messages and NAKs (and, for `sql`, the id it keeps
    /// its database's projection under).
    #[arg(long, env = "LEDGERBUS_CONSUMER_ID", default_value_t = 1, value_name = "ID")]
    pub consumer_id: u32,

    /// Folder for the disk consumer's journal and snapshots.
    #[arg(
        long,
        visible_alias = "data",
        env = "LEDGERBUS_CONSUMER_DATA_DIR",
        default_value = "./data/consumer",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Disk consumer: when a persisted event counts as durable.
    #[arg(long, env = "LEDGERBUS_DURABILITY", default_value = "fsync", value_name = "MODE")]
    pub durability: Durability,

    /// Transfer ids the memory consumer's id index holds before it grows
    /// (as the sequencer's). Its memory, about 24–48 bytes per id, is allocated
    /// and faulted in at start, so that filling it never stalls the hot path; beyond
    /// it the index still grows, without a pause but at a cost while it moves.
    #[arg(long, env = "LEDGERBUS_TRANSFER_CAPACITY", default_value_t = 1 << 20, value_name = "IDS")]
    pub transfer_capacity: usize,

    /// Disk consumer: events between ledger snapshots.
    #[arg(long, env = "LEDGERBUS_SNAPSHOT_EVERY", default_value_t = 1_000_000, value_name = "EVENTS")]
    pub snapshot_every: u64,

    /// HTTP address of the query API (memory) or of `/status` and `/metrics` (disk, sql).
    #[arg(
        long,
        env = "LEDGERBUS_CONSUMER_HTTP_LISTEN",
        default_value = "127.0.0.1:8081",
        value_name = "ADDR"
    )]
    pub http_listen: SocketAddr,

    /// SQL consumer: where the projection lives, `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// (a Postgres server; key=value strings work too) or `sqlite://PATH` (a file,
    /// created 0600). The password is never logged or shown by --check-config.
    #[arg(long, env = "LEDGERBUS_SQL_DATABASE", hide_env_values = true, value_name = "URL")]
    pub database: Option<String>,

    /// SQL consumer: most events written in one database transaction.
    #[arg(long, env = "LEDGERBUS_SQL_BATCH_EVENTS", default_value_t = 50_000, value_name = "EVENTS",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_events: u32,

    /// SQL consumer: longest an applied event waits for its transaction, in
    /// milliseconds (bounds how far the database trails the bus when traffic is light).
    #[arg(long, env = "LEDGERBUS_SQL_BATCH_DELAY_MS", default_value_t = 20, value_name = "MS")]
    pub batch_delay_ms: u64,

    /// Out-of-order datagrams buffered while a gap is repaired (memory: this × --mtu).
    #[arg(long, env = "LEDGERBUS_REORDER_DATAGRAMS_MAX", default_value_t = 4_096, value_name = "COUNT")]
    pub reorder_datagrams_max: u32,

    /// Memory consumer: API keys its query routes accept, comma-separated
    /// (`Authorization: Bearer <key>`); the gateway presents its --query-key. Required
    /// for `memory`; `/status` stays open.
    #[arg(
        long,
        env = "LEDGERBUS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "KEY,..."
    )]
    pub api_keys: Vec<String>,

    #[command(flatten)]
    pub transport: TransportArgs,
}

#[derive(Debug, Subcommand)]
pub enum SqlCommand {
    /// Recompute the state hash and every account from the event rows alone, and
    /// compare them with the stored position, the accounts table and the trial
    /// balance. Exits 1 if anything disagrees.
    Verify(SqlVerifyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SqlVerifyArgs {
    /// The projection: `postgres://…` or `sqlite://PATH`.
    #[arg(long, env = "LEDGERBUS_SQL_DATABASE", hide_env_values = true, value_name = "URL")]
    pub database: String,

    /// Also require this state hash (hex, as the sequencer's /status shows it).
    #[arg(long, value_name = "HEX")]
    pub expect_hash: Option<String>,

    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
}
