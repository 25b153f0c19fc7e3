//! `ledgerbus consumer sql`: the event stream projected into a relational database
//! (Postgres, or SQLite embedded), for people who ask their questions in SQL.
//!
//! Exactly once across crashes: every batch of events, the account rows they changed,
//! and the position (last sequence, rolling hash) are written in **one** database
//! transaction, and the position is moved with a compare-and-set on where it was. A
//! restart re-reads the event rows, checks that they hash to the stored position
//! (a projection that drifted refuses to continue), and resumes from there.
//!
//! The consumer follows the bus as an observer (its window never holds the
//! sequencer back): a slow database makes this consumer lag and catch up through the
//! bulk replay service, never slows the sequencer or the other consumers.
//!
//! # Layout
//! - [`schema`]: tables, indexes, views, migrations (both dialects).
//! - [`rows`]: events as rows and rows back into the exact event bytes.
//! - [`postgres`]: binary COPY into Postgres. [`numeric`]: `NUMERIC` on the wire.
//! - [`sqlite`]: prepared statements into SQLite, and `decimal_sum`.
//! - [`sink`]: the [`crate::follow::Sink`] that batches events into transactions.
//! - [`verify`]: the state hash and balances recomputed from SQL alone.

pub mod numeric;
pub mod postgres;
pub mod rows;
pub mod schema;
pub mod sink;
pub mod sqlite;
pub mod verify;

use std::path::PathBuf;

use ledgerbus_codec::messages::{AccountEvent, PendingExpired, TransferEvent};
use ledgerbus_ledger::{Account, UserData};

use rows::{AccountRow, EventRow, RowBatch};
pub use schema::Dialect;
pub use sink::{run, SqlConfig, SqlSink};

/// Why the SQL projection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// `--database` is not a URL this consumer understands.
    #[error("--database: {0}")]
    Url(String),
    /// Postgres refused or failed.
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file beside the SQLite database could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An event cannot be kept as rows that give it back exactly.
    #[error("event: {0}")]
    Event(String),
    /// A row holds a value no event can have (edited by hand, or another program's).
    #[error("row of {table} at {key}: {what}")]
    BadRow {
        /// The table.
        table: &'static str,
        /// Which row.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// The stored position moved under us: another consumer writes this database.
    #[error(
        "the position in ledgerbus_position moved from {expected} to {found:?} under this consumer: \
         another consumer is writing this database"
    )]
    Conflict {
        /// The sequence this consumer had committed.
        expected: u64,
        /// What the database holds now.
        found: Option<u64>,
    },
    /// The database's projection is kept by another consumer id.
    #[error(
        "this database's projection is kept by consumer {holder}; start with --consumer-id {holder} \
         or use another database"
    )]
    Held {
        /// The consumer id in `ledgerbus_position`.
        holder: String,
    },
    /// The database was migrated by a newer version.
    #[error("the database's schema is version {found}, newer than this consumer's {supported}")]
    SchemaTooNew {
        /// The version found.
        found: i64,
        /// The version this consumer writes.
        supported: i64,
    },
    /// The database holds none of the projection's tables.
    #[error("the database holds no ledgerbus projection (no ledgerbus_schema table)")]
    NoProjection,
    /// The rows do not say what the stored position says.
    #[error("the projection drifted: {0}")]
    Drift(String),
}

impl SqlError {
    /// Whether the failure may pass by itself (a database restarting, a lock held
    /// for a moment), so that the write is worth retrying on a fresh connection.
    pub fn is_transient(&self) -> bool {
        match self {
            SqlError::Postgres(error) => {
                error.is_closed()
                    || error.code().is_none_or(|code| {
                        let class = &code.code()[..2];
                        // connection exception, insufficient resources, operator
                        // intervention (shutdown), serialization failure/deadlock.
                        matches!(class, "08" | "53" | "57" | "40")
                    })
            }
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
            ),
            SqlError::Io { .. } => true,
            _ => false,
        }
    }
}

