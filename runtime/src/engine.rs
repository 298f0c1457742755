//! The engine facade: which engine runs this thread's tasks, and the task, timer and socket
//! entry points that dispatch to it. Code above the runtime names neither engine.

use std::{
    cell::Cell,
    fmt,
    future::Future,
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
    time::Duration,
};

/// The executor behind the facade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// fastedge's own io_uring engine (`DEFER_TASKRUN`, multishot accept and receive,
    /// provided buffers, one submission per loop turn). The default.
    #[default]
    #[serde(alias = "io_uring", alias = "io-uring")]
    Uring,
    /// glommio 0.9, for comparison and for embedding in glommio applications.
    Glommio,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Uring => "uring",
            Engine::Glommio => "glommio",
        })
    }
}

/// An engine name that is neither `uring` nor `glommio`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown engine {0:?} (expected \"uring\" or \"glommio\")")]
pub struct UnknownEngine(String);

impl FromStr for Engine {
    type Err = UnknownEngine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uring" | "io_uring" | "io-uring" => Ok(Engine::Uring),
            "glommio" => Ok(Engine::Glommio),
            other => Err(UnknownEngine(other.to_owned())),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Option<Engine>> = const { Cell::new(None) };
}

/// Marks the calling thread as run by `engine` (the executors call this first thing).
pub(crate) fn enter(engine: Engine) {
    CURRENT.with(|c| c.set(Some(engine)));
}

/// The engine running the calling thread, if any.
pub fn current() -> Option<Engine> {
    CURRENT.with(Cell::get)
}

fn current_or_panic() -> Engine {
    current().expect("fastedge_runtime called outside an executor thread")
}

/// A spawned task; await it for its output. Dropping it cancels the task.
#[derive(Debug)]
pub enum JoinHandle<T> {
    /// A task on fastedge's io_uring engine.
    Uring(async_task::Task<T>),
    /// A task on glommio.
    Glommio(glommio::Task<T>),
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            JoinHandle::Uring(task) => Pin::new(task).poll(cx),
            JoinHandle::Glommio(task) => Pin::new(task).poll(cx),
        }
    }
}

/// Spawns `future` as a task of the calling thread's executor; await the result to join it.
/// Dropping the result cancels the task.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    match current_or_panic() {
        Engine::Uring => JoinHandle::Uring(crate::uring::spawn(future)),
        Engine::Glommio => JoinHandle::Glommio(glommio::spawn_local(future)),
    }
}

/// Spawns `future` as a task of the calling thread's executor, detached: it runs to completion
/// unless the executor stops first.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    match current_or_panic() {
        Engine::Uring => crate::uring::spawn_detached(future),
        Engine::Glommio => {
            glommio::spawn_local(future).detach();
        }
    }
}

/// The current time for deadlines and activity stamps: on the io_uring engine the time read at
/// the start of the executor's loop turn (no clock read per call), elsewhere the clock.
pub fn now() -> std::time::Instant {
    match current() {
        Some(Engine::Uring) => crate::uring::time::now(),
        _ => std::time::Instant::now(),
    }
}

/// Completes after `duration`: [`sleep_until`] the clock's time plus `duration`, counted from
/// this call (not from the first poll). Needs an engine on the calling thread (panics outside
/// one), as every timer here does.
pub fn sleep(duration: Duration) -> Sleep {
    // The clock, not the turn's time: a sleep never ends before `duration` has passed.
    sleep_until(std::time::Instant::now() + duration)
}

/// Completes at `deadline` (at once if it has passed), on the calling thread's engine.
///
/// A [`Sleep`] is a named, small future (no `async` state around it), so it can be kept in a
/// hand-written future's fields and replaced when a deadline moves.
pub fn sleep_until(deadline: std::time::Instant) -> Sleep {
    Sleep(match current_or_panic() {
        Engine::Uring => SleepOn::Uring(crate::uring::time::Sleep::until(deadline)),
        Engine::Glommio => SleepOn::Glommio(
            glommio::timer::Timer::new(
                deadline.saturating_duration_since(std::time::Instant::now()),
            ),
            deadline,
        ),
    })
}

/// The future of [`sleep`] and [`sleep_until`]: completes at its deadline. Dropping it
/// unregisters it from the engine's timers.
#[derive(Debug)]
pub struct Sleep(SleepOn);

#[derive(Debug)]
enum SleepOn {
    Uring(crate::uring::time::Sleep),
    Glommio(glommio::timer::Timer, std::time::Instant),
}

impl Sleep {
    /// When it completes.
    pub fn deadline(&self) -> std::time::Instant {
        match &self.0 {
            SleepOn::Uring(sleep) => sleep.deadline(),
            SleepOn::Glommio(_, deadline) => *deadline,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().0 {
            SleepOn::Uring(sleep) => Pin::new(sleep).poll(cx),
            SleepOn::Glommio(timer, _) => Pin::new(timer).poll(cx).map(drop),
        }
    }
}

/// Runs `future` with a deadline; `Err(TimedOut)` when `after` passes first.
pub async fn timeout<T>(
    after: Duration,
    future: impl Future<Output = T>,
) -> Result<T, crate::TimedOut> {
    match current_or_panic() {
        Engine::Uring => crate::uring::time::timeout(after, future)
            .await
            .map_err(|()| crate::TimedOut(after)),
        Engine::Glommio => glommio::timer::timeout(after, async { Ok(future.await) })
            .await
            .map_err(|_| crate::TimedOut(after)),
    }
}
