//! The one door for this crate's raw system calls: a small safe wrapper per call, named after
//! it, with its `unsafe` block and the reasoning that makes it sound kept here rather than
//! spread over the packet modules. Errors come back as [`io::Error`] (errno); the callers say
//! which step failed.

use memmap2::{MmapOptions, MmapRaw};
use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::atomic::AtomicU32,
    time::Duration,
};

/// The result of a call that returns -1 and sets errno on failure.
fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Data the kernel may fill in: every bit pattern is a valid value.
///
/// # Safety
///
/// Implement only for integers and C structs made of them (no references, enums, `bool`).
pub(crate) unsafe trait Plain: Copy {}

// SAFETY: integers have no invalid bit patterns.
unsafe impl Plain for i32 {}
// SAFETY: integers have no invalid bit patterns.
unsafe impl Plain for u32 {}
// SAFETY: three u32 counters.
unsafe impl Plain for libc::tpacket_stats_v3 {}

/// `socket(2)`, close-on-exec.
pub(crate) fn socket(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open(2)` of a device node, read-write, non-blocking, close-on-exec.
pub(crate) fn open_device(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a NUL-terminated string alive for the call; the result is checked.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(2)` with `value`'s bytes as the option.
pub(crate) fn set_option<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt(2)` of an option the kernel writes as a `T`.
pub(crate) fn get_option<T: Plain>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    // SAFETY: `T: Plain`: all-zero is a valid `T`.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a writable `T` and `len` its size; the kernel writes at most `len`
    // bytes, and any bytes make a valid `T` (`Plain`).
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// `bind(2)` of an AF_PACKET socket to interface `ifindex`, for `protocol` (network byte
/// order; 0: none, a sender).
pub(crate) fn bind_packet(fd: BorrowedFd<'_>, ifindex: i32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain integers and byte arrays; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex;
    // SAFETY: `addr` is a fully initialised sockaddr_ll of the size passed.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `poll(2)` on one descriptor for `events`, up to `timeout`; the `revents` seen (0: timed
/// out). An interrupted wait is an `Interrupted` error.
pub(crate) fn poll(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<libc::c_short> {
    let mut fds = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }];
    poll_many(&mut fds, timeout)?;
    Ok(fds[0].revents)
}

/// `poll(2)` on every descriptor of `fds` (their `revents` filled in), up to `timeout`; how
/// many are ready (0: timed out). An interrupted wait is an `Interrupted` error. A descriptor
/// that is not open only comes back with `POLLNVAL`.
pub(crate) fn poll_many(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is an exclusively borrowed array of `fds.len()` pollfd structs, alive for
    // the call; the kernel writes only their `revents`.
    let ready = cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) })?;
    Ok(ready as usize)
}

/// `sendmmsg(2)` of `frames` (one message each) on a bound socket, with `flags`; how many the
/// kernel took.
pub(crate) fn send_frames(
    fd: BorrowedFd<'_>,
    frames: &[&[u8]],
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: msghdr is plain integers and pointers; all-zero (null name, no control
            // data) is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            }
        })
        .collect();
    let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    // SAFETY: `headers` holds at least `count` initialised mmsghdr whose iovecs point into
    // `frames`, all alive for the call; the kernel only reads the frames.
    let sent = cvt(unsafe { libc::sendmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), count, flags) })?;
    Ok(sent as usize)
}

/// `write(2)` of `bytes`; how many were written.
pub(crate) fn write(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is valid for `bytes.len()` bytes for the call; the kernel only reads it.
    let written = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(written as usize)
}

/// An `ifreq` naming interface `name` (1 to 15 bytes), everything else zero.
fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("{name:?}: an interface name has 1 to 15 bytes"));
    }
    // SAFETY: ifreq is plain integers, byte arrays and a union of those; all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(request)
}

/// Checks that `name` can name an interface (1 to 15 bytes).
pub(crate) fn check_interface_name(name: &str) -> Result<(), String> {
    ifreq(name).map(drop)
}

/// `ioctl(TUNSETIFF)`: makes the TUN/TAP descriptor `fd` the device `name` with `flags`
/// (`IFF_TAP`, …). `name` must pass [`check_interface_name`].
pub(crate) fn tun_set_interface(
    fd: BorrowedFd<'_>,
    name: &str,
    flags: libc::c_int,
) -> io::Result<()> {
    let mut request = ifreq(name).map_err(io::Error::other)?;
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `request` is, alive for the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut request) })?;
    Ok(())
}

/// `ioctl(SIOCGIFFLAGS)` then `ioctl(SIOCSIFFLAGS)` through socket `control`: sets `IFF_UP` on
/// interface `name`. The error names the step that failed.
pub(crate) fn set_interface_up(
    control: BorrowedFd<'_>,
    name: &str,
) -> Result<(), (&'static str, io::Error)> {
    let mut request = ifreq(name).map_err(|e| ("SIOCGIFFLAGS", io::Error::other(e)))?;
    // SAFETY: SIOCGIFFLAGS writes one ifreq (`request`), alive for the call.
    cvt(unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) })
        .map_err(|e| ("SIOCGIFFLAGS", e))?;
    // SAFETY: the union member read is the one SIOCGIFFLAGS just filled.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads one ifreq (`request`), alive for the call.
    cvt(unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCSIFFLAGS, &request) })
        .map_err(|e| ("bringing it up", e))?;
    Ok(())
}

/// `ioctl(SIOCGIFMTU)`: the MTU of interface `name` in this network namespace; `None` when
/// there is no such interface (or the name cannot be one).
pub(crate) fn mtu(name: &str) -> Option<usize> {
    let mut request = ifreq(name).ok()?;
    let control = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).ok()?;
    // SAFETY: SIOCGIFMTU writes one ifreq (`request`), alive for the call.
    cvt(unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCGIFMTU, &mut request) }).ok()?;
    // SAFETY: the union member read is the one SIOCGIFMTU just filled.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).ok()
}

/// Receive queues of `interface`, from sysfs (one engine thread each, for an XDP input). Not a
/// system call, but like [`mtu`] the kernel's word on an interface.
pub(crate) fn rx_queues(interface: &str) -> u32 {
    queues(interface, "rx-")
}

/// Transmit queues of `interface`, from sysfs (an AF_XDP sender owns one).
pub(crate) fn tx_queues(interface: &str) -> u32 {
    queues(interface, "tx-")
}

fn queues(interface: &str, kind: &str) -> u32 {
    let dir = std::path::PathBuf::from(format!("/sys/class/net/{interface}/queues"));
    let count = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(kind))
                .count()
        })
        .unwrap_or(1);
    count.max(1) as u32
}

/// Wakes every thread waiting on `word` (FUTEX_WAKE on a shared mapping: other processes).
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only looks the word's page up (a valid mapping that `word` borrows)
    // and wakes its waiters; no pointer is written through.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        )
    };
}

/// Sleeps until `word` is woken, no longer holds `expected`, `timeout` passes or a signal
/// arrives (FUTEX_WAIT on a shared mapping, which may be read-only).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the word (aligned, in a mapping `word` borrows) and sleeps;
    // the timespec outlives the call. Every outcome (woken, changed, timed out, interrupted)
    // is a return to the caller, which looks at the lanes again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        )
    };
}

/// `clock_gettime(CLOCK_MONOTONIC)`: the clock futex deadlines are measured on.
pub(crate) fn clock_monotonic() -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, alive for the call; with a valid
    // clock id and pointer it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now
}

/// One entry of futex_waitv(2) (`struct futex_waitv`, linux/futex.h).
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}
/// FUTEX2_SIZE_U32: a 32-bit word, shared (no FUTEX2_PRIVATE).
const FUTEX2_SIZE_U32: u32 = 2;
/// Most words one futex_waitv call waits on (FUTEX_WAITV_MAX).
const FUTEX_WAITV_MAX: usize = 128;

/// Sleeps until one of `words` is woken or no longer holds its value, `timeout` passes or a
/// signal arrives. False when the kernel has no futex_waitv (before 5.16) or there are too
/// many words: the caller waits another way.
pub(crate) fn futex_waitv(words: &[(&AtomicU32, u32)], timeout: Duration) -> bool {
    if words.len() > FUTEX_WAITV_MAX {
        return false;
    }
    let waiters: Vec<FutexWaitv> = words
        .iter()
        .map(|(word, value)| FutexWaitv {
            val: u64::from(*value),
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        })
        .collect();
    let now = clock_monotonic();
    let nanos = now.tv_nsec as u64 + u64::from(timeout.subsec_nanos());
    let deadline = libc::timespec {
        tv_sec: now
            .tv_sec
            .saturating_add(timeout.as_secs().min(i32::MAX as u64) as libc::time_t)
            .saturating_add((nanos / 1_000_000_000) as libc::time_t),
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `waiters` (each naming an aligned u32 in a mapping the caller borrows) and
    // `deadline` outlive the call; the kernel only reads them.
    let result = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0u32,
            &deadline as *const libc::timespec,
            libc::CLOCK_MONOTONIC,
        )
    };
    !(result < 0
        && matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOSYS | libc::EINVAL)
        ))
}

/// A handler with the `SA_SIGINFO` signature.
pub(crate) type SigInfoHandler =
    extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// `sigaction(2)` read-only: the disposition of `signal` now.
pub(crate) fn sigaction_current(signal: libc::c_int) -> io::Result<libc::sigaction> {
    // SAFETY: an all-zero sigaction is valid (no handler, empty mask, no flags).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: no new action (null); `old` is a writable sigaction alive for the call.
    cvt(unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) })?;
    Ok(old)
}

/// `sigaction(2)`: `handler` for `signal`, with `SA_SIGINFO` and `flags`, nothing blocked
/// while it runs but the signal itself.
pub(crate) fn sigaction_install(
    signal: libc::c_int,
    handler: SigInfoHandler,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is valid (no handler, empty mask, no flags).
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler as *const () as usize;
    new.sa_flags = libc::SA_SIGINFO | flags;
    // SAFETY: `new.sa_mask` is a sigset_t this function owns.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: `new` is a complete sigaction whose handler has the SA_SIGINFO signature the
    // flags announce; no old action is asked for.
    cvt(unsafe { libc::sigaction(signal, &new, std::ptr::null_mut()) })?;
    Ok(())
}

/// `signal(2)`: the default action for `signal` again. Async-signal-safe.
pub(crate) fn signal_default(signal: libc::c_int) {
    // SAFETY: SIG_DFL is not a handler address: nothing of ours runs because of it.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// `mmap(2)` with `MAP_FIXED`: anonymous read-only zero pages in place of whatever is mapped
/// at `[start, start + len)`; false when the kernel refused. Async-signal-safe.
///
/// # Safety
///
/// The range must be a whole mapping its owner keeps for as long as anything may read it, and
/// that nobody writes or holds references into: its contents change to zeros under readers.
pub(crate) unsafe fn replace_with_zero_pages(start: usize, len: usize) -> bool {
    // SAFETY: the caller vouches for the range (above); MAP_FIXED replaces only it.
    let replaced = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    replaced != libc::MAP_FAILED
}

/// A shared memory mapping of `len` bytes of `fd` from its start, readable and writable
/// (`mmap(2)`, through memmap2). Its bytes are reached through addresses only, never
/// references: another party (the kernel, another process) may write them at any time.
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<MmapRaw> {
    MmapOptions::new().len(len).map_raw(&fd)
}

/// The 4 bytes at `offset` of `map` as an atomic: `None` when they are not inside the mapping
/// or not 4-byte aligned.
pub(crate) fn atomic_u32(map: &MmapRaw, offset: usize) -> Option<&AtomicU32> {
    let address = (map.as_ptr() as usize).wrapping_add(offset);
    if offset.checked_add(4)? > map.len() || !address.is_multiple_of(4) {
        return None;
    }
    // SAFETY: the 4 bytes are inside the mapping, which lives as long as `map` (borrowed by
    // the result), and aligned; they are only ever accessed atomically from here (the other
    // party writes them atomically too).
    Some(unsafe { AtomicU32::from_ptr(map.as_mut_ptr().add(offset).cast::<u32>()) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::{os::fd::AsFd, sync::atomic::Ordering};

    use super::*;

    #[test]
    fn a_shared_mapping_sees_the_file_and_checks_its_atomics() {
        let mut file = temp_file();
        std::io::Write::write_all(&mut file, &[0u8; 4096]).unwrap();
        let map = map_shared(file.as_fd(), 4096).unwrap();
        assert_eq!(map.len(), 4096);
        atomic_u32(&map, 8)
            .unwrap()
            .store(0x0102_0304, Ordering::Release);
        let mut bytes = [0u8; 12];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).unwrap();
        assert_eq!(
            u32::from_ne_bytes(bytes[8..12].try_into().unwrap()),
            0x0102_0304
        );
        assert!(atomic_u32(&map, 4093).is_none(), "past the end");
        assert!(atomic_u32(&map, 6).is_none(), "unaligned");
        assert!(atomic_u32(&map, usize::MAX - 1).is_none(), "overflow");
    }

    #[test]
    fn options_round_trip_and_errors_carry_errno() {
        let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        let size: i32 = 65536;
        set_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &size).unwrap();
        // The kernel doubles it for its bookkeeping.
        let read: i32 = get_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap();
        assert!(read >= size, "{read}");
        let error = set_option(fd.as_fd(), libc::SOL_SOCKET, -1, &size).unwrap_err();
        assert!(error.raw_os_error().is_some(), "{error}");
        assert!(check_interface_name("").is_err());
        assert!(check_interface_name("a-name-of-16-bytes").is_err());
        check_interface_name("veth0").unwrap();
    }

    #[test]
    fn futexes_return_when_woken_changed_or_timed_out() {
        use std::time::Instant;
        let word = AtomicU32::new(7);
        let started = Instant::now();
        futex_wait(&word, 7, Duration::from_millis(50));
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "timed out early"
        );
        let started = Instant::now();
        futex_wait(&word, 8, Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the word had changed"
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                word.store(8, Ordering::Release);
                futex_wake(&word);
            });
            let started = Instant::now();
            futex_wait(&word, 7, Duration::from_secs(5));
            assert!(started.elapsed() < Duration::from_secs(4), "not woken");
        });
        // A word that no longer holds its value: at once (true), or no futex_waitv (false).
        let started = Instant::now();
        let _ = futex_waitv(&[(&word, 7)], Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(2));
        let many: Vec<(&AtomicU32, u32)> = (0..129).map(|_| (&word, 8)).collect();
        assert!(
            !futex_waitv(&many, Duration::from_secs(5)),
            "over FUTEX_WAITV_MAX"
        );
        let now = clock_monotonic();
        assert!(now.tv_sec > 0 || now.tv_nsec > 0);
    }

    fn temp_file() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("fastedge-sys-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