/// Where the projection lives, from `--database`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A Postgres server: the whole `postgres://…` URL (or key=value string).
    Postgres(String),
    /// A SQLite file.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Parses `postgres://…`, `postgresql://…` or `sqlite://PATH` (`sqlite:PATH`).
    pub fn parse(url: &str) -> Result<DatabaseUrl, SqlError> {
        // A URL, or libpq's key=value form: `host=/var/run/postgresql dbname=ledger …`.
        let key_value = !url.contains("://") && url.contains('=');
        if url.starts_with("postgres://") || url.starts_with("postgresql://") || key_value {
            postgres::check_url(url)?;
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(SqlError::Url("sqlite:// needs a file path, e.g. sqlite://ledger.db".into()));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        Err(SqlError::Url(format!(
            "{}: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE or sqlite://PATH",
            redact(url)
        )))
    }

    /// The dialect it speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            DatabaseUrl::Postgres(_) => Dialect::Postgres,
            DatabaseUrl::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Opens a connection (no migration, no claim).
    pub fn connect(&self) -> Result<Box<dyn Database>, SqlError> {
        Ok(match self {
            DatabaseUrl::Postgres(url) => Box::new(postgres::PostgresDatabase::connect(url)?),
            DatabaseUrl::Sqlite(path) => Box::new(sqlite::SqliteDatabase::open(path)?),
        })
    }
}

/// The URL with its password replaced, for logs, `/status` and errors.
impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Postgres(url) => f.write_str(&redact(url)),
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// `url` with the password of its user-info and any `password=` parameter replaced
/// by `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..].find(['/', '?']).map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let user_info = &out[rest_start..rest_start + at];
            if let Some(colon) = user_info.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    // `password=` in a query string or a key=value connection string.
    let mut cursor = 0;
    while let Some(found) = out[cursor..].find("password=") {
        let start = cursor + found + "password=".len();
        let end = out[start..].find(['&', ' ']).map_or(out.len(), |i| start + i);
        out.replace_range(start..end, "***");
        cursor = start + 3;
    }
    out
}

/// Where the projection stands: the last event its rows hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The sequencer's log (0: not known yet).
    pub session: u64,
    /// The last event applied (0: none).
    pub sequence: u64,
    /// The rolling log hash after it.
    pub state_hash: u64,
    /// Its time stamp.
    pub timestamp_ns: u64,
}

/// One event read back, before range checks ([`RawEvent::into_row`]); the column
/// set of the `UNION ALL` over the three event tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEvent {
    /// 0 account event, 1 transfer, 2 expiry.
    pub kind: i64,
    /// Columns in the order of [`EVENT_COLUMNS`].
    pub sequence: i64,
    #[allow(missing_docs)]
    pub timestamp_ns: i64,
    #[allow(missing_docs)]
    pub id: u128,
    #[allow(missing_docs)]
    pub debit: u128,
    #[allow(missing_docs)]
    pub credit: u128,
    #[allow(missing_docs)]
    pub amount: u128,
    #[allow(missing_docs)]
    pub pending_id: u128,
    #[allow(missing_docs)]
    pub user_data_128: u128,
    #[allow(missing_docs)]
    pub user_data_64: u128,
    #[allow(missing_docs)]
    pub user_data_32: i64,
    #[allow(missing_docs)]
    pub timeout: i64,
    #[allow(missing_docs)]
    pub ledger: i64,
    #[allow(missing_docs)]
    pub code: i64,
    #[allow(missing_docs)]
    pub flags: i64,
    #[allow(missing_docs)]
    pub result: i64,
}

/// A sequence, time stamp or other u64 for a signed 64-bit column (`BIGINT`, SQLite's
/// `INTEGER`); beyond 2^63 the event cannot be stored as it is.
fn big(value: u64, column: &str) -> Result<i64, SqlError> {
    i64::try_from(value)
        .map_err(|_| SqlError::Event(format!("{column} {value} does not fit a signed 64-bit column")))
}

fn parse_hex(table: &'static str, column: &str, text: &str) -> Result<u64, SqlError> {
    u64::from_str_radix(text, 16).map_err(|_| SqlError::BadRow {
        table,
        key: "the position".into(),
        what: format!("{column} {text:?} is not hexadecimal"),
    })
}

/// A position row's columns as stored.
fn position_of(
    session: &str,
    sequence: i64,
    state_hash: &str,
    timestamp_ns: i64,
) -> Result<Position, SqlError> {
    let table = "ledgerbus_position";
    let bad = |column: &str, value: i64| SqlError::BadRow {
        table,
        key: "the position".into(),
        what: format!("{column} = {value} is negative"),
    };
    Ok(Position {
        session: parse_hex(table, "session", session)?,
        sequence: u64::try_from(sequence).map_err(|_| bad("sequence", sequence))?,
        state_hash: parse_hex(table, "state_hash", state_hash)?,
        timestamp_ns: u64::try_from(timestamp_ns).map_err(|_| bad("timestamp_ns", timestamp_ns))?,
    })
}

