//! `ledgerbus replay …`: reading, filtering, verifying and re-publishing the log.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::*;

/// Event kinds `replay --type` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayKind {
    /// Account creations.
    Account,
    /// Transfers.
    Transfer,
    /// Pending transfers released by their timeout.
    Expired,
}

/// How `replay` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    /// One human-readable line per event.
    Text,
    /// JSON lines.
    Json,
    /// The exact SBE frames.
    Raw,
}

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub action: Option<ReplayAction>,
    /// Read from a running sequencer's replay service (its --replay-listen address).
    #[arg(long, value_name = "ADDR", conflicts_with = "journal")]
    pub from_sequencer: Option<SocketAddr>,
    /// Read from the replay service named in this `cluster.toml` (written by `demo`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["journal", "from_sequencer"])]
    pub cluster: Option<PathBuf>,
    /// Read from a journal directory (a sequencer's, or a disk consumer's `journal/`).
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// First sequence.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub from: u64,
    /// Last sequence, inclusive (default: the end).
    #[arg(long, value_name = "M")]
    pub to: Option<u64>,
    /// Output format.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    pub format: ReplayFormat,
    /// Print only these fields, in this order, comma-separated: with `--format json` an
    /// object of them, with `--format text` their values separated by tabs. Fields:
    /// sequence, timestamp, time (RFC 3339), type, id, debit_account_id,
    /// credit_account_id, amount, ledger, code, linked, allow_negative, result.
    #[arg(long, value_name = "A,B,…", conflicts_with = "verify")]
    pub fields: Option<ledgerbus_tools::format::FieldSelection>,
    /// Check CRCs, continuity, session ids and (from sequence 1) that every event
    /// applies; print a summary instead of the events; exit non-zero if anything is wrong.
    #[arg(long)]
    pub verify: bool,
    /// Re-publish the range through the transport to this consumer address.
    #[arg(long, value_name = "ADDR")]
    pub to_subscriber: Option<SocketAddr>,
    /// With --format raw: write the frames here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// With --verify: also print the summary as one line of JSON.
    #[arg(long)]
    pub json: bool,
    /// Start N events before the end instead of at --from.
    #[arg(long, value_name = "N", conflicts_with = "from")]
    pub last: Option<u64>,
    /// After the end, keep printing new events as they are published (from a
    /// sequencer; Ctrl-C stops).
    #[arg(long, conflicts_with_all = ["verify", "journal", "to", "to_subscriber"])]
    pub follow: bool,
    /// Print only events of this account (created, or either side of a transfer).
    #[arg(long, value_name = "ID")]
    pub account: Option<u128>,
    /// Print only events of this kind.
    #[arg(long = "type", value_name = "KIND")]
    pub kind: Option<ReplayKind>,
    /// Print only events with this result: `accepted`, `rejected`, or a result code
    /// (`insufficient_funds`).
    #[arg(long, value_name = "RESULT")]
    pub result: Option<String>,
    /// Print only events stamped at or after this time (RFC 3339, e.g.
    /// 2026-12-01T12:00:00Z, or seconds since the epoch).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Print only events stamped before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The bus key: --from-sequencer authenticates with it, --to-subscriber seals with it.
    #[command(flatten)]
    pub bus: BusArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ReplayAction {
    /// Send one NAK to a sequencer and print what comes back (retransmitted events or
    /// "not retransmittable"): the operator's check of retransmission.
    Nak(ReplayNakArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReplayNakArgs {
    /// The sequencer's control (NAK, UDP) address [default: from --cluster, else
    /// 127.0.0.1:7001].
    #[arg(long, value_name = "ADDR")]
    pub sequencer: Option<SocketAddr>,
    /// A `cluster.toml` (written by `demo`) to take the sequencer's addresses from.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// First sequence to request.
    #[arg(long, value_name = "N")]
    pub from: u64,
    /// Number of events to request.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub count: u32,
    /// The sequencer's replay service, asked for the session id (unless --session)
    /// [default: from --cluster, else 127.0.0.1:7002].
    #[arg(long, value_name = "ADDR")]
    pub replay: Option<SocketAddr>,
    /// Session id in hex (skips asking the replay service).
    #[arg(long, value_name = "HEX")]
    pub session: Option<String>,
    /// Stream id.
    #[arg(long, default_value_t = 1, value_name = "ID")]
    pub stream_id: u32,
    /// How long to listen for replies, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub wait_ms: u64,
    /// The bus key the probe seals and opens its datagrams with.
    #[command(flatten)]
    pub bus: BusArgs,
}
