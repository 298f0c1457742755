//! The one door to raw libbpf calls that libbpf-rs does not wrap. Every unsafe block of this
//! crate lives here.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// `bpf_link_create(prog, ifindex, BPF_XDP, {flags})`: attaches an XDP program through a BPF
/// link. A link detaches when its last fd closes, so a crashed process never leaves its program
/// on the interface; unlike `bpf_program__attach_xdp`, it lets us choose the XDP mode.
pub(crate) fn xdp_link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range"))?;
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags,
        ..Default::default()
    };
    // SAFETY: `prog` is a live program fd for the duration of the call; `opts` is a fully
    // initialised struct whose `sz` is its own size, as libbpf's OPTS convention requires, and
    // libbpf only reads it during the call.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex, libbpf_sys::BPF_XDP, &opts)
    };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a non-negative return is a new link fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf_prog_test_run_opts`: runs program `prog` `repeat` times on `frame` in the kernel
/// (BPF_PROG_TEST_RUN, no interface involved); returns the program's return value and the
/// kernel's mean time per run in nanoseconds.
pub(crate) fn prog_test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
) -> io::Result<(u32, u32)> {
    let size = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
        data_in: frame.as_ptr().cast(),
        data_size_in: size,
        repeat: i32::try_from(repeat.max(1)).unwrap_or(i32::MAX),
        ..Default::default()
    };
    // SAFETY: `prog` is a live program fd; `opts` is fully initialised with its own size as
    // `sz`; `data_in` points to `frame`, valid for `data_size_in` bytes during the call, and is
    // only read; no output buffers are given (null, size 0).
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok((opts.retval, opts.duration))
}
