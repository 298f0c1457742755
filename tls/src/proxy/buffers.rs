//! This core's pool of pump buffers: a direction of the pump borrows one to read and gives it
//! back as soon as it is empty, so an idle connection holds none.

use std::cell::RefCell;

/// Bytes buffered per direction of a proxied connection while bytes move.
const PUMP_BUFFER: usize = 32 * 1024;
/// Pump buffers a core keeps for reuse; more are freed when they come back.
const POOL_KEEP: usize = 256;

thread_local! {
    /// This core's spare pump buffers: a direction borrows one to read and gives it back as soon
    /// as it is empty and the reader has nothing more, so an idle connection holds none.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A pump buffer from this core's pool, or a new one.
pub(super) fn borrow_buffer() -> Box<[u8]> {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; PUMP_BUFFER].into_boxed_slice())
}

/// Returns a pump buffer to this core's pool.
pub(super) fn return_buffer(buf: Box<[u8]>) {
    // `try_with`: a connection dropped while the thread's locals are torn down frees its buffer.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    });
}

/// Rewritten-request buffers a core keeps for reuse, and the largest kept.
const OUT_KEEP: usize = 64;
const OUT_KEEP_BYTES: usize = 64 * 1024;

thread_local! {
    /// This core's spare buffers for rewritten requests (forwarding headers): a rewriting
    /// direction takes one when bytes come and gives it back when idle.
    static OUT_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer for rewritten bytes: a spare of this core's, or a new (unallocated) one.
pub(super) fn borrow_out() -> Vec<u8> {
    OUT_POOL
        .try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives a buffer for rewritten bytes back to this core's spares (emptied).
pub(super) fn return_out(mut out: Vec<u8>) {
    if out.capacity() == 0 || out.capacity() > OUT_KEEP_BYTES {
        return;
    }
    out.clear();
    let _ = OUT_POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < OUT_KEEP {
            pool.push(out);
        }
    });
}
