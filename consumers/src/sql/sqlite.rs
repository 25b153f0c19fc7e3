//! The projection in an embedded SQLite file: prepared (cached) statements inside one
//! transaction per batch, the write-ahead log, and `decimal_sum` for exact sums over
//! the decimal `TEXT` columns.
//!
//! `synchronous = NORMAL` in WAL mode: a commit survives a crash of the process, and
//! a power loss can only take the newest transactions back, never corrupt the file;
//! since the position rides in the same transaction as the rows, the projection is
//! then simply older and the consumer re-applies from there. Exactly once holds.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{decimal, RowBatch};
use super::schema::{self, Dialect, SCHEMA_VERSION};
use super::{
    big, events_query, position_of, Database, Position, RawAccount, RawEvent, SqlError, ACCOUNT_COLUMNS,
};

/// The page cache of a connection, in KiB.
const CACHE_KIB: u32 = 256 << 10;

/// WAL pages between checkpoints (4 KiB pages).
const WAL_CHECKPOINT_PAGES: u32 = 16_384;

/// A SQLite database file holding the projection.
pub struct SqliteDatabase {
    path: PathBuf,
    connection: Connection,
}

fn io_error(path: &Path, source: std::io::Error) -> SqlError {
    SqlError::Io { path: path.to_path_buf(), source }
}

impl SqliteDatabase {
    /// Opens (creating, readable by its owner only) the file at `path`.
    pub fn open(path: &Path) -> Result<SqliteDatabase, SqlError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        // The ledger's data: created 0600, before SQLite creates it with the umask's
        // mode (its -wal and -shm files take the database file's mode). Only ever
        // `create_new`: opening and closing an existing database file outside SQLite
        // would drop every POSIX lock this process holds on it, including those of a
        // connection still open (a reconnect), and let another process delete the
        // WAL under it — committed transactions lost.
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(io_error(path, error)),
        }
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        // Index pages of five indexes are touched at random: a page cache far larger
        // than the default 2 MiB keeps them from being spilled and read back on
        // every batch (measured: most of the write time with the default).
        connection.pragma_update(None, "cache_size", -(CACHE_KIB as i64))?;
        // A batch dirties index pages all over the file; checkpointing the WAL back
        // into it after every transaction (the default: past 1,000 pages) writes
        // each such page twice per batch. Let the WAL grow to 64 MiB between them.
        connection.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        register_decimal_sum(&connection)?;
        Ok(SqliteDatabase { path: path.to_path_buf(), connection })
    }
}

/// `decimal_sum(X)`: the exact sum of decimal integers (TEXT or INTEGER), as TEXT;
/// NULL over no rows, like `sum`. The `sqlite3` shell has a function of this name and
/// meaning built in, so the views work there too.
pub fn register_decimal_sum(connection: &Connection) -> rusqlite::Result<()> {
    connection.create_aggregate_function(
        "decimal_sum",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        DecimalSum,
    )
}

struct DecimalSum;

impl Aggregate<i128, Option<String>> for DecimalSum {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<i128> {
        Ok(0)
    }

    fn step(&self, context: &mut Context<'_>, sum: &mut i128) -> rusqlite::Result<()> {
        let value: i128 = match context.get_raw(0) {
            ValueRef::Null => return Ok(()),
            ValueRef::Integer(value) => value.into(),
            ValueRef::Text(text) => {
                std::str::from_utf8(text).ok().and_then(|text| text.trim().parse().ok()).ok_or_else(|| {
                    user_error(format!(
                        "decimal_sum: {:?} is not a decimal integer",
                        String::from_utf8_lossy(text)
                    ))
                })?
            }
            _ => return Err(user_error("decimal_sum: a value is neither text nor an integer".into())),
        };
        *sum = sum
            .checked_add(value)
            .ok_or_else(|| user_error("decimal_sum: the sum exceeds 128 bits".into()))?;
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<i128>) -> rusqlite::Result<Option<String>> {
        Ok(sum.map(|sum| sum.to_string()))
    }
}

