//! Open-loop pacing: sends at their intended times from a dedicated thread, so the
//! generator's own lateness never hides in the latencies it measures.

use std::time::{Duration, Instant};

/// Linux lets a sleeping thread's timer fire up to its "slack" late (50 µs by
/// default) to batch wake-ups; for a pacing thread every µs of that would count as
/// request latency. Sets the calling thread's slack to 1 ns.
pub fn tighten_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

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
