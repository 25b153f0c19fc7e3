//! Checks that span several settings, run once at start-up. Each error names the
//! setting (as its flag) so the operator knows what to change. Single-value checks
//! (ranges, enums, addresses) are done by clap's value parsers, which also name it.

use ledgerbus_transport::{ReceiverConfig, SenderConfig};

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

/// A `--database`/`--sql` URL the SQL consumer understands (the error hides its password).
fn database_url(url: &str, setting: &'static str) -> Result<(), ConfigError> {
    ledgerbus_consumers::sql::DatabaseUrl::parse(url)
        .map(|_| ())
        .map_err(|error| ConfigError { setting, message: error.to_string() })
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
        let backoff = &self.idle.backoff;
        check(backoff.backoff_park_min_us <= backoff.backoff_park_max_us, "backoff-park-max-us", || {
            format!(
                "{} µs is shorter than --backoff-park-min-us ({} µs)",
                backoff.backoff_park_max_us, backoff.backoff_park_min_us
            )
        })?;
        // Everything else is the transport library's own rule; this only says which
        // flag a setting is. The ring and reorder sizes are checked with the
        // component that sets them.
        // Sealing adds a trailer, which the datagram size must leave room for (the
        // key itself is checked with the bus settings).
        let security = match (self.bus.bus_security, self.bus.keys()) {
            (BusSecurityMode::Aes256Gcm, Ok(keys)) => ledgerbus_transport::BusSecurity::Aead(keys),
            _ => ledgerbus_transport::BusSecurity::None,
        };
        let sender = SenderConfig { security: security.clone(), ..self.sender_settings(1_024) };
        let receiver = ReceiverConfig { security, ..self.receiver_settings(1, 4_096) };
        ledgerbus_transport::config::check_link(&sender, &receiver).map_err(in_flags)?;
        self.socket_options().validate(usize::from(self.mtu)).map_err(in_flags)
    }
}

/// Transport library settings and the flags that set them.
const FLAGS: [(&str, &str); 10] = [
    ("datagram_size_max", "mtu"),
    ("ring_datagrams", "ring-datagrams"),
    ("reorder_datagrams_max", "reorder-datagrams-max"),
    ("recv_buffer_size", "socket-rcvbuf"),
    ("send_buffer_size", "socket-sndbuf"),
    ("heartbeat_interval_us", "heartbeat-interval-us"),
    ("retransmit_linger_us", "retransmit-linger-us"),
    ("nak_delay_us", "nak-delay-us"),
    ("nak_backoff_max_us", "nak-backoff-max-us"),
    ("nak_retry_us", "nak-retry-us"),
];

/// The transport library's error in the command line's words: its setting as the
/// flag, and any setting its message names as a flag too.
fn in_flags(error: ledgerbus_transport::ConfigError) -> ConfigError {
    let setting =
        FLAGS.iter().find(|(name, _)| *name == error.setting).map_or(error.setting, |(_, flag)| flag);
    let message =
        FLAGS.iter().fold(error.message, |message, (name, flag)| message.replace(name, &format!("--{flag}")));
    ConfigError { setting, message }
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
        self.transport.sender_settings(self.ring_datagrams as usize).validate().map_err(in_flags)?;
        if !self.replicas.is_empty() || self.replica_id.is_some() {
            let members = self.replicas.len();
            check(matches!(members, 3 | 5), "replicas", || {
                format!("a group has 3 or 5 members, not {members} (one sequencer needs no --replicas)")
            })?;
            check(self.replica_id.is_some_and(|id| id >= 1 && id as usize <= members), "replica-id", || {
                format!("must be this member's position in --replicas, 1 to {members}")
            })?;
        }
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
        let receiver =
            self.transport.receiver_settings(self.consumer_id, self.reorder_datagrams_max as usize);
        receiver.validate().map_err(in_flags)?;
        check(self.snapshot_every > 0, "snapshot-every", || "must be at least 1".into())?;
        check(self.kind != ConsumerKind::Memory || !self.api_keys.is_empty(), "api-keys", || {
            "at least one key is required for the memory consumer's query API (or LEDGERBUS_API_KEYS)".into()
        })?;
        if self.kind == ConsumerKind::Sql {
            let Some(url) = &self.database else {
                return Err(ConfigError {
                    setting: "database",
                    message:
                        "the SQL consumer needs postgres://… or sqlite://PATH (or LEDGERBUS_SQL_DATABASE)"
                            .into(),
                });
            };
            database_url(url, "database")?;
        }
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
                if let Some(url) = &args.sql {
                    database_url(url, "sql")?;
                }
                check(args.payments > 0, "payments", || "must be at least 1".into())
            }
            Command::Sql(SqlCommand::Verify(args)) => database_url(&args.database, "database"),
            Command::Sequencer(args) => args.validate(),
            Command::Gateway(args) => args.validate(),
            Command::Consumer(args) => args.validate(),
            Command::Bench(BenchCommand::Codec(args)) => positive_seconds(args.duration, "duration"),
            Command::Bench(BenchCommand::Transport(args)) => args.validate(),
            Command::Bench(BenchCommand::Sequencer(args)) => positive_seconds(args.duration, "duration"),
            Command::Bench(BenchCommand::E2e(args)) => args.validate(),
            Command::Bench(BenchCommand::Floor(args)) => {
                positive_seconds(args.duration, "duration")?;
                check(
                    args.backoff.backoff_park_min_us <= args.backoff.backoff_park_max_us,
                    "backoff-park-min-us",
                    || "must not exceed --backoff-park-max-us".into(),
                )?;
                check(args.rate > 0, "rate", || "must be at least 1".into())
            }
            Command::Bench(BenchCommand::Hops(args)) => {
                positive_seconds(args.duration, "duration")?;
                check(args.rate > 0, "rate", || "must be at least 1".into())
            }
            Command::Bench(BenchCommand::Failover(args)) => {
                positive_seconds(args.settle, "settle")?;
                check(args.kills > 0, "kills", || "must be at least 1".into())?;
                check(args.clients > 0, "clients", || "must be at least 1".into())
            }
            Command::Bench(BenchCommand::Plot(_)) => Ok(()),
            Command::Bench(BenchCommand::Sql(args)) => {
                database_url(&args.database, "database")?;
                check(args.events > args.accounts * 2, "events", || {
                    format!(
                        "must exceed twice --accounts ({}): accounts and their funding come first",
                        args.accounts
                    )
                })?;
                check(args.accounts >= 2, "accounts", || "must be at least 2".into())?;
                check(args.rate != Some(0), "rate", || "must be at least 1".into())
            }
            Command::Replay(args) => args.validate(),
        }
    }
}
