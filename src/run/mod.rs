//! What each subcommand does, built from its parsed arguments. `main.rs` only
//! parses, validates and dispatches here.

pub mod bench;
pub mod bench_e2e;
pub mod bench_failover;
pub mod bench_sequencer;
pub mod bench_sql;
pub mod consumer;
pub mod demo;
pub mod gateway;
pub mod replay;
pub mod sequencer;
pub mod sql;

use std::net::SocketAddrV4;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ledgerbus_transport::driver::{MulticastOptions, SocketOptions, Targets};
use ledgerbus_transport::{BusKeys, BusSecurity, DeliveryMode, ReceiverConfig, SenderConfig};

use crate::cli::{BusArgs, BusSecurityMode, TransportArgs};

impl BusArgs {
    /// The configured keys (validation has checked they parse).
    pub fn keys(&self) -> anyhow::Result<Arc<BusKeys>> {
        let list = self.bus_key.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--bus-key (or LEDGERBUS_BUS_KEY) is required: `openssl rand -hex 32` makes one")
        })?;
        Ok(Arc::new(BusKeys::parse(list)?))
    }

    /// Sealing as configured; `none` is logged as a warning once here.
    pub fn security(&self) -> anyhow::Result<BusSecurity> {
        match self.bus_security {
            BusSecurityMode::Aes256Gcm => Ok(BusSecurity::Aead(self.keys()?)),
            BusSecurityMode::None => {
                tracing::warn!("--bus-security none: datagrams are not authenticated; anyone who can reach the bus ports can forge events. Benchmarks on a trusted host only");
                Ok(BusSecurity::None)
            }
        }
    }
}

/// A random 64-bit value for a node's instance (part of its sealing key).
pub fn random_instance() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the bus instance: {e}"))?;
    Ok(u64::from_le_bytes(bytes))
}

impl TransportArgs {
    /// Unicast or multicast, as configured.
    pub fn mode(&self) -> DeliveryMode {
        if self.multicast_group.is_some() {
            DeliveryMode::Multicast
        } else {
            DeliveryMode::Unicast
        }
    }

    /// Multicast socket options, when a group is configured.
    pub fn multicast(&self) -> Option<MulticastOptions> {
        self.multicast_group.map(|group| MulticastOptions {
            group,
            interface: self.multicast_interface,
            ttl: u32::from(self.multicast_ttl),
            loopback: self.multicast_loop,
        })
    }

    /// Where data goes: the group, or the unicast subscribers.
    pub fn targets(&self, subscribers: &[std::net::SocketAddr]) -> anyhow::Result<Targets> {
        if let Some(options) = self.multicast() {
            return Ok(Targets::Multicast {
                group: SocketAddrV4::new(options.group, self.multicast_port),
                options,
            });
        }
        let list = subscribers
            .iter()
            .map(|address| ledgerbus_transport::driver::socket::ipv4(*address))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Targets::Unicast(list))
    }

    /// Socket buffer requests.
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions { recv_buffer_size: self.socket_rcvbuf, send_buffer_size: self.socket_sndbuf }
    }

    /// Sender settings (the session id is filled in from the journal).
    pub fn sender_config(&self, ring_datagrams: usize) -> anyhow::Result<SenderConfig> {
        Ok(SenderConfig {
            security: self.bus.security()?,
            instance: random_instance()?,
            ..self.sender_settings(ring_datagrams)
        })
    }

    /// The sender settings the flags give, unsealed (for validation and for
    /// [`sender_config`](Self::sender_config) to complete).
    pub fn sender_settings(&self, ring_datagrams: usize) -> SenderConfig {
        SenderConfig {
            stream_id: self.stream_id,
            datagram_size_max: usize::from(self.mtu),
            ring_datagrams,
            heartbeat_interval_us: self.heartbeat_interval_us,
            retransmit_linger_us: self.retransmit_linger_us,
            mode: self.mode(),
            ..SenderConfig::default()
        }
    }

    /// Receiver settings.
    pub fn receiver_config(
        &self,
        receiver_id: u32,
        reorder_datagrams_max: usize,
    ) -> anyhow::Result<ReceiverConfig> {
        Ok(ReceiverConfig {
            security: self.bus.security()?,
            instance: random_instance()?,
            ..self.receiver_settings(receiver_id, reorder_datagrams_max)
        })
    }

    /// The receiver settings the flags give, unsealed.
    pub fn receiver_settings(&self, receiver_id: u32, reorder_datagrams_max: usize) -> ReceiverConfig {
        ReceiverConfig {
            stream_id: self.stream_id,
            receiver_id,
            datagram_size_max: usize::from(self.mtu),
            mode: self.mode(),
            nak_delay_us: self.nak_delay_us,
            nak_backoff_max_us: self.nak_backoff_max_us,
            nak_retry_us: self.nak_retry_us,
            reorder_datagrams_max,
            rng_seed: u64::from(receiver_id),
            ..ReceiverConfig::default()
        }
    }
}

/// A flag set by SIGINT or SIGTERM, for an orderly shutdown.
pub fn shutdown_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    Ok(flag)
}
