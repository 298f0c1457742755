//! Read-only mappings of files another process may truncate, made safe to read.
//!
//! A producer reads one word of its consumer's position file (the consumer's "asleep" flag)
//! after every batch: a load, not a `pread`, because a syscall per batch would cost more than
//! the rest of the batch. But the consumer may write that file, so it may also truncate it, and
//! a load from a mapping past the end of its file raises SIGBUS. A mapping registered here is
//! protected: this module's SIGBUS handler (installed once per process, chaining to the one
//! it replaced for every other fault) puts anonymous zero pages over the registered range and
//! returns, so the load is retried and reads 0. A consumer that truncates its position file
//! only blinds the producer to its own flag.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Once, OnceLock,
};

use crate::sys;

/// Mappings that can be protected at once; past that, [`Guard::register`] returns `None`
/// (the caller reads with `pread` instead).
const SLOTS: usize = 1024;
/// A slot being filled in: not yet matched by the handler.
const CLAIMED: usize = usize::MAX;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

static RANGES: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
    }
}; SLOTS];

/// The SIGBUS disposition this module replaced (called for faults outside its ranges).
struct Previous(libc::sigaction);
// SAFETY: a plain C struct of a handler address, a mask and flags, written once before the
// handler is installed and only read afterwards.
unsafe impl Sync for Previous {}
// SAFETY: as above: plain data, no pointer into anything this thread owns.
unsafe impl Send for Previous {}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();
static INSTALL: Once = Once::new();

/// A registered range; unregistered when dropped (before the mapping is unmapped).
#[derive(Debug)]
pub(crate) struct Guard {
    slot: usize,
}

impl Guard {
    /// Protects `len` bytes at `start` (page-aligned, a read-only mapping the caller owns and
    /// keeps until the guard is dropped). `None` when the handler cannot be installed or every
    /// slot is taken.
    pub(crate) fn register(start: *const u8, len: usize) -> Option<Self> {
        install();
        PREVIOUS.get()?;
        let start = start as usize;
        for (slot, range) in RANGES.iter().enumerate() {
            if range
                .start
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                range.len.store(len, Ordering::Release);
                range.start.store(start, Ordering::Release);
                return Some(Self { slot });
            }
        }
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        RANGES[self.slot].start.store(0, Ordering::Release);
    }
}

fn install() {
    INSTALL.call_once(|| {
        let Ok(old) = sys::sigaction_current(libc::SIGBUS) else {
            return;
        };
        let _ = PREVIOUS.set(Previous(old));
        if sys::sigaction_install(libc::SIGBUS, on_sigbus, libc::SA_ONSTACK).is_err() {
            tracing::warn!("cannot install the SIGBUS handler for way position files");
        }
    });
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    for range in &RANGES {
        let start = range.start.load(Ordering::Acquire);
        if start == 0 || start == CLAIMED {
            continue;
        }
        let len = range.len.load(Ordering::Acquire);
        if address >= start && address < start.saturating_add(len) {
            // SAFETY: the range is a read-only mapping its owner keeps until it unregisters
            // it (see `Guard::register`) and reads only with loads; zero pages change only
            // what those loads read.
            let replaced = unsafe { sys::replace_with_zero_pages(start, len) };
            if replaced {
                return;
            }
        }
    }
    // Not ours: what would have happened without us.
    let Some(Previous(previous)) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Returning re-runs the faulting access, which then ends the process as it would
        // have.
        sys::signal_default(libc::SIGBUS);
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO: this signature.
        let previous: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        previous(signal, info, context);
    } else {
        // SAFETY: a plain handler installed without SA_SIGINFO: this signature.
        let previous: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        previous(signal);
    }
}
