//! One coarse timer per worker thread for its sessions' keepalive rounds.
//!
//! A tokio `Sleep` per session is about 110 bytes held by every idle session, most of its
//! `Vigil`. Here a session waiting for its next round keeps a [`Deadline`] (16 bytes) and
//! its waker sits in the thread's wheel until the round is due; one driver task per worker
//! thread wakes what is due, [`TICK`] by [`TICK`], while anything waits.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// The wheel's resolution: a round is due at most this much late.
pub const TICK: Duration = Duration::from_millis(50);

/// The sessions of one worker thread waiting for a round.
#[derive(Default)]
struct Wheel {
    /// Wakers by registration number (never reused, so a stale number finds nothing).
    waiting: HashMap<u64, Waker>,
    /// Registration numbers by the tick they are due at.
    due: BTreeMap<u64, Vec<u64>>,
    /// The last registration number given out.
    last: u64,
    /// Whether the thread's driver task runs.
    driving: bool,
}

thread_local! {
    static WHEEL: RefCell<Wheel> = RefCell::new(Wheel::default());
    static EPOCH: Instant = Instant::now();
}

/// `period` in wheel ticks, rounded up (a period beyond `u32::MAX` ticks, six years, is
/// cut to it).
pub fn ticks(period: Duration) -> u32 {
    let ticks = period.as_millis().div_ceil(TICK.as_millis());
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Ticks since the thread's first look at its wheel.
fn now_tick() -> u64 {
    EPOCH.with(|epoch| {
        let ticks = epoch.elapsed().as_millis() / TICK.as_millis();
        u64::try_from(ticks).unwrap_or(u64::MAX)
    })
}

/// A moment a session waits for on its worker thread's wheel.
#[derive(Debug)]
pub struct Deadline {
    /// The tick it is due at.
    due: u64,
    /// Its registration in the wheel while its waker is there, else 0 (numbers start
    /// at 1; no `Option`, which would double the size of an idle session's deadline).
    registration: u64,
}

impl Deadline {
    /// `period` from now (at least one tick).
    pub fn after(period: Duration) -> Deadline {
        Deadline::after_ticks(ticks(period))
    }

    /// `ticks` wheel ticks from now (at least one).
    pub fn after_ticks(ticks: u32) -> Deadline {
        Deadline {
            due: now_tick().saturating_add(u64::from(ticks.max(1))),
            registration: 0,
        }
    }

    /// `Ready` once due; otherwise the task is woken when it is (registered once, with
    /// the waker of the first poll: a session's task keeps its waker).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if now_tick() >= self.due {
            self.forget();
            return Poll::Ready(());
        }
        if self.registration == 0 {
            let due = self.due;
            self.registration = WHEEL.with(|wheel| wheel.borrow_mut().insert(due, cx.waker()));
        }
        Poll::Pending
    }

    /// Takes the waker out of the wheel (a closed session's task is not kept alive by it).
    fn forget(&mut self) {
        let registration = std::mem::take(&mut self.registration);
        if registration != 0 {
            // Gone at thread exit: nothing left to take out then.
            let _ = WHEEL.try_with(|wheel| wheel.borrow_mut().waiting.remove(&registration));
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.forget();
    }
}

impl Wheel {
    /// Registers `waker` for tick `due`, starting the thread's driver if it is idle.
    fn insert(&mut self, due: u64, waker: &Waker) -> u64 {
        self.last += 1;
        let registration = self.last;
        self.waiting.insert(registration, waker.clone());
        self.due.entry(due).or_default().push(registration);
        if !self.driving {
            self.driving = true;
            actix_rt::spawn(drive());
        }
        registration
    }

    /// Takes out the wakers due by `now`; the driver stops once nothing waits any more
    /// (`driving` is then false).
    fn take_due(&mut self, now: u64) -> Vec<Waker> {
        let mut woken = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > now {
                break;
            }
            for registration in entry.remove() {
                woken.extend(self.waiting.remove(&registration));
            }
        }
        if self.waiting.is_empty() {
            // Registrations forgotten before they were due leave their numbers behind.
            self.due.clear();
            self.driving = false;
        }
        if self.waiting.capacity() > 4 * self.waiting.len() + 1024 {
            self.waiting.shrink_to_fit();
        }
        woken
    }
}

/// The thread's driver: wakes what is due every [`TICK`] while anything waits.
async fn drive() {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_tick();
        let (woken, driving) = WHEEL.with(|wheel| {
            let mut wheel = wheel.borrow_mut();
            (wheel.take_due(now), wheel.driving)
        });
        for waker in woken {
            waker.wake();
        }
        if !driving {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[actix_rt::test]
    async fn a_deadline_is_ready_after_its_period_and_not_before() {
        let started = Instant::now();
        let mut deadline = Deadline::after(Duration::from_millis(120));
        poll_fn(|cx| deadline.poll(cx)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "ready after {took:?}");
        assert!(
            took < Duration::from_millis(120) + 4 * TICK,
            "ready after {took:?}"
        );
    }

    #[actix_rt::test]
    async fn a_dropped_deadline_leaves_no_waker_behind_and_the_driver_stops() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut deadline = Deadline::after(Duration::from_millis(60));
        assert!(deadline.poll(&mut cx).is_pending());
        assert!(deadline.poll(&mut cx).is_pending(), "registered once");
        assert_eq!(WHEEL.with(|w| w.borrow().waiting.len()), 1);
        drop(deadline);
        assert_eq!(WHEEL.with(|w| w.borrow().waiting.len()), 0);
        tokio::time::sleep(Duration::from_millis(60) + 3 * TICK).await;
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "never woken");
        assert!(!WHEEL.with(|w| w.borrow().driving), "the driver stopped");
    }

    #[actix_rt::test]
    async fn every_waiting_task_is_woken_once_when_due() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut deadlines: Vec<Deadline> = (1..=3).map(|i| Deadline::after(TICK * i)).collect();
        for deadline in &mut deadlines {
            assert!(deadline.poll(&mut cx).is_pending());
        }
        tokio::time::sleep(TICK * 6).await;
        assert_eq!(count.0.load(Ordering::Relaxed), 3);
        for deadline in &mut deadlines {
            assert!(deadline.poll(&mut cx).is_ready());
        }
    }
}
