//! The engine's one door to system calls the `io-uring` crate does not wrap the way we need:
//! entering the ring with `GETEVENTS` on every turn (`DEFER_TASKRUN` runs completion work only
//! then), registering the ring descriptor, anonymous mappings for the provided-buffer ring, and
//! the cross-thread wake-up eventfd.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use io_uring::types::{SubmitArgs, Timespec};

const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
const IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;
const IORING_REGISTER_RING_FDS: libc::c_uint = 20;

/// `struct io_uring_rsrc_update` of the kernel's uapi.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

#[cfg(test)]
thread_local! {
    /// Fault injection for tests: this thread's next N `enter` calls fail (with EBADF)
    /// without reaching the kernel.
    pub(crate) static FAIL_ENTERS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Fault injection for tests: this thread's next N `enter` calls take nothing and report
    /// no error, as when the kernel answers EAGAIN or EBUSY (which `enter` passes as `Ok`).
    pub(crate) static REFUSE_ENTERS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// How `enter` names the ring: its descriptor, or its slot in the registered-ring table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingHandle {
    fd: RawFd,
    registered: bool,
}

impl RingHandle {
    /// Registers `ring_fd` with itself (Linux 5.18) so each enter skips the descriptor lookup;
    /// falls back to the plain descriptor where the kernel refuses.
    pub(crate) fn register(ring_fd: RawFd) -> Self {
        let mut update = RsrcUpdate {
            offset: u32::MAX,
            resv: 0,
            data: ring_fd as u64,
        };
        // SAFETY: IORING_REGISTER_RING_FDS reads and writes one `io_uring_rsrc_update`, which
        // `update` is, alive for the whole call; `ring_fd` is the ring we own.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring_fd,
                IORING_REGISTER_RING_FDS,
                std::ptr::addr_of_mut!(update),
                1 as libc::c_uint,
            )
        };
        if ret == 1 {
            Self {
                fd: update.offset as RawFd,
                registered: true,
            }
        } else {
            Self {
                fd: ring_fd,
                registered: false,
            }
        }
    }

    /// Submits `to_submit` entries and runs pending completion work; waits for at least one
    /// completion up to `wait` (`None`: no limit) unless `wait` is zero.
    pub(crate) fn enter(&self, to_submit: u32, wait: Option<Duration>) -> io::Result<()> {
        #[cfg(test)]
        if FAIL_ENTERS.with(|n| n.replace(n.get().saturating_sub(1))) > 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        #[cfg(test)]
        if REFUSE_ENTERS.with(|n| n.replace(n.get().saturating_sub(1))) > 0 {
            // What EAGAIN or EBUSY come to below: no error, nothing submitted.
            return Ok(());
        }
        let mut flags = IORING_ENTER_GETEVENTS;
        if self.registered {
            flags |= IORING_ENTER_REGISTERED_RING;
        }
        let min_complete = u32::from(wait != Some(Duration::ZERO));
        let ts = wait.map(|d| Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos()));
        let args = ts.as_ref().map(|ts| SubmitArgs::new().timespec(ts));
        let (arg, size) = match (&args, min_complete) {
            (Some(args), 1) => {
                flags |= IORING_ENTER_EXT_ARG;
                (
                    args as *const SubmitArgs<'_, '_> as *const libc::c_void,
                    std::mem::size_of::<SubmitArgs<'_, '_>>(),
                )
            }
            _ => (std::ptr::null(), 0),
        };
        // SAFETY: io_uring_enter on our ring; with EXT_ARG, `arg` points to an
        // `io_uring_getevents_arg` (`SubmitArgs` is a transparent wrapper of it) whose timespec
        // pointer refers to `ts`, both alive until the call returns.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                to_submit,
                min_complete,
                flags,
                arg,
                size,
            )
        };
        if ret < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                // The wait ended by its deadline or a signal, or completions are pending
                // delivery: all mean "look at the completion queue now".
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(error),
            };
        }
        Ok(())
    }
}

/// An anonymous, page-aligned, private read-write mapping (through memmap2), unmapped on
/// drop. Reached through its address only: the kernel writes into it.
pub(crate) fn anonymous_mapping(len: usize) -> io::Result<memmap2::MmapRaw> {
    memmap2::MmapOptions::new()
        .len(len)
        .map_anon()
        .map(memmap2::MmapRaw::from)
}

/// A non-blocking eventfd that other threads write to wake the engine.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is new and ours.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter (a wake-up); a full counter already means "wake up".
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from `one`, alive for the call, to an eventfd we hold open.
    unsafe {
        libc::write(
            fd.as_raw_fd(),
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<u64>(),
        );
    }
}

/// Clears `O_NONBLOCK` on `fd`: io_uring waits for readiness itself, and a non-blocking socket
/// would hand `EAGAIN` back to us instead.
pub(crate) fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Offset of `optlen` in a 64-byte SQE (after `buf_group` and `personality`): for a multishot
/// receive, the most bytes it may receive in all before it ends (Linux 6.16).
const SQE_OPTLEN_OFFSET: usize = 44;

/// `entry` with `optlen` set: the io-uring crate's multishot receive has no field for it.
pub(crate) fn with_optlen(entry: io_uring::squeue::Entry, optlen: u32) -> io_uring::squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe` (the
    // transmute checks the size), and every bit pattern is a valid SQE byte array and back.
    let mut bytes: [u8; 64] = unsafe { std::mem::transmute(entry) };
    bytes[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4].copy_from_slice(&optlen.to_ne_bytes());
    // SAFETY: as above; only the `optlen` field changed.
    unsafe { std::mem::transmute(bytes) }
}
