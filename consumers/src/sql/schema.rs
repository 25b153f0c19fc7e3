//! The projection's tables, indexes and views, in the two SQL dialects it speaks,
//! and the migrations that create them. The README's "SQL projection" section is the
//! user's description of the same schema; keep them together.
//!
//! Exact numbers: ids and `user_data_128` are 128-bit, amounts, balances and
//! `user_data_64` 64-bit unsigned. Postgres stores them as `NUMERIC(39,0)` and
//! `NUMERIC(20,0)` (exact, and `sum` over them is exact). SQLite's only integer is a
//! signed 64-bit one, so there they are decimal `TEXT`: exact and readable, summed
//! exactly by `decimal_sum` (registered by the consumer and built into the `sqlite3`
//! shell), ordered numerically by `(length(x), x)`.

use ledgerbus_codec::ResultCode;

/// The schema version this consumer writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Which SQL the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// Column type of a 128-bit unsigned integer.
    fn u128(self) -> &'static str {
        match self {
            Dialect::Postgres => "NUMERIC(39,0)",
            Dialect::Sqlite => "TEXT",
        }
    }

    /// Column type of a 64-bit unsigned integer.
    fn u64(self) -> &'static str {
        match self {
            Dialect::Postgres => "NUMERIC(20,0)",
            Dialect::Sqlite => "TEXT",
        }
    }

    /// Zero as a value of the wide columns.
    pub fn zero(self) -> &'static str {
        match self {
            Dialect::Postgres => "CAST(0 AS NUMERIC)",
            Dialect::Sqlite => "'0'",
        }
    }

    /// The exact sum of a wide column.
    fn sum(self, column: &str) -> String {
        match self {
            Dialect::Postgres => format!("sum({column})"),
            Dialect::Sqlite => format!("decimal_sum({column})"),
        }
    }

    /// The UTC day of a `timestamp_ns` column.
    fn day(self, column: &str) -> String {
        match self {
            Dialect::Postgres => {
                format!("CAST(to_timestamp({column} / 1000000000) AT TIME ZONE 'UTC' AS DATE)")
            }
            Dialect::Sqlite => format!("date({column} / 1000000000, 'unixepoch')"),
        }
    }

    /// The UTC hour of a `timestamp_ns` column.
    fn hour(self, column: &str) -> String {
        match self {
            Dialect::Postgres => {
                format!("date_trunc('hour', to_timestamp({column} / 1000000000) AT TIME ZONE 'UTC')")
            }
            Dialect::Sqlite => format!("strftime('%Y-%m-%d %H:00:00', {column} / 1000000000, 'unixepoch')"),
        }
    }

    /// The `sequence` primary key: in SQLite `INTEGER PRIMARY KEY` makes it the
    /// rowid itself (one B-tree instead of a table and an index).
    fn sequence_key(self) -> &'static str {
        match self {
            Dialect::Postgres => "BIGINT PRIMARY KEY",
            Dialect::Sqlite => "INTEGER PRIMARY KEY",
        }
    }

    /// After a table keyed by something else than a sequence: in SQLite, stored in
    /// the key's order (one B-tree instead of a table and an index).
    fn clustered(self) -> &'static str {
        match self {
            // Every batch rewrites the accounts it touched: room on each page lets
            // Postgres update them in place (HOT), without new index entries.
            Dialect::Postgres => " WITH (fillfactor = 70)",
            Dialect::Sqlite => " WITHOUT ROWID",
        }
    }

    /// Type of a "when it happened" column with a default of now.
    fn now_column(self) -> &'static str {
        match self {
            Dialect::Postgres => "TIMESTAMPTZ NOT NULL DEFAULT now()",
            Dialect::Sqlite => "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP",
        }
    }
}

/// Every table of the projection, in the order to move or drop them.
pub const TABLES: [&str; 6] =
    ["accounts", "account_events", "transfers", "expirations", "results", "ledgerbus_position"];

/// Every view of the projection.
pub const VIEWS: [&str; 6] = [
    "transfer_volume_daily",
    "transfer_volume_hourly",
    "account_outflow_hourly",
    "trial_balance",
    "pending_transfers",
    "transfer_results_daily",
];

/// Transfers that moved posted money: applied, neither a reservation (`pending`, 2)
/// nor a release (`void_pending`, 8). Posts count with the amount they posted.
const MOVED_MONEY: &str = "result = 0 AND (flags & 10) = 0";

