//! UDP socket set-up: buffers (with a warning when the kernel grants less than asked)
//! and multicast options. Everything else about sockets lives in `mmsg`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Multicast settings of one socket (docs/architecture.md, "Running on one machine and on many").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastOptions {
    /// The group, in 224.0.0.0/4 (tests use 239.255.0.0/16).
    pub group: Ipv4Addr,
    /// The local interface address to send from and join on.
    pub interface: Ipv4Addr,
    /// Hops a datagram may travel.
    pub ttl: u32,
    /// Whether this host's own sockets get our multicast too.
    pub loopback: bool,
}

/// Options common to every bus socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Requested SO_RCVBUF in bytes.
    pub recv_buffer_size: usize,
    /// Requested SO_SNDBUF in bytes.
    pub send_buffer_size: usize,
}

impl SocketOptions {
    /// Both buffers must hold at least one datagram of `datagram_size_max` bytes.
    pub fn validate(&self, datagram_size_max: usize) -> Result<(), crate::ConfigError> {
        for (setting, size) in
            [("recv_buffer_size", self.recv_buffer_size), ("send_buffer_size", self.send_buffer_size)]
        {
            if size < datagram_size_max {
                return Err(crate::ConfigError {
                    setting,
                    message: format!("{size} bytes cannot hold one datagram of {datagram_size_max} bytes"),
                });
            }
        }
        Ok(())
    }
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions { recv_buffer_size: 4 << 20, send_buffer_size: 4 << 20 }
    }
}

/// What the kernel actually granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantedBuffers {
    /// Usable receive buffer in bytes (Linux reports double the usable size; halved here).
    pub recv_buffer_size: usize,
    /// Usable send buffer in bytes.
    pub send_buffer_size: usize,
}

/// A UDP socket bound to `address` with large buffers; for a multicast receiver, bound
/// to the group's port and joined to the group on the given interface.
pub fn bind(
    address: SocketAddr,
    options: SocketOptions,
    join: Option<MulticastOptions>,
) -> io::Result<(UdpSocket, GrantedBuffers)> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if join.is_some() {
        // Several receivers on one host share the group port.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
    }
    let granted = set_buffers(&socket, options)?;
    socket.bind(&address.into())?;
    if let Some(multicast) = join {
        socket.join_multicast_v4(&multicast.group, &multicast.interface)?;
    }
    Ok((socket.into(), granted))
}

/// Sets the multicast sending options of `socket`.
pub fn set_multicast_sending(socket: &UdpSocket, multicast: MulticastOptions) -> io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    socket.set_multicast_if_v4(&multicast.interface)?;
    socket.set_multicast_ttl_v4(multicast.ttl)?;
    socket.set_multicast_loop_v4(multicast.loopback)?;
    Ok(())
}

fn set_buffers(socket: &Socket, options: SocketOptions) -> io::Result<GrantedBuffers> {
    socket.set_recv_buffer_size(options.recv_buffer_size)?;
    socket.set_send_buffer_size(options.send_buffer_size)?;
    // Linux doubles the value for bookkeeping overhead and reports the doubled size.
    let granted = GrantedBuffers {
        recv_buffer_size: socket.recv_buffer_size()? / 2,
        send_buffer_size: socket.send_buffer_size()? / 2,
    };
    if granted.recv_buffer_size < options.recv_buffer_size {
        tracing::warn!(
            requested = options.recv_buffer_size,
            granted = granted.recv_buffer_size,
            "SO_RCVBUF capped by net.core.rmem_max; raise it (sysctl -w net.core.rmem_max=...) to absorb bursts"
        );
    }
    if granted.send_buffer_size < options.send_buffer_size {
        tracing::warn!(
            requested = options.send_buffer_size,
            granted = granted.send_buffer_size,
            "SO_SNDBUF capped by net.core.wmem_max"
        );
    }
    Ok(granted)
}

/// The IPv4 form of an address; the bus is IPv4 (multicast groups and test ranges).
pub fn ipv4(address: SocketAddr) -> io::Result<SocketAddrV4> {
    match address {
        SocketAddr::V4(v4) => Ok(v4),
        SocketAddr::V6(_) => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{address} is not IPv4")))
        }
    }
}
