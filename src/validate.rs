//! Checks that span several settings, run once at start-up. Each error names the
//! setting (as its flag) so the operator knows what to change. Single-value checks
//! (ranges, enums, addresses) are done by clap's value parsers, which also name it.

use crate::cli::*;

/// An invalid configuration: which setting, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: --{setting}: {message}")]
pub struct ConfigError {
    /// The long flag name of the setting.
    pub setting: &'static str,
    /// What is wrong, in a sentence.
    pub message: String,
}

fn check(ok: bool, setting: &'static str, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { setting, message: message() })
    }
}

fn positive_seconds(value: f64, setting: &'static str) -> Result<(), ConfigError> {
    check(value.is_finite() && value > 0.0 && value <= 86_400.0, setting, || {
        format!("{value} is not a duration between 0 and 86400 seconds")
    })
}

impl TransportArgs {
    /// Cross-setting checks of the transport configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(group) = self.multicast_group {
            check(group.is_multicast(), "multicast-group", || {
                format!("{group} is not an IPv4 multicast address")
            })?;
        }
        check(self.heartbeat_interval_us > 0, "heartbeat-interval-us", || "must be at least 1".into())?;
        check(self.nak_retry_us > 0, "nak-retry-us", || "must be at least 1".into())?;
        check(self.nak_delay_us <= self.nak_retry_us, "nak-delay-us", || {
            format!("{} exceeds --nak-retry-us {}", self.nak_delay_us, self.nak_retry_us)
        })?;
        check(self.retransmit_linger_us < self.nak_retry_us, "retransmit-linger-us", || {
            format!(
                "{} must be below --nak-retry-us {}, or a lost repair waits out the linger",
                self.retransmit_linger_us, self.nak_retry_us
            )
        })?;
        check(self.nak_backoff_max_us <= 1_000_000, "nak-backoff-max-us", || "must be at most 1 s".into())?;
        check(self.socket_rcvbuf >= usize::from(self.mtu), "socket-rcvbuf", || {
            format!("{} bytes cannot hold one datagram of --mtu {}", self.socket_rcvbuf, self.mtu)
        })?;
        check(self.socket_sndbuf >= usize::from(self.mtu), "socket-sndbuf", || {
            format!("{} bytes cannot hold one datagram of --mtu {}", self.socket_sndbuf, self.mtu)
        })
    }
}

impl crate::cli::BusArgs {
    /// The bus key is required (it seals the bus and authenticates bulk replay) and
    /// must parse; the error never shows the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.bus_key {
            None => Err(ConfigError {
                setting: "bus-key",
                message: "is required (or LEDGERBUS_BUS_KEY): `openssl rand -hex 32` makes one".into(),
            }),
            Some(list) => ledgerbus_transport::BusKeys::parse(list)
                .map(|_| ())
                .map_err(|e| ConfigError { setting: "bus-key", message: e.to_string() }),
        }
    }
}

impl SequencerArgs {
    /// Cross-setting checks of the sequencer configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.transport.validate()?;
        check(
            self.transport.multicast_group.is_some() || !self.subscribers.is_empty(),
            "subscribers",
            || "needs at least one address when --multicast-group is not set".into(),
        )?;
        check((16..=16_777_216).contains(&self.ring_datagrams), "ring-datagrams", || {
            format!("{} is not in 16..=16777216", self.ring_datagrams)
        })?;
        match &self.secret {
            Some(secret) => check(secret.len() >= 16, "secret", || "must be at least 16 characters".into()),
            None => Err(ConfigError {
                setting: "secret",
                message: "is required (or LEDGERBUS_SEQUENCER_SECRET): gateways must authenticate".into(),
            }),
        }?;
        self.transport.bus.validate()
    }
}

impl GatewayArgs {
    /// Cross-setting checks of the gateway configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive_seconds(self.header_timeout_secs, "header-timeout-secs")?;
        positive_seconds(self.frame_timeout_secs, "frame-timeout-secs")?;
        check(self.connections_max > 0, "connections-max", || "must be at least 1".into())?;
        check(self.body_max >= 1024, "body-max", || "must be at least 1024 bytes".into())?;
        check(self.http_listen != self.tcp_listen, "tcp-listen", || "must differ from --http-listen".into())?;
        check(self.queue_max > 0, "queue-max", || "must be at least 1".into())?;
        check(!self.api_keys.is_empty(), "api-keys", || {
            "at least one key is required (or LEDGERBUS_API_KEYS)".into()
        })?;
        check(self.api_keys.iter().all(|k| (16..=64).contains(&k.len())), "api-keys", || {
            "every key must be 16 to 64 characters".into()
        })?;
        match &self.secret {
            Some(secret) => check(secret.len() >= 16, "secret", || "must be at least 16 characters".into()),
            None => Err(ConfigError {
                setting: "secret",
                message: "is required (or LEDGERBUS_SEQUENCER_SECRET): the sequencer authenticates gateways"
                    .into(),
            }),
        }
    }
}