/// The query that reads every event in log order, for `dialect`.
pub fn events_query(dialect: Dialect) -> String {
    let z = dialect.zero();
    format!(
        "SELECT 0 AS kind, sequence, timestamp_ns, id, {z}, {z}, {z}, {z},
                user_data_128, user_data_64, user_data_32, 0, ledger, code, flags, result
         FROM account_events
         UNION ALL
         SELECT 1, sequence, timestamp_ns, id, debit_account_id, credit_account_id, amount, pending_id,
                user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags, result
         FROM transfers
         UNION ALL
         SELECT 2, sequence, timestamp_ns, pending_id, debit_account_id, credit_account_id, amount, {z},
                {z}, {z}, 0, 0, ledger, code, flags, 0
         FROM expirations
         ORDER BY sequence"
    )
}

/// The columns [`events_query`] returns, for documentation and the readers.
pub const EVENT_COLUMNS: usize = 16;

fn narrow<T: TryFrom<V>, V: Copy + std::fmt::Display>(
    table: &'static str,
    sequence: i64,
    column: &str,
    value: V,
) -> Result<T, SqlError> {
    T::try_from(value).map_err(|_| SqlError::BadRow {
        table,
        key: format!("sequence {sequence}"),
        what: format!("{column} = {value} is out of range"),
    })
}

impl RawEvent {
    /// The table an event row of `kind` comes from (for errors).
    pub fn table(kind: i64) -> &'static str {
        ["account_events", "transfers", "expirations"].get(kind as usize).copied().unwrap_or("?")
    }

    /// The event these columns describe, refusing values no event can carry.
    pub fn into_row(self) -> Result<EventRow, SqlError> {
        let table = RawEvent::table(self.kind);
        let s = self.sequence;
        let u64_of = |column: &str, value: u128| narrow::<u64, u128>(table, s, column, value);
        let sequence: u64 = narrow(table, s, "sequence", self.sequence)?;
        let timestamp_ns: u64 = narrow(table, s, "timestamp_ns", self.timestamp_ns)?;
        let ledger: u32 = narrow(table, s, "ledger", self.ledger)?;
        let code: u16 = narrow(table, s, "code", self.code)?;
        let flags: u16 = narrow(table, s, "flags", self.flags)?;
        let result: u16 = narrow(table, s, "result", self.result)?;
        let user_data_64 = u64_of("user_data_64", self.user_data_64)?;
        let user_data_32: u32 = narrow(table, s, "user_data_32", self.user_data_32)?;
        Ok(match self.kind {
            0 => EventRow::Account(AccountEvent {
                sequence: sequence.into(),
                timestamp_ns: timestamp_ns.into(),
                id: self.id.into(),
                ledger: ledger.into(),
                code: code.into(),
                flags: flags.into(),
                result: result.into(),
                user_data_128: self.user_data_128.into(),
                user_data_64: user_data_64.into(),
                user_data_32: user_data_32.into(),
                ..AccountEvent::default()
            }),
            1 => EventRow::Transfer(TransferEvent {
                sequence: sequence.into(),
                timestamp_ns: timestamp_ns.into(),
                id: self.id.into(),
                debit_account_id: self.debit.into(),
                credit_account_id: self.credit.into(),
                amount: u64_of("amount", self.amount)?.into(),
                ledger: ledger.into(),
                code: code.into(),
                flags: flags.into(),
                result: result.into(),
                pending_id: self.pending_id.into(),
                user_data_128: self.user_data_128.into(),
                user_data_64: user_data_64.into(),
                user_data_32: user_data_32.into(),
                timeout: narrow::<u32, i64>(table, s, "timeout", self.timeout)?.into(),
                ..TransferEvent::default()
            }),
            2 => EventRow::Expired(PendingExpired {
                sequence: sequence.into(),
                timestamp_ns: timestamp_ns.into(),
                pending_id: self.id.into(),
                debit_account_id: self.debit.into(),
                credit_account_id: self.credit.into(),
                amount: u64_of("amount", self.amount)?.into(),
                ledger: ledger.into(),
                code: code.into(),
                flags: flags.into(),
                ..PendingExpired::default()
            }),
            other => {
                return Err(SqlError::BadRow {
                    table,
                    key: format!("sequence {s}"),
                    what: format!("kind {other}"),
                })
            }
        })
    }
}

