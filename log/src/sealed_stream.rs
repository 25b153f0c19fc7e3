//! The bulk replay connection after its handshake: everything both ways travels in
//! AES-256-GCM records (`ledgerbus_transport::security::RecordSealer`), so the
//! journal is no more readable on the wire than it is on the bus. These adapters
//! let the replay code keep reading and writing frames with `Read` and `Write`.

use std::io::{self, Read, Write};

use ledgerbus_transport::security::{RecordOpener, RecordSealer, RECORD_PLAIN_MAX};

/// Buffers what is written and sends it as sealed records of up to
/// [`RECORD_PLAIN_MAX`] bytes; `flush` seals what is buffered.
pub struct SealedWriter<W: Write> {
    inner: W,
    sealer: RecordSealer,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

impl<W: Write> SealedWriter<W> {
    /// Seals what is written to `inner` with `sealer`.
    pub fn new(inner: W, sealer: RecordSealer) -> SealedWriter<W> {
        SealedWriter {
            inner,
            sealer,
            plain: Vec::with_capacity(RECORD_PLAIN_MAX),
            sealed: Vec::with_capacity(RECORD_PLAIN_MAX + 64),
        }
    }

    fn seal_buffered(&mut self) -> io::Result<()> {
        if self.plain.is_empty() {
            return Ok(());
        }
        self.sealed.clear();
        self.sealer.seal(&self.plain, &mut self.sealed);
        self.plain.clear();
        self.inner.write_all(&self.sealed)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = RECORD_PLAIN_MAX - self.plain.len();
        let taken = bytes.len().min(room);
        self.plain.extend_from_slice(&bytes[..taken]);
        if self.plain.len() == RECORD_PLAIN_MAX {
            self.seal_buffered()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seal_buffered()?;
        self.inner.flush()
    }
}

/// Reads sealed records from `inner` and yields their plaintext. A record that does
/// not open (forged, altered, dropped, reordered) is an `InvalidData` error; the end
/// of the stream is an end only between records.
pub struct SealedReader<R: Read> {
    inner: R,
    opener: RecordOpener,
    record: Vec<u8>,
    /// The plaintext of the current record is `record[start..end]`.
    start: usize,
    end: usize,
}

impl<R: Read> SealedReader<R> {
    /// Opens what `inner` carries with `opener`.
    pub fn new(inner: R, opener: RecordOpener) -> SealedReader<R> {
        SealedReader { inner, opener, record: Vec::with_capacity(RECORD_PLAIN_MAX + 64), start: 0, end: 0 }
    }

    /// Reads and opens the next record; false at a clean end of stream.
    fn next_record(&mut self) -> io::Result<bool> {
        let mut length = [0u8; 4];
        match self.inner.read(&mut length[..1])? {
            0 => return Ok(false),
            _ => self.inner.read_exact(&mut length[1..])?,
        }
        let invalid =
            |e: ledgerbus_transport::security::OpenError| io::Error::new(io::ErrorKind::InvalidData, e);
        let body = self.opener.body_length(length).map_err(invalid)?;
        self.record.resize(body, 0);
        self.inner.read_exact(&mut self.record)?;
        let plain = self.opener.open(length, &mut self.record).map_err(invalid)?.len();
        (self.start, self.end) = (0, plain);
        Ok(true)
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.start == self.end {
            if !self.next_record()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.record[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_transport::{BusKey, RecordDirection};

    #[test]
    fn bytes_written_come_back_read_and_tampering_is_an_error() {
        let key = BusKey::from_bytes([1; 32]).replay_key();
        let challenge = [2u8; 32];
        let mut writer =
            SealedWriter::new(Vec::new(), key.record_sealer(&challenge, RecordDirection::ToClient));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(7_000) {
            writer.write_all(chunk).unwrap();
        }
        writer.flush().unwrap();
        let wire = writer.inner.clone();
        assert!(
            !wire.windows(64).any(|w| data.windows(64).next() == Some(w)),
            "the plaintext is not on the wire"
        );
        let mut reader =
            SealedReader::new(&wire[..], key.record_opener(&challenge, RecordDirection::ToClient));
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        let mut tampered = wire.clone();
        tampered[100] ^= 1;
        let mut reader =
            SealedReader::new(&tampered[..], key.record_opener(&challenge, RecordDirection::ToClient));
        assert_eq!(reader.read_to_end(&mut Vec::new()).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let cut = &wire[..wire.len() - 3];
        let mut reader = SealedReader::new(cut, key.record_opener(&challenge, RecordDirection::ToClient));
        assert!(reader.read_to_end(&mut Vec::new()).is_err(), "a cut record is not a clean end");
    }
}
