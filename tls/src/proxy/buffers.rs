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
