//! Open-loop pacing: releases each request at its scheduled time, inside the load thread.
//!
//! Workers wait on a [`Pacer`] for their request's index; a pacing task on the same thread sleeps
//! until the next request is due and releases every request due by then, waking its workers
//! without crossing threads. The sleep must be precise: the Tokio timer ticks in milliseconds, and
//! a request sent up to 1 ms after its time counts that millisecond as latency. On Linux the task
//! sleeps on a `timerfd` registered with the runtime's own event loop (microseconds, no extra
//! thread); elsewhere it falls back to the Tokio timer.
//!
//! A separate pacer thread sleeping with `std::thread::sleep` was as precise, but every release
//! woke the load thread from another thread: at 10,000 requests/s that was 10,000 cross-thread
//! wake-ups a second, a fifth of the generator's CPU, and one more scheduling delay inside every
//! measured latency on a busy machine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// The pacing task's shortest sleep. Waking for every request at 25,000/s (every 40 µs) cost the
/// generator and the server a third more CPU per request than waking every 100 µs and releasing
/// the 2–3 requests due; latency is still measured from each request's own time, so this slack
/// is counted, never hidden.
pub(super) const TICK: Duration = Duration::from_micros(100);

/// Which requests are due. Workers wait here for their index; [`pace`] advances `released` and
/// wakes them.
#[derive(Default)]
pub(super) struct Pacer {
    /// Requests `0..released` are due.
    released: AtomicU64,
    /// Workers waiting, by request index.
    waiting: parking_lot::Mutex<BTreeMap<u64, Waker>>,
}

impl Pacer {
    pub(super) async fn until_released(&self, i: u64) {
        std::future::poll_fn(|cx| {
            if self.released.load(Ordering::Acquire) > i {
                return Poll::Ready(());
            }
            let mut waiting = self.waiting.lock();
            waiting.insert(i, cx.waker().clone());
            // `release` stores before it takes the lock: seen here, or this waker is woken.
            if self.released.load(Ordering::Acquire) > i {
                waiting.remove(&i);
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }

    pub(super) fn release(&self, upto: u64) {
        self.released.fetch_max(upto, Ordering::AcqRel);
        let ready = {
            let mut waiting = self.waiting.lock();
            let later = waiting.split_off(&upto);
            std::mem::replace(&mut *waiting, later)
        };
        ready.into_values().for_each(Waker::wake);
    }
}

/// Releases request `i` at `due(i)` (`None`: the schedule has ended, release everything) for
/// requests scheduled at `rate` per second from `start`, waking at most every [`TICK`].
pub(super) async fn pace(
    pacer: &Pacer,
    start: Instant,
    rate: u64,
    due: impl Fn(u64) -> Option<Instant>,
) -> std::io::Result<()> {
    let mut timer = Timer::new()?;
    let mut last = Instant::now();
    loop {
        let next = pacer.released.load(Ordering::Acquire);
        let Some(at) = due(next) else {
            pacer.release(u64::MAX);
            return Ok(());
        };
        if let Err(e) = timer.sleep_until(at.max(last + TICK)).await {
            pacer.release(u64::MAX);
            return Err(e);
        }
        last = Instant::now();
        let elapsed = last.saturating_duration_since(start).as_nanos();
        let due_now = elapsed * u128::from(rate) / 1_000_000_000 + 1;
        let due_now = u64::try_from(due_now).unwrap_or(u64::MAX);
        pacer.release(due_now.max(next + 1));
    }
}

/// A one-shot timer with microsecond precision on the runtime's event loop.
#[cfg(target_os = "linux")]
struct Timer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

#[cfg(target_os = "linux")]
impl Timer {
    fn new() -> std::io::Result<Timer> {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which alone holds it until it drops,
        // so the descriptor stays open and the same for the registration's whole life.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(std::io::Error::from)?;
        Ok(Timer { fd })
    }

    async fn sleep_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        let value = Timespec {
            tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(read) => return read.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The Tokio timer: millisecond ticks, so requests may leave up to a millisecond late (and
/// their latency says so).
#[cfg(not(target_os = "linux"))]
struct Timer;

#[cfg(not(target_os = "linux"))]
impl Timer {
    fn new() -> std::io::Result<Timer> {
        Ok(Timer)
    }

    async fn sleep_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        tokio::time::sleep_until(deadline).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_worker_wakes_once_its_request_is_released() {
        let pacer = Arc::new(Pacer::default());
        let wait = |i| {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.until_released(i).await })
        };
        let (first, sixth) = (wait(0), wait(5));
        tokio::task::yield_now().await;
        pacer.release(1);
        first.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!sixth.is_finished());
        pacer.release(6);
        sixth.await.unwrap();
        // Released before it waits: no wait at all.
        wait(3).await.unwrap();
    }

    /// How late a wake-up may be on a loaded machine (a starved test thread, a busy CI runner):
    /// generous, yet a pacer that releases at the end only, or a timer that takes microseconds
    /// for milliseconds, is later still.
    const LATE: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn requests_are_released_at_their_time_and_all_at_the_end() {
        let pacer = Pacer::default();
        let start = Instant::now();
        let (rate, gap) = (5, Duration::from_millis(200));
        // Five requests 200 ms apart, then the schedule ends.
        let due = |i: u64| (i < 5).then(|| start + gap * i as u32);
        let watch = async {
            pacer.until_released(0).await;
            let first = start.elapsed();
            pacer.until_released(4).await;
            let fifth = start.elapsed();
            pacer.until_released(u64::MAX - 1).await;
            (first, fifth)
        };
        let (paced, (first, fifth)) = tokio::join!(pace(&pacer, start, rate, due), watch);
        paced.unwrap();
        // The first leaves at once, long before the fifth is due: released one by one.
        assert!(first < gap * 4, "{first:?}");
        assert!(fifth >= gap * 4, "{fifth:?}");
        assert!(fifth < gap * 4 + LATE, "{fifth:?}");
    }

    #[tokio::test]
    async fn the_timer_sleeps_until_its_deadline() {
        let mut timer = Timer::new().unwrap();
        for wait in [
            Duration::ZERO,
            Duration::from_micros(300),
            Duration::from_millis(3),
            Duration::from_millis(50),
        ] {
            let before = Instant::now();
            timer.sleep_until(before + wait).await.unwrap();
            let slept = before.elapsed();
            assert!(slept >= wait, "{wait:?}: {slept:?}");
            assert!(slept < wait + LATE, "{wait:?}: {slept:?}");
        }
    }
}
