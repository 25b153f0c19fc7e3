//! Non-blocking reading and writing of SBE frames on the gateway's TCP connections.
//!
//! Every hand-off between tasks costs a wake-up (tens of microseconds in a VM), so
//! the request path has none it can avoid: whoever has bytes to send writes them to
//! the socket at once, under the lock that orders them ([`Outgoing::send`]), and only
//! what the socket does not take is left for a flusher that waits for writability.
//! Reading takes whatever the socket has ([`Incoming::fill`]) and hands over the
//! whole frames in it, many per wake-up.

use std::io;

use bytes::{Buf, BytesMut};
use ledgerbus_codec::{DecodeError, MessageHeader};
use tokio::net::{TcpStream, UnixStream};

/// A connection of the TCP API, read and written without blocking: a TCP socket, or
/// the plaintext end of a TLS session whose encryption runs on a task of its own
/// ([`crate::tls`]), so that the code on the request path is the same either way.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A TLS session, bridged through a socket pair.
    Bridged(UnixStream),
}

impl Stream {
    /// Reads what is there now (`WouldBlock` when nothing is).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Bridged(s) => s.try_read(buf),
        }
    }

    /// Writes what fits now (`WouldBlock` when nothing does).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Bridged(s) => s.try_write(buf),
        }
    }

    /// Waits until a read may make progress.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Bridged(s) => s.readable().await,
        }
    }

    /// Waits until a write may make progress.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            Stream::Bridged(s) => s.writable().await,
        }
    }

    /// Sends FIN (TLS: close_notify, by the bridge) after what was written.
    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
            Stream::Bridged(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
        };
    }
}

/// Bytes on their way to a socket, in order: written directly while the socket keeps
/// up, queued behind earlier bytes when it does not.
#[derive(Debug, Default)]
pub struct Outgoing {
    backlog: BytesMut,
}

impl Outgoing {
    /// Sends `bytes` after anything queued before them. Returns `true` when bytes are
    /// left queued, so that somebody must [`drain`] once the socket is writable.
    pub fn send(&mut self, stream: &Stream, bytes: &[u8]) -> io::Result<bool> {
        if !self.backlog.is_empty() {
            self.backlog.extend_from_slice(bytes);
            return Ok(true);
        }
        let mut written = 0;
        while written < bytes.len() {
            match stream.try_write(&bytes[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.backlog.extend_from_slice(&bytes[written..]);
        Ok(!self.backlog.is_empty())
    }

    /// Queues `bytes` without writing; one [`flush`](Self::flush) then writes many
    /// queued pieces with one system call.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.backlog.extend_from_slice(bytes);
    }

    /// Writes what the socket takes now. Returns `true` when nothing is left.
    pub fn flush(&mut self, stream: &Stream) -> io::Result<bool> {
        while !self.backlog.is_empty() {
            match stream.try_write(&self.backlog) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.backlog.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Bytes waiting for the socket.
    pub fn queued(&self) -> usize {
        self.backlog.len()
    }

    /// Forgets what was queued (the connection is gone).
    pub fn clear(&mut self) {
        self.backlog.clear();
    }
}

/// Waits for writability and calls `flush` (which locks whatever owns the
/// [`Outgoing`] and calls [`Outgoing::flush`]) until the backlog is gone.
pub async fn drain(stream: &Stream, mut flush: impl FnMut() -> io::Result<bool>) -> io::Result<()> {
    while !flush()? {
        stream.writable().await?;
    }
    Ok(())
}

/// A receive buffer that yields whole frames.
#[derive(Debug)]
pub struct Incoming {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What [`Incoming::fill`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// New bytes arrived.
    Bytes,
    /// Nothing to read yet (spurious readiness).
    Nothing,
    /// The peer closed the connection.
    Closed,
}

impl Incoming {
    /// A buffer of `capacity` bytes: the longest run of bytes that must be kept
    /// together (a frame, or a linked chain) must fit in it.
    pub fn with_capacity(capacity: usize) -> Incoming {
        Incoming { buf: vec![0; capacity], start: 0, end: 0 }
    }

    /// Reads what the socket has now, after moving unconsumed bytes to the front.
    pub fn fill(&mut self, stream: &Stream) -> io::Result<Filled> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a frame or group larger than the buffer",
            ));
        }
        match stream.try_read(&mut self.buf[self.end..]) {
            Ok(0) => Ok(Filled::Closed),
            Ok(n) => {
                self.end += n;
                crate::idle::touch();
                Ok(Filled::Bytes)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Filled::Nothing),
            Err(e) => Err(e),
        }
    }

    /// The bytes received and not consumed yet.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks the first `n` bytes of [`bytes`](Self::bytes) as handled.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consuming more than received");
        self.start += n;
    }
}

/// Length of the longest prefix of `bytes` made of whole frames (by their headers),
/// and how many frames it holds; an error if a header is not one of ours.
pub fn whole_frames(bytes: &[u8]) -> Result<(usize, usize), DecodeError> {
    let (mut offset, mut count) = (0, 0);
    while offset < bytes.len() {
        match MessageHeader::frame_size(&bytes[offset..]) {
            Ok(size) if offset + size <= bytes.len() => {
                offset += size;
                count += 1;
            }
            Ok(_) | Err(DecodeError::Truncated { .. }) => break,
            Err(error) => return Err(error),
        }
    }
    Ok((offset, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_codec::messages::Heartbeat;
    use ledgerbus_codec::{encode, Message};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn bytes_queued_behind_a_full_socket_keep_their_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let writer = Stream::Tcp(TcpStream::connect(listener.local_addr().unwrap()).await.unwrap());
        let (mut peer, _) = listener.accept().await.unwrap();
        const PIECE: usize = 64 << 10;
        const PIECES: usize = 128;
        // The peer does not read yet: the socket fills and the rest is queued.
        let mut out = Outgoing::default();
        let mut queued = false;
        for piece in 0..PIECES {
            queued |= out.send(&writer, &vec![piece as u8; PIECE]).unwrap();
        }
        assert!(queued && out.queued() > 0, "8 MiB do not fit in a socket buffer");
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        drain(&writer, || out.flush(&writer)).await.unwrap();
        assert_eq!(out.queued(), 0);
        drop(writer);
        let all = reader.await.unwrap();
        assert_eq!(all.len(), PIECE * PIECES);
        for (index, piece) in all.chunks(PIECE).enumerate() {
            assert!(piece.iter().all(|&b| b == index as u8), "piece {index} arrived in its place");
        }
    }

    #[test]
    fn whole_frames_stops_before_a_partial_frame_and_rejects_foreign_bytes() {
        let mut frame = [0u8; Heartbeat::FRAME_SIZE];
        encode(&Heartbeat { next_sequence: 1.into(), oldest_retained_sequence: 1.into() }, &mut frame)
            .unwrap();
        let mut bytes = [frame, frame].concat();
        bytes.extend_from_slice(&frame[..5]);
        assert_eq!(whole_frames(&bytes).unwrap(), (2 * frame.len(), 2));
        assert_eq!(whole_frames(&[]).unwrap(), (0, 0));
        assert!(whole_frames(&[0xEE; 64]).is_err(), "not one of our headers");
    }
}
