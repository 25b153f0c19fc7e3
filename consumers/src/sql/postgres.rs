//! The projection in Postgres: event rows go in by binary `COPY` (no text parsing on
//! either side, exact `NUMERIC`s), changed accounts through a temporary table and one
//! `INSERT … ON CONFLICT` per batch, the position with a prepared compare-and-set,
//! all in one transaction committed synchronously.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::config::SslMode;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Transaction};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::numeric::Numeric;
use super::rows::RowBatch;
use super::schema::{self, Dialect, SCHEMA_VERSION, TABLES, VIEWS};
use super::{
    big, events_query, position_of, Database, Position, RawAccount, RawEvent, SqlError, ACCOUNT_COLUMNS,
};

/// A connection to the projection's Postgres database.
pub struct PostgresDatabase {
    url: String,
    client: Client,
}

impl PostgresDatabase {
    /// Connects to `url` (a `postgres://` URL or key=value string).
    pub fn connect(url: &str) -> Result<PostgresDatabase, SqlError> {
        Ok(PostgresDatabase { url: url.to_string(), client: open(url)? })
    }
}

/// `url` without its `sslrootcert` parameter (libpq's name for the CA file, which the
/// Rust client does not know), and that file. libpq's `sslmode=verify-full` and
/// `verify-ca` become `require`: with a CA, the certificate and the host name are
/// always verified.
pub fn split_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let url_form = url.contains("://");
    let (head, params, separator) = match url_form {
        true => match url.split_once('?') {
            Some((head, query)) => (head.to_string(), query.split('&').collect::<Vec<_>>(), '&'),
            None => return (url.to_string(), None),
        },
        false => (String::new(), url.split_whitespace().collect(), ' '),
    };
    let mut ca = None;
    let mut kept = Vec::new();
    for param in params {
        match param.split_once('=') {
            Some(("sslrootcert", path)) => ca = Some(PathBuf::from(path)),
            Some(("sslmode", "verify-full" | "verify-ca")) => kept.push("sslmode=require".to_string()),
            _ => kept.push(param.to_string()),
        }
    }
    let rest = kept.join(&separator.to_string());
    let clean = match (url_form, rest.is_empty()) {
        (true, true) => head,
        (true, false) => format!("{head}?{rest}"),
        (false, _) => rest,
    };
    (clean, ca)
}