/// The statements that create schema version 1.
pub fn version_1(d: Dialect) -> Vec<String> {
    let (wide, u64) = (d.u128(), d.u64());
    let zero = d.zero();
    let (sequence_key, clustered) = (d.sequence_key(), d.clustered());
    let mut statements = vec![
        format!(
            "CREATE TABLE ledgerbus_position (
                consumer_id TEXT PRIMARY KEY,
                session TEXT NOT NULL,
                sequence BIGINT NOT NULL,
                state_hash TEXT NOT NULL,
                timestamp_ns BIGINT NOT NULL,
                updated_at {now})",
            now = d.now_column()
        ),
        "CREATE TABLE results (result INTEGER PRIMARY KEY, name TEXT NOT NULL)".to_string(),
        format!(
            "CREATE TABLE accounts (
                id {wide} PRIMARY KEY,
                ledger BIGINT NOT NULL,
                code INTEGER NOT NULL,
                flags INTEGER NOT NULL,
                debits_pending {u64} NOT NULL,
                debits_posted {u64} NOT NULL,
                credits_pending {u64} NOT NULL,
                credits_posted {u64} NOT NULL,
                user_data_128 {wide} NOT NULL,
                user_data_64 {u64} NOT NULL,
                user_data_32 BIGINT NOT NULL,
                timestamp_ns BIGINT NOT NULL,
                updated_sequence BIGINT NOT NULL){clustered}"
        ),
        "CREATE INDEX accounts_ledger_code ON accounts (ledger, code)".to_string(),
        format!(
            "CREATE TABLE account_events (
                sequence {sequence_key},
                timestamp_ns BIGINT NOT NULL,
                id {wide} NOT NULL,
                ledger BIGINT NOT NULL,
                code INTEGER NOT NULL,
                flags INTEGER NOT NULL,
                user_data_128 {wide} NOT NULL,
                user_data_64 {u64} NOT NULL,
                user_data_32 BIGINT NOT NULL,
                result INTEGER NOT NULL)"
        ),
        format!(
            "CREATE TABLE transfers (
                sequence {sequence_key},
                timestamp_ns BIGINT NOT NULL,
                id {wide} NOT NULL,
                debit_account_id {wide} NOT NULL,
                credit_account_id {wide} NOT NULL,
                amount {u64} NOT NULL,
                pending_id {wide} NOT NULL,
                user_data_128 {wide} NOT NULL,
                user_data_64 {u64} NOT NULL,
                user_data_32 BIGINT NOT NULL,
                timeout BIGINT NOT NULL,
                ledger BIGINT NOT NULL,
                code INTEGER NOT NULL,
                flags INTEGER NOT NULL,
                result INTEGER NOT NULL)"
        ),
        "CREATE INDEX transfers_id ON transfers (id)".to_string(),
        "CREATE INDEX transfers_debit_time ON transfers (debit_account_id, timestamp_ns)".to_string(),
        "CREATE INDEX transfers_credit_time ON transfers (credit_account_id, timestamp_ns)".to_string(),
        "CREATE INDEX transfers_code_time ON transfers (code, timestamp_ns)".to_string(),
        format!("CREATE INDEX transfers_pending ON transfers (pending_id) WHERE pending_id <> {zero}"),
        format!(
            "CREATE TABLE expirations (
                sequence {sequence_key},
                timestamp_ns BIGINT NOT NULL,
                pending_id {wide} NOT NULL,
                debit_account_id {wide} NOT NULL,
                credit_account_id {wide} NOT NULL,
                amount {u64} NOT NULL,
                ledger BIGINT NOT NULL,
                code INTEGER NOT NULL,
                flags INTEGER NOT NULL)"
        ),
        "CREATE INDEX expirations_pending ON expirations (pending_id)".to_string(),
    ];
    statements.extend(views(d));
    statements
}

/// The ready-made views.
fn views(d: Dialect) -> Vec<String> {
    let volume = |name: &str, period: &str, bucket: String| {
        format!(
            "CREATE VIEW {name} AS
             SELECT ledger, code, {bucket} AS {period}, count(*) AS transfers, {sum} AS volume
             FROM transfers WHERE {MOVED_MONEY}
             GROUP BY ledger, code, {bucket}",
            sum = d.sum("amount")
        )
    };
    vec![
        volume("transfer_volume_daily", "day", d.day("timestamp_ns")),
        volume("transfer_volume_hourly", "hour", d.hour("timestamp_ns")),
        format!(
            "CREATE VIEW account_outflow_hourly AS
             SELECT debit_account_id AS account_id, ledger, {hour} AS hour,
                    count(*) AS transfers, {sum} AS outflow
             FROM transfers WHERE {MOVED_MONEY}
             GROUP BY debit_account_id, ledger, {hour}",
            hour = d.hour("timestamp_ns"),
            sum = d.sum("amount")
        ),
        format!(
            "CREATE VIEW trial_balance AS
             SELECT ledger, count(*) AS accounts,
                    {dp} AS debits_posted, {cp} AS credits_posted,
                    {dq} AS debits_pending, {cq} AS credits_pending,
                    ({dp} = {cp} AND {dq} = {cq}) AS balanced
             FROM accounts GROUP BY ledger",
            dp = d.sum("debits_posted"),
            cp = d.sum("credits_posted"),
            dq = d.sum("debits_pending"),
            cq = d.sum("credits_pending"),
        ),
        format!(
            "CREATE VIEW pending_transfers AS
             SELECT t.id, t.sequence, t.timestamp_ns, t.debit_account_id, t.credit_account_id,
                    t.amount, t.ledger, t.code, t.timeout,
                    CASE WHEN t.timeout = 0 THEN NULL
                         ELSE t.timestamp_ns + t.timeout * 1000000000 END AS expires_at_ns
             FROM transfers t
             WHERE t.result = 0 AND (t.flags & 2) <> 0
               AND NOT EXISTS (SELECT 1 FROM transfers r
                               WHERE r.pending_id = t.id AND r.result = 0 AND (r.flags & 12) <> 0)
               AND NOT EXISTS (SELECT 1 FROM expirations e WHERE e.pending_id = t.id)"
        ),
        format!(
            "CREATE VIEW transfer_results_daily AS
             SELECT {day} AS day, r.name AS result, count(*) AS transfers
             FROM transfers t JOIN results r ON r.result = t.result
             GROUP BY {day}, r.name",
            day = d.day("t.timestamp_ns")
        ),
    ]
}

/// Statements that (re)fill the `results` table with every code this version knows,
/// run at every start so that codes added by a newer version appear.
pub fn results_rows() -> Vec<(i32, String)> {
    ResultCode::ALL
        .iter()
        .map(|(code, _)| (i32::from(code.to_wire()), code.snake_name().to_string()))
        .collect()
}

/// The migrations in order: entry `n` takes a database from version `n` to `n + 1`.
pub fn migrations(d: Dialect) -> Vec<Vec<String>> {
    vec![version_1(d)]
}

const _: () = assert!(SCHEMA_VERSION == 1, "add the new version's statements to `migrations`");
