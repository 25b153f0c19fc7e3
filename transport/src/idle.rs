//! How a thread waits when it has nothing to do, in Aeron's vocabulary: `block` (sleep
//! in the kernel until something arrives: no CPU while idle, but the wake-up costs tens
//! of microseconds on a VM), `spin` (never sleep: the lowest latency, a whole core
//! always), and `backoff` (spin a little, then yield, then park for a time that doubles
//! from `park_min` to `park_max`: close to spinning under load, close to nothing when
//! idle). A thread that polls calls [`Idler::idle`] after a turn that found no work and
//! [`Idler::reset`] after one that did.

use std::time::Duration;

/// Which way to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Sleep in a blocking system call until work arrives.
    Block,
    /// Spin, yield, then park with a growing period.
    Backoff(Backoff),
    /// Never sleep.
    Spin,
}

/// The `backoff` strategy's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Empty turns spent spinning before yielding.
    pub spins: u32,
    /// Empty turns spent yielding the core before parking.
    pub yields: u32,
    /// First park.
    pub park_min: Duration,
    /// Longest park (the park doubles up to it).
    pub park_max: Duration,
    /// After parking this long in a row, block until input instead.
    pub block_after: Duration,
}

impl Default for Backoff {
    /// Aeron's `BackoffIdleStrategy` defaults (10 spins, 5 yields, parks of 1 µs
    /// growing to 1 ms), then blocking after 10 ms of parks.
    fn default() -> Self {
        Backoff {
            spins: 10,
            yields: 5,
            park_min: Duration::from_micros(1),
            park_max: Duration::from_millis(1),
            block_after: Duration::from_millis(10),
        }
    }
}

impl std::str::FromStr for IdleStrategy {
    type Err = String;

    /// `block`, `spin`, or `backoff` (default steps).
    fn from_str(text: &str) -> Result<IdleStrategy, String> {
        match text {
            "block" => Ok(IdleStrategy::Block),
            "spin" => Ok(IdleStrategy::Spin),
            "backoff" => Ok(IdleStrategy::Backoff(Backoff::default())),
            other => Err(format!("{other}: block, backoff or spin")),
        }
    }
}

impl std::fmt::Display for IdleStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdleStrategy::Block => "block",
            IdleStrategy::Backoff(_) => "backoff",
            IdleStrategy::Spin => "spin",
        })
    }
}

/// What the next empty turn does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Tell the CPU we are spinning and poll again.
    Spin,
    /// Give the core to another thread, then poll again.
    Yield,
    /// Wait for input at most this long, then poll again.
    Park(Duration),
    /// Wait for input as long as the thread's own deadlines allow.
    Block,
}

/// The state of a polling thread's waiting (for `spin` and `backoff`; a `block`
/// thread waits in its system call instead).
#[derive(Debug, Clone)]
pub struct Idler {
    strategy: IdleStrategy,
    backoff: Backoff,
    empty_turns: u64,
    park: Duration,
    /// Parked since the last turn with work.
    parked: Duration,
    /// Whether this thread's timer slack was tightened (on its first park).
    slack_tightened: bool,
}

/// Linux lets a sleeping thread's timer fire up to its "slack" late (50 µs by default)
/// to merge wake-ups, which turns a 1 µs park into a ~55 µs one (measured with
/// `bench floor`) and adds as much to a pacing thread's sends. Sets the calling
/// thread's slack to 1 ns.
pub fn tighten_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes the calling thread's timer slack.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

impl Idler {
    /// An idler for `strategy`.
    pub fn new(strategy: IdleStrategy) -> Idler {
        let backoff = match strategy {
            IdleStrategy::Backoff(backoff) => backoff,
            IdleStrategy::Block | IdleStrategy::Spin => Backoff::default(),
        };
        Idler {
            strategy,
            backoff,
            empty_turns: 0,
            park: backoff.park_min,
            parked: Duration::ZERO,
            slack_tightened: false,
        }
    }

