//! The async Rust client of a ledgerbus gateway's TCP/SBE API.
//!
//! One [`Client`] is one connection, shared by any number of tasks and threads:
//! groups of commands are pipelined, answered in order, and if the connection drops
//! the client reconnects and sends every unanswered group again with the same ids, so
//! the ledger answers `exists` for what had applied and nothing applies twice.
//!
//! ```no_run
//! use ledgerbus_client::{Account, Client, ResultCode, Transfer};
//!
//! # async fn run() -> Result<(), ledgerbus_client::Error> {
//! let client = Client::connect("127.0.0.1:7070", "my-api-key").await?;
//! let opened = client
//!     .submit(&[
//!         Account::new(1, 840, 1).allow_negative().into(),
//!         Account::new(2, 840, 1).into(),
//!     ])
//!     .await?;
//! assert!(opened.iter().all(|o| o.result.is_success()));
//! let paid = client.submit(&[Transfer::new(100, 1, 2, 2_500).ledger(840).code(1).into()]).await?;
//! match paid[0].result {
//!     ResultCode::Ok => println!("applied as event {}", paid[0].sequence),
//!     ResultCode::Exists => println!("a retry of an applied transfer"),
//!     other => println!("refused: {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A linked chain (all-or-nothing) is one group whose members but the last are
//! [`Transfer::linked`]. `examples/pay.rs` is a whole program.
//!
//! # Layout
//! - [`command`]: [`Account`] and [`Transfer`] builders, typed flags, [`Command`].
//! - [`connection`]: [`Client`] (commands, and lookups of accounts, transfers and
//!   account history that see the client's own writes), [`Outcome`], [`Pending`].
//! - [`records`]: what lookups answer: [`AccountInfo`], [`TransferInfo`],
//!   [`HistoryPage`].
//! - [`wire`]: non-blocking frame reading and writing (shared with the gateway).
//! - `tls` (feature `tls`, on by default): TLS to a gateway run with `--tls-cert`.

pub mod command;
pub mod connection;
pub mod idle;
pub mod records;
#[cfg(feature = "tls")]
pub mod tls;
pub mod wire;

pub use command::{Account, AccountFlags, Command, Transfer, TransferFlags};
pub use connection::{Client, Outcome, Pending};
pub use ledgerbus_codec::ResultCode;
pub use records::{AccountInfo, HistoryPage, PendingState, TransferInfo};
#[cfg(feature = "tls")]
pub use tls::TlsClient;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway could not be reached (or its address resolved).
    #[error("connecting to {address}: {source}")]
    Connect {
        /// The gateway's address, as given.
        address: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The gateway closed the connection at the hello: the API key was refused.
    #[error("the gateway refused the API key")]
    Refused,
    /// No answer within the time allowed.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The gateway sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Too many groups are unanswered ([`Client::send`] does not wait for room).
    #[error("{0} groups are unanswered; wait for some outcomes first")]
    TooManyUnanswered(usize),
    /// The read model could not answer a lookup now (ask again).
    #[error("the read model could not answer; ask again")]
    Unavailable,
    /// The client was dropped while the call waited.
    #[error("the client is closed")]
    Closed,
    /// An invalid argument (an API key over 64 bytes, a bad TLS setting).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing the connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> std::io::Error {
        use std::io::ErrorKind;
        let kind = match &error {
            Error::Connect { source, .. } => source.kind(),
            Error::Io(source) => source.kind(),
            Error::Refused => ErrorKind::PermissionDenied,
            Error::Timeout(_) => ErrorKind::TimedOut,
            Error::Protocol(_) => ErrorKind::InvalidData,
            Error::TooManyUnanswered(_) => ErrorKind::WouldBlock,
            Error::Closed => ErrorKind::BrokenPipe,
            Error::Unavailable => ErrorKind::WouldBlock,
            Error::Invalid(_) => ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, error.to_string())
    }
}
