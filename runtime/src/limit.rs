//! A per-core cap on open connections, and waiting for them to drain.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    future::poll_fn,
    rc::Rc,
    task::{Poll, Waker},
    time::Duration,
};

/// Caps the connections open at once on one executor. Take a [`ConnectionPermit`] *before*
/// accepting: at the cap, new clients wait in the kernel's accept queue instead of being
/// refused. Works on either engine (it only uses wakers).
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: u64,
    open: Cell<u64>,
    /// Tasks waiting for a slot, in arrival order.
    waiting: RefCell<VecDeque<Waker>>,
    /// Tasks waiting for every slot to be free.
    draining: RefCell<Vec<Waker>>,
}

/// One open connection's share of a [`ConnectionLimit`]; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    inner: Rc<Inner>,
}

impl ConnectionLimit {
    /// A limit of `max` open connections (at least 1: 0 is taken as 1).
    pub fn new(max: u32) -> Self {
        Self {
            inner: Rc::new(Inner {
                max: u64::from(max.max(1)),
                open: Cell::new(0),
                waiting: RefCell::new(VecDeque::new()),
                draining: RefCell::new(Vec::new()),
            }),
        }
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> ConnectionPermit {
        poll_fn(|cx| {
            let inner = &self.inner;
            if inner.open.get() < inner.max {
                inner.open.set(inner.open.get() + 1);
                return Poll::Ready(ConnectionPermit {
                    inner: inner.clone(),
                });
            }
            let mut waiting = inner.waiting.borrow_mut();
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push_back(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// A slot now, above the cap if need be: for a connection already accepted that must be
    /// served rather than closed (one the engine accepted before the executor stopped
    /// accepting). Counted like any other, so [`ConnectionLimit::drain`] waits for it.
    pub fn acquire_over_cap(&self) -> ConnectionPermit {
        self.inner.open.set(self.inner.open.get() + 1);
        ConnectionPermit {
            inner: self.inner.clone(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.inner.open.get()
    }

    /// Waits until every connection has closed, at most `within`; returns how many are still
    /// open.
    pub async fn drain(&self, within: Duration) -> u64 {
        let all = poll_fn(|cx| {
            if self.inner.open.get() == 0 {
                return Poll::Ready(());
            }
            self.inner.draining.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        });
        let _ = crate::timeout(within, all).await;
        self.open()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.open.set(inner.open.get() - 1);
        // Every waiter: one woken alone may have stopped waiting (its acquire succeeded by
        // another path or was dropped), and the slot would go unnoticed by the others.
        let waiting = std::mem::take(&mut *inner.waiting.borrow_mut());
        for waker in waiting {
            waker.wake();
        }
        if inner.open.get() == 0 {
            let drained = std::mem::take(&mut *inner.draining.borrow_mut());
            for waker in drained {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn permits_are_counted_and_released() {
        let limit = ConnectionLimit::new(2);
        let a = futures_lite::future::block_on(limit.acquire());
        let b = futures_lite::future::block_on(limit.acquire());
        assert_eq!(limit.open(), 2);
        let mut third = Box::pin(limit.acquire());
        let mut cx = std::task::Context::from_waker(Waker::noop());
        assert!(third.as_mut().poll(&mut cx).is_pending());
        drop(a);
        let Poll::Ready(c) = third.as_mut().poll(&mut cx) else {
            panic!("a released permit goes to the waiting acquire");
        };
        drop(b);
        assert_eq!(limit.open(), 1);
        drop(c);
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn a_permit_over_the_cap_is_counted_until_released() {
        let limit = ConnectionLimit::new(1);
        let a = futures_lite::future::block_on(limit.acquire());
        let over = limit.acquire_over_cap();
        assert_eq!(limit.open(), 2);
        drop(a);
        // Still at the cap: the one over it holds the only slot's worth.
        let mut next = Box::pin(limit.acquire());
        let mut cx = std::task::Context::from_waker(Waker::noop());
        assert!(next.as_mut().poll(&mut cx).is_pending());
        drop(over);
        assert!(next.as_mut().poll(&mut cx).is_ready());
    }
}