/// The client configuration that trusts the certificates in the PEM file `ca`.
fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, SqlError> {
    let bad = |what: String| SqlError::Url(format!("sslrootcert {}: {what}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Checks `url` as [`open`] will read it, without connecting.
pub fn check_url(url: &str) -> Result<(), SqlError> {
    let (clean, ca) = split_root_cert(url);
    let config: postgres::Config =
        clean.parse().map_err(|e| SqlError::Url(format!("{}: {e}", super::redact(url))))?;
    match ca {
        Some(ca) => tls_config(&ca).map(|_| ()),
        None if config.get_ssl_mode() == SslMode::Require => Err(SqlError::Url(
            "sslmode=require needs sslrootcert=FILE: the CA that signed the server's certificate".into(),
        )),
        None => Ok(()),
    }
}

/// Opens a connection: TLS (verified against `sslrootcert`, required) when the URL
/// names a CA, otherwise plain.
fn open(url: &str) -> Result<Client, SqlError> {
    check_url(url)?;
    let (clean, ca) = split_root_cert(url);
    let mut config: postgres::Config =
        clean.parse().map_err(|e| SqlError::Url(format!("{}: {e}", super::redact(url))))?;
    Ok(match ca {
        Some(ca) => {
            // A CA means TLS or nothing: never fall back to a plain connection.
            config.ssl_mode(SslMode::Require);
            config.connect(MakeRustlsConnect::new(tls_config(&ca)?))?
        }
        None => config.connect(NoTls)?,
    })
}

/// Column types of a COPY, in order.
const ACCOUNT_EVENT_TYPES: [Type; 10] = [
    Type::INT8,
    Type::INT8,
    Type::NUMERIC,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::INT8,
    Type::INT4,
];
const TRANSFER_TYPES: [Type; 15] = [
    Type::INT8,
    Type::INT8,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::INT4,
];
const EXPIRATION_TYPES: [Type; 9] = [
    Type::INT8,
    Type::INT8,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::INT8,
    Type::INT4,
    Type::INT4,
];
const ACCOUNT_TYPES: [Type; 13] = [
    Type::NUMERIC,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::INT8,
    Type::INT8,
    Type::INT8,
];

fn write_rows(tx: &mut Transaction<'_>, batch: &RowBatch) -> Result<(), SqlError> {
    if !batch.account_events.is_empty() {
        let sink = tx.copy_in(
            "COPY account_events (sequence, timestamp_ns, id, ledger, code, flags, user_data_128, \
             user_data_64, user_data_32, result) FROM STDIN BINARY",
        )?;
        let mut writer = BinaryCopyInWriter::new(sink, &ACCOUNT_EVENT_TYPES);
        for e in &batch.account_events {
            writer.write(&[
                &big(e.sequence.get(), "sequence")?,
                &big(e.timestamp_ns.get(), "timestamp_ns")?,
                &Numeric(e.id.get()),
                &i64::from(e.ledger.get()),
                &i32::from(e.code.get()),
                &i32::from(e.flags.get()),
                &Numeric(e.user_data_128.get()),
                &Numeric(e.user_data_64.get().into()),
                &i64::from(e.user_data_32.get()),
                &i32::from(e.result.get()),
            ])?;
        }
        writer.finish()?;
    }
    if !batch.transfers.is_empty() {
        let sink = tx.copy_in(
            "COPY transfers (sequence, timestamp_ns, id, debit_account_id, credit_account_id, amount, \
             pending_id, user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags, result) \
             FROM STDIN BINARY",
        )?;
        let mut writer = BinaryCopyInWriter::new(sink, &TRANSFER_TYPES);
        for e in &batch.transfers {
            writer.write(&[
                &big(e.sequence.get(), "sequence")?,
                &big(e.timestamp_ns.get(), "timestamp_ns")?,
                &Numeric(e.id.get()),
                &Numeric(e.debit_account_id.get()),
                &Numeric(e.credit_account_id.get()),
                &Numeric(e.amount.get().into()),
                &Numeric(e.pending_id.get()),
                &Numeric(e.user_data_128.get()),
                &Numeric(e.user_data_64.get().into()),
                &i64::from(e.user_data_32.get()),
                &i64::from(e.timeout.get()),
                &i64::from(e.ledger.get()),
                &i32::from(e.code.get()),
                &i32::from(e.flags.get()),
                &i32::from(e.result.get()),
            ])?;
        }
        writer.finish()?;
    }
    if !batch.expirations.is_empty() {
        let sink = tx.copy_in(
            "COPY expirations (sequence, timestamp_ns, pending_id, debit_account_id, credit_account_id, \
             amount, ledger, code, flags) FROM STDIN BINARY",
        )?;
        let mut writer = BinaryCopyInWriter::new(sink, &EXPIRATION_TYPES);
        for e in &batch.expirations {
            writer.write(&[
                &big(e.sequence.get(), "sequence")?,
                &big(e.timestamp_ns.get(), "timestamp_ns")?,
                &Numeric(e.pending_id.get()),
                &Numeric(e.debit_account_id.get()),
                &Numeric(e.credit_account_id.get()),
                &Numeric(e.amount.get().into()),
                &i64::from(e.ledger.get()),
                &i32::from(e.code.get()),
                &i32::from(e.flags.get()),
            ])?;
        }
        writer.finish()?;
    }
    if !batch.accounts.is_empty() {
        // A temporary table private to this connection, emptied at every commit.
        tx.batch_execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS accounts_batch (LIKE accounts) ON COMMIT DELETE ROWS",
        )?;
        let sink = tx.copy_in(&format!("COPY accounts_batch ({ACCOUNT_COLUMNS}) FROM STDIN BINARY"))?;
        let mut writer = BinaryCopyInWriter::new(sink, &ACCOUNT_TYPES);
        for row in &batch.accounts {
            let a = &row.account;
            writer.write(&[
                &Numeric(row.id),
                &i64::from(a.ledger),
                &i32::from(a.code),
                &i32::from(a.flags),
                &Numeric(a.debits_pending.into()),
                &Numeric(a.debits_posted.into()),
                &Numeric(a.credits_pending.into()),
                &Numeric(a.credits_posted.into()),
                &Numeric(row.user_data.user_data_128),
                &Numeric(row.user_data.user_data_64.into()),
                &i64::from(row.user_data.user_data_32),
                &big(a.timestamp_ns, "timestamp_ns")?,
                &big(row.updated_sequence, "updated_sequence")?,
            ])?;
        }
        writer.finish()?;
        tx.execute(
            &format!(
                "INSERT INTO accounts ({ACCOUNT_COLUMNS}) SELECT {ACCOUNT_COLUMNS} FROM accounts_batch
                 ON CONFLICT (id) DO UPDATE SET
                   flags = EXCLUDED.flags,
                   debits_pending = EXCLUDED.debits_pending,
                   debits_posted = EXCLUDED.debits_posted,
                   credits_pending = EXCLUDED.credits_pending,
                   credits_posted = EXCLUDED.credits_posted,
                   updated_sequence = EXCLUDED.updated_sequence"
            ),
            &[],
        )?;
    }
    Ok(())
}

impl Database for PostgresDatabase {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn schema_version(&mut self) -> Result<i64, SqlError> {
        let exists: bool =
            self.client.query_one("SELECT to_regclass('ledgerbus_schema') IS NOT NULL", &[])?.get(0);
        if !exists {
            return Ok(0);
        }
        let version: Option<i32> =
            self.client.query_one("SELECT max(version) FROM ledgerbus_schema", &[])?.get(0);
        Ok(version.map_or(0, i64::from))
    }

    fn migrate(&mut self) -> Result<(), SqlError> {
        self.client.batch_execute(
            "CREATE TABLE IF NOT EXISTS ledgerbus_schema (
                version INTEGER PRIMARY KEY,
                migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )?;
        let mut version = self.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(SqlError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
        }
        for step in schema::migrations(Dialect::Postgres).into_iter().skip(version as usize) {
            let mut tx = self.client.transaction()?;
            // Two consumers starting at once: the second waits here, then finds the
            // version row and fails its insert instead of creating tables twice.
            tx.batch_execute("LOCK TABLE ledgerbus_schema IN EXCLUSIVE MODE")?;
            for statement in step {
                tx.batch_execute(&statement)?;
            }
            version += 1;
            tx.execute("INSERT INTO ledgerbus_schema (version) VALUES ($1)", &[&(version as i32)])?;
            tx.commit()?;
            tracing::info!(version, "SQL schema migrated");
        }
        let mut tx = self.client.transaction()?;
        let insert =
            tx.prepare("INSERT INTO results (result, name) VALUES ($1, $2) ON CONFLICT (result) DO NOTHING")?;
        for (code, name) in schema::results_rows() {
            tx.execute(&insert, &[&code, &name])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn position(&mut self) -> Result<Option<(String, Position)>, SqlError> {
        let row = self.client.query_opt(
            "SELECT consumer_id, session, sequence, state_hash, timestamp_ns FROM ledgerbus_position",
            &[],
        )?;
        row.map(|row| {
            let position = position_of(row.get(1), row.get(2), row.get(3), row.get(4))?;
            Ok((row.get::<_, String>(0), position))
        })
        .transpose()
    }

    fn create_position(&mut self, consumer: &str) -> Result<(), SqlError> {
        self.client.execute(
            "INSERT INTO ledgerbus_position (consumer_id, session, sequence, state_hash, timestamp_ns)
             VALUES ($1, '0000000000000000', 0, '0000000000000000', 0)",
            &[&consumer],
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
        let mut tx = self.client.transaction()?;
        // The position first: a second writer blocks here on the row lock, then finds
        // the position moved and writes nothing.
        let moved = tx.execute(
            "UPDATE ledgerbus_position
             SET session = $1, sequence = $2, state_hash = $3, timestamp_ns = $4, updated_at = now()
             WHERE consumer_id = $5 AND session = $6 AND sequence = $7",
            &[
                &format!("{:016x}", to.session),
                &big(to.sequence, "sequence")?,
                &format!("{:016x}", to.state_hash),
                &big(to.timestamp_ns, "timestamp_ns")?,
                &consumer,
                &format!("{:016x}", from.session),
                &big(from.sequence, "sequence")?,
            ],
        )?;
        if moved != 1 {
            drop(tx);
            let found = self.position()?.map(|(_, p)| p.sequence);
            return Err(SqlError::Conflict { expected: from.sequence, found });
        }
        write_rows(&mut tx, batch)?;
        tx.commit()?;
        Ok(())
    }

    fn events(&mut self, each: &mut dyn FnMut(RawEvent) -> Result<(), SqlError>) -> Result<(), SqlError> {
        use postgres::fallible_iterator::FallibleIterator;
        let params: [&(dyn ToSql + Sync); 0] = [];
        let mut rows = self.client.query_raw(&events_query(Dialect::Postgres), params)?;
        while let Some(row) = rows.next()? {
            let wide = |i: usize| -> Result<u128, SqlError> { Ok(row.try_get::<_, Numeric>(i)?.0) };
            each(RawEvent {
                kind: i64::from(row.try_get::<_, i32>(0)?),
                sequence: row.try_get(1)?,
                timestamp_ns: row.try_get(2)?,
                id: wide(3)?,
                debit: wide(4)?,
                credit: wide(5)?,
                amount: wide(6)?,
                pending_id: wide(7)?,
                user_data_128: wide(8)?,
                user_data_64: wide(9)?,
                user_data_32: row.try_get(10)?,
                timeout: row.try_get(11)?,
                ledger: row.try_get(12)?,
                code: i64::from(row.try_get::<_, i32>(13)?),
                flags: i64::from(row.try_get::<_, i32>(14)?),
                result: i64::from(row.try_get::<_, i32>(15)?),
            })?;
        }
        Ok(())
    }

    fn accounts(&mut self, each: &mut dyn FnMut(RawAccount) -> Result<(), SqlError>) -> Result<(), SqlError> {
        use postgres::fallible_iterator::FallibleIterator;
        let params: [&(dyn ToSql + Sync); 0] = [];
        let mut rows = self.client.query_raw(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts"), params)?;
        while let Some(row) = rows.next()? {
            let wide = |i: usize| -> Result<u128, SqlError> { Ok(row.try_get::<_, Numeric>(i)?.0) };
            each(RawAccount {
                id: wide(0)?,
                ledger: row.try_get(1)?,
                code: i64::from(row.try_get::<_, i32>(2)?),
                flags: i64::from(row.try_get::<_, i32>(3)?),
                debits_pending: wide(4)?,
                debits_posted: wide(5)?,
                credits_pending: wide(6)?,
                credits_posted: wide(7)?,
                user_data_128: wide(8)?,
                user_data_64: wide(9)?,
                user_data_32: row.try_get(10)?,
                timestamp_ns: row.try_get(11)?,
                updated_sequence: row.try_get(12)?,
            })?;
        }
        Ok(())
    }

    fn trial_balance(&mut self) -> Result<Vec<(i64, bool)>, SqlError> {
        let rows = self.client.query("SELECT ledger, balanced FROM trial_balance ORDER BY ledger", &[])?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn move_aside(&mut self, session: u64) -> Result<String, SqlError> {
        let base = format!("ledgerbus_previous_{session:016x}");
        let mut tx = self.client.transaction()?;
        let mut name = base.clone();
        for n in 1.. {
            let taken: bool = tx
                .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&name])?
                .get(0);
            if !taken {
                break;
            }
            name = format!("{base}_{n}");
        }
        tx.batch_execute(&format!("CREATE SCHEMA {name}"))?;
        for view in VIEWS {
            tx.batch_execute(&format!("ALTER VIEW IF EXISTS {view} SET SCHEMA {name}"))?;
        }
        for table in TABLES.iter().chain(&["ledgerbus_schema"]) {
            tx.batch_execute(&format!("ALTER TABLE IF EXISTS {table} SET SCHEMA {name}"))?;
        }
        tx.commit()?;
        Ok(format!("schema {name}"))
    }

    fn reconnect(&mut self) -> Result<(), SqlError> {
        self.client = open(&self.url)?;
        Ok(())
    }

    fn execute(&mut self, statements: &str) -> Result<(), SqlError> {
        Ok(self.client.batch_execute(statements)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_file_is_taken_out_of_the_url() {
        let (clean, ca) = split_root_cert(
            "postgres://u:p@db/ledger?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        );
        assert_eq!(clean, "postgres://u:p@db/ledger?sslmode=require&application_name=x");
        assert_eq!(ca, Some(PathBuf::from("/etc/ca.pem")));
        let (clean, ca) = split_root_cert("host=db sslrootcert=/etc/ca.pem dbname=ledger");
        assert_eq!((clean.as_str(), ca), ("host=db dbname=ledger", Some(PathBuf::from("/etc/ca.pem"))));
        assert_eq!(split_root_cert("postgres://db/ledger"), ("postgres://db/ledger".to_string(), None));
        assert_eq!(split_root_cert("postgres://db/l?sslrootcert=c").0, "postgres://db/l");
    }
}
