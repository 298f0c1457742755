//! fastedge's io_uring engine: one ring and one task queue per core.
//!
//! The ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN` (falling back to `COOP_TASKRUN`),
//! so no completion ever interrupts the running executor: completion work runs when the loop
//! enters the kernel, once per turn, with `GETEVENTS`. Each turn runs the ready tasks, turns
//! every connection's queued output into sends, submits all of it in one `io_uring_enter`
//! (which also waits, bounded by the earliest timer, when there is nothing to run), and
//! reaps the completions. Sockets accept and receive with multishot operations; received
//! bytes land in a per-core pool of provided buffers, so an idle connection holds none; where
//! the kernel has receive bundles and caps a receive's total (Linux 6.16), one receive fills
//! as many buffers as the data waiting needs.
//!
//! Tasks are `!Send` futures (`async-task`); a waker used from another thread queues the task
//! on the core's remote queue and, if the core sleeps in the kernel, signals its eventfd.

pub mod net;
mod reactor;
mod sys;
pub mod time;

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::Future,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use async_task::{Runnable, Task};

use reactor::{Reactor, Reaped};
pub use reactor::{RingSettings, TaskRun};

/// Tasks run per turn before the ring is entered again (fairness to I/O and timers).
const TASKS_PER_TURN: usize = 512;
/// Time a turn may spend running tasks before their output is submitted: cheap tasks (a
/// keep-alive request) share one submission, while output behind expensive ones (a full
/// handshake, ~200 µs of crypto) does not wait for a whole batch of them.
const TURN_TIME: Duration = Duration::from_micros(100);
/// How long a stopping engine waits for the kernel to finish cancelled operations.
const STOP_GRACE: Duration = Duration::from_secs(1);

thread_local! {
    static REACTOR: RefCell<Option<Reactor>> = const { RefCell::new(None) };
    static RUN_QUEUE: RefCell<VecDeque<Runnable>> = const { RefCell::new(VecDeque::new()) };
    static DEFERRED: RefCell<Vec<Deferred>> = const { RefCell::new(Vec::new()) };
    static ENGINE: RefCell<Option<Arc<Remote>>> = const { RefCell::new(None) };
    static ENGINE_ID: Cell<usize> = const { Cell::new(0) };
    static DETACHED: RefCell<Detached> = RefCell::new(Detached::default());
}

static NEXT_ENGINE_ID: AtomicUsize = AtomicUsize::new(1);

/// Reactor work asked for from places that may run while the reactor is borrowed (drops):
/// applied at the start of the next turn.
#[derive(Debug)]
pub(crate) enum Deferred {
    /// Cancel a multishot operation.
    Cancel(u64),
    /// A one-shot operation's future is gone.
    Abandon(u64),
    /// A receive buffer goes back to the pool.
    GiveBack(u16),
    /// A connection's descriptor, closed through the ring (at once while the engine stops;
    /// dropped unapplied, as at the very end of a stop, it closes then).
    Close(std::os::fd::OwnedFd),
}

pub(crate) fn defer(action: Deferred) {
    let _ = DEFERRED.try_with(|d| {
        if let Ok(mut d) = d.try_borrow_mut() {
            d.push(action);
        }
    });
}

/// Runs `f` with this core's reactor. Only engine threads have one.
pub(crate) fn with_reactor<R>(f: impl FnOnce(&mut Reactor) -> R) -> R {
    REACTOR.with(|r| {
        let mut reactor = r.borrow_mut();
        f(reactor
            .as_mut()
            .expect("fastedge io_uring socket used outside an io_uring engine thread"))
    })
}

/// The part of an engine other threads can reach: its remote task queue and wake-up.
#[derive(Debug)]
struct Remote {
    id: usize,
    queue: Mutex<Vec<Runnable>>,
    pending: AtomicBool,
    sleeping: AtomicBool,
    wake_fd: OwnedFd,
}

impl Remote {
    fn push(&self, runnable: Runnable) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(runnable);
        self.pending.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            sys::eventfd_signal(&self.wake_fd);
        }
    }

    fn drain_into_queue(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            let runnables =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
            RUN_QUEUE.with(|q| q.borrow_mut().extend(runnables));
        }
    }
}

/// Detached tasks, kept so a stopping engine can cancel them: a slab (a task's place is its
/// id, freed places are reused), 8 bytes a task where a map took ~28 (a connection's task is
/// detached, so this is per connection).
#[derive(Debug, Default)]
struct Detached {
    tasks: Vec<Option<Task<()>>>,
    free: Vec<u32>,
}

