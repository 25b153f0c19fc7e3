//! Where the log stands, as its writer publishes it: for `/status`, and for the
//! replay service's `Welcome`, which tells a replay client the session and head.

/// Where the log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogHead {
    /// Sequence of the last durable event (0 before the first).
    pub last_sequence: u64,
    /// Rolling log hash after it.
    pub state_hash: u64,
    /// The log's session id.
    pub session: u64,
}

/// What the replay service asks of the process that runs it, and tells it.
pub trait ReplayHost: Send + Sync + 'static {
    /// Where the log stands now.
    fn head(&self) -> LogHead;
    /// A client was accepted for service.
    fn served(&self);
    /// A client failed authentication.
    fn refused(&self);
}
