//! A value delivered once, from a helper thread, to any number of waiting tasks (keyless
//! signatures, dynamic SNI answers). `Send` and `Sync`, so BoringSSL's asynchronous callbacks
//! can hold it.

use std::{
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::Instant,
};

struct State<T> {
    value: Option<T>,
    completed: Option<Instant>,
    wakers: Vec<Waker>,
}

pub(crate) struct OneShot<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for OneShot<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                value: None,
                completed: None,
                wakers: Vec::new(),
            }),
        }
    }
}

impl<T: Clone> OneShot<T> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers `value` and wakes every waiter; a second delivery is ignored.
    pub fn complete(&self, value: T) {
        let wakers = {
            let mut state = self.state();
            if state.value.is_some() {
                return;
            }
            state.value = Some(value);
            state.completed = Some(Instant::now());
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// When the value came, if it did.
    pub fn completed_at(&self) -> Option<Instant> {
        self.state().completed
    }

    /// The value, or `Pending` with this task registered to be woken when it comes.
    pub fn poll_value(&self, cx: &Context<'_>) -> Poll<T> {
        let mut state = self.state();
        if let Some(value) = &state.value {
            return Poll::Ready(value.clone());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
