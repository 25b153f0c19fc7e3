//! `ledgerbus bench …`: the benchmarks' flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::*;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Encode/decode cost of the hot messages (use criterion for precise figures:
    /// `cargo bench -p ledgerbus-codec`).
    Codec(BenchCodecArgs),
    /// Sender and receivers over 127.0.0.1 with injected loss.
    Transport(BenchTransportArgs),
    /// The sequencer in-process: decide, stamp, journal, encode, publish.
    Sequencer(BenchSequencerArgs),
    /// End-to-end latency histogram against a gateway.
    E2e(Box<BenchE2eArgs>),
    /// A replicated sequencer group under load, its leader killed (SIGKILL) again and
    /// again: time without answers per kill, and acknowledged transfers lost or
    /// applied twice (both must be 0).
    Failover(BenchFailoverArgs),
    /// The latency floor of a request's path on this host: client -> relay -> echo
    /// server -> relay -> client over 127.0.0.1 TCP with blocking sockets and no work,
    /// the same hand-offs as client -> gateway -> sequencer and back.
    Hops(BenchHopsArgs),
    /// The SQL consumer's apply rate into a database: N events decided in process
    /// (the e2e mix), then written as the consumer writes them, batched; and, in the
    /// same run, one event per transaction (how an ORM-based consumer writes).
    Sql(BenchSqlArgs),
    /// The raw UDP round trip on this host (a paced client, an echo thread) with each
    /// idle strategy: the floor under any request latency, and what waiting differently
    /// buys, measured in one run.
    Floor(BenchFloorArgs),
    /// Overlay the latency curves of several `.hgrm` files (from `bench e2e --hgrm` or
    /// any HdrHistogram tool) in one plot, to compare runs.
    Plot(BenchPlotArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BenchFailoverArgs {
    /// Members of the group: 3 or 5.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = parse_group_size)]
    pub replicas: usize,
    /// Times the leader is killed.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub kills: u32,
    /// Durability of the members and the disk consumer.
    #[arg(long, default_value = "fsync", value_name = "MODE")]
    pub durability: Durability,
    /// Closed-loop clients per API (as many over TCP as over HTTP).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub clients: u32,
    /// Seconds of load before each kill and after the last.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub settle: f64,
    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
}

/// 3 or 5.
fn parse_group_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ (3 | 5)) => Ok(n),
        _ => Err(format!("{value}: a group has 3 or 5 members")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchPlotArgs {
    /// The `.hgrm` files; each is one curve, labelled with its file name.
    #[arg(required = true, value_name = "HGRM")]
    pub files: Vec<PathBuf>,
    /// The plot to write (`.png` or `.svg`).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The plot's title.
    #[arg(long, default_value = "ledgerbus latency by percentile", value_name = "TEXT")]
    pub title: String,
}

#[derive(Debug, Clone, Args)]
pub struct BenchHopsArgs {
    /// Messages per second (open loop).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub rate: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// Measure from each message's actual send instead of its intended send time
    /// (leaves the sender's own timer wake-up out).
    #[arg(long)]
    pub from_send: bool,
    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchCodecArgs {
    /// How long to measure each operation, in seconds.
    #[arg(long, env = "LEDGERBUS_BENCH_DURATION", default_value_t = 1.0, value_name = "SECS")]
    pub duration: f64,

    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchTransportArgs {
    /// How long to run, in seconds.
    #[arg(long, env = "LEDGERBUS_BENCH_DURATION", default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// Number of receivers.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub receivers: u32,
    /// Percentage of data packets each receiver drops on purpose.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    pub loss: f64,
    /// Size of each event in bytes (SBE header included).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: u32,
    /// Largest datagram, in bytes.
    #[arg(long, default_value_t = 1408, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(576..=65507))]
    pub mtu: u16,
    /// Seal datagrams (`aes-256-gcm`, with a key made for the run) or not (`none`).
    #[arg(long, default_value = "aes-256-gcm", value_name = "MODE")]
    pub bus_security: BusSecurityMode,
    /// Also run with the other --bus-security in the same invocation and print the
    /// ratio of sealed to plain events/s (what security costs, measured side by side).
    #[arg(long)]
    pub compare: bool,
    /// Print a last line of JSON with the results (one per run).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchSequencerArgs {
    /// How long to run, in seconds.
    #[arg(long, env = "LEDGERBUS_BENCH_DURATION", default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// Durability mode to measure.
    #[arg(long, default_value = "fsync", value_name = "MODE")]
    pub durability: Durability,
    /// Publish to these real consumers (comma-separated UDP addresses) instead of a
    /// socket nobody reads; they are served catch-up from the bench's journal and hold
    /// it back through flow control, so the rate reported is one they kept up with.
    #[arg(long, value_delimiter = ',', value_name = "ADDR,...")]
    pub subscribers: Vec<SocketAddr>,
    /// With --subscribers: where consumers send NAKs and status messages.
    #[arg(long, default_value = "127.0.0.1:7001", value_name = "ADDR")]
    pub control_listen: SocketAddr,
    /// With --subscribers: the replay service consumers catch up from.
    #[arg(long, default_value = "127.0.0.1:7002", value_name = "ADDR")]
    pub replay_listen: SocketAddr,
    /// Percent of commands (0-100) that are two-phase: pending transfers, and posts
    /// or voids (alternately) of earlier ones.
    #[arg(long, default_value_t = 0, value_name = "PCT", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub two_phase: u32,
    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
    /// With --subscribers: the bus key they hold.
    #[command(flatten)]
    pub bus: BusArgs,
}

/// API driven by `bench e2e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchProtocol {
    /// The TCP/SBE API through the Rust client.
    Tcp,
    /// The HTTP/JSON API (keep-alive).
    Http,
}

#[derive(Debug, Clone, Args)]
pub struct BenchE2eArgs {
    /// Gateway TCP/SBE address, also used to create and fund the accounts [default:
    /// from --cluster, else 127.0.0.1:7070].
    #[arg(long, env = "LEDGERBUS_GATEWAY_TCP", value_name = "ADDR")]
    pub gateway: Option<SocketAddr>,
    /// Gateway HTTP address, for --protocol http [default: from --cluster, else
    /// 127.0.0.1:8080].
    #[arg(long, env = "LEDGERBUS_GATEWAY_HTTP", value_name = "ADDR")]
    pub gateway_http: Option<SocketAddr>,
    /// A `cluster.toml` (written by `demo`) to take the gateway's addresses from.
    #[arg(long, value_name = "FILE", conflicts_with = "spawn")]
    pub cluster: Option<PathBuf>,
    /// API key for the gateway.
    #[arg(long, env = "LEDGERBUS_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Connect to the gateway's TCP API over TLS, trusting the CA certificates in
    /// this PEM file (the gateway runs with --tls-cert).
    #[arg(long, value_name = "FILE", conflicts_with = "spawn")]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: the name the gateway's certificate must carry (default: the
    /// IP address of --gateway).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// With --spawn: seal the bus (`aes-256-gcm`, the default) or not (`none`), to
    /// measure what security costs.
    #[arg(long, default_value = "aes-256-gcm", value_name = "MODE")]
    pub bus_security: BusSecurityMode,
    /// Start the whole system on 127.0.0.1 first (as `demo` does), check at the end
    /// that both consumers reached the sequencer's state hash, and stop it.
    #[arg(long)]
    pub spawn: bool,
    /// With --spawn: durability of the sequencer and disk consumer.
    #[arg(long, default_value = "fsync", value_name = "MODE")]
    pub durability: Durability,
    /// With --spawn: sequencers, 1, or 3 or 5 for a replicated group (quorum commit).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = super::parse_replicas)]
    pub replicas: usize,
    /// With --spawn: transfer ids the sequencer's and the memory consumer's indexes
    /// are sized for (see `sequencer --transfer-capacity`). Default: enough for the
    /// run, 1.25 × duration × rate (2,000,000/s for `max`), at least 1,048,576.
    #[arg(long, value_name = "IDS")]
    pub transfer_capacity: Option<usize>,
    /// tcp or http.
    #[arg(long, default_value = "tcp", value_name = "PROTO")]
    pub protocol: BenchProtocol,
    /// Transfers per second (open loop, latency from the intended send time), or `max`.
    #[arg(long, default_value = "max", value_name = "N|max")]
    pub rate: String,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Parallel client connections.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub connections: u32,
    /// Transfers per request.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch: u32,
    /// With `--rate max`: requests kept in flight per connection. Default: 32, or
    /// fewer so that a connection has at most 8,192 transfers in flight (more would
    /// overrun the gateway's queue and measure its `busy` answers).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub in_flight: Option<u32>,
    /// Number of accounts transfers are spread over (one in fifty transfers tries to
    /// overdraw, so rejections happen).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub accounts: u32,
    /// Percent of transfers (0-100) that are two-phase: pending transfers, and posts
    /// or voids (alternately) of earlier ones on the same connection.
    #[arg(long, default_value_t = 0, value_name = "PCT", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub two_phase: u32,
    /// Write the histogram in .hgrm percentile-distribution format (milliseconds).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile plot, `.svg` or `.png` (text in a built-in font).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
    /// Mix reads into the load: `GET /accounts/{id}` on the gateway's HTTP API for the
    /// run's accounts, at this rate per second (open loop, from intended send times)
    /// or `max` (each --query-connections asks again as soon as answered); their
    /// percentiles are reported beside the writes'.
    #[arg(long, value_name = "N|max")]
    pub queries: Option<String>,
    /// Connections the reads use (with `--queries max`, one query in flight on each).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub query_connections: u32,
    /// With --spawn: memory consumers (1 to 8); the gateway spreads reads over them.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub memory_consumers: u8,
    #[command(flatten)]
    pub idle: IdleArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BenchSqlArgs {
    /// The database to write to: `postgres://…` or `sqlite://PATH`. It must hold no
    /// projection (or pass --replace); the benchmark's tables are dropped afterwards.
    #[arg(long, env = "LEDGERBUS_BENCH_SQL_DATABASE", hide_env_values = true, value_name = "URL")]
    pub database: String,
    /// Events to write (accounts, their funding, then transfers).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub events: u64,
    /// Accounts the transfers move money between.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub accounts: u64,
    /// Most events per transaction (the consumer's --batch-events).
    #[arg(long, default_value_t = 50_000, value_name = "EVENTS")]
    pub batch_events: u32,
    /// Longest an applied event waits for its transaction, in milliseconds (the
    /// consumer's --batch-delay-ms).
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub batch_delay_ms: u64,
    /// Offer events at this rate (events/s) instead of all at once, and report the
    /// lag (events applied but not yet committed, and not yet applied).
    #[arg(long, value_name = "EVENTS_PER_SEC")]
    pub rate: Option<u64>,
    /// Percentage of two-phase transfers (pending, then posted or voided).
    #[arg(long, default_value_t = 0, value_name = "PCT", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub two_phase: u32,
    /// Events written one per transaction for the comparison (0: skip it).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub per_event: u64,
    /// Drop a projection the database already holds.
    #[arg(long)]
    pub replace: bool,
    /// Keep the benchmark's tables afterwards (to query them).
    #[arg(long)]
    pub keep: bool,
    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchFloorArgs {
    /// Round trips per second (open loop: measured from each one's intended send time).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub rate: u64,
    /// Seconds per strategy.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// How the echo thread and the client's receiving thread wait: block (blocking
    /// recv), backoff (spin 10, yield 5, then park 1 µs doubling to 1 ms: Aeron's
    /// defaults), spin (never sleep), or all (each in turn, in one run).
    #[arg(long, default_value = "all", value_name = "STRATEGY",
          value_parser = ["block", "backoff", "spin", "all"])]
    pub idle_strategy: String,
    #[command(flatten)]
    pub backoff: BackoffArgs,
    /// Print a last line of JSON with the results.
    #[arg(long)]
    pub json: bool,
}
