//! A per-core cap on open connections, and waiting for them to drain.

use std::{rc::Rc, time::Duration};

use glommio::sync::{Semaphore, StaticPermit};

/// Caps the connections open at once on one executor. Take a [`ConnectionPermit`] *before*
/// accepting: at the cap, new clients wait in the kernel's accept queue instead of being
/// refused.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    semaphore: Rc<Semaphore>,
    max: u64,
}

/// One open connection's share of a [`ConnectionLimit`]; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit(#[allow(dead_code)] StaticPermit);

impl ConnectionLimit {
    pub fn new(max: u32) -> Self {
        let max = u64::from(max.max(1));
        Self {
            semaphore: Rc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> ConnectionPermit {
        loop {
            // Only fails once the semaphore is closed, which this type never does.
            if let Ok(permit) = self.semaphore.acquire_static_permit(1).await {
                return ConnectionPermit(permit);
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.max - self.semaphore.available()
    }

    /// Waits until every connection has closed, at most `within`; returns how many are still
    /// open.
    pub async fn drain(&self, within: Duration) -> u64 {
        let all = async {
            // Holding every permit means nothing else is open; release them again at once.
            let _ = self.semaphore.acquire_permit(self.max).await;
        };
        let _ = crate::timeout(within, all).await;
        self.open()
    }
}