    /// The strategy this idler follows.
    pub fn strategy(&self) -> IdleStrategy {
        self.strategy
    }

    /// The step after one more empty turn (pure: tests follow the progression).
    pub fn next_step(&mut self) -> Step {
        match self.strategy {
            IdleStrategy::Block => return Step::Block,
            IdleStrategy::Spin => return Step::Spin,
            IdleStrategy::Backoff(_) => {}
        }
        self.empty_turns += 1;
        let spins = u64::from(self.backoff.spins);
        if self.empty_turns <= spins {
            return Step::Spin;
        }
        if self.empty_turns <= spins + u64::from(self.backoff.yields) {
            return Step::Yield;
        }
        if self.parked >= self.backoff.block_after {
            return Step::Block;
        }
        let park = self.park;
        self.parked += park;
        self.park = (self.park * 2).min(self.backoff.park_max);
        Step::Park(park)
    }

    /// Waits as the strategy says after a turn that found no work: spins and yields
    /// here; parks and blocks through `wait_for_input`, given the most to wait
    /// (`Some(park)`) or `None` (block: until input or the caller's own deadline).
    pub fn idle_on<E>(
        &mut self,
        wait_for_input: impl FnOnce(Option<Duration>) -> Result<(), E>,
    ) -> Result<(), E> {
        match self.next_step() {
            Step::Spin => std::hint::spin_loop(),
            Step::Yield => std::thread::yield_now(),
            Step::Park(duration) => {
                // The thread that parks is the one that calls this: tighten its slack
                // once, so that a park lasts what it says.
                if !self.slack_tightened {
                    tighten_timer_slack();
                    self.slack_tightened = true;
                }
                wait_for_input(Some(duration))?;
            }
            Step::Block => wait_for_input(None)?,
        }
        Ok(())
    }

    /// A turn found work: the next wait starts over from spinning.
    pub fn reset(&mut self) {
        self.empty_turns = 0;
        self.park = self.backoff.park_min;
        self.parked = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_spins_then_yields_then_parks_doubling_to_the_cap() {
        let backoff = Backoff {
            spins: 2,
            yields: 1,
            park_min: Duration::from_micros(10),
            park_max: Duration::from_micros(35),
            block_after: Duration::from_micros(100),
        };
        let mut idler = Idler::new(IdleStrategy::Backoff(backoff));
        let steps: Vec<Step> = (0..9).map(|_| idler.next_step()).collect();
        let park = |us| Step::Park(Duration::from_micros(us));
        assert_eq!(
            steps,
            [
                Step::Spin,
                Step::Spin,
                Step::Yield,
                park(10),
                park(20),
                park(35),
                park(35),
                Step::Block,
                Step::Block
            ],
            "blocks once 100 µs were parked"
        );
        idler.reset();
        assert_eq!(idler.next_step(), Step::Spin, "work found: back to spinning");
        assert_eq!((0..3).map(|_| idler.next_step()).last(), Some(park(10)), "and parking from the shortest");
    }

    #[test]
    fn spin_never_sleeps_block_always_blocks_and_names_parse() {
        let mut idler = Idler::new(IdleStrategy::Spin);
        assert!((0..1_000).all(|_| idler.next_step() == Step::Spin));
        let mut idler = Idler::new(IdleStrategy::Block);
        assert!((0..10).all(|_| idler.next_step() == Step::Block));
        let mut waits = Vec::new();
        idler
            .idle_on(|wait| -> Result<(), ()> {
                waits.push(wait);
                Ok(())
            })
            .unwrap();
        assert_eq!(waits, [None], "a block waits for input without a park");
        for name in ["block", "backoff", "spin"] {
            assert_eq!(name.parse::<IdleStrategy>().unwrap().to_string(), name);
        }
        assert!("busy".parse::<IdleStrategy>().is_err());
    }
}