fn user_error(message: String) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(message.into())
}

/// A decimal TEXT column read back.
fn wide(row: &rusqlite::Row<'_>, index: usize, table: &'static str) -> Result<u128, SqlError> {
    let text: String = row.get(index)?;
    text.parse().map_err(|_| SqlError::BadRow {
        table,
        key: format!("column {index}"),
        what: format!("{text:?} is not an unsigned decimal integer"),
    })
}

fn write_rows(tx: &rusqlite::Transaction<'_>, batch: &RowBatch) -> Result<(), SqlError> {
    let (mut a, mut b, mut c, mut d, mut e, mut f) =
        ([0u8; 40], [0u8; 40], [0u8; 40], [0u8; 40], [0u8; 40], [0u8; 40]);
    if !batch.account_events.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO account_events (sequence, timestamp_ns, id, ledger, code, flags, user_data_128, \
             user_data_64, user_data_32, result) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for ev in &batch.account_events {
            insert.execute(params![
                big(ev.sequence.get(), "sequence")?,
                big(ev.timestamp_ns.get(), "timestamp_ns")?,
                decimal(ev.id.get(), &mut a),
                ev.ledger.get(),
                ev.code.get(),
                ev.flags.get(),
                decimal(ev.user_data_128.get(), &mut b),
                decimal(ev.user_data_64.get().into(), &mut c),
                ev.user_data_32.get(),
                ev.result.get(),
            ])?;
        }
    }
    if !batch.transfers.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO transfers (sequence, timestamp_ns, id, debit_account_id, credit_account_id, amount, \
             pending_id, user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags, result) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        let mut g = [0u8; 40];
        for ev in &batch.transfers {
            insert.execute(params![
                big(ev.sequence.get(), "sequence")?,
                big(ev.timestamp_ns.get(), "timestamp_ns")?,
                decimal(ev.id.get(), &mut a),
                decimal(ev.debit_account_id.get(), &mut b),
                decimal(ev.credit_account_id.get(), &mut c),
                decimal(ev.amount.get().into(), &mut d),
                decimal(ev.pending_id.get(), &mut e),
                decimal(ev.user_data_128.get(), &mut f),
                decimal(ev.user_data_64.get().into(), &mut g),
                ev.user_data_32.get(),
                ev.timeout.get(),
                ev.ledger.get(),
                ev.code.get(),
                ev.flags.get(),
                ev.result.get(),
            ])?;
        }
    }
    if !batch.expirations.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO expirations (sequence, timestamp_ns, pending_id, debit_account_id, credit_account_id, \
             amount, ledger, code, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for ev in &batch.expirations {
            insert.execute(params![
                big(ev.sequence.get(), "sequence")?,
                big(ev.timestamp_ns.get(), "timestamp_ns")?,
                decimal(ev.pending_id.get(), &mut a),
                decimal(ev.debit_account_id.get(), &mut b),
                decimal(ev.credit_account_id.get(), &mut c),
                decimal(ev.amount.get().into(), &mut d),
                ev.ledger.get(),
                ev.code.get(),
                ev.flags.get(),
            ])?;
        }
    }
    if !batch.accounts.is_empty() {
        let mut upsert = tx.prepare_cached(&format!(
            "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (id) DO UPDATE SET
               flags = excluded.flags,
               debits_pending = excluded.debits_pending,
               debits_posted = excluded.debits_posted,
               credits_pending = excluded.credits_pending,
               credits_posted = excluded.credits_posted,
               updated_sequence = excluded.updated_sequence"
        ))?;
        let mut g = [0u8; 40];
        for row in &batch.accounts {
            let account = &row.account;
            upsert.execute(params![
                decimal(row.id, &mut a),
                account.ledger,
                account.code,
                account.flags,
                decimal(account.debits_pending.into(), &mut b),
                decimal(account.debits_posted.into(), &mut c),
                decimal(account.credits_pending.into(), &mut d),
                decimal(account.credits_posted.into(), &mut e),
                decimal(row.user_data.user_data_128, &mut f),
                decimal(row.user_data.user_data_64.into(), &mut g),
                row.user_data.user_data_32,
                big(account.timestamp_ns, "timestamp_ns")?,
                big(row.updated_sequence, "updated_sequence")?,
            ])?;
        }
    }
    Ok(())
}

