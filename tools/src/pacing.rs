//! Open-loop pacing: sends at their intended times from a dedicated thread, so the
//! generator's own lateness never hides in the latencies it measures.

use std::time::{Duration, Instant};

/// A pacing thread's timer must fire on time: every µs of Linux's timer slack would
/// count as request latency. The transport's idle strategy needs the same.
pub use ledgerbus_transport::idle::tighten_timer_slack;

/// When an open-loop connection sends.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Time between two sends.
    pub interval: Duration,
    /// No send at or after this.
    pub deadline: Instant,
}

/// Paces one connection's requests from a dedicated OS thread: `std::thread::sleep`
/// wakes within tens of microseconds, where the async timer ticks by the millisecond
/// and would add up to a millisecond of the generator's own lateness to every request.
/// Calls `due` with each intended send time until the deadline or until it says stop.
pub fn pace(schedule: Schedule, mut due: impl FnMut(Instant) -> bool) {
    tighten_timer_slack();
    let start = Instant::now();
    let mut k: u32 = 0;
    loop {
        let intended = start + schedule.interval * k;
        if intended >= schedule.deadline {
            return;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if !due(intended) {
            return;
        }
        k += 1;
    }
}