/// One `accounts` row read back, before range checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawAccount {
    #[allow(missing_docs)]
    pub id: u128,
    #[allow(missing_docs)]
    pub ledger: i64,
    #[allow(missing_docs)]
    pub code: i64,
    #[allow(missing_docs)]
    pub flags: i64,
    #[allow(missing_docs)]
    pub debits_pending: u128,
    #[allow(missing_docs)]
    pub debits_posted: u128,
    #[allow(missing_docs)]
    pub credits_pending: u128,
    #[allow(missing_docs)]
    pub credits_posted: u128,
    #[allow(missing_docs)]
    pub user_data_128: u128,
    #[allow(missing_docs)]
    pub user_data_64: u128,
    #[allow(missing_docs)]
    pub user_data_32: i64,
    #[allow(missing_docs)]
    pub timestamp_ns: i64,
    #[allow(missing_docs)]
    pub updated_sequence: i64,
}

/// The columns of `accounts` in the order every reader and writer uses.
pub const ACCOUNT_COLUMNS: &str = "id, ledger, code, flags, debits_pending, debits_posted, credits_pending, \
     credits_posted, user_data_128, user_data_64, user_data_32, timestamp_ns, updated_sequence";

impl RawAccount {
    /// The account these columns describe.
    pub fn into_row(self) -> Result<AccountRow, SqlError> {
        let bad = |column: &str, value: &dyn std::fmt::Display| SqlError::BadRow {
            table: "accounts",
            key: format!("id {}", self.id),
            what: format!("{column} = {value} is out of range"),
        };
        let u64_of = |column: &str, value: u128| u64::try_from(value).map_err(|_| bad(column, &value));
        Ok(AccountRow {
            id: self.id,
            account: Account {
                debits_posted: u64_of("debits_posted", self.debits_posted)?,
                credits_posted: u64_of("credits_posted", self.credits_posted)?,
                debits_pending: u64_of("debits_pending", self.debits_pending)?,
                credits_pending: u64_of("credits_pending", self.credits_pending)?,
                timestamp_ns: u64::try_from(self.timestamp_ns)
                    .map_err(|_| bad("timestamp_ns", &self.timestamp_ns))?,
                ledger: u32::try_from(self.ledger).map_err(|_| bad("ledger", &self.ledger))?,
                code: u16::try_from(self.code).map_err(|_| bad("code", &self.code))?,
                flags: u16::try_from(self.flags).map_err(|_| bad("flags", &self.flags))?,
            },
            user_data: UserData {
                user_data_128: self.user_data_128,
                user_data_64: u64_of("user_data_64", self.user_data_64)?,
                user_data_32: u32::try_from(self.user_data_32)
                    .map_err(|_| bad("user_data_32", &self.user_data_32))?,
            },
            updated_sequence: u64::try_from(self.updated_sequence)
                .map_err(|_| bad("updated_sequence", &self.updated_sequence))?,
        })
    }
}

/// What the consumer needs of a database; one implementation per dialect.
pub trait Database: Send {
    /// The dialect.
    fn dialect(&self) -> Dialect;
    /// The schema version the database is at (0: none of our tables).
    fn schema_version(&mut self) -> Result<i64, SqlError>;
    /// Creates or migrates the tables, indexes and views to [`schema::SCHEMA_VERSION`]
    /// (one transaction per step) and refreshes the `results` table.
    fn migrate(&mut self) -> Result<(), SqlError>;
    /// The stored position and the consumer id that keeps it, if any.
    fn position(&mut self) -> Result<Option<(String, Position)>, SqlError>;
    /// Inserts the position row for `consumer` (nothing applied yet).
    fn create_position(&mut self, consumer: &str) -> Result<(), SqlError>;
    /// In one transaction: writes `batch`'s rows and moves the position from `from`
    /// to `to`, failing with [`SqlError::Conflict`] (and writing nothing) if the
    /// stored position is not `from`.
    fn write(
        &mut self,
        consumer: &str,
        batch: &RowBatch,
        from: &Position,
        to: &Position,
    ) -> Result<(), SqlError>;
    /// Every event, in log order.
    fn events(&mut self, each: &mut dyn FnMut(RawEvent) -> Result<(), SqlError>) -> Result<(), SqlError>;
    /// Every account row.
    fn accounts(&mut self, each: &mut dyn FnMut(RawAccount) -> Result<(), SqlError>) -> Result<(), SqlError>;
    /// The `trial_balance` view: (ledger, balanced).
    fn trial_balance(&mut self) -> Result<Vec<(i64, bool)>, SqlError>;
    /// Moves the projection of a previous log aside (never deletes it) and returns
    /// where it went; the database is left without our tables.
    fn move_aside(&mut self, session: u64) -> Result<String, SqlError>;
    /// Drops the connection and opens a new one (after a failure).
    fn reconnect(&mut self) -> Result<(), SqlError>;
    /// Runs statements that return nothing.
    fn execute(&mut self, statements: &str) -> Result<(), SqlError>;
}