impl Detached {
    /// A free place for a task about to be spawned.
    fn reserve(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.tasks.push(None);
            u32::try_from(self.tasks.len() - 1).unwrap_or(u32::MAX)
        })
    }

    /// The task of place `id`, which is free again.
    fn take(&mut self, id: u32) -> Option<Task<()>> {
        let task = self.tasks.get_mut(id as usize)?.take()?;
        self.free.push(id);
        Some(task)
    }

    /// Every task (to cancel them); the slab starts empty.
    fn take_all(&mut self) -> Vec<Option<Task<()>>> {
        self.free.clear();
        std::mem::take(&mut self.tasks)
    }
}

/// One core's engine, made on the thread that runs it.
#[derive(Debug)]
pub struct Runtime {
    remote: Arc<Remote>,
    task_run: TaskRun,
}

impl Runtime {
    /// Sets up this thread's ring, buffer pool and task queue.
    pub fn new(settings: RingSettings) -> io::Result<Self> {
        if ENGINE.with(|e| e.borrow().is_some()) {
            return Err(io::Error::other(
                "this thread already runs an io_uring engine",
            ));
        }
        let wake_fd = sys::eventfd()?;
        let reactor = Reactor::new(settings, wake_fd.as_raw_fd())?;
        let task_run = reactor.task_run;
        let remote = Arc::new(Remote {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            wake_fd,
        });
        REACTOR.with(|r| *r.borrow_mut() = Some(reactor));
        ENGINE.with(|e| *e.borrow_mut() = Some(remote.clone()));
        ENGINE_ID.with(|id| id.set(remote.id));
        Ok(Self { remote, task_run })
    }

    /// How the ring runs completion work.
    pub fn task_run(&self) -> TaskRun {
        self.task_run
    }

