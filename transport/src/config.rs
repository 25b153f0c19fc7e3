//! Every timing and size of the protocol, with defaults and validation.
//!
//! Defaults follow docs/architecture.md ("Wire format"): Aeron's 1408-byte MTU, 100 µs
//! unicast NAK delay, 10 ms retransmit linger; the multicast NAK back-off is much
//! smaller than Aeron's 10 ms because a LAN ledger cannot wait that long, and the
//! NAK retry is short because repair p99 must stay under 1 ms on a LAN.

use ledgerbus_codec::{DATAGRAM_SIZE_MAX, PACKET_HEADER_SIZE};

use crate::security::BusSecurity;

/// How datagrams reach receivers; changes NAK timing and who gets retransmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// One copy per subscriber. Losses are independent, so NAK after a short fixed
    /// delay and retransmit to the requester only.
    Unicast,
    /// One copy to a group. A loss before fan-out hits every receiver, so receivers
    /// wait a random back-off (the first NAK's repair, re-multicast, cancels the
    /// others) and retransmissions go to the group.
    Multicast,
}

/// An invalid transport configuration: the setting and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport configuration: {setting}: {message}")]
pub struct ConfigError {
    /// Name of the setting (as in the CLI, without dashes).
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

fn check(ok: bool, setting: &'static str, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { setting, message: message() })
    }
}

/// Settings of a [`Sender`](crate::Sender).
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Stream id written in every packet.
    pub stream_id: u32,
    /// Session id: a new one each time the sequencer starts a new log.
    pub session_id: u64,
    /// Largest datagram in bytes.
    pub datagram_size_max: usize,
    /// Datagrams kept for retransmission. Memory: this × `datagram_size_max`.
    pub ring_datagrams: usize,
    /// Heartbeat period right after data was sent (how soon tail loss is seen).
    pub heartbeat_interval_us: u64,
    /// While nothing is sent, the heartbeat period doubles up to this, so an idle bus
    /// costs next to nothing (Aeron's idle heartbeats are similarly sparse).
    pub heartbeat_interval_max_us: u64,
    /// A datagram retransmitted within this time is not retransmitted again (to the
    /// same requester, in unicast mode). Aeron uses 10 ms; it must stay below the
    /// receivers' `nak_retry_us`, or a lost repair would wait out the linger.
    pub retransmit_linger_us: u64,
    /// Unicast or multicast.
    pub mode: DeliveryMode,
    /// Receivers remembered from their status messages (for lag and flow control).
    pub receivers_max: usize,
    /// A receiver silent for this long no longer holds back flow control.
    pub receiver_timeout_us: u64,
    /// Control datagrams (heartbeats, NAK replies) waiting to be sent.
    pub control_queue_max: usize,
    /// Answer NAKs only from receivers that sent a status message from that address
    /// or are in `allowed_requesters`, so the NAK port cannot reflect traffic at a
    /// third party (docs/architecture.md, "Transport").
    pub restrict_naks: bool,
    /// Addresses allowed to NAK before their first status message (configured subscribers).
    pub allowed_requesters: Vec<std::net::SocketAddr>,
    /// Retransmitted datagrams per second one requester may cause.
    pub retransmit_rate_per_sec: u64,
    /// Burst allowance of that rate, in datagrams.
    pub retransmit_burst: u64,
    /// NAKs older than the ring are handed to the driver (`poll_archive_request`),
    /// which serves them from its archive, instead of "not retransmittable".
    pub archive_fallback: bool,
    /// Whether datagrams are sealed (authenticated and encrypted) and with which keys.
    pub security: BusSecurity,
    /// Random and new at every start: part of the sealing key, so a restarted sender
    /// never reuses a nonce (see [`security`](crate::security)).
    pub instance: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            stream_id: 1,
            session_id: 1,
            datagram_size_max: ledgerbus_codec::DATAGRAM_SIZE_DEFAULT,
            ring_datagrams: 16_384,
            heartbeat_interval_us: 1_000,
            heartbeat_interval_max_us: 100_000,
            retransmit_linger_us: 200,
            mode: DeliveryMode::Unicast,
            receivers_max: 64,
            receiver_timeout_us: 2_000_000,
            control_queue_max: 1_024,
            restrict_naks: true,
            allowed_requesters: Vec::new(),
            retransmit_rate_per_sec: 200_000,
            retransmit_burst: 20_000,
            archive_fallback: false,
            security: BusSecurity::None,
            instance: 0,
        }
    }
}

impl SenderConfig {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_datagram_size(self.datagram_size_max, &self.security)?;
        check((16..=16_777_216).contains(&self.ring_datagrams), "ring_datagrams", || {
            format!("{} is not in 16..=16777216", self.ring_datagrams)
        })?;
        check(self.heartbeat_interval_us > 0, "heartbeat_interval_us", || "must be positive".into())?;
        check(
            self.heartbeat_interval_max_us >= self.heartbeat_interval_us,
            "heartbeat_interval_max_us",
            || "must be at least heartbeat_interval_us".into(),
        )?;
        check(
            self.heartbeat_interval_max_us < self.receiver_timeout_us,
            "heartbeat_interval_max_us",
            || "must be below receiver_timeout_us".into(),
        )?;
        check(self.receivers_max > 0, "receivers_max", || "must be positive".into())?;
        check(self.control_queue_max >= 16, "control_queue_max", || "must be at least 16".into())?;
        check(self.retransmit_rate_per_sec > 0, "retransmit_rate_per_sec", || "must be positive".into())?;
        check(self.retransmit_burst > 0, "retransmit_burst", || "must be positive".into())
    }
}