/// Deletes the projection's views and tables (for benchmarks, which need an empty
/// database; the consumer itself never deletes, it moves aside).
pub fn drop_projection(db: &mut dyn Database) -> Result<(), SqlError> {
    for view in schema::VIEWS {
        db.execute(&format!("DROP VIEW IF EXISTS {view}"))?;
    }
    for table in schema::TABLES.iter().chain(&["ledgerbus_schema"]) {
        db.execute(&format!("DROP TABLE IF EXISTS {table}"))?;
    }
    Ok(())
}

/// Fills `batch` from concatenated frames, for tools that write events directly
/// (the benchmark): every frame must be an event in the sequencer's form.
pub fn rows_of(frames: &[u8], batch: &mut RowBatch) -> Result<(), SqlError> {
    for frame in crate::follow::split_frames(frames) {
        batch.push(EventRow::from_frame(frame)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            ("postgres://ledger:s3cret@db:5432/ledger", "postgres://ledger:***@db:5432/ledger"),
            ("postgres://ledger@db/ledger", "postgres://ledger@db/ledger"),
            (
                "postgres://u:p%40ss@db/x?password=other&sslmode=require",
                "postgres://u:***@db/x?password=***&sslmode=require",
            ),
            ("host=db user=u password=pw dbname=x", "host=db user=u password=*** dbname=x"),
        ] {
            assert_eq!(redact(url), shown);
        }
        let url = DatabaseUrl::parse("postgresql://ledger:hunter2@127.0.0.1:5432/ledger").unwrap();
        assert!(!format!("{url} {url:?}").contains("hunter2"));
    }

    #[test]
    fn urls_name_their_database() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://ledger.db").unwrap(),
            DatabaseUrl::Sqlite("ledger.db".into())
        );
        assert_eq!(DatabaseUrl::parse("sqlite:/tmp/a.db").unwrap(), DatabaseUrl::Sqlite("/tmp/a.db".into()));
        assert_eq!(DatabaseUrl::parse("postgres://u@h/d").unwrap().dialect(), Dialect::Postgres);
        let socket = DatabaseUrl::parse("host=/var/run/postgresql dbname=ledger password=pw").unwrap();
        assert_eq!(socket.dialect(), Dialect::Postgres);
        assert!(!socket.to_string().contains("pw"));
        let error = DatabaseUrl::parse("postgres://u:secretpw@h/d?sslmode=require").unwrap_err().to_string();
        assert!(error.contains("sslrootcert") && !error.contains("secretpw"), "{error}");
        assert!(DatabaseUrl::parse("postgres://u@h/d?sslrootcert=/nonexistent/ca.pem").is_err());
        for bad in ["mysql://u:secretpw@h/d", "sqlite://", "ledger.db", "postgres://u:secretpw@h:notaport/d"]
        {
            let error = DatabaseUrl::parse(bad).unwrap_err().to_string();
            assert!(!error.contains("secretpw"), "{error}");
        }
    }

    #[test]
    fn rows_out_of_range_are_refused() {
        let raw = RawEvent { kind: 1, sequence: 1, amount: u64::MAX as u128 + 1, ..RawEvent::default() };
        assert!(matches!(raw.into_row(), Err(SqlError::BadRow { .. })));
        let raw = RawEvent { kind: 7, sequence: 1, ..RawEvent::default() };
        assert!(raw.into_row().is_err());
        let raw = RawEvent { kind: 0, sequence: -1, ..RawEvent::default() };
        assert!(raw.into_row().is_err());
        let raw = RawAccount { flags: 1 << 20, ..RawAccount::default() };
        assert!(raw.into_row().is_err());
    }
}
