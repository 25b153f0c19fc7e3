//! Ledger snapshots: the whole state in one file, so a restart replays only the
//! journal after it. Little-endian records, sorted by id so the same state always
//! gives the same bytes, and a CRC32 over everything at the end.

use std::io::{self, Read, Write};

use crate::account::{Account, PendingState, PendingTransfer, UserData};
use crate::ledger::Ledger;

/// `LBSNAP02`: accounts with pending totals and user data, then pending transfers.
const MAGIC: [u8; 8] = *b"LBSNAP02";
/// `LBSNAP01`, written before schema version 2 (no pending totals, no user data, no
/// pending transfers): still read.
const MAGIC_V1: [u8; 8] = *b"LBSNAP01";

/// Writes `ledger` with the caller's `header` words (position, hash, …) to `out`.
pub fn write(ledger: &Ledger, header: &[u64; 4], out: &mut impl Write) -> io::Result<()> {
    let mut out = CrcWriter { inner: out, hasher: crc32fast::Hasher::new() };
    out.write_all(&MAGIC)?;
    for word in header {
        out.write_all(&word.to_le_bytes())?;
    }
    let accounts = ledger.accounts_sorted();
    out.write_all(&(accounts.len() as u64).to_le_bytes())?;
    for (id, account) in &accounts {
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&account.debits_posted.to_le_bytes())?;
        out.write_all(&account.credits_posted.to_le_bytes())?;
        out.write_all(&account.timestamp_ns.to_le_bytes())?;
        out.write_all(&account.ledger.to_le_bytes())?;
        out.write_all(&account.code.to_le_bytes())?;
        out.write_all(&account.flags.to_le_bytes())?;
        out.write_all(&account.debits_pending.to_le_bytes())?;
        out.write_all(&account.credits_pending.to_le_bytes())?;
        let user_data = ledger.account_user_data(*id);
        out.write_all(&user_data.user_data_128.to_le_bytes())?;
        out.write_all(&user_data.user_data_64.to_le_bytes())?;
        out.write_all(&user_data.user_data_32.to_le_bytes())?;
    }
    let transfers = ledger.transfer_fingerprints_sorted();
    out.write_all(&(transfers.len() as u64).to_le_bytes())?;
    for (id, fingerprint) in &transfers {
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&fingerprint.to_le_bytes())?;
    }
    let pendings = ledger.pendings_sorted();
    out.write_all(&(pendings.len() as u64).to_le_bytes())?;
    for (id, pending) in &pendings {
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&pending.debit.to_le_bytes())?;
        out.write_all(&pending.credit.to_le_bytes())?;
        out.write_all(&pending.amount.to_le_bytes())?;
        out.write_all(&pending.expires_at_ns.to_le_bytes())?;
        out.write_all(&pending.ledger.to_le_bytes())?;
        out.write_all(&pending.code.to_le_bytes())?;
        out.write_all(&pending.flags.to_le_bytes())?;
        out.write_all(&(pending.state as u16).to_le_bytes())?;
        out.write_all(&pending.user_data_128.to_le_bytes())?;
        out.write_all(&pending.user_data_64.to_le_bytes())?;
        out.write_all(&pending.user_data_32.to_le_bytes())?;
    }
    let crc = out.hasher.clone().finalize();
    out.inner.write_all(&crc.to_le_bytes())
}

/// Reads a snapshot written by [`write()`]: the ledger and the header words. A wrong
/// magic, a short file or a CRC mismatch is an `InvalidData` error.
pub fn read(input: &mut impl Read) -> io::Result<(Ledger, [u64; 4])> {
    let mut input = CrcReader { inner: input, hasher: crc32fast::Hasher::new() };
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    let v2 = magic == MAGIC;
    if !v2 && magic != MAGIC_V1 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a ledgerbus snapshot"));
    }
    let mut header = [0u64; 4];
    for word in &mut header {
        *word = read_u64(&mut input)?;
    }
    let account_count = read_u64(&mut input)?;
    let mut accounts = Vec::with_capacity(account_count.min(1 << 24) as usize);
    for _ in 0..account_count {
        let id = read_u128(&mut input)?;
        let mut account = Account {
            debits_posted: read_u64(&mut input)?,
            credits_posted: read_u64(&mut input)?,
            timestamp_ns: read_u64(&mut input)?,
            ledger: read_u32(&mut input)?,
            code: read_u16(&mut input)?,
            flags: read_u16(&mut input)?,
            ..Account::default()
        };
        let mut user_data = UserData::default();
        if v2 {
            account.debits_pending = read_u64(&mut input)?;
            account.credits_pending = read_u64(&mut input)?;
            user_data.user_data_128 = read_u128(&mut input)?;
            user_data.user_data_64 = read_u64(&mut input)?;
            user_data.user_data_32 = read_u32(&mut input)?;
        }
        accounts.push((id, account, user_data));
    }
    let transfer_count = read_u64(&mut input)?;
    let mut ledger = Ledger::with_capacity(accounts.len(), transfer_count.min(1 << 30) as usize);
    for (id, account, user_data) in accounts {
        ledger.restore_account(id, account);
        ledger.restore_account_user_data(id, user_data);
    }
    for _ in 0..transfer_count {
        let id = read_u128(&mut input)?;
        let fingerprint = read_u64(&mut input)?;
        ledger.restore_transfer(id, fingerprint);
    }
    let pending_count = if v2 { read_u64(&mut input)? } else { 0 };
    for _ in 0..pending_count {
        let id = read_u128(&mut input)?;
        let debit = read_u128(&mut input)?;
        let credit = read_u128(&mut input)?;
        let amount = read_u64(&mut input)?;
        let expires_at_ns = read_u64(&mut input)?;
        let ledger_code = read_u32(&mut input)?;
        let code = read_u16(&mut input)?;
        let flags = read_u16(&mut input)?;
        let state = PendingState::from_wire(read_u16(&mut input)?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "snapshot: unknown pending state"))?;
        let pending = PendingTransfer {
            debit,
            credit,
            amount,
            expires_at_ns,
            ledger: ledger_code,
            code,
            flags,
            state,
            user_data_128: read_u128(&mut input)?,
            user_data_64: read_u64(&mut input)?,
            user_data_32: read_u32(&mut input)?,
        };
        ledger.restore_pending(id, pending);
    }
    let computed = input.hasher.clone().finalize();
    let mut stored = [0u8; 4];
    input.inner.read_exact(&mut stored)?;
    if u32::from_le_bytes(stored) != computed {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot CRC mismatch"));
    }
    Ok((ledger, header))
}

struct CrcWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<'a, R: Read> {
    inner: &'a mut R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

fn read_u128(input: &mut impl Read) -> io::Result<u128> {
    let mut bytes = [0u8; 16];
    input.read_exact(&mut bytes)?;
    Ok(u128::from_le_bytes(bytes))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u16(input: &mut impl Read) -> io::Result<u16> {
    let mut bytes = [0u8; 2];
    input.read_exact(&mut bytes)?;
    Ok(u16::from_le_bytes(bytes))
}
