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
