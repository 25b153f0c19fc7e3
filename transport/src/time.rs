//! Time as a plain value. The protocol core never reads a clock: the driver passes
//! `now` into every call, so the simulator can run hours of traffic in milliseconds
//! and every run replays exactly (docs/architecture.md, "Design rules" 2).

use core::ops::{Add, Sub};

/// A point on a monotonic clock, in nanoseconds from an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(pub u64);

impl MonoTime {
    /// The origin.
    pub const ZERO: MonoTime = MonoTime(0);

    /// Nanoseconds since the origin.
    #[inline]
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + us` microseconds, saturating instead of wrapping.
    #[inline]
    pub fn plus_us(self, us: u64) -> MonoTime {
        MonoTime(self.0.saturating_add(us.saturating_mul(1_000)))
    }

    /// Nanoseconds from `earlier` to `self`, zero if `earlier` is later.
    #[inline]
    pub fn nanos_since(self, earlier: MonoTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<u64> for MonoTime {
    type Output = MonoTime;

    /// Adds nanoseconds, saturating.
    #[inline]
    fn add(self, nanos: u64) -> MonoTime {
        MonoTime(self.0.saturating_add(nanos))
    }
}

impl Sub for MonoTime {
    type Output = u64;

    /// Nanoseconds between two times, saturating at zero.
    #[inline]
    fn sub(self, earlier: MonoTime) -> u64 {
        self.nanos_since(earlier)
    }
}

/// Reads the real monotonic clock. Only drivers call this; the core never does.
pub fn monotonic_now() -> MonoTime {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // u64 nanoseconds last 584 years.
    MonoTime(origin.elapsed().as_nanos() as u64)
}
