//! Timers of the io_uring engine: one ordered map per core, checked once per loop turn; the
//! ring's wait is bounded by the earliest deadline (no timeout operation per sleep).

use std::{
    cell::RefCell,
    collections::BTreeMap,
    future::Future,
    num::NonZeroU64,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// By deadline, then by the id of the sleep (ids are unique on this core).
    entries: BTreeMap<(Instant, NonZeroU64), Waker>,
    last_id: u64,
}

thread_local! {
    static TIMERS: RefCell<Timers> = RefCell::new(Timers::default());
    /// The time at the start of this loop turn (see [`now`]).
    static NOW: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The time as of this loop turn: read once per turn instead of once per timer poll (a clock
/// read per request showed in the keep-alive profile). Outside an engine, the clock.
pub fn now() -> Instant {
    NOW.with(|n| n.get()).unwrap_or_else(Instant::now)
}

/// Reads the clock for the turn that starts.
pub(crate) fn tick() -> Instant {
    let now = Instant::now();
    NOW.with(|n| n.set(Some(now)));
    now
}

/// The earliest deadline on this core.
pub(crate) fn next_deadline() -> Option<Instant> {
    TIMERS.with(|t| t.borrow().entries.keys().next().map(|(at, _)| *at))
}

/// Wakes every timer due at `now`.
pub(crate) fn fire(now: Instant) {
    let mut due = Vec::new();
    TIMERS.with(|t| {
        let mut timers = t.borrow_mut();
        while let Some(entry) = timers.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
    });
    for waker in due {
        waker.wake();
    }
}

/// Forgets every timer (the engine is stopping); the wakers are dropped outside the borrow.
pub(crate) fn clear() {
    let entries = TIMERS.with(|t| std::mem::take(&mut t.borrow_mut().entries));
    drop(entries);
}

/// Completes at `deadline`.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    /// While registered: its id in the core's timers (the key is the deadline and the id).
    id: Option<NonZeroU64>,
}

impl Sleep {
    /// A timer that completes at `deadline` (at once if it has passed); it needs the engine of the
    /// calling thread to be polled.
    pub fn until(deadline: Instant) -> Self {
        Self { deadline, id: None }
    }

    /// When it completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let id = self.id;
        let id = TIMERS.with(|t| {
            let mut timers = t.borrow_mut();
            match id.and_then(|id| timers.entries.get_mut(&(deadline, id)).map(|w| (id, w))) {
                Some((id, waker)) => {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                    id
                }
                None => {
                    timers.last_id += 1;
                    let id = NonZeroU64::new(timers.last_id).unwrap_or(NonZeroU64::MIN);
                    timers.entries.insert((deadline, id), cx.waker().clone());
                    id
                }
            }
        });
        self.id = Some(id);
        Poll::Pending
    }
}

impl Sleep {
    fn unregister(&mut self) {
        if let Some(id) = self.id.take() {
            let key = (self.deadline, id);
            // `try_with`/`try_borrow_mut`: a sleep dropped while the thread's timers are torn
            // down or borrowed leaves its entry, which then fires into a finished task.
            let removed = TIMERS
                .try_with(|t| {
                    t.try_borrow_mut()
                        .ok()
                        .and_then(|mut t| t.entries.remove(&key))
                })
                .ok()
                .flatten();
            drop(removed);
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    // The clock, not the turn's time: a sleep never ends before `duration` has passed.
    Sleep::until(Instant::now() + duration)
}

/// Runs `future` until it completes (`Ok`) or `after` passes (`Err(())`).
pub async fn timeout<T>(after: Duration, future: impl Future<Output = T>) -> Result<T, ()> {
    futures_lite::future::or(async { Ok(future.await) }, async {
        sleep(after).await;
        Err(())
    })
    .await
}
