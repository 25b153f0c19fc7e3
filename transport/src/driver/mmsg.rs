//! Batched UDP syscalls: `sendmmsg` and `recvmmsg` over IPv4, and `ppoll` with
//! nanosecond timeouts (NAK delays are 100 µs; `poll`'s milliseconds are too coarse).
//!
//! All buffers are allocated once per batch object; a call moves up to `capacity`
//! datagrams. This is the only `unsafe` in the transport, kept small and checked.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::time::Duration;

fn to_sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut raw: libc::sockaddr_in = unsafe { zeroed() };
    raw.sin_family = libc::AF_INET as libc::sa_family_t;
    raw.sin_port = address.port().to_be();
    raw.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(address.ip().octets()) };
    raw
}

fn from_sockaddr(raw: &libc::sockaddr_in) -> SocketAddr {
    let ip = Ipv4Addr::from(raw.sin_addr.s_addr.to_ne_bytes());
    SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(raw.sin_port)))
}

/// Datagrams queued for one `sendmmsg`.
pub struct SendBatch {
    datagram_size_max: usize,
    bytes: Vec<u8>,
    sizes: Vec<usize>,
    destinations: Vec<libc::sockaddr_in>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside iovec/mmsghdr are rebuilt before every syscall from
// buffers this struct owns; they are never dereferenced elsewhere.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `capacity` datagrams of up to `datagram_size_max` bytes.
    pub fn new(capacity: usize, datagram_size_max: usize) -> SendBatch {
        assert!(capacity > 0);
        SendBatch {
            datagram_size_max,
            bytes: vec![0; capacity * datagram_size_max],
            sizes: Vec::with_capacity(capacity),
            destinations: Vec::with_capacity(capacity),
            // SAFETY: iovec and mmsghdr are plain old data; zero is valid.
            iovecs: vec![unsafe { zeroed() }; capacity],
            headers: vec![unsafe { zeroed() }; capacity],
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Whether another datagram fits.
    pub fn is_full(&self) -> bool {
        self.sizes.len() == self.headers.len()
    }

    /// The buffer for the next datagram; commit it with `push`.
    pub fn next_buffer(&mut self) -> &mut [u8] {
        assert!(!self.is_full());
        let start = self.sizes.len() * self.datagram_size_max;
        &mut self.bytes[start..start + self.datagram_size_max]
    }

    /// Queues the datagram written into `next_buffer` for `destination`.
    pub fn push(&mut self, size: usize, destination: SocketAddrV4) {
        assert!(!self.is_full() && size <= self.datagram_size_max);
        self.sizes.push(size);
        self.destinations.push(to_sockaddr(destination));
    }

    /// Queues a copy of the last queued datagram for another destination (fan-out).
    pub fn push_copy_of_last(&mut self, destination: SocketAddrV4) {
        let last = self.sizes.len().checked_sub(1).expect("a datagram to copy");
        let size = self.sizes[last];
        let from = last * self.datagram_size_max;
        let to = self.sizes.len() * self.datagram_size_max;
        self.bytes.copy_within(from..from + size, to);
        self.push(size, destination);
    }

    /// Sends everything queued (retrying partial sends) and empties the batch.
    /// Datagrams the kernel refuses with a transient error are dropped and counted
    /// in the return value's second field: the protocol repairs loss.
    pub fn send(&mut self, fd: RawFd) -> io::Result<(usize, usize)> {
        let count = self.sizes.len();
        for index in 0..count {
            let start = index * self.datagram_size_max;
            self.iovecs[index] =
                libc::iovec { iov_base: self.bytes[start..].as_mut_ptr().cast(), iov_len: self.sizes[index] };
            // SAFETY: zero is a valid msghdr; the pointers set below stay valid until
            // the syscall returns, because self is borrowed mutably throughout.
            let mut header: libc::msghdr = unsafe { zeroed() };
            header.msg_name = (&mut self.destinations[index] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[index];
            header.msg_iovlen = 1;
            self.headers[index] = libc::mmsghdr { msg_hdr: header, msg_len: 0 };
        }
        let mut sent = 0;
        let mut dropped = 0;
        while sent < count {
            // SAFETY: headers[sent..count] were initialised above and point into
            // buffers owned by self; the kernel writes only msg_len.
            let result = unsafe {
                libc::sendmmsg(fd, self.headers[sent..].as_mut_ptr(), (count - sent) as libc::c_uint, 0)
            };
            if result < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The destination is not listening (ICMP port unreachable reported
                    // on a later send), buffers are momentarily exhausted, the network
                    // is down or unreachable, or a firewall dropped it (EPERM): skip
                    // it. A lost datagram is what the protocol repairs.
                    Some(
                        libc::ECONNREFUSED
                        | libc::ENOBUFS
                        | libc::EAGAIN
                        | libc::EHOSTUNREACH
                        | libc::ENETUNREACH
                        | libc::ENETDOWN
                        | libc::EPERM,
                    ) => {
                        sent += 1;
                        dropped += 1;
                        continue;
                    }
                    _ => {
                        self.clear();
                        return Err(error);
                    }
                }
            }
            sent += result as usize;
        }
        self.clear();
        Ok((count - dropped, dropped))
    }

    fn clear(&mut self) {
        self.sizes.clear();
        self.destinations.clear();
    }
}

/// Buffers for one `recvmmsg`.
pub struct RecvBatch {
    datagram_size_max: usize,
    bytes: Vec<u8>,
    sources: Vec<libc::sockaddr_in>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

// SAFETY: as for SendBatch, the raw pointers are rebuilt before each syscall.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `capacity` datagrams of up to `datagram_size_max` bytes.
    pub fn new(capacity: usize, datagram_size_max: usize) -> RecvBatch {
        assert!(capacity > 0);
        RecvBatch {
            datagram_size_max,
            bytes: vec![0; capacity * datagram_size_max],
            // SAFETY: plain old data; zero is valid.
            sources: vec![unsafe { zeroed() }; capacity],
            iovecs: vec![unsafe { zeroed() }; capacity],
            headers: vec![unsafe { zeroed() }; capacity],
            received: 0,
        }
    }

    /// Receives what is ready without blocking; returns the number of datagrams
    /// (0 if none). Datagrams longer than `datagram_size_max` arrive truncated and
    /// fail their CRC, which is what they deserve.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let capacity = self.headers.len();
        for index in 0..capacity {
            let start = index * self.datagram_size_max;
            self.iovecs[index] = libc::iovec {
                iov_base: self.bytes[start..].as_mut_ptr().cast(),
                iov_len: self.datagram_size_max,
            };
            // SAFETY: zero is a valid msghdr; pointers stay valid during the call.
            let mut header: libc::msghdr = unsafe { zeroed() };
            header.msg_name = (&mut self.sources[index] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[index];
            header.msg_iovlen = 1;
            self.headers[index] = libc::mmsghdr { msg_hdr: header, msg_len: 0 };
        }
        loop {
            // SAFETY: headers point into buffers owned by self, sized as declared.
            let result = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    capacity as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if result >= 0 {
                self.received = result as usize;
                return Ok(self.received);
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    self.received = 0;
                    return Ok(0);
                }
                // An ICMP error from an earlier send surfaces here; not fatal.
                Some(libc::ECONNREFUSED) => continue,
                _ => return Err(error),
            }
        }
    }

    /// Datagram `index` of the last `recv`, with its source.
    pub fn get(&self, index: usize) -> (SocketAddr, &[u8]) {
        assert!(index < self.received);
        let size = (self.headers[index].msg_len as usize).min(self.datagram_size_max);
        let start = index * self.datagram_size_max;
        (from_sockaddr(&self.sources[index]), &self.bytes[start..start + size])
    }
}

/// Waits until `fd` is readable or `timeout` passes (`None`: forever). Returns whether
/// it is readable. Nanosecond precision, unlike `poll`.
pub fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let spec = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let spec_ptr = spec.as_ref().map_or(std::ptr::null(), |s| s as *const libc::timespec);
    loop {
        // SAFETY: one valid pollfd, a valid or null timespec, no signal mask.
        let result = unsafe { libc::ppoll(&mut pollfd, 1, spec_ptr, std::ptr::null()) };
        if result >= 0 {
            return Ok(result > 0);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}