fn check_datagram_size(size: usize, security: &BusSecurity) -> Result<(), ConfigError> {
    let min = PACKET_HEADER_SIZE + 64 + security.overhead();
    check((min..=DATAGRAM_SIZE_MAX).contains(&size), "datagram_size_max", || {
        format!("{size} is not in {min}..={DATAGRAM_SIZE_MAX}")
    })
}

/// Settings of a [`Receiver`](crate::Receiver).
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Stream to accept; packets of other streams are dropped.
    pub stream_id: u32,
    /// This receiver's id in NAKs and status messages.
    pub receiver_id: u32,
    /// Largest datagram in bytes (must be at least the sender's).
    pub datagram_size_max: usize,
    /// Unicast or multicast: selects the NAK delay policy.
    pub mode: DeliveryMode,
    /// First NAK after a gap is seen, unicast mode.
    pub nak_delay_us: u64,
    /// Upper bound of the random first-NAK delay, multicast mode.
    pub nak_backoff_max_us: u64,
    /// Wait before repeating an unanswered NAK; doubles per attempt up to 8×.
    pub nak_retry_us: u64,
    /// Most events asked for in one NAK.
    pub nak_events_max: u32,
    /// Out-of-order datagrams buffered while a gap is repaired.
    /// Memory: this × `datagram_size_max`.
    pub reorder_datagrams_max: usize,
    /// Events past its position this receiver lets the sender run ahead (flow control).
    pub window_events: u32,
    /// Whether this receiver's window holds the sender back. A receiver without flow
    /// control reports a window of 0 (an observer): a slow one falls behind and
    /// catches up by bulk replay instead of slowing the stream for everyone.
    pub flow_control: bool,
    /// Period of status messages while the position moves.
    pub status_interval_us: u64,
    /// While the position stands still, the status period doubles up to this (it must
    /// stay well below the sender's `receiver_timeout_us`, 2 s by default).
    pub status_interval_max_us: u64,
    /// Seed of the NAK back-off jitter, so every run can be replayed.
    pub rng_seed: u64,
    /// Whether datagrams are sealed and with which keys (the sender's setting).
    pub security: BusSecurity,
    /// Random and new at every start (see [`SenderConfig::instance`]).
    pub instance: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            stream_id: 1,
            receiver_id: 1,
            datagram_size_max: ledgerbus_codec::DATAGRAM_SIZE_DEFAULT,
            mode: DeliveryMode::Unicast,
            nak_delay_us: 100,
            nak_backoff_max_us: 1_000,
            nak_retry_us: 300,
            nak_events_max: 65_536,
            reorder_datagrams_max: 4_096,
            window_events: 65_536,
            flow_control: true,
            status_interval_us: 1_000,
            status_interval_max_us: 100_000,
            rng_seed: 0x5EED,
            security: BusSecurity::None,
            instance: 0,
        }
    }
}

impl ReceiverConfig {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_datagram_size(self.datagram_size_max, &self.security)?;
        check(self.nak_retry_us > 0, "nak_retry_us", || "must be positive".into())?;
        check(self.nak_delay_us <= self.nak_retry_us, "nak_delay_us", || {
            format!("{} exceeds nak_retry_us {}", self.nak_delay_us, self.nak_retry_us)
        })?;
        check(self.nak_backoff_max_us <= 1_000_000, "nak_backoff_max_us", || "must be at most 1 s".into())?;
        check(self.nak_events_max > 0, "nak_events_max", || "must be positive".into())?;
        check(self.reorder_datagrams_max >= 4, "reorder_datagrams_max", || "must be at least 4".into())?;
        check(self.reorder_datagrams_max <= usize::from(u16::MAX), "reorder_datagrams_max", || {
            format!("must be at most {}", u16::MAX)
        })?;
        check(self.window_events > 0, "window_events", || "must be positive".into())?;
        check(self.status_interval_us > 0, "status_interval_us", || "must be positive".into())?;
        check(self.status_interval_max_us >= self.status_interval_us, "status_interval_max_us", || {
            "must be at least status_interval_us".into()
        })
    }
}

/// Checks that a sender and its receivers can work together: a repair that is lost
/// must be asked for again after the linger, not waited out.
pub fn check_link(sender: &SenderConfig, receiver: &ReceiverConfig) -> Result<(), ConfigError> {
    sender.validate()?;
    receiver.validate()?;
    check(sender.retransmit_linger_us < receiver.nak_retry_us, "retransmit_linger_us", || {
        format!(
            "{} must be below nak_retry_us {}, or a lost repair waits out the linger",
            sender.retransmit_linger_us, receiver.nak_retry_us
        )
    })?;
    check(receiver.datagram_size_max >= sender.datagram_size_max, "datagram_size_max", || {
        format!(
            "the receiver's {} cannot hold the sender's {}-byte datagrams",
            receiver.datagram_size_max, sender.datagram_size_max
        )
    })
}
