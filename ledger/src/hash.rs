//! The rolling log hash: every replica that applies the same events in the same
//! order holds the same value, so comparing two numbers compares two replicas.

/// A hash chained over event frames: `h = xxh3(frame, seed = h)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollingHash(u64);

impl RollingHash {
    /// The hash of an empty log.
    pub const EMPTY: RollingHash = RollingHash(0);

    /// Folds in the exact bytes of the next event frame.
    #[inline]
    pub fn update(&mut self, frame: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(frame, self.0);
    }

    /// The current value.
    #[inline]
    pub fn value(&self) -> u64 {
        self.0
    }

    /// Resumes from a stored value (snapshots, disk consumer restart).
    pub fn from_value(value: u64) -> RollingHash {
        RollingHash(value)
    }
}