impl Database for SqliteDatabase {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn schema_version(&mut self) -> Result<i64, SqlError> {
        let exists: bool = self.connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledgerbus_schema')",
            [],
            |row| row.get(0),
        )?;
        if !exists {
            return Ok(0);
        }
        let version: Option<i64> =
            self.connection.query_row("SELECT max(version) FROM ledgerbus_schema", [], |row| row.get(0))?;
        Ok(version.unwrap_or(0))
    }

    fn migrate(&mut self) -> Result<(), SqlError> {
        self.connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS ledgerbus_schema (
                version INTEGER PRIMARY KEY,
                migrated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        )?;
        let mut version = self.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(SqlError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
        }
        for step in schema::migrations(Dialect::Sqlite).into_iter().skip(version as usize) {
            let tx = self.connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for statement in step {
                tx.execute_batch(&statement)?;
            }
            version += 1;
            tx.execute("INSERT INTO ledgerbus_schema (version) VALUES (?1)", [version])?;
            tx.commit()?;
            tracing::info!(version, "SQL schema migrated");
        }
        let tx = self.connection.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO results (result, name) VALUES (?1, ?2) ON CONFLICT (result) DO NOTHING",
            )?;
            for (code, name) in schema::results_rows() {
                insert.execute(params![code, name])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn position(&mut self) -> Result<Option<(String, Position)>, SqlError> {
        let row = self
            .connection
            .query_row(
                "SELECT consumer_id, session, sequence, state_hash, timestamp_ns FROM ledgerbus_position",
                [],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(consumer, session, sequence, hash, timestamp)| {
            Ok((consumer, position_of(&session, sequence, &hash, timestamp)?))
        })
        .transpose()
    }

    fn create_position(&mut self, consumer: &str) -> Result<(), SqlError> {
        self.connection.execute(
            "INSERT INTO ledgerbus_position (consumer_id, session, sequence, state_hash, timestamp_ns)
             VALUES (?1, '0000000000000000', 0, '0000000000000000', 0)",
            [consumer],
        )?;
        Ok(())
    }

    fn write(
        &mut self,
        consumer: &str,
        batch: &RowBatch,
        from: &Position,
        to: &Position,
    ) -> Result<(), SqlError> {
        let tx = self.connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let moved = tx.prepare_cached(
            "UPDATE ledgerbus_position
             SET session = ?1, sequence = ?2, state_hash = ?3, timestamp_ns = ?4, updated_at = CURRENT_TIMESTAMP
             WHERE consumer_id = ?5 AND session = ?6 AND sequence = ?7",
        )?
        .execute(params![
            format!("{:016x}", to.session),
            big(to.sequence, "sequence")?,
            format!("{:016x}", to.state_hash),
            big(to.timestamp_ns, "timestamp_ns")?,
            consumer,
            format!("{:016x}", from.session),
            big(from.sequence, "sequence")?,
        ])?;
        if moved != 1 {
            drop(tx);
            let found = self.position()?.map(|(_, p)| p.sequence);
            return Err(SqlError::Conflict { expected: from.sequence, found });
        }
        write_rows(&tx, batch)?;
        tx.commit()?;
        Ok(())
    }

    fn events(&mut self, each: &mut dyn FnMut(RawEvent) -> Result<(), SqlError>) -> Result<(), SqlError> {
        let mut statement = self.connection.prepare(&events_query(Dialect::Sqlite))?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let kind: i64 = row.get(0)?;
            let table = RawEvent::table(kind);
            each(RawEvent {
                kind,
                sequence: row.get(1)?,
                timestamp_ns: row.get(2)?,
                id: wide(row, 3, table)?,
                debit: wide(row, 4, table)?,
                credit: wide(row, 5, table)?,
                amount: wide(row, 6, table)?,
                pending_id: wide(row, 7, table)?,
                user_data_128: wide(row, 8, table)?,
                user_data_64: wide(row, 9, table)?,
                user_data_32: row.get(10)?,
                timeout: row.get(11)?,
                ledger: row.get(12)?,
                code: row.get(13)?,
                flags: row.get(14)?,
                result: row.get(15)?,
            })?;
        }
        Ok(())
    }

    fn accounts(&mut self, each: &mut dyn FnMut(RawAccount) -> Result<(), SqlError>) -> Result<(), SqlError> {
        let mut statement = self.connection.prepare(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts"))?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let t = "accounts";
            each(RawAccount {
                id: wide(row, 0, t)?,
                ledger: row.get(1)?,
                code: row.get(2)?,
                flags: row.get(3)?,
                debits_pending: wide(row, 4, t)?,
                debits_posted: wide(row, 5, t)?,
                credits_pending: wide(row, 6, t)?,
                credits_posted: wide(row, 7, t)?,
                user_data_128: wide(row, 8, t)?,
                user_data_64: wide(row, 9, t)?,
                user_data_32: row.get(10)?,
                timestamp_ns: row.get(11)?,
                updated_sequence: row.get(12)?,
            })?;
        }
        Ok(())
    }

    fn trial_balance(&mut self) -> Result<Vec<(i64, bool)>, SqlError> {
        let mut statement =
            self.connection.prepare("SELECT ledger, balanced FROM trial_balance ORDER BY ledger")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, bool>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn move_aside(&mut self, session: u64) -> Result<String, SqlError> {
        // Close the file (checkpointing its WAL), move it, open a new one.
        let placeholder = Connection::open_in_memory()?;
        let old = std::mem::replace(&mut self.connection, placeholder);
        old.close().map_err(|(_, error)| error)?;
        let aside = (0..)
            .map(|n| {
                let suffix = if n == 0 { String::new() } else { format!("-{n}") };
                PathBuf::from(format!("{}.previous-{session:016x}{suffix}", self.path.display()))
            })
            .find(|path| !path.exists())
            .expect("some name is free");
        std::fs::rename(&self.path, &aside).map_err(|e| io_error(&self.path, e))?;
        for extra in ["-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{extra}", self.path.display()));
            if path.exists() {
                let to = PathBuf::from(format!("{}{extra}", aside.display()));
                std::fs::rename(&path, &to).map_err(|e| io_error(&path, e))?;
            }
        }
        *self = SqliteDatabase::open(&self.path)?;
        Ok(aside.display().to_string())
    }

    fn reconnect(&mut self) -> Result<(), SqlError> {
        *self = SqliteDatabase::open(&self.path)?;
        Ok(())
    }

    fn execute(&mut self, statements: &str) -> Result<(), SqlError> {
        Ok(self.connection.execute_batch(statements)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_sum_is_exact_past_64_bits() {
        let connection = Connection::open_in_memory().unwrap();
        register_decimal_sum(&connection).unwrap();
        connection.execute_batch("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('18446744073709551615'), ('18446744073709551615'), (NULL), ('2');").unwrap();
        let sum: String = connection.query_row("SELECT decimal_sum(x) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(sum, "36893488147419103232");
        let none: Option<String> =
            connection.query_row("SELECT decimal_sum(x) FROM t WHERE 0", [], |r| r.get(0)).unwrap();
        assert_eq!(none, None);
        connection.execute_batch("INSERT INTO t VALUES ('12abc')").unwrap();
        assert!(connection.query_row("SELECT decimal_sum(x) FROM t", [], |r| r.get::<_, String>(0)).is_err());
    }
}