impl ConsumerArgs {
    /// Cross-setting checks of the consumer configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.transport.validate()?;
        check((4..=65_535).contains(&self.reorder_datagrams_max), "reorder-datagrams-max", || {
            format!("{} is not in 4..=65535", self.reorder_datagrams_max)
        })?;
        check(self.snapshot_every > 0, "snapshot-every", || "must be at least 1".into())?;
        check(self.kind != ConsumerKind::Memory || !self.api_keys.is_empty(), "api-keys", || {
            "at least one key is required for the memory consumer's query API (or LEDGERBUS_API_KEYS)".into()
        })?;
        self.transport.bus.validate()
    }
}

impl BenchTransportArgs {
    /// Checks of the transport benchmark settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive_seconds(self.duration, "duration")?;
        check((1..=64).contains(&self.receivers), "receivers", || {
            format!("{} is not in 1..=64", self.receivers)
        })?;
        check(self.loss.is_finite() && (0.0..100.0).contains(&self.loss), "loss", || {
            format!("{} is not a percentage in [0, 100)", self.loss)
        })?;
        check((16..=1024).contains(&self.size), "size", || format!("{} bytes is not in 16..=1024", self.size))
    }
}

impl BenchE2eArgs {
    /// Checks of the end-to-end benchmark settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive_seconds(self.duration, "duration")?;
        check(self.rate == "max" || self.rate.parse::<u64>().is_ok_and(|r| r > 0), "rate", || {
            format!("`{}` is neither a positive number nor `max`", self.rate)
        })?;
        check(self.connections > 0, "connections", || "must be at least 1".into())?;
        check(self.batch > 0, "batch", || "must be at least 1".into())?;
        check(self.accounts >= 2, "accounts", || "needs at least 2 accounts to move money between".into())?;
        check(self.spawn || self.api_key.is_some(), "api-key", || {
            "is required to drive a running gateway (or use --spawn)".into()
        })
    }
}

impl ReplayArgs {
    /// Checks of the replay settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(ReplayAction::Nak(nak)) = &self.action {
            check(nak.count > 0, "count", || "must be at least 1".into())?;
            if let Some(session) = &nak.session {
                check(u64::from_str_radix(session, 16).is_ok(), "session", || {
                    format!("`{session}` is not hex")
                })?;
            }
            return Ok(());
        }
        check(self.to.is_none_or(|to| to >= self.from), "to", || "is before --from".into())?;
        check(
            self.from_sequencer.is_some() || self.journal.is_some() || self.cluster.is_some(),
            "journal",
            || "give --journal DIR, --from-sequencer ADDR or --cluster FILE".into(),
        )?;
        check(self.from >= 1, "from", || "sequences start at 1".into())?;
        if let Some(to) = self.to {
            check(to >= self.from, "to", || format!("{to} is before --from {}", self.from))?;
        }
        Ok(())
    }
}

impl Command {
    /// Validates whichever subcommand was chosen.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Command::Schema => Ok(()),
            Command::Demo(args) => {
                if let Some(duration) = args.duration {
                    positive_seconds(duration, "duration")?;
                }
                if let Some(key) = &args.api_key {
                    check((16..=64).contains(&key.len()), "api-key", || {
                        "must be 16 to 64 characters".into()
                    })?;
                }
                check(args.payments > 0, "payments", || "must be at least 1".into())
            }
            Command::Sequencer(args) => args.validate(),
            Command::Gateway(args) => args.validate(),
            Command::Consumer(args) => args.validate(),
            Command::Bench(BenchCommand::Codec(args)) => positive_seconds(args.duration, "duration"),
            Command::Bench(BenchCommand::Transport(args)) => args.validate(),
            Command::Bench(BenchCommand::Sequencer(args)) => positive_seconds(args.duration, "duration"),
            Command::Bench(BenchCommand::E2e(args)) => args.validate(),
            Command::Bench(BenchCommand::Hops(args)) => {
                positive_seconds(args.duration, "duration")?;
                check(args.rate > 0, "rate", || "must be at least 1".into())
            }
            Command::Bench(BenchCommand::Plot(_)) => Ok(()),
            Command::Replay(args) => args.validate(),
        }
    }
}
