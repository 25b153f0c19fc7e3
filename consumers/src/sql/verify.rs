//! The projection checked from SQL alone: every event row is turned back into its
//! exact frame and applied to an empty ledger, which gives the rolling log hash (the
//! sequencer's `state_hash` at the same position) and every account as the log says
//! it must be; the `accounts` table, the stored position and the trial balance view
//! are then compared with that.

use hashbrown::HashMap;
use ledgerbus_ledger::{Ledger, Replica, TransferIds};

use super::rows::{AccountRow, EVENT_FRAME_MAX};
use super::{Database, Position, SqlError};

/// Rebuilds the ledger from the event rows, in log order. `progress` hears the
/// number of events read now and then.
pub fn replay_rows(db: &mut dyn Database, progress: &mut dyn FnMut(u64)) -> Result<Replica, SqlError> {
    let mut replica = Replica::new(Ledger::new());
    let mut frame = [0u8; EVENT_FRAME_MAX];
    let mut events = 0u64;
    db.events(&mut |raw| {
        let row = raw.into_row()?;
        let size = row.encode(&mut frame);
        replica
            .apply(&frame[..size], TransferIds::Skip)
            .map_err(|error| SqlError::Drift(format!("event row {}: {error}", row.sequence())))?;
        events += 1;
        if events % 65_536 == 0 {
            progress(events);
        }
        Ok(())
    })?;
    progress(events);
    Ok(replica)
}

/// Refuses a replica rebuilt from rows that does not end where the position says.
pub(super) fn check_position(replica: &Replica, position: &Position) -> Result<(), SqlError> {
    let last = replica.next_sequence() - 1;
    if last != position.sequence || replica.log_hash() != position.state_hash {
        return Err(SqlError::Drift(format!(
            "the event rows end at {last} with hash {:016x}, the position says {} with {:016x}",
            replica.log_hash(),
            position.sequence,
            position.state_hash
        )));
    }
    Ok(())
}

/// What `ledgerbus sql verify` found.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The stored position, if any.
    pub position: Option<Position>,
    /// The last event the rows hold.
    pub last_sequence: u64,
    /// The rolling log hash recomputed from the rows.
    pub state_hash: u64,
    /// Rows in `accounts`.
    pub accounts: u64,
    /// Ledgers in the trial balance.
    pub ledgers: usize,
    /// Everything that does not agree (empty: the projection is sound).
    pub problems: Vec<String>,
}

/// At most this many account differences are listed (the count is always given).
const LISTED_MAX: usize = 20;

/// Recomputes the state hash and the accounts from the event rows and compares.
pub fn verify(db: &mut dyn Database, progress: &mut dyn FnMut(u64)) -> Result<Verification, SqlError> {
    if db.schema_version()? == 0 {
        return Err(SqlError::Drift(
            "the database holds no ledgerbus projection (no ledgerbus_schema)".into(),
        ));
    }
    let position = db.position()?.map(|(_, position)| position);
    let replica = replay_rows(db, progress)?;
    let mut problems = Vec::new();
    let last_sequence = replica.next_sequence() - 1;
    match position {
        Some(p) => problems.extend(check_position(&replica, &p).err().map(|drift| drift.to_string())),
        None => problems.push("there is no position row".into()),
    }

    let mut rows: HashMap<u128, AccountRow> = HashMap::new();
    let mut row_count = 0u64;
    db.accounts(&mut |raw| {
        let row = raw.into_row()?;
        row_count += 1;
        rows.insert(row.id, row);
        Ok(())
    })?;
    let mut differences = 0usize;
    let mut differ = |problem: String, problems: &mut Vec<String>| {
        differences += 1;
        if differences <= LISTED_MAX {
            problems.push(problem);
        }
    };
    let ledger = replica.ledger();
    for (id, account) in ledger.accounts_sorted() {
        match rows.remove(&id) {
            None => differ(format!("account {id} is missing from accounts"), &mut problems),
            Some(row) if row.account != account || row.user_data != ledger.account_user_data(id) => differ(
                format!("account {id}: the table holds {:?}, the events give {account:?}", row.account),
                &mut problems,
            ),
            Some(_) => {}
        }
    }
    for id in rows.keys() {
        differ(format!("account {id} is in accounts but no event created it"), &mut problems);
    }
    if differences > LISTED_MAX {
        problems.push(format!("… {differences} account differences in all"));
    }
    let balance = db.trial_balance()?;
    for (ledger, balanced) in &balance {
        if !balanced {
            problems.push(format!("ledger {ledger} does not balance in trial_balance"));
        }
    }
    Ok(Verification {
        position,
        last_sequence,
        state_hash: replica.log_hash(),
        accounts: row_count,
        ledgers: balance.len(),
        problems,
    })
}
