//! A stop signal that any thread can raise and any executor can await.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll, Waker},
};

/// Cloneable handle to one stop signal. `trigger` wakes every waiter, on any thread.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl Shutdown {
    /// A signal not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal; idempotent.
    pub fn trigger(&self) {
        self.inner.raised.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(
            &mut *self
                .inner
                .waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for waker in waiters {
            waker.wake();
        }
    }

    /// Whether `trigger` was called on this signal (or a clone of it).
    pub fn is_triggered(&self) -> bool {
        self.inner.raised.load(Ordering::SeqCst)
    }

    /// Completes once the signal is raised.
    pub fn wait(&self) -> Wait<'_> {
        Wait { shutdown: self }
    }

    /// Runs `future` until it completes (`Some`) or the signal is raised first (`None`).
    pub async fn until<T>(&self, future: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(future.await) }, async {
            self.wait().await;
            None
        })
        .await
    }
}

/// Future of [`Shutdown::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    shutdown: &'a Shutdown,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        let mut waiters = self
            .shutdown
            .inner
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: `trigger` sets the flag before taking the lock.
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