    /// Runs `main` and every task it spawns until `main` completes; then cancels what is left
    /// and tears the engine down.
    pub fn block_on<F>(self, main: F) -> F::Output
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let main = spawn(main);
        let mut reaped = Reaped::default();
        loop {
            run_ready(TASKS_PER_TURN, Some(TURN_TIME));
            if main.is_finished() {
                break;
            }
            self.turn(&mut reaped);
        }
        let output = futures_lite::future::block_on(main);
        self.stop(&mut reaped);
        output
    }

    fn turn(&self, reaped: &mut Reaped) {
        self.remote.drain_into_queue();
        apply_deferred();
        let mut wait = if RUN_QUEUE.with(|q| q.borrow().is_empty()) {
            time::next_deadline().map(|at| at.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        if wait != Some(Duration::ZERO) {
            self.remote.sleeping.store(true, Ordering::SeqCst);
            if self.remote.pending.load(Ordering::SeqCst) {
                wait = Some(Duration::ZERO);
            }
        }
        let result = with_reactor(|r| r.turn(wait, reaped));
        self.remote.sleeping.store(false, Ordering::SeqCst);
        if let Err(error) = result {
            tracing::error!(%error, "io_uring enter failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        reaped.finish();
        time::fire(time::tick());
    }

    fn stop(self, reaped: &mut Reaped) {
        // Cancel the detached tasks; their futures are dropped when their runnables run.
        let detached = DETACHED.with(|d| d.borrow_mut().take_all());
        drop(detached);
        // Runnables other threads woke are on the remote queue: a cancelled task that was
        // already scheduled there is dropped only when its runnable runs.
        self.remote.drain_into_queue();
        run_ready(usize::MAX, None);
        apply_deferred();
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            // Again each round: a drop during the stop may have started an operation.
            with_reactor(|r| r.cancel_all());
            let _ = with_reactor(|r| r.turn(Some(Duration::from_millis(10)), reaped));
            reaped.finish();
            self.remote.drain_into_queue();
            run_ready(usize::MAX, None);
            apply_deferred();
            if with_reactor(|r| r.in_flight()) == 0 || Instant::now() >= deadline {
                break;
            }
        }
        time::clear();
        // Tasks detached during the stop (lingering drops) go too, then every queued runnable
        // (a cancelled task's future is dropped with its runnable).
        let detached = DETACHED.with(|d| d.borrow_mut().take_all());
        drop(detached);
        self.remote.drain_into_queue();
        let queue = RUN_QUEUE.with(|q| std::mem::take(&mut *q.borrow_mut()));
        drop(queue);
        ENGINE.with(|e| e.borrow_mut().take());
        ENGINE_ID.with(|id| id.set(0));
        let reactor = REACTOR.with(|r| r.borrow_mut().take());
        if let Some(reactor) = reactor {
            let left = reactor.in_flight();
            if left == 0 {
                drop(reactor);
            } else {
                // The kernel may still touch what those operations own (their buffers, the
                // receive pool): leak it all rather than free memory under it.
                tracing::warn!(left, "io_uring engine stopped with operations in flight");
                std::mem::forget(reactor);
            }
        }
        DEFERRED.with(|d| d.borrow_mut().clear());
    }
}

/// Tasks run between two looks at the clock (a clock read per task cost 1 % of a keep-alive
/// request's CPU in a profile).
const TASKS_PER_CLOCK_READ: usize = 16;

/// Runs queued tasks: at most `budget` of them, and (with `time`) until about that much time
/// has passed (the clock is read every [`TASKS_PER_CLOCK_READ`] tasks).
fn run_ready(budget: usize, time: Option<Duration>) {
    let started = time.map(|t| (Instant::now(), t));
    for k in 1..=budget {
        let Some(runnable) = RUN_QUEUE.with(|q| q.borrow_mut().pop_front()) else {
            return;
        };
        runnable.run();
        if let Some((started, time)) = started.filter(|_| k % TASKS_PER_CLOCK_READ == 0) {
            if started.elapsed() >= time {
                return;
            }
        }
    }
}

fn apply_deferred() {
    let actions = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    if actions.is_empty() {
        return;
    }
    let mut garbage = Vec::new();
    with_reactor(|r| {
        for action in actions {
            match action {
                Deferred::Cancel(user_data) => r.cancel(user_data),
                Deferred::Abandon(user_data) => garbage.extend(r.abandon(user_data)),
                Deferred::GiveBack(bid) => r.bufs.give_back(bid),
                Deferred::Close(fd) => r.close(fd),
            }
        }
    });
    drop(garbage);
}

/// Whether the calling thread runs an io_uring engine.
pub fn is_engine_thread() -> bool {
    ENGINE_ID.with(|id| id.get()) != 0
}

/// Spawns `future` on this core's engine; dropping the returned task cancels it.
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let remote = ENGINE
        .with(|e| e.borrow().clone())
        .expect("fastedge_runtime::spawn called outside an executor thread");
    let schedule = move |runnable: Runnable| {
        let local = ENGINE_ID
            .try_with(|id| id.get() == remote.id)
            .unwrap_or(false);
        if local {
            let _ = RUN_QUEUE.try_with(|q| q.borrow_mut().push_back(runnable));
        } else {
            remote.push(runnable);
        }
    };
    let (runnable, task) = async_task::spawn_local(future, schedule);
    runnable.schedule();
    task
}

/// Spawns `future` detached: it runs to completion unless the engine stops first.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    spawn_detached_internal(future);
}

pub(crate) fn spawn_detached_internal(future: impl Future<Output = ()> + 'static) {
    if !is_engine_thread() {
        return;
    }
    let id = DETACHED.with(|d| d.borrow_mut().reserve());
    let task = spawn(DetachedTask { future, id });
    DETACHED.with(|d| {
        let mut d = d.borrow_mut();
        match d.tasks.get_mut(id as usize) {
            Some(place) if !task.is_finished() => *place = Some(task),
            // Ended already: its place is free again, and `task` (finished) is dropped.
            Some(_) => d.free.push(id),
            None => {}
        }
    });
}

pin_project_lite::pin_project! {
    /// A detached task's future, which forgets the task's handle when it ends. A future type
    /// of its own, not an `async` block awaiting `future`: such a block stores `future` twice
    /// (as captured and as awaited), and a connection's task lives as long as the connection.
    struct DetachedTask<F> {
        #[pin]
        future: F,
        id: u32,
    }
}

impl<F: Future<Output = ()>> Future for DetachedTask<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        std::task::ready!(this.future.poll(cx));
        let own = DETACHED.try_with(|d| d.borrow_mut().take(*this.id));
        if let Ok(Some(own)) = own {
            own.detach();
        }
        std::task::Poll::Ready(())
    }
}

#[cfg(test)]
mod tests;
