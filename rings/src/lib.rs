//! Packet I/O of fastedge.
//!
//! Owns: AF_XDP sockets over xsk-rs ([`xdp::XskReceiver`]); shared-memory ways between the
//! distributor and consumer applications ([`shm`]); netmap bindings behind the `netmap` feature
//! (off by default: no netmap module on common kernels); the split engine ([`split`]): XDP +
//! AF_XDP on every queue of an interface, flow hash, ways. AF_PACKET, pcap and composable bricks
//! come here next.
//!
//! Does not own: eBPF program source or loading (`fastedge-ebpf`), header parsing and flow
//! hashing (`fastedge-wire`).

pub mod afpacket;
pub mod fuzzing;
pub mod gen;
pub mod pcap;
pub mod pipeline;
pub mod shm;
mod sigbus;
pub mod split;
pub mod xdp;

/// netmap's C structures and ioctls (`netmap_sys`), compiled only with `--features netmap`.
#[cfg(feature = "netmap")]
pub mod netmap {
    pub use netmap_sys::netmap::*;
}
