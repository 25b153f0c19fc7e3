//! Counters of each state machine, for metrics and tests. Plain integers: the driver
//! copies them into Prometheus gauges; nothing here allocates after construction.

use hdrhistogram::Histogram;

/// What a [`Sender`](crate::Sender) has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Events accepted by `publish`.
    pub events_published: u64,
    /// New data datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams sent again in answer to NAKs.
    pub retransmits: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// NAKs received.
    pub naks_received: u64,
    /// NAK ranges not retransmitted because they were repaired within the linger time.
    pub naks_deduplicated: u64,
    /// NAKs for nothing sent (empty or in the future).
    pub naks_ignored: u64,
    /// NAKs from addresses that are neither configured nor known receivers.
    pub naks_unknown_source: u64,
    /// Retransmissions refused because the requester's rate budget was spent.
    pub naks_rate_limited: u64,
    /// "Not retransmittable" replies sent.
    pub nak_unavailable_sent: u64,
    /// Retransmissions dropped because the queue was full (the receiver will retry).
    pub retransmit_queue_full: u64,
    /// Status messages received.
    pub status_received: u64,
    /// Receivers not tracked because the table was full of live ones.
    pub receivers_dropped: u64,
    /// Datagrams that failed to decode (truncated, bad CRC, …).
    pub bad_packets: u64,
    /// Datagrams dropped on a secured bus: bad tag, unknown key, replayed control.
    pub unauthenticated: u64,
    /// Datagrams for another stream.
    pub wrong_stream: u64,
    /// Datagrams for another session.
    pub wrong_session: u64,
    /// Well-formed datagrams a sender does not expect (data, heartbeats).
    pub unexpected_packets: u64,
}

/// What a [`Receiver`](crate::Receiver) has done.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    /// Events delivered in order.
    pub events_delivered: u64,
    /// Data datagrams accepted (new or partly new).
    pub datagrams_received: u64,
    /// Data datagrams that held nothing new.
    pub duplicate_datagrams: u64,
    /// Datagrams held for later because of a gap.
    pub out_of_order_datagrams: u64,
    /// Out-of-order datagrams dropped because the reorder buffer was full.
    pub reorder_overflow: u64,
    /// NAKs sent.
    pub naks_sent: u64,
    /// Status messages sent.
    pub status_sent: u64,
    /// Heartbeats received.
    pub heartbeats_received: u64,
    /// Datagrams that failed to decode (truncated, bad CRC, …).
    pub bad_packets: u64,
    /// Datagrams dropped on a secured bus: bad tag, unknown key, replayed control.
    pub unauthenticated: u64,
    /// Datagrams for another stream.
    pub wrong_stream: u64,
    /// Datagrams of a session other than the current one.
    pub wrong_session: u64,
    /// Data datagrams whose events do not carry the sequences the header promises.
    pub inconsistent_packets: u64,
    /// Well-formed datagrams a receiver does not expect (NAKs, status).
    pub unexpected_packets: u64,
    /// Gaps that were repaired.
    pub gaps_repaired: u64,
    /// Time from a gap being seen to its repair, in nanoseconds.
    pub repair_latency_ns: Histogram<u64>,
}

impl Default for ReceiverStats {
    fn default() -> Self {
        ReceiverStats {
            events_delivered: 0,
            datagrams_received: 0,
            duplicate_datagrams: 0,
            out_of_order_datagrams: 0,
            reorder_overflow: 0,
            naks_sent: 0,
            status_sent: 0,
            heartbeats_received: 0,
            bad_packets: 0,
            unauthenticated: 0,
            wrong_stream: 0,
            wrong_session: 0,
            inconsistent_packets: 0,
            unexpected_packets: 0,
            gaps_repaired: 0,
            // 1 µs .. 100 s at 3 significant digits; allocated once, here.
            repair_latency_ns: Histogram::new_with_bounds(1_000, 100_000_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }
}
