//! Idle strategies on a tokio runtime: how the client library's and the gateway's
//! threads wait for their sockets (`--idle-strategy`, see `ledgerbus_transport::idle`).
//!
//! A tokio runtime waits for sockets in one `epoll_wait`, so a thread that sleeps
//! there pays a wake-up for the next message. [`keep_warm`] is a task that, after
//! activity, keeps the runtime polling instead: each `yield_now` makes a
//! current-thread runtime look at its sockets without blocking (tokio polls its I/O
//! driver before it resumes yielded tasks). After the backoff's spins and yields it
//! parks (a timer, with the runtime free to wake for input), then blocks until the
//! next [`touch`]. Code that reads sockets calls [`touch`] when it got bytes.
//!
//! It needs a current-thread runtime ([`runtime`] builds the right one): in tokio's
//! multi-threaded scheduler the I/O driver belongs to whichever worker parked on it,
//! so a task polling on another worker would not see the sockets at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ledgerbus_transport::idle::{IdleStrategy, Idler, Step};
use tokio::sync::Notify;

/// Socket reads seen, process-wide; a change means "work was found".
static ACTIVITY: AtomicU64 = AtomicU64::new(0);
/// Whether the keep-warm task is waiting for activity.
static WAITING: AtomicBool = AtomicBool::new(false);

fn wake() -> &'static Notify {
    static WAKE: OnceLock<Notify> = OnceLock::new();
    WAKE.get_or_init(Notify::new)
}

/// Records that a socket delivered bytes; wakes the keep-warm task if it waits. An
/// atomic add when nobody waits: cheap enough for every read.
pub fn touch() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
    if WAITING.load(Ordering::Relaxed) && WAITING.swap(false, Ordering::AcqRel) {
        wake().notify_one();
    }
}

/// Keeps the current-thread runtime it runs on polling its sockets as `strategy`
/// says; returns at once for `block`. Spawn it once per runtime.
pub async fn keep_warm(strategy: IdleStrategy) {
    if strategy == IdleStrategy::Block {
        return;
    }
    let mut idler = Idler::new(strategy);
    let mut seen = ACTIVITY.load(Ordering::Relaxed);
    loop {
        let now = ACTIVITY.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            idler.reset();
        }
        match idler.next_step() {
            Step::Spin => tokio::task::yield_now().await,
            Step::Yield => {
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
            Step::Park(most) => wait_for_activity(seen, Some(most)).await,
            Step::Block => wait_for_activity(seen, None).await,
        }
    }
}

/// Lets the runtime block in `epoll_wait` until a [`touch`] after `seen`, or `most`
/// (tokio's timers have 1 ms granularity, so a park lasts at least that unless input
/// ends it).
async fn wait_for_activity(seen: u64, most: Option<Duration>) {
    WAITING.store(true, Ordering::Release);
    // A touch between the caller's check and the flag would otherwise be missed.
    if ACTIVITY.load(Ordering::Acquire) != seen {
        WAITING.store(false, Ordering::Release);
        return;
    }
    match most {
        Some(most) => {
            let _ = tokio::time::timeout(most, wake().notified()).await;
        }
        None => wake().notified().await,
    }
    WAITING.store(false, Ordering::Release);
}

/// A runtime for `strategy`: `block` gets a multi-threaded one with `workers`
/// threads; `backoff` and `spin` a current-thread one (see the module docs), whose
/// [`keep_warm`] task the caller spawns with `runtime.spawn(keep_warm(strategy))`.
pub fn runtime(strategy: IdleStrategy, workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match strategy {
        IdleStrategy::Block => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
        }
        IdleStrategy::Backoff(_) | IdleStrategy::Spin => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_wakes_the_blocked_keep_warm_task_and_block_returns_at_once() {
        let runtime = runtime(IdleStrategy::Backoff(Default::default()), 1).unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), keep_warm(IdleStrategy::Block))
                .await
                .expect("block needs no task");
            let seen = ACTIVITY.load(Ordering::Relaxed);
            let waiting = tokio::spawn(wait_for_activity(seen, None));
            while !WAITING.load(Ordering::Acquire) {
                tokio::task::yield_now().await;
            }
            touch();
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("the touch ended the wait")
                .unwrap();
            assert!(!WAITING.load(Ordering::Acquire));
        });
    }
}
