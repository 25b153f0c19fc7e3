//! Blocking clients of the sequencer's gateway port, for tests, benchmarks and
//! tools: the frame reader and an authenticated connection that sends commands and
//! reads results. The gateway has its own asynchronous link.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ledgerbus_codec::messages::{Authenticate, Challenge, NotLeader, Welcome};
use ledgerbus_codec::{decode, encode, Message, MessageHeader, MESSAGE_HEADER_SIZE};

use crate::auth;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one whole frame into `buf` (header + block) and returns its length.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.resize(MESSAGE_HEADER_SIZE, 0);
    reader.read_exact(&mut buf[..MESSAGE_HEADER_SIZE])?;
    let size = match MessageHeader::frame_size(buf) {
        Ok(size) => size,
        Err(ledgerbus_codec::DecodeError::Truncated { needed, .. }) => needed,
        Err(error) => return Err(invalid(error.to_string())),
    };
    buf.resize(size, 0);
    reader.read_exact(&mut buf[MESSAGE_HEADER_SIZE..size])?;
    Ok(size)
}

/// The error of a group member that does not lead: kind `ConnectionRefused`, and
/// the leader's replica id (0: none known) in [`leader_hint`].
pub fn not_leader(leader: u32) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, NotLeaderError { leader })
}

/// Why a group member refused to take commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this sequencer group member does not lead (leader: replica {leader}, 0 = election running)")]
pub struct NotLeaderError {
    /// The leader's replica id, or 0.
    pub leader: u32,
}

/// The leader a refusal named, if `error` is one.
pub fn leader_hint(error: &io::Error) -> Option<u32> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<NotLeaderError>()).map(|e| e.leader)
}

/// An authenticated connection to the sequencer's gateway port.
pub struct SequencerClient {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    /// The sequencer's session.
    pub session_id: u64,
    /// The sequence of the next event at connect time.
    pub next_sequence: u64,
    buf: Vec<u8>,
}

impl SequencerClient {
    /// Connects and answers the challenge with `secret`.
    pub fn connect(address: SocketAddr, secret: &[u8], gateway_id: u32) -> io::Result<SequencerClient> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone()?);
        let mut writer = BufWriter::with_capacity(1 << 20, stream);
        let mut buf = Vec::with_capacity(256);
        read_frame(&mut reader, &mut buf)?;
        let (challenge, _) =
            decode::<Challenge>(&buf).map_err(|e| invalid(format!("expected a challenge: {e}")))?;
        let answer = Authenticate {
            gateway_id: gateway_id.into(),
            reserved: [0; 4],
            mac: auth::answer(secret, &challenge.nonce),
        };
        let mut bytes = [0u8; Authenticate::FRAME_SIZE];
        encode(&answer, &mut bytes).expect("sized");
        writer.write_all(&bytes)?;
        writer.flush()?;
        read_frame(&mut reader, &mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "sequencer closed the connection: wrong secret?",
                )
            } else {
                e
            }
        })?;
        if let Ok((refusal, _)) = decode::<NotLeader>(&buf) {
            return Err(not_leader(refusal.leader_replica_id.get()));
        }
        let (welcome, _) = decode::<Welcome>(&buf).map_err(|e| invalid(format!("expected welcome: {e}")))?;
        Ok(SequencerClient {
            session_id: welcome.session_id.get(),
            next_sequence: welcome.next_sequence.get(),
            reader,
            writer,
            buf,
        })
    }

    /// Connects to whichever of a group's members (`addresses`, in replica-id order)
    /// leads, following their hints; gives up after `patience`. Returns the client
    /// and the leader's replica id.
    pub fn connect_leader(
        addresses: &[SocketAddr],
        secret: &[u8],
        gateway_id: u32,
        patience: Duration,
    ) -> io::Result<(SequencerClient, u32)> {
        let deadline = std::time::Instant::now() + patience;
        let mut next = 0usize;
        loop {
            match SequencerClient::connect(addresses[next], secret, gateway_id) {
                Ok(client) => return Ok((client, next as u32 + 1)),
                Err(error) if std::time::Instant::now() >= deadline => return Err(error),
                Err(error) => {
                    next = match leader_hint(&error) {
                        Some(leader) if leader >= 1 && leader as usize <= addresses.len() => {
                            leader as usize - 1
                        }
                        _ => (next + 1) % addresses.len(),
                    };
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Queues a command (sent on `flush`).
    pub fn send<M: Message>(&mut self, command: &M) -> io::Result<()> {
        let mut bytes = [0u8; 256];
        let size = encode(command, &mut bytes).map_err(|e| invalid(e.to_string()))?;
        self.writer.write_all(&bytes[..size])
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Reads the next reply frame.
    pub fn read_reply(&mut self) -> io::Result<&[u8]> {
        let size = read_frame(&mut self.reader, &mut self.buf)?;
        Ok(&self.buf[..size])
    }
}
